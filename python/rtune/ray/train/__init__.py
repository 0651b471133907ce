"""ray.train under rtune: report, get_checkpoint, get_context, Checkpoint and the run
configuration (ScalingConfig, RunConfig, CheckpointConfig, FailureConfig). TorchTrainer is in
rtune.ray.train.torch."""

from __future__ import annotations

from .._config import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from .._errors import module_getattr
from .._results import Result
from . import torch
from .._session import (Checkpoint, TrainContext, get_checkpoint, get_context,
                        get_dataset_shard, report)

__all__ = ["Checkpoint", "CheckpointConfig", "FailureConfig", "Result", "RunConfig", "torch",
           "ScalingConfig", "TrainContext", "get_checkpoint", "get_context", "get_dataset_shard",
           "report"]

__getattr__ = module_getattr("rtune.ray.train", {
    "DataConfig": "load the data in the training function (rtune has no Ray Datasets)",
    "SyncConfig": "results are written to the storage directory directly",
    "lightning": "use rtune.lightning.RtuneLightningCallback, or report from a Lightning callback",
    "huggingface": "report from a transformers TrainerCallback (see docs/from-ray-tune.md)",
    "xgboost": "call train.report from the training loop",
    "tensorflow": "call train.report from the training loop",
})
