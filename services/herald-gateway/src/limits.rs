//! Limits: one token bucket (producer rates, client frame rates), per-producer buckets, the
//! global and per-user connection limits, and the sessions' memory budget. No I/O; the caller
//! passes the time.

use std::collections::HashMap;
use std::sync::atomic::{AtomicIsize, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Largest request body accepted, in bytes (413 beyond).
pub const MAX_BODY_BYTES: usize = 256 * 1024;
/// Most callers whose rate-limit buckets one [`RateLimits`] remembers; beyond, full (idle)
/// buckets are dropped, and if none is idle the newcomer is refused until one is.
pub const MAX_RATE_BUCKETS: usize = 10_000;

/// A token bucket: `rate` tokens a second, at most `burst` saved up; starts full.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    tokens: f64,
    rate: f64,
    burst: f64,
    at: Instant,
}

impl TokenBucket {
    pub fn new(rate: f64, burst: f64, now: Instant) -> TokenBucket {
        let (rate, burst) = (rate.max(0.001), burst.max(1.0));
        TokenBucket {
            tokens: burst,
            rate,
            burst,
            at: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.at = now;
    }

    /// Takes `n` tokens, all or none; otherwise says how long until they are there.
    pub fn take(&mut self, n: f64, now: Instant) -> Result<(), Duration> {
        self.refill(now);
        if self.tokens >= n {
            self.tokens -= n;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((n - self.tokens) / self.rate))
        }
    }

    /// Whether the bucket is full at `now` (an idle bucket, safe to forget).
    pub fn is_full(&self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens + elapsed * self.rate >= self.burst
    }
}

/// One token bucket per caller (a producer, an operator, a user minting tickets), bounded in
/// number.
pub struct RateLimits {
    rate: f64,
    burst: f64,
    buckets: Mutex<HashMap<String, TokenBucket>>,
}

impl RateLimits {
    pub fn new(rate: f64, burst: f64) -> RateLimits {
        RateLimits {
            rate,
            burst,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// The most tokens a bucket holds: a request for more can never be served.
    pub fn burst(&self) -> f64 {
        self.burst
    }

    /// Takes `n` tokens from `caller`'s bucket, all or none; otherwise the whole seconds until
    /// they are there (at least 1).
    pub fn take(&self, caller: &str, n: usize) -> Result<(), u64> {
        let now = Instant::now();
        let mut buckets = self.buckets.lock().expect("rate limits lock");
        if buckets.len() >= MAX_RATE_BUCKETS && !buckets.contains_key(caller) {
            buckets.retain(|_, b| !b.is_full(now));
            if buckets.len() >= MAX_RATE_BUCKETS {
                return Err(1);
            }
        }
        buckets
            .entry(caller.to_owned())
            .or_insert_with(|| TokenBucket::new(self.rate, self.burst, now))
            .take(n as f64, now)
            .map_err(|wait| wait.as_secs_f64().ceil().max(1.0) as u64)
    }
}

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    Global,
    PerUser(usize),
}

/// The global and per-user connection limits.
pub struct ConnectionLimits {
    capacity: usize,
    global: Arc<Semaphore>,
    per_user: Mutex<HashMap<String, usize>>,
    max_per_user: usize,
}

impl ConnectionLimits {
    pub fn new(max: usize, max_per_user: usize) -> Arc<ConnectionLimits> {
        Arc::new(ConnectionLimits {
            capacity: max,
            global: Arc::new(Semaphore::new(max)),
            per_user: Mutex::new(HashMap::new()),
            max_per_user,
        })
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.capacity - self.global.available_permits()
    }

    /// Waits (at most `timeout`) until every connection has ended.
    pub async fn drained(&self, timeout: Duration) {
        let deadline = tokio::time::Instant::now() + timeout;
        while self.open() > 0 {
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!(open = self.open(), "connections still open at shutdown");
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A slot for one connection of `user`, held until the guard drops.
    pub fn acquire(self: &Arc<Self>, user: &str) -> Result<ConnectionGuard, Refused> {
        let permit = self
            .global
            .clone()
            .try_acquire_owned()
            .map_err(|_| Refused::Global)?;
        let mut per = self.per_user.lock().expect("limits lock");
        let n = per.entry(user.to_owned()).or_default();
        if *n >= self.max_per_user {
            if *n == 0 {
                per.remove(user);
            }
            return Err(Refused::PerUser(self.max_per_user));
        }
        *n += 1;
        Ok(ConnectionGuard {
            _permit: permit,
            limits: self.clone(),
            user: user.to_owned(),
        })
    }
}

/// Held for the life of a connection.
pub struct ConnectionGuard {
    _permit: OwnedSemaphorePermit,
    limits: Arc<ConnectionLimits>,
    user: String,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        let mut per = self.limits.per_user.lock().expect("limits lock");
        if let Some(n) = per.get_mut(&self.user) {
            *n -= 1;
            if *n == 0 {
                per.remove(&self.user);
            }
        }
    }
}

/// The default of `GatewayConfig::max_session_bytes`: 1 GiB.
pub const MAX_SESSION_BYTES: usize = 1 << 30;

/// One budget for what all of a gateway's sessions hold by weight
/// ([`herald_core::session::Session::memory_bytes`]: notifications in flight and queued, live
/// events held, a replay read that is out). A session is bounded on its own (a few MiB), but
/// many at once were not: 1,000 devices that connect to a backlog and stop reading held 2 GB.
/// A replay reads only while this has room (`Io::spare_bytes`; a session that holds nothing
/// still reads a row at a time), so a backlog waits in the store instead of in memory. Live
/// events are not refused for it: a session's own bounds take care of those.
pub struct SessionBudget {
    limit: usize,
    /// What sessions were charged, in shards by thread: every delivery and ACK changes a
    /// session's charge, and one counter for all would bounce between the cores on each. A
    /// shard may go below zero (a session charged on one thread, given back on another); their
    /// sum is exact.
    shards: [Shard; BUDGET_SHARDS],
}

/// Shards of a [`SessionBudget`]'s count.
const BUDGET_SHARDS: usize = 8;

/// One shard, on a cache line of its own.
#[repr(align(128))]
#[derive(Default)]
struct Shard(AtomicIsize);

/// The shard of the calling thread.
fn shard() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static SHARD: usize = NEXT.fetch_add(1, Ordering::Relaxed) % BUDGET_SHARDS;
    }
    SHARD.with(|s| *s)
}

impl SessionBudget {
    pub fn new(limit: usize) -> SessionBudget {
        SessionBudget {
            limit,
            shards: Default::default(),
        }
    }

    /// What the sessions hold now, as last charged.
    pub fn used(&self) -> usize {
        let sum: isize = self
            .shards
            .iter()
            .map(|s| s.0.load(Ordering::Relaxed))
            .sum();
        sum.max(0) as usize
    }

    /// What is free.
    pub fn spare(&self) -> usize {
        self.limit.saturating_sub(self.used())
    }

    /// A session's account, empty; what it is charged is given back when it drops.
    pub fn account(&self) -> Charge<'_> {
        Charge {
            budget: self,
            charged: 0,
        }
    }

    fn add(&self, delta: isize) {
        self.shards[shard()].0.fetch_add(delta, Ordering::Relaxed);
    }
}

/// What one session is charged against a [`SessionBudget`].
pub struct Charge<'a> {
    budget: &'a SessionBudget,
    charged: usize,
}

impl Charge<'_> {
    /// The session now holds `bytes`.
    pub fn set(&mut self, bytes: usize) {
        if bytes != self.charged {
            // Bytes a process holds fit an isize.
            self.budget.add(bytes as isize - self.charged as isize);
            self.charged = bytes;
        }
    }
}

impl Drop for Charge<'_> {
    fn drop(&mut self) {
        self.set(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_budget_counts_what_its_accounts_hold_until_they_drop() {
        let budget = SessionBudget::new(1000);
        let mut a = budget.account();
        let mut b = budget.account();
        a.set(300);
        b.set(500);
        assert_eq!((budget.used(), budget.spare()), (800, 200));
        a.set(100);
        b.set(1200);
        assert_eq!((budget.used(), budget.spare()), (1300, 0));
        drop(b);
        assert_eq!((budget.used(), budget.spare()), (100, 900));
        drop(a);
        assert_eq!(budget.used(), 0);
        // Charged on one thread, given back on another.
        let mut c = budget.account();
        c.set(700);
        std::thread::scope(|s| {
            s.spawn(move || drop(c));
        });
        assert_eq!((budget.used(), budget.spare()), (0, 1000));
    }

    #[test]
    fn a_bucket_refills_at_its_rate_up_to_its_burst() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10.0, 3.0, t0);
        for _ in 0..3 {
            assert!(b.take(1.0, t0).is_ok());
        }
        let wait = b.take(1.0, t0).unwrap_err();
        assert!((wait.as_secs_f64() - 0.1).abs() < 1e-9, "{wait:?}");
        assert!(b.take(1.0, t0 + Duration::from_millis(100)).is_ok());
        assert!(b.is_full(t0 + Duration::from_secs(10)));
        let later = t0 + Duration::from_secs(10);
        assert!(b.take(3.0, later).is_ok(), "refilled to the burst");
        assert!(b.take(1.0, later).is_err(), "and no further");
    }

    #[test]
    fn taking_several_is_all_or_none() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(1.0, 5.0, t0);
        assert!(b.take(4.0, t0).is_ok());
        assert!(b.take(2.0, t0).is_err());
        assert!(b.take(1.0, t0).is_ok(), "the refused take took nothing");
    }

    #[test]
    fn callers_have_buckets_of_their_own() {
        let p = RateLimits::new(1.0, 2.0);
        assert!(p.take("a", 2).is_ok());
        assert_eq!(p.take("a", 1), Err(1));
        assert!(p.take("b", 2).is_ok(), "b is not limited by a");
        assert!(p.take("a", 3).is_err(), "more than the burst never fits");
    }

    #[tokio::test]
    async fn connections_are_limited_globally_and_per_user() {
        let l = ConnectionLimits::new(3, 2);
        let a1 = l.acquire("a").unwrap();
        let _a2 = l.acquire("a").unwrap();
        assert!(matches!(l.acquire("a"), Err(Refused::PerUser(2))));
        let _b = l.acquire("b").unwrap();
        assert!(matches!(l.acquire("c"), Err(Refused::Global)));
        drop(a1);
        assert_eq!(l.open(), 2);
        assert!(l.acquire("a").is_ok());
    }
}
