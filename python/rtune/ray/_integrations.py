"""What rtune.ray's trials do for the Hugging Face Trainer and PyTorch Lightning without the
script asking: when a run restarts from rtune's checkpoint (a pause, a retry, a PBT exploit)
and the trainable resumes its Trainer from that checkpoint, the explored hyperparameters reach
the optimizer and the LR scheduler, and training continues at the checkpoint's epoch.

Ray's own route loads the donor's optimizer.pt and scheduler.pt, so the exploited trial trains
with the donor's learning rate; rtune.hf.RtuneCallback avoids that for scripts written for
rtune, and these hooks do the same for Ray scripts (a TuneReportCallback calling
train.report): they wrap transformers.Trainer.train and lightning's Trainer.fit as those
modules are imported, and act only when the checkpoint given is inside RTUNE_RESTORE_DIR."""

from __future__ import annotations

import functools
import importlib.abc
import importlib.machinery
import inspect
import sys
from types import ModuleType
from typing import Any, Callable, Optional, Sequence

from .. import _client

HF_MODULE = "transformers.trainer"
LIGHTNING_MODULES = ("lightning.pytorch.trainer.trainer", "pytorch_lightning.trainer.trainer")


class _AfterImport(importlib.abc.MetaPathFinder):
    """Calls `then(module)` once the module `name` has been executed."""

    def __init__(self, name: str, then: Callable[[ModuleType], None]) -> None:
        self.name, self.then = name, then

    def find_spec(self, fullname: str, path: Optional[Sequence[str]],
                  target: Optional[ModuleType] = None) -> Optional[importlib.machinery.ModuleSpec]:
        if fullname != self.name:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        execute, then = spec.loader.exec_module, self.then

        def exec_module(module: ModuleType) -> None:
            execute(module)
            then(module)

        spec.loader.exec_module = exec_module  # type: ignore[method-assign]
        sys.meta_path.remove(self)
        return spec


def _after_import(name: str, then: Callable[[ModuleType], None]) -> None:
    module = sys.modules.get(name)
    if module is not None:
        then(module)
    else:
        sys.meta_path.insert(0, _AfterImport(name, then))


def _patch_hf_trainer(module: ModuleType, restore_dir: str) -> None:
    trainer_class = getattr(module, "Trainer", None)
    if trainer_class is None or getattr(trainer_class.train, "_rtune_wrapped", False):
        return
    train = trainer_class.train

    @functools.wraps(train)
    def train_with_explored_hyperparameters(self: Any, resume_from_checkpoint: Any = None,
                                            *args: Any, **kwargs: Any) -> Any:
        if isinstance(resume_from_checkpoint, str) and _client._inside_dir(
                resume_from_checkpoint, restore_dir):
            _client.patch_trainer_resume(self, restore_dir)
        return train(self, resume_from_checkpoint, *args, **kwargs)

    train_with_explored_hyperparameters._rtune_wrapped = True  # type: ignore[attr-defined]
    trainer_class.train = train_with_explored_hyperparameters


def _patch_lightning_trainer(module: ModuleType, restore_dir: str) -> None:
    trainer_class = getattr(module, "Trainer", None)
    if trainer_class is None or getattr(trainer_class.fit, "_rtune_wrapped", False):
        return
    fit = trainer_class.fit
    signature = inspect.signature(fit)

    @functools.wraps(fit)
    def fit_with_explored_hyperparameters(self: Any, *args: Any, **kwargs: Any) -> Any:
        ckpt_path = signature.bind(self, *args, **kwargs).arguments.get("ckpt_path")
        if isinstance(ckpt_path, str) and _client._inside_dir(ckpt_path, restore_dir):
            # Only the restore: the script reports itself.
            self.callbacks.append(_client._make_lightning_class()(checkpoint=False, report=False))
        return fit(self, *args, **kwargs)

    fit_with_explored_hyperparameters._rtune_wrapped = True  # type: ignore[attr-defined]
    trainer_class.fit = fit_with_explored_hyperparameters


def install(restore_dir: Optional[str]) -> None:
    """Before the trainable is loaded: hooks for a run that starts from `restore_dir`."""
    if restore_dir is None:
        return
    _after_import(HF_MODULE, lambda m: _patch_hf_trainer(m, restore_dir))
    for name in LIGHTNING_MODULES:
        _after_import(name, lambda m: _patch_lightning_trainer(m, restore_dir))
