//! Trial identity and the trial state machine.

use serde::{Deserialize, Serialize};

/// A trial's number within its experiment, in creation order (0, 1, 2, ...).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TrialId(pub u32);

impl TrialId {
    /// The trial's name in tables and on disk: `trial_00003`.
    pub fn name(self) -> String {
        format!("trial_{:05}", self.0)
    }
}

impl std::fmt::Display for TrialId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:05}", self.0)
    }
}

/// A checkpoint is named by the trial that produced it and the iteration it was taken at.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct CheckpointId {
    pub trial: TrialId,
    pub iteration: u64,
}

/// The statuses users know from Ray Tune.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TrialStatus {
    /// Created, waiting for resources (or for the scheduler to pick it).
    Pending,
    /// Its process is running.
    Running,
    /// Its process was stopped after a checkpoint; it can be resumed from it.
    Paused,
    /// Finished: it completed, or a scheduler stopped it.
    Terminated,
    /// Failed, and no retries are left.
    Error,
    /// Cut off by an interrupt (Ctrl-C, SIGTERM, SIGHUP, a write error) before it had a
    /// checkpoint; `rtune resume` restarts it from scratch. A cut-off trial with a checkpoint is
    /// PAUSED instead.
    Interrupted,
}

impl TrialStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            TrialStatus::Pending => "PENDING",
            TrialStatus::Running => "RUNNING",
            TrialStatus::Paused => "PAUSED",
            TrialStatus::Terminated => "TERMINATED",
            TrialStatus::Error => "ERROR",
            TrialStatus::Interrupted => "INTERRUPTED",
        }
    }

    /// Terminated and Error are final: nothing happens to such a trial any more.
    pub fn is_finished(self) -> bool {
        matches!(self, TrialStatus::Terminated | TrialStatus::Error)
    }

    /// Whether the state machine allows going from `self` to `next`.
    pub fn can_become(self, next: TrialStatus) -> bool {
        use TrialStatus::*;
        matches!(
            (self, next),
            (Pending, Running)
                | (Pending, Terminated)
                | (Running, Paused)
                | (Running, Terminated)
                | (Running, Error)
                // A failed run with retries left goes back to the queue.
                | (Running, Pending)
                | (Paused, Running)
                | (Paused, Pending)
                | (Paused, Terminated)
                // An interrupt cuts a run off; resuming the experiment queues it again.
                | (Running, Interrupted)
                | (Interrupted, Pending)
                // The experiment ends for good (a budget, fail-fast) while it waits.
                | (Interrupted, Terminated)
                // `rtune resume --restart-errored` / `--resume-errored`.
                | (Error, Pending)
        )
    }
}

impl std::fmt::Display for TrialStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
