"""Shared fixtures of the Python tests: the rtune binary, tiny SQuAD data, running experiments.

Run them with scripts/test (after cargo test) or `python -m pytest python/tests` in a venv with
python/tests/requirements.txt installed. RTUNE_BIN picks the rtune binary (default:
target/debug/rtune, built with cargo when missing)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "python"))

from rtune import squad  # noqa: E402  (after the path above)


@pytest.fixture(scope="session")
def rtune_bin() -> Path:
    path = Path(os.environ.get("RTUNE_BIN", REPO / "target" / "debug" / "rtune"))
    if not path.exists():
        subprocess.run(["cargo", "build", "--locked", "-p", "rtune-cli"], cwd=REPO, check=True)
    return path


@pytest.fixture(scope="session")
def squad_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("squad")
    squad.main(["--out", str(d), "--train", "16", "--eval", "8", "--seed", "0"])
    return d


def run_experiment(rtune: Path, experiment: Path, storage: Path, *sets: str,
                   timeout: float = 600) -> Path:
    """`rtune run EXPERIMENT --set output.storage=STORAGE ...`; returns the experiment directory."""
    args = [str(rtune), "run", str(experiment), "--set", f"output.storage={json.dumps(str(storage))}"]
    for s in sets:
        args += ["--set", s]
    done = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    dirs = sorted(p for p in storage.iterdir() if p.is_dir()) if storage.exists() else []
    if done.returncode != 0 or not dirs:
        logs = ""
        for d in dirs:
            for err in sorted(d.glob("trial_*/stderr.log"))[:2]:
                logs += f"\n--- {err}\n{err.read_text()[-3000:]}"
        raise AssertionError(f"rtune run failed ({done.returncode}):\n{done.stdout[-3000:]}\n"
                             f"{done.stderr[-3000:]}{logs}")
    return dirs[-1]


def results(trial_dir: Path) -> List[Dict[str, Any]]:
    path = trial_dir / "result.json"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def toml_list(items: List[str]) -> str:
    return "[" + ", ".join(json.dumps(i) for i in items) + "]"


def hf_command(squad: Path, *extra: str) -> str:
    """trial.command for examples/hf-squad/train.py with this interpreter and the tiny data."""
    return "trial.command=" + toml_list([
        sys.executable, str(REPO / "examples/hf-squad/train.py"), "--tiny", "--data", str(squad),
        "--train-samples", "16", "--eval-samples", "8", "--max-length", "48", *extra])
