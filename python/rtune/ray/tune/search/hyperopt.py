"""ray.tune.search.hyperopt."""

from . import HyperOptSearch

__all__ = ["HyperOptSearch"]
