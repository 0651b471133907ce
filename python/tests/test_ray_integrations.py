"""rtune.ray's hooks for a Ray script that resumes PyTorch Lightning from rtune's restore
directory (the Hugging Face Trainer's are checked end to end by test_ray_seeds.py): the
restored run trains with its own learning rate, not the one saved in the checkpoint."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

pytest.importorskip("lightning")

SCRIPT = '''
import json, os, sys
import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from rtune.ray import _integrations

restore = os.environ["RTUNE_RESTORE_DIR"]
_integrations.install(restore)


class Model(pl.LightningModule):
    def __init__(self, lr):
        super().__init__()
        self.lr, self.net, self.seen = lr, torch.nn.Linear(4, 1), []

    def training_step(self, batch, _):
        x, y = batch
        return torch.nn.functional.mse_loss(self.net(x), y)

    def configure_optimizers(self):
        opt = torch.optim.AdamW(self.parameters(), lr=self.lr)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0 / (1.0 + step))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def on_train_batch_start(self, batch, batch_idx):
        self.seen.append([self.trainer.global_step, self.trainer.optimizers[0].param_groups[0]["lr"]])


def trainer(steps):
    return pl.Trainer(max_steps=steps, accelerator="cpu", devices=1, logger=False,
                      enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False)


torch.manual_seed(0)
data = DataLoader(TensorDataset(torch.randn(8, 4), torch.randn(8, 1)), batch_size=4)
donor = trainer(2)
donor.fit(Model(0.1), data)
donor.save_checkpoint(os.path.join(restore, "model.ckpt"))  # the donor's, lr 0.1
# The explored run: lr 0.01, resumed from the donor's checkpoint inside rtune's restore dir.
model = Model(0.01)
trainer(4).fit(model, data, ckpt_path=os.path.join(restore, "model.ckpt"))
print(json.dumps(model.seen))
'''


def test_lightning_resume_from_the_restore_dir_keeps_the_explored_lr(tmp_path: Path) -> None:
    restore = tmp_path / "restore"
    restore.mkdir()
    # A trial's environment; nothing contacts rtune (the hook only restores).
    env = {**os.environ, "PYTHONPATH": str(REPO / "python"), "RTUNE_ADDR": "127.0.0.1:9",
           "RTUNE_SECRET": "s", "RTUNE_TRIAL_ID": "00001", "RTUNE_RUN": "1",
           "RTUNE_TRIAL_DIR": str(tmp_path), "RTUNE_SCRATCH_DIR": str(tmp_path / "scratch"),
           "RTUNE_CONFIG": "{}", "RTUNE_RESTORE_DIR": str(restore),
           "RTUNE_RESTORE_ITERATION": "1"}
    done = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    # Steps 2 and 3 continue the donor's schedule (1 / (1 + step)) from this run's lr.
    assert [step for step, _ in seen] == [2, 3], seen
    for step, lr in seen:
        assert lr == pytest.approx(0.01 / (1 + step), rel=1e-9), seen
