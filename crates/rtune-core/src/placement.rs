//! Where a run of a trial runs, as typed data.
//!
//! Executors describe every run they start with a [`Placement`]; the core keeps each trial's
//! latest one (a journaled input, so it survives the head), the runner writes it to
//! `experiment_state.json` and `events.jsonl`, and readers (the trials table, the dashboard's
//! resource timeline) use its fields. [`Placement::label`] is display text only: nothing may
//! parse it.

use serde::{Deserialize, Serialize};

/// Which executor placed a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExecutorKind {
    /// Processes on this machine.
    Local,
    /// Job steps (`srun`) inside the head's SLURM allocation.
    SlurmStep,
    /// One `sbatch` job per run.
    SlurmJob,
    /// The simulator: no process, a benchmark function in virtual time.
    Simulated,
}

impl ExecutorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ExecutorKind::Local => "local",
            ExecutorKind::SlurmStep => "slurm_step",
            ExecutorKind::SlurmJob => "slurm_job",
            ExecutorKind::Simulated => "simulated",
        }
    }
}

/// What a run holds on one node.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeShare {
    /// The node's host name (`localhost` for the local executor's own machine).
    pub node: String,
    /// CPUs booked for the run on this node (over all its workers there).
    pub cpus: u32,
    /// GPU indices, when the executor knows them (the local executor sets
    /// `CUDA_VISIBLE_DEVICES` itself); empty otherwise.
    #[serde(default)]
    pub gpus: Vec<u32>,
    /// How many GPUs the run holds on this node (always set, also when the indices are unknown).
    #[serde(default)]
    pub gpu_count: u32,
}

/// Where one run of a trial runs (or waits to run).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    pub executor: ExecutorKind,
    /// The run waits in SLURM's queue: its processes do not run yet.
    #[serde(default)]
    pub queued: bool,
    /// SLURM's reason while the job waits (`Resources`, `Priority`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_reason: Option<String>,
    /// The SLURM job that runs it (the job-per-trial executor's job, or the allocation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_id: Option<String>,
    /// The SLURM step (`<job>.<step>`), for the step executor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_id: Option<String>,
    /// The nodes it runs on; empty while queued or for the simulator.
    #[serde(default)]
    pub nodes: Vec<NodeShare>,
    /// A short text for tables and logs, e.g. `local cpu=2 gpu=0,1`. Display only.
    pub label: String,
}

impl Placement {
    /// A placement with no nodes (the simulator's), labelled `label`.
    pub fn nowhere(executor: ExecutorKind, label: impl Into<String>) -> Placement {
        Placement {
            executor,
            queued: false,
            queue_reason: None,
            job_id: None,
            step_id: None,
            nodes: Vec::new(),
            label: label.into(),
        }
    }
}
