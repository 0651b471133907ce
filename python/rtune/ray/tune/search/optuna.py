"""ray.tune.search.optuna."""

from . import OptunaSearch

__all__ = ["OptunaSearch"]
