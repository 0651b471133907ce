"""The Python distribution: scripts/build-wheel builds the manylinux wheel (zig-linked, its glibc
symbols checked against the tag), and it installs into a fresh venv without cargo, then runs an
example with the installed `rtune` command, `rtune-example` and `python -m rtune.squad`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
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

# Installing must not need a Rust toolchain (issue 23: under 30 s, nothing compiled).
INSTALL_LIMIT_S = 30


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    bindir = os.path.dirname(sys.executable)
    if shutil.which("maturin", path=bindir) is None:
        pytest.skip("maturin is not installed (python/tests/requirements.txt)")
    out = tmp_path_factory.mktemp("wheel")
    # The wheel users get is a release build (scripts/build-wheel); the test builds the same
    # wheel with cargo's dev profile, whose artefacts `cargo test` has already built, unless
    # RTUNE_WHEEL_PROFILE says otherwise.
    env = {**os.environ, "PYTHON": sys.executable,
           "RTUNE_WHEEL_PROFILE": os.environ.get("RTUNE_WHEEL_PROFILE", "dev"),
           "PATH": f"{bindir}:{os.environ['PATH']}"}
    done = subprocess.run([str(REPO / "scripts" / "build-wheel"), str(out)], cwd=REPO, env=env,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    # scripts/check-wheel ran: every binary's glibc symbols are within the tag.
    assert "(tag allows 2.17)" in done.stdout, done.stdout
    wheels = list(out.glob("rtune-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


def test_wheel_is_manylinux_and_holds_what_the_examples_need(wheel: Path) -> None:
    platforms = set(wheel.name[:-len(".whl")].split("-")[-1].split("."))
    assert platforms == {"manylinux_2_17_x86_64", "manylinux2014_x86_64"}, wheel.name
    names = zipfile.ZipFile(wheel).namelist()
    for binary in ("rtune", "rtune-supervise", "rtune-example"):
        assert any(n.endswith(f".data/scripts/{binary}") for n in names), names
    for module in ("__init__.py", "_client.py", "py.typed", "hf.py", "lightning.py",
                   "squad.py", "ray/__init__.py", "ray/_trial.py", "ray/train/torch.py",
                   "ray/tune/schedulers.py", "ray/tune/search/__init__.py"):
        assert f"rtune/{module}" in names, names


def test_check_wheel_refuses_symbols_newer_than_the_tag(wheel: Path, tmp_path: Path) -> None:
    # The same binaries under a tag that promises glibc 2.5: they need newer symbols.
    older = tmp_path / "rtune-0.1.0-py3-none-manylinux_2_5_x86_64.whl"
    shutil.copy(wheel, older)
    done = subprocess.run([sys.executable, str(REPO / "scripts" / "check-wheel"), str(older)],
                          capture_output=True, text=True)
    assert done.returncode == 1 and "newer than the wheel's tag" in done.stderr, done


def test_installed_wheel_runs_examples_without_cargo(wheel: Path, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    py, rtune = venv / "bin" / "python", venv / "bin" / "rtune"
    # PATH without the repository's build or cargo: only the installed binaries and package.
    env = {"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "HOME": str(tmp_path)}
    assert shutil.which("cargo", path=env["PATH"]) is None, "cargo is on the test's PATH"
    started = time.monotonic()
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(py), "-m", "pip", "install", "--no-index", "--quiet", str(wheel)],
                   check=True, env=env)
    install_s = time.monotonic() - started
    assert install_s < INSTALL_LIMIT_S, f"installing took {install_s:.1f} s"
    assert rtune.exists() and (venv / "bin" / "rtune-example").exists()
    assert (venv / "bin" / "rtune-supervise").exists()

    # examples/asha.toml runs rtune-example, found next to the installed rtune.
    storage = tmp_path / "runs"
    done = subprocess.run([str(rtune), "run", str(REPO / "examples" / "asha.toml"),
                           "--storage", str(storage), "--set", "num_samples=2",
                           "--set", "space.sleep_ms=0"], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert len(list((storage / "asha-example").glob("trial_*"))) == 2

    # The examples' data generator comes with the package.
    done = subprocess.run([str(py), "-m", "rtune.squad", "--out", str(tmp_path / "squad"),
                           "--train", "20", "--eval", "5"], env=env, capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr
    train = json.loads((tmp_path / "squad" / "train.json").read_text())
    assert sum(len(p["qas"]) for a in train["data"] for p in a["paragraphs"]) == 20

    # A Python trial that imports the installed package.
    work = tmp_path / "work"
    work.mkdir()
    (work / "trial.py").write_text(TRIAL)
    (work / "exp.toml").write_text(EXPERIMENT.format(python=json.dumps(str(py)),
                                                     storage=json.dumps(str(storage))))
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
