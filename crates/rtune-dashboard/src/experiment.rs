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
    self, Action, DecisionLine, EventLine, LineageLine, Mode, Placement, PlacementField,
    ResultLine, SpaceParam, StateFile, TrialState,
};
use crate::tail::Tail;

/// A trial's results, column by column, in the order of its file. Missing numbers are NaN here
/// and `null` in JSON.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Curve {
    /// training_iteration
    pub it: Vec<u64>,
    /// the experiment's metric
    pub v: Vec<f64>,
    /// timestamp (Unix seconds)
    pub ts: Vec<f64>,
    /// Every other reported numeric key (`time_total_s`, `train_loss`, ...), one column each,
    /// as long as `it`.
    pub m: BTreeMap<String, Vec<f64>>,
    /// superseded.json only: why each line stopped counting.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub why: Vec<String>,
}

impl Curve {
    fn push(&mut self, line: ResultLine) {
        let n = self.it.len();
        self.it.push(line.iteration);
        self.v.push(line.value);
        self.ts.push(line.timestamp);
        for (key, x) in line.numbers {
            let column = self.m.entry(key).or_insert_with(|| vec![f64::NAN; n]);
            // A key repeated within one line: the first one counts.
            if column.len() == n {
                column.push(x);
            }
        }
        for column in self.m.values_mut() {
            column.resize(n + 1, f64::NAN);
        }
        if let Some(reason) = line.superseded {
            self.why.resize(n, String::new());
            self.why.push(reason);
        }
    }

    /// Appends `more` (read after what this curve holds).
    fn extend(&mut self, more: &Curve) {
        let (n, total) = (self.len(), self.len() + more.len());
        self.it.extend(&more.it);
        self.v.extend(&more.v);
        self.ts.extend(&more.ts);
        for (key, column) in &more.m {
            self.m
                .entry(key.clone())
                .or_insert_with(|| vec![f64::NAN; n])
                .extend(column);
        }
        for column in self.m.values_mut() {
            column.resize(total, f64::NAN);
        }
        if !more.why.is_empty() {
            self.why.resize(n, String::new());
            self.why.extend(more.why.iter().cloned());
        }
    }

    pub fn is_empty(&self) -> bool {
        self.it.is_empty()
    }

    pub fn len(&self) -> usize {
        self.it.len()
    }

    /// The indices of the results that count, in order: where a trial's iterations go back
    /// (files written before superseded lines were moved to superseded.json: a run rolled back
    /// after a failure, or restarted by a PBT exploit from an earlier iteration), the later
    /// line replaces the earlier ones from its iteration on. For a current result.json, whose
    /// iterations only increase, that is every line.
    pub fn counting(&self) -> Vec<usize> {
        let mut kept: Vec<usize> = Vec::with_capacity(self.it.len());
        for (k, &it) in self.it.iter().enumerate() {
            while kept.last().is_some_and(|&j| self.it[j] >= it) {
                kept.pop();
            }
            kept.push(k);
        }
        kept
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
    /// (value, iteration)
    pub best: Option<(f64, u64)>,
    pub runs: u32,
    pub failures: u32,
    pub error: Option<String>,
    pub placement: Option<Placement>,
    /// No report for much longer than its peers (the runner's rule; absent in older files).
    pub silent: bool,
    pub last_report_at: Option<f64>,
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
    /// The searched parameters' domains from experiment.toml; None when it could not be read
    /// (then the page places values as they come, linear or categorical, and says so).
    pub space: Option<Vec<SpaceParam>>,
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
    /// Results that stopped counting (superseded.json), by trial.
    pub superseded: BTreeMap<u32, Curve>,
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
    /// New results by trial, to append.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub points: BTreeMap<u32, Curve>,
    /// Trials whose result.json was rewritten (lines moved to superseded.json): their whole
    /// curve, replacing what the page holds.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub curves: BTreeMap<u32, Curve>,
    /// Trials whose superseded.json grew or was rewritten: all of it.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub superseded: BTreeMap<u32, Curve>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub decisions: Vec<DecisionLine>,
    pub continue_decisions: u64,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<EventLine>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub lineage: Vec<LineageLine>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<String>,
    /// A log file was replaced or truncated: the page must load the snapshot again.
    pub reset: bool,
}

impl Update {
    pub fn is_empty(&self) -> bool {
        self.header.is_none()
            && self.points.is_empty()
            && self.curves.is_empty()
            && self.superseded.is_empty()
            && self.decisions.is_empty()
            && self.events.is_empty()
            && self.lineage.is_empty()
            && self.problems.is_empty()
            && !self.reset
    }
}

/// A trial's result file or superseded file, read by offset.
struct ResultTail {
    tail: Tail,
    /// Lines read, for messages naming the line.
    lines: u64,
}

impl ResultTail {
    fn new(path: PathBuf) -> ResultTail {
        ResultTail {
            tail: Tail::new(path),
            lines: 0,
        }
    }

    /// Reads what was appended into `curve`. Returns the new lines' curve, or with `true` the
    /// whole curve when the file was rewritten (and `curve` read again from its start).
    fn read(
        &mut self,
        curve: &mut Curve,
        metric: &str,
        problems: &mut Vec<String>,
    ) -> Option<(Curve, bool)> {
        let read = match self.tail.read_lines() {
            Ok(read) => read,
            Err(e) => {
                problems.push(format!("cannot read {}: {e}", self.tail.path().display()));
                return None;
            }
        };
        if read.restarted {
            *curve = Curve::default();
            self.lines = 0;
        }
        let mut fresh = Curve::default();
        for line in &read.lines {
            self.lines += 1;
            match ResultLine::parse(line, metric) {
                Ok(point) => fresh.push(point),
                Err(e) => problems.push(format!(
                    "{} line {}: {e}",
                    self.tail.path().display(),
                    self.lines
                )),
            }
        }
        if fresh.is_empty() && !read.restarted {
            return None;
        }
        curve.extend(&fresh);
        Some(if read.restarted {
            (curve.clone(), true)
        } else {
            (fresh, false)
        })
    }
}

struct TrialTail {
    results: ResultTail,
    superseded: ResultTail,
    /// Done: the trial ended and its files were read to their end after that.
    done: bool,
}

/// An experiment directory being watched.
pub struct Experiment {
    dir: PathBuf,
    state: StateFile,
    state_stamp: Option<(SystemTime, u64)>,
    /// The search space from experiment.toml, once read.
    space: Option<Vec<SpaceParam>>,
    trials: Vec<TrialRow>,
    curves: BTreeMap<u32, Curve>,
    superseded: BTreeMap<u32, Curve>,
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
            space: None,
            trials: Vec::new(),
            curves: BTreeMap::new(),
            superseded: BTreeMap::new(),
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
            space: self.space.clone(),
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
            superseded: self.superseded.clone(),
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

    /// Reads the search space from experiment.toml (written when the experiment starts, and
    /// never changed: a resume refuses a changed space).
    fn read_space(&mut self, update: &mut Update) {
        let path = self.dir.join(model::EXPERIMENT_FILE);
        match fs::read_to_string(&path) {
            Ok(text) => match model::read_space(&text, &path.display().to_string()) {
                Ok(space) => self.space = Some(space),
                Err(e) => self.problem(update, e.to_string()),
            },
            // Not written yet, or an experiment from before it was: the page says so.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => self.problem(update, format!("cannot read {}: {e}", path.display())),
        }
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
        if self.space.is_none() {
            self.read_space(update);
        }
        self.trials = state
            .trials
            .iter()
            .map(|t| trial_row(t, &state.parameters, &state.placements))
            .collect();
        for t in &state.trials {
            let trial_dir = self.dir.join(model::trial_dir_name(t.id));
            self.result_tails.entry(t.id).or_insert_with(|| TrialTail {
                results: ResultTail::new(trial_dir.join(model::RESULT_FILE)),
                superseded: ResultTail::new(trial_dir.join(model::SUPERSEDED_FILE)),
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
            let is_ended = ended.get(&id).copied().unwrap_or(false);
            // A trial that ended writes no more results (unless a resume starts it again).
            if tail.done && is_ended {
                continue;
            }
            let curve = self.curves.entry(id).or_default();
            match tail.results.read(curve, &metric, &mut problems) {
                Some((whole, true)) => {
                    update.points.remove(&id);
                    update.curves.insert(id, whole);
                }
                Some((fresh, false)) => {
                    update.points.insert(id, fresh);
                }
                None => {}
            }
            if curve.is_empty() {
                self.curves.remove(&id);
            }
            let superseded = self.superseded.entry(id).or_default();
            if tail
                .superseded
                .read(superseded, &metric, &mut problems)
                .is_some()
            {
                update.superseded.insert(id, superseded.clone());
            }
            if superseded.is_empty() {
                self.superseded.remove(&id);
            }
            // A trial that has ended writes no more results: once read after it ended, it is
            // not looked at again.
            tail.done = is_ended;
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
    placements: &BTreeMap<String, PlacementField>,
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
    // Format 3 has the placement in the trial; format 2 in a map by trial id.
    let placement = t.placement.clone().or_else(|| {
        let id_text = format!("{:05}", t.id);
        placements
            .get(&id_text)
            .or_else(|| placements.get(&model::trial_dir_name(t.id)))
            .or_else(|| placements.get(&t.id.to_string()))
            .cloned()
    });
    TrialRow {
        id: t.id,
        name: format!("{}{}", model::trial_dir_name(t.id), t.tag),
        status: t.status.clone(),
        params,
        iteration: t.iteration,
        time_total_s: t.time_total_s,
        best: t.best.map(model::BestField::pair),
        runs: t.runs,
        failures: t.failures,
        error: t.error.clone(),
        placement: placement.and_then(PlacementField::into_placement),
        silent: t.silent,
        last_report_at: t.last_report_at,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(it: u64, numbers: &[(&str, f64)]) -> ResultLine {
        ResultLine {
            iteration: it,
            value: it as f64,
            timestamp: f64::NAN,
            run: None,
            numbers: numbers.iter().map(|(k, x)| (k.to_string(), *x)).collect(),
            superseded: None,
        }
    }

    #[test]
    fn a_restart_replaces_the_results_from_its_iteration_on() {
        let mut c = Curve::default();
        for it in [1, 2, 3, 2, 3, 4] {
            c.push(line(it, &[]));
        }
        assert_eq!(c.counting(), [0, 3, 4, 5]);
        let mut monotone = Curve::default();
        for it in [1, 2, 3] {
            monotone.push(line(it, &[]));
        }
        assert_eq!(monotone.counting(), [0, 1, 2]);
    }

    #[test]
    fn columns_of_other_keys_stay_as_long_as_the_iterations() {
        let mut c = Curve::default();
        c.push(line(1, &[("train_loss", 2.0)]));
        c.push(line(2, &[("acc", 0.5)]));
        let mut more = Curve::default();
        more.push(line(3, &[("grad_norm", 1.0)]));
        c.extend(&more);
        assert_eq!(c.len(), 3);
        for (key, column) in &c.m {
            assert_eq!(column.len(), 3, "{key}");
        }
        assert_eq!(c.m["train_loss"][0], 2.0);
        assert!(c.m["train_loss"][1].is_nan() && c.m["acc"][0].is_nan());
        assert_eq!(c.m["grad_norm"][2], 1.0);
        // In JSON a missing number is null.
        let json = serde_json::to_value(&c).map(|v| v["m"]["acc"].clone());
        assert_eq!(json.ok(), Some(serde_json::json!([null, 0.5, null])));
    }
}
