//! The simulator: trials are not processes but learning curves of a benchmark function
//! (`rtune-bench`: the YAHPO lcbench surrogate, synthetic multi-fidelity functions), replayed
//! in virtual time through the real run loop, tuner, schedulers and searchers.
//!
//! The run loop runs on a current-thread tokio runtime whose clock is paused
//! (`tokio::time::pause`): time only moves when every task waits, and then jumps straight to
//! the next timer. One driver task owns the simulation. It keeps the pending events of every
//! running trial (its next report, at the trial's start time plus the benchmark's simulated
//! training time) in order of time, sleeps until the earliest, hands that report to the run
//! loop exactly as the protocol server would and waits for the loop's answer; a trial told to
//! stop or pause, or at the end of its curve, exits, and the driver waits until the loop has
//! seen that exit (`release`) before it goes on. So one event is in flight at a time, ties are
//! broken by start order, and the same seed on the same benchmark gives the same decisions.
//!
//! Simulated trials take no checkpoints: a paused trial restarts from its first iteration.
//!
//! Benchmarks are evaluated synchronously, also those answered by another program over a pipe
//! (`yahpo`, `command`). That is deliberate: while a task blocks, the runtime is not idle, so
//! the paused clock cannot jump ahead; an awaited read would leave the runtime idle and let
//! virtual time run on past the evaluation.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rtune_bench::{BenchError, Benchmark, Step};
use rtune_core::TrialId;
use rtune_protocol::TrialAction;
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::{
    CapacityPlan, Executor, ExecutorError, ExecutorEvent, Placement, Resources, TrialLaunch,
};
use crate::server::ReportEvent;

/// A trial that exits at the end of its curve or when told to: as a process would.
const EXIT_OK: &str = "exit code 0";
/// A trial ended by `stop` (what a SIGTERM would do to a process).
const STOPPED: &str = "killed by signal 15 (SIGTERM) (simulated trial)";

/// `[executor] type = "simulated"`.
pub struct SimulatedExecutor {
    benchmark: Arc<dyn Benchmark>,
    /// Trials at once (simulated workers).
    slots: u32,
    shared: Arc<Shared>,
    events: mpsc::UnboundedSender<ExecutorEvent>,
    driver: Option<JoinHandle<()>>,
}

/// State shared by the executor (called by the run loop) and its driver task.
struct Shared {
    benchmark: Arc<dyn Benchmark>,
    sim: Mutex<Sim>,
    /// A trial was started or stopped: the driver looks at the queue again.
    queue_changed: Notify,
    /// The loop released a trial.
    released: Notify,
}

#[derive(Default)]
struct Sim {
    /// Pending reports in order of (virtual time, sequence number).
    queue: BTreeMap<(Instant, u64), TrialId>,
    seq: u64,
    trials: HashMap<TrialId, SimTrial>,
    /// Trials holding a slot: started, and their exit not yet seen by the loop.
    held: HashSet<TrialId>,
}

struct SimTrial {
    run: u32,
    config: serde_json::Map<String, serde_json::Value>,
    /// The iteration (from 1) of the pending report, and that report; None once the curve
    /// has ended (the trial then exits at its pending event).
    next: u32,
    step: Option<Step>,
    /// When this run started, and the simulated time already spent before it (a restart from
    /// an iteration > 0 skips that part of the curve).
    started: Instant,
    offset_s: f64,
    /// The elapsed time of the latest report: simulated time never runs backwards, even where
    /// a surrogate's predicted cumulative time dips.
    elapsed_s: f64,
    /// The key of its pending event in the queue.
    pending: Option<(Instant, u64)>,
    /// Its exit has been sent.
    ended: bool,
}

impl SimTrial {
    /// Evaluates iteration `next` (or nothing past the end) and returns when it is due.
    fn advance(&mut self, benchmark: &dyn Benchmark, next: u32) -> Result<Instant, BenchError> {
        self.next = next;
        if next > benchmark.max_iterations() {
            self.step = None;
            return Ok(self.started + secs(self.elapsed_s - self.offset_s));
        }
        let step = benchmark.evaluate(&self.config, next)?;
        self.elapsed_s = self.elapsed_s.max(step.elapsed_s);
        self.step = Some(step);
        Ok(self.started + secs(self.elapsed_s - self.offset_s))
    }
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(if s.is_finite() { s.max(0.0) } else { 0.0 })
}

impl Sim {
    fn schedule(&mut self, trial: TrialId, at: Instant) {
        self.seq += 1;
        let key = (at, self.seq);
        self.queue.insert(key, trial);
        if let Some(t) = self.trials.get_mut(&trial) {
            t.pending = Some(key);
        }
    }
}

impl SimulatedExecutor {
    /// `slots` trials run at once (`executor.max_concurrent_trials`, default 1).
    pub fn new(
        benchmark: Arc<dyn Benchmark>,
        slots: u32,
        events: mpsc::UnboundedSender<ExecutorEvent>,
    ) -> Result<SimulatedExecutor, ExecutorError> {
        if slots == 0 {
            return Err(ExecutorError::Invalid(
                "executor.max_concurrent_trials must be at least 1".into(),
            ));
        }
        Ok(SimulatedExecutor {
            benchmark: benchmark.clone(),
            slots,
            shared: Arc::new(Shared {
                benchmark,
                sim: Mutex::new(Sim::default()),
                queue_changed: Notify::new(),
                released: Notify::new(),
            }),
            events,
            driver: None,
        })
    }

    fn sim(&self) -> MutexGuard<'_, Sim> {
        lock(&self.shared)
    }
}

/// The simulation state; a poisoned lock (a panic elsewhere) still holds usable data.
fn lock(shared: &Shared) -> MutexGuard<'_, Sim> {
    shared.sim.lock().unwrap_or_else(|e| e.into_inner())
}

impl Executor for SimulatedExecutor {
    fn name(&self) -> &'static str {
        "simulated"
    }

    fn check_capacity(
        &self,
        _workers: u32,
        _per_worker: &Resources,
    ) -> Result<CapacityPlan, ExecutorError> {
        Ok(CapacityPlan {
            concurrent_trials: self.slots,
            explanation: format!(
                "{} trial(s) at once: simulated workers on {}, in virtual time",
                self.slots,
                self.benchmark.describe()
            ),
        })
    }

    fn has_room(&self, _workers: u32, _per_worker: &Resources) -> bool {
        self.sim().held.len() < self.slots as usize
    }

    fn attach_reports(&mut self, reports: mpsc::UnboundedSender<ReportEvent>) {
        if let Some(old) = self.driver.take() {
            old.abort();
        }
        self.driver = Some(tokio::spawn(drive(
            self.shared.clone(),
            reports,
            self.events.clone(),
        )));
    }

    fn start(&mut self, launch: TrialLaunch) -> Result<Placement, ExecutorError> {
        if self.driver.is_none() {
            return Err(ExecutorError::Invalid(
                "the simulated executor has no run loop to report to".into(),
            ));
        }
        let env = |key: &str| {
            launch
                .env
                .iter()
                .rev()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.as_str())
        };
        let config: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(env(rtune_protocol::env::CONFIG).unwrap_or("{}")).map_err(
                |e| ExecutorError::Invalid(format!("{}: config is not JSON: {e}", launch.trial)),
            )?;
        let restored: u32 = env(rtune_protocol::env::RESTORE_ITERATION)
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let hint = |e: BenchError| {
            ExecutorError::Invalid(format!(
                "{e}\nhint: the search space must define the benchmark's parameters"
            ))
        };
        let offset_s = match restored {
            0 => 0.0,
            r => {
                let at = r.min(self.benchmark.max_iterations());
                self.benchmark
                    .evaluate(&config, at)
                    .map_err(hint)?
                    .elapsed_s
            }
        };
        let trial = launch.trial;
        if self.sim().held.contains(&trial) {
            return Err(ExecutorError::NoRoom {
                trial,
                reason: "it is still running".into(),
            });
        }
        let mut state = SimTrial {
            run: launch.run,
            config,
            next: 0,
            step: None,
            started: Instant::now(),
            offset_s,
            elapsed_s: offset_s,
            pending: None,
            ended: false,
        };
        let at = state
            .advance(self.benchmark.as_ref(), restored + 1)
            .map_err(hint)?;
        let mut sim = self.sim();
        sim.held.insert(trial);
        sim.trials.insert(trial, state);
        sim.schedule(trial, at);
        drop(sim);
        self.shared.queue_changed.notify_one();
        Ok(Placement::nowhere(
            rtune_core::ExecutorKind::Simulated,
            format!("simulated {}", self.benchmark.describe()),
        ))
    }

    fn stop(&mut self, trial: TrialId, _grace: Duration) {
        let mut sim = self.sim();
        let Some(t) = sim.trials.get_mut(&trial) else {
            return;
        };
        if t.ended {
            return;
        }
        t.ended = true;
        let run = t.run;
        if let Some(key) = t.pending.take() {
            sim.queue.remove(&key);
        }
        drop(sim);
        let _ = self.events.send(ExecutorEvent::Exited {
            trial,
            run,
            success: false,
            message: STOPPED.into(),
        });
        self.shared.queue_changed.notify_one();
    }

    fn release(&mut self, trial: TrialId) {
        let mut sim = self.sim();
        sim.held.remove(&trial);
        if sim.trials.get(&trial).is_some_and(|t| t.ended) {
            sim.trials.remove(&trial);
        }
        drop(sim);
        self.shared.released.notify_one();
    }

    fn shutdown(&mut self, grace: Duration) {
        let alive: Vec<TrialId> = self
            .sim()
            .trials
            .iter()
            .filter(|(_, t)| !t.ended)
            .map(|(id, _)| *id)
            .collect();
        for trial in alive {
            self.stop(trial, grace);
        }
    }
}

impl Drop for SimulatedExecutor {
    fn drop(&mut self) {
        if let Some(driver) = self.driver.take() {
            driver.abort();
        }
    }
}

/// The driver: one event at a time, in order of virtual time (see the module comment).
async fn drive(
    shared: Arc<Shared>,
    reports: mpsc::UnboundedSender<ReportEvent>,
    events: mpsc::UnboundedSender<ExecutorEvent>,
) {
    loop {
        let next = lock(&shared).queue.keys().next().copied();
        let Some((at, _)) = next else {
            shared.queue_changed.notified().await;
            continue;
        };
        tokio::select! {
            biased;
            () = shared.queue_changed.notified() => continue,
            () = tokio::time::sleep_until(at) => {}
        }
        // Take the earliest event (the queue may have changed while sleeping).
        let (trial, run, metrics) = {
            let mut sim = lock(&shared);
            let Some((key, trial)) = sim.queue.pop_first() else {
                continue;
            };
            if key.0 > Instant::now() {
                // An earlier one is due first: put it back and sleep again.
                sim.queue.insert(key, trial);
                continue;
            }
            let Some(t) = sim.trials.get_mut(&trial) else {
                continue;
            };
            t.pending = None;
            (trial, t.run, t.step.as_ref().map(|s| s.metrics.clone()))
        };
        let action = match metrics {
            // The end of its curve: the trial program would exit by itself.
            None => TrialAction::Stop,
            Some(metrics) => {
                let (reply, answer) = oneshot::channel();
                let report = ReportEvent {
                    trial,
                    run,
                    metrics,
                    checkpoint: None,
                    reply,
                };
                if reports.send(report).is_err() {
                    return; // the run loop is gone
                }
                match answer.await {
                    Ok(response) => match response.action {
                        Some(action) if response.ok => action,
                        // An error answer (e.g. not its current run): a client exits.
                        _ => TrialAction::Stop,
                    },
                    Err(_) => return,
                }
            }
        };
        let (exit, success, message) = {
            let mut sim = lock(&shared);
            let Some(t) = sim.trials.get_mut(&trial) else {
                continue;
            };
            if t.ended || t.run != run {
                // Stopped while its report was being answered: its exit was already sent.
                continue;
            }
            let finished = t.step.is_none() || t.next >= shared.benchmark.max_iterations();
            if action == TrialAction::Continue && !finished {
                match t.advance(shared.benchmark.as_ref(), t.next + 1) {
                    Ok(at) => {
                        sim.schedule(trial, at);
                        (false, true, String::new())
                    }
                    Err(e) => {
                        t.ended = true;
                        (true, false, e.to_string())
                    }
                }
            } else {
                t.ended = true;
                (true, true, EXIT_OK.to_string())
            }
        };
        if exit {
            if events
                .send(ExecutorEvent::Exited {
                    trial,
                    run,
                    success,
                    message,
                })
                .is_err()
            {
                return;
            }
            // Wait until the loop has handled the exit (and started what it starts next), so
            // the next event cannot overtake it.
            while lock(&shared).held.contains(&trial) {
                shared.released.notified().await;
            }
        }
    }
}
