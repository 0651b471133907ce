"""The driver side of rtune.ray: Tuner.fit() and tune.run() turn the script's Tuner into an
experiment file, ship the trainable by value (cloudpickle, as Ray does) into the experiment's
directory, run `rtune run` once, and read the ResultGrid from what rtune wrote. The trials are
processes running `python -m rtune.ray._trial`, which unpickles the trainable and calls it
with the trial's config: the script itself runs once, in this process."""

from __future__ import annotations

import importlib
import inspect
import os
import subprocess
import sys
import tempfile
import time
import types
from typing import Any, Callable, Dict, Mapping, Optional

from .. import _client
from .._binary import find_rtune_bin
from ._config import RunConfig, TuneConfig
from ._errors import unsupported
from ._results import ResultGrid, Result
from ._space import to_space

#: The trainable, pickled, in the experiment's directory; the trials load it from there.
TRAINABLE_FILE = "ray_trainable.pkl"
#: How `rtune submit` and this driver reserve an experiment directory for `rtune run --name`
#: (docs/file-formats.md).
RESERVED_MARK = ".reserved-by-rtune-submit"
#: rtune run's exit codes (rtune --help) that still leave a finished experiment behind:
#: 0, every trial finished; 3, some ended in ERROR (ResultGrid.errors has them).
FINISHED_EXITS = (0, 3)


class TrialProgram:
    """What a trial runs: a function trainable (with Ray's wrappers) or a TorchTrainer."""

    def resources(self) -> Dict[str, Any]:
        """The experiment file's [trial] keys for resources and workers."""
        return {"resources": {"cpu": 1.0, "gpu": 0}}

    def run_trial(self, config: Dict[str, Any]) -> None:
        raise NotImplementedError

    @property
    def name(self) -> str:
        return "trainable"


class FunctionTrainable(TrialProgram):
    """A function trainable `fn(config)` (or `fn(config, **parameters)` after with_parameters)."""

    def __init__(self, fn: Callable[..., Any], parameters: Optional[Dict[str, Any]] = None,
                 resources: Optional[Mapping[str, Any]] = None) -> None:
        self.fn, self.parameters = fn, dict(parameters or {})
        self._resources = dict(resources) if resources is not None else None

    def resources(self) -> Dict[str, Any]:
        if self._resources is None:
            return super().resources()
        keys = {k.lower(): v for k, v in self._resources.items()}
        other = set(keys) - {"cpu", "gpu"}
        if other:
            raise unsupported(f"with_resources(..., {{{', '.join(map(repr, sorted(other)))}: ...}})",
                              "rtune books CPUs and GPUs only")
        cpu, gpu = keys.get("cpu", 1), keys.get("gpu", 0)
        if not (isinstance(cpu, (int, float)) and cpu > 0):
            raise ValueError(f"with_resources(): cpu must be > 0, got {cpu!r}")
        if not (isinstance(gpu, (int, float)) and gpu >= 0 and float(gpu).is_integer()):
            raise ValueError(f"with_resources(): gpu must be a whole number, got {gpu!r}")
        return {"resources": {"cpu": float(cpu), "gpu": int(gpu)}}

    def run_trial(self, config: Dict[str, Any]) -> None:
        self.fn(config, **self.parameters)

    @property
    def name(self) -> str:
        return str(getattr(self.fn, "__name__", "trainable"))


def with_resources(trainable: Any, resources: Any) -> FunctionTrainable:
    """tune.with_resources(trainable, {"cpu": 2, "gpu": 1}): each trial's resources."""
    if callable(resources) or not isinstance(resources, Mapping):
        raise unsupported("with_resources() with a function or PlacementGroupFactory",
                          "give a dict such as {'cpu': 2, 'gpu': 1}")
    program = as_program(trainable)
    if not isinstance(program, FunctionTrainable):
        raise unsupported("with_resources() on a TorchTrainer",
                          "give the trainer ScalingConfig(resources_per_worker=...)")
    return FunctionTrainable(program.fn, program.parameters, resources)


def with_parameters(trainable: Any, **parameters: Any) -> FunctionTrainable:
    """tune.with_parameters(trainable, data=...): the objects are pickled with the trainable and
    passed to it as keyword arguments in every trial."""
    program = as_program(trainable)
    if not isinstance(program, FunctionTrainable):
        raise unsupported("with_parameters() on a TorchTrainer",
                          "pass the objects in train_loop_config")
    return FunctionTrainable(program.fn, {**program.parameters, **parameters},
                             program._resources)


def as_program(trainable: Any) -> TrialProgram:
    if isinstance(trainable, TrialProgram):
        return trainable
    if isinstance(trainable, str):
        raise unsupported(f"a trainable named {trainable!r} (register_trainable)",
                          "pass the function itself")
    if inspect.isclass(trainable):
        raise unsupported(f"the class trainable {trainable.__name__}",
                          "write it as a function trainable(config) that calls train.report")
    if not callable(trainable):
        raise TypeError(f"Tuner(): the trainable must be a function, got {trainable!r}")
    return FunctionTrainable(trainable)


def _toml(table: Mapping[str, Any]) -> str:
    try:
        import tomli_w
    except ImportError as e:
        raise ImportError("rtune.ray needs tomli-w and cloudpickle to run a Tuner: "
                          "pip install 'rtune[ray]'") from e
    return str(tomli_w.dumps(table))


def _pickle(program: TrialProgram, path: str) -> None:
    try:
        import cloudpickle
    except ImportError as e:
        raise ImportError("rtune.ray ships the trainable to the trials with cloudpickle: "
                          "pip install 'rtune[ray]'") from e

    class Pickler(cloudpickle.Pickler):  # type: ignore[misc]
        """cloudpickle, and modules of a ModuleType subclass (torch.distributed.config is one,
        reached from any use of torch.distributed) by name, as cloudpickle does plain ones."""

        def reducer_override(self, obj: Any) -> Any:
            if (isinstance(obj, types.ModuleType) and type(obj) is not types.ModuleType
                    and sys.modules.get(obj.__name__) is obj):
                return importlib.import_module, (obj.__name__,)
            return super().reducer_override(obj)

    with open(path, "wb") as f:
        Pickler(f).dump(program)


def _storage(run_config: RunConfig) -> str:
    """As rtune chooses it: storage_path, else $RTUNE_STORAGE, else ~/rtune_results."""
    chosen = run_config.storage_path or os.environ.get("RTUNE_STORAGE") or "~/rtune_results"
    if "://" in chosen:
        raise unsupported(f"RunConfig(storage_path={chosen!r})",
                          "give a local or shared file-system path")
    return os.path.abspath(os.path.expanduser(chosen))


def _reserve(storage: str, name: str) -> str:
    """Makes <storage>/<name> (or <name>-2, ...) for `rtune run --name` to take."""
    os.makedirs(storage, exist_ok=True)
    attempt = 1
    while True:
        candidate = os.path.join(storage, name if attempt == 1 else f"{name}-{attempt}")
        try:
            os.mkdir(candidate)
        except FileExistsError:
            attempt += 1
            continue
        open(os.path.join(candidate, RESERVED_MARK), "wb").close()
        return candidate


def _python_path() -> str:
    """The trials' PYTHONPATH: this rtune package's directory and the script's (so modules the
    trainable imports by name are found), then what the driver had."""
    package_parent = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    parts = [package_parent]
    script_dir = os.path.dirname(os.path.abspath(sys.argv[0])) if sys.argv and sys.argv[0] else ""
    if script_dir and os.path.isdir(script_dir):
        parts.append(script_dir)
    parts += [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return os.pathsep.join(dict.fromkeys(parts))


def _pick(name: str, *candidates: Optional[str]) -> Optional[str]:
    values = {c for c in candidates if c is not None}
    if len(values) > 1:
        raise ValueError(f"{name} is set to different values ({', '.join(sorted(values))}) in "
                         "TuneConfig, the scheduler and the searcher: set it once")
    return values.pop() if values else None


def experiment_table(program: TrialProgram, param_space: Mapping[str, Any],
                     tune_config: TuneConfig, run_config: RunConfig,
                     name: str) -> Dict[str, Any]:
    """The experiment file for this Tuner (docs/experiment-file.md)."""
    scheduler, searcher = tune_config.scheduler, tune_config.search_alg
    metric = _pick("metric", tune_config.metric, getattr(scheduler, "metric", None),
                   getattr(searcher, "metric", None))
    mode = _pick("mode", tune_config.mode, getattr(scheduler, "mode", None),
                 getattr(searcher, "mode", None))
    if metric is None or mode is None:
        raise ValueError("rtune.ray: rtune needs the metric and its mode to run an experiment: "
                         "TuneConfig(metric='eval_loss', mode='min') (or on the scheduler)")
    table: Dict[str, Any] = {"name": name, "metric": metric, "mode": mode,
                             "num_samples": tune_config.num_samples}
    seed = getattr(searcher, "seed", None)
    table["seed"] = int(seed) if seed is not None else 0
    if tune_config.time_budget_s is not None:
        table["time_budget_s"] = float(tune_config.time_budget_s)
    if run_config.failure_config is not None:
        table["max_failures"] = run_config.failure_config.max_failures
    if run_config.stop:
        table["stop"] = dict(run_config.stop)
    trial: Dict[str, Any] = {
        "command": [sys.executable, "-m", "rtune.ray._trial"],
        "env": {"PYTHONPATH": _python_path()},
    }
    trial.update(program.resources())
    if tune_config.chdir_to_trial_dir is False:
        trial["chdir_to_trial_dir"] = False
    table["trial"] = trial
    table["space"] = to_space(param_space)
    if scheduler is not None:
        if not hasattr(scheduler, "to_table"):
            raise unsupported(f"the scheduler {type(scheduler).__name__}",
                              "use one of rtune.ray.tune.schedulers")
        table["scheduler"] = scheduler.to_table()
    if searcher is not None:
        if not hasattr(searcher, "to_table"):
            raise unsupported(f"the searcher {type(searcher).__name__}",
                              "use one of rtune.ray.tune.search")
        table["searcher"] = searcher.to_table()
    limits = [n for n in (tune_config.max_concurrent_trials,
                          getattr(searcher, "max_concurrent", None)) if n]
    if limits:
        table["executor"] = {"max_concurrent_trials": min(limits)}
    if run_config.checkpoint_config is not None and run_config.checkpoint_config.to_table():
        table["checkpoint"] = run_config.checkpoint_config.to_table()
    return table


def run_experiment(program: TrialProgram, param_space: Mapping[str, Any],
                   tune_config: TuneConfig, run_config: RunConfig) -> ResultGrid:
    """Runs the experiment with `rtune run` (its console output is this process's) and returns
    the ResultGrid of its directory."""
    if os.environ.get("RTUNE_ADDR"):
        raise _client.RtuneError(
            "rtune.ray: Tuner.fit() was called inside an rtune trial: the script is the driver; "
            "run it with python (python script.py), not as an experiment's trial command")
    name = run_config.name or f"{program.name}_{time.strftime('%Y-%m-%d_%H-%M-%S')}"
    table = experiment_table(program, param_space, tune_config, run_config, name)
    text = _toml(table)
    storage = _storage(run_config)
    directory = _reserve(storage, name)
    _pickle(program, os.path.join(directory, TRAINABLE_FILE))
    with tempfile.TemporaryDirectory(prefix="rtune-ray-") as tmp:
        path = os.path.join(tmp, f"{name}.toml")
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        command = [find_rtune_bin(), "run", path, "--name", os.path.basename(directory),
                   "--storage", storage]
        sys.stdout.flush()
        code = subprocess.call(command)
    if code == 130:
        raise KeyboardInterrupt(f"rtune run was interrupted; `rtune resume {directory}` "
                                "continues the experiment")
    if code not in FINISHED_EXITS:
        taken = not os.path.exists(os.path.join(directory, RESERVED_MARK))
        if not taken:  # rtune refused the experiment before it took the directory
            for leftover in (TRAINABLE_FILE, RESERVED_MARK):
                os.remove(os.path.join(directory, leftover))
            os.rmdir(directory)
        raise _client.RtuneError(
            f"rtune run failed with exit status {code} (its message is above); the experiment "
            f"file it was given:\n{text}")
    return ResultGrid(directory, table["metric"], table["mode"])


class Tuner:
    """ray.tune.Tuner: fit() runs the experiment with rtune and returns its ResultGrid."""

    def __init__(self, trainable: Any = None, *, param_space: Optional[Mapping[str, Any]] = None,
                 tune_config: Optional[TuneConfig] = None,
                 run_config: Optional[RunConfig] = None, _path: Optional[str] = None) -> None:
        self._path = _path
        if _path is not None:
            return
        self.program = as_program(trainable)
        self.param_space = dict(param_space or {})
        self.tune_config = tune_config or TuneConfig()
        trainer_run_config = getattr(self.program, "run_config", None)
        self.run_config = run_config or trainer_run_config or RunConfig()

    @classmethod
    def restore(cls, path: str, trainable: Any = None, **kwargs: Any) -> "Tuner":
        """The finished experiment in `path`: get_results() reads it. (To continue an
        interrupted experiment, run `rtune resume PATH`.)"""
        if not os.path.isfile(os.path.join(path, "experiment.toml")):
            raise _client.RtuneError(f"{path}: not an rtune experiment directory "
                                     "(it has no experiment.toml)")
        return cls(_path=os.path.abspath(path))

    @classmethod
    def can_restore(cls, path: str, **kwargs: Any) -> bool:
        return os.path.isfile(os.path.join(path, "experiment.toml"))

    def get_results(self) -> ResultGrid:
        if self._path is None:
            raise RuntimeError("Tuner.get_results(): call fit() first, or use Tuner.restore(path)")
        import tomllib
        with open(os.path.join(self._path, "experiment.toml"), "rb") as f:
            text = f.read().decode("utf-8")
        # The file as run may start with comment lines naming the overrides.
        table = tomllib.loads(text)
        return ResultGrid(self._path, table.get("metric"), table.get("mode"))

    def fit(self) -> ResultGrid:
        if self._path is not None:
            raise unsupported("Tuner.restore(path).fit()",
                              f"continue an interrupted experiment with `rtune resume {self._path}`")
        grid = run_experiment(self.program, self.param_space, self.tune_config, self.run_config)
        self._path = grid.experiment_path
        return grid


class ExperimentAnalysis:
    """What tune.run() returns (ray.tune.ExperimentAnalysis), over the ResultGrid."""

    def __init__(self, grid: ResultGrid, metric: Optional[str], mode: Optional[str]) -> None:
        self.grid, self.default_metric, self.default_mode = grid, metric, mode
        self.experiment_path = grid.experiment_path
        self.trials = list(grid)

    def get_best_trial(self, metric: Optional[str] = None, mode: Optional[str] = None,
                       scope: str = "last") -> Result:
        return self.grid.get_best_result(metric, mode, scope)

    def get_best_config(self, metric: Optional[str] = None, mode: Optional[str] = None,
                        scope: str = "last") -> Dict[str, Any]:
        return self.get_best_trial(metric, mode, scope).config

    @property
    def best_trial(self) -> Result:
        return self.get_best_trial()

    @property
    def best_config(self) -> Dict[str, Any]:
        return self.get_best_config()

    @property
    def best_result(self) -> Dict[str, Any]:
        return self.get_best_trial().metrics

    @property
    def best_checkpoint(self) -> Any:
        return self.get_best_trial().checkpoint

    def dataframe(self, metric: Optional[str] = None, mode: Optional[str] = None) -> Any:
        return self.grid.get_dataframe(metric, mode)

    @property
    def results_df(self) -> Any:
        return self.grid.get_dataframe()


_RUN_IGNORED = {"verbose", "progress_reporter", "log_to_file", "raise_on_failed_trial",
                "reuse_actors", "sync_config", "keep_checkpoints_num"}


def run(run_or_experiment: Any, *, config: Optional[Mapping[str, Any]] = None,
        metric: Optional[str] = None, mode: Optional[str] = None, num_samples: int = 1,
        scheduler: Any = None, search_alg: Any = None, stop: Optional[Mapping[str, float]] = None,
        resources_per_trial: Optional[Mapping[str, Any]] = None, name: Optional[str] = None,
        storage_path: Optional[str] = None, local_dir: Optional[str] = None,
        max_failures: int = 0, checkpoint_config: Any = None,
        max_concurrent_trials: Optional[int] = None, time_budget_s: Optional[float] = None,
        fail_fast: Any = False, **kwargs: Any) -> ExperimentAnalysis:
    """tune.run(): the older form of Tuner(...).fit(), with its keyword arguments."""
    unknown = set(kwargs) - _RUN_IGNORED
    if unknown:
        raise unsupported(f"tune.run({', '.join(sorted(unknown))}=...)",
                          "see the table of supported arguments")
    from ._config import FailureConfig
    program = as_program(run_or_experiment)
    if resources_per_trial is not None:
        program = with_resources(program, resources_per_trial)
    tune_config = TuneConfig(metric=metric, mode=mode, num_samples=num_samples,
                             scheduler=scheduler, search_alg=search_alg,
                             max_concurrent_trials=max_concurrent_trials,
                             time_budget_s=time_budget_s)
    run_config = RunConfig(name=name, storage_path=storage_path or local_dir, stop=stop,
                           checkpoint_config=checkpoint_config,
                           failure_config=FailureConfig(max_failures, fail_fast))
    grid = run_experiment(program, dict(config or {}), tune_config, run_config)
    return ExperimentAnalysis(grid, grid._metric, grid._mode)
