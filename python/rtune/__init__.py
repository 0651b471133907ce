"""rtune for training scripts: the trial's configuration, reports and checkpoints.

A script started by rtune (``rtune run experiment.toml``) learns its configuration from rtune and
reports one result per iteration; rtune answers whether to go on::

    import rtune

    config = rtune.config                    # {} when not started by rtune
    model = load(rtune.restore_dir) if rtune.restore_dir else fresh(config)
    for epoch in range(10):
        loss = train_one_epoch(model, config["lr"])
        ckpt = rtune.new_checkpoint_dir()      # write the checkpoint in, then report it
        save(model, ckpt)
        if rtune.report({"eval_loss": loss}, checkpoint_dir=ckpt) != "continue":
            break                              # "stop" or "pause": exit with status 0

Outside rtune (``RTUNE_ADDR`` unset) ``session()`` is None, ``config`` is ``{}``,
``restore_dir`` is None and ``report`` returns ``"continue"`` without sending anything, so the
same script runs on its own. The protocol is docs/protocol.md; this package is the single-file
client ``python/rtune_client.py`` of rtune's repository, with types. Integrations:
``rtune.hf`` (Hugging Face Trainer), ``rtune.lightning`` (PyTorch Lightning) and ``rtune.ray``
(Ray Tune's API: a Ray Tune script runs with its imports changed); ``python -m rtune.squad``
writes the examples' SQuAD-format data.
"""

from __future__ import annotations

import os
from typing import Any, Dict, Mapping, Optional, Union

from ._client import CONTINUE, PAUSE, STOP, RtuneError, Session
from ._client import session as _new_session

__all__ = [
    "CONTINUE", "PAUSE", "STOP", "RtuneError", "Session", "session", "report",
    "new_checkpoint_dir", "config", "restore_dir", "restore_iteration", "trial_id",
    "trial_name", "is_tuning",
]

__version__ = "0.2.0"

_UNSET = object()
_session: Any = _UNSET


def session() -> Optional[Session]:
    """This process's Session (created on first use from the environment rtune set), or None
    when the process was not started by rtune. Raises RtuneError, naming the variable, when
    RTUNE_ADDR is set but the rest of rtune's environment is missing or malformed."""
    global _session
    if _session is _UNSET:
        _session = _new_session()
    return _session  # type: ignore[no-any-return]


def is_tuning() -> bool:
    """True when this process was started by rtune."""
    return session() is not None


def report(metrics: Mapping[str, Any],
           checkpoint_dir: Union[str, "os.PathLike[str]", None] = None) -> str:
    """Reports one iteration's metrics, optionally with a checkpoint directory written just now
    (best made with new_checkpoint_dir(); rtune moves it away). Returns "continue", "stop" or
    "pause"; on "stop" and "pause" exit with status 0. Outside rtune: returns "continue"."""
    s = session()
    if s is None:
        return CONTINUE
    return s.report(metrics, checkpoint_dir=checkpoint_dir)


def new_checkpoint_dir() -> str:
    """A fresh empty directory for a checkpoint: under RTUNE_SCRATCH_DIR when started by rtune,
    otherwise a new temporary directory."""
    s = session()
    if s is None:
        import tempfile
        return tempfile.mkdtemp(prefix="rtune_checkpoint_")
    return s.new_checkpoint_dir()


def _config() -> Dict[str, Any]:
    s = session()
    return dict(s.config) if s is not None else {}


def __getattr__(name: str) -> Any:
    # Module attributes read from the session when first asked for.
    s = session()
    if name == "config":
        return _config()
    if name == "restore_dir":
        return s.restore_dir if s is not None else None
    if name == "restore_iteration":
        return s.restore_iteration if s is not None else None
    if name == "trial_id":
        return s.trial_id if s is not None else None
    if name == "trial_name":
        return s.trial_name if s is not None else None
    raise AttributeError(f"module 'rtune' has no attribute {name!r}")


# For type checkers: the attributes __getattr__ provides.
config: Dict[str, Any]
restore_dir: Optional[str]
restore_iteration: Optional[int]
trial_id: Optional[str]
trial_name: Optional[str]
