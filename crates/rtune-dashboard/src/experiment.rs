//! One experiment directory as the dashboard sees it: the latest state snapshot plus everything
//! read so far from its append-only files. [`Experiment::refresh`] reads what was appended since
//! the previous call (by byte offset) and returns it as an [`Update`], which the server sends to
//! browsers; [`Experiment::snapshot`] is everything at once (page load, the HTML report).

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::Serialize;
use serde_json::Value;

use crate::DashboardError;
use crate::model::{
    self, Action, DecisionLine, EventLine, LineageLine, Mode, ResultPoint, StateFile, TrialState,
};
use crate::tail::Tail;

/// A trial's learning curve, column by column.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Curve {
    /// training_iteration
    pub it: Vec<u64>,
    /// the metric (null where a report did not include it)
    pub v: Vec<Option<f64>>,
    /// time_total_s
    pub t: Vec<Option<f64>>,
    /// timestamp (Unix seconds)
    pub ts: Vec<Option<f64>>,
}

fn finite(x: f64) -> Option<f64> {
    x.is_finite().then_some(x)
}

impl Curve {
    fn push(&mut self, p: ResultPoint) {
        self.it.push(p.iteration);
        self.v.push(finite(p.value));
        self.t.push(finite(p.time_total_s));
        self.ts.push(finite(p.timestamp));
    }

    fn is_empty(&self) -> bool {
        self.it.is_empty()
    }

    fn len(&self) -> usize {
        self.it.len()
    }
}

/// A trial as the page shows it.
#[derive(Clone, Debug, Serialize)]
pub struct TrialRow {
    pub id: u32,
    pub name: String,
    pub status: String,
    /// The searched parameters' values, by dotted name.
    pub params: BTreeMap<String, Value>,
    pub iteration: u64,
    pub time_total_s: f64,
    pub best: Option<(f64, u64)>,
    pub runs: u32,
    pub failures: u32,
    pub error: Option<String>,
    pub placement: Option<String>,
}

/// The experiment-level part of the state, without trials.
#[derive(Clone, Debug, Serialize)]
pub struct Header {
    pub dir: String,
    pub name: String,
    pub status: String,
    pub metric: String,
    pub mode: Mode,
    pub scheduler: String,
    pub searcher: String,
    pub parameters: Vec<String>,
    pub total_trials: Option<usize>,
    pub started_at: f64,
    pub finished_at: Option<f64>,
    pub state_format: u32,
}

/// Everything about one experiment: the page's initial data and the report's.
#[derive(Clone, Debug, Serialize)]
pub struct Snapshot {
    pub header: Header,
    pub trials: Vec<TrialRow>,
    pub curves: BTreeMap<u32, Curve>,
    pub decisions: Vec<DecisionLine>,
    /// How many plain `continue` decisions were left out of `decisions`.
    pub continue_decisions: u64,
    pub events: Vec<EventLine>,
    pub lineage: Vec<LineageLine>,
    /// Lines that could not be read, with the file and line number, newest last (at most 50).
    pub problems: Vec<String>,
}

/// What changed since the previous refresh.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Update {
    /// The new header and trials table when the state file changed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub header: Option<Header>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trials: Option<Vec<TrialRow>>,
    /// New points by trial.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub points: BTreeMap<u32, Curve>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub decisions: Vec<DecisionLine>,
    pub continue_decisions: u64,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<EventLine>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub lineage: Vec<LineageLine>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<String>,
    /// A file was replaced or truncated: the page must load the snapshot again.
    pub reset: bool,
}

impl Update {
    pub fn is_empty(&self) -> bool {
        self.header.is_none()
            && self.points.is_empty()
            && self.decisions.is_empty()
            && self.events.is_empty()
            && self.lineage.is_empty()
            && self.problems.is_empty()
            && !self.reset
    }
}

struct TrialTail {
    results: Tail,
    /// Lines read, for messages naming the line.
    lines: u64,
    /// Done: the trial ended and its file was read to its end after that.
    done: bool,
}

/// An experiment directory being watched.
pub struct Experiment {
    dir: PathBuf,
    state: StateFile,
    state_stamp: Option<(SystemTime, u64)>,
    trials: Vec<TrialRow>,
    curves: BTreeMap<u32, Curve>,
    result_tails: BTreeMap<u32, TrialTail>,
    decisions_tail: Tail,
    decisions_lines: u64,
    events_tail: Tail,
    events_lines: u64,
    lineage_tail: Tail,
    lineage_lines: u64,
    decisions: Vec<DecisionLine>,
    continue_decisions: u64,
    events: Vec<EventLine>,
    lineage: Vec<LineageLine>,
    problems: Vec<String>,
}

const MAX_PROBLEMS: usize = 50;

impl Experiment {
    /// Open an experiment directory; it must hold `experiment_state.json` (an experiment starts
    /// writing it at once).
    pub fn open(dir: &Path) -> Result<Experiment, DashboardError> {
        let state_path = dir.join(model::STATE_FILE);
        if !state_path.is_file() {
            return Err(DashboardError::NotAnExperiment {
                path: dir.to_path_buf(),
            });
        }
        let mut experiment = Experiment {
            dir: dir.to_path_buf(),
            state: StateFile::default(),
            state_stamp: None,
            trials: Vec::new(),
            curves: BTreeMap::new(),
            result_tails: BTreeMap::new(),
            decisions_tail: Tail::new(dir.join(model::DECISIONS_FILE)),
            decisions_lines: 0,
            events_tail: Tail::new(dir.join(model::EVENTS_FILE)),
            events_lines: 0,
            lineage_tail: Tail::new(dir.join(model::LINEAGE_FILE)),
            lineage_lines: 0,
            decisions: Vec::new(),
            continue_decisions: 0,
            events: Vec::new(),
            lineage: Vec::new(),
            problems: Vec::new(),
        };
        experiment.refresh()?;
        Ok(experiment)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn header(&self) -> Header {
        let s = &self.state;
        Header {
            dir: self.dir.display().to_string(),
            name: s.name.clone(),
            status: s.status.clone(),
            metric: s.metric.clone(),
            mode: s.mode,
            scheduler: s.scheduler.clone(),
            searcher: s.searcher.clone(),
            parameters: s.parameters.clone(),
            total_trials: s.total_trials,
            started_at: s.started_at,
            finished_at: s.finished_at,
            state_format: s.format,
        }
    }

    pub fn trials(&self) -> &[TrialRow] {
        &self.trials
    }

    pub fn curves(&self) -> &BTreeMap<u32, Curve> {
        &self.curves
    }

    pub fn mode(&self) -> Mode {
        self.state.mode
    }

    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            header: self.header(),
            trials: self.trials.clone(),
            curves: self.curves.clone(),
            decisions: self.decisions.clone(),
            continue_decisions: self.continue_decisions,
            events: self.events.clone(),
            lineage: self.lineage.clone(),
            problems: self.problems.clone(),
        }
    }

    /// The best trial the way `rtune best` picks it: the best of the trials' best values.
    pub fn best(&self) -> Option<(&TrialRow, f64)> {
        let mode = self.state.mode;
        self.trials
            .iter()
            .filter_map(|t| t.best.map(|(v, _)| (t, v)))
            .fold(None, |best: Option<(&TrialRow, f64)>, (t, v)| match best {
                Some((_, b)) if mode.score(b) >= mode.score(v) => best,
                _ => Some((t, v)),
            })
    }

    fn problem(&mut self, update: &mut Update, message: String) {
        tracing::warn!("{message}");
        if self.problems.len() >= MAX_PROBLEMS {
            self.problems.remove(0);
        }
        self.problems.push(message.clone());
        update.problems.push(message);
    }

    /// Read what changed on disk since the previous call.
    pub fn refresh(&mut self) -> Result<Update, DashboardError> {
        let mut update = Update::default();
        self.refresh_state(&mut update)?;
        self.refresh_results(&mut update);
        self.refresh_logs(&mut update);
        Ok(update)
    }

    fn refresh_state(&mut self, update: &mut Update) -> Result<(), DashboardError> {
        let path = self.dir.join(model::STATE_FILE);
        let io = |source| DashboardError::Io {
            action: "read",
            path: path.clone(),
            source,
        };
        let meta = fs::metadata(&path).map_err(io)?;
        let stamp = (meta.modified().map_err(io)?, meta.len());
        if self.state_stamp == Some(stamp) {
            return Ok(());
        }
        let text = fs::read_to_string(&path).map_err(io)?;
        let state = match StateFile::parse(&text) {
            Ok(state) => state,
            Err(e) if self.state_stamp.is_some() => {
                // Keep showing the previous state; the next rewrite will likely be fine.
                let message = format!("{}: {e}", path.display());
                self.problem(update, message);
                return Ok(());
            }
            Err(e) => {
                return Err(DashboardError::BadState {
                    path,
                    message: e.to_string(),
                });
            }
        };
        self.state_stamp = Some(stamp);
        self.trials = state
            .trials
            .iter()
            .map(|t| trial_row(t, &state.parameters, &state.placements))
            .collect();
        for t in &state.trials {
            self.result_tails.entry(t.id).or_insert_with(|| TrialTail {
                results: Tail::new(
                    self.dir
                        .join(model::trial_dir_name(t.id))
                        .join(model::RESULT_FILE),
                ),
                lines: 0,
                done: false,
            });
        }
        self.state = state;
        update.header = Some(self.header());
        update.trials = Some(self.trials.clone());
        Ok(())
    }

    fn refresh_results(&mut self, update: &mut Update) {
        let metric = self.state.metric.clone();
        let ended: BTreeMap<u32, bool> = self
            .trials
            .iter()
            .map(|t| (t.id, matches!(t.status.as_str(), "TERMINATED" | "ERROR")))
            .collect();
        let mut problems = Vec::new();
        for (&id, tail) in self.result_tails.iter_mut() {
            if tail.done {
                continue;
            }
            let is_ended = ended.get(&id).copied().unwrap_or(false);
            let read = match tail.results.read_lines() {
                Ok(read) => read,
                Err(e) => {
                    problems.push(format!(
                        "cannot read {}: {e}",
                        tail.results.path().display()
                    ));
                    continue;
                }
            };
            if read.restarted {
                update.reset = true;
                self.curves.remove(&id);
                tail.lines = 0;
            }
            let mut fresh = Curve::default();
            for line in &read.lines {
                tail.lines += 1;
                match ResultPoint::parse(line, &metric) {
                    Ok(point) => fresh.push(point),
                    Err(e) => problems.push(format!(
                        "{} line {}: {e}",
                        tail.results.path().display(),
                        tail.lines
                    )),
                }
            }
            // A trial that has ended writes no more results: once read after it ended, it is
            // not looked at again.
            tail.done = is_ended;
            if fresh.is_empty() {
                continue;
            }
            let curve = self.curves.entry(id).or_default();
            curve.it.extend(&fresh.it);
            curve.v.extend(&fresh.v);
            curve.t.extend(&fresh.t);
            curve.ts.extend(&fresh.ts);
            update.points.insert(id, fresh);
        }
        for p in problems {
            self.problem(update, p);
        }
    }

    fn refresh_logs(&mut self, update: &mut Update) {
        let mut problems = Vec::new();
        match self.decisions_tail.read_lines() {
            Ok(read) => {
                if read.restarted {
                    update.reset = true;
                    self.decisions.clear();
                    self.continue_decisions = 0;
                    self.decisions_lines = 0;
                }
                for line in read.lines {
                    self.decisions_lines += 1;
                    match DecisionLine::parse(&line) {
                        Ok(d) if d.is_notable() => {
                            self.decisions.push(d.clone());
                            update.decisions.push(d);
                        }
                        Ok(_) => {
                            self.continue_decisions += 1;
                            update.continue_decisions += 1;
                        }
                        Err(e) => problems.push(format!(
                            "{} line {}: {e}",
                            self.decisions_tail.path().display(),
                            self.decisions_lines
                        )),
                    }
                }
            }
            Err(e) => problems.push(format!(
                "cannot read {}: {e}",
                self.decisions_tail.path().display()
            )),
        }
        match self.events_tail.read_lines() {
            Ok(read) => {
                if read.restarted {
                    update.reset = true;
                    self.events.clear();
                    self.events_lines = 0;
                }
                for line in read.lines {
                    self.events_lines += 1;
                    match EventLine::parse(&line) {
                        Ok(e) => {
                            self.events.push(e.clone());
                            update.events.push(e);
                        }
                        Err(e) => problems.push(format!(
                            "{} line {}: {e}",
                            self.events_tail.path().display(),
                            self.events_lines
                        )),
                    }
                }
            }
            Err(e) => problems.push(format!(
                "cannot read {}: {e}",
                self.events_tail.path().display()
            )),
        }
        match self.lineage_tail.read_lines() {
            Ok(read) => {
                if read.restarted {
                    update.reset = true;
                    self.lineage.clear();
                    self.lineage_lines = 0;
                }
                for line in read.lines {
                    self.lineage_lines += 1;
                    match LineageLine::parse(&line) {
                        Ok(l) => {
                            self.lineage.push(l.clone());
                            update.lineage.push(l);
                        }
                        Err(e) => problems.push(format!(
                            "{} line {}: {e}",
                            self.lineage_tail.path().display(),
                            self.lineage_lines
                        )),
                    }
                }
            }
            Err(e) => problems.push(format!(
                "cannot read {}: {e}",
                self.lineage_tail.path().display()
            )),
        }
        for p in problems {
            self.problem(update, p);
        }
    }

    /// The final metric of each trial (its best value) with its parameters, for importance and
    /// parallel coordinates.
    pub fn final_values(&self) -> Vec<(&TrialRow, f64)> {
        self.trials
            .iter()
            .filter_map(|t| t.best.map(|(v, _)| (t, v)))
            .collect()
    }

    /// Number of points read, over all trials.
    pub fn point_count(&self) -> usize {
        self.curves.values().map(Curve::len).sum()
    }

    /// How many decisions of each kind were read.
    pub fn decision_counts(&self) -> BTreeMap<&'static str, usize> {
        let mut counts = BTreeMap::new();
        for d in &self.decisions {
            let name = match d.action {
                Action::Continue => "continue",
                Action::Stop => "stop",
                Action::Pause => "pause",
                Action::Exploit => "exploit",
            };
            *counts.entry(name).or_insert(0) += 1;
        }
        counts
    }
}

fn trial_row(
    t: &TrialState,
    parameters: &[String],
    placements: &BTreeMap<String, String>,
) -> TrialRow {
    let params = parameters
        .iter()
        .map(|p| {
            (
                p.clone(),
                model::dotted(&t.config, p).cloned().unwrap_or(Value::Null),
            )
        })
        .collect();
    let id_text = format!("{:05}", t.id);
    let placement = placements
        .get(&id_text)
        .or_else(|| placements.get(&model::trial_dir_name(t.id)))
        .or_else(|| placements.get(&t.id.to_string()))
        .cloned();
    TrialRow {
        id: t.id,
        name: format!("{}{}", model::trial_dir_name(t.id), t.tag),
        status: t.status.clone(),
        params,
        iteration: t.iteration,
        time_total_s: t.time_total_s,
        best: t.best,
        runs: t.runs,
        failures: t.failures,
        error: t.error.clone(),
        placement,
    }
}
