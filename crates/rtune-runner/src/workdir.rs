//! Where a trial's processes run (docs/experiment-file.md, "Working directory and relative
//! paths").
//!
//! By default every trial runs in its own trial directory, as Ray Tune's trials do, so a
//! relative output path (a Hugging Face `output_dir`) is the trial's own and trials never write
//! into each other's files. Relative paths in the experiment file are written relative to the
//! start directory (where `rtune run` or `rtune resume` was started, as on a shell's command
//! line there): the program of `trial.command` and each argument that names a file or directory
//! existing there are passed as absolute paths, so the command means what it meant where rtune
//! was started. The start directory reaches the trial as `RTUNE_ORIG_WORKING_DIR` and as Ray's
//! `TUNE_ORIG_WORKING_DIR`. `trial.cwd` (every trial in that directory) and
//! `trial.chdir_to_trial_dir = false` (every trial in the start directory) keep the shared
//! directory of earlier rtune versions, and then the command is passed as written.

use std::path::{Path, PathBuf};

/// The environment variable naming the directory relative paths are read from.
pub const ORIG_WORKING_DIR_ENV: &str = "RTUNE_ORIG_WORKING_DIR";
/// Ray Tune's name for [`ORIG_WORKING_DIR_ENV`], which Ray scripts read.
pub const RAY_ORIG_WORKING_DIR_ENV: &str = "TUNE_ORIG_WORKING_DIR";

/// Where the processes of a trial run.
#[derive(Clone, Debug, PartialEq)]
pub enum TrialWorkdir {
    /// Each trial in its own directory; relative paths of the command are read from `start`.
    PerTrial {
        /// The start directory (absolute).
        start: PathBuf,
    },
    /// Every trial in this one directory (`trial.cwd`, else the start directory).
    Shared(PathBuf),
}

impl TrialWorkdir {
    /// From `trial.cwd` and `trial.chdir_to_trial_dir` (None when not set), with `start` the
    /// directory rtune was started in. Setting both `cwd` and `chdir_to_trial_dir = true` is a
    /// contradiction, reported as the message.
    pub fn new(
        cwd: Option<&Path>,
        chdir_to_trial_dir: Option<bool>,
        start: &Path,
    ) -> Result<Self, String> {
        match (cwd, chdir_to_trial_dir) {
            (Some(_), Some(true)) => Err(
                "trial.cwd and trial.chdir_to_trial_dir = true contradict each other: every \
                 trial runs in trial.cwd, or each in its own directory\nhint: remove one of them"
                    .into(),
            ),
            (Some(dir), _) => Ok(TrialWorkdir::Shared(absolute(dir, start))),
            (None, Some(false)) => Ok(TrialWorkdir::Shared(start.to_path_buf())),
            (None, _) => Ok(TrialWorkdir::PerTrial {
                start: start.to_path_buf(),
            }),
        }
    }

    /// The directory relative paths of the experiment file are read from: the start directory,
    /// or `trial.cwd`.
    pub fn original(&self) -> &Path {
        match self {
            TrialWorkdir::PerTrial { start } => start,
            TrialWorkdir::Shared(dir) => dir,
        }
    }

    /// The working directory of a trial whose directory is `trial_dir`.
    pub fn for_trial(&self, trial_dir: &Path) -> PathBuf {
        match self {
            TrialWorkdir::PerTrial { start } => absolute(trial_dir, start),
            TrialWorkdir::Shared(dir) => dir.clone(),
        }
    }

    /// The variables that tell a trial where relative paths were meant from.
    pub fn env(&self) -> [(String, String); 2] {
        let dir = self.original().to_string_lossy().into_owned();
        [
            (ORIG_WORKING_DIR_ENV.to_string(), dir.clone()),
            (RAY_ORIG_WORKING_DIR_ENV.to_string(), dir),
        ]
    }

    /// The command as the trials run it: in a trial's own directory, the program (a path with a
    /// `/`) and every argument that names an existing file or directory relative to the start
    /// directory (also the value of `--option=value`) become absolute; otherwise unchanged.
    pub fn command(&self, command: &[String]) -> Vec<String> {
        let TrialWorkdir::PerTrial { start } = self else {
            return command.to_vec();
        };
        command
            .iter()
            .enumerate()
            .map(|(i, arg)| {
                if i == 0 {
                    return match arg.contains('/') {
                        true => absolute(Path::new(arg), start)
                            .to_string_lossy()
                            .into_owned(),
                        false => arg.clone(),
                    };
                }
                if let Some(found) = existing(arg, start) {
                    return found;
                }
                match arg.split_once('=') {
                    Some((option, value)) if option.starts_with('-') => existing(value, start)
                        .map_or_else(|| arg.clone(), |found| format!("{option}={found}")),
                    _ => arg.clone(),
                }
            })
            .collect()
    }
}

/// `path` as an absolute path, relative ones taken from `base`.
pub fn absolute(path: &Path, base: &Path) -> PathBuf {
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        base.join(path)
    }
}

/// `text` as an absolute path when it is a relative path naming something that exists in
/// `start`.
fn existing(text: &str, start: &Path) -> Option<String> {
    let path = Path::new(text);
    if text.is_empty() || path.is_absolute() || text.starts_with('-') {
        return None;
    }
    let joined = start.join(path);
    joined
        .exists()
        .then(|| joined.to_string_lossy().into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn each_trial_runs_in_its_own_directory_by_default() {
        let start = Path::new("/work/project");
        let w = TrialWorkdir::new(None, None, start).expect("valid");
        assert_eq!(
            w.for_trial(Path::new("/r/exp/trial_00001")),
            Path::new("/r/exp/trial_00001")
        );
        // A relative storage directory is read from the start directory.
        assert_eq!(
            w.for_trial(Path::new("runs/exp/trial_00001")),
            Path::new("/work/project/runs/exp/trial_00001")
        );
        assert_eq!(
            w.env(),
            [
                ("RTUNE_ORIG_WORKING_DIR".into(), "/work/project".into()),
                ("TUNE_ORIG_WORKING_DIR".into(), "/work/project".into())
            ]
        );
    }

    #[test]
    fn cwd_or_chdir_false_keep_one_shared_directory() {
        let start = Path::new("/work/project");
        let shared = TrialWorkdir::new(Some(Path::new("sub")), None, start).expect("valid");
        assert_eq!(
            shared.for_trial(Path::new("/r/t")),
            Path::new("/work/project/sub")
        );
        assert_eq!(shared.original(), Path::new("/work/project/sub"));
        let same = TrialWorkdir::new(None, Some(false), start).expect("valid");
        assert_eq!(same.for_trial(Path::new("/r/t")), start);
        let command = strings(&["python", "train.py", "--data=data"]);
        assert_eq!(same.command(&command), command);
        let err = TrialWorkdir::new(Some(Path::new("/x")), Some(true), start).unwrap_err();
        assert!(
            err.contains("trial.cwd and trial.chdir_to_trial_dir"),
            "{err}"
        );
    }

    #[test]
    fn existing_relative_paths_of_the_command_become_absolute() {
        let dir = tempfile::tempdir().expect("tempdir");
        let start = dir.path();
        std::fs::write(start.join("train.py"), "").expect("write");
        std::fs::create_dir_all(start.join("data/squad")).expect("mkdir");
        let w = TrialWorkdir::new(None, None, start).expect("valid");
        let abs = |p: &str| start.join(p).to_string_lossy().into_owned();
        let command = strings(&[
            "python",
            "train.py",
            "--data",
            "data/squad",
            "--out=out",
            "--init=data/squad",
            "5",
            "/abs/x",
            "-",
        ]);
        assert_eq!(
            w.command(&command),
            vec![
                "python".to_string(),
                abs("train.py"),
                "--data".into(),
                abs("data/squad"),
                // Not there yet: an output, which then lands in the trial's directory.
                "--out=out".into(),
                format!("--init={}", abs("data/squad")),
                "5".into(),
                "/abs/x".into(),
                "-".into(),
            ]
        );
        // The program, when given as a path, always (its existence is checked separately).
        assert_eq!(
            w.command(&strings(&["./bin/train", "x"]))[0],
            start.join("./bin/train").to_string_lossy()
        );
    }
}
