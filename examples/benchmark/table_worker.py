"""A tabular benchmark for rtune's simulator: learning curves read from a CSV table, answered
over rtune's benchmark protocol (JSON lines on stdin/stdout; docs/experiment-file.md, "Your own
benchmark"). Standard library only.

    python3 table_worker.py TABLE.csv --params lr,width [--iteration epoch] [--time elapsed_s]

Each row of the table is one iteration of one config: the columns named by --params hold the
config, --iteration the iteration (1, 2, ...), --time the seconds of training up to the end of
that iteration (optional: without it each iteration takes one second), and every other column is
a metric the trial reports. Every config needs the same iterations 1..N. A trial's config must be
one of the table's (search over `choice` domains of the table's values).
"""

import argparse
import csv
import json
import sys


def number(text):
    try:
        value = float(text)
    except ValueError:
        return text
    return int(value) if value.is_integer() and "." not in text and "e" not in text.lower() else value


def main():
    p = argparse.ArgumentParser()
    p.add_argument("table")
    p.add_argument("--params", required=True, help="the config's columns, comma-separated")
    p.add_argument("--iteration", default="epoch")
    p.add_argument("--time", default=None)
    args = p.parse_args()
    params = [c for c in args.params.split(",") if c]
    curves = {}
    with open(args.table, newline="") as f:
        for row in csv.DictReader(f):
            key = tuple(number(row[c]) for c in params)
            step = {"iteration": int(row[args.iteration]), "elapsed_s": None, "metrics": {}}
            for column, text in row.items():
                if column in params:
                    continue
                if column == args.time:
                    step["elapsed_s"] = float(text)
                else:
                    step["metrics"][column] = number(text)
            curves.setdefault(key, []).append(step)
    lengths = {len(c) for c in curves.values()}
    if len(lengths) != 1:
        sys.exit(f"{args.table}: every config needs the same iterations, found {sorted(lengths)}")
    max_iterations = lengths.pop()
    for curve in curves.values():
        curve.sort(key=lambda s: s["iteration"])
    values = {c: sorted({k[i] for k in curves}, key=lambda v: (isinstance(v, str), v))
              for i, c in enumerate(params)}
    for line in sys.stdin:
        request = json.loads(line)
        if request["op"] == "describe":
            print(json.dumps({
                "max_iterations": max_iterations,
                "description": f"table {args.table} ({len(curves)} configs)",
                "space": {c: {"choice": values[c]} for c in params},
            }), flush=True)
            continue
        config = request["config"]
        missing = [c for c in params if c not in config]
        key = tuple(config.get(c) for c in params)
        if missing or key not in curves:
            print(json.dumps({"error": f"no row of {args.table} has the config {config} "
                              f"(its values: {values})"}), flush=True)
            continue
        steps = []
        for i in range(request["from"], request["to"] + 1):
            step = curves[key][i - 1]
            elapsed = step["elapsed_s"] if step["elapsed_s"] is not None else float(i)
            steps.append({"elapsed_s": elapsed, "metrics": step["metrics"]})
        print(json.dumps({"steps": steps}), flush=True)


if __name__ == "__main__":
    main()
