"""ray.tune.search.bohb."""

from . import TuneBOHB

__all__ = ["TuneBOHB"]
