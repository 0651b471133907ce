//! Helpers shared by the end-to-end tests: the `rtune` binary, the repository's examples, and
//! reading what a run leaves on disk.

// Each test file is its own crate and uses only some of these.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

pub mod procs;

/// The `rtune` binary under test, with the user's log filter removed.
pub fn rtune() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_rtune"));
    cmd.env_remove("RTUNE_LOG");
    cmd
}

/// The repository's root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The path of `examples/<name>`.
pub fn example(name: &str) -> String {
    repo().join("examples").join(name).display().to_string()
}

/// A command's exit status and output, for assertion messages.
pub fn text(output: &Output) -> String {
    format!(
        "status: {:?}\n--- stdout\n{}\n--- stderr\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Runs `cmd` and asserts that it succeeded.
pub fn run_ok(cmd: &mut Command) -> Output {
    let output = cmd.output().expect("the command runs");
    assert!(output.status.success(), "{}", text(&output));
    output
}

/// `text` as a TOML basic string (a JSON string is one).
pub fn toml_string(text: &str) -> String {
    serde_json::to_string(text).expect("a JSON string is a TOML basic string")
}

/// The lines of a JSON-lines file.
pub fn json_lines(path: &Path) -> Vec<Value> {
    let content = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    content
        .lines()
        .map(|line| serde_json::from_str(line).expect("a JSON line"))
        .collect()
}

/// Whether `python3` runs; the tests that need it say they were skipped otherwise.
pub fn python_available() -> bool {
    let found = Command::new("python3")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        eprintln!("SKIPPED: python3 not found");
    }
    found
}

/// Whether a SLURM cluster answers (`SLURM_CONF` set and `sinfo` works). Without one the SLURM
/// tests say they were skipped, unless `RTUNE_REQUIRE_SLURM=1` (CI), where they fail.
pub fn cluster_available(test: &str) -> bool {
    let answers = std::env::var_os("SLURM_CONF").is_some()
        && Command::new("sinfo")
            .arg("-h")
            .output()
            .is_ok_and(|o| o.status.success());
    if answers {
        return true;
    }
    if std::env::var("RTUNE_REQUIRE_SLURM").as_deref() == Ok("1") {
        panic!("{test}: no SLURM cluster answers but RTUNE_REQUIRE_SLURM=1");
    }
    eprintln!(
        "SKIPPED {test}: no SLURM cluster (set SLURM_CONF, or start one as root with \
         scripts/slurm/start-local-slurm.sh and run scripts/test)"
    );
    false
}
