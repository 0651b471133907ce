"""ray.tune.search: the searchers rtune has, under Ray's names, each becoming the experiment
file's [searcher] table (docs/experiment-file.md, "Searchers"), and ConcurrencyLimiter."""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional

from ..._config import check_mode
from ..._errors import module_getattr, unsupported


class Searcher:
    """The base of the searchers: `kind`, the [searcher] keys, and the experiment's seed."""

    kind = "random"

    def __init__(self, metric: Optional[str] = None, mode: Optional[str] = None) -> None:
        check_mode(type(self).__name__, mode)
        self.metric, self.mode = metric, mode
        self.settings: Dict[str, Any] = {}
        self.seed: Optional[int] = None
        self.max_concurrent: Optional[int] = None

    def to_table(self) -> Dict[str, Any]:
        return {"type": self.kind, **self.settings}


def _no_space(name: str, space: Any) -> None:
    if space is not None:
        raise unsupported(f"{name}(space=...)", "give the search space as Tuner(param_space=...)")


def _points(points: Optional[List[Mapping[str, Any]]]) -> List[Dict[str, Any]]:
    return [dict(p) for p in (points or [])]


class BasicVariantGenerator(Searcher):
    """Random search with grids expanded ([searcher] type = "random")."""

    def __init__(self, points_to_evaluate: Optional[List[Mapping[str, Any]]] = None,
                 max_concurrent: int = 0, constant_grid_search: bool = False,
                 random_state: Optional[int] = None) -> None:
        super().__init__()
        if points_to_evaluate:
            raise unsupported("BasicVariantGenerator(points_to_evaluate=...)",
                              "use OptunaSearch(points_to_evaluate=...) (rtune's tpe)")
        self.seed = random_state
        self.max_concurrent = max_concurrent or None


class OptunaSearch(Searcher):
    """Optuna's TPE: rtune's tpe ([searcher] type = "tpe")."""

    kind = "tpe"

    def __init__(self, space: Any = None, metric: Optional[str] = None,
                 mode: Optional[str] = None,
                 points_to_evaluate: Optional[List[Mapping[str, Any]]] = None,
                 sampler: Any = None, seed: Optional[int] = None,
                 evaluated_rewards: Any = None) -> None:
        super().__init__(metric, mode)
        _no_space("OptunaSearch", space)
        if sampler is not None:
            raise unsupported("OptunaSearch(sampler=...)", "rtune's tpe is Optuna's TPESampler; "
                              "set its keys in the experiment's [searcher]")
        if evaluated_rewards is not None:
            raise unsupported("OptunaSearch(evaluated_rewards=...)", "leave it out")
        self.seed = seed
        self.settings = {"points_to_evaluate": _points(points_to_evaluate)}


class HyperOptSearch(Searcher):
    """HyperOpt's TPE: rtune's tpe with n_initial and gamma."""

    kind = "tpe"

    def __init__(self, space: Any = None, metric: Optional[str] = None,
                 mode: Optional[str] = None,
                 points_to_evaluate: Optional[List[Mapping[str, Any]]] = None,
                 n_initial_points: int = 20, random_state_seed: Optional[int] = None,
                 gamma: float = 0.25) -> None:
        super().__init__(metric, mode)
        _no_space("HyperOptSearch", space)
        self.seed = random_state_seed
        self.settings = {"n_initial": n_initial_points, "gamma": gamma,
                         "points_to_evaluate": _points(points_to_evaluate)}


class TuneBOHB(Searcher):
    """BOHB's model: rtune's bohb ([searcher] type = "bohb"); pair it with HyperBandForBOHB or
    ASHAScheduler."""

    kind = "bohb"

    def __init__(self, space: Any = None, bohb_config: Optional[Mapping[str, Any]] = None,
                 metric: Optional[str] = None, mode: Optional[str] = None,
                 points_to_evaluate: Optional[List[Mapping[str, Any]]] = None,
                 seed: Optional[int] = None, max_concurrent: int = 0) -> None:
        super().__init__(metric, mode)
        _no_space("TuneBOHB", space)
        if bohb_config:
            raise unsupported("TuneBOHB(bohb_config=...)",
                              "set n_initial, gamma, ... in the experiment's [searcher]")
        self.seed = seed
        self.max_concurrent = max_concurrent or None
        self.settings = {"points_to_evaluate": _points(points_to_evaluate)}


class BayesOptSearch(Searcher):
    """Gaussian-process search: rtune's gp ([searcher] type = "gp"; expected improvement, where
    BayesOpt uses UCB)."""

    kind = "gp"

    def __init__(self, space: Any = None, metric: Optional[str] = None,
                 mode: Optional[str] = None,
                 points_to_evaluate: Optional[List[Mapping[str, Any]]] = None,
                 utility_kwargs: Any = None, random_state: int = 42,
                 random_search_steps: int = 10, verbose: int = 0, patience: int = 5,
                 skip_duplicate: bool = True, analysis: Any = None) -> None:
        super().__init__(metric, mode)
        _no_space("BayesOptSearch", space)
        self.seed = random_state
        self.settings = {"n_initial": random_search_steps,
                         "points_to_evaluate": _points(points_to_evaluate)}


class ConcurrencyLimiter(Searcher):
    """At most max_concurrent trials at once ([executor] max_concurrent_trials)."""

    def __init__(self, searcher: Searcher, max_concurrent: int, batch: bool = False) -> None:
        if not isinstance(searcher, Searcher):
            raise TypeError("ConcurrencyLimiter(searcher, ...): give one of rtune.ray.tune.search's searchers")
        if not isinstance(max_concurrent, int) or max_concurrent < 1:
            raise ValueError(f"ConcurrencyLimiter(max_concurrent={max_concurrent!r}): >= 1")
        super().__init__(searcher.metric, searcher.mode)
        self.kind, self.settings, self.seed = searcher.kind, searcher.settings, searcher.seed
        inner = searcher.max_concurrent
        self.max_concurrent = max_concurrent if inner is None else min(inner, max_concurrent)


__getattr__ = module_getattr("rtune.ray.tune.search", {
    "Repeater": "run the experiment again with another seed",
    "AxSearch": "use OptunaSearch (tpe) or BayesOptSearch (gp)",
    "HEBOSearch": "use BayesOptSearch (gp)",
    "NevergradSearch": "use OptunaSearch (tpe)",
    "ZOOptSearch": "use OptunaSearch (tpe)",
    "SkOptSearch": "use BayesOptSearch (gp)",
    "DragonflySearch": "use BayesOptSearch (gp)",
    "SigOptSearch": "use OptunaSearch (tpe)",
    "FLAML": "use OptunaSearch (tpe)",
    "BlendSearch": "use OptunaSearch (tpe)",
    "CFO": "use OptunaSearch (tpe)",
})
