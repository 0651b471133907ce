//! Everything that talks to rtune (the trial protocol) lives here, so the rest of the trainer
//! does not depend on the client's API.

use serde_json::{Map, Value};
use std::path::{Path, PathBuf};

/// What the trainer should do after a report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Keep training.
    Continue,
    /// Stop now (rtune stopped or paused the trial; a paused trial resumes from its last
    /// checkpoint in a new process).
    Exit,
}

/// Errors talking to rtune.
#[derive(Debug, thiserror::Error)]
#[error("rtune trial protocol: {0}")]
pub struct TrialError(pub String);

/// A trial session: the config rtune chose, where to restore from, and reporting.
pub trait TrialSession {
    /// The trial's config.
    fn config(&self) -> &Map<String, Value>;
    /// Checkpoint to restore from (a restarted, resumed or exploited trial).
    fn restore_dir(&self) -> Option<PathBuf>;
    /// A fresh empty directory to write the next checkpoint into.
    fn new_checkpoint_dir(&mut self) -> Result<PathBuf, TrialError>;
    /// Reports metrics with the checkpoint just written; says whether to go on.
    fn report_with_checkpoint(
        &mut self,
        metrics: &Map<String, Value>,
        dir: &Path,
    ) -> Result<Next, TrialError>;
}

/// Connects to rtune when started by it (RTUNE_ADDR set); `Ok(None)` otherwise.
pub fn connect() -> Result<Option<Box<dyn TrialSession>>, TrialError> {
    client::connect()
}

mod client {
    use super::{Next, TrialError, TrialSession};
    use serde_json::{Map, Value};
    use std::path::{Path, PathBuf};

    /// Adapter over `rtune_client::Session`.
    struct RtuneSession(rtune_client::Session);

    impl TrialSession for RtuneSession {
        fn config(&self) -> &Map<String, Value> {
            self.0.config()
        }
        fn restore_dir(&self) -> Option<PathBuf> {
            self.0.restore_dir().map(Path::to_path_buf)
        }
        fn new_checkpoint_dir(&mut self) -> Result<PathBuf, TrialError> {
            self.0
                .new_checkpoint_dir()
                .map_err(|e| TrialError(e.to_string()))
        }
        fn report_with_checkpoint(
            &mut self,
            metrics: &Map<String, Value>,
            dir: &Path,
        ) -> Result<Next, TrialError> {
            let action = self
                .0
                .report_with_checkpoint(metrics, dir)
                .map_err(|e| TrialError(e.to_string()))?;
            // Stop and Pause both mean "exit now with status 0"; a paused trial is restarted
            // later from its last checkpoint.
            Ok(if action.should_exit() {
                Next::Exit
            } else {
                Next::Continue
            })
        }
    }

    pub(super) fn connect() -> Result<Option<Box<dyn TrialSession>>, TrialError> {
        match rtune_client::Session::from_env() {
            Ok(Some(session)) => Ok(Some(Box::new(RtuneSession(session)))),
            Ok(None) => Ok(None),
            Err(e) => Err(TrialError(e.to_string())),
        }
    }
}
