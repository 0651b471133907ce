"""The PyTorch Lightning integration (imports lightning, or pytorch_lightning).

    from rtune.lightning import RtuneLightningCallback

    callback = RtuneLightningCallback()
    trainer = lightning.Trainer(max_epochs=5, callbacks=[callback])
    trainer.fit(model, datamodule=data, ckpt_path=callback.ckpt_path)
"""

from __future__ import annotations

from . import _client

RtuneLightningCallback = _client._make_lightning_class()

__all__ = ["RtuneLightningCallback"]
