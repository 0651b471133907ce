"""One trial of an experiment that rtune.ray's Tuner.fit() started: `python -m rtune.ray._trial`
(the experiment's trial command; every rank of a TorchTrainer runs it). It loads the trainable
the driver pickled into the experiment's directory and calls it with the trial's config."""

from __future__ import annotations

import os
import pickle
import sys

from . import _integrations, _session
from ._driver import TRAINABLE_FILE, TrialProgram


def main() -> None:
    session = _session._session()
    if session is None or session.experiment_dir is None:
        sys.exit("rtune.ray._trial: this is the trial command of experiments that rtune.ray's "
                 "Tuner.fit() starts; it runs only under rtune (RTUNE_ADDR and "
                 "RTUNE_EXPERIMENT_DIR are unset)")
    # Before the trainable is unpickled: that may import transformers or lightning.
    _integrations.install(session.restore_dir)
    path = os.path.join(session.experiment_dir, TRAINABLE_FILE)
    try:
        with open(path, "rb") as f:
            program = pickle.load(f)
    except OSError as e:
        sys.exit(f"rtune.ray._trial: cannot read the trainable {path}: {e}")
    if not isinstance(program, TrialProgram):
        sys.exit(f"rtune.ray._trial: {path} does not hold a trainable written by rtune.ray")
    program.run_trial(dict(session.config))
    session.close()


if __name__ == "__main__":
    main()
