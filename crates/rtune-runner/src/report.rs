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
use rtune_core::{Mode, TrialStatus};
use serde_json::{Map, Value, json};

use crate::state::{ExperimentState, RunStatus, TrialRecord};
use crate::storage::csv_line;

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
    let trials: Vec<&TrialRecord> = state.trials.iter().collect();
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

/// Whether any trial has a placement: the table then has a placement column.
fn has_placements(state: &ExperimentState) -> bool {
    state.trials.iter().any(|t| t.placement.is_some())
}

fn header(state: &ExperimentState) -> Vec<String> {
    let mut header = vec!["Trial name".to_string(), "status".to_string()];
    if has_placements(state) {
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

fn render(state: &ExperimentState, trials: &[&TrialRecord], format: TableFormat) -> String {
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
                let mut row = vec![trial.display_name(), shown_status(trial)];
                if has_placements(state) {
                    row.push(placement(trial).to_string());
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
                let mut status = shown_status(trial);
                if trial.silent {
                    status.push_str(" (silent)");
                }
                let mut row = vec![trial.display_name(), status];
                if has_placements(state) {
                    row.push(placement(trial).to_string());
                }
                for name in &state.parameters {
                    row.push(lookup(&trial.config, name).map_or(String::new(), short_value));
                }
                row.push(trial.iteration.to_string());
                row.push(format!("{:.2}", trial.time_total_s));
                row.push(last_metric(state, trial).map_or(String::new(), short_number));
                table.add_row(row);
            }
            let first_number = if has_placements(state) { 3 } else { 2 };
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

/// The trials a live view shows: every running trial, then the best finished or waiting ones,
/// at most `max_rows` in all.
pub fn live_rows(
    tuner: &rtune_core::Tuner,
    max_rows: usize,
) -> std::collections::BTreeSet<rtune_core::TrialId> {
    let mode = tuner.settings().mode;
    let trials = tuner.trials();
    let mut rows: Vec<&rtune_core::tuner::Trial> = trials
        .iter()
        .filter(|t| t.status == TrialStatus::Running)
        .take(max_rows)
        .collect();
    let mut rest: Vec<&rtune_core::tuner::Trial> = trials
        .iter()
        .filter(|t| t.status != TrialStatus::Running)
        .collect();
    // Best first, trials without a result last, by id among equals.
    rest.sort_by(|a, b| {
        let score =
            |t: &rtune_core::tuner::Trial| t.best.map_or(f64::NEG_INFINITY, |(v, _)| mode.score(v));
        score(b).total_cmp(&score(a)).then(a.id.cmp(&b.id))
    });
    let room = max_rows.saturating_sub(rows.len());
    rows.extend(rest.into_iter().take(room));
    rows.into_iter().map(|t| t.id).collect()
}

/// The trials a finished run shows: the rows of [`live_rows`] and the first `max_errors`
/// trials in ERROR.
pub fn final_rows(
    tuner: &rtune_core::Tuner,
    max_rows: usize,
    max_errors: usize,
) -> std::collections::BTreeSet<rtune_core::TrialId> {
    let mut rows = live_rows(tuner, max_rows);
    rows.extend(
        tuner
            .trials()
            .iter()
            .filter(|t| t.status == TrialStatus::Error)
            .take(max_errors)
            .map(|t| t.id),
    );
    rows
}

/// The rows a live view shows: every running trial, then the best finished or waiting ones, at
/// most `max_rows` in all; a summary line says what was left out (of all the trials the state's
/// counts name, when it holds only some).
pub fn live_table(state: &ExperimentState, max_rows: usize) -> String {
    let total = state.counts.values().sum::<usize>().max(state.trials.len());
    if state.trials.len() <= max_rows {
        let mut text = trials_table(state, TableFormat::Table);
        let hidden = total - state.trials.len();
        if hidden > 0 {
            let _ = writeln!(
                text,
                "... and {hidden} more trials ({}); `rtune status` shows all",
                status_counts(state)
            );
        }
        return text;
    }
    let mode = state.mode;
    let mut rows: Vec<&TrialRecord> = state
        .trials
        .iter()
        .filter(|t| t.status == TrialStatus::Running)
        .take(max_rows)
        .collect();
    let mut rest: Vec<&TrialRecord> = state
        .trials
        .iter()
        .filter(|t| t.status != TrialStatus::Running)
        .collect();
    // Best first, trials without a result last, by id among equals.
    rest.sort_by(|a, b| {
        let score = |t: &TrialRecord| t.best.map_or(f64::NEG_INFINITY, |b| mode.score(b.value));
        score(b).total_cmp(&score(a)).then(a.id.cmp(&b.id))
    });
    let room = max_rows.saturating_sub(rows.len());
    rows.extend(rest.iter().take(room).copied());
    rows.sort_by_key(|t| t.id);
    let mut text = render(state, &rows, TableFormat::Table);
    let hidden = total - rows.len();
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
            let n = state.count(*status);
            (n > 0).then(|| format!("{status} {n}"))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Where a trial runs or ran, as its executor described it; empty if unknown.
fn placement(trial: &TrialRecord) -> &str {
    trial.placement.as_ref().map_or("", |p| p.label.as_str())
}

/// The status a person sees: a started run whose SLURM job still waits in the queue is PENDING.
fn shown_status(trial: &TrialRecord) -> String {
    if trial.queued() {
        return "PENDING".to_string();
    }
    trial.status.to_string()
}

fn trial_json(state: &ExperimentState, trial: &TrialRecord) -> Value {
    json!({
        "trial": trial.display_name(),
        "trial_id": trial.id.to_string(),
        "status": shown_status(trial),
        "placement": trial.placement,
        "config": trial.config,
        "iter": trial.iteration,
        "time_total_s": trial.time_total_s,
        state.metric.clone(): last_metric(state, trial),
        "best": trial.best.map(|b| json!({"value": b.value, "training_iteration": b.iteration})),
        "error": trial.error,
        "silent": trial.silent,
    })
}

fn last_metric(state: &ExperimentState, trial: &TrialRecord) -> Option<f64> {
    trial.last(&state.metric)
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
pub fn best_trial(state: &ExperimentState) -> Option<&TrialRecord> {
    let mode = state.mode;
    state
        .trials
        .iter()
        .filter_map(|t| t.best.map(|b| (t, mode.score(b.value))))
        .fold(
            None,
            |best: Option<(&TrialRecord, f64)>, (t, score)| match best {
                Some((_, s)) if s >= score => best,
                _ => Some((t, score)),
            },
        )
        .map(|(t, _)| t)
}

/// The best trial as JSON: name, metric value, the iteration it was reached at, total time, config.
pub fn best_trial_json(state: &ExperimentState) -> Option<Value> {
    let trial = best_trial(state)?;
    let best = trial.best?;
    let (value, iteration) = (best.value, best.iteration);
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

/// Why there is no best trial yet, with what would help: the metric, and the keys the trials
/// did report.
pub fn no_best_message(state: &ExperimentState) -> String {
    let mut reported: Vec<&str> = state
        .trials
        .iter()
        .filter_map(|t| t.last_result.as_ref())
        .flat_map(|r| r.keys().map(String::as_str))
        .filter(|k| !rtune_core::tuner::AUTOMATIC_KEYS.contains(k))
        .collect();
    reported.sort_unstable();
    reported.dedup();
    if state.trials.iter().all(|t| t.iteration == 0) {
        format!(
            "no trial of {} has reported anything yet ({} trials: {})",
            state.name,
            state.trials.len(),
            status_counts(state)
        )
    } else if reported.is_empty() {
        format!(
            "no trial of {} has reported the metric `{}`; they reported no keys of their own",
            state.name, state.metric
        )
    } else {
        format!(
            "no trial of {} has reported the metric `{}`; they reported {}\nhint: the experiment \
             file's `metric` must be one of these keys",
            state.name,
            state.metric,
            reported
                .iter()
                .map(|k| format!("`{k}`"))
                .collect::<Vec<_>>()
                .join(", ")
        )
    }
}

/// `rtune list`: one row per experiment.
pub fn experiments_table(listed: &[crate::catalog::Listed]) -> String {
    let mut table = Table::new();
    table
        .load_style(UTF8_FULL_CONDENSED)
        .set_content_arrangement(ContentArrangement::Disabled)
        .set_header(vec![
            "experiment",
            "status",
            "trials",
            "ERROR",
            "metric",
            "best",
            "started",
            "directory",
        ]);
    for e in listed {
        table.add_row(vec![
            e.name.clone(),
            e.status.clone(),
            e.trials.to_string(),
            e.errors.to_string(),
            e.metric.clone(),
            e.best.map_or(String::new(), short_number),
            e.started_at.map_or(String::new(), local_time),
            e.path.display().to_string(),
        ]);
    }
    for index in [2, 3, 5] {
        if let Some(column) = table.column_mut(index) {
            column.set_cell_alignment(CellAlignment::Right);
        }
    }
    let mut text = table.to_string();
    text.push('\n');
    text
}

/// The "Best trial" block printed at the end of a run and by `rtune best`.
pub fn best_trial_block(state: &ExperimentState) -> Option<String> {
    let trial = best_trial(state)?;
    let best = trial.best?;
    let (value, iteration) = (best.value, best.iteration);
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
    /// When the last full table was printed (real time).
    last_table_real: Option<std::time::Instant>,
    simulated: bool,
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
            last_table_real: None,
            simulated: false,
            max_rows: 20,
            quiet: false,
        }
    }

    /// A reporter that prints nothing (benchmarks, library use).
    pub fn quiet() -> Reporter {
        Reporter {
            bar: None,
            interval_s: f64::INFINITY,
            last_table_real: None,
            simulated: false,
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
        if self.bar.is_some() || self.simulated {
            self.print(message);
        } else {
            self.print(&format!("[{}] {message}", local_time(unix_now())));
        }
    }

    /// The console shows time as durations only: the run happens in simulated time (the
    /// simulated executor), so a clock time would be a time that never was.
    pub fn simulated(mut self, simulated: bool) -> Reporter {
        self.simulated = simulated;
        self
    }

    /// Whether the next [`Reporter::tick`] draws a table (on a terminal always; in a log every
    /// `report_interval_s`): the caller builds the state it shows only then.
    pub fn wants_table(&self) -> bool {
        !self.quiet
            && (self.bar.is_some()
                || self
                    .last_table_real
                    .is_none_or(|last| last.elapsed().as_secs_f64() >= self.interval_s))
    }

    /// How many trials a live table shows.
    pub fn rows(&self) -> usize {
        self.max_rows
    }

    /// Called with the current state (its shown rows) when [`Reporter::wants_table`].
    pub fn tick(&mut self, now: f64, state: &ExperimentState) {
        if self.quiet {
            return;
        }
        let finished = state.count(TrialStatus::Terminated) + state.count(TrialStatus::Error);
        let total = state.total_trials.unwrap_or(state.trials.len());
        let headline = progress_line(state, now);
        if let Some(bar) = &self.bar {
            bar.set_length(total as u64);
            bar.set_position(finished as u64);
            let mut message = live_table(state, self.max_rows);
            message.truncate(message.trim_end().len());
            message.push('\n');
            message.push_str(&headline);
            bar.set_message(message);
            return;
        }
        // Real time between tables, also in a simulation (whose clock runs far faster).
        let due = self
            .last_table_real
            .is_none_or(|last| last.elapsed().as_secs_f64() >= self.interval_s);
        if due {
            self.last_table_real = Some(std::time::Instant::now());
            let mut text = format!("== {headline}\n");
            text.push_str(&live_table(state, self.max_rows));
            self.print(text.trim_end());
        }
    }

    /// The end of a run: the final table, the best trial, how long it took, why it ended early
    /// if it did, and the commands that show the results.
    pub fn finish(&mut self, state: &ExperimentState, dir: &std::path::Path) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
        if self.quiet {
            return;
        }
        // Every trial the state holds (all of them in a smaller experiment), and how many
        // more there are.
        let mut text = live_table(state, usize::MAX);
        text.push('\n');
        match best_trial_block(state) {
            Some(block) => text.push_str(&block),
            None => {
                let _ = write!(text, "No trial reported {}.", state.metric);
            }
        }
        let end = state.finished_at.unwrap_or(state.started_at);
        let took = human_duration(end - state.started_at);
        let when = if self.simulated {
            format!("after {took} of simulated time")
        } else {
            format!("at {} after {took}", local_time(end))
        };
        let _ = write!(
            text,
            "\n\nExperiment {} {} {when} ({}).",
            state.name,
            state.status,
            status_counts(state),
        );
        if let Some(reason) = &state.ended {
            let _ = write!(text, "\nIt ended early: {reason}");
        }
        let dir = shell_word(&dir.to_string_lossy());
        let rtune = invoked_as();
        let _ = write!(
            text,
            "\nResults in {dir}\n  {rtune} status {dir}\n  {rtune} best {dir}\n  {rtune} dashboard {dir}"
        );
        if state.status == RunStatus::Interrupted {
            let _ = write!(text, "\n  {rtune} resume {dir}      # continue it");
        }
        print_line(&text);
    }
}

/// `8 of 12 trials finished (RUNNING 2, ...), 1 min 05 s elapsed; best eval_loss 0.41
/// (trial_00003); about 40 s left`: the live console's headline.
pub fn progress_line(state: &ExperimentState, now: f64) -> String {
    let finished = state.count(TrialStatus::Terminated) + state.count(TrialStatus::Error);
    let total = state.total_trials.unwrap_or(state.trials.len());
    let elapsed = (now - state.started_at).max(0.0);
    let mut line = format!(
        "{finished} of {total} trials finished ({}), {} elapsed",
        status_counts(state),
        human_duration(elapsed)
    );
    if let Some(trial) = best_trial(state)
        && let Some(best) = trial.best
    {
        let _ = write!(
            line,
            "; best {} {} ({})",
            state.metric,
            short_number(best.value),
            trial.display_name()
        );
    }
    if finished > 0 && finished < total {
        // Trials finished per second so far, for what is left: rough (ASHA stops most trials
        // early), and said so.
        let left = elapsed * (total - finished) as f64 / finished as f64;
        let _ = write!(line, "; about {} left", human_duration(left));
    }
    line
}

/// How this program was started (`target/release/rtune`, or `rtune` when found on PATH), for
/// commands a user can paste.
fn invoked_as() -> String {
    let arg0 = std::env::args_os()
        .next()
        .map(|a| a.to_string_lossy().into_owned())
        .unwrap_or_default();
    if arg0.contains('/') && !arg0.ends_with("/rtune") || arg0.is_empty() {
        // A test harness or another program embedding the runner.
        return "rtune".to_string();
    }
    shell_word(&arg0)
}

/// A word a POSIX shell reads back as `text`.
pub fn shell_word(text: &str) -> String {
    if !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-+=:,@%~".contains(c))
    {
        text.to_string()
    } else {
        format!("'{}'", text.replace('\'', "'\\''"))
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
    use rtune_core::{ExecutorKind, Placement, TrialId};

    fn trial(id: u32, lr: f64, status: TrialStatus, loss: Option<f64>) -> TrialRecord {
        let mut config = Map::new();
        config.insert("lr".into(), json!(lr));
        config.insert("model".into(), json!({"layers": 2}));
        let value = json!({
            "id": id, "config": config, "status": status, "tag": "", "iteration": 3,
            "time_total_s": 1.25, "last_result": loss.map(|l| json!({"loss": l})),
            "best": loss.map(|l| json!({"value": l, "iteration": 2})), "checkpoints": [],
            "restore": null, "runs": 1, "failures": 0, "error": null,
        });
        serde_json::from_value(value).expect("a trial")
    }

    fn state(trials: Vec<TrialRecord>) -> ExperimentState {
        let mut counts = std::collections::BTreeMap::new();
        for t in &trials {
            *counts.entry(t.status).or_insert(0) += 1;
        }
        ExperimentState {
            format: crate::state::STATE_FORMAT,
            name: "exp".into(),
            status: RunStatus::Finished,
            metric: "loss".into(),
            mode: Mode::Min,
            scheduler: "asha".into(),
            searcher: "random".into(),
            parameters: vec!["lr".into(), "model.layers".into()],
            total_trials: Some(trials.len()),
            started_at: 0.0,
            finished_at: Some(10.0),
            ended: None,
            counts,
            trials,
            head: None,
        }
    }

    #[test]
    fn placements_get_a_column_and_queued_jobs_show_as_pending() {
        let mut s = state(vec![
            trial(0, 1e-4, TrialStatus::Running, None),
            trial(1, 0.02, TrialStatus::Running, None),
        ]);
        s.trials[0].placement = Some(Placement::nowhere(
            ExecutorKind::SlurmStep,
            "n1 cpu=1 gpus=1",
        ));
        let mut queued = Placement::nowhere(ExecutorKind::SlurmJob, "job 12 PENDING (Resources)");
        queued.queued = true;
        s.trials[1].placement = Some(queued);
        let csv = trials_table(&s, TableFormat::Csv);
        assert_eq!(
            csv,
            "Trial name,status,placement,lr,model.layers,iter,total time (s),loss\n\
             trial_00000,RUNNING,n1 cpu=1 gpus=1,0.0001,2,3,1.250,\n\
             trial_00001,PENDING,job 12 PENDING (Resources),0.02,2,3,1.250,\n"
        );
        let json = trials_table(&s, TableFormat::Json);
        assert!(json.contains("\"label\": \"n1 cpu=1 gpus=1\""), "{json}");
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
        let mut trials: Vec<TrialRecord> = (0..30)
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
