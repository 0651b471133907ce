"""rtune.ray: Ray Tune scripts run under rtune with only their imports changed; the script is the
driver, every name issue 23 lists exists, and what is missing says what to use instead."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict

import pytest

from conftest import REPO, results

pytest.importorskip("cloudpickle")
pytest.importorskip("tomli_w")


def run_driver(script: str, rtune_bin: Path, tmp_path: Path) -> Dict[str, Any]:
    start = tmp_path / "start"
    start.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RTUNE_")}
    env.update(RTUNE_BIN=str(rtune_bin), PYTHONPATH=str(REPO / "python"))
    done = subprocess.run([sys.executable, str(Path(__file__).with_name(script)),
                           str(tmp_path / "runs")], cwd=start, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert len(lines) == 1, done.stdout  # the code after fit() ran once
    out: Dict[str, Any] = json.loads(lines[0][len("RESULT "):])
    out["start"] = start
    return out


def test_function_trainable_under_pbt(rtune_bin: Path, tmp_path: Path) -> None:
    out = run_driver("ray_style_trainable.py", rtune_bin, tmp_path)
    exp = Path(out["path"])
    assert exp == tmp_path / "runs" / "ray-style" and out["errors"] == 0
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
        # Each trial runs in its own directory; the start directory is TUNE_ORIG_WORKING_DIR.
        assert {r["cwd"] for r in res} == {str(trial)}
        assert {r["orig"] for r in res} == {str(out["start"])}
        assert (trial / "checkpoints").is_dir()
    assert restored > 0, "no trial was restored from a checkpoint"
    assert set(out["best"]) == {"lr", "x0"}


def test_legacy_tune_run_report_and_session(rtune_bin: Path, tmp_path: Path) -> None:
    out = run_driver("ray_legacy_api.py", rtune_bin, tmp_path)
    exp = tmp_path / "runs" / "legacy"
    trials = sorted(exp.glob("trial_*"))
    assert out["trials"] == len(trials) == 5
    state = json.loads((exp / "experiment_state.json").read_text())
    assert state["searcher"] == "tpe"
    best_score = min(r["score"] for t in trials for r in results(t)[-1:])
    assert out["best_result"] == best_score
    assert out["best_config"]["fixed"] == {"k": 3}
    for trial in trials:
        res = results(trial)
        assert [r["training_iteration"] for r in res] == [1, 2, 3]
        assert {r["who"] for r in res} == {trial.name}
    # ConcurrencyLimiter(max_concurrent=1): one trial at a time.
    spans = sorted((results(t)[0]["timestamp"] - results(t)[0]["time_total_s"],
                    results(t)[-1]["timestamp"]) for t in trials)
    assert all(a[1] <= b[0] + 1 for a, b in zip(spans, spans[1:])), spans


def python(code: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RTUNE_")}
    env["PYTHONPATH"] = str(REPO / "python")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)


def test_every_listed_ray_name_imports() -> None:
    done = python("""
from rtune.ray import tune, train, air, Checkpoint, init, shutdown
from rtune.ray.train import (report, get_checkpoint, get_context, Checkpoint, ScalingConfig,
                             RunConfig, CheckpointConfig, FailureConfig)
from rtune.ray.train.torch import TorchTrainer, TorchConfig
from rtune.ray.tune import (Tuner, TuneConfig, with_resources, with_parameters, run, report,
                            uniform, quniform, loguniform, qloguniform, randint, qrandint,
                            lograndint, choice, grid_search, ResultGrid, TuneError)
from rtune.ray.tune.schedulers import (ASHAScheduler, AsyncHyperBandScheduler,
    HyperBandScheduler, MedianStoppingRule, PopulationBasedTraining, FIFOScheduler,
    HyperBandForBOHB)
from rtune.ray.tune.search import (ConcurrencyLimiter, BasicVariantGenerator, OptunaSearch,
                                   HyperOptSearch, TuneBOHB, BayesOptSearch)
from rtune.ray.tune.search.optuna import OptunaSearch
from rtune.ray.tune.search.hyperopt import HyperOptSearch
from rtune.ray.tune.search.bohb import TuneBOHB
from rtune.ray.tune.search.bayesopt import BayesOptSearch
from rtune.ray.air import session, ScalingConfig, RunConfig
from rtune.ray.air.session import report, get_checkpoint, get_trial_id, get_world_rank
assert train.ScalingConfig is ScalingConfig and tune.schedulers.ASHAScheduler is ASHAScheduler
assert tune.with_resources and tune.run and tune.report and train.torch.TorchTrainer
print("ok")
""")
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


@pytest.mark.parametrize("code, alternative", [
    ("from rtune.ray import tune; tune.Trainable", "function trainable(config)"),
    ("from rtune.ray import tune; tune.randn()", "rtune has no normal distribution"),
    ("from rtune.ray import tune; tune.sample_from(lambda s: 1)", "compute derived values"),
    ("from rtune.ray.train.torch import prepare_model", "DistributedDataParallel"),
    ("from rtune.ray.tune.schedulers import PB2", "use PopulationBasedTraining"),
    ("from rtune.ray.tune.search import AxSearch", "OptunaSearch"),
    ("from rtune.ray import train; train.RunConfig(callbacks=[object()])", "rtune dashboard"),
    ("from rtune.ray import tune; tune.with_resources(lambda c: 0, lambda c: {})", "a dict"),
    ("from rtune.ray.tune.schedulers import PopulationBasedTraining as P;"
     "P(custom_explore_fn=lambda c: c)", "hyperparam_mutations"),
])
def test_unsupported_names_say_what_to_use(code: str, alternative: str) -> None:
    done = python(code)
    assert done.returncode != 0
    assert "is not supported" in done.stderr and alternative in done.stderr, done.stderr


def test_fit_inside_a_trial_says_the_script_is_the_driver(rtune_bin: Path, tmp_path: Path) -> None:
    script = tmp_path / "script.py"
    script.write_text("from rtune.ray import tune\n"
                      "tune.Tuner(lambda c: None, param_space={}, tune_config=tune.TuneConfig("
                      "metric='m', mode='min')).fit()\n")
    env = {"PYTHONPATH": str(REPO / "python"), "RTUNE_ADDR": "127.0.0.1:1"}
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env)
    assert done.returncode != 0
    assert "the script is the driver; run it with python" in done.stderr, done.stderr


def test_a_missing_metric_is_named_before_anything_runs(tmp_path: Path) -> None:
    done = python("from rtune.ray import tune\n"
                  f"tune.Tuner(lambda c: None, run_config=tune.RunConfig(storage_path={str(tmp_path)!r})).fit()")
    assert done.returncode != 0 and "TuneConfig(metric='eval_loss', mode='min')" in done.stderr
    assert not any(tmp_path.iterdir()), "nothing is created"
