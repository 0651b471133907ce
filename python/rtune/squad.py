"""Synthetic SQuAD v1.1-format data for the examples (examples/hf-squad), without a download or a
Rust build: questions about made-up towns whose answers stand in the context.

    python -m rtune.squad --out data/squad-synthetic --train 1000 --eval 100 --seed 0

writes train.json and dev.json. The same kind of questions as `rtune-train-lm gen-squad`, from
another random generator: the same format, not the same examples."""

from __future__ import annotations

import argparse
import json
import os
import random
from typing import Any, Dict, List, Optional, Sequence

_TRADES = ("a salt merchant", "a miller", "a monk", "a shipwright", "a weaver", "a smith")
_GOODS = ("wool", "timber", "salt", "cheese", "glass", "copper", "wine", "paper")
_FEATURES = ("its stone bridge", "a tall clock tower", "its spring market", "an old abbey",
             "a lighthouse", "its rose gardens")


def _name(rng: random.Random, syllables: int) -> str:
    parts = [rng.choice("bcdfghklmnprstvz") + rng.choice("aeiou") + rng.choice(["", "n", "r", "l"])
             for _ in range(syllables)]
    return "".join(parts).title()


def synthetic_squad(count: int, seed: int, id_prefix: str = "q") -> Dict[str, Any]:
    """`count` answered questions in SQuAD v1.1 form, the same for the same seed."""
    rng = random.Random(seed)
    articles: List[Dict[str, Any]] = []
    made = 0
    while made < count:
        town, region, river = _name(rng, 2), _name(rng, 3), _name(rng, 2)
        founder = f"{_name(rng, 2)} {_name(rng, 2)}"
        year = str(rng.randrange(1100, 1950))
        export, feature = rng.choice(_GOODS), rng.choice(_FEATURES)
        context = (f"{town} is a town in the region of {region}, on the banks of the river "
                   f"{river}. It was founded in {year} by {founder}, {rng.choice(_TRADES)}. The "
                   f"town is known for {feature}, and its main export is {export}.")
        facts = [(f"Which river flows through {town}?", river),
                 (f"In which region is {town}?", region), (f"Who founded {town}?", founder),
                 (f"When was {town} founded?", year), (f"What does {town} export?", export)]
        qas = []
        for question, answer in facts[: count - made]:
            qas.append({"id": f"{id_prefix}{made}", "question": question,
                        "answers": [{"text": answer, "answer_start": context.index(answer)}]})
            made += 1
        articles.append({"title": town, "paragraphs": [{"context": context, "qas": qas}]})
    return {"version": "1.1", "data": articles}


def main(argv: Optional[Sequence[str]] = None) -> None:
    p = argparse.ArgumentParser(prog="python -m rtune.squad", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="directory for train.json and dev.json")
    p.add_argument("--train", type=int, default=1000, help="training questions (default 1000)")
    p.add_argument("--eval", type=int, default=100, help="evaluation questions (default 100)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    for flag, value in (("--train", args.train), ("--eval", args.eval)):
        if value < 1:
            p.error(f"{flag} {value}: give at least 1 question")
    os.makedirs(args.out, exist_ok=True)
    for name, count, seed, prefix in (("train.json", args.train, args.seed, "train"),
                                      ("dev.json", args.eval, args.seed + 1, "dev")):
        with open(os.path.join(args.out, name), "w", encoding="utf-8") as f:
            json.dump(synthetic_squad(count, seed, prefix), f)
    print(f"wrote {args.train} training and {args.eval} evaluation questions to {args.out}")


if __name__ == "__main__":
    main()
