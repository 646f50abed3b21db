"""`ExactBackupAndRestore`: resume a killed `fit` exactly where it stopped.

What `keras.callbacks.BackupAndRestore` does (Keras 3.15.1), for any model:

* `save_freq="epoch"`: the weights and optimizer state (`iterations`,
  momenta) are saved after each epoch with `{"epoch": e + 1, "batch": 0}`;
  a restart loads them and starts at epoch e + 1. That is exact, except for
  the random state below.
* `save_freq=N`: after every N batches it saves the weights and optimizer
  state and `{"epoch": e, "batch": b}` (the last batch done, 0-based).
  A restart loads that mid-epoch state but replays epoch e from batch 0:
  batches 0..b are trained a second time, so the run ends with b + 1 more
  optimizer steps than an uninterrupted one, on different weights. Also,
  the restarted callback writes `"epoch": 0` in its mid-epoch backups until
  its first epoch ends (its epoch counter starts at 0 and is only advanced
  in `on_epoch_end`), so a second crash early in the resumed epoch
  restarts training from epoch 0.
* Random state is not saved: the state of every `keras.random.
  SeedGenerator` (e.g. each `Dropout` layer's) is a model variable but not
  a weight, so `save_weights` leaves it out and a restarted run draws other
  dropout masks than the uninterrupted one.

`ExactBackupAndRestore` is a `BackupAndRestore` that fixes all three: it
saves the seed generators' states (the model's non-weight variables and
Keras' global seed generator) next to the weights, in
`random_state.npz`, and restores them; it tracks the epoch from
`on_epoch_begin`; and after a mid-epoch backup it skips the b + 1 batches
already done in the interrupted epoch by drawing them from the input
iterator without training on them, so the data that follows is the data the
uninterrupted run saw. The resumed run then ends with the same weights,
optimizer state, rho and random state as the uninterrupted one, provided
that each epoch's data is the same after the restart (`shuffle=False`, or a
`tf.data` pipeline whose order does not depend on how many epochs this
process has iterated). The metrics logged for the resumed epoch average
only the batches trained after the restart.
"""

import json
import os

import keras

import numpy as np

from keras_sam import _keras

RANDOM_STATE_FILE = "random_state.npz"


def random_state_variables(model):
    """The variables that hold random state: seed generators' states.

    These are the model's variables that are not weights (Keras 3 keeps
    each `SeedGenerator` state there), then Keras' global seed generator,
    if one was created.
    """
    weights = {id(v) for v in model.weights}
    states = [v for v in model.variables if id(v) not in weights]
    generator = _keras.existing_global_seed_generator()
    if generator is not None:
        states.append(generator.state)
    return states


class ExactBackupAndRestore(keras.callbacks.BackupAndRestore):
    """`BackupAndRestore` that resumes exactly, mid-epoch and random state.

    Use it in place of `keras.callbacks.BackupAndRestore`, with the same
    arguments. See the module docstring for what Keras' callback does and
    what this one changes. Under `MultiWorkerMirroredStrategy` give each
    worker its own `backup_dir` (a shared one fails on a file lock).

    Args:
        backup_dir: String, where to store the backup (one per worker).
        save_freq: "epoch" or an integer N: save every N batches.
        double_checkpoint: Boolean, keep the previous backup as well.
        delete_checkpoint: Boolean, delete the backup when `fit` ends.
    """

    def __init__(self, backup_dir, save_freq="epoch",
                 double_checkpoint=False, delete_checkpoint=True):
        super().__init__(
            backup_dir, save_freq=save_freq,
            double_checkpoint=double_checkpoint,
            delete_checkpoint=delete_checkpoint,
        )
        self._random_path = os.path.join(backup_dir, RANDOM_STATE_FILE)
        self._to_skip = 0
        self._train_function = None

    def on_train_begin(self, logs=None):
        self._to_skip = 0
        super().on_train_begin(logs)
        if self._to_skip:
            self._skip_done_batches()

    def _load_model(self):
        super()._load_model()
        if os.path.exists(self._random_path):
            with np.load(self._random_path) as saved:
                variables = random_state_variables(self.model)
                if len(saved.files) != len(variables):
                    raise ValueError(
                        f"{self._random_path} holds {len(saved.files)} "
                        f"random states but the model has {len(variables)}:"
                        " the backup is of another model. Delete "
                        f"{self.backup_dir!r} to start afresh."
                    )
                for i, variable in enumerate(variables):
                    variable.assign(saved[f"state_{i}"])
        metadata_path = _keras.backup_metadata_path(self)
        if self.save_freq == "epoch" or not os.path.exists(metadata_path):
            return
        with open(metadata_path) as f:
            metadata = json.load(f)
        # A mid-epoch backup of epoch e after batch b: b + 1 batches of
        # epoch e are in the weights; Keras would replay them.
        self._current_epoch = metadata["epoch"]
        self._to_skip = metadata.get("batch", -1) + 1

    def _save_model(self):
        super()._save_model()
        states = {
            f"state_{i}": keras.ops.convert_to_numpy(v)
            for i, v in enumerate(random_state_variables(self.model))
        }
        temporary = self._random_path + ".tmp.npz"
        np.savez(temporary, **states)
        os.replace(temporary, self._random_path)

    def on_epoch_begin(self, epoch, logs=None):
        # Keras advances its epoch only in on_epoch_end, so a restarted run
        # would label its first mid-epoch backups as epoch 0.
        self._current_epoch = epoch

    def _skip_done_batches(self):
        """Wraps `train_function` to draw the done batches untrained."""
        model = self.model
        steps = getattr(model, "steps_per_execution", 1) or 1
        if self._to_skip % steps:
            raise ValueError(
                f"The backup in {self.backup_dir!r} was saved after "
                f"{self._to_skip} batches of epoch {self._current_epoch}, "
                f"not a multiple of steps_per_execution={steps}: resume "
                "with the steps_per_execution of the interrupted run."
            )
        self._train_function = model.train_function

        def skip_or_train(iterator):
            if self._to_skip <= 0:
                model.train_function = self._train_function
                return self._train_function(iterator)
            for _ in range(steps):
                next(iterator)
            self._to_skip -= steps
            return {}

        model.train_function = skip_or_train

    def on_train_end(self, logs=None):
        if self._train_function is not None:
            self.model.train_function = self._train_function
            self._train_function = None
        super().on_train_end(logs)
