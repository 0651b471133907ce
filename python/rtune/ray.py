"""Ray Tune's function-trainable API on top of rtune, so a Ray Tune script runs under rtune by
changing its imports (docs/from-ray-tune.md)::

    # from ray import tune, train
    # from ray.train import Checkpoint
    from rtune.ray import tune, train
    from rtune.ray import Checkpoint

    def trainable(config):
        start = 0
        checkpoint = train.get_checkpoint()
        if checkpoint:
            with checkpoint.as_directory() as d:
                start = load(d)
        for epoch in range(start, 10):
            loss = train_one_epoch(config["lr"])
            with tempfile.TemporaryDirectory() as d:
                save(d, epoch + 1)
                train.report({"loss": loss}, checkpoint=Checkpoint.from_directory(d))

    tune.Tuner(trainable, param_space={"lr": tune.loguniform(1e-4, 1e-1)}).fit()

Under rtune (`rtune run experiment.toml`, whose `[trial] command` runs this script) each trial
process is one trial: ``Tuner.fit()`` calls the trainable once with the trial's config. The
search space, scheduler, number of samples and stopping rules come from the experiment file,
not from ``param_space``, ``TuneConfig`` or ``RunConfig`` (which are accepted and ignored, so
the script stays valid Ray code). As in Ray, ``report`` does not return when rtune stops or
pauses the trial: the process exits with status 0. Reported checkpoint directories are copied
(the caller's directory is left alone, as Ray does).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
from types import SimpleNamespace
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional

from . import _client

__all__ = ["Checkpoint", "TrainContext", "Result", "ResultGrid", "Tuner", "TuneConfig",
           "RunConfig", "report", "get_checkpoint", "get_context", "tune", "train"]


class Checkpoint:
    """A directory holding a checkpoint (ray.train.Checkpoint)."""

    def __init__(self, path: str) -> None:
        self.path = os.fspath(path)

    @classmethod
    def from_directory(cls, path: "str | os.PathLike[str]") -> "Checkpoint":
        """The checkpoint in `path` (a directory)."""
        return cls(os.fspath(path))

    @contextlib.contextmanager
    def as_directory(self) -> Iterator[str]:
        """The checkpoint's directory, to read (rtune's restore directory: do not write in it)."""
        yield self.path

    def to_directory(self, path: "str | os.PathLike[str] | None" = None) -> str:
        """Copies the checkpoint into `path` (default: a new temporary directory); returns it."""
        dest = os.fspath(path) if path is not None else tempfile.mkdtemp(prefix="checkpoint_")
        shutil.copytree(self.path, dest, dirs_exist_ok=True)
        return dest

    def __repr__(self) -> str:
        return f"Checkpoint(path={self.path!r})"


class TrainContext:
    """What ray.train.get_context() answers, from rtune's environment."""

    def __init__(self, session: Optional[_client.Session]) -> None:
        self._s = session

    def get_trial_id(self) -> Optional[str]:
        return self._s.trial_id if self._s else None

    def get_trial_name(self) -> Optional[str]:
        return self._s.trial_name if self._s else None

    def get_trial_dir(self) -> Optional[str]:
        return self._s.trial_dir if self._s else None

    def get_experiment_name(self) -> Optional[str]:
        if not self._s or not self._s.experiment_dir:
            return None
        return os.path.basename(os.path.normpath(self._s.experiment_dir))

    def get_world_rank(self) -> int:
        return int(os.environ.get("RANK", "0") or 0)

    def get_local_rank(self) -> int:
        return int(os.environ.get("LOCAL_RANK", "0") or 0)

    def get_world_size(self) -> int:
        return int(os.environ.get("WORLD_SIZE", "1") or 1)

    def get_trial_resources(self) -> Dict[str, Any]:
        return {"CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES", "")}


_session_cache: List[Optional[_client.Session]] = []
_last_metrics: Dict[str, Any] = {}


def _session() -> Optional[_client.Session]:
    if not _session_cache:
        _session_cache.append(_client.session())
    return _session_cache[0]


def report(metrics: Mapping[str, Any], *, checkpoint: Optional[Checkpoint] = None) -> None:
    """Reports one iteration (ray.train.report / ray.tune.report). The checkpoint's directory is
    copied into rtune's scratch directory and handed over with the report. When rtune answers
    stop or pause the process exits with status 0, as a Ray trial ends inside report."""
    s = _session()
    _last_metrics.clear()
    _last_metrics.update(metrics)
    if s is None:
        return
    ckpt = None
    if checkpoint is not None and s.rank == 0:
        ckpt = s.new_checkpoint_dir()
        shutil.copytree(checkpoint.path, ckpt, dirs_exist_ok=True)
    if s.report(metrics, checkpoint_dir=ckpt) != _client.CONTINUE:
        s.close()
        sys.exit(0)


def get_checkpoint() -> Optional[Checkpoint]:
    """The checkpoint this run starts from (a pause, retry or PBT exploit), or None."""
    s = _session()
    if s is None or s.restore_dir is None:
        return None
    return Checkpoint(s.restore_dir)


def get_context() -> TrainContext:
    """The trial's identity and ranks (ray.train.get_context())."""
    return TrainContext(_session())


class _Ignored:
    """Ray configuration objects: accepted, kept, and not used (the experiment file decides)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args, self.kwargs = args, kwargs

    def __repr__(self) -> str:
        return f"{type(self).__name__}(ignored under rtune: see the experiment file)"


class TuneConfig(_Ignored):
    """ray.tune.TuneConfig: metric, mode, num_samples and scheduler are [experiment] keys."""


class RunConfig(_Ignored):
    """ray.train.RunConfig: name, storage_path and stop are experiment-file keys."""


class Result:
    """The trial's outcome as this process saw it."""

    def __init__(self, metrics: Dict[str, Any], config: Dict[str, Any]) -> None:
        self.metrics, self.config, self.error = metrics, config, None


class ResultGrid(list):  # type: ignore[type-arg]
    """The results of the trials this process ran (one under rtune)."""

    def get_best_result(self, *args: Any, **kwargs: Any) -> Result:
        return self[0]  # type: ignore[no-any-return]


class Tuner:
    """ray.tune.Tuner: under rtune, fit() runs the trainable once with this trial's config."""

    def __init__(self, trainable: Callable[[Dict[str, Any]], Any], *,
                 param_space: Optional[Mapping[str, Any]] = None, tune_config: Any = None,
                 run_config: Any = None, **kwargs: Any) -> None:
        self.trainable = trainable

    @classmethod
    def restore(cls, path: str, trainable: Callable[[Dict[str, Any]], Any],
                **kwargs: Any) -> "Tuner":
        """Resuming an experiment is `rtune run` on the same experiment directory; inside a trial
        this is the same as Tuner(trainable)."""
        return cls(trainable)

    def fit(self) -> ResultGrid:
        s = _session()
        if s is None:
            raise _client.RtuneError(
                "rtune.ray.Tuner.fit(): this process was not started by rtune (RTUNE_ADDR is "
                "unset): run the experiment with `rtune run EXPERIMENT.toml` (docs/from-ray-tune.md)")
        config = dict(s.config)
        self.trainable(config)
        s.close()
        return ResultGrid([Result(dict(_last_metrics), config)])


class _Domain(_Ignored):
    """A search-space entry (tune.loguniform(...), ...): the experiment file's [space] decides."""

    def __init__(self, kind: str, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.kind = kind


def _domain(name: str) -> Callable[..., _Domain]:
    def make(*args: Any, **kwargs: Any) -> _Domain:
        return _Domain(name, *args, **kwargs)
    make.__name__ = name
    return make


def _scheduler(name: str) -> type:
    return type(name, (_Ignored,), {"__doc__": f"ray.tune.schedulers.{name}: the experiment "
                                                f"file's [scheduler] decides."})


schedulers = SimpleNamespace(
    ASHAScheduler=_scheduler("ASHAScheduler"), AsyncHyperBandScheduler=_scheduler("AsyncHyperBandScheduler"),
    HyperBandScheduler=_scheduler("HyperBandScheduler"), MedianStoppingRule=_scheduler("MedianStoppingRule"),
    PopulationBasedTraining=_scheduler("PopulationBasedTraining"), FIFOScheduler=_scheduler("FIFOScheduler"))

#: ``from rtune.ray import tune``: the names a function-trainable script uses from ray.tune.
tune = SimpleNamespace(
    Tuner=Tuner, TuneConfig=TuneConfig, RunConfig=RunConfig, Checkpoint=Checkpoint,
    report=report, get_checkpoint=get_checkpoint, get_context=get_context,
    schedulers=schedulers, **{n: _domain(n) for n in (
        "uniform", "quniform", "loguniform", "qloguniform", "randn", "randint", "qrandint",
        "lograndint", "choice", "grid_search", "sample_from")})

#: ``from rtune.ray import train``: the names a function trainable uses from ray.train.
train = SimpleNamespace(report=report, get_checkpoint=get_checkpoint, get_context=get_context,
                        Checkpoint=Checkpoint, RunConfig=RunConfig)

