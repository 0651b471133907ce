"""The Python distribution: build the wheel with maturin, install it into a fresh venv, and run an
experiment with the installed `rtune` command and `import rtune`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from conftest import REPO, results

TRIAL = '''
import os, rtune
assert rtune.session() is not None
x = rtune.restore_iteration or 0
for step in range(x, 4):
    ckpt = rtune.new_checkpoint_dir()
    open(os.path.join(ckpt, "step"), "w").write(str(step + 1))
    loss = (rtune.config["a"] - 0.3) ** 2 + 1.0 / (step + 1)
    if rtune.report({"loss": loss, "trial": rtune.trial_id, "rtune_file": rtune.__file__},
                    checkpoint_dir=ckpt) != "continue":
        break
'''

EXPERIMENT = '''
name = "wheel"
metric = "loss"
mode = "min"
num_samples = 4
seed = 1

[trial]
command = [{python}, "trial.py"]

[space]
a = {{ uniform = [0.0, 1.0] }}

[scheduler]
type = "asha"
max_t = 4
reduction_factor = 2

[output]
storage = {storage}
'''


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    maturin = shutil.which("maturin", path=os.path.dirname(sys.executable)) or shutil.which("maturin")
    if maturin is None:
        pytest.skip("maturin is not installed (python/tests/requirements.txt)")
    out = tmp_path_factory.mktemp("wheel")
    # The wheel users get is built in release mode (pip install .); the test builds the same
    # wheel with cargo's dev profile, whose artefacts `cargo test` has already built, unless
    # RTUNE_WHEEL_PROFILE says otherwise.
    profile = os.environ.get("RTUNE_WHEEL_PROFILE", "dev")
    subprocess.run([maturin, "build", "--locked", "--profile", profile, "--out", str(out)],
                   cwd=REPO, check=True)
    wheels = list(out.glob("rtune-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


def test_wheel_holds_the_binary_and_the_typed_package(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    assert any(n.endswith(".data/scripts/rtune") for n in names), names
    for module in ("__init__.py", "_client.py", "py.typed", "hf.py", "lightning.py", "ray.py"):
        assert f"rtune/{module}" in names, names


def test_installed_rtune_runs_an_experiment(wheel: Path, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py, rtune = venv / "bin" / "python", venv / "bin" / "rtune"
    subprocess.run([str(py), "-m", "pip", "install", "--no-index", "--quiet", str(wheel)],
                   check=True)
    assert rtune.exists()
    work = tmp_path / "work"
    work.mkdir()
    (work / "trial.py").write_text(TRIAL)
    storage = tmp_path / "runs"
    (work / "exp.toml").write_text(EXPERIMENT.format(python=json.dumps(str(py)),
                                                     storage=json.dumps(str(storage))))
    # PATH without the repository's build: only the installed binary and package are used.
    env = {"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "HOME": str(tmp_path)}
    done = subprocess.run([str(rtune), "run", "exp.toml"], cwd=work, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    exp = storage / "wheel"
    trials = sorted(exp.glob("trial_*"))
    assert len(trials) == 4
    for trial in trials:
        res = results(trial)
        assert res and all(r["rtune_file"].startswith(str(venv)) for r in res)
    best = subprocess.run([str(rtune), "best", str(exp), "--json"], env=env, capture_output=True,
                          text=True, check=True)
    assert "loss" in best.stdout
    # python -m rtune runs the same binary.
    version = subprocess.run([str(py), "-m", "rtune", "--version"], env=env, capture_output=True,
                             text=True)
    assert version.returncode == 0 and "rtune" in version.stdout, version
