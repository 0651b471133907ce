//! PBT's lineage as users read it (`rtune status DIR --lineage [TRIAL]`): every exploit (which
//! trial took whose checkpoint at which iterations, and how its config changed), and one trial's
//! policy (its config by iteration), from `lineage.jsonl` and the trial's `policy.json` (or
//! `params.json` when PBT never changed its config).

use std::fmt::Write as _;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use comfy_table::presets::{ASCII_MARKDOWN, UTF8_FULL_CONDENSED};
use comfy_table::{ContentArrangement, Table};
use rtune_core::scheduler::PolicyStep;
use rtune_core::tuner::Effect;
use rtune_core::{Config, TrialId};
use serde_json::{Map, Value, json};

use crate::report::{TableFormat, short_number};
use crate::state::ExperimentState;
use crate::storage::{LINEAGE_FILE, PARAMS_FILE, POLICY_FILE, StorageError, csv_line};

/// One line of `lineage.jsonl`.
#[derive(Clone, Debug, PartialEq)]
pub struct Exploit {
    /// Seconds since the Unix epoch, when the exploit was decided.
    pub time: f64,
    /// The trial that restarts from the donor's checkpoint (`trial_00002`).
    pub target: String,
    pub donor: String,
    /// The iteration of the donor's checkpoint; the target continues at `donor_iteration + 1`.
    pub donor_iteration: u64,
    /// The target's iteration when it was exploited (the work it gave up).
    pub target_iteration: Option<u64>,
    /// The config the target trained with until then (absent in logs of older rtune versions).
    pub old_config: Option<Config>,
    pub new_config: Config,
    /// The explored values, e.g. `lr=2.4e-5`.
    pub change: String,
}

impl Exploit {
    fn from_json(value: &Value) -> Result<Exploit, String> {
        let text = |key: &str| {
            value[key]
                .as_str()
                .map(str::to_string)
                .ok_or_else(|| format!("`{key}` is missing or not a string"))
        };
        let object = |v: &Value| v.as_object().cloned();
        Ok(Exploit {
            time: value["time"].as_f64().unwrap_or(0.0),
            target: text("target")?,
            donor: text("donor")?,
            donor_iteration: value["donor_iteration"]
                .as_u64()
                .ok_or("`donor_iteration` is missing or not a whole number")?,
            target_iteration: value["target_iteration"].as_u64(),
            old_config: object(&value["old_config"])
                .or_else(|| object(&value["details"]["old_config"])),
            new_config: object(&value["new_config"]).ok_or("`new_config` is missing")?,
            change: value["change"].as_str().unwrap_or_default().to_string(),
        })
    }

    fn to_json(&self) -> Value {
        json!({
            "time": self.time,
            "target": self.target,
            "donor": self.donor,
            "donor_iteration": self.donor_iteration,
            "target_iteration": self.target_iteration,
            "old_config": self.old_config,
            "new_config": self.new_config,
            "change": self.change,
        })
    }

    /// `lr 2.3946e-5 -> 7.8572e-5` for every value that changed; the explored values when the
    /// old config is unknown.
    pub fn config_change(&self) -> String {
        let Some(old) = &self.old_config else {
            return self.change.clone();
        };
        let (mut before, mut after) = (Vec::new(), Vec::new());
        flatten("", old, &mut before);
        flatten("", &self.new_config, &mut after);
        let mut changes = Vec::new();
        for (name, new) in &after {
            let old = before.iter().find(|(n, _)| n == name).map(|(_, v)| v);
            if old != Some(new) {
                changes.push(format!(
                    "{name} {} -> {}",
                    old.map_or("(none)".to_string(), short_value),
                    short_value(new)
                ));
            }
        }
        if changes.is_empty() {
            "no change".to_string()
        } else {
            changes.join(", ")
        }
    }
}

/// The `lineage.jsonl` line of an [`Effect::Exploited`] decided at `now` (`None` for any other
/// effect): written when it is decided, and by a resume that finds it missing
/// ([`restore_missing`]).
pub fn exploit_line(now: f64, effect: &Effect) -> Option<Value> {
    let Effect::Exploited {
        target,
        donor,
        target_iteration,
        old_config,
        new_config,
        change,
        details,
    } = effect
    else {
        return None;
    };
    Some(json!({
        "time": now,
        "target": target.name(),
        "donor": donor.trial.name(),
        "donor_iteration": donor.iteration,
        "target_iteration": target_iteration,
        "old_config": old_config,
        "new_config": new_config,
        "change": change,
        "details": details,
    }))
}

/// A head killed between journalling a report and writing the exploit it led to leaves
/// `lineage.jsonl` short of the exploits the journal implies (`lines`, from the replay, in
/// order). The lines it holds are kept and the missing ones appended, in one atomic rewrite;
/// returns how many were restored.
pub fn restore_missing(dir: &Path, lines: &[Value]) -> Result<usize, StorageError> {
    let path = dir.join(LINEAGE_FILE);
    let text = read_if_present(&path)?.unwrap_or_default();
    // A torn last line (cut off mid-write) does not count and is dropped.
    let kept: Vec<&str> = text
        .lines()
        .filter(|line| serde_json::from_str::<Value>(line).is_ok_and(|v| v.is_object()))
        .collect();
    if kept.len() >= lines.len() {
        return Ok(0);
    }
    let mut out = String::new();
    for line in &kept {
        out.push_str(line);
        out.push('\n');
    }
    for line in &lines[kept.len()..] {
        out.push_str(&line.to_string());
        out.push('\n');
    }
    crate::storage::write_atomic(&path, out.as_bytes())?;
    Ok(lines.len() - kept.len())
}

/// `lineage.jsonl`'s text, or `None` when there is none (no exploit was ever written).
fn read_if_present(path: &Path) -> Result<Option<String>, StorageError> {
    match fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(StorageError::Io {
            action: "read",
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Every exploit of an experiment, in the order they were decided; none when the experiment has
/// no `lineage.jsonl` (it did not use PBT, or nothing was exploited yet).
pub fn read_lineage(dir: &Path) -> Result<Vec<Exploit>, StorageError> {
    let path = dir.join(LINEAGE_FILE);
    let Some(text) = read_if_present(&path)? else {
        return Ok(Vec::new());
    };
    let malformed = |number: usize, message: String| StorageError::Malformed {
        path: path.clone(),
        message: format!("line {number}: {message}"),
    };
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(index, line)| {
            let value: Value =
                serde_json::from_str(line).map_err(|e| malformed(index + 1, e.to_string()))?;
            Exploit::from_json(&value).map_err(|message| malformed(index + 1, message))
        })
        .collect()
}

/// A trial's config by iteration: its `policy.json`, which only a trial PBT exploited has (and
/// experiments of rtune 0.2.0, for every trial), else its `params.json` from iteration 0.
pub fn read_policy(dir: &Path, trial: TrialId) -> Result<Vec<PolicyStep>, StorageError> {
    let path = policy_path(dir, trial);
    let read = |path: &Path| {
        fs::read_to_string(path).map_err(|source| StorageError::Io {
            action: "read",
            path: path.to_path_buf(),
            source,
        })
    };
    match read(&path) {
        Ok(text) => serde_json::from_str(&text).map_err(|e| StorageError::Malformed {
            path,
            message: format!("not a policy (a list of {{from_iteration, config}}): {e}"),
        }),
        Err(StorageError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
            let params = dir.join(trial.name()).join(PARAMS_FILE);
            let config: Config =
                serde_json::from_str(&read(&params)?).map_err(|e| StorageError::Malformed {
                    path: params,
                    message: format!("not a config (an object of parameter values): {e}"),
                })?;
            Ok(vec![PolicyStep {
                from_iteration: 0,
                config,
            }])
        }
        Err(e) => Err(e),
    }
}

pub fn policy_path(dir: &Path, trial: TrialId) -> PathBuf {
    dir.join(trial.name()).join(POLICY_FILE)
}

/// A trial named the way users write it: `trial_00002`, `00002`, `2`, or a table's display name
/// `trial_00002@perturbed[lr=1e-5]`.
pub fn parse_trial(text: &str) -> Option<TrialId> {
    let name = text.split('@').next().unwrap_or(text).trim();
    let number = name.strip_prefix("trial_").unwrap_or(name);
    number.parse::<u32>().ok().map(TrialId)
}

/// The lineage of an experiment, or of one trial with its policy, in `format`.
pub fn lineage_report(
    dir: &Path,
    state: &ExperimentState,
    trial: Option<TrialId>,
    format: TableFormat,
) -> Result<String, StorageError> {
    let mut exploits = read_lineage(dir)?;
    let Some(trial) = trial else {
        return Ok(render_exploits(state, &exploits, format));
    };
    let Some(current) = state.trials.iter().find(|t| t.id == trial) else {
        return Err(StorageError::Malformed {
            path: dir.to_path_buf(),
            message: format!(
                "the experiment has no {} (it has {} trials, trial_00000 to trial_{:05})",
                trial.name(),
                state.trials.len(),
                state.trials.len().saturating_sub(1)
            ),
        });
    };
    exploits.retain(|e| e.target == trial.name());
    let policy = read_policy(dir, trial)?;
    let spans: Vec<(u64, u64)> = policy
        .iter()
        .enumerate()
        .map(|(i, step)| {
            let end = policy
                .get(i + 1)
                .map_or(current.iteration, |next| next.from_iteration);
            (step.from_iteration + 1, end.max(step.from_iteration + 1))
        })
        .collect();
    if format == TableFormat::Json {
        let steps: Vec<Value> = policy
            .iter()
            .zip(&spans)
            .map(|(step, (first, last))| {
                json!({
                    "from_iteration": step.from_iteration,
                    "iterations": [first, last],
                    "config": step.config,
                })
            })
            .collect();
        let value = json!({
            "trial": current.display_name(),
            "iteration": current.iteration,
            "exploits": exploits.iter().map(Exploit::to_json).collect::<Vec<_>>(),
            "policy": steps,
        });
        return Ok(pretty(&value));
    }

    // The policy's columns: the searched parameters, and anything else that changed.
    let mut columns = state.parameters.clone();
    let flat: Vec<Vec<(String, Value)>> = policy
        .iter()
        .map(|step| {
            let mut out = Vec::new();
            flatten("", &step.config, &mut out);
            out
        })
        .collect();
    if let Some(first) = flat.first() {
        for (name, value) in first {
            let changes = flat
                .iter()
                .any(|f| f.iter().find(|(n, _)| n == name).map(|(_, v)| v) != Some(value));
            if changes && !columns.contains(name) {
                columns.push(name.clone());
            }
        }
    }
    let mut header = vec!["iterations".to_string()];
    header.extend(columns.iter().cloned());
    let rows: Vec<Vec<String>> = flat
        .iter()
        .zip(&spans)
        .map(|(values, (first, last))| {
            let mut row = vec![if first == last {
                first.to_string()
            } else {
                format!("{first}-{last}")
            }];
            for column in &columns {
                row.push(
                    values
                        .iter()
                        .find(|(n, _)| n == column)
                        .map_or(String::new(), |(_, v)| cell(v, format)),
                );
            }
            row
        })
        .collect();
    let mut text = String::new();
    if format != TableFormat::Csv {
        let _ = writeln!(
            text,
            "{} ({}, iteration {}): {}",
            current.display_name(),
            current.status,
            current.iteration,
            match exploits.len() {
                0 => "never exploited".to_string(),
                1 => "exploited once".to_string(),
                n => format!("exploited {n} times"),
            }
        );
        for e in &exploits {
            let _ = writeln!(
                text,
                "  at iteration {}: took {}'s checkpoint at iteration {}; {}",
                e.target_iteration
                    .map_or("?".to_string(), |i| i.to_string()),
                e.donor,
                e.donor_iteration,
                e.config_change()
            );
        }
        let _ = writeln!(text, "\nPolicy (config by iteration, from policy.json):");
    }
    text.push_str(&grid(&header, &rows, format));
    Ok(text)
}

fn render_exploits(state: &ExperimentState, exploits: &[Exploit], format: TableFormat) -> String {
    if format == TableFormat::Json {
        return pretty(&json!({
            "experiment": state.name,
            "exploits": exploits.iter().map(Exploit::to_json).collect::<Vec<_>>(),
        }));
    }
    let header: Vec<String> = [
        "target",
        "at iteration",
        "donor",
        "donor iteration",
        "config change",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let rows: Vec<Vec<String>> = exploits
        .iter()
        .map(|e| {
            vec![
                e.target.clone(),
                e.target_iteration.map_or(String::new(), |i| i.to_string()),
                e.donor.clone(),
                e.donor_iteration.to_string(),
                e.config_change(),
            ]
        })
        .collect();
    let mut text = String::new();
    if format != TableFormat::Csv {
        let _ = writeln!(
            text,
            "{}: {} exploit(s){}",
            state.name,
            exploits.len(),
            if exploits.is_empty() {
                " (lineage.jsonl lists PBT's exploits; this experiment has none)"
            } else {
                ""
            }
        );
        if exploits.is_empty() {
            return text;
        }
    }
    text.push_str(&grid(&header, &rows, format));
    text
}

fn grid(header: &[String], rows: &[Vec<String>], format: TableFormat) -> String {
    let mut text = match format {
        TableFormat::Csv => {
            let mut text = csv_line(header);
            for row in rows {
                text.push_str(&csv_line(row));
            }
            // The caller ends the table with its own newline.
            text.pop();
            text
        }
        _ => {
            let mut table = Table::new();
            table
                .load_style(if format == TableFormat::Markdown {
                    ASCII_MARKDOWN
                } else {
                    UTF8_FULL_CONDENSED
                })
                .set_content_arrangement(ContentArrangement::Disabled)
                .set_header(header.to_vec());
            for row in rows {
                table.add_row(row.clone());
            }
            table.to_string()
        }
    };
    text.push('\n');
    text
}

fn pretty(value: &Value) -> String {
    let mut text = serde_json::to_string_pretty(value).unwrap_or_default();
    text.push('\n');
    text
}

/// Nested configs as dotted names.
fn flatten(prefix: &str, config: &Map<String, Value>, out: &mut Vec<(String, Value)>) {
    for (key, value) in config {
        let name = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        match value {
            Value::Object(map) => flatten(&name, map, out),
            other => out.push((name, other.clone())),
        }
    }
}

fn short_value(value: &Value) -> String {
    match value {
        Value::Number(n) if n.is_f64() => n.as_f64().map_or(n.to_string(), short_number),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// A table cell: short for people, exact in CSV.
fn cell(value: &Value, format: TableFormat) -> String {
    match (format, value) {
        (TableFormat::Csv, Value::String(s)) => s.clone(),
        (TableFormat::Csv, other) => other.to_string(),
        _ => short_value(value),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_trial_pbt_never_changed_has_its_params_as_policy() {
        let dir = tempfile::tempdir().expect("tempdir");
        let trial_dir = dir.path().join(TrialId(3).name());
        std::fs::create_dir_all(&trial_dir).expect("trial dir");
        let missing = read_policy(dir.path(), TrialId(3)).expect_err("no params.json either");
        assert!(missing.to_string().contains(PARAMS_FILE), "{missing}");
        std::fs::write(trial_dir.join(PARAMS_FILE), r#"{"lr": 0.1}"#).expect("params");
        let config: Config = [("lr".to_string(), json!(0.1))].into_iter().collect();
        assert_eq!(
            read_policy(dir.path(), TrialId(3)).expect("policy"),
            vec![PolicyStep {
                from_iteration: 0,
                config: config.clone()
            }]
        );
        let exploited = vec![
            PolicyStep {
                from_iteration: 0,
                config: config.clone(),
            },
            PolicyStep {
                from_iteration: 4,
                config: [("lr".to_string(), json!(0.2))].into_iter().collect(),
            },
        ];
        std::fs::write(
            trial_dir.join(POLICY_FILE),
            serde_json::to_vec(&exploited).expect("json"),
        )
        .expect("policy");
        assert_eq!(
            read_policy(dir.path(), TrialId(3)).expect("policy"),
            exploited
        );
    }

    #[test]
    fn a_resume_restores_the_exploits_missing_from_the_lineage_log() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config: Config = [("lr".to_string(), json!(0.1))].into_iter().collect();
        let line = |target: u32, donor_iteration: u64| {
            let exploit = Effect::Exploited {
                target: TrialId(target),
                donor: rtune_core::CheckpointId {
                    trial: TrialId(0),
                    iteration: donor_iteration,
                },
                target_iteration: 2,
                old_config: config.clone(),
                new_config: config.clone(),
                change: "lr=0.1".into(),
                details: json!({}),
            };
            exploit_line(1.0, &exploit).expect("an exploit's line")
        };
        let lines = vec![line(1, 3), line(2, 6)];
        // The first was written, the second not, and a torn line was left behind.
        std::fs::write(
            dir.path().join(LINEAGE_FILE),
            format!("{}\n{{\"time\": 1.0, \"tar", lines[0]),
        )
        .expect("write");
        assert_eq!(restore_missing(dir.path(), &lines).expect("restore"), 1);
        let exploits = read_lineage(dir.path()).expect("read");
        assert_eq!(exploits.len(), 2);
        assert_eq!(exploits[1].target, "trial_00002");
        assert_eq!(exploits[1].donor_iteration, 6);
        // Nothing missing: nothing changes.
        assert_eq!(restore_missing(dir.path(), &lines).expect("restore"), 0);
        assert_eq!(
            restore_missing(dir.path(), &lines[..1]).expect("restore"),
            0
        );
    }

    use super::*;

    fn config(value: Value) -> Config {
        value.as_object().cloned().expect("an object")
    }

    #[test]
    fn trials_are_named_as_users_write_them() {
        assert_eq!(parse_trial("trial_00002"), Some(TrialId(2)));
        assert_eq!(parse_trial("00002"), Some(TrialId(2)));
        assert_eq!(parse_trial("12"), Some(TrialId(12)));
        assert_eq!(
            parse_trial("trial_00003@perturbed[lr=1e-5]"),
            Some(TrialId(3))
        );
        assert_eq!(parse_trial("best"), None);
    }

    #[test]
    fn a_config_change_lists_what_changed_with_short_numbers() {
        let exploit = Exploit {
            time: 0.0,
            target: "trial_00002".into(),
            donor: "trial_00001".into(),
            donor_iteration: 3,
            target_iteration: Some(4),
            old_config: Some(config(
                json!({"lr": 0.000023946018985601967, "opt": {"bs": 1}, "epochs": 8}),
            )),
            new_config: config(
                json!({"lr": 0.00007857164238748055, "opt": {"bs": 2}, "epochs": 8}),
            ),
            change: "lr=7.857e-5,opt.bs=2".into(),
        };
        assert_eq!(
            exploit.config_change(),
            "lr 2.3946e-5 -> 7.8572e-5, opt.bs 1 -> 2"
        );
        let unknown_old = Exploit {
            old_config: None,
            ..exploit
        };
        assert_eq!(unknown_old.config_change(), "lr=7.857e-5,opt.bs=2");
    }

    #[test]
    fn lineage_lines_are_read_in_order_and_errors_name_the_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(read_lineage(dir.path()).expect("no file").is_empty());
        let line = |target: &str| {
            json!({"time": 1.0, "target": target, "donor": "trial_00000", "donor_iteration": 2,
                   "target_iteration": 2, "new_config": {"lr": 0.1}, "change": "lr=0.1",
                   "details": {"old_config": {"lr": 0.2}}})
            .to_string()
        };
        std::fs::write(
            dir.path().join(LINEAGE_FILE),
            format!("{}\n{}\n", line("trial_00001"), line("trial_00003")),
        )
        .expect("write");
        let exploits = read_lineage(dir.path()).expect("lineage");
        assert_eq!(exploits.len(), 2);
        assert_eq!(exploits[1].target, "trial_00003");
        // Older logs kept the old config only in the details.
        assert_eq!(exploits[0].config_change(), "lr 0.2 -> 0.1");

        std::fs::write(
            dir.path().join(LINEAGE_FILE),
            format!("{}\n{{\"target\": 1}}\n", line("trial_00001")),
        )
        .expect("write");
        let error = read_lineage(dir.path())
            .expect_err("a bad line")
            .to_string();
        assert!(
            error.contains("lineage.jsonl") && error.contains("line 2"),
            "{error}"
        );
    }
}
