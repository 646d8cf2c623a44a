//! Resume cursors: a log offset tagged with the epoch of the log that produced it.
//!
//! A user's events all live in one partition, so the offset of a `NotificationAdded` event is a
//! position that only grows for that user: the inbox row's `seq`, and what a device sends back
//! to resume. The epoch names the log instance *and* its partition count; a log that was
//! rebuilt, or a topic that was re-partitioned, has another epoch, so a stale cursor is
//! recognised and refused (the client then resyncs from the start of its inbox) instead of being
//! misread as a position in a different sequence.

use std::fmt;
use std::str::FromStr;

use crate::CoreError;

/// Identity of a log instance and its partitioning.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Epoch(pub u32);

impl Epoch {
    /// Derives the epoch from a log's instance id (random at creation) and partition count.
    pub fn derive(log_instance: &str, partitions: u32) -> Epoch {
        let mut key = Vec::with_capacity(log_instance.len() + 5);
        key.extend_from_slice(log_instance.as_bytes());
        key.push(0);
        key.extend_from_slice(&partitions.to_le_bytes());
        Epoch(crate::partition::murmur2(&key) as u32)
    }

    /// The [`Display`](fmt::Display) text (eight lowercase hex digits) appended to `out`, without
    /// formatting machinery: every notification frame's cursor starts with it.
    pub fn write_hex(self, out: &mut String) {
        for shift in (0..8).rev() {
            let nibble = (self.0 >> (shift * 4)) & 0xf;
            out.push(char::from_digit(nibble, 16).unwrap_or('0'));
        }
    }
}

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:08x}", self.0)
    }
}

/// A position in one user's sequence of inbox rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cursor {
    pub epoch: Epoch,
    pub seq: u64,
}

impl Cursor {
    /// Whether this cursor can be used against a log with `epoch`.
    pub fn matches(&self, epoch: Epoch) -> bool {
        self.epoch == epoch
    }
}

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.epoch, self.seq)
    }
}

impl FromStr for Cursor {
    type Err = CoreError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || CoreError::BadCursor(s.chars().take(64).collect());
        let (e, o) = s.split_once('-').ok_or_else(bad)?;
        if e.len() != 8 {
            return Err(bad());
        }
        let epoch = u32::from_str_radix(e, 16).map_err(|_| bad())?;
        let seq = o.parse::<u64>().map_err(|_| bad())?;
        Ok(Cursor {
            epoch: Epoch(epoch),
            seq,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_epochs_hex_is_its_display() {
        for e in [0, 1, 0xabc, 0x8000_0000, 0xdead_beef, u32::MAX] {
            let mut hex = String::from("x");
            Epoch(e).write_hex(&mut hex);
            assert_eq!(hex, format!("x{}", Epoch(e)));
        }
    }

    #[test]
    fn cursor_round_trips_and_rejects_garbage() {
        let c = Cursor {
            epoch: Epoch(0x1a2b_3c4d),
            seq: 42,
        };
        assert_eq!(c.to_string(), "1a2b3c4d-42");
        assert_eq!("1a2b3c4d-42".parse::<Cursor>().unwrap(), c);
        for bad in [
            "",
            "42",
            "zz-1",
            "1a2b3c4d-",
            "1a2b3c4d--1",
            "1a2b3c4d-1x",
            "1a2b-3",
        ] {
            assert!(bad.parse::<Cursor>().is_err(), "{bad}");
        }
    }

    #[test]
    fn epoch_changes_with_log_instance_and_partition_count() {
        let a = Epoch::derive("log-a", 8);
        assert_eq!(a, Epoch::derive("log-a", 8));
        assert_ne!(a, Epoch::derive("log-b", 8));
        assert_ne!(a, Epoch::derive("log-a", 16));
        let c = Cursor { epoch: a, seq: 7 };
        assert!(c.matches(a));
        assert!(!c.matches(Epoch::derive("log-a", 16)));
    }
}
