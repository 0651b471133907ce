"""Ray's configuration objects (TuneConfig, RunConfig, ScalingConfig, CheckpointConfig,
FailureConfig), kept as given and translated into experiment-file keys by the driver."""

from __future__ import annotations

from typing import Any, Dict, Mapping, Optional

from ._errors import unsupported

# Settings that only change how Ray prints or syncs: accepted and left alone.
_COSMETIC_RUN = {"verbose", "progress_reporter", "log_to_file", "sync_config", "storage_filesystem"}


def check_mode(owner: str, mode: Optional[str]) -> None:
    """Ray's modes: "min", "max", or None (set elsewhere)."""
    if mode is not None and mode not in ("min", "max"):
        raise ValueError(f"{owner}(mode={mode!r}): mode is 'min' or 'max'")


class TuneConfig:
    """ray.tune.TuneConfig."""

    def __init__(self, *, metric: Optional[str] = None, mode: Optional[str] = None,
                 search_alg: Any = None, scheduler: Any = None, num_samples: int = 1,
                 max_concurrent_trials: Optional[int] = None,
                 time_budget_s: Optional[float] = None, reuse_actors: Any = None,
                 trial_name_creator: Any = None, trial_dirname_creator: Any = None,
                 chdir_to_trial_dir: Optional[bool] = None) -> None:
        check_mode("TuneConfig", mode)
        if not isinstance(num_samples, int) or isinstance(num_samples, bool) or num_samples < 1:
            if num_samples == -1:
                raise unsupported("TuneConfig(num_samples=-1)", "give a number of samples; "
                                  "time_budget_s still ends the experiment early")
            raise ValueError(f"TuneConfig(num_samples={num_samples!r}): a whole number >= 1")
        if max_concurrent_trials is not None and (
                not isinstance(max_concurrent_trials, int) or max_concurrent_trials < 1):
            raise ValueError(f"TuneConfig(max_concurrent_trials={max_concurrent_trials!r}): a "
                             "whole number >= 1, or None")
        if time_budget_s is not None and not (float(time_budget_s) > 0):
            raise ValueError(f"TuneConfig(time_budget_s={time_budget_s!r}): a positive number")
        if trial_name_creator is not None or trial_dirname_creator is not None:
            raise unsupported("TuneConfig(trial_name_creator / trial_dirname_creator)",
                              "trials are named trial_00000, trial_00001, ... in rtune")
        self.metric, self.mode = metric, mode
        self.search_alg, self.scheduler = search_alg, scheduler
        self.num_samples = num_samples
        self.max_concurrent_trials = max_concurrent_trials
        self.time_budget_s = time_budget_s
        self.chdir_to_trial_dir = chdir_to_trial_dir


class CheckpointConfig:
    """ray.train.CheckpointConfig: which checkpoints of each trial are kept ([checkpoint])."""

    def __init__(self, num_to_keep: Optional[int] = None,
                 checkpoint_score_attribute: Optional[str] = None,
                 checkpoint_score_order: str = "max", checkpoint_frequency: int = 0,
                 checkpoint_at_end: Optional[bool] = None) -> None:
        if num_to_keep is not None and (not isinstance(num_to_keep, int) or num_to_keep < 1):
            raise ValueError(f"CheckpointConfig(num_to_keep={num_to_keep!r}): >= 1, or None")
        if checkpoint_score_order not in ("min", "max"):
            raise ValueError("CheckpointConfig(checkpoint_score_order=...): 'min' or 'max'")
        if checkpoint_frequency or checkpoint_at_end:
            raise unsupported("CheckpointConfig(checkpoint_frequency / checkpoint_at_end)",
                              "those are for class trainables; a function trainable reports a "
                              "checkpoint with train.report(..., checkpoint=...)")
        self.num_to_keep = num_to_keep
        self.checkpoint_score_attribute = checkpoint_score_attribute
        self.checkpoint_score_order = checkpoint_score_order

    def to_table(self) -> Dict[str, Any]:
        table: Dict[str, Any] = {}
        if self.num_to_keep is not None:
            table["num_to_keep"] = self.num_to_keep
        if self.checkpoint_score_attribute is not None:
            table["score_attribute"] = self.checkpoint_score_attribute
            table["score_mode"] = self.checkpoint_score_order
        return table


class FailureConfig:
    """ray.train.FailureConfig: max_failures is the experiment's max_failures."""

    def __init__(self, max_failures: int = 0, fail_fast: Any = False) -> None:
        if not isinstance(max_failures, int) or max_failures < 0:
            raise unsupported(f"FailureConfig(max_failures={max_failures!r})",
                              "give a number of retries >= 0")
        if fail_fast:
            raise unsupported("FailureConfig(fail_fast=...)", "rtune's fail_fast = N (the "
                              "experiment file) stops when the first N trials all fail")
        self.max_failures = max_failures


class RunConfig:
    """ray.train.RunConfig / ray.tune.RunConfig: name, storage_path, stop, checkpoint_config,
    failure_config."""

    def __init__(self, name: Optional[str] = None, storage_path: Optional[str] = None,
                 stop: Optional[Mapping[str, float]] = None,
                 checkpoint_config: Optional[CheckpointConfig] = None,
                 failure_config: Optional[FailureConfig] = None, callbacks: Any = None,
                 local_dir: Optional[str] = None, **cosmetic: Any) -> None:
        unknown = set(cosmetic) - _COSMETIC_RUN
        if unknown:
            raise TypeError(f"RunConfig() got unexpected keyword arguments {sorted(unknown)}")
        if callbacks:
            raise unsupported("RunConfig(callbacks=...)", "rtune writes result.json, "
                              "progress.csv and the dashboard (`rtune dashboard DIR`) itself")
        if stop is not None and not isinstance(stop, Mapping):
            raise unsupported("RunConfig(stop=<a function or Stopper>)",
                              "give a dict such as {'training_iteration': 5}")
        self.name = name
        self.storage_path = storage_path if storage_path is not None else local_dir
        self.stop: Dict[str, float] = {}
        for key, value in (stop or {}).items():
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"RunConfig(stop={{{key!r}: {value!r}}}): a number")
            self.stop[str(key)] = value
        self.checkpoint_config = checkpoint_config
        self.failure_config = failure_config


class ScalingConfig:
    """ray.train.ScalingConfig: num_workers processes per trial, each with resources_per_worker
    (CPU and GPU; default 1 CPU, and 1 GPU with use_gpu=True)."""

    def __init__(self, num_workers: int = 1, use_gpu: bool = False,
                 resources_per_worker: Optional[Mapping[str, float]] = None,
                 trainer_resources: Optional[Mapping[str, float]] = None,
                 placement_strategy: str = "PACK", accelerator_type: Optional[str] = None) -> None:
        if not isinstance(num_workers, int) or isinstance(num_workers, bool) or num_workers < 1:
            raise ValueError(f"ScalingConfig(num_workers={num_workers!r}): a whole number >= 1")
        per = dict(resources_per_worker or {})
        other = set(per) - {"CPU", "GPU"}
        if other:
            raise unsupported(f"ScalingConfig(resources_per_worker={{{', '.join(map(repr, sorted(other)))}: ...}})",
                              "rtune books CPUs and GPUs only")
        if accelerator_type is not None:
            raise unsupported("ScalingConfig(accelerator_type=...)",
                              "choose the GPUs with [executor] gpus or CUDA_VISIBLE_DEVICES")
        cpu = per.get("CPU", 1)
        gpu = per.get("GPU", 1 if use_gpu else 0)
        if not (isinstance(cpu, (int, float)) and cpu > 0):
            raise ValueError(f"ScalingConfig(resources_per_worker={{'CPU': {cpu!r}}}): > 0")
        if not (isinstance(gpu, (int, float)) and gpu >= 0 and float(gpu).is_integer()):
            raise ValueError(f"ScalingConfig(resources_per_worker={{'GPU': {gpu!r}}}): whole GPUs")
        if gpu and not use_gpu:
            use_gpu = True
        self.num_workers, self.use_gpu = num_workers, use_gpu
        self.cpu, self.gpu = float(cpu), int(gpu)

    def trial_table(self) -> Dict[str, Any]:
        return {"workers": self.num_workers,
                "resources": {"cpu": self.cpu, "gpu": self.gpu}}
