"""PyTorch + transformers' Trainer side of scripts/bench-gpu (see there and docs/benchmarks.md).

Trains BloomForCausalLM, randomly initialised from a BloomConfig (nothing is downloaded), with
transformers' Trainer on random token sequences (every position labelled, the same data shape
as `rtune-train-lm bench`): AdamW, constant learning rate, no gradient clipping, mixed precision
as the Trainer does it (fp16: autocast + GradScaler over float32 master weights; bf16: autocast).
Times the optimizer steps after the warmup steps (CUDA synchronised) and prints one line:

  RESULT tokens_per_s=... steps_per_s=... peak_allocated_mib=... peak_reserved_mib=... last_loss=...

Usage: python bench_gpu.py --layers 24 --hidden 1024 --heads 16 --vocab 250880 --seq 384
           --batch 1 --precision fp16 --steps 10 --warmup 3 [--device cpu]
"""
import argparse
import tempfile
import time

import torch
from transformers import (BloomConfig, BloomForCausalLM, Trainer, TrainerCallback,
                          TrainingArguments)

p = argparse.ArgumentParser()
p.add_argument("--layers", type=int, default=24)
p.add_argument("--hidden", type=int, default=1024)
p.add_argument("--heads", type=int, default=16)
p.add_argument("--vocab", type=int, default=250880)
p.add_argument("--seq", type=int, default=384)
p.add_argument("--batch", type=int, default=1)
p.add_argument("--precision", choices=["f32", "fp16", "bf16"], default="fp16")
p.add_argument("--steps", type=int, default=10)
p.add_argument("--warmup", type=int, default=3)
p.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
a = p.parse_args()

torch.manual_seed(0)
cuda = a.device == "cuda"
config = BloomConfig(vocab_size=a.vocab, hidden_size=a.hidden, n_layer=a.layers, n_head=a.heads)
model = BloomForCausalLM(config)


class RandomTokens(torch.utils.data.Dataset):
    def __init__(self, count):
        g = torch.Generator().manual_seed(1)
        self.ids = torch.randint(0, a.vocab, (count, a.seq), generator=g)

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.ids[i],
                "attention_mask": torch.ones(a.seq, dtype=torch.long)}


class Timer(TrainerCallback):
    def __init__(self):
        self.start = None
        self.steps = 0

    def on_step_end(self, args, state, control, **kwargs):
        if cuda:
            torch.cuda.synchronize()
        if state.global_step == a.warmup:
            self.start = time.perf_counter()
        elif state.global_step > a.warmup:
            self.steps += 1
            self.end = time.perf_counter()

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.last_loss = logs["loss"]


total = a.warmup + a.steps
timer = Timer()
timer.last_loss = float("nan")
with tempfile.TemporaryDirectory() as out:
    args = TrainingArguments(
        output_dir=out,
        per_device_train_batch_size=a.batch,
        max_steps=total,
        learning_rate=1e-4,
        weight_decay=0.01,
        lr_scheduler_type="constant",
        max_grad_norm=0.0,
        optim="adamw_torch",
        fp16=a.precision == "fp16",
        bf16=a.precision == "bf16",
        use_cpu=not cuda,
        logging_steps=total,
        save_strategy="no",
        report_to=[],
        disable_tqdm=True,
        dataloader_num_workers=0,
        seed=0,
    )
    trainer = Trainer(model=model, args=args, train_dataset=RandomTokens(total * a.batch),
                      callbacks=[timer])
    trainer.train()
seconds = timer.end - timer.start
if cuda:
    allocated = torch.cuda.max_memory_allocated() / 2**20
    reserved = torch.cuda.max_memory_reserved() / 2**20
else:
    allocated = reserved = float("nan")
print(f"RESULT tokens_per_s={timer.steps * a.batch * a.seq / seconds:.0f} "
      f"steps_per_s={timer.steps / seconds:.3f} peak_allocated_mib={allocated:.0f} "
      f"peak_reserved_mib={reserved:.0f} last_loss={timer.last_loss} "
      f"torch={torch.__version__} precision={a.precision} batch={a.batch}")
