//! Finding experiments: `rtune status NAME` looks NAME up under the storage root, and `rtune
//! list` shows every experiment there.

use std::path::{Path, PathBuf};

use rtune_core::TrialStatus;

use crate::journal::JOURNAL_FILE;
use crate::state::ExperimentState;
use crate::storage::{EXPERIMENT_FILE, STATE_FILE};

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error(
        "{given} is a directory of experiments ({count} of them), not one experiment\nhint: name one of them, or see them all with `rtune list {given}`"
    )]
    StorageRoot { given: String, count: usize },
    #[error(
        "{given} is not an experiment directory (it has no {STATE_FILE})\nhint: `rtune status` takes an experiment's directory or its name under the storage directory ({root}); `rtune list` shows them"
    )]
    NotAnExperiment { given: String, root: String },
    #[error(
        "there is no experiment `{given}`: not a directory here, nor under the storage directory {root}\nhint: `rtune list` shows the experiments under {root}{}",
        similar_hint(similar)
    )]
    Unknown {
        given: String,
        root: String,
        similar: Vec<String>,
    },
}

fn similar_hint(similar: &[String]) -> String {
    if similar.is_empty() {
        String::new()
    } else {
        format!("; did you mean {}?", similar.join(" or "))
    }
}

/// Whether `dir` holds an experiment (its state, its journal or its file).
pub fn is_experiment(dir: &Path) -> bool {
    [STATE_FILE, JOURNAL_FILE, EXPERIMENT_FILE]
        .iter()
        .any(|name| dir.join(name).is_file())
}

/// The experiment directories directly under `root`, oldest first by name.
pub fn experiments_under(root: &Path) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(root)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.is_dir() && is_experiment(p))
                .collect()
        })
        .unwrap_or_default();
    dirs.sort();
    dirs
}

/// The experiment a user named: a directory (relative or absolute), or a name under the
/// storage root `root`.
pub fn find(given: &Path, root: Option<&Path>) -> Result<PathBuf, CatalogError> {
    let root_text = root.map_or_else(
        || "~/rtune_results".to_string(),
        |r| r.display().to_string(),
    );
    let shown = given.display().to_string();
    if given.is_dir() {
        if given.join(STATE_FILE).is_file() || is_experiment(given) {
            return Ok(given.to_path_buf());
        }
        let count = experiments_under(given).len();
        if count > 0 {
            return Err(CatalogError::StorageRoot {
                given: shown,
                count,
            });
        }
        return Err(CatalogError::NotAnExperiment {
            given: shown,
            root: root_text,
        });
    }
    let is_name = given.components().count() == 1;
    if is_name && let Some(root) = root {
        let candidate = root.join(given);
        if candidate.is_dir() && is_experiment(&candidate) {
            return Ok(candidate);
        }
    }
    let similar = match (is_name, root) {
        (true, Some(root)) => {
            let wanted = shown.to_lowercase();
            experiments_under(root)
                .iter()
                .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
                .filter(|name| {
                    let lower = name.to_lowercase();
                    lower.starts_with(&wanted)
                        || wanted.starts_with(&lower)
                        || strsim_close(&lower, &wanted)
                })
                .take(3)
                .map(|n| format!("`{n}`"))
                .collect()
        }
        _ => Vec::new(),
    };
    Err(CatalogError::Unknown {
        given: shown,
        root: root_text,
        similar,
    })
}

fn strsim_close(a: &str, b: &str) -> bool {
    strsim::levenshtein(a, b) <= 2
}

/// One line of `rtune list`.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Listed {
    pub name: String,
    pub path: PathBuf,
    /// `running`, `finished`, `interrupted`, `not running` (its head died) or `unreadable`.
    pub status: String,
    pub trials: usize,
    pub errors: usize,
    pub metric: String,
    pub best: Option<f64>,
    pub started_at: Option<f64>,
}

/// Every experiment under `root`, with what `rtune list` shows.
pub fn list(root: &Path, this_host: &str, now: f64) -> Vec<Listed> {
    let mut listed: Vec<Listed> = experiments_under(root)
        .into_iter()
        .map(|path| {
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            match ExperimentState::read(&path) {
                Ok(state) => {
                    let status = if state.dead_head(this_host, now).is_some() {
                        "not running".to_string()
                    } else {
                        state.status.to_string()
                    };
                    let best = crate::report::best_trial(&state)
                        .and_then(|t| t.best)
                        .map(|b| b.value);
                    Listed {
                        name,
                        path,
                        status,
                        trials: state.trials.len(),
                        errors: state.count(TrialStatus::Error),
                        metric: state.metric,
                        best,
                        started_at: Some(state.started_at),
                    }
                }
                Err(_) => Listed {
                    name,
                    path,
                    status: "no state yet".into(),
                    trials: 0,
                    errors: 0,
                    metric: String::new(),
                    best: None,
                    started_at: None,
                },
            }
        })
        .collect();
    listed.sort_by(|a, b| {
        a.started_at
            .unwrap_or(f64::INFINITY)
            .total_cmp(&b.started_at.unwrap_or(f64::INFINITY))
            .then_with(|| a.name.cmp(&b.name))
    });
    listed
}
