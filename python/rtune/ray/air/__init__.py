"""ray.air (Ray 2.0-2.6): the configuration classes and the legacy `session` module."""

from __future__ import annotations

from .._config import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from .._session import Checkpoint
from . import session

__all__ = ["Checkpoint", "CheckpointConfig", "FailureConfig", "RunConfig", "ScalingConfig",
           "session"]
