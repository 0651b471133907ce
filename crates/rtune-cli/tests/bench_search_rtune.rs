//! The rtune side of `scripts/bench_search.py`: the experiment file it writes for each of rtune's
//! methods is one that `rtune run` takes and runs to the budget. (The range checks of issue 21
//! once refused the file's `report_interval_s = 1e9`, so every rtune run of the benchmark failed.)
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;

#[test]
fn every_rtune_method_of_the_search_benchmark_runs_to_its_budget() {
    let work = tempfile::tempdir().unwrap();
    let scripts = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts");
    // Two full trainings (104 epochs) on lcbench task 3945, seed 0, one worker, per method.
    let code = format!(
        "import json, bench_search as b\n\
         rtune, work = {rtune}, {work}\n\
         names = [n for n, (kind, _) in b.METHODS.items() if kind == 'rtune']\n\
         print(json.dumps({{n: len(b.run_rtune(b.METHODS[n][1], '3945', 0, 1, 104, rtune, work)) \
         for n in names}}))",
        rtune = serde_json::to_string(env!("CARGO_BIN_EXE_rtune")).unwrap(),
        work = serde_json::to_string(&work.path().display().to_string()).unwrap(),
    );
    let out = Command::new("python3")
        .arg("-c")
        .arg(&code)
        .current_dir(&scripts)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let results: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&out.stdout).unwrap();
    assert!(results.len() >= 8, "{results:?}");
    for (method, count) in &results {
        assert_eq!(count.as_u64(), Some(104), "{method}: {results:?}");
    }
}
