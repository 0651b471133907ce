"""Ray Tune's API on top of rtune: a Ray Tune script runs under rtune with its imports changed
(docs/from-ray-tune.md lists every supported name and every difference)::

    # from ray import tune, train
    # from ray.train import ScalingConfig, RunConfig
    # from ray.train.torch import TorchTrainer
    # from ray.tune.schedulers import ASHAScheduler
    from rtune.ray import tune, train
    from rtune.ray.train import ScalingConfig, RunConfig
    from rtune.ray.train.torch import TorchTrainer
    from rtune.ray.tune.schedulers import ASHAScheduler

The script is the driver, as with Ray: `python script.py` runs it once; `tuner.fit()` writes the
experiment file, ships the trainable to the trials by value (cloudpickle), runs `rtune run`
(its trials table is the output), and returns a ResultGrid read from rtune's files. The trials
are processes (`python -m rtune.ray._trial`) that call the trainable with their config.
Anything rtune does not provide raises an error naming what to use instead.
"""

from __future__ import annotations

from typing import Any

from . import air, train, tune
from ._config import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ._errors import UnsupportedError
from ._results import Result, ResultGrid
from ._session import Checkpoint, TrainContext, get_checkpoint, get_context, report
from .tune import TuneConfig, Tuner

__all__ = ["Checkpoint", "CheckpointConfig", "FailureConfig", "Result", "ResultGrid",
           "RunConfig", "ScalingConfig", "TrainContext", "TuneConfig", "Tuner",
           "UnsupportedError", "air", "get_checkpoint", "get_context", "init",
           "is_initialized", "report", "shutdown", "train", "tune"]


def init(*args: Any, **kwargs: Any) -> None:
    """ray.init(): rtune needs no cluster; accepted and does nothing."""


def shutdown() -> None:
    """ray.shutdown(): nothing to shut down."""


def is_initialized() -> bool:
    return True
