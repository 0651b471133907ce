"""PyTorch + transformers counterpart of `rtune-train-lm bench`, for comparison figures.

Same shape and loop: BloomForCausalLM (default 2 layers, hidden 128, 4 heads, vocab 512),
random token batches of 8 x 128 with every position labelled, AdamW (lr 1e-3, wd 0.01), f32,
2 threads. `--precision bf16` runs the forward pass under CPU autocast in bfloat16 (f32
parameters and optimizer, as transformers' Trainer with `--bf16`). Usage:
  python3 pytorch_bloom_bench.py [--steps 100] [--threads 2] [--layers 2] [--hidden 128]
      [--heads 4] [--vocab 512] [--seq 128] [--batch 8] [--loss-every N] [--precision f32|bf16]
"""
import argparse, contextlib, resource, time
import torch
from transformers import BloomConfig, BloomForCausalLM

p = argparse.ArgumentParser()
p.add_argument("--steps", type=int, default=100)
p.add_argument("--warmup", type=int, default=5)
p.add_argument("--threads", type=int, default=2)
p.add_argument("--layers", type=int, default=2)
p.add_argument("--hidden", type=int, default=128)
p.add_argument("--heads", type=int, default=4)
p.add_argument("--vocab", type=int, default=512)
p.add_argument("--seq", type=int, default=128)
p.add_argument("--batch", type=int, default=8)
p.add_argument("--loss-every", type=int, default=0,
               help="print the loss of every N-th step (0: none)")
p.add_argument("--precision", choices=["f32", "bf16"], default="f32")
a = p.parse_args()
torch.set_num_threads(a.threads)
torch.manual_seed(0)
cfg = BloomConfig(vocab_size=a.vocab, hidden_size=a.hidden, n_layer=a.layers, n_head=a.heads)
model = BloomForCausalLM(cfg).train()
opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
B, S = a.batch, a.seq
for step in range(a.warmup + a.steps):
    if step == a.warmup:
        t0 = time.perf_counter()
    ids = torch.randint(0, a.vocab, (B, S))
    autocast = (torch.autocast("cpu", dtype=torch.bfloat16) if a.precision == "bf16"
                else contextlib.nullcontext())
    with autocast:
        loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    if a.loss_every and step % a.loss_every == 0:
        print(f"LOSS step={step} loss={loss.item():.4f}")
dt = time.perf_counter() - t0
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(f"RESULT pytorch {torch.__version__} precision={a.precision} "
      f"cpu_capability={torch.backends.cpu.get_cpu_capability()} steps={a.steps} "
      f"steps_per_s={a.steps/dt:.2f} "
      f"tokens_per_s={a.steps*B*S/dt:.0f} peak_rss_mib={rss:.1f}")
