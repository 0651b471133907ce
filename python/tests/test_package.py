"""The rtune package without a running rtune: standalone behaviour, errors, and types."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from conftest import REPO

PACKAGE = REPO / "python"


def run(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("RTUNE_")}
    clean.update(env, PYTHONPATH=str(PACKAGE))
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=clean)


def test_outside_rtune_the_script_runs_standalone() -> None:
    done = run("import rtune, os\n"
               "assert rtune.session() is None and rtune.config == {} and rtune.restore_dir is None\n"
               "assert rtune.report({'loss': 1.0}) == 'continue'\n"
               "d = rtune.new_checkpoint_dir(); assert os.path.isdir(d); print('ok')")
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


def test_a_broken_environment_names_the_variable() -> None:
    done = run("import rtune; rtune.session()", RTUNE_ADDR="127.0.0.1:1")
    assert done.returncode != 0
    assert "RTUNE_SECRET: is not set" in done.stderr


def test_the_package_and_the_single_file_are_one_client() -> None:
    assert os.path.samefile(PACKAGE / "rtune" / "_client.py", PACKAGE / "rtune_client.py")


def test_the_package_type_checks_strictly() -> None:
    pytest.importorskip("mypy")
    done = subprocess.run([sys.executable, "-m", "mypy", "--strict", "--no-incremental",
                           "--config-file", str(REPO / "pyproject.toml"), "rtune"],
                          cwd=PACKAGE, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
