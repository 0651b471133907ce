"""docs/from-ray-tune.md stays true: its TOML blocks labelled with an example file are that file,
and every Ray name its table lists exists in rtune.ray."""

from __future__ import annotations

import importlib
import re
import sys

from conftest import REPO

DOC = REPO / "docs" / "from-ray-tune.md"


def test_toml_blocks_are_the_example_files() -> None:
    text = DOC.read_text()
    checked = 0
    # A ```toml block whose introducing line names an examples/... .toml file.
    for label, block in re.findall(r"([^\n]*)\n\n```toml\n(.*?)```", text, re.S):
        named = re.findall(r"`(examples/[\w./-]+\.toml)`", label)
        if not named:
            continue
        assert len(named) == 1, label
        assert block == (REPO / named[0]).read_text(), f"{named[0]} differs from the block in {DOC}"
        checked += 1
    assert checked == 2, "expected the ASHA and PBT example files"


def test_every_name_in_the_table_exists() -> None:
    sys.path.insert(0, str(REPO / "python"))
    text = DOC.read_text()
    table = text[text.index("## Every supported name"):text.index("## Known differences")]
    names = set()
    rows = [row for row in table.splitlines() if row.startswith("| `")]
    for row in rows:
        first = row.split(" | ")[0]
        names.update(re.findall(r"`((?:ray\.|tune\.|train\.)[\w.]+)", first))
    assert len(names) > 30, names
    for name in sorted(names):
        path = name.removeprefix("ray.").split(".")
        obj = importlib.import_module("rtune.ray")
        for part in path:
            try:
                obj = getattr(obj, part)
            except AttributeError:
                obj = importlib.import_module(f"{obj.__name__}.{part}")
        assert obj is not None, name
