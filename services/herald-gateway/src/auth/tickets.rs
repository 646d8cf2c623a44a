//! Single-use WebSocket tickets for browsers (which cannot set headers on a WebSocket).
//!
//! Bounded per user and globally, and never at another user's expense: a user at their cap
//! loses their own oldest ticket; a store full of live tickets refuses new ones until some are
//! redeemed or expire. Minting is also rate-limited per user (in the route).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::User;

/// How long a WebSocket ticket stays valid.
pub const TICKET_TTL: Duration = Duration::from_secs(30);
/// Most unredeemed tickets held at once.
pub const MAX_TICKETS: usize = 100_000;
/// Most unredeemed tickets of one user; minting another drops that user's oldest.
pub const MAX_TICKETS_PER_USER: usize = 16;

struct Entry {
    user: User,
    issued: Instant,
}

/// Why a ticket was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TicketRefused {
    Expired,
    Unknown,
}

/// A ticket just redeemed: its user, and what puts it back.
pub struct Claimed {
    ticket: String,
    entry: Entry,
}

impl Claimed {
    pub fn user(&self) -> &User {
        &self.entry.user
    }
}

/// The store is full of live tickets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TicketsFull;

#[derive(Default)]
struct Store {
    live: HashMap<String, Entry>,
    /// Each user's live tickets, oldest first.
    by_user: HashMap<String, VecDeque<String>>,
}

impl Store {
    fn forget(&mut self, ticket: &str) -> Option<Entry> {
        let entry = self.live.remove(ticket)?;
        if let Some(q) = self.by_user.get_mut(&entry.user.id) {
            q.retain(|t| t != ticket);
            if q.is_empty() {
                self.by_user.remove(&entry.user.id);
            }
        }
        Some(entry)
    }

    fn purge_expired(&mut self, now: Instant) {
        let expired: Vec<String> = self
            .live
            .iter()
            .filter(|(_, e)| now.duration_since(e.issued) >= TICKET_TTL)
            .map(|(t, _)| t.clone())
            .collect();
        for t in expired {
            self.forget(&t);
        }
    }
}

#[derive(Default)]
pub struct Tickets {
    store: Mutex<Store>,
}

impl Tickets {
    /// A new single-use ticket for `user`.
    pub fn issue(&self, user: &User) -> Result<String, TicketsFull> {
        let ticket = format!(
            "{}{}",
            uuid::Uuid::new_v4().simple(),
            uuid::Uuid::new_v4().simple()
        );
        let now = Instant::now();
        let mut store = self.store.lock().expect("tickets lock");
        let own = store.by_user.get(&user.id).map_or(0, VecDeque::len);
        if own >= MAX_TICKETS_PER_USER {
            let oldest = store.by_user[&user.id][0].clone();
            store.forget(&oldest);
        } else if store.live.len() >= MAX_TICKETS {
            store.purge_expired(now);
            if store.live.len() >= MAX_TICKETS {
                return Err(TicketsFull);
            }
        }
        store.live.insert(
            ticket.clone(),
            Entry {
                user: user.clone(),
                issued: now,
            },
        );
        store
            .by_user
            .entry(user.id.clone())
            .or_default()
            .push_back(ticket.clone());
        Ok(ticket)
    }

    /// Redeems a ticket, once (the gateway claims tickets: [`Tickets::claim`]).
    #[cfg(test)]
    pub fn redeem(&self, ticket: &str) -> Result<User, TicketRefused> {
        self.claim(ticket).map(|c| c.entry.user)
    }

    /// Redeems a ticket, once, keeping what [`Tickets::put_back`] needs to undo it.
    pub fn claim(&self, ticket: &str) -> Result<Claimed, TicketRefused> {
        let entry = self.store.lock().expect("tickets lock").forget(ticket);
        match entry {
            Some(e) if e.issued.elapsed() < TICKET_TTL => Ok(Claimed {
                ticket: ticket.to_owned(),
                entry: e,
            }),
            Some(_) => Err(TicketRefused::Expired),
            None => Err(TicketRefused::Unknown),
        }
    }

    /// Makes a claimed ticket valid again, with its first expiry, when what it was claimed for
    /// was refused (a connection limit), unless its user now holds [`MAX_TICKETS_PER_USER`]
    /// live tickets or the store is full: then it stays spent. While it is out, the same
    /// ticket is refused as unknown (a concurrent use of a single-use ticket).
    pub fn put_back(&self, claimed: Claimed) {
        let Claimed { ticket, entry } = claimed;
        let mut store = self.store.lock().expect("tickets lock");
        let store = &mut *store;
        let own = store.by_user.get(&entry.user.id).map_or(0, VecDeque::len);
        if own >= MAX_TICKETS_PER_USER || store.live.len() >= MAX_TICKETS {
            return;
        }
        // In its place by age: the user's oldest ticket is the one dropped at the cap.
        let queue = store.by_user.entry(entry.user.id.clone()).or_default();
        let at = queue
            .iter()
            .position(|t| store.live.get(t).is_some_and(|e| e.issued > entry.issued))
            .unwrap_or(queue.len());
        queue.insert(at, ticket.clone());
        store.live.insert(ticket, entry);
    }

    /// Unredeemed tickets held.
    pub fn len(&self) -> usize {
        self.store.lock().expect("tickets lock").live.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(id: &str) -> User {
        User {
            id: id.into(),
            exp: u64::MAX,
        }
    }

    #[test]
    fn a_ticket_put_back_is_valid_once_more_unless_its_user_is_at_the_cap() {
        let t = Tickets::default();
        let a = t.issue(&user("alice")).unwrap();
        let claimed = t.claim(&a).unwrap();
        assert_eq!(claimed.user().id, "alice");
        assert_eq!(t.redeem(&a), Err(TicketRefused::Unknown), "spent while out");
        t.put_back(claimed);
        assert_eq!(t.redeem(&a).unwrap().id, "alice", "valid again");
        assert_eq!(t.redeem(&a), Err(TicketRefused::Unknown), "and single use");

        // Put back in its place by age: at the cap the older one goes first.
        let older = t.issue(&user("carol")).unwrap();
        std::thread::sleep(Duration::from_millis(2));
        let c = t.issue(&user("carol")).unwrap();
        t.put_back(t.claim(&c).unwrap());
        for _ in 0..MAX_TICKETS_PER_USER - 1 {
            t.issue(&user("carol")).unwrap();
        }
        assert_eq!(
            t.redeem(&older),
            Err(TicketRefused::Unknown),
            "the oldest dropped"
        );
        assert_eq!(t.redeem(&c).unwrap().id, "carol", "the one put back kept");

        // A user who now holds the cap's worth of tickets does not get it back.
        let b = t.issue(&user("bob")).unwrap();
        let claimed = t.claim(&b).unwrap();
        for _ in 0..MAX_TICKETS_PER_USER {
            t.issue(&user("bob")).unwrap();
        }
        t.put_back(claimed);
        assert_eq!(
            t.redeem(&b),
            Err(TicketRefused::Unknown),
            "bob is at the cap"
        );
    }

    #[test]
    fn a_user_at_the_cap_loses_only_their_own_oldest_ticket() {
        let t = Tickets::default();
        let bob = t.issue(&user("bob")).unwrap();
        let mine: Vec<String> = (0..MAX_TICKETS_PER_USER + 5)
            .map(|_| t.issue(&user("alice")).unwrap())
            .collect();
        assert_eq!(t.len(), MAX_TICKETS_PER_USER + 1);
        assert_eq!(t.redeem(&bob).unwrap().id, "bob", "bob's ticket survived");
        assert_eq!(
            t.redeem(&mine[0]),
            Err(TicketRefused::Unknown),
            "oldest dropped"
        );
        assert_eq!(t.redeem(mine.last().unwrap()).unwrap().id, "alice");
        assert_eq!(
            t.redeem(mine.last().unwrap()),
            Err(TicketRefused::Unknown),
            "single use"
        );
    }

    #[test]
    fn a_full_store_refuses_instead_of_evicting() {
        let t = Tickets::default();
        {
            let mut s = t.store.lock().unwrap();
            for i in 0..MAX_TICKETS {
                let u = user(&format!("u{i}"));
                let key = format!("t{i}");
                s.live.insert(
                    key.clone(),
                    Entry {
                        user: u.clone(),
                        issued: Instant::now(),
                    },
                );
                s.by_user.entry(u.id).or_default().push_back(key);
            }
        }
        assert_eq!(t.issue(&user("late")), Err(TicketsFull));
        assert_eq!(t.redeem("t7").unwrap().id, "u7", "nobody was evicted");
        assert!(
            t.issue(&user("late")).is_ok(),
            "room again after a redemption"
        );
    }
}
