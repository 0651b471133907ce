"""rtune.lightning.RtuneLightningCallback under rtune's PBT with the real Lightning."""

from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path

import pytest

from conftest import REPO, results, run_experiment, toml_list

pytest.importorskip("lightning")

EXPERIMENT = """
name = "lightning"
metric = "val_loss"
mode = "min"
num_samples = 4
seed = 5

[trial]
command = {command}
env = {{ PYTHONPATH = "{pythonpath}" }}

[space]
lr = {{ loguniform = [0.001, 0.1] }}
bs = {{ choice = [8, 16] }}
wd = {{ choice = [0.0, 0.01] }}

# Synchronous PBT: the population meets at iteration 2, so the lower quantile is exploited
# whatever the timing of the trial processes (asynchronously, whether two trials overlap at all
# depends on how long Lightning takes to start).
[scheduler]
type = "pbt"
perturbation_interval = 2
synch = true

[executor]
max_concurrent_trials = 2

[stop]
training_iteration = 4
"""


def test_lightning_callback_under_pbt(rtune_bin: Path, tmp_path: Path) -> None:
    experiment = tmp_path / "lightning.toml"
    experiment.write_text(EXPERIMENT.format(
        command=toml_list([sys.executable, str(Path(__file__).with_name("lightning_trainable.py"))]),
        pythonpath=REPO / "python"))
    exp = run_experiment(rtune_bin, experiment, tmp_path / "runs")
    exploits = 0
    for trial in sorted(exp.glob("trial_*")):
        res = results(trial)
        # Every trial trains to the end, and Lightning's epoch is rtune's iteration (after an
        # exploit both continue from the donor's checkpoint, which may be behind the target).
        assert res[-1]["training_iteration"] == 4, trial
        assert all(r["epoch"] == r["training_iteration"] for r in res), trial
        lines = [json.loads(l) for l in (trial / "lr_trace.jsonl").read_text().splitlines()]
        for run in sorted({l["run"] for l in lines}):
            first = min((l for l in lines if l["run"] == run), key=lambda l: l["step"])
            m = re.search(r"from_trial_(\d+)_(\d+)$", first["restore_dir"] or "")
            if not m:
                continue
            exploits += 1
            cfg, step = first["config"], first["step"]
            donor = trial.parent / f"trial_{m.group(1)}"
            donor_result = next(r for r in results(donor)
                                if r["training_iteration"] == int(m.group(2)))
            # Lightning continues at the donor's step, with this run's lr on its schedule.
            assert step == donor_result["global_step"], (trial.name, first, donor_result)
            assert math.isclose(first["lr"][0], cfg["lr"] / (1.0 + 0.01 * step), rel_tol=1e-9), first
            assert first["weight_decay"] == [cfg["wd"]], first
    assert exploits >= 1
