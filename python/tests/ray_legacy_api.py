"""A Ray Tune script in the older style: tune.run, tune.report(**metrics) and ray.air's session,
unchanged but for its imports (test_ray_compat.py)."""

import json
import sys

# import ray
# from ray import tune
# from ray.air import session
# from ray.tune.search import ConcurrencyLimiter
# from ray.tune.search.optuna import OptunaSearch
import rtune.ray as ray
from rtune.ray import tune
from rtune.ray.air import session
from rtune.ray.tune.search import ConcurrencyLimiter
from rtune.ray.tune.search.optuna import OptunaSearch

ray.init()


def objective(config):
    for step in range(3):
        if step == 0:
            tune.report(score=(config["a"] - 0.3) ** 2 + 1.0, who=session.get_trial_name())
        else:
            session.report({"score": (config["a"] - 0.3) ** 2 + 1.0 / (step + 1),
                            "who": session.get_trial_name()})


analysis = tune.run(objective, config={"a": tune.uniform(0.0, 1.0), "fixed": {"k": 3}},
                    metric="score", mode="min", num_samples=5, name="legacy",
                    storage_path=sys.argv[1],
                    search_alg=ConcurrencyLimiter(OptunaSearch(seed=7), max_concurrent=1))
print("RESULT", json.dumps({"best_config": analysis.best_config,
                            "best_result": analysis.best_result["score"],
                            "trials": len(analysis.trials)}))
