//! What the projector reports on `/readyz`: each stage is ready once it has its partitions (an
//! assignment, possibly empty when there are more replicas than partitions) and the partitions
//! it was assigned are at most a bound of records behind the log; the timer stage is always
//! ready, and says whether this replica holds its lease.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;

use herald_ports::projection::Stage;
use herald_ports::readiness::Report;
use herald_ports::telemetry;

#[derive(Debug, Clone, Default)]
struct StageStatus {
    group: String,
    /// `None` until the group assigned partitions to this replica.
    assigned: Option<BTreeSet<u32>>,
    /// Records behind over the assigned partitions, when last measured.
    lag: Option<u64>,
}

#[derive(Debug, Clone, Default)]
struct TimerStatus {
    running: bool,
    holder: Option<String>,
    held_by_me: bool,
}

/// Shared by a projector's stages and whoever serves `/readyz`.
#[derive(Debug, Default)]
pub struct Status {
    stages: Mutex<BTreeMap<Stage, StageStatus>>,
    timers: Mutex<TimerStatus>,
}

impl Status {
    /// A stage (re)started as a member of `group`: it waits for partitions.
    pub(crate) fn waiting(&self, stage: Stage, group: &str) {
        self.stages.lock().expect("status lock").insert(
            stage,
            StageStatus {
                group: group.to_owned(),
                assigned: None,
                lag: None,
            },
        );
        telemetry::projector_ready(stage, false);
    }

    pub(crate) fn assigned(&self, stage: Stage, partitions: &[u32]) {
        let mut stages = self.stages.lock().expect("status lock");
        let s = stages.entry(stage).or_default();
        s.assigned
            .get_or_insert_with(BTreeSet::new)
            .extend(partitions.iter().copied());
        s.lag = None;
    }

    pub(crate) fn revoked(&self, stage: Stage, partitions: &[u32]) {
        let mut stages = self.stages.lock().expect("status lock");
        let s = stages.entry(stage).or_default();
        if let Some(a) = &mut s.assigned {
            for p in partitions {
                a.remove(p);
            }
            // All revoked: a rebalance is under way until the next assignment.
            if a.is_empty() {
                s.assigned = None;
            }
        }
        s.lag = None;
    }

    /// The partitions the stage holds now (empty while it waits).
    pub(crate) fn partitions(&self, stage: Stage) -> BTreeSet<u32> {
        let stages = self.stages.lock().expect("status lock");
        stages
            .get(&stage)
            .and_then(|s| s.assigned.clone())
            .unwrap_or_default()
    }

    /// The stage's lag over its assigned partitions was measured.
    pub(crate) fn lag(&self, stage: Stage, lag: u64, ready_max_lag: u64) {
        let mut stages = self.stages.lock().expect("status lock");
        let s = stages.entry(stage).or_default();
        s.lag = Some(lag);
        telemetry::projector_ready(stage, s.assigned.is_some() && lag <= ready_max_lag);
    }

    pub(crate) fn timers(&self, holder: Option<&str>, held_by_me: bool) {
        *self.timers.lock().expect("status lock") = TimerStatus {
            running: true,
            holder: holder.map(str::to_owned),
            held_by_me,
        };
        telemetry::projector_timer_lease(held_by_me);
    }

    pub(crate) fn report(&self, ready_max_lag: u64) -> Report {
        let stages = self.stages.lock().expect("status lock").clone();
        let mut report = Report::new(Vec::new());
        for stage in Stage::ALL {
            let (ok, detail) = match stages.get(&stage) {
                None => (false, "not started".to_owned()),
                Some(StageStatus {
                    group,
                    assigned: None,
                    ..
                }) => (false, format!("waiting for partitions of group {group}")),
                Some(StageStatus {
                    group,
                    assigned: Some(ps),
                    lag: None,
                }) => (
                    false,
                    format!("group {group}, partitions {ps:?}; lag not measured yet"),
                ),
                Some(StageStatus {
                    group,
                    assigned: Some(ps),
                    lag: Some(lag),
                }) => (
                    *lag <= ready_max_lag,
                    format!(
                        "group {group}, partitions {ps:?}; {lag} records behind (ready at \
                         {ready_max_lag} or fewer)"
                    ),
                ),
            };
            report.push(stage.name(), ok, detail);
        }
        let t = self.timers.lock().expect("status lock").clone();
        let detail = match (t.running, t.held_by_me, t.holder) {
            (false, ..) => "not started".to_owned(),
            (true, true, _) => "this replica holds the timer lease".to_owned(),
            (true, false, Some(h)) => format!("the timer lease is held by {h}"),
            (true, false, None) => "the timer lease is not taken yet".to_owned(),
        };
        report.push("timers", t.running, detail);
        report
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stage_is_ready_with_partitions_and_a_small_lag() {
        let s = Status::default();
        assert!(!s.report(10).ready, "nothing started");
        s.timers(None, false);
        s.waiting(Stage::Fanout, "fanout.x");
        s.waiting(Stage::Inbox, "inbox.x");
        let r = s.report(10);
        assert!(!r.ready);
        assert!(
            r.failing()
                .contains("waiting for partitions of group inbox.x"),
            "{r:?}"
        );
        s.assigned(Stage::Fanout, &[0, 1]);
        s.assigned(Stage::Inbox, &[]);
        assert!(!s.report(10).ready, "lag not measured");
        s.lag(Stage::Fanout, 11, 10);
        s.lag(Stage::Inbox, 0, 10);
        assert!(!s.report(10).ready, "11 behind");
        s.lag(Stage::Fanout, 10, 10);
        let r = s.report(10);
        assert!(r.ready, "{r:?}");
        // A rebalance revokes everything: waiting again.
        s.revoked(Stage::Fanout, &[0, 1]);
        assert!(!s.report(10).ready);
        s.assigned(Stage::Fanout, &[1]);
        assert_eq!(s.partitions(Stage::Fanout), BTreeSet::from([1]));
    }
}
