//! Work that must not slow accepting down runs on a runtime of its own, on threads the kernel
//! schedules at a lower priority (a higher nice value).
//!
//! A `202` waits for the durable append and nothing else; the projector works from the log and
//! catches up. When both want more CPU than the machine has, the kernel gives the append path
//! (HTTP workers, the log writer) the larger share and the projector the rest, instead of an
//! equal share each: ScyllaDB's scheduling groups give compaction fewer shares than queries for
//! the same reason. With CPU to spare the nice value changes nothing: every thread runs.

use std::future::Future;

use tokio::sync::oneshot;

/// The projector's nice value beside the gateway (`--projector-nice`). At 10 the kernel gives a
/// busy projector thread about a tenth of the CPU time of a busy thread at 0, which is where
/// batch ingest stopped improving in paired runs (docs/benchmarks.md, twenty-first stop).
pub const PROJECTOR_NICE: i32 = 10;

/// Starts `work` on a thread named `name` with a single-threaded runtime of its own; the thread
/// and the runtime's blocking threads (where the stores' transactions run) run `nice` steps
/// below the caller's priority (at most at 19; 0: at the caller's). The receiver answers
/// `work`'s output, or an error when the thread could not start its runtime or `work` panicked.
pub fn spawn<W, F, T>(name: &str, nice: i32, work: W) -> std::io::Result<oneshot::Receiver<T>>
where
    W: FnOnce() -> F + Send + 'static,
    F: Future<Output = T>,
    T: Send + 'static,
{
    // Linux keeps a nice value per thread and a new thread starts at its creator's: the target
    // is absolute, so that setting it again on each blocking thread changes nothing.
    let target = (nice > 0).then(|| (nice_of_this_thread() + nice).min(19));
    let (tx, rx) = oneshot::channel();
    let thread_name = name.to_owned();
    std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || {
            set_nice(target);
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .thread_name(format!("{thread_name}-blocking"))
                .on_thread_start(move || set_nice(target))
                .build();
            match runtime {
                Ok(rt) => {
                    let _ = tx.send(rt.block_on(work()));
                }
                Err(e) => tracing::error!(error = %e, "cannot start the {thread_name} runtime"),
            }
        })?;
    Ok(rx)
}

/// The calling thread's nice value (0 when the kernel does not say).
fn nice_of_this_thread() -> i32 {
    rustix::process::getpriority_process(None).unwrap_or(0)
}

/// Sets the calling thread's nice value. A failure (a kernel or sandbox that refuses) leaves the
/// thread at its priority, with a warning: slower accepting under load, nothing else.
fn set_nice(target: Option<i32>) {
    let Some(nice) = target else { return };
    if let Err(e) = rustix::process::setpriority_process(None, nice) {
        tracing::warn!(error = %e, nice, "cannot lower the thread's priority");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn work_and_its_blocking_threads_run_at_the_lower_priority() {
        let before = nice_of_this_thread();
        let answer = spawn("herald-test-bg", 5, || async {
            let blocking = tokio::task::spawn_blocking(nice_of_this_thread)
                .await
                .expect("the blocking task runs");
            (nice_of_this_thread(), blocking)
        })
        .expect("the thread starts")
        .blocking_recv()
        .expect("the work answers");
        let lowered = (before + 5).min(19);
        assert_eq!(
            answer,
            (lowered, lowered),
            "runtime thread, blocking thread"
        );
        assert_eq!(
            nice_of_this_thread(),
            before,
            "the caller's priority is its own"
        );
    }

    #[test]
    fn nice_zero_keeps_the_callers_priority() {
        let before = nice_of_this_thread();
        let answer = spawn("herald-test-bg", 0, || async { nice_of_this_thread() })
            .expect("the thread starts")
            .blocking_recv()
            .expect("the work answers");
        assert_eq!(answer, before);
    }

    #[test]
    fn a_panic_in_the_work_is_an_error_not_a_hang() {
        let rx = spawn("herald-test-bg", 1, || async { panic!("the work fails") })
            .expect("the thread starts");
        assert!(rx.blocking_recv().is_err());
    }
}
