"""ray.tune under rtune: Tuner, TuneConfig, run, report, with_resources, with_parameters, the
search-space functions, schedulers and search (docs/from-ray-tune.md lists every name)."""

from __future__ import annotations

from .._config import CheckpointConfig, FailureConfig, RunConfig, TuneConfig
from .._driver import ExperimentAnalysis, Tuner, run, with_parameters, with_resources
from .._errors import module_getattr
from .._results import Result, ResultGrid, TuneError
from .._session import Checkpoint, get_checkpoint, get_context, report
from .._space import (choice, grid_search, lograndint, loguniform, qlograndint, qloguniform,
                      qrandint, qrandn, quniform, randint, randn, sample_from, uniform)
from . import schedulers, search

__all__ = ["Checkpoint", "CheckpointConfig", "ExperimentAnalysis", "FailureConfig", "Result",
           "ResultGrid", "RunConfig", "TuneConfig", "TuneError", "Tuner", "choice",
           "get_checkpoint", "get_context", "grid_search", "lograndint", "loguniform",
           "qlograndint", "qloguniform", "qrandint", "qrandn", "quniform", "randint", "randn",
           "report", "run", "sample_from", "schedulers", "search", "uniform", "with_parameters",
           "with_resources"]

__getattr__ = module_getattr("rtune.ray.tune", {
    "Trainable": "write the trainable as a function trainable(config) that calls train.report",
    "Experiment": "use Tuner(trainable, param_space=..., tune_config=..., run_config=...)",
    "run_experiments": "use Tuner(...).fit()",
    "register_trainable": "pass the function itself to Tuner",
    "register_env": "rtune has no RLlib",
    "Callback": "rtune writes result.json, progress.csv and the dashboard itself",
    "Stopper": "give RunConfig(stop={'training_iteration': N}) or a time budget",
    "CLIReporter": "rtune prints its own trials table",
    "JupyterNotebookReporter": "rtune prints its own trials table",
    "ProgressReporter": "rtune prints its own trials table",
    "checkpoint_dir": "report checkpoints with train.report(..., checkpoint=Checkpoint.from_directory(d))",
    "PlacementGroupFactory": "give with_resources a dict such as {'cpu': 2, 'gpu': 1}",
    "SyncConfig": "results are written to the storage directory directly",
})
