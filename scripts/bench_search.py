"""The search benchmark behind scripts/bench-search (run that; it prepares the venv and rtune).

Every method tunes lcbench's val_cross_entropy (minimise) on the same tasks, seeds, worker counts
and budget, in simulated time:

* rtune: `rtune run` with `[executor] type = "simulated"` (the real run loop, tuner, schedulers
  and searchers on the lcbench surrogate, in virtual time).
* Optuna and Syne Tune: their own samplers, pruners and schedulers, driven through their
  ask/tell interfaces by an event simulation here, with yahpo_gym + onnxruntime as the objective.

The budget is counted in epochs: B full-training equivalents are B x 52 epochs, whoever trains
them. The incumbent at a budget point is the best val_cross_entropy among results at epoch 52
reported before that many epochs were spent (in order of simulated time). Normalised regret is
(incumbent - optimum) / (median random config - optimum), both at epoch 52, from
`rtune-bench optimum` (20,000 random configs plus a local search): 0 is the reference optimum,
1 a typical random configuration.
"""

import argparse
import contextlib
import heapq
import io
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

EPOCHS = 52
METRIC = "val_cross_entropy"
FRACTIONS = (0.10, 0.25, 0.50, 1.00)
ROOT = Path(__file__).resolve().parent.parent
CONFIG_SPACE = ROOT / "benchmarks" / "yahpo" / "lcbench" / "config_space.json"


def lcbench_tasks():
    """lcbench's 34 OpenML task ids, from the benchmark's config space (encoding.json also knows
    a 35th, 167083, that the data set left out: it is not a task)."""
    space = json.loads(CONFIG_SPACE.read_text())
    (task,) = [h for h in space["hyperparameters"] if h["name"] == "OpenML_task_id"]
    return sorted(task["choices"], key=int)


# The tasks rtune's searchers were developed on before the split (the old default 8, and the 3
# of issue 24's report, the first 3 others in numeric order). They are all in the tuning half.
LOOKED_AT = ["3945", "7593", "34539", "126025", "126026", "126029", "146212", "167104", "167168",
             "168868", "189906"]


def task_halves():
    """The fixed split: (tuning, held_out), 17 tasks each. Tuning: the 11 tasks looked at before
    (LOOKED_AT) and every fourth of the other 23 in numeric order, from the first. Held out: the
    other 17, which no setting of rtune's searchers was chosen on."""
    others = [t for t in lcbench_tasks() if t not in LOOKED_AT]
    tuning = sorted(LOOKED_AT + others[::4], key=int)
    held_out = [t for t in others if t not in tuning]
    return tuning, held_out


def parse_tasks(text):
    """`--tasks`: "all", "tuning", "held-out", or task ids separated by commas. Exits with the
    option named on a task lcbench does not have."""
    tuning, held_out = task_halves()
    named = {"all": lcbench_tasks(), "tuning": tuning, "held-out": held_out}
    tasks = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        if part in named:
            tasks += [t for t in named[part] if t not in tasks]
        elif part in named["all"]:
            if part not in tasks:
                tasks.append(part)
        else:
            sys.exit(f"--tasks: {part!r} is not an lcbench task; the 34 tasks are "
                     f"{', '.join(named['all'])} (or write all, tuning or held-out)")
    if not tasks:
        sys.exit("--tasks: no task given")
    return tasks

# name -> (family, options)
METHODS = {
    "rtune random+ASHA r1": ("rtune", {"searcher": None, "scheduler": "asha", "grace": 1}),
    "rtune random+ASHA r3": ("rtune", {"searcher": None, "scheduler": "asha", "grace": 3}),
    "rtune TPE": ("rtune", {"searcher": "tpe", "scheduler": "fifo", "grace": None}),
    "rtune TPE+ASHA r1": ("rtune", {"searcher": "tpe", "scheduler": "asha", "grace": 1}),
    "rtune BOHB r1": ("rtune", {"searcher": "bohb", "scheduler": "asha", "grace": 1}),
    "rtune BOHB r3": ("rtune", {"searcher": "bohb", "scheduler": "asha", "grace": 3}),
    "rtune GP r1": ("rtune", {"searcher": "gp", "scheduler": "asha", "grace": 1}),
    "rtune GP r3": ("rtune", {"searcher": "gp", "scheduler": "asha", "grace": 3}),
    "rtune GP r1 pruning-aware": ("rtune", {"searcher": "gp", "scheduler": "asha", "grace": 1,
                                            "searcher_keys": "pruning_aware = true"}),
    "Optuna TPE+Hyperband r1": ("optuna", {"pruner": 1}),
    "Optuna TPE+Hyperband r3": ("optuna", {"pruner": 3}),
    "Optuna TPE": ("optuna", {"pruner": None}),
    "Optuna GP": ("optuna", {"pruner": None, "sampler": "gp"}),
    "Syne Tune ASHA r1": ("synetune", {"scheduler": "asha", "grace": 1}),
    "Syne Tune ASHA r3": ("synetune", {"scheduler": "asha", "grace": 3}),
    "Syne Tune BOHB r1": ("synetune", {"scheduler": "bohb", "grace": 1}),
    "Syne Tune BOHB r3": ("synetune", {"scheduler": "bohb", "grace": 3}),
}
# The comparison: rtune's default model-based method (the GP searcher with its defaults
# under ASHA), rtune's random search under ASHA, and the TPE/ASHA/BOHB anchors. Optuna's
# GPSampler needs torch (see scripts/bench-search) and is asked for by name.
DEFAULT_METHODS = ["rtune GP r1", "rtune random+ASHA r1", "Optuna TPE", "Optuna TPE+Hyperband r3",
                   "Syne Tune ASHA r1", "Syne Tune BOHB r1"]
# The anchors the goal is checked against (at least as good as the best of them at every budget
# point), and the one whose median regret it is compared with where it ran.
GOAL_ANCHORS = ["Optuna TPE", "Optuna TPE+Hyperband r1", "Optuna TPE+Hyperband r3",
                "Syne Tune ASHA r1", "Syne Tune ASHA r3", "Syne Tune BOHB r1", "Syne Tune BOHB r3"]
GP_ANCHOR = "Optuna GP"

SPACE_TOML = """batch_size = { lograndint = [16, 513] }
learning_rate = { loguniform = [1e-4, 0.1] }
momentum = { uniform = [0.1, 0.99] }
weight_decay = { uniform = [1e-5, 0.1] }
num_layers = { randint = [1, 6] }
max_units = { lograndint = [64, 1025] }
max_dropout = { uniform = [0.0, 1.0] }
"""


# ---------------------------------------------------------------------------------------------
# rtune


def run_rtune(opts, task, seed, workers, budget_epochs, rtune, workdir):
    """One simulated rtune experiment; returns its trace [(time, epoch, value)]."""
    searcher, scheduler, grace = opts["searcher"], opts["scheduler"], opts["grace"]
    # The experiment ends when the budget's epochs are spent (max_total_results: one result per
    # epoch), so num_samples only has to be enough to spend it: every trial trains at least
    # `grace` epochs under ASHA, 52 without early stopping.
    per_trial = grace if scheduler == "asha" else EPOCHS
    num_samples = int(math.ceil(budget_epochs / per_trial)) + workers
    text = f"""name = "bench"
metric = "{METRIC}"
mode = "min"
num_samples = {num_samples}
seed = {seed}
max_total_results = {budget_epochs}

[space]
{SPACE_TOML}
[executor]
type = "simulated"
benchmark = "lcbench"
instance = "{task}"
max_concurrent_trials = {workers}

[output]
report_interval_s = 86400  # the longest allowed: no progress tables in these runs
"""
    if scheduler == "asha":
        text += f"""
[scheduler]
type = "asha"
grace_period = {grace}
max_t = {EPOCHS}
reduction_factor = 3
"""
    if searcher:
        text += f"""
[searcher]
type = "{searcher}"
{opts.get("searcher_keys", "")}
"""
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        path = Path(tmp) / "bench.toml"
        path.write_text(text)
        run = subprocess.run(
            [rtune, "run", str(path), "--storage", tmp],
            capture_output=True,
            text=True,
            env={**os.environ, "RUST_LOG": "error"},
        )
        if run.returncode != 0:
            raise RuntimeError(f"rtune failed ({run.returncode}): {run.stderr[-2000:]}")
        exp = Path(tmp) / "bench"
        # Every result gets a decision in decisions.jsonl, with the (simulated) time it was
        # made: that orders the results exactly.
        when = {}
        for line in (exp / "decisions.jsonl").read_text().splitlines():
            d = json.loads(line)
            when.setdefault((str(d["trial"]), int(d["training_iteration"])), float(d["time"]))
        trace = []
        for trial_dir in sorted(exp.glob("trial_*")):
            result_file = trial_dir / "result.json"
            if not result_file.exists():
                continue
            for line in result_file.read_text().splitlines():
                r = json.loads(line)
                key = (str(r["trial_id"]), int(r["training_iteration"]))
                trace.append((when.get(key, float(r["timestamp"])), int(r["epoch"]), float(r[METRIC])))
    trace.sort(key=lambda x: x[0])
    return trace


# ---------------------------------------------------------------------------------------------
# Optuna and Syne Tune, driven by an event simulation


class Surrogate:
    """Learning curves from yahpo_gym + onnxruntime (the reference implementation)."""

    def __init__(self, task):
        os.environ.setdefault("YAHPO_LOCAL_CONFIG", str(Path(tempfile.gettempdir()) / "yahpo-bench.yaml"))
        from yahpo_gym import benchmark_set, local_config

        local_config.init_config()
        local_config.set_data_path(str(ROOT / "benchmarks" / "yahpo"))
        with contextlib.redirect_stdout(io.StringIO()):  # yahpo_gym prints citations
            self.bench = benchmark_set.BenchmarkSet("lcbench", instance=task, check=False, multithread=False)
        self.task = task

    def curve(self, config):
        rows = []
        for epoch in range(1, EPOCHS + 1):
            c = {k: config[k] for k in ("batch_size", "learning_rate", "momentum", "weight_decay",
                                         "num_layers", "max_units", "max_dropout")}
            c["epoch"] = epoch
            c["OpenML_task_id"] = self.task
            rows.append(c)
        out = self.bench.objective_function(rows, multithread=False)
        elapsed, curve = 0.0, []
        for r in out:
            elapsed = max(elapsed, float(r["time"]))
            curve.append((elapsed, float(r[METRIC])))
        return curve


def simulate(policy, surrogate, workers, budget_epochs):
    """Runs `policy` (new_trial() -> (handle, config) or None; report(handle, epoch, value) ->
    True to continue) on `workers` simulated workers until the budget is spent."""
    heap, seq, trace, spent = [], 0, [], 0

    def start(now):
        nonlocal seq
        new = policy.new_trial()
        if new is None:
            return
        handle, config = new
        curve = surrogate.curve(config)
        seq += 1
        heapq.heappush(heap, (now + curve[0][0], seq, handle, curve, 1, now))

    for _ in range(workers):
        start(0.0)
    while heap and spent < budget_epochs:
        now, _, handle, curve, epoch, started = heapq.heappop(heap)
        value = curve[epoch - 1][1]
        spent += 1
        trace.append((now, epoch, value))
        go_on = policy.report(handle, epoch, value) and epoch < EPOCHS
        if go_on:
            seq += 1
            heapq.heappush(heap, (started + curve[epoch][0], seq, handle, curve, epoch + 1, started))
        else:
            start(now)
    return trace


def study_name(task, seed):
    """Optuna's HyperbandPruner puts a trial in a bracket by hashing the study name with the trial
    number, and an unnamed study gets a random UUID: a fixed name makes a run reproducible."""
    return f"bench-search-{task}-seed{seed}"


class OptunaPolicy:
    def __init__(self, opts, task, seed):
        import optuna

        optuna.logging.set_verbosity(optuna.logging.ERROR)
        if opts.get("sampler") == "gp":
            sampler = optuna.samplers.GPSampler(seed=seed)
        else:
            sampler = optuna.samplers.TPESampler(seed=seed)
        if opts["pruner"] is None:
            pruner = optuna.pruners.NopPruner()
        else:
            pruner = optuna.pruners.HyperbandPruner(
                min_resource=opts["pruner"], max_resource=EPOCHS, reduction_factor=3
            )
        self.optuna = optuna
        self.pruning = opts["pruner"] is not None
        self.study = optuna.create_study(
            study_name=study_name(task, seed), direction="minimize", sampler=sampler, pruner=pruner
        )

    def new_trial(self):
        t = self.study.ask()
        config = {
            "batch_size": t.suggest_int("batch_size", 16, 512, log=True),
            "learning_rate": t.suggest_float("learning_rate", 1e-4, 0.1, log=True),
            "momentum": t.suggest_float("momentum", 0.1, 0.99),
            "weight_decay": t.suggest_float("weight_decay", 1e-5, 0.1),
            "num_layers": t.suggest_int("num_layers", 1, 5),
            "max_units": t.suggest_int("max_units", 64, 1024, log=True),
            "max_dropout": t.suggest_float("max_dropout", 0.0, 1.0),
        }
        return t, config

    def report(self, t, epoch, value):
        t.report(value, epoch)
        if epoch >= EPOCHS:
            self.study.tell(t, value)
            return False
        if self.pruning and t.should_prune():
            self.study.tell(t, state=self.optuna.trial.TrialState.PRUNED)
            return False
        return True


class SyneTunePolicy:
    def __init__(self, opts, seed):
        import numpy as np
        from datetime import datetime

        from syne_tune.backend.trial_status import Trial
        from syne_tune.config_space import loguniform, lograndint, randint, uniform
        from syne_tune.optimizer.baselines import ASHA, BOHB
        from syne_tune.optimizer.scheduler import SchedulerDecision

        np.random.seed(seed)  # ASHA draws brackets from numpy's global generator
        space = {
            "batch_size": lograndint(16, 512),
            "learning_rate": loguniform(1e-4, 0.1),
            "momentum": uniform(0.1, 0.99),
            "weight_decay": uniform(1e-5, 0.1),
            "num_layers": randint(1, 5),
            "max_units": lograndint(64, 1024),
            "max_dropout": uniform(0.0, 1.0),
        }
        cls = ASHA if opts["scheduler"] == "asha" else BOHB
        self.scheduler = cls(
            space, metric=METRIC, time_attr="epoch", max_t=EPOCHS, do_minimize=True,
            random_seed=seed, grace_period=opts["grace"], reduction_factor=3,
        )
        self.Trial, self.datetime, self.STOP = Trial, datetime, SchedulerDecision.STOP
        self.next_id = 0

    def new_trial(self):
        suggestion = self.scheduler.suggest()
        if suggestion is None:
            return None
        trial = self.Trial(trial_id=self.next_id, config=suggestion.config, creation_time=self.datetime.now())
        self.next_id += 1
        self.scheduler.on_trial_add(trial)
        return trial, suggestion.config

    def report(self, trial, epoch, value):
        result = {"epoch": epoch, METRIC: value}
        decision = self.scheduler.on_trial_result(trial, result)
        if epoch >= EPOCHS:
            self.scheduler.on_trial_complete(trial, result)
            return False
        return decision != self.STOP


def run_anchor(family, opts, task, seed, workers, budget_epochs, surrogate=None):
    import logging
    import warnings

    logging.disable(logging.WARNING)
    warnings.simplefilter("ignore")
    surrogate = surrogate or Surrogate(task)
    policy = OptunaPolicy(opts, task, seed) if family == "optuna" else SyneTunePolicy(opts, seed)
    return simulate(policy, surrogate, workers, budget_epochs)


# ---------------------------------------------------------------------------------------------
# Scoring


def incumbents(trace, budget_epochs):
    """Best full-fidelity value after each budget fraction (None before any full run)."""
    out, best, spent, k = [], None, 0, 0
    marks = [f * budget_epochs for f in FRACTIONS]
    for _, epoch, value in sorted(trace, key=lambda x: x[0]):
        if spent >= budget_epochs:
            break
        spent += 1
        if epoch == EPOCHS and (best is None or value < best):
            best = value
        while k < len(marks) and spent >= marks[k]:
            out.append(best)
            k += 1
    while len(out) < len(FRACTIONS):
        out.append(best)  # the run ended before the budget: its final incumbent
    return out


def job(args):
    method, task, seed, workers, budget_epochs, rtune, workdir = args
    family, opts = METHODS[method]
    started = time.time()
    try:
        if family == "rtune":
            trace = run_rtune(opts, task, seed, workers, budget_epochs, rtune, workdir)
        else:
            trace = run_anchor(family, opts, task, seed, workers, budget_epochs)
        error = None
    except Exception as e:  # reported in the results, never silently dropped
        trace, error = [], f"{type(e).__name__}: {e}"
    return {
        "method": method, "task": task, "seed": seed, "workers": workers,
        "incumbents": incumbents(trace, budget_epochs) if trace else None,
        "epochs": len(trace), "seconds": time.time() - started, "error": error,
        "budget_epochs": budget_epochs,
    }


def quartiles(values):
    v = sorted(values)
    if not v:
        return (math.nan,) * 3

    def q(p):
        x = p * (len(v) - 1)
        lo, hi = math.floor(x), math.ceil(x)
        a, b = v[lo], v[hi]
        if math.isinf(a) or math.isinf(b):
            return a if x - lo < 0.5 else b
        return a + (b - a) * (x - lo)

    return q(0.25), q(0.5), q(0.75)


def fmt(x):
    return "n/a" if (x is None or math.isnan(x) or math.isinf(x)) else f"{x:.3f}"


def report(results, methods, workers_list, regret):
    """(regret table, goal check, {(method, workers): [(q1, median, q3) per budget point]}) of
    `results`."""
    lines = []
    header = "| method | workers | " + " | ".join(f"{int(f * 100)}%" for f in FRACTIONS) + " | runs (errors) |"
    lines += [header, "|" + "---|" * (len(FRACTIONS) + 3)]
    summary = {}
    for w in workers_list:
        for m in methods:
            runs = [r for r in results if r["method"] == m and r["workers"] == w]
            ok = [r for r in runs if not r["error"]]
            errors = len(runs) - len(ok)
            if not ok:
                continue
            cells = []
            for k in range(len(FRACTIONS)):
                q1, med, q3 = quartiles([regret(r, k) for r in ok])
                summary.setdefault((m, w), []).append((q1, med, q3))
                cells.append(f"{fmt(med)} [{fmt(q1)}, {fmt(q3)}]")
            lines.append(f"| {m} | {w} | " + " | ".join(cells) + f" | {len(ok)} ({errors}) |")

    # The goal, instance by instance (an instance: task x seed x workers): is an rtune
    # method's incumbent at least as good as the best of the TPE/ASHA/BOHB anchors at every
    # budget point? Ties count as good; a missing full-fidelity result is infinitely bad. Then,
    # where Optuna's GPSampler ran, the median regret at 50% and 100% of the two, on the same
    # instances.
    by_key = {(r["method"], r["task"], r["seed"], r["workers"]): r
              for r in results if not r["error"] and r["incumbents"]}
    instances = sorted({k[1:] for k in by_key})
    anchors = [a for a in GOAL_ANCHORS if a in methods]

    def value(method, inst, k):
        r = by_key.get((method,) + inst)
        v = r["incumbents"][k] if r else None
        return math.inf if v is None else v

    goal = []
    if anchors:
        goal += [f"Goal check against the best of {', '.join(anchors)}: instances (task x seed x "
                 "workers) where the rtune method's incumbent is at least as good at every budget point, "
                 "and at each one:", "",
                 "| rtune method | at every budget point | " + " | ".join(f"{int(f * 100)}%" for f in FRACTIONS) + " |",
                 "|---|---|" + "---|" * len(FRACTIONS)]
        for m in methods:
            if not m.startswith("rtune"):
                continue
            complete = [i for i in instances
                        if (m,) + i in by_key and all((a,) + i in by_key for a in anchors)]
            if not complete:
                continue
            per_point = [sum(value(m, i, k) <= min(value(a, i, k) for a in anchors) for i in complete)
                         for k in range(len(FRACTIONS))]
            every = sum(all(value(m, i, k) <= min(value(a, i, k) for a in anchors)
                            for k in range(len(FRACTIONS))) for i in complete)
            share = 100 * every / len(complete)
            goal.append(f"| {m} | {every} of {len(complete)} ({share:.0f}%) | "
                        + " | ".join(f"{n} of {len(complete)}" for n in per_point) + " |")
    if GP_ANCHOR in methods:
        goal += ["", f"Median normalised regret at 50% and 100% on the instances where {GP_ANCHOR} ran:", "",
                 "| method | instances | 50% | 100% |", "|---|---|---|---|"]
        gp_instances = [i for i in instances if (GP_ANCHOR,) + i in by_key]
        for m in [m for m in methods if m.startswith("rtune")] + [GP_ANCHOR]:
            shared = [i for i in gp_instances if (m,) + i in by_key]
            if not shared:
                continue
            cells = [fmt(quartiles([regret(by_key[(m,) + i], k) for i in shared])[1]) for k in (2, 3)]
            goal.append(f"| {m} | {len(shared)} | " + " | ".join(cells) + " |")
    return "\n".join(lines), "\n".join(goal), summary


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rtune", default=str(ROOT / "target" / "release" / "rtune"))
    p.add_argument("--rtune-bench", default=str(ROOT / "target" / "release" / "rtune-bench"))
    p.add_argument("--tasks", default="all",
                   help="all (lcbench's 34), tuning or held-out (the fixed halves, see task_halves), "
                        "or task ids separated by commas")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--workers", default="1")
    p.add_argument("--budget", type=float, default=200, help="full-training equivalents (x 52 epochs)")
    p.add_argument("--methods", default=",".join(DEFAULT_METHODS),
                   help="comma-separated; 'Optuna GP' needs torch in the venv")
    p.add_argument("--optimum-samples", type=int, default=20000)
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    p.add_argument("--out", default=str(ROOT / "target" / "bench-search"))
    p.add_argument("--reuse", action="store_true", help="keep successful runs from an earlier --out")
    p.add_argument("--runs-only", action="store_true", help="only run, no reference optima or table")
    p.add_argument("--table-only", action="store_true",
                   help="with --reuse: no new runs, the table from the runs there")
    p.add_argument("--include-runs", default="",
                   help="runs.json files of other --out directories to count as done (with --reuse), "
                        "comma-separated")
    args = p.parse_args()

    tasks = parse_tasks(args.tasks)
    workers_list = [int(w) for w in args.workers.split(",") if w]
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    for m in methods:
        if m not in METHODS:
            sys.exit(f"--methods: unknown method {m!r}; known: {', '.join(METHODS)}")
    budget_epochs = int(round(args.budget * EPOCHS))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    jobs = [(m, t, s, w, budget_epochs, args.rtune, str(out))
            for w in workers_list for t in tasks for s in range(args.seeds) for m in methods]
    # --reuse: keep the runs of an earlier invocation (same out dir and budget) that succeeded.
    # The out dir's runs outside this selection (other tasks, methods, seeds, workers, budgets)
    # stay in its runs.json, so a grid can be run a part at a time into one directory.
    results = []
    others = []
    runs_file = out / "runs.json"
    sources = [runs_file] + [Path(f) for f in args.include_runs.split(",") if f]
    if args.reuse and any(f.exists() for f in sources):
        done = {(r["method"], r["task"], r["seed"], r["workers"]): r
                for f in sources if f.exists() for r in json.loads(f.read_text())
                if not r["error"] and r.get("budget_epochs") == budget_epochs}
        selection = {tuple(j[:4]) for j in jobs}
        if runs_file.exists():
            others = [r for r in json.loads(runs_file.read_text())
                      if (r["method"], r["task"], r["seed"], r["workers"]) not in selection
                      or r.get("budget_epochs") != budget_epochs]
        results = [done[(m, t, s, w)] for (m, t, s, w, *_rest) in jobs if (m, t, s, w) in done]
        jobs = [j for j in jobs if tuple(j[:4]) not in done]
        print(f"reusing {len(results)} runs from {', '.join(str(f) for f in sources)}")
    if args.table_only:
        jobs = []
    print(f"{len(jobs)} runs: {len(methods)} methods x {len(tasks)} tasks x {args.seeds} seeds x "
          f"workers {workers_list}, budget {args.budget:g} full trainings ({budget_epochs} epochs), "
          f"{args.jobs} at once", flush=True)
    started = time.time()
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        for i, r in enumerate(pool.map(job, jobs), 1):
            results.append(r)
            runs_file.write_text(json.dumps(others + results, indent=1))  # so an interrupted run can --reuse
            if r["error"]:
                print(f"  ERROR {r['method']} task {r['task']} seed {r['seed']} w{r['workers']}: {r['error']}", flush=True)
            if i % 10 == 0 or i == len(jobs):
                print(f"  {i}/{len(jobs)} runs done ({time.time() - started:.0f} s)", flush=True)
    (out / "runs.json").write_text(json.dumps(others + results, indent=1))
    if args.runs_only:
        return

    # Reference optima (cached per task and sample count).
    refs = {}
    for task in tasks:
        cache = out / f"optimum-{task}-{args.optimum_samples}.json"
        if not cache.exists():
            print(f"reference optimum of task {task} ({args.optimum_samples} random configs + local search)", flush=True)
            text = subprocess.run(
                [args.rtune_bench, "optimum", "--task", task, "--samples", str(args.optimum_samples)],
                check=True, capture_output=True, text=True,
            ).stdout
            cache.write_text(text)
        refs[task] = json.loads(cache.read_text())


    # Normalised regret per run and budget point; a run without a full-fidelity result yet
    # counts as infinitely bad (it ranks last; a median that is infinite shows as n/a).
    def regret(r, k):
        ref = refs[r["task"]]
        inc = r["incumbents"][k] if r["incumbents"] else None
        if inc is None:
            return math.inf
        return (inc - ref["optimum"]) / (ref["median_random"] - ref["optimum"])

    # The tables, for each half of the tasks on its own (the held-out half first: the figures a
    # new task gets), then for all of them together when both halves ran.
    tuning, held_out = task_halves()
    groups = [(name, [t for t in tasks if t in half]) for name, half in
              (("held-out half", held_out), ("tuning half", tuning))]
    groups = [g for g in groups if g[1]]
    if len(groups) > 1:
        groups.append(("all tasks", tasks))
    summary, text = {}, []
    for name, group in groups:
        part = [r for r in results if r["task"] in group]
        table, goal, medians = report(part, methods, workers_list, regret)
        summary[name] = medians
        text += [f"## {name}: {len(group)} tasks ({', '.join(group)})", "",
                 "Normalised regret of val_cross_entropy at epoch 52: median [quartiles] over tasks x "
                 "seeds, at 10/25/50/100% of the budget (0 = reference optimum, 1 = median random "
                 "config)", "", table, "", goal, ""]
    print()
    print("\n".join(text))
    (out / "table.md").write_text("\n".join(text) + "\n")

    # Per-task raw medians (val_cross_entropy at 25/50/100%), for comparison with the issue.
    raw = ["| task | method | workers | 25% | 50% | 100% |", "|---|---|---|---|---|---|"]
    for t in tasks:
        for w in workers_list:
            for m in methods:
                ok = [r for r in results if r["method"] == m and r["workers"] == w and r["task"] == t
                      and not r["error"] and r["incumbents"]]
                cells = []
                for k in (1, 2, 3):
                    vals = [r["incumbents"][k] if r["incumbents"][k] is not None else math.inf for r in ok]
                    cells.append(fmt(quartiles(vals)[1]))
                raw.append(f"| {t} | {m} | {w} | " + " | ".join(cells) + " |")
    (out / "per-task.md").write_text("\n".join(raw) + "\n")
    summary = summary[groups[0][0]]

    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, len(workers_list), figsize=(6 * len(workers_list), 4.5), squeeze=False)
        xs = [100 * f for f in FRACTIONS]
        for ax, w in zip(axes[0], workers_list):
            for m in methods:
                if (m, w) not in summary:
                    continue
                q = summary[(m, w)]
                med = [x[1] if math.isfinite(x[1]) else math.nan for x in q]
                lo = [x[0] if math.isfinite(x[0]) else math.nan for x in q]
                hi = [x[2] if math.isfinite(x[2]) else math.nan for x in q]
                style = "-" if m.startswith("rtune") else "--"
                line, = ax.plot(xs, med, style, marker="o", label=m)
                ax.fill_between(xs, lo, hi, alpha=0.12, color=line.get_color())
            ax.set_yscale("log")
            ax.set_xlabel("% of budget")
            ax.set_ylabel("normalised regret (median, quartiles)")
            ax.set_title(f"lcbench, {groups[0][0]}, {w} worker(s)")
            ax.grid(True, which="both", alpha=0.3)
        axes[0][-1].legend(fontsize=7, loc="upper right")
        fig.tight_layout()
        for ext in ("svg", "png"):
            fig.savefig(out / f"regret.{ext}")
        print(f"\nplot: {out / 'regret.svg'} and regret.png")
    except ImportError:
        print("matplotlib is not installed: no plot")
    print(f"tables and goal checks: {out / 'table.md'}, per task: {out / 'per-task.md'}, "
          f"runs: {out / 'runs.json'}")


if __name__ == "__main__":
    main()
