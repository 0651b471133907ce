"""Where the `rtune` command installed with this package is."""

from __future__ import annotations

import os
import shutil
import sys
import sysconfig


def find_rtune_bin() -> str:
    """The `rtune` binary: $RTUNE_BIN when set (a build of your own, such as
    target/debug/rtune), else the one that came with this package (in the environment's scripts
    directory), else the one on PATH. Raises FileNotFoundError when there is none."""
    chosen = os.environ.get("RTUNE_BIN")
    if chosen:
        if not (os.path.isfile(chosen) and os.access(chosen, os.X_OK)):
            raise FileNotFoundError(f"RTUNE_BIN={chosen}: not an executable file")
        return chosen
    name = "rtune" + (sysconfig.get_config_var("EXE") or "")
    candidates = [os.path.join(sysconfig.get_path("scripts"), name)]
    user = sysconfig.get_path("scripts", scheme=f"{os.name}_user") if os.name != "nt" else None
    if user:
        candidates.append(os.path.join(user, name))
    candidates.append(os.path.join(os.path.dirname(sys.executable), name))
    for path in candidates:
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    found = shutil.which(name)
    if found:
        return found
    raise FileNotFoundError(f"cannot find the rtune binary (looked in {', '.join(candidates)} "
                            "and on PATH): reinstall the rtune package")
