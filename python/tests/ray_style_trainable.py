"""A Ray Tune script with a function trainable, unchanged but for its imports
(test_ray_compat.py runs it with python, as with Ray: it is the driver)."""

import json
import os
import sys
import tempfile

# from ray import train, tune
# from ray.train import Checkpoint, RunConfig
# from ray.tune.schedulers import PopulationBasedTraining
from rtune.ray import train, tune
from rtune.ray.train import Checkpoint, RunConfig
from rtune.ray.tune.schedulers import PopulationBasedTraining


def trainable(config, steps):
    x, start = config["x0"], 0
    checkpoint = train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as d:
            with open(os.path.join(d, "state.json")) as f:
                state = json.load(f)
            x, start = state["x"], state["step"]
    ctx = train.get_context()
    for step in range(start, steps):
        x -= config["lr"] * 2 * x
        with tempfile.TemporaryDirectory() as d:
            with open(os.path.join(d, "state.json"), "w") as f:
                json.dump({"x": x, "step": step + 1}, f)
            train.report({"loss": x * x, "step": step + 1, "trial": ctx.get_trial_id(),
                          "resumed_at": start, "cwd": os.getcwd(),
                          "orig": os.environ["TUNE_ORIG_WORKING_DIR"]},
                         checkpoint=Checkpoint.from_directory(d))


tuner = tune.Tuner(
    tune.with_resources(tune.with_parameters(trainable, steps=6), {"cpu": 1}),
    param_space={"lr": tune.loguniform(0.01, 0.4), "x0": tune.choice([1.0, 2.0])},
    tune_config=tune.TuneConfig(
        metric="loss", mode="min", num_samples=4, max_concurrent_trials=2,
        # Synchronous, so trials pause at the barrier and restore from their checkpoints
        # whatever the timing of the trial processes.
        scheduler=PopulationBasedTraining(time_attr="training_iteration",
                                          perturbation_interval=2, synch=True)),
    run_config=RunConfig(name="ray-style", storage_path=sys.argv[1]),
)
results = tuner.fit()
print("RESULT", json.dumps({"path": results.experiment_path, "errors": results.num_errors,
                            "best": results.get_best_result().config}))
