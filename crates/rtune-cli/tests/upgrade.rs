//! Experiments written by earlier releases resume under this one: the fixtures under
//! tests/fixtures/resume/<release>/ (scripts/make-resume-fixtures) are ASHA, PBT and GP
//! experiments that were interrupted, resumed and then killed, so each journal holds a snapshot
//! and a tail of input lines after it. Each must resume to the end: every trial final, every
//! trial's results counted once in increasing iterations, and a journal compacted to one
//! snapshot again.

mod common;

use std::path::{Path, PathBuf};

use common::{json_lines, rtune, text};
use serde_json::Value;

fn fixtures() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/resume");
    let mut found = Vec::new();
    for release in std::fs::read_dir(&root).expect("the fixtures directory") {
        let release = release.expect("an entry").path();
        for experiment in std::fs::read_dir(&release).expect("a release's fixtures") {
            found.push(experiment.expect("an entry").path());
        }
    }
    found.sort();
    found
}

/// A copy of `from` under `to` (the fixture stays as it is).
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read").flatten() {
        let target = to.join(entry.file_name());
        if entry.file_type().expect("type").is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy");
        }
    }
}

#[test]
fn experiments_of_earlier_releases_resume_to_the_end() {
    let fixtures = fixtures();
    assert!(fixtures.len() >= 3, "fixtures: {fixtures:?}");
    for fixture in fixtures {
        let name = fixture.display().to_string();
        let journal = std::fs::read_to_string(fixture.join("journal.jsonl")).expect("journal");
        assert!(
            journal.lines().any(|l| l.starts_with("{\"snapshot\"")),
            "{name}: the fixture has a snapshot"
        );
        let tail = journal
            .lines()
            .skip_while(|l| !l.starts_with("{\"snapshot\""))
            .skip(1)
            .count();
        assert!(tail > 0, "{name}: the fixture has lines after its snapshot");

        let work = tempfile::tempdir().expect("tempdir");
        let dir = work.path().join("experiment");
        copy_tree(&fixture, &dir);
        let output = rtune()
            .arg("resume")
            .arg(&dir)
            .output()
            .expect("rtune runs");
        assert!(output.status.success(), "{name}: {}", text(&output));

        let state: Value = serde_json::from_str(
            &std::fs::read_to_string(dir.join("experiment_state.json")).expect("state"),
        )
        .expect("state json");
        assert_eq!(state["status"], "finished", "{name}");
        for trial in state["trials"].as_array().expect("trials") {
            let status = trial["status"].as_str().expect("status");
            assert!(
                status == "TERMINATED" || status == "ERROR",
                "{name}: {} is {status}",
                trial["name"]
            );
            let id = trial["id"].as_u64().expect("id");
            let results = dir.join(format!("trial_{id:05}")).join("result.json");
            let iterations: Vec<u64> = if results.exists() {
                json_lines(&results)
                    .iter()
                    .map(|l| l["training_iteration"].as_u64().expect("iteration"))
                    .collect()
            } else {
                Vec::new()
            };
            assert!(
                iterations.windows(2).all(|w| w[0] < w[1]),
                "{name}: trial {id}'s results {iterations:?}"
            );
            assert_eq!(
                iterations.last().copied().unwrap_or(0),
                trial["iteration"].as_u64().expect("iteration"),
                "{name}: trial {id}'s last result is its iteration"
            );
        }
        let journal = std::fs::read_to_string(dir.join("journal.jsonl")).expect("journal");
        assert_eq!(
            journal.lines().count(),
            2,
            "{name}: a head that ends compacts its journal to the header and one snapshot"
        );
    }
}
