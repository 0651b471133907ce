"""Python client of the rtune trial protocol (docs/protocol.md). Standard library only, one file:
copy it next to a training script, or install the `rtune` package (`pip install .` in rtune's
repository), which ships this same code as `rtune` with type information.

    import rtune_client

    s = rtune_client.session()          # None when not started by rtune
    lr = s.config["lr"]
    for epoch in range(100):
        loss = train_one_epoch(lr)
        ckpt = s.new_checkpoint_dir()   # write the model into it
        save(model, ckpt)
        if s.report({"loss": loss}, checkpoint_dir=ckpt) != "continue":
            break                       # stopped or paused: exit with status 0

For the Hugging Face Trainer see RtuneCallback, for PyTorch Lightning RtuneLightningCallback
(each needs its library only when used).
"""

from __future__ import annotations

import json
import math
import os
import socket
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

__all__ = ["RtuneError", "Session", "session", "CONTINUE", "STOP", "PAUSE", "RtuneCallback",
           "RtuneLightningCallback"]

PROTOCOL_VERSION = 1
MAX_LINE_BYTES = 1024 * 1024
CONTINUE, STOP, PAUSE = "continue", "stop", "pause"
CONNECT_TIMEOUT_S = 30.0
DEFAULT_REPLY_TIMEOUT_S = 600.0


class RtuneError(Exception):
    """A problem with the environment rtune set, the connection, or a refused report."""


def session(environ: Optional[Mapping[str, str]] = None) -> Optional["Session"]:
    """The trial's Session, or None when the process was not started by rtune (RTUNE_ADDR unset)."""
    env = os.environ if environ is None else environ
    if not env.get("RTUNE_ADDR"):
        return None
    return Session(env)


def _required(env: Mapping[str, str], name: str) -> str:
    value = env.get(name)
    if value is None:
        raise RtuneError(f"{name}: is not set, but RTUNE_ADDR is: was this process started by rtune?")
    if value == "":
        raise RtuneError(f"{name}: is empty; rtune sets it for every trial")
    return value


def _number(name: str, text: str) -> int:
    if not text.isdigit():
        raise RtuneError(f"{name}: {text!r} is not a number (0, 1, 2, ...)")
    return int(text)


def _finite(value: Any) -> Any:
    """JSON has no NaN or Infinity: such numbers are sent as null (rtune sees a missing metric)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if hasattr(value, "item") and callable(value.item):  # numpy / torch scalars
        try:
            return _finite(value.item())
        except (TypeError, ValueError):
            return value
    return value


class Session:
    """A trial's view of rtune: its config, its directories, and report().

    Attributes: ``config`` (the trial's configuration, a dict), ``trial_id`` (digits, like
    ``"00003"``), ``trial_name``, ``run`` (0 for the first start, +1 for each restart),
    ``rank`` (``RANK``; only rank 0 talks to rtune), ``trial_dir``, ``scratch_dir``,
    ``experiment_dir``, ``restore_dir`` (the checkpoint to start from, or None for a fresh
    start; read-only), ``restore_iteration`` (the iteration that checkpoint was taken at, or
    None), ``reply_timeout_s`` and ``last_reason`` (rtune's reason for the last answer)."""

    def __init__(self, environ: Optional[Mapping[str, str]] = None) -> None:
        env = os.environ if environ is None else environ
        self.addr = _required(env, "RTUNE_ADDR")
        host, sep, port = self.addr.rpartition(":")
        if not sep or not host or not port.isdigit() or int(port) > 65535:
            raise RtuneError(f"RTUNE_ADDR: {self.addr!r} is not host:port (like 127.0.0.1:40123)")
        self._host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
        self._port = int(port)
        version = env.get("RTUNE_PROTOCOL")
        if version is not None and version != str(PROTOCOL_VERSION):
            raise RtuneError(
                f"RTUNE_PROTOCOL: protocol version {version!r} is not supported: this client "
                f"speaks version {PROTOCOL_VERSION}; use a client as new as rtune")
        self._secret = _required(env, "RTUNE_SECRET")
        self.trial_id = _required(env, "RTUNE_TRIAL_ID")
        if not self.trial_id.isdigit():
            raise RtuneError(f"RTUNE_TRIAL_ID: {self.trial_id!r} is not a trial id (digits like 00003)")
        self.trial_name: str = env.get("RTUNE_TRIAL_NAME") or f"trial_{self.trial_id}"
        self.run = _number("RTUNE_RUN", _required(env, "RTUNE_RUN"))
        self.rank = _number("RANK", env.get("RANK") or "0")
        self.trial_dir = _required(env, "RTUNE_TRIAL_DIR")
        self.scratch_dir = _required(env, "RTUNE_SCRATCH_DIR")
        self.experiment_dir: Optional[str] = env.get("RTUNE_EXPERIMENT_DIR") or None
        self.restore_dir: Optional[str] = env.get("RTUNE_RESTORE_DIR") or None
        iteration = env.get("RTUNE_RESTORE_ITERATION") or None
        if iteration is not None and self.restore_dir is None:
            raise RtuneError("RTUNE_RESTORE_ITERATION: is set but RTUNE_RESTORE_DIR is not")
        self.restore_iteration: Optional[int] = (
            None if iteration is None else _number("RTUNE_RESTORE_ITERATION", iteration))
        self.config: Dict[str, Any] = self._read_config(env)
        self.reply_timeout_s: float = DEFAULT_REPLY_TIMEOUT_S
        self.last_reason: str = ""  # rtune's reason for the last answer
        self._sock: Optional[socket.socket] = None
        self._reader: Any = None
        self._next_checkpoint = 0

    @staticmethod
    def _read_config(env: Mapping[str, str]) -> Dict[str, Any]:
        text, name = env.get("RTUNE_CONFIG"), "RTUNE_CONFIG"
        if not text:
            path, name = env.get("RTUNE_CONFIG_FILE"), "RTUNE_CONFIG_FILE"
            if not path:
                raise RtuneError("RTUNE_CONFIG: neither RTUNE_CONFIG nor RTUNE_CONFIG_FILE is set, "
                                 "but RTUNE_ADDR is: was this process started by rtune?")
            try:
                with open(path, encoding="utf-8") as f:
                    text = f.read()
            except OSError as e:
                raise RtuneError(f"RTUNE_CONFIG_FILE: cannot read {path}: {e}") from e
        try:
            config = json.loads(text)
        except ValueError as e:
            raise RtuneError(f"{name}: is not valid JSON: {e}") from e
        if not isinstance(config, dict):
            raise RtuneError(f"{name}: is not a JSON object")
        return config

    def new_checkpoint_dir(self) -> str:
        """A fresh empty directory under RTUNE_SCRATCH_DIR; write a checkpoint into it, then
        report it with report(metrics, checkpoint_dir=...). rtune moves it away."""
        try:
            os.makedirs(self.scratch_dir, exist_ok=True)
            while True:
                path = os.path.join(
                    self.scratch_dir,
                    f"checkpoint_run{self.run}_rank{self.rank}_{self._next_checkpoint:05d}")
                self._next_checkpoint += 1
                try:
                    os.mkdir(path)
                    return path
                except FileExistsError:
                    continue
        except OSError as e:
            raise RtuneError(
                f"cannot create a checkpoint directory in {self.scratch_dir} (RTUNE_SCRATCH_DIR): {e}"
            ) from e

    def report(self, metrics: Mapping[str, Any],
               checkpoint_dir: Union[str, "os.PathLike[str]", None] = None) -> str:
        """Reports one iteration's metrics (a dict), optionally with the directory of a checkpoint
        taken now. Returns "continue", "stop" or "pause"; on "stop" and "pause" exit with status 0.
        Ranks other than 0 get "continue" without contacting rtune."""
        if self.rank != 0:
            return CONTINUE
        if not isinstance(metrics, Mapping):
            raise RtuneError(f"metrics must be a dict, got {type(metrics).__name__}")
        request: Dict[str, Any] = {"v": PROTOCOL_VERSION, "secret": self._secret, "trial": self.trial_id,
                   "run": self.run, "type": "report", "metrics": _finite(metrics)}
        if checkpoint_dir is not None:
            path = os.path.abspath(os.fspath(checkpoint_dir))
            if not os.path.isdir(path):
                raise RtuneError(f"checkpoint directory {path}: is not a directory "
                                 "(report the directory that holds the checkpoint)")
            request["checkpoint"] = path
        try:
            line = (json.dumps(request, allow_nan=False) + "\n").encode("utf-8")
        except (TypeError, ValueError) as e:
            raise RtuneError(f"metrics cannot be sent as JSON: {e} (report plain numbers, "
                             "strings, lists and dicts)") from e
        response = self._exchange(line)
        if not response.get("ok"):
            raise RtuneError(f"rtune at {self.addr} refused the report: "
                             f"{response.get('error', 'no reason given')}")
        action = response.get("action")
        if action not in (CONTINUE, STOP, PAUSE):
            raise RtuneError(f"rtune at {self.addr} sent an answer this client cannot read: {response}")
        self.last_reason = str(response.get("reason", ""))
        return str(action)

    def close(self) -> None:
        """Closes the connection to rtune (the next report opens a new one)."""
        if self._sock is not None:
            try:
                self._sock.close()
            finally:
                self._sock = self._reader = None

    def _connect(self) -> None:
        try:
            sock = socket.create_connection((self._host, self._port), timeout=CONNECT_TIMEOUT_S)
        except OSError as e:
            raise RtuneError(f"cannot connect to rtune at {self.addr} (RTUNE_ADDR): {e}") from e
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(self.reply_timeout_s)
        self._sock, self._reader = sock, sock.makefile("rb")

    def _still_open(self) -> bool:
        """False when rtune closed the kept connection (it does after refusing a request)."""
        sock = self._sock
        if sock is None:
            return False
        try:
            sock.setblocking(False)
            try:
                # Either the end of the stream (b"") or bytes nobody asked for: not usable.
                sock.recv(1, socket.MSG_PEEK)
                return False
            except BlockingIOError:
                return True
            finally:
                sock.settimeout(self.reply_timeout_s)
        except OSError:
            return False

    def _exchange(self, line: bytes) -> Dict[str, Any]:
        if self._sock is not None and not self._still_open():
            self.close()
        for attempt in (1, 2):  # the kept connection may have broken: reconnect once
            if self._sock is None:
                self._connect()
            try:
                sock, reader = self._sock, self._reader
                if sock is None or reader is None:
                    raise OSError("not connected")
                sock.sendall(line)
                answer = reader.readline(MAX_LINE_BYTES + 1)
            except socket.timeout as e:
                self.close()  # rtune may still work on it: resending could count it twice
                raise RtuneError(f"rtune at {self.addr} (RTUNE_ADDR) did not answer within "
                                 f"{self.reply_timeout_s:g} s") from e
            except OSError as e:
                self.close()
                if attempt == 2:
                    raise RtuneError(f"lost the connection to rtune at {self.addr} (RTUNE_ADDR), "
                                     f"also after reconnecting once: {e}") from e
                continue
            if not answer:
                self.close()
                if attempt == 2:
                    raise RtuneError(f"rtune at {self.addr} (RTUNE_ADDR) closed the connection, "
                                     "also after reconnecting once")
                continue
            if not answer.endswith(b"\n"):
                self.close()
                raise RtuneError(f"rtune at {self.addr} sent an incomplete answer")
            try:
                decoded = json.loads(answer)
            except ValueError as e:
                raise RtuneError(f"rtune at {self.addr} sent an answer this client cannot read: {e}") from e
            if not isinstance(decoded, dict):
                raise RtuneError(f"rtune at {self.addr} sent an answer this client cannot read: {decoded!r}")
            return decoded
        raise RtuneError(f"lost the connection to rtune at {self.addr}")  # not reached


_session_from_env = session


def _agree(decision: str) -> str:
    """In a multi-process trial, every rank takes rank 0's decision (torch.distributed broadcast)."""
    try:
        import torch.distributed as dist
    except ImportError:
        return decision
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return decision
    box = [decision]
    dist.broadcast_object_list(box, src=0)
    return str(box[0])


def _inside_dir(path: Any, directory: Optional[str]) -> bool:
    """Whether `path` is `directory` or inside it (a Ray-style script may resume from a
    subdirectory of rtune's restore directory, such as its checkpoint-N)."""
    if path is None or directory is None:
        return False
    inner, outer = os.path.realpath(os.fspath(path)), os.path.realpath(directory)
    return bool(inner == outer or inner.startswith(outer.rstrip(os.sep) + os.sep))


# ---------------------------------------------------------------------------------------------
# Hugging Face Trainer

OPTIMIZER_FILE, SCHEDULER_FILE, TRAINER_STATE_FILE = "optimizer.pt", "scheduler.pt", "trainer_state.json"


def _save_trainer_checkpoint(trainer: Any, state: Any, path: str) -> None:
    """What Trainer.train(resume_from_checkpoint=path) reads back: the model (save_model), the
    optimizer and LR scheduler states, and trainer_state.json."""
    trainer.save_model(path)
    optimizer = getattr(trainer, "optimizer", None)
    scheduler = getattr(trainer, "lr_scheduler", None)
    if optimizer is not None or scheduler is not None:
        import torch
        if optimizer is not None:
            torch.save(optimizer.state_dict(), os.path.join(path, OPTIMIZER_FILE))
        if scheduler is not None:
            torch.save(scheduler.state_dict(), os.path.join(path, SCHEDULER_FILE))
    state.save_to_json(os.path.join(path, TRAINER_STATE_FILE))


def _explored_learning_rates(optimizer: Any, scheduler: Any, fresh_groups: List[Dict[str, Any]],
                             fresh_base_lrs: Optional[List[float]], step: int) -> None:
    """After the Trainer loaded a donor's optimizer.pt and scheduler.pt: put back the
    hyperparameters this run's TrainingArguments gave the fresh optimizer (weight decay, betas,
    eps, ... in every param group), make the explored learning rate the scheduler's base, and set
    every group's current learning rate to where this run's schedule is at `step`.

    torch's load_state_dict replaces the param groups' hyperparameters with the saved ones and
    LRScheduler.load_state_dict the base learning rates: without this, PBT's explored values
    would be silently replaced by the donor's (its moments, `state`, are what is worth keeping)."""
    groups = optimizer.param_groups
    if len(groups) != len(fresh_groups):
        raise RtuneError(f"the restored optimizer has {len(groups)} param groups, this run's has "
                         f"{len(fresh_groups)}: cannot apply the explored hyperparameters")
    donor_bases = [g.get("initial_lr", g.get("lr")) for g in groups]
    for group, fresh in zip(groups, fresh_groups):
        for key, value in fresh.items():
            if key not in ("lr", "initial_lr"):
                group[key] = value
    bases = list(fresh_base_lrs) if fresh_base_lrs else [
        f.get("initial_lr", f.get("lr")) for f in fresh_groups]
    inner = getattr(scheduler, "scheduler", scheduler)  # accelerate's AcceleratedScheduler
    lambdas = getattr(inner, "lr_lambdas", None)
    if inner is not None and hasattr(inner, "base_lrs"):
        inner.base_lrs = list(bases)
        inner.last_epoch = step
        if lambdas is not None and len(lambdas) == len(groups):
            lrs = [base * lam(step) for lam, base in zip(lambdas, bases)]
        else:  # another schedule: keep its position, scale it to the explored base
            lrs = [g["lr"] * base / donor if donor else base
                   for g, base, donor in zip(groups, bases, donor_bases)]
        inner._last_lr = list(lrs)
    else:  # no scheduler, or one without base values (ReduceLROnPlateau): the explored rate
        lrs = bases
    for group, lr, base in zip(groups, lrs, bases):
        group["lr"] = lr
        if "initial_lr" in group:
            group["initial_lr"] = base


def patch_trainer_resume(trainer: Any, restore_dir: Optional[str]) -> None:
    """Makes `trainer` (a transformers.Trainer) resume from `restore_dir` (rtune's checkpoint of
    a pause, retry or PBT exploit) with this run's hyperparameters: wraps the two Trainer steps
    of a resume that would undo PBT's exploration. When trainer.train(resume_from_checkpoint=X)
    is given X inside `restore_dir`, the optimizer and scheduler loaded from X get this run's
    TrainingArguments back (learning rate as the scheduler's base, weight decay, betas, ...),
    and training continues at the checkpoint's epoch in this run's steps per epoch. Any other
    resume is left as the Trainer does it. RtuneCallback(trainer) and rtune.ray's trials call it."""
    init_state = getattr(trainer, "_init_training_state", None)
    load_opt = getattr(trainer, "_load_optimizer_and_scheduler", None)
    if init_state is None or load_opt is None:
        if restore_dir is not None:
            import transformers
            raise RtuneError(
                f"transformers {transformers.__version__}: the Trainer has no "
                "_init_training_state/_load_optimizer_and_scheduler, which rtune adjusts when "
                "resuming (tested with transformers 5.24); use that version")
        return
    if getattr(trainer, "_rtune_resume_patched", False):
        return
    trainer._rtune_resume_patched = True

    def resuming(checkpoint: Any) -> bool:
        return _inside_dir(checkpoint, restore_dir)

    def init_training_state(max_steps: int, steps_per_epoch: int, *rest: Any) -> Any:
        epochs_trained, skip = init_state(max_steps, steps_per_epoch, *rest)
        resume = rest[1] if len(rest) > 1 else None
        if not resuming(resume):
            return epochs_trained, skip
        state, args = trainer.state, trainer.args
        # The donor's epoch, in this run's steps: a different batch size changes the steps per
        # epoch, and the Trainer would count epochs from the donor's step.
        epochs_done = float(state.epoch or 0.0)
        state.global_step = int(round(epochs_done * steps_per_epoch))
        state.train_batch_size = getattr(trainer, "_train_batch_size", state.train_batch_size)
        state.compute_steps(args, max_steps)  # logging/eval/save steps of this run
        epochs_trained = state.global_step // max(steps_per_epoch, 1)
        skip = 0
        if not args.ignore_data_skip:
            skip = (state.global_step % max(steps_per_epoch, 1)) * args.gradient_accumulation_steps
        return epochs_trained, skip

    def load_optimizer_and_scheduler(checkpoint: Any) -> Any:
        if not resuming(checkpoint) or trainer.optimizer is None:
            return load_opt(checkpoint)
        fresh = [{k: v for k, v in g.items() if k != "params"}
                 for g in trainer.optimizer.param_groups]
        sched = getattr(trainer.lr_scheduler, "scheduler", trainer.lr_scheduler)
        bases = list(getattr(sched, "base_lrs", []) or [])
        result = load_opt(checkpoint)
        _explored_learning_rates(trainer.optimizer, trainer.lr_scheduler, fresh, bases,
                                 trainer.state.global_step)
        return result

    trainer._init_training_state = init_training_state
    trainer._load_optimizer_and_scheduler = load_optimizer_and_scheduler


def _make_callback_class() -> type:
    from transformers import TrainerCallback

    class RtuneCallback(TrainerCallback):  # type: ignore[misc,unused-ignore]
        """Reports each evaluation's metrics to rtune, with a checkpoint, stops or pauses training
        when rtune says so, and resumes correctly from the checkpoint rtune gives a run.

            trainer = Trainer(model=..., args=args, ...)   # args from the trial's config
            callback = RtuneCallback(trainer)
            trainer.add_callback(callback)
            trainer.train(resume_from_checkpoint=callback.resume_from_checkpoint)
            # callback.action is "stop" or "pause" if rtune ended the trial: exit with status 0

        With the trainer, every report carries a checkpoint (model, optimizer, scheduler and
        trainer state, the layout resume_from_checkpoint reads), so rtune can pause trials and
        PBT can copy them. Resuming from rtune's checkpoint (a pause, a retry, or a PBT exploit
        of another trial's checkpoint with a changed config) then keeps this run's
        TrainingArguments: the learning rate (as the LR scheduler's base, in every param group),
        weight decay and the optimizer's other hyperparameters, instead of the donor's saved
        ones, and continues at the donor's epoch (global step = epochs done x this run's steps
        per epoch, whatever the batch size), so every remaining epoch is a full one. Without a
        trainer (RtuneCallback()) reports carry no checkpoint. Outside rtune (RTUNE_ADDR unset)
        the callback does nothing."""

        def __init__(self, trainer: Any = None, session: Optional[Session] = None,
                     checkpoint: bool = True) -> None:
            super().__init__()
            self.trainer = trainer
            self.session = session if session is not None else _session_from_env()
            self.checkpoint = checkpoint and trainer is not None
            self.action = CONTINUE
            if trainer is not None and self.session is not None:
                patch_trainer_resume(trainer, self.session.restore_dir)

        @property
        def resume_from_checkpoint(self) -> Optional[str]:
            """The checkpoint this run starts from (RTUNE_RESTORE_DIR), or None: pass it to
            trainer.train(resume_from_checkpoint=...)."""
            return self.session.restore_dir if self.session is not None else None

        def on_evaluate(self, args: Any, state: Any, control: Any,
                        metrics: Optional[Dict[str, Any]] = None, **kwargs: Any) -> Any:
            # Outside rtune, or after rtune ended the trial (a later trainer.evaluate() call must
            # not report into a trial that was told to stop).
            if self.session is None or self.action != CONTINUE:
                return control
            decision = CONTINUE
            if self.session.rank == 0:
                report = dict(metrics or {})
                if "epoch" not in report and getattr(state, "epoch", None) is not None:
                    report["epoch"] = state.epoch
                report.setdefault("global_step", state.global_step)
                ckpt = None
                if self.checkpoint:
                    ckpt = self.session.new_checkpoint_dir()
                    _save_trainer_checkpoint(self.trainer, state, ckpt)
                decision = self.session.report(report, checkpoint_dir=ckpt)
            self.action = _agree(decision)
            if self.action != CONTINUE:
                control.should_training_stop = True
                control.should_save = False
            return control

    return RtuneCallback


def training_arguments(config: Mapping[str, Any], **defaults: Any) -> Any:
    """transformers.TrainingArguments from `defaults` and every key of the trial's config that
    names a TrainingArguments field (learning_rate, weight_decay, per_device_train_batch_size,
    warmup_ratio, ...); the config wins. Other config keys are left to the script."""
    import dataclasses
    from transformers import TrainingArguments
    fields = {f.name for f in dataclasses.fields(TrainingArguments)}
    kwargs = dict(defaults)
    kwargs.update({k: v for k, v in config.items() if k in fields})
    return TrainingArguments(**kwargs)


# ---------------------------------------------------------------------------------------------
# PyTorch Lightning

def _make_lightning_class() -> type:
    try:
        import lightning.pytorch as pl
    except ImportError:
        import pytorch_lightning as pl  # type: ignore[no-redef,unused-ignore]

    class RtuneLightningCallback(pl.Callback):  # type: ignore[name-defined,misc,unused-ignore]
        """Reports each validation's metrics (trainer.callback_metrics) to rtune with a
        checkpoint written by trainer.save_checkpoint, and stops training when rtune answers
        stop or pause (rank 0 decides, every rank follows).

            callback = RtuneLightningCallback()
            trainer = lightning.Trainer(..., callbacks=[callback])
            trainer.fit(model, data, ckpt_path=callback.ckpt_path)

        Resuming from rtune's checkpoint keeps this run's learning rate and other optimizer
        hyperparameters (as configure_optimizers set them, also as the LR schedulers' bases)
        instead of the donor's saved ones. Outside rtune the callback does nothing."""

        CHECKPOINT_FILE = "lightning.ckpt"

        def __init__(self, session: Optional[Session] = None, checkpoint: bool = True,
                     report: bool = True) -> None:
            super().__init__()
            self.session = session if session is not None else _session_from_env()
            self.checkpoint = checkpoint
            # report=False: only make a resume from rtune's checkpoint keep this run's
            # hyperparameters (rtune.ray's trials add such a callback; the script reports).
            self.report = report
            self.action = CONTINUE
            self._fresh: Optional[List[Tuple[List[Dict[str, Any]], List[float]]]] = None

        @property
        def ckpt_path(self) -> Optional[str]:
            """The checkpoint file this run starts from, or None: trainer.fit(..., ckpt_path=...)."""
            if self.session is None or self.session.restore_dir is None:
                return None
            return os.path.join(self.session.restore_dir, self.CHECKPOINT_FILE)

        @staticmethod
        def _scheduler_of(trainer: Any, optimizer: Any) -> Any:
            for config in trainer.lr_scheduler_configs:
                if getattr(config.scheduler, "optimizer", None) is optimizer:
                    return config.scheduler
            return None

        def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
            # Lightning has created the optimizers (configure_optimizers, with this run's config)
            # and will load the checkpoint's states into them only after this hook.
            self._fresh = []
            for opt in trainer.optimizers:
                sched = self._scheduler_of(trainer, opt)
                self._fresh.append((
                    [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups],
                    list(getattr(sched, "base_lrs", []) or [])))

        def on_train_start(self, trainer: Any, pl_module: Any) -> None:
            # The checkpoint is loaded now: put this run's hyperparameters back.
            if self.ckpt_path is None or not self._fresh:
                return
            for opt, (groups, bases) in zip(trainer.optimizers, self._fresh):
                sched = self._scheduler_of(trainer, opt)
                step = int(getattr(sched, "last_epoch", 0)) if sched is not None else 0
                _explored_learning_rates(opt, sched, groups, bases, step)

        def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
            if (self.session is None or not self.report or self.action != CONTINUE
                    or trainer.sanity_checking):
                return
            strategy = trainer.strategy
            ckpt = None
            if self.checkpoint:
                ckpt = self.session.new_checkpoint_dir() if trainer.is_global_zero else None
                ckpt = strategy.broadcast(ckpt, src=0)
                trainer.save_checkpoint(os.path.join(ckpt, self.CHECKPOINT_FILE))
                strategy.barrier("rtune_checkpoint")
            decision = CONTINUE
            if trainer.is_global_zero:
                metrics = {k: (v.item() if hasattr(v, "item") else v)
                           for k, v in trainer.callback_metrics.items()}
                metrics.setdefault("epoch", trainer.current_epoch + 1)
                metrics.setdefault("global_step", trainer.global_step)
                decision = self.session.report(metrics, checkpoint_dir=ckpt)
            self.action = str(strategy.broadcast(decision, src=0))
            if self.action != CONTINUE:
                trainer.should_stop = True

    return RtuneLightningCallback


def __getattr__(name: str) -> Any:
    # The callbacks are built on first use, so this module imports without their libraries.
    if name == "RtuneCallback":
        cls = _make_callback_class()
    elif name == "RtuneLightningCallback":
        cls = _make_lightning_class()
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = cls
    return cls
