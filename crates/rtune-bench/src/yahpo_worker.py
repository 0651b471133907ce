"""rtune's YAHPO Gym worker: answers rtune's benchmark protocol (one JSON request per line on
stdin, one JSON answer per line on stdout; docs/experiment-file.md, "Your own benchmark") with
yahpo_gym's surrogate of one scenario and instance.

rtune runs it as `python -c <this source> --scenario S --data-path DIR [--instance I]
[--iterations N]` with `executor.benchmark = "yahpo"`. Iteration i of N is the scenario's first
fidelity parameter at i/N of its range (an integer fidelity such as lcbench's `epoch` 1..52 gets
N = its upper bound by default, so iteration i is epoch i; others get N = 20); further fidelity
parameters stay at their upper bounds. Each step reports every target of the scenario plus the
fidelity value, and takes the scenario's runtime target as its elapsed time (1 s per iteration
where the scenario has none).
"""

import argparse
import json
import os
import sys
import tempfile


def answer(out, value):
    out.write(json.dumps(value) + "\n")
    out.flush()


def setup(args):
    """(bench, fidelity name, value of iteration i, fixed values, iterations) or raises."""
    os.environ.setdefault(
        "YAHPO_LOCAL_CONFIG", os.path.join(tempfile.gettempdir(), f"rtune-yahpo-{os.getuid()}.yaml")
    )
    try:
        import ConfigSpace as CS
        from yahpo_gym import benchmark_set, local_config
    except ImportError as e:
        raise RuntimeError(
            f"cannot import yahpo_gym ({e}) with {sys.executable}: set executor.python to an "
            "interpreter that has it (pip install yahpo-gym; benchmarks/yahpo/requirements.txt)"
        ) from None
    if not os.path.isdir(os.path.join(args.data_path, args.scenario)):
        raise RuntimeError(
            f"executor.data_path: {args.data_path} has no directory {args.scenario!r} with the "
            "scenario's surrogate (YAHPO Gym's yahpo_data; rtune ships lcbench's in benchmarks/yahpo)"
        )
    local_config.init_config()
    local_config.set_data_path(args.data_path)
    bench = benchmark_set.BenchmarkSet(
        args.scenario, instance=args.instance, check=False, multithread=False
    )
    if args.instance is None and bench.config.instance_names:
        raise RuntimeError(
            f"executor.instance: scenario {args.scenario} needs an instance, one of "
            + ", ".join(str(i) for i in bench.instances[:20])
            + (" ..." if len(bench.instances) > 20 else "")
        )
    space = bench.get_fidelity_space()
    names = bench.config.fidelity_params
    first = space.get_hyperparameter(names[0])
    integer = isinstance(first, CS.UniformIntegerHyperparameter)
    lower, upper = first.lower, first.upper
    iterations = args.iterations or (int(upper) if integer and lower >= 1 and upper <= 100000 else 20)

    def value(i):
        v = upper * i / iterations
        return max(lower, int(round(v))) if integer else max(lower, v)

    fixed = {n: space.get_hyperparameter(n).upper for n in names[1:]}
    if bench.config.instance_names:
        fixed[bench.config.instance_names] = bench.instance
    return CS, bench, names[0], value, fixed, iterations


def main():
    p = argparse.ArgumentParser(prog="rtune-yahpo-worker")
    p.add_argument("--scenario", required=True)
    p.add_argument("--data-path", required=True)
    p.add_argument("--instance")
    p.add_argument("--iterations", type=int)
    args = p.parse_args()
    out = sys.stdout
    # yahpo_gym prints citations: nothing but answers may reach rtune.
    sys.stdout = sys.stderr
    try:
        CS, bench, fidelity, value, fixed, iterations = setup(args)
        error = None
    except Exception as e:  # answered to rtune, which names the setting
        error = str(e)
    for line in sys.stdin:
        if not line.strip():
            continue
        request = json.loads(line)
        if error is not None:
            answer(out, {"error": error})
            continue
        if request.get("op") == "describe":
            answer(out, {
                "max_iterations": iterations,
                "description": f"YAHPO Gym {args.scenario}"
                + (f" instance {args.instance}" if args.instance else ""),
            })
            continue
        config = dict(request["config"])
        rows = []
        for i in range(int(request["from"]), int(request["to"]) + 1):
            row = {**config, **fixed, fidelity: value(i)}
            rows.append(row)
        try:
            bench.config_space.check_configuration(CS.Configuration(bench.config_space, values=rows[-1]))
        except Exception as e:
            answer(out, {"error": f"the config does not fit scenario {args.scenario}: {e}"})
            continue
        results = bench.objective_function(rows, multithread=False)
        runtime = bench.config.runtime_name
        steps = []
        for i, (row, result) in enumerate(zip(rows, results), int(request["from"])):
            metrics = {k: float(v) for k, v in result.items()}
            metrics[fidelity] = row[fidelity]
            elapsed = metrics.get(runtime, float(i)) if runtime else float(i)
            steps.append({"elapsed_s": max(0.0, elapsed), "metrics": metrics})
        answer(out, {"steps": steps})


if __name__ == "__main__":
    main()
