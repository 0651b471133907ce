"""ray.train.torch: TorchTrainer, whose ranks are one trial's worker processes (rtune's
`workers = N`) forming one torch.distributed job."""

from __future__ import annotations

import inspect
import os
import sys
from typing import Any, Callable, Dict, Mapping, Optional

from ..._client import RtuneError
from .._config import RunConfig, ScalingConfig
from .._driver import TrialProgram
from .._errors import module_getattr, unsupported
from .._results import Result


class TorchConfig:
    """ray.train.torch.TorchConfig: the process group's backend (default: nccl with GPUs, else
    gloo) and its timeout."""

    def __init__(self, backend: Optional[str] = None, init_method: str = "env",
                 timeout_s: int = 1800) -> None:
        if init_method != "env":
            raise unsupported(f"TorchConfig(init_method={init_method!r})",
                              "rtune sets MASTER_ADDR and MASTER_PORT: use 'env'")
        self.backend, self.timeout_s = backend, timeout_s


def _join_process_group(use_gpu: bool, config: TorchConfig) -> None:
    """Joins this rank to the trial's torch.distributed job from the environment rtune set
    (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT, as torchrun does), as Ray's TorchTrainer does
    before the training function runs. With use_gpu=False it also tells accelerate (and so the
    Hugging Face Trainer) to train on the CPU with this group, instead of treating every rank
    as a separate job."""
    import datetime

    import torch
    import torch.distributed as dist
    gpu = use_gpu and torch.cuda.is_available()
    if use_gpu and not gpu:
        raise RtuneError("ScalingConfig(use_gpu=True), but this worker sees no GPU "
                         f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '')!r})")
    if gpu:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0") or 0))
    else:
        os.environ["ACCELERATE_USE_CPU"] = "true"
    if dist.is_initialized():
        return
    backend = config.backend or ("nccl" if gpu else "gloo")
    dist.init_process_group(backend=backend, init_method="env://",
                            rank=int(os.environ.get("RANK", "0") or 0),
                            world_size=int(os.environ.get("WORLD_SIZE", "1") or 1),
                            timeout=datetime.timedelta(seconds=config.timeout_s))


class TorchTrainer(TrialProgram):
    """ray.train.torch.TorchTrainer: every trial runs train_loop_per_worker in
    scaling_config.num_workers processes, one torch.distributed job (gloo on CPUs, nccl on
    GPUs). The loop gets train_loop_config updated with the trial's config["train_loop_config"]
    (Tuner(trainer, param_space={"train_loop_config": {...}})). fit() runs it once as a
    one-trial experiment."""

    def __init__(self, train_loop_per_worker: Callable[..., Any], *,
                 train_loop_config: Optional[Mapping[str, Any]] = None,
                 torch_config: Optional[TorchConfig] = None,
                 scaling_config: Optional[ScalingConfig] = None,
                 run_config: Optional[RunConfig] = None, datasets: Any = None,
                 dataset_config: Any = None, resume_from_checkpoint: Any = None,
                 metadata: Any = None) -> None:
        if datasets:
            raise unsupported("TorchTrainer(datasets=...)",
                              "load the data in train_loop_per_worker (rtune has no Ray Datasets)")
        if resume_from_checkpoint is not None:
            raise unsupported("TorchTrainer(resume_from_checkpoint=...)",
                              "load it in train_loop_per_worker when train.get_checkpoint() is None")
        self.train_loop_per_worker = train_loop_per_worker
        self.train_loop_config = dict(train_loop_config or {})
        self.torch_config = torch_config or TorchConfig()
        self.scaling_config = scaling_config or ScalingConfig()
        self.run_config = run_config

    @property
    def name(self) -> str:
        return "TorchTrainer"

    def resources(self) -> Dict[str, Any]:
        return self.scaling_config.trial_table()

    def run_trial(self, config: Dict[str, Any]) -> None:
        loop_config = dict(self.train_loop_config)
        loop_config.update(config.get("train_loop_config") or {})
        _join_process_group(self.scaling_config.use_gpu, self.torch_config)
        try:
            if inspect.signature(self.train_loop_per_worker).parameters:
                self.train_loop_per_worker(loop_config)
            else:
                self.train_loop_per_worker()
        finally:
            torch = sys.modules.get("torch")
            if torch is not None and torch.distributed.is_initialized():
                torch.distributed.destroy_process_group()

    def fit(self) -> Result:
        """One training run (a one-trial experiment); its Result."""
        from ..tune import TuneConfig, Tuner
        # rtune needs a metric; one run has nothing to compare.
        grid = Tuner(self, tune_config=TuneConfig(metric="training_iteration", mode="max"),
                     run_config=self.run_config).fit()
        return grid[0]


__getattr__ = module_getattr("rtune.ray.train.torch", {
    "prepare_model": "wrap the model in torch.nn.parallel.DistributedDataParallel yourself (the "
                     "process group is initialised), or use the Hugging Face Trainer",
    "prepare_data_loader": "give the DataLoader a torch.utils.data.DistributedSampler",
    "TorchCheckpoint": "use rtune.ray.train.Checkpoint.from_directory",
    "get_device": "use torch.device('cuda', int(os.environ['LOCAL_RANK'])) or 'cpu'",
})
