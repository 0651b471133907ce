"""Evaluate lcbench configs with yahpo_gym + onnxruntime: the reference rtune-bench is tested against.

Usage: python reference.py IN.json OUT.json
IN.json: a list of objects {"task": "3945", "epoch": 1, "batch_size": 16, "learning_rate": ...,
"momentum": ..., "weight_decay": ..., "num_layers": ..., "max_units": ..., "max_dropout": ...}.
OUT.json: a list of objects with lcbench's six objectives, in the same order.
The YAHPO data path is this script's folder (it holds lcbench/); set YAHPO_LOCAL_CONFIG to a
writable file so yahpo_gym does not write its settings into the home directory.
"""

import json
import os
import sys
from collections import defaultdict
from pathlib import Path


def main():
    if len(sys.argv) != 3:
        sys.exit("usage: reference.py IN.json OUT.json")
    if "YAHPO_LOCAL_CONFIG" not in os.environ:
        sys.exit("set YAHPO_LOCAL_CONFIG to a writable settings file (yahpo_gym writes it)")
    from yahpo_gym import benchmark_set, local_config

    local_config.init_config()
    local_config.set_data_path(str(Path(__file__).resolve().parent))
    configs = json.loads(Path(sys.argv[1]).read_text())
    by_task = defaultdict(list)
    for index, config in enumerate(configs):
        by_task[str(config["task"])].append(index)
    out = [None] * len(configs)
    for task, indices in by_task.items():
        bench = benchmark_set.BenchmarkSet("lcbench", instance=task, check=False, multithread=False)
        batch = []
        for i in indices:
            c = dict(configs[i])
            c.pop("task")
            c["OpenML_task_id"] = task
            batch.append(c)
        results = bench.objective_function(batch, multithread=False)
        for i, result in zip(indices, results):
            out[i] = {k: float(v) for k, v in result.items()}
    Path(sys.argv[2]).write_text(json.dumps(out))


if __name__ == "__main__":
    main()
