"""ray.air.session, the legacy form of ray.train.report / get_checkpoint / get_context."""

from __future__ import annotations

from typing import Any, Dict, Optional

from .._session import get_checkpoint, get_context, report

__all__ = ["report", "get_checkpoint", "get_trial_id", "get_trial_name", "get_trial_dir",
           "get_experiment_name", "get_world_rank", "get_local_rank", "get_world_size",
           "get_local_world_size", "get_node_rank", "get_trial_resources"]


def get_trial_id() -> Optional[str]:
    return get_context().get_trial_id()


def get_trial_name() -> Optional[str]:
    return get_context().get_trial_name()


def get_trial_dir() -> Optional[str]:
    return get_context().get_trial_dir()


def get_experiment_name() -> Optional[str]:
    return get_context().get_experiment_name()


def get_world_rank() -> int:
    return get_context().get_world_rank()


def get_local_rank() -> int:
    return get_context().get_local_rank()


def get_world_size() -> int:
    return get_context().get_world_size()


def get_local_world_size() -> int:
    return get_context().get_local_world_size()


def get_node_rank() -> int:
    return get_context().get_node_rank()


def get_trial_resources() -> Dict[str, Any]:
    return get_context().get_trial_resources()
