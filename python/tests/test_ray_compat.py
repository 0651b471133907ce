"""rtune.ray: a Ray Tune function trainable runs under rtune with only its imports changed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from conftest import REPO, results, run_experiment, toml_list

EXPERIMENT = """
name = "ray-style"
metric = "loss"
mode = "min"
num_samples = 4
seed = 3

[trial]
command = {command}
env = {{ PYTHONPATH = "{pythonpath}" }}

[space]
lr = {{ loguniform = [0.01, 0.4] }}
x0 = {{ choice = [1.0, 2.0] }}

[scheduler]
type = "pbt"
perturbation_interval = 2
# Synchronous, so trials pause at the barrier and restore from their checkpoints whatever the
# timing of the trial processes.
synch = true

[executor]
max_concurrent_trials = 2

[stop]
training_iteration = 6
"""


def test_ray_function_trainable_under_pbt(rtune_bin: Path, tmp_path: Path) -> None:
    experiment = tmp_path / "ray.toml"
    experiment.write_text(EXPERIMENT.format(
        command=toml_list([sys.executable, str(Path(__file__).with_name("ray_style_trainable.py"))]),
        pythonpath=REPO / "python"))
    exp = run_experiment(rtune_bin, experiment, tmp_path / "runs")
    trials = sorted(exp.glob("trial_*"))
    assert len(trials) == 4
    restored = 0
    for trial in trials:
        res = results(trial)
        assert [r["training_iteration"] for r in res] == list(range(1, 7))
        # get_context().get_trial_id() is rtune's trial id; the step continues after a restore
        # (get_checkpoint() gave the checkpoint reported through Checkpoint.from_directory).
        assert all(r["trial"] == trial.name.removeprefix("trial_") for r in res)
        assert [r["step"] for r in res] == list(range(1, 7))
        restored += sum(1 for r in res if r["resumed_at"] > 0)
    assert restored > 0, "no trial was restored from a checkpoint"


def test_tuner_fit_outside_rtune_says_how_to_run_it() -> None:
    done = subprocess.run([sys.executable, str(Path(__file__).with_name("ray_style_trainable.py"))],
                          capture_output=True, text=True, env={"PYTHONPATH": str(REPO / "python")})
    assert done.returncode != 0
    assert "rtune run" in done.stderr
