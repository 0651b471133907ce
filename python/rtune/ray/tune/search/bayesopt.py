"""ray.tune.search.bayesopt."""

from . import BayesOptSearch

__all__ = ["BayesOptSearch"]
