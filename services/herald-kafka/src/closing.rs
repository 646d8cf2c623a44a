//! Consumers close on threads of their own.
//!
//! Dropping a librdkafka consumer that has a `group.id` closes it: rdkafka's `Drop` polls until
//! the consumer has left its group, with no bound. On the test broker a projector's stage
//! consumer once never finished that close after its partitions were revoked; the close ran on
//! a runtime worker thread, so the stage never ended, and the runtime's shutdown waited for
//! that thread: the process did not exit on SIGTERM until it was killed. Here every consumer is
//! closed on a thread of its own ([`OffThread`]), a stopping stage waits for its close at most
//! [`CONSUMER_CLOSE_GRACE`] ([`OffThread::close`]), and a process makes no new group consumer
//! while [`MAX_CLOSING_CONSUMERS`] closes are unfinished.

use std::ops::Deref;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use herald_ports::log::LogError;

use crate::storage;

/// How long a consumer that is closed explicitly ([`OffThread::close`]) is waited for. A clean
/// close sends the group its leave, so the partitions move to the other members at once
/// rather than after the session timeout; a close that takes longer goes on in the background
/// while the caller moves on (the broker drops the member after its session timeout).
pub const CONSUMER_CLOSE_GRACE: Duration = Duration::from_secs(10);

/// Closes in progress at most, per process; past it, [`room_for_a_consumer`] refuses to make
/// another (each unfinished close holds a thread and a librdkafka client).
pub const MAX_CLOSING_CONSUMERS: usize = 16;

static CLOSING: AtomicUsize = AtomicUsize::new(0);

/// Consumers of this process whose close has not finished.
pub(crate) fn closing_consumers() -> usize {
    CLOSING.load(Ordering::Relaxed)
}

/// An error if [`MAX_CLOSING_CONSUMERS`] closes are unfinished (the broker is not answering
/// them): making more consumers would only add to them.
pub(crate) fn room_for_a_consumer() -> Result<(), LogError> {
    let n = closing_consumers();
    if n >= MAX_CLOSING_CONSUMERS {
        return Err(storage(format!(
            "{n} Kafka consumers of this process are still leaving their groups (the broker \
             has not answered their close); no new consumer until fewer than \
             {MAX_CLOSING_CONSUMERS} are"
        )));
    }
    Ok(())
}

/// A consumer that is closed on a thread of its own when it is dropped or closed.
pub(crate) struct OffThread<T: Send + 'static> {
    consumer: Option<T>,
    what: String,
}

impl<T: Send + 'static> OffThread<T> {
    /// `what` names the consumer in the log (its topic and group).
    pub(crate) fn new(consumer: T, what: String) -> Self {
        Self {
            consumer: Some(consumer),
            what,
        }
    }

    /// Closes the consumer and waits for the close, at most [`CONSUMER_CLOSE_GRACE`].
    pub(crate) async fn close(self) {
        self.close_within(CONSUMER_CLOSE_GRACE).await
    }

    async fn close_within(mut self, grace: Duration) {
        let Some(done) = self.start_close() else {
            return;
        };
        let started = Instant::now();
        match tokio::time::timeout(grace, done).await {
            Ok(_) => {
                tracing::debug!(consumer = self.what, took = ?started.elapsed(), "Kafka consumer closed")
            }
            Err(_) => tracing::warn!(
                consumer = self.what,
                "Kafka consumer not closed within {grace:?}; its close goes on in the \
                 background (the broker drops the member after its session timeout)"
            ),
        }
    }

    /// Hands the consumer to a thread that drops it; the receiver hears when it is dropped.
    fn start_close(&mut self) -> Option<tokio::sync::oneshot::Receiver<()>> {
        let consumer = self.consumer.take()?;
        let (done, heard) = tokio::sync::oneshot::channel();
        CLOSING.fetch_add(1, Ordering::Relaxed);
        let what = self.what.clone();
        let spawned = std::thread::Builder::new()
            .name("kafka-close".into())
            .spawn(move || {
                let started = Instant::now();
                drop(consumer);
                CLOSING.fetch_sub(1, Ordering::Relaxed);
                if started.elapsed() > CONSUMER_CLOSE_GRACE {
                    tracing::info!(consumer = what, took = ?started.elapsed(), "Kafka consumer closed late");
                }
                let _ = done.send(());
            });
        if let Err(e) = spawned {
            // The closure, and the consumer in it, was dropped here: the close ran inline.
            CLOSING.fetch_sub(1, Ordering::Relaxed);
            tracing::warn!(consumer = self.what, error = %e, "no thread for a Kafka consumer's close; closed inline");
            return None;
        }
        Some(heard)
    }
}

impl<T: Send + 'static> Deref for OffThread<T> {
    type Target = T;

    fn deref(&self) -> &T {
        self.consumer
            .as_ref()
            .expect("a consumer is only taken by close or drop, which consume it")
    }
}

impl<T: Send + 'static> Drop for OffThread<T> {
    fn drop(&mut self) {
        let _ = self.start_close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Stands for a consumer whose close never finishes until released.
    struct StuckClose(std::sync::mpsc::Receiver<()>);

    /// The count is per process: these tests take turns.
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

    fn wait_for_closes(count: usize) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while closing_consumers() != count {
            assert!(Instant::now() < deadline, "released closes never finished");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    impl Drop for StuckClose {
        fn drop(&mut self) {
            let _ = self.0.recv();
        }
    }

    // SERIAL orders this test against the others, each on a thread of its own; nothing on this
    // runtime takes the lock, so holding it over the await cannot deadlock.
    #[allow(clippy::await_holding_lock)]
    #[tokio::test(flavor = "current_thread")]
    async fn a_close_that_never_finishes_holds_neither_the_caller_nor_the_runtime() {
        let _turn = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let (release, held) = std::sync::mpsc::channel();
        let before = closing_consumers();
        let consumer = OffThread::new(StuckClose(held), "stuck".into());
        // On a current-thread runtime an inline close would block the only thread, and the
        // grace's timer with it: this returns only because the close runs elsewhere.
        consumer.close_within(Duration::from_millis(100)).await;
        assert_eq!(
            closing_consumers(),
            before + 1,
            "the close is still going on"
        );
        release.send(()).unwrap();
        wait_for_closes(before);
    }

    #[test]
    fn a_dropped_consumer_closes_on_another_thread() {
        let _turn = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let (release, held) = std::sync::mpsc::channel();
        let before = closing_consumers();
        drop(OffThread::new(StuckClose(held), "dropped".into()));
        // Drop returned while the close waits.
        assert_eq!(closing_consumers(), before + 1);
        release.send(()).unwrap();
        wait_for_closes(before);
    }

    #[test]
    fn no_new_consumer_while_the_most_closes_are_unfinished() {
        let _turn = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let before = closing_consumers();
        assert!(room_for_a_consumer().is_ok());
        let releases: Vec<_> = (before..MAX_CLOSING_CONSUMERS)
            .map(|_| {
                let (release, held) = std::sync::mpsc::channel::<()>();
                drop(OffThread::new(StuckClose(held), "stuck".into()));
                release
            })
            .collect();
        let err = room_for_a_consumer().unwrap_err().to_string();
        assert!(err.contains("still leaving their groups"), "{err}");
        for r in releases {
            r.send(()).unwrap();
        }
        wait_for_closes(before);
        assert!(room_for_a_consumer().is_ok());
    }
}
