//! A bounded multi-producer, single-consumer queue that holds no memory while it is empty.
//!
//! Every session has two queues (live events from the hub, frames for its socket), and most
//! sessions are idle most of the time. tokio's `mpsc` allocates its channel (about 512 bytes,
//! cache-padded) and a first block of 32 slots up front, about 1.3 KiB a queue; this one is a
//! small shared header and a `VecDeque` that allocates on the first item and is given back once
//! a burst has drained. The receiver waits by leaving its waker in the header (polled, not a
//! future of its own), and a receiver polled by the same task as its senders (a WebSocket
//! session's frames) takes items without waiting at all ([`Receiver::try_recv`]).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use tokio::sync::Notify;

/// A queue emptied after holding more than this many items gives its memory back.
const KEEP_CAPACITY: usize = 16;

struct State<T> {
    items: VecDeque<T>,
    senders: usize,
    receiver: bool,
    /// The receiver's task, waiting for an item or for the last sender to leave.
    reader: Option<Waker>,
}

impl<T> State<T> {
    /// The next item; a queue emptied after a burst gives its memory back.
    fn pop(&mut self) -> Option<T> {
        let item = self.items.pop_front();
        if self.items.is_empty() && self.items.capacity() > KEEP_CAPACITY {
            self.items = VecDeque::new();
        }
        item
    }
}

struct Shared<T> {
    state: Mutex<State<T>>,
    capacity: usize,
    /// An item was taken or the receiver left.
    writable: Notify,
}

impl<T> Shared<T> {
    fn lock(&self) -> MutexGuard<'_, State<T>> {
        // A panic while holding the lock leaves the queue consistent (every critical section
        // is a single push, pop or flag), so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A queue of at most `capacity` items.
pub fn bounded<T>(capacity: usize) -> (Sender<T>, Receiver<T>) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            items: VecDeque::new(),
            senders: 1,
            receiver: true,
            reader: None,
        }),
        capacity,
        writable: Notify::new(),
    });
    (Sender(shared.clone()), Receiver(shared))
}

#[derive(Debug, PartialEq, Eq)]
pub enum TrySendError<T> {
    Full(T),
    Closed(T),
}

pub struct Sender<T>(Arc<Shared<T>>);

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        self.0.lock().senders += 1;
        Sender(self.0.clone())
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        let reader = {
            let mut st = self.0.lock();
            st.senders -= 1;
            if st.senders == 0 {
                st.reader.take()
            } else {
                None
            }
        };
        if let Some(reader) = reader {
            reader.wake();
        }
    }
}

impl<T> Sender<T> {
    /// Queues `item` if there is room and a receiver.
    pub fn try_send(&self, item: T) -> Result<(), TrySendError<T>> {
        let reader = {
            let mut st = self.0.lock();
            if !st.receiver {
                return Err(TrySendError::Closed(item));
            }
            if st.items.len() >= self.0.capacity {
                return Err(TrySendError::Full(item));
            }
            st.items.push_back(item);
            st.reader.take()
        };
        if let Some(reader) = reader {
            reader.wake();
        }
        Ok(())
    }

    /// Queues `item`, waiting for room; gives it back if the receiver is gone.
    pub async fn send(&self, mut item: T) -> Result<(), T> {
        loop {
            let writable = self.0.writable.notified();
            tokio::pin!(writable);
            writable.as_mut().enable();
            match self.try_send(item) {
                Ok(()) => return Ok(()),
                Err(TrySendError::Closed(i)) => return Err(i),
                Err(TrySendError::Full(i)) => item = i,
            }
            writable.await;
        }
    }

    /// Free slots.
    pub fn capacity(&self) -> usize {
        self.0.capacity.saturating_sub(self.0.lock().items.len())
    }

    /// Resolves once the receiver is gone.
    pub async fn closed(&self) {
        loop {
            let writable = self.0.writable.notified();
            tokio::pin!(writable);
            writable.as_mut().enable();
            if !self.0.lock().receiver {
                return;
            }
            writable.await;
        }
    }
}

pub struct Receiver<T>(Arc<Shared<T>>);

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        let dropped = {
            let mut st = self.0.lock();
            st.receiver = false;
            std::mem::take(&mut st.items)
        };
        drop(dropped);
        self.0.writable.notify_waiters();
    }
}

impl<T> Receiver<T> {
    /// The next item, if one is queued (without waiting). A consumer polled by the same task
    /// as every producer (a WebSocket session and its socket) needs no wake-up.
    pub fn try_recv(&mut self) -> Option<T> {
        let item = self.0.lock().pop();
        if item.is_some() {
            self.0.writable.notify_waiters();
        }
        item
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.0.lock().items.is_empty()
    }

    /// The next item; `None` once every sender is gone and the queue is empty.
    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<T>> {
        let item = {
            let mut st = self.0.lock();
            match st.pop() {
                Some(item) => item,
                None if st.senders == 0 => return Poll::Ready(None),
                None => {
                    // Under the lock that senders push under: no item is missed.
                    if !st.reader.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                        st.reader = Some(cx.waker().clone());
                    }
                    return Poll::Pending;
                }
            }
        };
        self.0.writable.notify_waiters();
        Poll::Ready(Some(item))
    }

    /// The next item; `None` once every sender is gone and the queue is empty.
    pub async fn recv(&mut self) -> Option<T> {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const GUARD: Duration = Duration::from_secs(10);

    #[tokio::test]
    async fn items_arrive_in_order_and_the_queue_is_bounded() {
        let (tx, mut rx) = bounded(3);
        for i in 0..3 {
            tx.try_send(i).unwrap();
        }
        assert_eq!(tx.try_send(9), Err(TrySendError::Full(9)));
        assert_eq!(tx.capacity(), 0);
        assert_eq!((rx.try_recv(), rx.try_recv()), (Some(0), Some(1)));
        assert_eq!(tx.capacity(), 2);
        assert!(!rx.is_empty());
        assert_eq!(rx.recv().await, Some(2));
        assert!(rx.is_empty());
        assert_eq!(rx.try_recv(), None);
    }

    #[tokio::test]
    async fn a_waiting_receiver_wakes_for_an_item_and_ends_with_the_last_sender() {
        let (tx, mut rx) = bounded::<u32>(4);
        let tx2 = tx.clone();
        let waiting = tokio::spawn(async move {
            let first = rx.recv().await;
            let then = rx.recv().await;
            (first, then)
        });
        tokio::task::yield_now().await;
        tx.try_send(7).unwrap();
        drop(tx);
        drop(tx2);
        let (first, then) = tokio::time::timeout(GUARD, waiting).await.unwrap().unwrap();
        assert_eq!((first, then), (Some(7), None));
    }

    #[tokio::test]
    async fn senders_see_the_receiver_leave() {
        let (tx, rx) = bounded::<u32>(1);
        tx.try_send(1).unwrap();
        let blocked = {
            let tx = tx.clone();
            tokio::spawn(async move { tx.send(2).await })
        };
        let closed = {
            let tx = tx.clone();
            tokio::spawn(async move { tx.closed().await })
        };
        tokio::task::yield_now().await;
        drop(rx);
        assert_eq!(
            tokio::time::timeout(GUARD, blocked).await.unwrap().unwrap(),
            Err(2)
        );
        tokio::time::timeout(GUARD, closed).await.unwrap().unwrap();
        assert_eq!(tx.try_send(3), Err(TrySendError::Closed(3)));
    }

    #[tokio::test]
    async fn a_blocked_sender_proceeds_when_room_is_made() {
        let (tx, mut rx) = bounded::<u32>(1);
        tx.try_send(1).unwrap();
        let blocked = {
            let tx = tx.clone();
            tokio::spawn(async move { tx.send(2).await })
        };
        tokio::task::yield_now().await;
        assert_eq!(rx.recv().await, Some(1));
        tokio::time::timeout(GUARD, blocked)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(rx.recv().await, Some(2));
    }

    #[tokio::test]
    async fn a_drained_burst_gives_its_memory_back() {
        let (tx, mut rx) = bounded::<u64>(1024);
        for i in 0..1000 {
            tx.try_send(i).unwrap();
        }
        assert!(rx.0.lock().items.capacity() >= 1000);
        let mut out = Vec::new();
        while let Some(i) = rx.try_recv() {
            out.push(i);
        }
        assert_eq!(out.len(), 1000);
        assert_eq!(rx.0.lock().items.capacity(), 0);
    }
}
