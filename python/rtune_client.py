"""Python client of the rtune trial protocol (docs/protocol.md). Standard library only.

    import rtune_client

    s = rtune_client.session()          # None when not started by rtune
    lr = s.config["lr"]
    for epoch in range(100):
        loss = train_one_epoch(lr)
        ckpt = s.new_checkpoint_dir()   # write the model into it
        save(model, ckpt)
        if s.report({"loss": loss}, checkpoint_dir=ckpt) != "continue":
            break                       # stopped or paused: exit with status 0

For Hugging Face Trainer, see RtuneCallback (needs transformers only when used).
"""

import json
import math
import os
import socket

__all__ = ["RtuneError", "Session", "session", "CONTINUE", "STOP", "PAUSE"]

PROTOCOL_VERSION = 1
MAX_LINE_BYTES = 1024 * 1024
CONTINUE, STOP, PAUSE = "continue", "stop", "pause"
CONNECT_TIMEOUT_S = 30.0
DEFAULT_REPLY_TIMEOUT_S = 600.0


class RtuneError(Exception):
    """A problem with the environment rtune set, the connection, or a refused report."""


def session(environ=None):
    """The trial's Session, or None when the process was not started by rtune (RTUNE_ADDR unset)."""
    env = os.environ if environ is None else environ
    if not env.get("RTUNE_ADDR"):
        return None
    return Session(env)


def _required(env, name):
    value = env.get(name)
    if value is None:
        raise RtuneError(f"{name}: is not set, but RTUNE_ADDR is: was this process started by rtune?")
    if value == "":
        raise RtuneError(f"{name}: is empty; rtune sets it for every trial")
    return value


def _number(name, text):
    if not text.isdigit():
        raise RtuneError(f"{name}: {text!r} is not a number (0, 1, 2, ...)")
    return int(text)


def _finite(value):
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
    """A trial's view of rtune: config, directories, and report()."""

    def __init__(self, environ=None):
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
        self.trial_name = env.get("RTUNE_TRIAL_NAME") or f"trial_{self.trial_id}"
        self.run = _number("RTUNE_RUN", _required(env, "RTUNE_RUN"))
        self.rank = _number("RANK", env.get("RANK") or "0")
        self.trial_dir = _required(env, "RTUNE_TRIAL_DIR")
        self.scratch_dir = _required(env, "RTUNE_SCRATCH_DIR")
        self.experiment_dir = env.get("RTUNE_EXPERIMENT_DIR") or None
        self.restore_dir = env.get("RTUNE_RESTORE_DIR") or None
        iteration = env.get("RTUNE_RESTORE_ITERATION") or None
        if iteration is not None and self.restore_dir is None:
            raise RtuneError("RTUNE_RESTORE_ITERATION: is set but RTUNE_RESTORE_DIR is not")
        self.restore_iteration = (
            None if iteration is None else _number("RTUNE_RESTORE_ITERATION", iteration))
        self.config = self._read_config(env)
        self.reply_timeout_s = DEFAULT_REPLY_TIMEOUT_S
        self.last_reason = ""  # rtune's reason for the last answer
        self._sock = None
        self._reader = None
        self._next_checkpoint = 0

    @staticmethod
    def _read_config(env):
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

    def new_checkpoint_dir(self):
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

    def report(self, metrics, checkpoint_dir=None):
        """Reports one iteration's metrics (a dict), optionally with the directory of a checkpoint
        taken now. Returns "continue", "stop" or "pause"; on "stop" and "pause" exit with status 0.
        Ranks other than 0 get "continue" without contacting rtune."""
        if self.rank != 0:
            return CONTINUE
        if not isinstance(metrics, dict):
            raise RtuneError(f"metrics must be a dict, got {type(metrics).__name__}")
        request = {"v": PROTOCOL_VERSION, "secret": self._secret, "trial": self.trial_id,
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
        self.last_reason = response.get("reason", "")
        return action

    def close(self):
        if self._sock is not None:
            try:
                self._sock.close()
            finally:
                self._sock = self._reader = None

    def _connect(self):
        try:
            sock = socket.create_connection((self._host, self._port), timeout=CONNECT_TIMEOUT_S)
        except OSError as e:
            raise RtuneError(f"cannot connect to rtune at {self.addr} (RTUNE_ADDR): {e}") from e
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(self.reply_timeout_s)
        self._sock, self._reader = sock, sock.makefile("rb")

    def _still_open(self):
        """False when rtune closed the kept connection (it does after refusing a request)."""
        try:
            self._sock.setblocking(False)
            try:
                # Either the end of the stream (b"") or bytes nobody asked for: not usable.
                self._sock.recv(1, socket.MSG_PEEK)
                return False
            except BlockingIOError:
                return True
            finally:
                self._sock.settimeout(self.reply_timeout_s)
        except OSError:
            return False

    def _exchange(self, line):
        if self._sock is not None and not self._still_open():
            self.close()
        for attempt in (1, 2):  # the kept connection may have broken: reconnect once
            if self._sock is None:
                self._connect()
            try:
                self._sock.sendall(line)
                answer = self._reader.readline(MAX_LINE_BYTES + 1)
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
                return json.loads(answer)
            except ValueError as e:
                raise RtuneError(f"rtune at {self.addr} sent an answer this client cannot read: {e}") from e
        raise RtuneError(f"lost the connection to rtune at {self.addr}")  # not reached


_session_from_env = session


def _agree(decision):
    """In a multi-process trial, every rank takes rank 0's decision (torch.distributed broadcast)."""
    try:
        import torch.distributed as dist
    except ImportError:
        return decision
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return decision
    box = [decision]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _save_trainer_checkpoint(trainer, state, path):
    """What Trainer.train(resume_from_checkpoint=path) reads back: the model (save_model), the
    optimizer and LR scheduler states, and trainer_state.json."""
    trainer.save_model(path)
    optimizer = getattr(trainer, "optimizer", None)
    scheduler = getattr(trainer, "lr_scheduler", None)
    if optimizer is not None or scheduler is not None:
        import torch
        if optimizer is not None:
            torch.save(optimizer.state_dict(), os.path.join(path, "optimizer.pt"))
        if scheduler is not None:
            torch.save(scheduler.state_dict(), os.path.join(path, "scheduler.pt"))
    state.save_to_json(os.path.join(path, "trainer_state.json"))


def _make_callback_class():
    from transformers import TrainerCallback

    class RtuneCallback(TrainerCallback):
        """Reports each evaluation's metrics to rtune and stops training when rtune says so.

            trainer = Trainer(model=..., args=args, ...)
            callback = RtuneCallback(trainer)
            trainer.add_callback(callback)
            trainer.train(resume_from_checkpoint=callback.session.restore_dir)
            # callback.action is "stop" or "pause" if rtune ended the trial: exit with status 0

        With the trainer, every report carries a checkpoint (model, optimizer, scheduler and
        trainer state, the layout resume_from_checkpoint reads), so rtune can pause trials and
        PBT can copy them. Without it (RtuneCallback()), reports carry no checkpoint.
        Outside rtune (RTUNE_ADDR unset) the callback does nothing."""

        def __init__(self, trainer=None, session=None, checkpoint=True):
            super().__init__()
            self.trainer = trainer
            self.session = session if session is not None else _session_from_env()
            self.checkpoint = checkpoint and trainer is not None
            self.action = CONTINUE

        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            # Outside rtune, or after rtune ended the trial (a later trainer.evaluate() call must
            # not report into a trial that was told to stop).
            if self.session is None or self.action != CONTINUE:
                return control
            decision = CONTINUE
            if self.session.rank == 0:
                report = dict(metrics or {})
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


def __getattr__(name):
    # RtuneCallback is built on first use, so this module imports without transformers.
    if name == "RtuneCallback":
        cls = _make_callback_class()
        globals()["RtuneCallback"] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
