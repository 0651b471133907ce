//! The one check of a report that needs the trial's files: whether the checkpoint directory it
//! hands over is the trial's to hand over. Every other rule (a report after the trial was told
//! to stop or pause, past the scheduler's `max_t`, without the metric, a metric that is not a
//! number) is the core's ([`rtune_core::Tuner::check_report`]). A refused report gets
//! `ok: false` with the message, and nothing of it reaches the tuner or the trial's files.

use std::path::{Path, PathBuf};

use crate::storage::TrialFiles;

/// Whether the directory `src`, reported as a checkpoint, may be moved into the trial's
/// `checkpoints/`: it must exist, be a directory, and lie inside the trial's scratch directory
/// or inside one of `roots` (`trial.checkpoint_roots`), and never be, contain or lie in the
/// experiment's files outside the trial's scratch directory (another trial's directory, the
/// trial's own `checkpoints/`, ...). Returns the path to move.
pub fn confine_checkpoint(
    src: &Path,
    files: &TrialFiles,
    experiment_dir: &Path,
    roots: &[PathBuf],
) -> Result<PathBuf, String> {
    let refuse = |why: String| {
        Err(format!(
            "checkpoint {}: {why}; nothing was moved and the report is not recorded. Report a \
             fresh directory inside RTUNE_SCRATCH_DIR (the clients' new_checkpoint_dir() makes \
             one){}",
            src.display(),
            if roots.is_empty() {
                ""
            } else {
                " or inside trial.checkpoint_roots"
            }
        ))
    };
    let meta = match std::fs::metadata(src) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return refuse("does not exist (was it written completely before the report?)".into());
        }
        Err(e) => return refuse(format!("cannot be read: {e}")),
    };
    if !meta.is_dir() {
        return refuse("is not a directory: report the directory that holds the checkpoint".into());
    }
    let real = match src.canonicalize() {
        Ok(real) => real,
        Err(e) => return refuse(format!("cannot be resolved: {e}")),
    };
    let canonical = |p: &Path| p.canonicalize().unwrap_or_else(|_| p.to_path_buf());
    let strictly_inside = |path: &Path, dir: &Path| path != dir && path.starts_with(dir);
    let scratch = canonical(&files.scratch_dir());
    let experiment = canonical(experiment_dir);
    let trial_dir = canonical(files.dir());
    if strictly_inside(&real, &scratch) {
        return Ok(src.to_path_buf());
    }
    if experiment.starts_with(&real) {
        return refuse("is or contains the experiment directory".into());
    }
    if real.starts_with(&experiment) {
        let why = if real == scratch {
            "is RTUNE_SCRATCH_DIR itself, not a directory inside it".to_string()
        } else if real.starts_with(canonical(&files.checkpoints_dir())) {
            "is inside the trial's own checkpoints/, which rtune manages".to_string()
        } else if trial_dir.starts_with(&real) || real.starts_with(&trial_dir) {
            "is the trial's own directory or one of rtune's files in it".to_string()
        } else {
            let other = real
                .strip_prefix(&experiment)
                .ok()
                .and_then(|rest| rest.components().next())
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .unwrap_or_default();
            if other.starts_with("trial_") {
                format!("is inside another trial's directory ({other})")
            } else {
                format!("is inside the experiment directory ({other}), outside the trial's scratch")
            }
        };
        return refuse(why);
    }
    if roots
        .iter()
        .map(|root| canonical(root))
        .any(|root| strictly_inside(&real, &root))
    {
        return Ok(src.to_path_buf());
    }
    refuse(format!(
        "is outside the trial's scratch directory {}{}",
        scratch.display(),
        if roots.is_empty() {
            String::new()
        } else {
            format!(
                " and outside every trial.checkpoint_roots ({})",
                roots
                    .iter()
                    .map(|r| r.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        }
    ))
}
