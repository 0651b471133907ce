"""A PyTorch Lightning trial for test_lightning.py: linear regression, one validation per epoch,
RtuneLightningCallback, and a record of the learning rate of every optimizer step."""

import json
import os

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

import rtune
from rtune.lightning import RtuneLightningCallback


class Model(pl.LightningModule):
    def __init__(self, lr: float, wd: float) -> None:
        super().__init__()
        self.lr, self.wd = lr, wd
        self.net = torch.nn.Linear(4, 1)

    def training_step(self, batch, _):
        x, y = batch
        return torch.nn.functional.mse_loss(self.net(x), y)

    def validation_step(self, batch, _):
        x, y = batch
        self.log("val_loss", torch.nn.functional.mse_loss(self.net(x), y))

    def configure_optimizers(self):
        opt = torch.optim.AdamW(self.parameters(), lr=self.lr, weight_decay=self.wd)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0 / (1.0 + 0.01 * step))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def on_train_batch_start(self, batch, batch_idx):
        opt = self.trainer.optimizers[0]
        with open(os.path.join(os.environ["RTUNE_TRIAL_DIR"], "lr_trace.jsonl"), "a") as f:
            f.write(json.dumps({"run": int(os.environ["RTUNE_RUN"]), "step": self.trainer.global_step,
                                "epoch": self.trainer.current_epoch,
                                "lr": [g["lr"] for g in opt.param_groups],
                                "weight_decay": [g["weight_decay"] for g in opt.param_groups],
                                "restore_dir": os.environ.get("RTUNE_RESTORE_DIR"),
                                "config": rtune.config}) + "\n")


def main() -> None:
    config = rtune.config
    torch.manual_seed(0)
    x = torch.randn(64, 4)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]]) + 0.1 * torch.randn(64, 1)
    bs = int(config["bs"])
    train = DataLoader(TensorDataset(x[:48], y[:48]), batch_size=bs)
    val = DataLoader(TensorDataset(x[48:], y[48:]), batch_size=16)
    callback = RtuneLightningCallback()
    trainer = pl.Trainer(max_epochs=4, callbacks=[callback], accelerator="cpu", devices=1,
                         logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(Model(config["lr"], config["wd"]), train, val, ckpt_path=callback.ckpt_path)


if __name__ == "__main__":
    main()
