"""Ray Tune's side of scripts/bench-head's overhead comparison: the same experiment as
rtune's (N trials that report 5 results each and do no work, ASHA with grace period 1, max_t 5,
reduction factor 2, two trials at a time), as a Ray Tune user writes it. Prints the wall time
of `Tuner.fit()` and of the whole script (Ray's start included), in seconds, as JSON.

    .venv-ray/bin/python scripts/bench_overhead_ray.py 100
"""

import json
import os
import sys
import tempfile
import time

START = time.time()

import ray  # noqa: E402
from ray import tune  # noqa: E402
from ray.tune.schedulers import ASHAScheduler  # noqa: E402


def trainable(config):
    # rtune-example's no-op: five results, no work, no checkpoint.
    for epoch in range(1, 6):
        tune.report({"eval_loss": config["lr"] / epoch, "epoch": epoch})


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 100
    storage = tempfile.mkdtemp(prefix="bench-ray-")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    tuner = tune.Tuner(
        tune.with_resources(trainable, {"cpu": 1}),
        param_space={
            "lr": tune.loguniform(5e-6, 2e-4),
            "per_device_bs": tune.choice([1, 2]),
            "wd": tune.choice([0.0, 0.01]),
        },
        tune_config=tune.TuneConfig(
            metric="eval_loss",
            mode="min",
            num_samples=n,
            max_concurrent_trials=2,
            scheduler=ASHAScheduler(grace_period=1, max_t=5, reduction_factor=2),
        ),
        run_config=tune.RunConfig(storage_path=storage, name="bench", verbose=0),
    )
    fit_start = time.time()
    results = tuner.fit()
    fit_s = time.time() - fit_start
    assert len(results) == n, len(results)
    ray.shutdown()
    print(json.dumps({"trials": n, "fit_s": fit_s, "total_s": time.time() - START}))
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
