"""ResultGrid and Result (ray.tune), read from an experiment directory that rtune wrote
(docs/file-formats.md): each trial's result.json, params.json, error.txt and checkpoints/."""

from __future__ import annotations

import json
import math
import os
import re
from typing import Any, Dict, Iterator, List, Optional

from .._client import RtuneError
from ._session import Checkpoint
from ._space import flat_keys

_CHECKPOINT = re.compile(r"^checkpoint_(\d+)$")
_SCOPES = ("last", "all", "avg", "last-5-avg", "last-10-avg")


class TuneError(RtuneError):
    """A trial's error (ray.tune.TuneError): the text of its error.txt."""


def _read_lines(path: str) -> List[Dict[str, Any]]:
    try:
        with open(path, encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]
    except FileNotFoundError:
        return []


def _read_json(path: str) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        return None


class Result:
    """One trial's outcome (ray.train.Result): ``metrics`` (its last result, with ``config``
    and rtune's automatic keys), ``config``, ``checkpoint`` (its latest checkpoint, or None),
    ``best_checkpoints``, ``path`` (its directory), ``error`` (a TuneError, or None) and
    ``metrics_dataframe`` (every result, pandas)."""

    def __init__(self, path: str, status: Optional[str]) -> None:
        self.path = path
        self.status = status
        self.results: List[Dict[str, Any]] = _read_lines(os.path.join(path, "result.json"))
        self.metrics: Dict[str, Any] = dict(self.results[-1]) if self.results else {}
        params = _read_json(os.path.join(path, "params.json"))
        self.config: Dict[str, Any] = params if isinstance(params, dict) else dict(
            self.metrics.get("config") or {})
        try:
            with open(os.path.join(path, "error.txt"), encoding="utf-8") as f:
                text = f.read().strip()
        except FileNotFoundError:
            text = ""
        self.error: Optional[TuneError] = TuneError(text) if status == "ERROR" or (
            text and status is None) else None
        self.checkpoint: Optional[Checkpoint] = None
        self.best_checkpoints: List[Any] = []
        by_iteration = {r.get("training_iteration"): r for r in self.results}
        checkpoints = []
        root = os.path.join(path, "checkpoints")
        for name in (os.listdir(root) if os.path.isdir(root) else []):
            m = _CHECKPOINT.match(name)
            if m:
                checkpoints.append((int(m.group(1)), os.path.join(root, name)))
        for iteration, ckpt in sorted(checkpoints):
            self.best_checkpoints.append((Checkpoint(ckpt), by_iteration.get(iteration, {})))
        if checkpoints:
            self.checkpoint = Checkpoint(max(checkpoints)[1])

    @property
    def metrics_dataframe(self) -> Any:
        return _pandas().DataFrame([flat_keys(r) for r in self.results])

    def score(self, metric: str, mode: str, scope: str) -> Optional[float]:
        """The trial's value of `metric` under Ray's `scope`, or None without one."""
        values = [r[metric] for r in self.results
                  if isinstance(r.get(metric), (int, float)) and not isinstance(r.get(metric), bool)]
        if not values:
            return None
        if scope == "last":
            return float(values[-1]) if isinstance(self.results[-1].get(metric), (int, float)) else None
        if scope == "all":
            return float(min(values) if mode == "min" else max(values))
        window = {"avg": len(values), "last-5-avg": 5, "last-10-avg": 10}[scope]
        tail = values[-window:]
        return float(sum(tail) / len(tail))

    def __repr__(self) -> str:
        return f"Result(metrics={self.metrics!r}, path={self.path!r}, error={self.error!r})"


def _pandas() -> Any:
    try:
        import pandas
    except ImportError as e:
        raise ImportError("rtune.ray: get_dataframe() and metrics_dataframe need pandas "
                          "(pip install pandas)") from e
    return pandas


def _statuses(experiment_path: str) -> Dict[str, str]:
    """Trial directory name -> status, from experiment_state.json (its format 2 and 3)."""
    state = _read_json(os.path.join(experiment_path, "experiment_state.json")) or {}
    out: Dict[str, str] = {}
    for trial in state.get("trials", []):
        ident = trial.get("id")
        if isinstance(ident, int):
            name = f"trial_{ident:05d}"
        elif isinstance(ident, str) and ident.isdigit():
            name = f"trial_{int(ident):05d}"
        else:
            name = str(trial.get("name", ident))
        out[name] = str(trial.get("status"))
    return out


class ResultGrid:
    """The trials of one experiment (ray.tune.ResultGrid), in trial order."""

    def __init__(self, experiment_path: str, metric: Optional[str] = None,
                 mode: Optional[str] = None) -> None:
        self.experiment_path = experiment_path
        self._metric, self._mode = metric, mode
        statuses = _statuses(experiment_path)
        names = sorted(n for n in os.listdir(experiment_path)
                       if n.startswith("trial_") and os.path.isdir(os.path.join(experiment_path, n)))
        self._results = [Result(os.path.join(experiment_path, n), statuses.get(n)) for n in names]

    def __len__(self) -> int:
        return len(self._results)

    def __getitem__(self, i: int) -> Result:
        return self._results[i]

    def __iter__(self) -> Iterator[Result]:
        return iter(self._results)

    @property
    def errors(self) -> List[TuneError]:
        return [r.error for r in self._results if r.error is not None]

    @property
    def num_errors(self) -> int:
        return len(self.errors)

    @property
    def num_terminated(self) -> int:
        return sum(1 for r in self._results if r.status == "TERMINATED")

    def _metric_mode(self, metric: Optional[str], mode: Optional[str]) -> "tuple[str, str]":
        metric, mode = metric or self._metric, mode or self._mode
        if not metric or mode not in ("min", "max"):
            raise ValueError("get_best_result(): give metric and mode (or set them in TuneConfig)")
        return metric, mode

    def get_best_result(self, metric: Optional[str] = None, mode: Optional[str] = None,
                        scope: str = "last", filter_nan_and_inf: bool = True) -> Result:
        """The trial with the best `metric` under `scope` (Ray's: "last" compares each trial's
        last result, "all" its best; "avg", "last-5-avg", "last-10-avg" averages)."""
        metric, mode = self._metric_mode(metric, mode)
        if scope not in _SCOPES:
            raise ValueError(f"get_best_result(scope={scope!r}): one of {', '.join(_SCOPES)}")
        best: Optional[Result] = None
        best_score = 0.0
        for r in self._results:
            score = r.score(metric, mode, scope)
            if score is None or (filter_nan_and_inf and not math.isfinite(score)):
                continue
            better = best is None or (score < best_score if mode == "min" else score > best_score)
            if better:
                best, best_score = r, score
        if best is None:
            raise RuntimeError(f"get_best_result(): no trial reported {metric!r}"
                               + (f" ({self.num_errors} trial(s) ended in ERROR: "
                                  f"{self.errors[0]})" if self.errors else ""))
        return best

    def get_dataframe(self, filter_metric: Optional[str] = None,
                      filter_mode: Optional[str] = None) -> Any:
        """One row per trial: its last result (with filter_metric and filter_mode: its best by
        that metric), nested keys joined with "/" (config/train_loop_config/lr), and logdir."""
        rows = []
        for r in self._results:
            row = r.metrics
            if filter_metric is not None:
                if filter_mode not in ("min", "max"):
                    raise ValueError("get_dataframe(): filter_mode is 'min' or 'max'")
                scored = [x for x in r.results if isinstance(x.get(filter_metric), (int, float))]
                if scored:
                    pick = min if filter_mode == "min" else max
                    row = pick(scored, key=lambda x: x[filter_metric])
            rows.append({**flat_keys(row), "logdir": r.path})
        return _pandas().DataFrame(rows)

    def __repr__(self) -> str:
        return f"ResultGrid({self.experiment_path!r}, {len(self)} trials)"
