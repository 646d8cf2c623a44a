//! Readiness reports (`GET /readyz` on the gateway and on the projector's metrics address): a
//! list of named checks, ready when every one passes. Liveness (`/healthz`) is separate: it only
//! says the process answers.

use serde::Serialize;

/// How far behind the log a projector stage (over the partitions it was assigned) or a
/// gateway's live hub (over every partition) may be and still count as ready, in records.
/// About half of one projector batch (`MAX_BATCH_RECORDS` = 2048): a replica that is ready
/// applies what is pending within its next batch or two.
pub const READY_MAX_LAG_RECORDS: u64 = 1000;

/// One check of a readiness report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    pub name: String,
    pub ok: bool,
    /// What was seen: the partitions assigned, the lag, the error.
    pub detail: String,
}

/// Whether a process is ready to serve, and why not.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Report {
    pub ready: bool,
    pub checks: Vec<Check>,
}

impl Report {
    pub fn new(checks: Vec<Check>) -> Report {
        Report {
            ready: checks.iter().all(|c| c.ok),
            checks,
        }
    }

    /// Adds a check (and keeps `ready` true only while every check passes).
    pub fn push(&mut self, name: impl Into<String>, ok: bool, detail: impl Into<String>) {
        self.checks.push(Check {
            name: name.into(),
            ok,
            detail: detail.into(),
        });
        self.ready = self.checks.iter().all(|c| c.ok);
    }

    /// The checks that failed, as one line (for logs and error bodies).
    pub fn failing(&self) -> String {
        self.checks
            .iter()
            .filter(|c| !c.ok)
            .map(|c| format!("{}: {}", c.name, c.detail))
            .collect::<Vec<_>>()
            .join("; ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_only_when_every_check_passes() {
        let mut r = Report::new(Vec::new());
        assert!(r.ready, "no checks: nothing stands in the way");
        r.push("a", true, "fine");
        assert!(r.ready);
        r.push("b", false, "waiting for partitions");
        assert!(!r.ready);
        r.push("c", true, "fine");
        assert!(!r.ready, "one failing check is enough");
        assert_eq!(r.failing(), "b: waiting for partitions");
    }
}
