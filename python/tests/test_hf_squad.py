"""examples/hf-squad under rtune with the real torch, transformers and accelerate: PBT whose
explored learning rate is the one the optimizer uses, and ASHA with two workers over gloo."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any, Dict, List

import pytest

from conftest import REPO, hf_command, results, run_experiment

pytest.importorskip("transformers")

EPOCHS = 4


def trace(trial_dir: Path) -> List[Dict[str, Any]]:
    path = trial_dir / "hf-output" / "lr_trace.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_pbt_exploits_train_with_the_explored_hyperparameters(rtune_bin: Path, squad_dir: Path,
                                                              tmp_path: Path) -> None:
    exp = run_experiment(
        rtune_bin, REPO / "examples/hf-squad/squad-pbt.toml", tmp_path / "runs",
        hf_command(squad_dir, "--epochs", str(EPOCHS), "--trace-lr"),
        f"stop.training_iteration={EPOCHS}",
        # Synchronous PBT, so the population meets at epoch 2 and an exploit is decided whatever
        # the timing of the trial processes (the example itself is asynchronous).
        "scheduler.synch=true", "scheduler.perturbation_interval=2")
    lineage = [json.loads(line) for line in (exp / "lineage.jsonl").read_text().splitlines()]
    assert lineage, "PBT decided no exploit"
    trials = sorted(exp.glob("trial_*"))
    assert len(trials) == 4

    exploits = 0
    changed_lr = 0
    for trial in trials:
        # One worker: accelerate forms a one-process group the Trainer recognises (issue 23).
        assert "parallel_mode != ParallelMode.DISTRIBUTED" not in (trial / "stderr.log").read_text()
        res = results(trial)
        # Every trial trains all epochs, and the Trainer's epoch is rtune's iteration: after an
        # exploit the target continues at the donor's epoch (its checkpoint may be behind the
        # target's own iteration), with full epochs.
        assert res[-1]["training_iteration"] == EPOCHS, trial
        assert all(round(r["epoch"], 6) == r["training_iteration"] for r in res), trial
        lines = trace(trial)
        for run in sorted({line["run"] for line in lines}):
            first = min((line for line in lines if line["run"] == run), key=lambda l: l["step"])
            restore = first["restore_dir"] or ""
            m = re.search(r"from_trial_(\d+)_(\d+)$", restore)
            if not m:
                continue
            exploits += 1
            donor, iteration = trial.parent / f"trial_{m.group(1)}", int(m.group(2))
            cfg, step, max_steps = first["config"], first["step"], first["max_steps"]
            # The first optimizer step after the exploit uses the explored lr, at this run's
            # position of the linear schedule, in every param group; weight decay likewise.
            expected = cfg["lr"] * (max_steps - step) / max_steps
            for lr in first["lr"]:
                assert math.isclose(lr, expected, rel_tol=1e-9), (trial.name, run, first)
            assert first["weight_decay"] == [cfg["wd"], 0.0], (trial.name, run, first)
            # The step continues from the donor's epoch, in this run's steps per epoch ...
            assert step == iteration * max_steps // EPOCHS, (trial.name, run, first)
            donor_result = next(r for r in results(donor) if r["training_iteration"] == iteration)
            # ... which is the donor's own step when the batch size did not change.
            if donor_result["config"]["per_device_bs"] == cfg["per_device_bs"]:
                assert step == donor_result["global_step"], (trial.name, run, first, donor_result)
            if not math.isclose(donor_result["config"]["lr"], cfg["lr"]):
                changed_lr += 1
                donor_lr = donor_result["config"]["lr"] * (max_steps - step) / max_steps
                assert not math.isclose(first["lr"][0], donor_lr, rel_tol=1e-6)
    assert exploits >= 1, "no run restarted from another trial's checkpoint"
    assert changed_lr >= 1, "no exploit explored the learning rate"


def test_asha_with_two_workers_over_gloo(rtune_bin: Path, squad_dir: Path, tmp_path: Path) -> None:
    exp = run_experiment(
        rtune_bin, REPO / "examples/hf-squad/squad-asha.toml", tmp_path / "runs",
        hf_command(squad_dir, "--epochs", "3"), "num_samples=3", "scheduler.max_t=3")
    trials = sorted(exp.glob("trial_*"))
    assert len(trials) == 3
    for trial in trials:
        res = results(trial)
        assert res and all(math.isfinite(r["eval_loss"]) for r in res), trial
        bs = res[0]["config"]["per_device_bs"]
        # 16 examples over 2 ranks: 8 per rank per epoch, so 8 / bs optimizer steps per epoch
        # (one process alone would take 16 / bs).
        assert [r["global_step"] for r in res] == [(i + 1) * 8 // bs for i in range(len(res))]
        assert (trial / "stdout.rank1.log").exists()
    # ASHA with grace period 1 and reduction factor 2 stops someone at a rung.
    assert min(len(results(t)) for t in trials) < 3
