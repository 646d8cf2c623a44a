//! Work that must not slow accepting down runs on threads the kernel schedules at a lower
//! priority (a higher nice value).
//!
//! A `202` waits for the durable append and nothing else; the projector works from the log and
//! catches up. When both want more CPU than the machine has, the kernel gives the append path
//! (HTTP workers, the log writer) the larger share and the projection's transactions the rest,
//! instead of an equal share each: ScyllaDB's scheduling groups give compaction fewer shares
//! than queries for the same reason. With CPU to spare the nice value changes nothing: every
//! thread runs.

use tokio::runtime::Runtime;

/// The projection's nice value beside the gateway (`--projector-nice`). At 10 the kernel gives a
/// busy thread of the pool about a tenth of the CPU time of a busy thread at 0.
pub const PROJECTOR_NICE: i32 = 10;

/// A runtime used only for its blocking threads (`Handle::spawn_blocking`). Dropped, it shuts
/// down in the background: a runtime dropped inside another panics ("Cannot drop a runtime in
/// a context where blocking is not allowed"), which hid the error of every start-up that
/// failed after the pool started (an address in use, an unreadable key file).
pub struct Pool(Option<Runtime>);

impl Pool {
    pub fn handle(&self) -> &tokio::runtime::Handle {
        self.0.as_ref().expect("a pool runs until dropped").handle()
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

/// A [`Pool`] named `name`, its threads each `nice` steps below the caller's priority (at most
/// at 19).
pub fn low_priority_pool(name: &str, nice: i32) -> std::io::Result<Pool> {
    // Linux keeps a nice value per thread and a new thread starts at its creator's: the target
    // is absolute, so that a thread started by one of the pool's gets it once, not twice.
    let target = (nice > 0).then(|| (nice_of_this_thread() + nice).min(19));
    tokio::runtime::Builder::new_current_thread()
        .thread_name(name)
        .on_thread_start(move || set_nice(target))
        .build()
        .map(|runtime| Pool(Some(runtime)))
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

    /// The nice value of a blocking thread of `pool`, asked from a runtime of the test's own.
    fn nice_in(pool: &Pool) -> i32 {
        let handle = pool.handle().clone();
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a runtime")
            .block_on(async move { handle.spawn_blocking(nice_of_this_thread).await })
            .expect("the blocking task runs")
    }

    #[test]
    fn the_pools_threads_run_at_the_lower_priority() {
        let before = nice_of_this_thread();
        let pool = low_priority_pool("herald-test-pool", 5).expect("the pool starts");
        assert_eq!(nice_in(&pool), (before + 5).min(19));
        assert_eq!(
            nice_of_this_thread(),
            before,
            "the caller's priority is its own"
        );
    }

    #[test]
    fn nice_zero_keeps_the_callers_priority() {
        let before = nice_of_this_thread();
        let pool = low_priority_pool("herald-test-pool", 0).expect("the pool starts");
        assert_eq!(nice_in(&pool), before);
    }

    /// A start-up that fails after the pool started returns its error; dropping the pool
    /// inside the server's runtime panicked.
    #[tokio::test]
    async fn a_pool_dropped_inside_a_runtime_shuts_down_quietly() {
        let pool = low_priority_pool("herald-test-pool", 0).expect("the pool starts");
        let ran = pool.handle().spawn_blocking(|| 7).await.expect("it runs");
        assert_eq!(ran, 7);
        drop(pool);
    }
}
