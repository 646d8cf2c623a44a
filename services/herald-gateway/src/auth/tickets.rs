//! Single-use WebSocket tickets for browsers (which cannot set headers on a WebSocket).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::User;

/// How long a WebSocket ticket stays valid.
pub const TICKET_TTL: Duration = Duration::from_secs(30);
/// Most unredeemed tickets held at once; beyond, the oldest expire first.
pub const MAX_TICKETS: usize = 100_000;

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

#[derive(Default)]
pub struct Tickets {
    live: Mutex<HashMap<String, Entry>>,
}

impl Tickets {
    /// A new single-use ticket for `user`.
    pub fn issue(&self, user: &User) -> String {
        let ticket = format!(
            "{}{}",
            uuid::Uuid::new_v4().simple(),
            uuid::Uuid::new_v4().simple()
        );
        let now = Instant::now();
        let mut live = self.live.lock().expect("tickets lock");
        if live.len() >= MAX_TICKETS {
            live.retain(|_, e| now.duration_since(e.issued) < TICKET_TTL);
            if live.len() >= MAX_TICKETS {
                // Still full of live tickets: drop an arbitrary one rather than grow.
                if let Some(k) = live.keys().next().cloned() {
                    live.remove(&k);
                }
            }
        }
        live.insert(
            ticket.clone(),
            Entry {
                user: user.clone(),
                issued: now,
            },
        );
        ticket
    }

    /// Redeems a ticket, once.
    pub fn redeem(&self, ticket: &str) -> Result<User, TicketRefused> {
        let entry = self.live.lock().expect("tickets lock").remove(ticket);
        match entry {
            Some(e) if e.issued.elapsed() < TICKET_TTL => Ok(e.user),
            Some(_) => Err(TicketRefused::Expired),
            None => Err(TicketRefused::Unknown),
        }
    }
}
