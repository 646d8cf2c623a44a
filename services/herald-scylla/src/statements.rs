//! Every statement the store runs, prepared once at start-up at the configured consistency and
//! marked idempotent (so the driver may retry it), and [`Stmt`], a statement with its values.

use herald_ports::projection::ProjectionError;
use scylla::client::session::Session;
use scylla::statement::Consistency;
use scylla::statement::prepared::PreparedStatement;
use scylla::value::CqlValue;

use crate::layout::ROW_COLUMNS;

/// One statement with its values, ready for a batch.
pub(crate) struct Stmt {
    pub(crate) st: PreparedStatement,
    pub(crate) values: Vec<Option<CqlValue>>,
}

macro_rules! statements {
    ($($name:ident = $cql:expr;)*) => {
        pub(crate) struct Statements { $(pub(crate) $name: PreparedStatement,)* }
        impl Statements {
            pub(crate) async fn prepare(session: &Session, ks: &str, consistency: Consistency) -> Result<Self, ProjectionError> {
                Ok(Statements { $($name: {
                    let cql = format!($cql).replace("{ks}", ks);
                    let mut st = session.prepare(cql.as_str()).await.map_err(|e| {
                        ProjectionError::Config(format!("preparing {}: {e}", stringify!($name)))
                    })?;
                    st.set_consistency(consistency);
                    st.set_is_idempotent(true);
                    st
                },)* })
            }
        }
    };
}

statements! {
    id_seq = "SELECT seq FROM {{ks}}.inbox_ids WHERE user_id = ? AND notification_id = ?";
    row_at = "SELECT {ROW_COLUMNS} FROM {{ks}}.inbox WHERE user_id = ? AND bucket = ? AND seq = ?";
    collapse_seq = "SELECT seq FROM {{ks}}.collapse_holders WHERE user_id = ? AND collapse_key = ? LIMIT 1";
    all_buckets = "SELECT bucket FROM {{ks}}.inbox_buckets WHERE user_id = ?";
    buckets_down = "SELECT bucket FROM {{ks}}.inbox_buckets WHERE user_id = ? AND bucket <= ?";
    buckets_up = "SELECT bucket FROM {{ks}}.inbox_buckets WHERE user_id = ? AND bucket >= ? ORDER BY bucket ASC";
    rows_down = "SELECT {ROW_COLUMNS} FROM {{ks}}.inbox WHERE user_id = ? AND bucket = ? AND seq < ?";
    rows_up = "SELECT {ROW_COLUMNS} FROM {{ks}}.inbox WHERE user_id = ? AND bucket = ? AND seq > ? ORDER BY seq ASC";
    unread_seqs = "SELECT seq FROM {{ks}}.unread_rows WHERE user_id = ? AND bucket = ?";
    count_of = "SELECT n FROM {{ks}}.unread_counts WHERE user_id = ?";
    cursor_of = "SELECT seq FROM {{ks}}.cursors WHERE user_id = ? AND device_id = ?";
    acks_in = "SELECT seq FROM {{ks}}.acks WHERE user_id = ? AND device_id = ? AND bucket = ?";
    offsets_of = "SELECT partition, next_offset FROM {{ks}}.consumer_offsets WHERE consumer = ?";
    meta_of = "SELECT value FROM {{ks}}.herald_meta WHERE key = ?";
    name_store = "INSERT INTO {{ks}}.herald_meta (key, value) VALUES ('store_id', ?) USING TIMESTAMP ?";
    meta_at = "INSERT INTO {{ks}}.herald_meta (key, value) VALUES (?, ?) USING TIMESTAMP ?";
    lease_of = "SELECT holder, expires_at FROM {{ks}}.leases WHERE name = ?";
    lease_new = "INSERT INTO {{ks}}.leases (name, holder, expires_at) VALUES (?, ?, ?) IF NOT EXISTS";
    lease_renew = "UPDATE {{ks}}.leases SET expires_at = ? WHERE name = ? IF holder = ?";
    lease_take = "UPDATE {{ks}}.leases SET holder = ?, expires_at = ? WHERE name = ? IF expires_at <= ?";
    lease_release = "UPDATE {{ks}}.leases SET expires_at = 0 WHERE name = ? IF holder = ?";
    expansion = "SELECT notification_id FROM {{ks}}.expansions WHERE notification_id = ?";
    expansion_shard = "SELECT user_id FROM {{ks}}.expansion_users WHERE notification_id = ? AND shard = ?";
    group_shard = "SELECT user_id FROM {{ks}}.group_members WHERE group_id = ? AND shard = ?";
    topic_shard = "SELECT user_id FROM {{ks}}.topic_subscribers WHERE topic = ? AND shard = ?";
    roles_of = "SELECT roles FROM {{ks}}.users WHERE user_id = ?";
    topics_of = "SELECT topics FROM {{ks}}.roles WHERE role = ?";
    scheduled_due = "SELECT due_at FROM {{ks}}.scheduled WHERE notification_id = ?";
    schedule_hours = "SELECT hour FROM {{ks}}.schedule_hours WHERE one = 0 AND hour <= ?";
    due_in = "SELECT notification_id, request FROM {{ks}}.scheduled_by_time WHERE hour = ? AND due_at <= ? LIMIT ?";
    expiry_hours = "SELECT hour FROM {{ks}}.expiry_hours WHERE one = 0 AND hour <= ?";
    expiring_in = "SELECT user_id, notification_id FROM {{ks}}.expiry_by_time WHERE hour = ? AND expires_at <= ? LIMIT ?";

    put_row = "INSERT INTO {{ks}}.inbox (bucket, {ROW_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) USING TIMESTAMP ?";
    put_bucket = "INSERT INTO {{ks}}.inbox_buckets (user_id, bucket) VALUES (?, ?) USING TIMESTAMP ?";
    put_id = "INSERT INTO {{ks}}.inbox_ids (user_id, notification_id, seq) VALUES (?, ?, ?) USING TIMESTAMP ?";
    put_unread = "INSERT INTO {{ks}}.unread_rows (user_id, bucket, seq) VALUES (?, ?, ?) USING TIMESTAMP ?";
    del_unread = "DELETE FROM {{ks}}.unread_rows USING TIMESTAMP ? WHERE user_id = ? AND bucket = ? AND seq = ?";
    put_collapse = "INSERT INTO {{ks}}.collapse_holders (user_id, collapse_key, seq) VALUES (?, ?, ?) USING TIMESTAMP ?";
    del_collapse = "DELETE FROM {{ks}}.collapse_holders USING TIMESTAMP ? WHERE user_id = ? AND collapse_key = ? AND seq = ?";
    put_expiry = "INSERT INTO {{ks}}.expiry_by_time (hour, expires_at, user_id, seq, notification_id) VALUES (?, ?, ?, ?, ?) USING TIMESTAMP ?";
    del_expiry = "DELETE FROM {{ks}}.expiry_by_time USING TIMESTAMP ? WHERE hour = ? AND expires_at = ? AND user_id = ? AND seq = ?";
    put_expiry_hour = "INSERT INTO {{ks}}.expiry_hours (one, hour) VALUES (0, ?) USING TIMESTAMP ?";
    del_expiry_hour = "DELETE FROM {{ks}}.expiry_hours USING TIMESTAMP ? WHERE one = 0 AND hour = ?";
    set_count = "INSERT INTO {{ks}}.unread_counts (user_id, n) VALUES (?, ?) USING TIMESTAMP ?";
    put_ack = "INSERT INTO {{ks}}.acks (user_id, device_id, bucket, seq) VALUES (?, ?, ?, ?) USING TIMESTAMP ?";
    set_cursor = "INSERT INTO {{ks}}.cursors (user_id, device_id, seq) VALUES (?, ?, ?) USING TIMESTAMP ?";
    know_user = "INSERT INTO {{ks}}.users (user_id) VALUES (?) USING TIMESTAMP ?";
    put_preferences = "INSERT INTO {{ks}}.preferences (user_id, doc) VALUES (?, ?) USING TIMESTAMP ?";
    preferences_of = "SELECT doc FROM {{ks}}.preferences WHERE user_id = ?";
    set_offset = "INSERT INTO {{ks}}.consumer_offsets (consumer, partition, next_offset) VALUES (?, ?, ?) USING TIMESTAMP ?";
    set_roles = "INSERT INTO {{ks}}.users (user_id, roles) VALUES (?, ?) USING TIMESTAMP ?";
    define_role = "INSERT INTO {{ks}}.roles (role, topics) VALUES (?, ?) USING TIMESTAMP ?";
    add_member = "INSERT INTO {{ks}}.group_members (group_id, shard, user_id) VALUES (?, ?, ?) USING TIMESTAMP ?";
    del_member = "DELETE FROM {{ks}}.group_members USING TIMESTAMP ? WHERE group_id = ? AND shard = ? AND user_id = ?";
    subscribe = "INSERT INTO {{ks}}.topic_subscribers (topic, shard, user_id) VALUES (?, ?, ?) USING TIMESTAMP ?";
    unsubscribe = "DELETE FROM {{ks}}.topic_subscribers USING TIMESTAMP ? WHERE topic = ? AND shard = ? AND user_id = ?";
    put_expansion = "INSERT INTO {{ks}}.expansions (notification_id, recipients) VALUES (?, ?)";
    put_expansion_user = "INSERT INTO {{ks}}.expansion_users (notification_id, shard, user_id) VALUES (?, ?, ?)";
    del_scheduled = "DELETE FROM {{ks}}.scheduled WHERE notification_id = ?";
    del_scheduled_at = "DELETE FROM {{ks}}.scheduled_by_time WHERE hour = ? AND due_at = ? AND notification_id = ?";
    put_scheduled = "INSERT INTO {{ks}}.scheduled (notification_id, due_at) VALUES (?, ?)";
    put_scheduled_at = "INSERT INTO {{ks}}.scheduled_by_time (hour, due_at, notification_id, request) VALUES (?, ?, ?, ?)";
    put_schedule_hour = "INSERT INTO {{ks}}.schedule_hours (one, hour) VALUES (0, ?) USING TIMESTAMP ?";
    del_schedule_hour = "DELETE FROM {{ks}}.schedule_hours USING TIMESTAMP ? WHERE one = 0 AND hour = ?";
}
