"""The seeds' Ray Tune script (ray_seed_bloom.py: TorchTrainer with ScalingConfig(num_workers=2)
on CPUs, the Hugging Face Trainer on a tiny random BLOOM, a TuneReportCallback calling
train.report with a checkpoint) run with only its imports changed, under ASHA and PBT.

Each failure of issue 23 is checked here: the script is the driver (the code before and after
fit() runs once, not in the trials), the Best Trial Result is read from rtune's files and agrees
with `rtune best`, every trial has its own working directory, the two workers are one
torch.distributed job (each rank takes half of an epoch's steps) without the
"parallel_mode != ParallelMode.DISTRIBUTED" warning, and under PBT the first optimizer step
after every exploit uses the explored learning rate and weight decay, at the donor's epoch."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List

import pytest

from conftest import REPO, results

pytest.importorskip("transformers")
pytest.importorskip("cloudpickle")

SCRIPT = Path(__file__).with_name("ray_seed_bloom.py")
EPOCHS = 3
WARNING = "parallel_mode != ParallelMode.DISTRIBUTED"


def run_seed(rtune_bin: Path, squad_dir: Path, tmp_path: Path, scheduler: str,
             samples: int) -> Dict[str, Any]:
    storage = tmp_path / "runs"
    env = {**os.environ, "RTUNE_BIN": str(rtune_bin), "PYTHONPATH": str(REPO / "python"),
           "SEED_DATA": str(squad_dir), "SEED_STORAGE": str(storage),
           "SEED_EPOCHS": str(EPOCHS), "SEED_SAMPLES": str(samples), "SEED_TRACE_LR": "1"}
    env = {k: v for k, v in env.items() if not k.startswith("RTUNE_") or k == "RTUNE_BIN"}
    work = tmp_path / "start"
    work.mkdir()
    done = subprocess.run([sys.executable, str(SCRIPT), scheduler], cwd=work, env=env,
                          capture_output=True, text=True, timeout=900)
    exp = storage / f"bloom_{scheduler}"
    logs = ""
    for err in sorted(exp.glob("trial_*/stderr*.log"))[:2]:
        logs += f"\n--- {err}\n{err.read_text()[-3000:]}"
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:] + logs
    # The driver's own code ran once: before fit() and after it.
    assert done.stdout.count(f"driver: tuning with {scheduler}") == 1, done.stdout
    best_lines = [line for line in done.stdout.splitlines() if line.startswith("Best Trial Result:")]
    assert len(best_lines) == 1, done.stdout
    trials = sorted(exp.glob("trial_*"))
    assert len(trials) == samples
    for trial in trials:
        out = (trial / "stdout.log").read_text()
        assert "driver: tuning" not in out and "Best Trial Result" not in out, out
        for err in trial.glob("stderr*.log"):
            assert WARNING not in err.read_text(), err
        # Its own working directory: the relative output_dir is inside the trial's directory.
        assert (trial / "bloom_pbt_out").is_dir(), trial
    assert not (work / "bloom_pbt_out").exists()
    best = json.loads(best_lines[0].split(":", 1)[1])
    return {"exp": exp, "trials": trials, "best": best, "stdout": done.stdout}


def trace(trial: Path) -> List[Dict[str, Any]]:
    return [json.loads(line) for line in
            (trial / "bloom_pbt_out" / "lr_trace.jsonl").read_text().splitlines()]


def check_best(exp: Path, trials: List[Path], best: Dict[str, Any], rtune_bin: Path) -> None:
    # Ray's get_best_result(scope="last"): the trial whose last eval_loss is lowest.
    last = {t: results(t)[-1] for t in trials}
    want = min(trials, key=lambda t: last[t]["eval_loss"])
    assert Path(best["path"]) == want
    assert best["eval_loss"] == last[want]["eval_loss"]
    assert best["epoch"] == last[want]["epoch"]
    assert best["config"] == json.loads((want / "params.json").read_text())
    assert set(best["config"]) == {"train_loop_config"}
    # scope="all" is what `rtune best` reports: the same trial and value.
    code = ("import json, sys\nfrom rtune.ray import tune\n"
            "r = tune.Tuner.restore(sys.argv[1]).get_results()"
            ".get_best_result('eval_loss', 'min', scope='all')\n"
            "print(json.dumps({'path': r.path, 'config': r.config, "
            "'value': min(x['eval_loss'] for x in r.results)}))\n"
            "df = tune.Tuner.restore(sys.argv[1]).get_results().get_dataframe()\n"
            "print(json.dumps(sorted(c for c in df.columns if c.startswith('config/'))))")
    done = subprocess.run([sys.executable, "-c", code, str(exp)], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO / "python")}, check=True)
    ours, columns = (json.loads(line) for line in done.stdout.splitlines())
    theirs = json.loads(subprocess.run([str(rtune_bin), "best", str(exp), "--json"],
                                       capture_output=True, text=True, check=True).stdout)
    assert Path(ours["path"]).name == theirs["trial_dir"]
    assert ours["value"] == theirs["value"] and ours["config"] == theirs["config"]
    # Nested param_space keys in tables, as Ray names them.
    assert columns == ["config/train_loop_config/lr", "config/train_loop_config/per_device_bs",
                       "config/train_loop_config/wd"], columns


def test_seed_script_under_asha(rtune_bin: Path, squad_dir: Path, tmp_path: Path) -> None:
    run = run_seed(rtune_bin, squad_dir, tmp_path, "asha", samples=3)
    for trial in run["trials"]:
        lines = trace(trial)
        config = lines[0]["config"]
        # One torch.distributed job of two ranks: 16 examples, 8 per rank per epoch.
        assert {line["world_size"] for line in lines} == {2}
        assert lines[0]["max_steps"] == EPOCHS * 8 // config["per_device_bs"], lines[0]
        res = results(trial)
        assert [r["training_iteration"] for r in res] == list(range(1, len(res) + 1))
        assert all(round(r["epoch"]) == r["training_iteration"] for r in res), res
    check_best(run["exp"], run["trials"], run["best"], rtune_bin)


def test_seed_script_under_pbt_trains_with_the_explored_values(
        rtune_bin: Path, squad_dir: Path, tmp_path: Path) -> None:
    run = run_seed(rtune_bin, squad_dir, tmp_path, "pbt", samples=4)
    lineage = [json.loads(line) for line in (run["exp"] / "lineage.jsonl").read_text().splitlines()]
    assert lineage, "PBT decided no exploit"
    by_name = {t.name: t for t in run["trials"]}
    for trial in run["trials"]:
        res = results(trial)
        assert res[-1]["training_iteration"] == EPOCHS, trial
        # The Trainer's epoch is rtune's iteration, also after every exploit: none skipped.
        assert all(round(r["epoch"]) == r["training_iteration"] for r in res), (trial, res)
    explored_lr = 0
    for exploit in lineage:
        target, donor = by_name[exploit["target"]], by_name[exploit["donor"]]
        config = exploit["new_config"]["train_loop_config"]
        # The first optimizer step of the run that restarted from the donor's checkpoint (each
        # run is a new process).
        runs: Dict[int, Dict[str, Any]] = {}
        for line in trace(target):
            runs.setdefault(line["pid"], line)
        firsts = [line for line in runs.values() if line["restored"] and line["config"] == config]
        assert firsts, (exploit, list(runs.values()))
        first = firsts[0]
        step, max_steps = first["step"], first["max_steps"]
        # At the donor's epoch, in this run's steps per epoch.
        assert step == exploit["donor_iteration"] * max_steps // EPOCHS, (exploit, first)
        # The explored learning rate, at this run's position of the linear schedule, in every
        # param group; the explored weight decay.
        expected = config["lr"] * (max_steps - step) / max_steps
        for lr in first["lr"]:
            assert math.isclose(lr, expected, rel_tol=1e-9), (exploit, first)
        assert first["weight_decay"] == [config["wd"], 0.0], (exploit, first)
        donor_config = next(r["config"] for r in results(donor)
                            if r["training_iteration"] == exploit["donor_iteration"])
        donor_lr = donor_config["train_loop_config"]["lr"]
        if not math.isclose(donor_lr, config["lr"]):
            explored_lr += 1
            assert not math.isclose(first["lr"][0], donor_lr * (max_steps - step) / max_steps,
                                    rel_tol=1e-6), (exploit, first)
    assert explored_lr >= 1, "no exploit explored the learning rate"
    check_best(run["exp"], run["trials"], run["best"], rtune_bin)
