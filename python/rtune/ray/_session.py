"""The trial side of rtune.ray: what a trainable calls while rtune runs it (ray.train.report,
get_checkpoint, get_context, Checkpoint, the legacy session functions)."""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
from typing import Any, Dict, Iterator, List, Mapping, Optional

from .. import _client
from ._errors import unsupported


class Checkpoint:
    """A directory holding a checkpoint (ray.train.Checkpoint)."""

    def __init__(self, path: "str | os.PathLike[str]", filesystem: Any = None) -> None:
        if filesystem is not None:
            raise unsupported("Checkpoint(filesystem=...)",
                              "checkpoints are local directories; use a path")
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

    def get_metadata(self) -> Dict[str, Any]:
        return {}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Checkpoint) and os.path.realpath(self.path) == os.path.realpath(other.path)

    def __hash__(self) -> int:
        return hash(os.path.realpath(self.path))

    def __repr__(self) -> str:
        return f"Checkpoint(path={self.path!r})"


_session_cache: List[Optional[_client.Session]] = []


def _session() -> Optional[_client.Session]:
    if not _session_cache:
        _session_cache.append(_client.session())
    return _session_cache[0]


def _world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


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
        return _world_size()

    def get_local_world_size(self) -> int:
        return int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)

    def get_node_rank(self) -> int:
        return int(os.environ.get("GROUP_RANK", "0") or 0)

    def get_trial_resources(self) -> Dict[str, Any]:
        return {"CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES", "")}

    def get_storage(self) -> Any:
        raise unsupported("get_context().get_storage()",
                          "the trial's directory is get_context().get_trial_dir()")


def report(metrics: Optional[Mapping[str, Any]] = None, *, checkpoint: Optional[Checkpoint] = None,
           **kwargs: Any) -> None:
    """Reports one iteration (ray.train.report / ray.tune.report, also the legacy
    tune.report(**metrics) form). Rank 0's checkpoint directory is copied into rtune's scratch
    directory and handed over with the report; every rank of a TorchTrainer calls it, and all
    take rank 0's answer. When rtune answers stop or pause the process exits with status 0, as a
    Ray trial ends inside report."""
    if metrics is None:
        metrics = kwargs
    elif kwargs:
        raise TypeError("report(): give the metrics as one dict or as keywords, not both")
    s = _session()
    if s is None:
        return
    ckpt = None
    if checkpoint is not None and s.rank == 0:
        ckpt = s.new_checkpoint_dir()
        shutil.copytree(checkpoint.path, ckpt, dirs_exist_ok=True)
    decision = s.report(metrics, checkpoint_dir=ckpt)
    if _world_size() > 1:
        decision = _client._agree(decision)
    if decision != _client.CONTINUE:
        s.close()
        _end_process_group()
        sys.exit(0)


def _end_process_group() -> None:
    torch = sys.modules.get("torch")
    if torch is None:
        return
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def get_checkpoint() -> Optional[Checkpoint]:
    """The checkpoint this run starts from (a pause, retry or PBT exploit), or None."""
    s = _session()
    if s is None or s.restore_dir is None:
        return None
    return Checkpoint(s.restore_dir)


def get_context() -> TrainContext:
    """The trial's identity and ranks (ray.train.get_context())."""
    return TrainContext(_session())


def get_dataset_shard(name: Optional[str] = None) -> Any:
    raise unsupported("get_dataset_shard()",
                      "load the data in the training function (rtune has no Ray Datasets)")
