"""ray.tune.schedulers: each class becomes the experiment file's [scheduler] table, with Ray's
defaults (docs/experiment-file.md, "Schedulers")."""

from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Sequence

from .._config import check_mode
from .._errors import module_getattr, unsupported
from .._space import to_mutations


class TrialScheduler:
    """The base of the schedulers: `kind` and the [scheduler] keys it sets."""

    kind = "fifo"

    def __init__(self, metric: Optional[str] = None, mode: Optional[str] = None) -> None:
        check_mode(type(self).__name__, mode)
        self.metric, self.mode = metric, mode
        self.settings: Dict[str, Any] = {}

    def to_table(self) -> Dict[str, Any]:
        return {"type": self.kind, **self.settings}


class FIFOScheduler(TrialScheduler):
    """Every trial runs to its end or to RunConfig(stop=...)."""


class AsyncHyperBandScheduler(TrialScheduler):
    """ASHA ([scheduler] type = "asha")."""

    kind = "asha"

    def __init__(self, time_attr: str = "training_iteration", metric: Optional[str] = None,
                 mode: Optional[str] = None, max_t: float = 100, grace_period: float = 1,
                 reduction_factor: float = 4, brackets: int = 1,
                 stop_last_trials: bool = True) -> None:
        super().__init__(metric, mode)
        self.settings = {"time_attr": time_attr, "max_t": max_t, "grace_period": grace_period,
                         "reduction_factor": reduction_factor, "brackets": brackets,
                         "stop_last_trials": stop_last_trials}


ASHAScheduler = AsyncHyperBandScheduler


class HyperBandScheduler(TrialScheduler):
    """Synchronous HyperBand ([scheduler] type = "hyperband")."""

    kind = "hyperband"

    def __init__(self, time_attr: str = "training_iteration", metric: Optional[str] = None,
                 mode: Optional[str] = None, max_t: float = 81, reduction_factor: float = 3,
                 stop_last_trials: bool = True) -> None:
        super().__init__(metric, mode)
        self.settings = {"time_attr": time_attr, "max_t": max_t,
                         "reduction_factor": reduction_factor, "stop_last_trials": stop_last_trials}


class HyperBandForBOHB(HyperBandScheduler):
    """BOHB's HyperBand: rtune's synchronous HyperBand (use it with TuneBOHB)."""


class MedianStoppingRule(TrialScheduler):
    """Median stopping ([scheduler] type = "median")."""

    kind = "median"

    def __init__(self, time_attr: str = "time_total_s", metric: Optional[str] = None,
                 mode: Optional[str] = None, grace_period: float = 60.0,
                 min_samples_required: int = 3, min_time_slice: float = 0,
                 hard_stop: bool = True) -> None:
        super().__init__(metric, mode)
        if min_time_slice:
            raise unsupported("MedianStoppingRule(min_time_slice=...)",
                              "rtune does not time-slice trials; leave it at 0")
        self.settings = {"time_attr": time_attr, "grace_period": grace_period,
                         "min_samples_required": min_samples_required, "hard_stop": hard_stop}


class PopulationBasedTraining(TrialScheduler):
    """PBT ([scheduler] type = "pbt"), with Ray's defaults (time_attr "time_total_s",
    perturbation_interval 60). hyperparam_mutations may be nested like param_space."""

    kind = "pbt"

    def __init__(self, time_attr: str = "time_total_s", metric: Optional[str] = None,
                 mode: Optional[str] = None, perturbation_interval: float = 60.0,
                 burn_in_period: float = 0.0,
                 hyperparam_mutations: Optional[Mapping[str, Any]] = None,
                 quantile_fraction: float = 0.25, resample_probability: float = 0.25,
                 perturbation_factors: Sequence[float] = (1.2, 0.8),
                 custom_explore_fn: Any = None, log_config: bool = True,
                 require_attrs: bool = True, synch: bool = False) -> None:
        super().__init__(metric, mode)
        if custom_explore_fn is not None:
            raise unsupported("PopulationBasedTraining(custom_explore_fn=...)",
                              "give the ranges in hyperparam_mutations; rtune explores them")
        self.settings = {"time_attr": time_attr, "perturbation_interval": perturbation_interval,
                         "burn_in_period": burn_in_period, "quantile_fraction": quantile_fraction,
                         "resample_probability": resample_probability,
                         "perturbation_factors": list(perturbation_factors), "synch": synch}
        if hyperparam_mutations:
            self.settings["hyperparam_mutations"] = to_mutations(hyperparam_mutations)


__getattr__ = module_getattr("rtune.ray.tune.schedulers", {
    "PB2": "use PopulationBasedTraining",
    "ResourceChangingScheduler": "a trial's resources are fixed by the experiment",
    "PopulationBasedTrainingReplay": "replay a trial's schedule with `rtune replay DIR TRIAL`",
})
