#!/usr/bin/env python3
"""Write a synthetic finished experiment directory in rtune's file formats
(docs/file-formats.md), for measuring the dashboard with many trials:

    scripts/gen-big-experiment.py OUT_DIR [--trials 10000] [--iterations 100] [--seed 0]

Each trial has a loguniform `lr`, a `batch` choice and a `wd` choice; its eval_loss curve decays
towards a floor set by the parameters, with seeded noise. About a third of the trials are
stopped early by "ASHA" at rungs 1, 3, 9, 27 and 81 (with decisions.jsonl lines), so the files
look like a real ASHA run's.
"""
import argparse
import json
import math
import os
import random


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out")
    ap.add_argument("--trials", type=int, default=10000)
    ap.add_argument("--iterations", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    rng = random.Random(a.seed)
    os.makedirs(a.out, exist_ok=True)
    start = 1_760_000_000.0
    trials = []
    decisions = open(os.path.join(a.out, "decisions.jsonl"), "w")
    events = open(os.path.join(a.out, "events.jsonl"), "w")
    placements = {}
    slots = 32
    slot_free = [start] * slots
    for i in range(a.trials):
        lr = math.exp(rng.uniform(math.log(1e-5), math.log(1e-1)))
        batch = rng.choice([16, 32, 64, 128])
        wd = rng.choice([0.0, 0.01, 0.1])
        floor = 0.2 + 0.3 * (math.log10(lr) + 3) ** 2 / 4 + 0.05 * (batch / 128) + (0.1 if wd == 0.1 else 0.0)
        speed = 0.05 + 0.5 * rng.random()
        stop_at = a.iterations
        for rung in (1, 3, 9, 27, 81):
            if rung < a.iterations and rng.random() < 0.08:
                stop_at = rung
                break
        slot = min(range(slots), key=lambda s: slot_free[s])
        t0 = slot_free[slot]
        node, gpu = divmod(slot, 8)
        placements[f"{i:05d}"] = f"n{node + 1} cpu=2 gpus={gpu}"
        tdir = os.path.join(a.out, f"trial_{i:05d}")
        os.makedirs(tdir, exist_ok=True)
        config = {"lr": lr, "batch": batch, "wd": wd}
        with open(os.path.join(tdir, "params.json"), "w") as f:
            json.dump(config, f)
        events.write(json.dumps({"time": t0, "trial": f"{i:05d}", "event": "status", "status": "RUNNING", "reason": "started"}) + "\n")
        events.write(json.dumps({"time": t0, "trial": f"{i:05d}", "event": "placement", "run": 0,
                                 "placement": placements[f"{i:05d}"]}) + "\n")
        best = None
        lines = []
        for it in range(1, stop_at + 1):
            loss = floor + 2.0 * math.exp(-speed * it) + rng.gauss(0, 0.01)
            if best is None or loss < best[0]:
                best = (loss, it)
            lines.append(json.dumps({
                "eval_loss": round(loss, 6), "training_iteration": it, "time_total_s": round(it * 0.5, 3),
                "time_this_iter_s": 0.5, "timestamp": round(t0 + it * 0.5, 3), "trial_id": f"{i:05d}",
                "done": it == stop_at, "config": config,
            }))
        with open(os.path.join(tdir, "result.json"), "w") as f:
            f.write("\n".join(lines) + "\n")
        end = t0 + stop_at * 0.5
        slot_free[slot] = end
        if stop_at < a.iterations:
            decisions.write(json.dumps({
                "trial": i, "action": "stop", "reason": f"eval_loss {loss:.4f} is worse than the rung-{stop_at} cutoff",
                "details": {"rung": float(stop_at), "bracket": 0, "cutoff": -(loss - 0.01), "value": -loss, "recorded": 10},
                "time": end, "training_iteration": stop_at}) + "\n")
        events.write(json.dumps({"time": end, "trial": f"{i:05d}", "event": "status", "status": "TERMINATED",
                                 "reason": "stopped by the scheduler" if stop_at < a.iterations else "completed"}) + "\n")
        trials.append({"id": i, "config": config, "status": "TERMINATED", "tag": "", "iteration": stop_at,
                       "time_total_s": stop_at * 0.5, "last_result": None, "best": [best[0], best[1]],
                       "checkpoints": {}, "restore": None, "runs": 1, "failures": 0, "resumable": False,
                       "error": None, "ending": None})
    decisions.close()
    events.close()
    state = {"format": 1, "name": os.path.basename(os.path.abspath(a.out)), "status": "finished",
             "metric": "eval_loss", "mode": "min", "scheduler": "asha", "searcher": "random",
             "parameters": ["lr", "batch", "wd"], "total_trials": a.trials, "started_at": start,
             "finished_at": max(slot_free), "trials": trials, "placements": placements}
    with open(os.path.join(a.out, "experiment_state.json"), "w") as f:
        json.dump(state, f)
    with open(os.path.join(a.out, "experiment.toml"), "w") as f:
        f.write('# synthetic: written by scripts/gen-big-experiment.py\nname = "big"\nmetric = "eval_loss"\nmode = "min"\n')


if __name__ == "__main__":
    main()
