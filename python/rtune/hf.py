"""The Hugging Face Trainer integration (imports transformers).

    from rtune.hf import RtuneCallback, training_arguments

    args = training_arguments(rtune.config, output_dir="out", eval_strategy="epoch", ...)
    trainer = Trainer(model=model, args=args, train_dataset=train, eval_dataset=val)
    callback = RtuneCallback(trainer)
    trainer.add_callback(callback)
    trainer.train(resume_from_checkpoint=callback.resume_from_checkpoint)

See RtuneCallback for what it reports and how it resumes under PBT.
"""

from __future__ import annotations

from . import _client
from ._client import training_arguments

RtuneCallback = _client._make_callback_class()

__all__ = ["RtuneCallback", "training_arguments"]
