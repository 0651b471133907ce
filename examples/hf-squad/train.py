"""Fine-tune BLOOM on SQuAD-format question answering with the Hugging Face Trainer, under rtune.

The seeds' workload as a plain Trainer script: run it on its own, or let rtune tune it
(squad-asha.toml, squad-pbt.toml in this directory). Under rtune the trial's config (lr,
per_device_bs, wd) overrides the flags, each epoch's eval_loss is reported with a checkpoint, and
a run restarted from a checkpoint (pause, retry, PBT exploit) continues from it with its own
hyperparameters (rtune.hf.RtuneCallback).

    python examples/hf-squad/train.py --tiny --data data/squad-synthetic      # a quick CPU run
    python examples/hf-squad/train.py --model models/bloom-560m --data data/squad
    torchrun --nproc-per-node 2 examples/hf-squad/train.py --tiny ...         # what workers = 2 does

--tiny trains a random 2-layer BLOOM with a byte-level tokenizer (no download, CPU-friendly);
otherwise --model is a local directory with a BLOOM checkpoint and its tokenizer (for example
bigscience/bloom-560m, downloaded beforehand). --data holds train.json and dev.json in SQuAD v1.1
format, such as `rtune-train-lm gen-squad --out data/squad-synthetic` writes, or the real SQuAD
files renamed. --deepspeed CONFIG is passed to TrainingArguments (GPUs only; needs the
deepspeed package).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Dict, List

import torch
from transformers import (BloomConfig, BloomForCausalLM, Trainer, TrainerCallback,
                          TrainingArguments)

try:
    import rtune
    from rtune.hf import RtuneCallback
except ImportError:  # rtune not installed: the single-file client from rtune's repository
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "python"))
    import rtune_client as rtune  # type: ignore[no-redef]
    from rtune_client import RtuneCallback  # type: ignore[no-redef]


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="models/bloom-560m",
                   help="local BLOOM model directory (default: models/bloom-560m)")
    p.add_argument("--tiny", action="store_true",
                   help="a random 2-layer BLOOM with a byte tokenizer instead of --model")
    p.add_argument("--data", default="data/squad-synthetic",
                   help="directory with train.json and dev.json (SQuAD format)")
    p.add_argument("--train-samples", type=int, default=1000)
    p.add_argument("--eval-samples", type=int, default=100)
    p.add_argument("--max-length", type=int, default=128, help="tokens per example")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--lr", type=float, default=5e-5, help="learning rate (config: lr)")
    p.add_argument("--per-device-bs", type=int, default=2, help="batch size (config: per_device_bs)")
    p.add_argument("--wd", type=float, default=0.0, help="weight decay (config: wd)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output-dir", default=None,
                   help="the Trainer's output directory (default: the trial's directory)")
    p.add_argument("--deepspeed", default=None, metavar="CONFIG",
                   help="DeepSpeed config file, passed to TrainingArguments (GPUs only)")
    p.add_argument("--trace-lr", action="store_true",
                   help="append each optimizer step's learning rates and weight decays (every "
                        "param group) to lr_trace.jsonl in the output directory, to check what "
                        "the optimizer used")
    return p.parse_args()


class ByteTokenizer:
    """UTF-8 bytes as token ids (3..258), with pad 0, bos 1 and eos 2: no vocabulary file."""

    pad_token_id, bos_token_id, eos_token_id, vocab_size = 0, 1, 2, 259

    def encode(self, text: str) -> List[int]:
        return [b + 3 for b in text.encode("utf-8")]


class HfTokenizer:
    def __init__(self, path: str) -> None:
        from transformers import AutoTokenizer
        self.tok = AutoTokenizer.from_pretrained(path)
        self.pad_token_id = self.tok.pad_token_id if self.tok.pad_token_id is not None else 0
        self.eos_token_id = self.tok.eos_token_id

    def encode(self, text: str) -> List[int]:
        return list(self.tok(text, add_special_tokens=False)["input_ids"])


def load_squad(path: str, limit: int) -> List[Dict[str, str]]:
    """(context, question, first answer) triples from a SQuAD-format file."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        out = []
        for article in data["data"]:
            for paragraph in article["paragraphs"]:
                for qa in paragraph["qas"]:
                    if qa.get("answers"):
                        out.append({"context": paragraph["context"], "question": qa["question"],
                                    "answer": qa["answers"][0]["text"]})
    except (OSError, ValueError, KeyError, TypeError, IndexError) as e:
        sys.exit(f"{path}: cannot read SQuAD-format data: {e!r} (expected {{\"data\": "
                 "[{\"paragraphs\": [{\"context\", \"qas\": [{\"question\", \"answers\": "
                 "[{\"text\"}]}]}]}]})")
    if not out:
        sys.exit(f"{path}: no answered questions")
    return out[:limit]


def encode(examples: List[Dict[str, str]], tok: Any, max_length: int) -> List[Dict[str, List[int]]]:
    """Causal-LM examples: the prompt (context and question, truncated from the left) and the
    answer; the loss is on the answer tokens only."""
    out = []
    for ex in examples:
        prompt = tok.encode(f"Context: {ex['context']}\nQuestion: {ex['question']}\nAnswer:")
        answer = tok.encode(" " + ex["answer"])[: max_length // 2] + [tok.eos_token_id]
        prompt = prompt[-(max_length - len(answer)):]
        out.append({"input_ids": prompt + answer,
                    "labels": [-100] * len(prompt) + answer})
    return out


class Collate:
    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id

    def __call__(self, batch: List[Dict[str, List[int]]]) -> Dict[str, torch.Tensor]:
        width = max(len(b["input_ids"]) for b in batch)
        ids, labels, mask = [], [], []
        for b in batch:
            pad = width - len(b["input_ids"])
            ids.append(b["input_ids"] + [self.pad_id] * pad)
            labels.append(b["labels"] + [-100] * pad)
            mask.append([1] * len(b["input_ids"]) + [0] * pad)
        return {"input_ids": torch.tensor(ids), "labels": torch.tensor(labels),
                "attention_mask": torch.tensor(mask)}


class TraceLearningRate(TrainerCallback):  # type: ignore[misc]
    """--trace-lr: what the optimizer will use at each step, as JSON lines."""

    def __init__(self, path: str, config: Dict[str, Any]) -> None:
        self.path, self.config = path, config

    def on_step_begin(self, args: Any, state: Any, control: Any, optimizer: Any = None,
                      **kwargs: Any) -> None:
        if optimizer is None or not state.is_world_process_zero:
            return
        line = {"run": int(os.environ.get("RTUNE_RUN", "0")), "step": state.global_step,
                "epoch": state.epoch, "max_steps": state.max_steps,
                "lr": [g["lr"] for g in optimizer.param_groups],
                "weight_decay": [g.get("weight_decay") for g in optimizer.param_groups],
                "restore_dir": os.environ.get("RTUNE_RESTORE_DIR"), "config": self.config}
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(line) + "\n")


def main() -> None:
    args = parse_args()
    session = rtune.session()
    config = session.config if session else {}
    lr = float(config.get("lr", args.lr))
    bs = int(config.get("per_device_bs", args.per_device_bs))
    wd = float(config.get("wd", args.wd))
    torch.manual_seed(args.seed)

    if args.tiny:
        tok: Any = ByteTokenizer()
        model = BloomForCausalLM(BloomConfig(
            vocab_size=ByteTokenizer.vocab_size, hidden_size=64, n_layer=2, n_head=4,
            pad_token_id=0, bos_token_id=1, eos_token_id=2))
    else:
        if not os.path.isdir(args.model):
            sys.exit(f"--model {args.model}: no such directory (a local BLOOM checkpoint, such "
                     "as bigscience/bloom-560m downloaded beforehand; or --tiny)")
        tok = HfTokenizer(args.model)
        model = BloomForCausalLM.from_pretrained(args.model)
    train = encode(load_squad(os.path.join(args.data, "train.json"), args.train_samples), tok,
                   args.max_length)
    dev = encode(load_squad(os.path.join(args.data, "dev.json"), args.eval_samples), tok,
                 args.max_length)

    gpu = torch.cuda.is_available()
    output_dir = args.output_dir or os.path.join(
        os.environ.get("RTUNE_TRIAL_DIR", "."), "hf-output")
    training_args = TrainingArguments(
        output_dir=output_dir,
        num_train_epochs=args.epochs,
        learning_rate=lr,
        weight_decay=wd,
        per_device_train_batch_size=bs,
        per_device_eval_batch_size=8,
        eval_strategy="epoch",       # one evaluation per epoch: the iterations rtune counts
        logging_strategy="epoch",
        save_strategy="no",          # rtune's callback writes the checkpoints
        report_to=[],
        seed=args.seed,
        use_cpu=not gpu,
        # torch.distributed when started as one of several processes (rtune's workers, torchrun)
        ddp_backend=("nccl" if gpu else "gloo") if "LOCAL_RANK" in os.environ else None,
        dataloader_num_workers=0,
        disable_tqdm=True,
        deepspeed=args.deepspeed,
    )
    trainer = Trainer(model=model, args=training_args, train_dataset=train, eval_dataset=dev,
                      data_collator=Collate(tok.pad_token_id))
    # DeepSpeed saves checkpoints collectively, not from rank 0 alone: report metrics only then.
    callback = RtuneCallback(trainer, checkpoint=args.deepspeed is None)
    trainer.add_callback(callback)
    if args.trace_lr:
        os.makedirs(output_dir, exist_ok=True)
        trainer.add_callback(TraceLearningRate(os.path.join(output_dir, "lr_trace.jsonl"),
                                               {"lr": lr, "per_device_bs": bs, "wd": wd}))
    trainer.train(resume_from_checkpoint=callback.resume_from_checkpoint)
    if session is None:
        print(json.dumps(trainer.evaluate()))


if __name__ == "__main__":
    main()
