//! What users read: the trials table (console, `rtune status`), the best trial, and the live
//! console of a running experiment.
//!
//! Everything is rendered from an [`ExperimentState`], the same snapshot `rtune status` reads
//! from disk, so the table a running experiment prints and the one read later agree.

use std::fmt::Write as _;
use std::time::Duration;

use comfy_table::presets::{ASCII_MARKDOWN, UTF8_FULL_CONDENSED};
use comfy_table::{CellAlignment, ContentArrangement, Table};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use rtune_core::tuner::Trial;
use rtune_core::{Mode, TrialStatus};
use serde_json::{Map, Value, json};

use crate::executor::is_queued_placement;
use crate::storage::{ExperimentState, csv_line};

/// The formats of `rtune status --format`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TableFormat {
    /// A boxed table for the console.
    Table,
    /// Comma-separated values, full precision, for spreadsheets and scripts.
    Csv,
    /// A GitHub-flavoured Markdown table, for papers, issues and notes.
    Markdown,
    /// One JSON object per trial, in an array.
    Json,
}

/// The trials table of an experiment in the given format (ends with a newline).
pub fn trials_table(state: &ExperimentState, format: TableFormat) -> String {
    let trials: Vec<&Trial> = state.trials.iter().collect();
    render(state, &trials, format)
}

/// [`trials_table`] for `rtune status`: when the experiment's head is dead
/// ([`ExperimentState::dead_head`]), its RUNNING trials are not running: they show as
/// INTERRUPTED, which is what `rtune resume` treats them as.
pub fn trials_table_of(state: &ExperimentState, format: TableFormat, head_dead: bool) -> String {
    if !head_dead {
        return trials_table(state, format);
    }
    let mut state = state.clone();
    for trial in &mut state.trials {
        if trial.status == TrialStatus::Running {
            trial.status = TrialStatus::Interrupted;
        }
    }
    trials_table(&state, format)
}

fn header(state: &ExperimentState) -> Vec<String> {
    let mut header = vec!["Trial name".to_string(), "status".to_string()];
    if !state.placements.is_empty() {
        header.push("placement".to_string());
    }
    header.extend(state.parameters.iter().cloned());
    header.extend([
        "iter".to_string(),
        "total time (s)".to_string(),
        state.metric.clone(),
    ]);
    header
}

fn render(state: &ExperimentState, trials: &[&Trial], format: TableFormat) -> String {
    match format {
        TableFormat::Json => {
            let rows: Vec<Value> = trials.iter().map(|t| trial_json(state, t)).collect();
            let mut text = serde_json::to_string_pretty(&rows).unwrap_or_default();
            text.push('\n');
            text
        }
        TableFormat::Csv => {
            let mut text = csv_line(&header(state));
            for trial in trials {
                let mut row = vec![trial.display_name(), shown_status(state, trial)];
                if !state.placements.is_empty() {
                    row.push(placement(state, trial).to_string());
                }
                for name in &state.parameters {
                    row.push(
                        lookup(&trial.config, name).map_or(String::new(), |v| match v {
                            Value::String(s) => s.clone(),
                            other => other.to_string(),
                        }),
                    );
                }
                row.push(trial.iteration.to_string());
                row.push(format!("{:.3}", trial.time_total_s));
                row.push(last_metric(state, trial).map_or(String::new(), |v| v.to_string()));
                text.push_str(&csv_line(&row));
            }
            text
        }
        TableFormat::Table | TableFormat::Markdown => {
            let mut table = Table::new();
            table
                .load_style(if format == TableFormat::Table {
                    UTF8_FULL_CONDENSED
                } else {
                    ASCII_MARKDOWN
                })
                .set_content_arrangement(ContentArrangement::Disabled)
                .set_header(header(state));
            for trial in trials {
                let mut row = vec![trial.display_name(), shown_status(state, trial)];
                if !state.placements.is_empty() {
                    row.push(placement(state, trial).to_string());
                }
                for name in &state.parameters {
                    row.push(lookup(&trial.config, name).map_or(String::new(), short_value));
                }
                row.push(trial.iteration.to_string());
                row.push(format!("{:.2}", trial.time_total_s));
                row.push(last_metric(state, trial).map_or(String::new(), short_number));
                table.add_row(row);
            }
            let first_number = if state.placements.is_empty() { 2 } else { 3 };
            let columns = first_number + state.parameters.len() + 3;
            for index in first_number..columns {
                if let Some(column) = table.column_mut(index) {
                    column.set_cell_alignment(CellAlignment::Right);
                }
            }
            let mut text = table.to_string();
            text.push('\n');
            text
        }
    }
}

/// The rows a live view shows: every running trial, then the best finished or waiting ones, at
/// most `max_rows` in all; a summary line says what was left out.
pub fn live_table(state: &ExperimentState, max_rows: usize) -> String {
    if state.trials.len() <= max_rows {
        return trials_table(state, TableFormat::Table);
    }
    let mode = state.mode;
    let mut rows: Vec<&Trial> = state
        .trials
        .iter()
        .filter(|t| t.status == TrialStatus::Running)
        .take(max_rows)
        .collect();
    let mut rest: Vec<&Trial> = state
        .trials
        .iter()
        .filter(|t| t.status != TrialStatus::Running)
        .collect();
    // Best first, trials without a result last, by id among equals.
    rest.sort_by(|a, b| {
        let score = |t: &Trial| t.best.map_or(f64::NEG_INFINITY, |(v, _)| mode.score(v));
        score(b).total_cmp(&score(a)).then(a.id.cmp(&b.id))
    });
    let room = max_rows.saturating_sub(rows.len());
    rows.extend(rest.iter().take(room).copied());
    rows.sort_by_key(|t| t.id);
    let mut text = render(state, &rows, TableFormat::Table);
    let hidden = state.trials.len() - rows.len();
    if hidden > 0 {
        let _ = writeln!(
            text,
            "... and {hidden} more trials ({}); `rtune status` shows all",
            status_counts(state)
        );
    }
    text
}

/// `RUNNING 2, PENDING 5, TERMINATED 10`: the statuses present, in lifecycle order.
pub fn status_counts(state: &ExperimentState) -> String {
    use TrialStatus::*;
    [Running, Pending, Paused, Interrupted, Terminated, Error]
        .iter()
        .filter_map(|status| {
            let n = state.trials.iter().filter(|t| t.status == *status).count();
            (n > 0).then(|| format!("{status} {n}"))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Where a trial runs or ran, as its executor described it; empty if unknown.
fn placement<'a>(state: &'a ExperimentState, trial: &Trial) -> &'a str {
    state
        .placements
        .get(&trial.id.to_string())
        .map_or("", String::as_str)
}

/// The status a person sees: a started run whose SLURM job still waits in the queue is PENDING.
fn shown_status(state: &ExperimentState, trial: &Trial) -> String {
    if trial.status == TrialStatus::Running && is_queued_placement(placement(state, trial)) {
        return "PENDING".to_string();
    }
    trial.status.to_string()
}

fn trial_json(state: &ExperimentState, trial: &Trial) -> Value {
    json!({
        "trial": trial.display_name(),
        "trial_id": trial.id.to_string(),
        "status": shown_status(state, trial),
        "placement": state.placements.get(&trial.id.to_string()),
        "config": trial.config,
        "iter": trial.iteration,
        "time_total_s": trial.time_total_s,
        state.metric.clone(): last_metric(state, trial),
        "best": trial.best.map(|(value, iteration)| json!({"value": value, "training_iteration": iteration})),
        "error": trial.error,
    })
}

fn last_metric(state: &ExperimentState, trial: &Trial) -> Option<f64> {
    trial.last_result.as_ref()?.get(&state.metric)
}

/// A value from a nested config by dotted name (`model.layers`).
pub fn lookup<'a>(config: &'a Map<String, Value>, dotted: &str) -> Option<&'a Value> {
    let mut parts = dotted.split('.');
    let mut value = config.get(parts.next()?)?;
    for part in parts {
        value = value.as_object()?.get(part)?;
    }
    Some(value)
}

/// A number as a person reads it in a table: 5 significant digits, scientific when tiny or huge.
pub fn short_number(value: f64) -> String {
    if value == 0.0 || !value.is_finite() {
        return value.to_string();
    }
    let magnitude = value.abs();
    if !(1e-3..1e6).contains(&magnitude) {
        return format!("{value:.4e}");
    }
    let decimals = (4 - magnitude.log10().floor() as i32).max(0) as usize;
    let text = format!("{value:.decimals$}");
    if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        text
    }
}

fn short_value(value: &Value) -> String {
    match value {
        Value::Number(n) if n.is_f64() => n.as_f64().map_or(n.to_string(), short_number),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The trial with the best value of the metric over all its results (Ray Tune's scope "all"),
/// the older trial on ties.
pub fn best_trial(state: &ExperimentState) -> Option<&Trial> {
    let mode = state.mode;
    state
        .trials
        .iter()
        .filter_map(|t| t.best.map(|(value, _)| (t, mode.score(value))))
        .fold(None, |best: Option<(&Trial, f64)>, (t, score)| match best {
            Some((_, s)) if s >= score => best,
            _ => Some((t, score)),
        })
        .map(|(t, _)| t)
}

/// The best trial as JSON: name, metric value, the iteration it was reached at, total time, config.
pub fn best_trial_json(state: &ExperimentState) -> Option<Value> {
    let trial = best_trial(state)?;
    let (value, iteration) = trial.best?;
    Some(json!({
        "trial": trial.display_name(),
        "trial_id": trial.id.to_string(),
        "metric": state.metric,
        "mode": state.mode,
        "value": value,
        "training_iteration": iteration,
        "time_total_s": trial.time_total_s,
        "status": trial.status,
        "config": trial.config,
        "trial_dir": trial.id.name(),
    }))
}

/// The "Best trial" block printed at the end of a run and by `rtune best`.
pub fn best_trial_block(state: &ExperimentState) -> Option<String> {
    let trial = best_trial(state)?;
    let (value, iteration) = trial.best?;
    let mut text = String::new();
    let _ = writeln!(
        text,
        "Best trial: {} ({})",
        trial.display_name(),
        trial.status
    );
    let direction = match state.mode {
        Mode::Min => "lowest",
        Mode::Max => "highest",
    };
    let _ = writeln!(
        text,
        "  {}: {} ({direction}, at training_iteration {iteration})",
        state.metric,
        short_number(value)
    );
    let _ = writeln!(text, "  total time: {:.2} s", trial.time_total_s);
    let _ = writeln!(text, "  config:");
    let mut flat = Vec::new();
    flatten("", &trial.config, &mut flat);
    for (name, value) in flat {
        let _ = writeln!(text, "    {name} = {value}");
    }
    Some(text.trim_end().to_string())
}

fn flatten(prefix: &str, config: &Map<String, Value>, out: &mut Vec<(String, String)>) {
    for (key, value) in config {
        let name = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        match value {
            Value::Object(map) => flatten(&name, map, out),
            other => out.push((name, other.to_string())),
        }
    }
}

/// A local date and time for start and end lines.
pub fn local_time(unix_seconds: f64) -> String {
    let nanos = (unix_seconds.max(0.0) * 1e9) as i64;
    let utc = chrono::DateTime::from_timestamp_nanos(nanos);
    utc.with_timezone(&chrono::Local)
        .format("%Y-%m-%d %H:%M:%S")
        .to_string()
}

/// Human-readable duration: `12.3 s`, `4 min 05 s`, `2 h 03 min`.
pub fn human_duration(seconds: f64) -> String {
    let seconds = seconds.max(0.0);
    if seconds < 60.0 {
        format!("{seconds:.1} s")
    } else if seconds < 3600.0 {
        format!(
            "{} min {:02} s",
            (seconds / 60.0) as u64,
            seconds as u64 % 60
        )
    } else {
        format!(
            "{} h {:02} min",
            (seconds / 3600.0) as u64,
            (seconds as u64 % 3600) / 60
        )
    }
}

/// The console of a running experiment.
///
/// On a terminal: the trials table redrawn in place above an overall progress bar, events printed
/// above it. Otherwise (a log file, a SLURM job's output): one line per event and the whole table
/// every `interval_s`, so the log stays readable and small.
pub struct Reporter {
    bar: Option<ProgressBar>,
    interval_s: f64,
    last_table_at: Option<f64>,
    /// Rows of the live table.
    max_rows: usize,
    quiet: bool,
}

impl Reporter {
    pub fn new(terminal: bool, interval_s: f64) -> Reporter {
        let bar = terminal.then(|| {
            let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stdout());
            let style = ProgressStyle::with_template(
                "{msg}\n{bar:40.cyan/blue} {pos}/{len} trials finished, {elapsed} elapsed",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar());
            bar.set_style(style.progress_chars("=> "));
            bar.enable_steady_tick(Duration::from_millis(500));
            bar
        });
        Reporter {
            bar,
            interval_s,
            last_table_at: None,
            max_rows: 20,
            quiet: false,
        }
    }

    /// A reporter that prints nothing (benchmarks, library use).
    pub fn quiet() -> Reporter {
        Reporter {
            bar: None,
            interval_s: f64::INFINITY,
            last_table_at: None,
            max_rows: 0,
            quiet: true,
        }
    }

    fn print(&self, text: &str) {
        if self.quiet {
            return;
        }
        match &self.bar {
            Some(bar) => bar.println(text),
            None => print_line(text),
        }
    }

    /// The first line(s) of a run.
    pub fn start(&mut self, text: &str) {
        self.print(text);
    }

    /// A trial event or a warning: one line.
    pub fn on_event(&mut self, message: &str) {
        if self.bar.is_some() {
            self.print(message);
        } else {
            self.print(&format!("[{}] {message}", local_time(unix_now())));
        }
    }

    /// Called about once a second with the current state.
    pub fn tick(&mut self, now: f64, state: &ExperimentState) {
        if self.quiet {
            return;
        }
        let finished = state
            .trials
            .iter()
            .filter(|t| t.status.is_finished())
            .count();
        let total = state.total_trials.unwrap_or(state.trials.len());
        if let Some(bar) = &self.bar {
            bar.set_length(total as u64);
            bar.set_position(finished as u64);
            let mut message = live_table(state, self.max_rows);
            message.truncate(message.trim_end().len());
            bar.set_message(message);
            return;
        }
        let due = self
            .last_table_at
            .is_none_or(|last| now - last >= self.interval_s);
        if due {
            self.last_table_at = Some(now);
            let mut text = format!(
                "== {} trials finished of {total} ({}), {} elapsed\n",
                finished,
                status_counts(state),
                human_duration(now - state.started_at)
            );
            text.push_str(&live_table(state, self.max_rows));
            self.print(text.trim_end());
        }
    }

    /// The end of a run: the final table, the best trial, the finish time and the total time.
    pub fn finish(&mut self, state: &ExperimentState) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
        if self.quiet {
            return;
        }
        let mut text = trials_table(state, TableFormat::Table);
        text.push('\n');
        match best_trial_block(state) {
            Some(block) => text.push_str(&block),
            None => {
                let _ = write!(text, "No trial reported {}.", state.metric);
            }
        }
        let end = state.finished_at.unwrap_or(state.started_at);
        let _ = write!(
            text,
            "\n\nExperiment {} {} at {} after {} ({}).\nResults: rtune status, rtune best, or the files in the experiment directory.",
            state.name,
            state.status,
            local_time(end),
            human_duration(end - state.started_at),
            status_counts(state),
        );
        print_line(&text);
    }
}

/// Writes one line to stdout, ignoring a closed stdout: after SIGHUP from a closed terminal or a
/// dropped ssh session the console is gone, and `println!` would panic there, killing the head
/// before it has stopped the trials and written the state.
fn print_line(text: &str) {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{text}");
}

/// Seconds since the Unix epoch.
fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtune_core::TrialId;
    use std::collections::BTreeMap;

    fn trial(id: u32, lr: f64, status: TrialStatus, loss: Option<f64>) -> Trial {
        let mut config = Map::new();
        config.insert("lr".into(), json!(lr));
        config.insert("model".into(), json!({"layers": 2}));
        let value = json!({
            "id": id, "config": config, "status": status, "tag": "", "iteration": 3,
            "time_total_s": 1.25, "last_result": loss.map(|l| json!({
                "trial": id, "metrics": {"loss": l}, "has_checkpoint": false})),
            "best": loss.map(|l| (l, 2)), "checkpoints": {}, "restore": null, "runs": 1,
            "failures": 0, "resumable": true, "error": null, "ending": null,
        });
        serde_json::from_value(value).expect("a trial")
    }

    fn state(trials: Vec<Trial>) -> ExperimentState {
        ExperimentState {
            format: 1,
            name: "exp".into(),
            status: "finished".into(),
            metric: "loss".into(),
            mode: Mode::Min,
            scheduler: "asha".into(),
            searcher: "random".into(),
            parameters: vec!["lr".into(), "model.layers".into()],
            total_trials: Some(trials.len()),
            started_at: 0.0,
            finished_at: Some(10.0),
            trials,
            placements: BTreeMap::new(),
            head: None,
        }
    }

    #[test]
    fn placements_get_a_column_and_queued_jobs_show_as_pending() {
        let mut s = state(vec![
            trial(0, 1e-4, TrialStatus::Running, None),
            trial(1, 0.02, TrialStatus::Running, None),
        ]);
        s.placements
            .insert("00000".into(), "n1 cpu=1 gpus=1".into());
        s.placements
            .insert("00001".into(), "job 12 PENDING (Resources)".into());
        let csv = trials_table(&s, TableFormat::Csv);
        assert_eq!(
            csv,
            "Trial name,status,placement,lr,model.layers,iter,total time (s),loss\n\
             trial_00000,RUNNING,n1 cpu=1 gpus=1,0.0001,2,3,1.250,\n\
             trial_00001,PENDING,job 12 PENDING (Resources),0.02,2,3,1.250,\n"
        );
        let json = trials_table(&s, TableFormat::Json);
        assert!(
            json.contains("\"placement\": \"n1 cpu=1 gpus=1\""),
            "{json}"
        );
    }

    #[test]
    fn the_table_has_a_column_per_parameter_and_the_metric() {
        let s = state(vec![
            trial(0, 1e-4, TrialStatus::Terminated, Some(0.5)),
            trial(1, 0.02, TrialStatus::Running, None),
        ]);
        let table = trials_table(&s, TableFormat::Table);
        for needle in [
            "Trial name",
            "model.layers",
            "trial_00000",
            "1.0000e-4",
            "0.02",
        ] {
            assert!(table.contains(needle), "{needle} missing in\n{table}");
        }
        let csv = trials_table(&s, TableFormat::Csv);
        assert_eq!(
            csv,
            "Trial name,status,lr,model.layers,iter,total time (s),loss\n\
             trial_00000,TERMINATED,0.0001,2,3,1.250,0.5\n\
             trial_00001,RUNNING,0.02,2,3,1.250,\n"
        );
        let md = trials_table(&s, TableFormat::Markdown);
        assert!(
            md.lines().nth(1).is_some_and(|l| l.starts_with("|-")),
            "{md}"
        );
        let json: Value = serde_json::from_str(&trials_table(&s, TableFormat::Json)).expect("json");
        assert_eq!(json[0]["loss"], 0.5);
        assert_eq!(json[1]["status"], "RUNNING");
    }

    #[test]
    fn the_best_trial_respects_the_mode_and_ties_go_to_the_older_trial() {
        let mut s = state(vec![
            trial(0, 1e-4, TrialStatus::Terminated, Some(0.5)),
            trial(1, 1e-3, TrialStatus::Terminated, Some(0.2)),
            trial(2, 1e-2, TrialStatus::Terminated, Some(0.2)),
        ]);
        assert_eq!(best_trial(&s).map(|t| t.id), Some(TrialId(1)));
        let block = best_trial_block(&s).expect("block");
        assert!(
            block.contains("trial_00001") && block.contains("loss: 0.2"),
            "{block}"
        );
        assert!(block.contains("model.layers = 2"), "{block}");
        s.mode = Mode::Max;
        assert_eq!(best_trial(&s).map(|t| t.id), Some(TrialId(0)));
        let json = best_trial_json(&s).expect("json");
        assert_eq!(json["training_iteration"], 2);
    }

    #[test]
    fn the_live_table_keeps_running_and_best_trials() {
        let mut trials: Vec<Trial> = (0..30)
            .map(|i| trial(i, 1e-4, TrialStatus::Terminated, Some(f64::from(i))))
            .collect();
        trials[25].status = TrialStatus::Running;
        let s = state(trials);
        let table = live_table(&s, 5);
        assert!(table.contains("trial_00025"), "{table}");
        assert!(
            table.contains("trial_00000") && !table.contains("trial_00010"),
            "{table}"
        );
        assert!(table.contains("... and 25 more trials"), "{table}");
    }

    #[test]
    fn numbers_are_short_and_readable() {
        assert_eq!(short_number(0.123456), "0.12346");
        assert_eq!(short_number(2.0), "2");
        assert_eq!(short_number(5e-6), "5.0000e-6");
        assert_eq!(short_number(1234.5678), "1234.6");
        assert_eq!(human_duration(75.0), "1 min 15 s");
    }
}
