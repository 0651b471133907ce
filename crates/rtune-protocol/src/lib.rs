//! The trial protocol, version 1: how a trial process learns what to do and reports back.
//!
//! docs/protocol.md is the normative description; this crate holds the names and message types
//! that the runner (server side) and the Rust client share.
//!
//! * rtune starts the trial with the environment variables below.
//! * The trial connects to `RTUNE_ADDR` over TCP and sends one JSON object per line; rtune
//!   answers each with one JSON line. A client may open one connection per request or keep one
//!   open; every request carries the run's token, the trial id and the run number.
//! * The answer to a report says whether to continue. On `stop` or `pause` the trial should exit
//!   with status 0 promptly; rtune ends its process group anyway after a grace period.

use serde::{Deserialize, Serialize};

/// The protocol version spoken by this crate.
pub const VERSION: u32 = 1;

/// The longest request or response line, newline excluded: 1 MiB. rtune answers a longer request
/// with an error and closes the connection.
pub const MAX_LINE_BYTES: usize = 1024 * 1024;

/// Environment variables set for every trial process.
pub mod env {
    /// Protocol version, `1`.
    pub const PROTOCOL: &str = "RTUNE_PROTOCOL";
    /// `host:port` of rtune's protocol server.
    pub const ADDR: &str = "RTUNE_ADDR";
    /// This run's token (derived from the experiment's secret, the trial id and the run);
    /// every request must carry it as `secret`.
    pub const SECRET: &str = "RTUNE_SECRET";
    /// The trial's id, e.g. `00003`.
    pub const TRIAL_ID: &str = "RTUNE_TRIAL_ID";
    /// The trial's name, e.g. `trial_00003`.
    pub const TRIAL_NAME: &str = "RTUNE_TRIAL_NAME";
    /// Which run of the trial this process is: 0, then 1, 2, ... after pauses and retries.
    pub const RUN: &str = "RTUNE_RUN";
    /// The trial's directory (params.json, result.json, checkpoints/, logs).
    pub const TRIAL_DIR: &str = "RTUNE_TRIAL_DIR";
    /// The experiment's directory.
    pub const EXPERIMENT_DIR: &str = "RTUNE_EXPERIMENT_DIR";
    /// The configuration as a JSON object.
    pub const CONFIG: &str = "RTUNE_CONFIG";
    /// Path of params.json, the same configuration as a file.
    pub const CONFIG_FILE: &str = "RTUNE_CONFIG_FILE";
    /// Directory of the checkpoint to restore from; unset for a fresh start.
    pub const RESTORE_DIR: &str = "RTUNE_RESTORE_DIR";
    /// The iteration the restored checkpoint was taken at; unset for a fresh start.
    pub const RESTORE_ITERATION: &str = "RTUNE_RESTORE_ITERATION";
    /// A scratch directory where the trial may write checkpoints before reporting them.
    pub const SCRATCH_DIR: &str = "RTUNE_SCRATCH_DIR";
}

/// A request from a trial.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Request {
    /// Protocol version (1).
    pub v: u32,
    /// `RTUNE_SECRET`: the token of this trial's run.
    pub secret: String,
    /// `RTUNE_TRIAL_ID`.
    pub trial: String,
    /// `RTUNE_RUN`.
    pub run: u32,
    #[serde(flatten)]
    pub body: RequestBody,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum RequestBody {
    /// Metrics after an evaluation; optionally a directory holding a checkpoint taken at this
    /// point, which rtune moves into the trial's `checkpoints/` before it answers.
    Report {
        metrics: serde_json::Map<String, serde_json::Value>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        checkpoint: Option<String>,
    },
}

/// The answer to a request.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    /// For a report: what to do next.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<TrialAction>,
    /// Why (a scheduler's reason), or what was wrong with the request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// When `ok` is false: what was wrong.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Response {
    pub fn action(action: TrialAction, reason: impl Into<String>) -> Self {
        Response {
            ok: true,
            action: Some(action),
            reason: Some(reason.into()),
            error: None,
        }
    }

    pub fn error(message: impl Into<String>) -> Self {
        Response {
            ok: false,
            action: None,
            reason: None,
            error: Some(message.into()),
        }
    }
}

/// What a trial is told after a report.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TrialAction {
    /// Train on.
    Continue,
    /// Exit now (status 0): the trial is finished.
    Stop,
    /// Exit now (status 0): the trial will be restarted later from a checkpoint.
    Pause,
}

impl TrialAction {
    /// Whether the trial should exit.
    pub fn should_exit(self) -> bool {
        !matches!(self, TrialAction::Continue)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_reads_as_documented() {
        let line = r#"{"v":1,"secret":"s3","trial":"00002","run":0,"type":"report","metrics":{"loss":0.5},"checkpoint":"/tmp/c"}"#;
        let req: Request = serde_json::from_str(line).expect("documented request parses");
        assert_eq!(req.trial, "00002");
        let RequestBody::Report {
            metrics,
            checkpoint,
        } = req.body;
        assert_eq!(metrics["loss"], 0.5);
        assert_eq!(checkpoint.as_deref(), Some("/tmp/c"));
        assert_eq!(
            serde_json::to_string(&Response::action(TrialAction::Stop, "rung 1")).ok(),
            Some(r#"{"ok":true,"action":"stop","reason":"rung 1"}"#.to_string())
        );
    }
}
