//! Input that must be read as the user meant it or refused with the place to fix: `~` in every
//! path, RTUNE_STORAGE, names, and override keys.

mod common;

use common::{example, rtune, run_ok, text};

fn quick(cmd: &mut std::process::Command) -> &mut std::process::Command {
    cmd.args([
        "--set",
        "num_samples=1",
        "--set",
        "space.sleep_ms=0",
        "--set",
        "space.epochs=1",
    ])
}

#[test]
fn a_tilde_in_storage_is_the_home_directory() {
    let home = tempfile::tempdir().expect("tempdir");
    let cwd = tempfile::tempdir().expect("tempdir");
    // `--storage=~/x` reaches rtune unexpanded (the shell expands only a word that starts with ~).
    run_ok(quick(
        rtune()
            .args(["run", &example("fifo.toml"), "--storage=~/from-option"])
            .env("HOME", home.path())
            .current_dir(cwd.path()),
    ));
    assert!(home.path().join("from-option/fifo-example").is_dir());
    // The same in the file.
    run_ok(quick(
        rtune()
            .args(["run", &example("fifo.toml")])
            .args(["--set", "output.storage=\"~/from-file\""])
            .env("HOME", home.path())
            .current_dir(cwd.path()),
    ));
    assert!(home.path().join("from-file/fifo-example").is_dir());
    assert!(
        !cwd.path().join("~").exists(),
        "no directory named ~ in the working directory"
    );
}

#[test]
fn rtune_storage_names_the_storage_directory() {
    let home = tempfile::tempdir().expect("tempdir");
    let scratch = tempfile::tempdir().expect("tempdir");
    run_ok(quick(
        rtune()
            .args(["run", &example("fifo.toml")])
            .env("HOME", home.path())
            .env("RTUNE_STORAGE", scratch.path()),
    ));
    assert!(scratch.path().join("fifo-example").is_dir());
    assert!(!home.path().join("rtune_results").exists());
}

#[test]
fn names_and_override_keys_are_checked() {
    let storage = tempfile::tempdir().expect("tempdir");
    for (set, expected) in [
        (
            "name=\"a\\nb\"",
            "name: \"a\\nb\" contains the control character",
        ),
        ("name=\"  \"", "name: \"  \" is empty or only spaces"),
        (
            "scheduler={ type = \"median\", time_attr = \"\" }",
            "scheduler.time_attr",
        ),
        (
            "space.learning_rate=0.1",
            "no parameter `learning_rate` in [space]",
        ),
    ] {
        let output = rtune()
            .args(["run", &example("fifo.toml"), "--storage"])
            .arg(storage.path())
            .args(["--set", set])
            .output()
            .expect("rtune runs");
        assert!(!output.status.success(), "{set}: {}", text(&output));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(expected), "{set}: {stderr}");
    }
    assert_eq!(
        std::fs::read_dir(storage.path()).expect("storage").count(),
        0,
        "nothing was started"
    );
}

#[test]
fn plan_and_submit_make_the_checks_run_makes() {
    let bad = "space.lr.loguniform=[1e-4,1e-5]";
    for args in [
        vec!["plan", "--nodes", "1", "--cpus-per-node", "4"],
        vec![
            "submit",
            "--nodes",
            "1",
            "--cpus-per-node",
            "4",
            "--dry-run",
        ],
        vec!["submit", "--executor", "slurm-jobs", "--time", "00:10:00"],
    ] {
        let output = rtune()
            .args(&args[..1])
            .arg(example("asha.toml"))
            .args(&args[1..])
            .args(["--set", bad])
            .output()
            .expect("rtune runs");
        assert!(!output.status.success(), "{args:?}: {}", text(&output));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains("space.lr") && stderr.contains("loguniform"),
            "{args:?}: {stderr}"
        );
    }
}

#[test]
fn a_dry_run_needs_no_time_limit_and_shows_the_sbatch_options() {
    let storage = tempfile::tempdir().expect("tempdir");
    let output = run_ok(
        rtune()
            .args(["submit", &example("asha.toml"), "--executor", "slurm-jobs"])
            .args(["--qos", "short", "--mem", "8G", "--constraint", "a100"])
            .args([
                "--exclusive",
                "--mail-type",
                "END",
                "--mail-user",
                "me@example.org",
            ])
            .args(["--sbatch-arg=--reservation=big", "--dry-run", "--storage"])
            .arg(storage.path()),
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    for line in [
        "job-per-trial layout: the head job (1 node(s) x 1 CPU(s)) runs rtune only",
        "#SBATCH --nodes=1\n",
        "#SBATCH --cpus-per-task=1\n",
        "#SBATCH --qos=short\n#SBATCH --mem=8G\n#SBATCH --constraint=a100\n",
        "#SBATCH --mail-type=END\n#SBATCH --mail-user=me@example.org\n",
        "#SBATCH --exclusive\n#SBATCH --reservation=big\n",
        "--executor slurm-jobs",
        "(no --time: submitting needs one)",
    ] {
        assert!(stdout.contains(line), "missing {line:?} in\n{stdout}");
    }
    assert!(!stdout.contains("--time="), "{stdout}");
    assert_eq!(
        std::fs::read_dir(storage.path()).expect("storage").count(),
        0,
        "a dry run creates nothing"
    );
    // Without --dry-run, a time limit is needed.
    let output = rtune()
        .args(["submit", &example("asha.toml"), "--executor", "slurm-jobs"])
        .output()
        .expect("rtune runs");
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("--time is needed"),
        "{}",
        text(&output)
    );
    // A pass-through option is one option.
    let output = rtune()
        .args(["submit", &example("asha.toml"), "--executor", "slurm-jobs"])
        .args(["--dry-run", "--sbatch-arg", "reservation=big"])
        .output()
        .expect("rtune runs");
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("is not an sbatch option"),
        "{}",
        text(&output)
    );
}
