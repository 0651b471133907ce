"""Ray Tune's search-space functions (tune.uniform, tune.choice, ...) and their translation into
the experiment file's [space] tables (docs/experiment-file.md, "The search space")."""

from __future__ import annotations

import math
from typing import Any, Dict, List, Mapping, Optional, Sequence

from ._errors import unsupported


class Domain:
    """A searched parameter: rtune's distribution `kind` with its arguments."""

    def __init__(self, kind: str, args: List[Any]) -> None:
        self.kind, self.args = kind, args

    def to_space(self) -> Dict[str, Any]:
        return {self.kind: list(self.args)}

    def __repr__(self) -> str:
        return f"{self.kind}({', '.join(repr(a) for a in self.args)})"


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"tune.{name}: bounds must be finite numbers, got {value!r}")
    return value


def uniform(lower: float, upper: float) -> Domain:
    return Domain("uniform", [_number("uniform", lower), _number("uniform", upper)])


def quniform(lower: float, upper: float, q: float) -> Domain:
    return Domain("quniform", [_number("quniform", lower), _number("quniform", upper),
                               _number("quniform", q)])


def loguniform(lower: float, upper: float, base: float = 10) -> Domain:
    # Uniform in log space is the same distribution whatever the base.
    return Domain("loguniform", [_number("loguniform", lower), _number("loguniform", upper)])


def qloguniform(lower: float, upper: float, q: float, base: float = 10) -> Domain:
    return Domain("qloguniform", [_number("qloguniform", lower), _number("qloguniform", upper),
                                  _number("qloguniform", q)])


def randint(lower: int, upper: int) -> Domain:
    return Domain("randint", [int(lower), int(upper)])


def qrandint(lower: int, upper: int, q: int = 1) -> Domain:
    return Domain("qrandint", [int(lower), int(upper), int(q)])


def lograndint(lower: int, upper: int, base: float = 10) -> Domain:
    return Domain("lograndint", [int(lower), int(upper)])


def qlograndint(lower: int, upper: int, q: int, base: float = 10) -> Domain:
    raise unsupported("tune.qlograndint", "use tune.lograndint, or tune.choice over the values")


def choice(categories: Sequence[Any]) -> Domain:
    if isinstance(categories, (str, bytes)) or not isinstance(categories, Sequence):
        raise ValueError(f"tune.choice: give a list of values, got {categories!r}")
    return Domain("choice", list(categories))


def grid_search(values: Sequence[Any]) -> Domain:
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise ValueError(f"tune.grid_search: give a list of values, got {values!r}")
    return Domain("grid", list(values))


def randn(mean: float = 0.0, sd: float = 1.0) -> Domain:
    raise unsupported("tune.randn", "rtune has no normal distribution; use tune.uniform over "
                      "the range that matters, or tune.choice")


def qrandn(mean: float, sd: float, q: float) -> Domain:
    raise unsupported("tune.qrandn", "use tune.quniform or tune.choice")


def sample_from(func: Any) -> Domain:
    raise unsupported("tune.sample_from", "the experiment's space holds distributions and "
                      "constants only; compute derived values in the trainable from its config, "
                      "or use tune.choice")


def _plain(value: Any, where: str) -> Any:
    """A constant of the space, as TOML can hold it."""
    if value is None:
        raise unsupported(f"{where} = None", "TOML has no null; leave the key out and default "
                          "it in the trainable")
    if isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, Mapping):
        return {str(k): _plain(v, f"{where}/{k}") for k, v in value.items()}
    raise unsupported(f"{where} = {type(value).__name__}",
                      "param_space values must be distributions, numbers, strings, booleans, "
                      "lists or dicts; pass other objects with tune.with_parameters")


def to_space(param_space: Mapping[str, Any], where: str = "param_space") -> Dict[str, Any]:
    """param_space as the experiment file's [space] table (nested dicts stay nested)."""
    out: Dict[str, Any] = {}
    for key, value in param_space.items():
        name = f"{where}/{key}"
        if not isinstance(key, str):
            raise ValueError(f"{name}: keys must be strings")
        if isinstance(value, Domain):
            out[key] = value.to_space()
        elif isinstance(value, Mapping):
            out[key] = to_space(value, name)
        elif type(value).__name__ in ("ScalingConfig", "RunConfig"):
            raise unsupported(f"{name} (tuning a {type(value).__name__})",
                              "rtune's trials all have the resources of the experiment; set "
                              "them on the trainer")
        else:
            out[key] = _plain(value, name)
    return out


def to_mutations(mutations: Mapping[str, Any], where: str = "hyperparam_mutations") -> Dict[str, Any]:
    """PopulationBasedTraining's hyperparam_mutations as [scheduler.hyperparam_mutations]."""
    out: Dict[str, Any] = {}
    for key, value in mutations.items():
        name = f"{where}/{key}"
        if isinstance(value, Domain):
            if value.kind == "grid":
                raise unsupported(f"{name} = tune.grid_search", "use a list or tune.choice")
            out[key] = value.to_space()
        elif isinstance(value, Mapping):
            out[key] = to_mutations(value, name)
        elif isinstance(value, (list, tuple)):
            out[key] = _plain(list(value), name)
        elif callable(value):
            raise unsupported(f"{name} = a function", "give a distribution (tune.loguniform, "
                              "...) or a list of values")
        else:
            raise ValueError(f"{name}: give a distribution, a list or a dict, got {value!r}")
    return out


def flat_keys(config: Mapping[str, Any], prefix: str = "") -> Dict[str, Any]:
    """{"a": {"b": 1}} -> {"a/b": 1}, as Ray names nested config keys in tables."""
    out: Dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flat_keys(value, name + "/"))
        else:
            out[name] = value
    return out


def optional_float(value: Optional[float]) -> Optional[float]:
    return None if value is None else float(value)
