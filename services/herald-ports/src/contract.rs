//! Contract suites: the same tests for every adapter of a port.
//!
//! An adapter's test file calls [`log_contract_tests!`](crate::log_contract_tests) or
//! [`projection_contract_tests!`](crate::projection_contract_tests) with a harness expression;
//! the macro expands to one `#[tokio::test]` per behaviour, so a failure names the behaviour.
//! The projection suite compares stores against [`herald_core::mem::MemProjection`], the
//! reference fold.

pub mod generate;
pub mod log;
pub mod projection;

/// Generates one test per log contract case. `$harness` must evaluate to a value implementing
/// [`log::LogHarness`]; it is evaluated afresh in each test.
#[macro_export]
macro_rules! log_contract_tests {
    ($harness:expr) => {
        $crate::log_contract_tests!(@cases $harness;
            append_then_read_round_trips,
            offsets_are_contiguous_per_partition_under_concurrent_appends,
            relaxed_and_plain_appends_share_one_order,
            unknown_partition_and_oversized_record_are_errors,
            read_from_the_middle_and_past_the_end,
            a_waiting_consumer_wakes_on_append,
            a_tail_reads_only_the_partitions_it_follows,
            a_group_resumes_from_its_committed_offsets,
            records_and_epoch_survive_reopen,
        );
    };
    (@cases $harness:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let harness = $harness;
                $crate::contract::log::$case(&harness).await;
            }
        )*
    };
}

/// Generates one test per projection contract case. `$harness` must evaluate to a value
/// implementing [`projection::ProjectionHarness`]; it is evaluated afresh in each test.
#[macro_export]
macro_rules! projection_contract_tests {
    ($harness:expr) => {
        $crate::projection_contract_tests!(@cases $harness;
            applies_like_the_reference_fold,
            reapplying_any_suffix_changes_nothing,
            a_stale_batch_changes_nothing,
            a_repeated_notification_is_in_the_inbox_once,
            offsets_are_stored_with_the_writes,
            concurrent_writers_on_disjoint_partitions_match_the_reference,
            pending_is_what_the_device_has_not_acknowledged,
            acks_by_id_in_any_order_leave_the_rest_pending,
            acks_by_id_around_rows_never_sent_leave_nothing_pending,
            pending_under_load_is_ordered_and_complete,
            pending_stops_at_its_byte_bound,
            preferences_are_the_newest_document_and_quiet_rows_are_not_pending,
            inbox_pages_newest_first_with_filters,
            directory_resolves_groups_topics_and_everyone,
            expansions_are_recorded,
            scheduled_requests_come_due_and_expired_rows_are_found,
            rbac_limits_topics_by_role,
            state_survives_reopen,
            a_store_keeps_one_id,
            group_generations_only_move_forward,
            a_lease_has_one_holder_until_it_expires,
        );
    };
    (@cases $harness:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let harness = $harness;
                $crate::contract::projection::$case(&harness).await;
            }
        )*
    };
}
