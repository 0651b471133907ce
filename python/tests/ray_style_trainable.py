"""A Ray Tune function trainable, unchanged but for its imports (test_ray_compat.py runs it)."""

import json
import os
import tempfile

# from ray import tune, train
# from ray.train import Checkpoint
from rtune.ray import Checkpoint, train, tune


def trainable(config):
    x, start = config["x0"], 0
    checkpoint = train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as d:
            with open(os.path.join(d, "state.json")) as f:
                state = json.load(f)
            x, start = state["x"], state["step"]
    ctx = train.get_context()
    for step in range(start, 6):
        x -= config["lr"] * 2 * x
        with tempfile.TemporaryDirectory() as d:
            with open(os.path.join(d, "state.json"), "w") as f:
                json.dump({"x": x, "step": step + 1}, f)
            train.report({"loss": x * x, "step": step + 1, "trial": ctx.get_trial_id(),
                          "resumed_at": start},
                         checkpoint=Checkpoint.from_directory(d))


if __name__ == "__main__":
    tuner = tune.Tuner(
        trainable,
        param_space={"lr": tune.loguniform(1e-3, 0.5), "x0": tune.choice([1.0, 2.0])},
        tune_config=tune.TuneConfig(metric="loss", mode="min", num_samples=4,
                                    scheduler=tune.schedulers.PopulationBasedTraining()),
    )
    tuner.fit()
