"""`SharpnessLogger`: the train step's own ||g|| and L(w+eps) - L(w)."""

import csv
import os

import keras
import numpy as np

_STATS = ("grad_norm", "sharpness")


class SharpnessLogger(keras.callbacks.Callback):
    """Keeps a per-epoch table of rho, ||g|| and the sharpness estimate.

    It runs no forward or backward pass of its own. `keras_sam.SAMModel`'s
    train step already measures, at every step, the norm of the ascent
    gradient `grad_norm` = ||g|| and the sharpness estimate `sharpness` =
    L_B(w + eps) - L_B(w) from its two passes, and reports their means over
    the epoch; this callback collects them, with the rho in force and the
    training loss, into `self.epochs` (one dict per epoch) and, with
    `filename`, a CSV file written as training goes.

    With `per_batch=True` it also keeps each step's own values in
    `self.batches`: it reads the running sums of the model's `Mean`
    trackers after each step and takes differences, so the values are the
    step's, not running means. Reading them costs a device sync per step.
    With `steps_per_execution = k > 1` a row holds the mean of k steps.

    The values are measured on each training batch at w, with the rho used
    by that step: under label noise or data augmentation they are noisy
    estimates of the sharpness of the training loss, not of the test loss.

    Args:
        filename: Path of a CSV file for the per-epoch table (columns
            epoch, rho, loss, grad_norm, sharpness), or None.
        per_batch: Boolean, also keep a per-step table. Defaults to False.
        batch_filename: Path of a CSV file for the per-step table (columns
            epoch, batch, rho, grad_norm, sharpness), or None. Implies
            `per_batch=True`.
        append: Boolean; append to existing files instead of overwriting
            them (to resume training). Defaults to False.

    >>> import keras, keras_sam, numpy as np
    >>> from keras_sam.callbacks import SharpnessLogger
    >>> inputs = keras.Input((4,))
    >>> model = keras_sam.SAMModel(inputs, keras.layers.Dense(1)(inputs))
    >>> model.compile(optimizer="sgd", loss="mse")
    >>> logger = SharpnessLogger(per_batch=True)
    >>> history = model.fit(np.ones((8, 4)), np.ones((8, 1)), batch_size=4,
    ...                     epochs=2, callbacks=[logger], verbose=0)
    >>> len(logger.epochs), len(logger.batches), sorted(logger.epochs[0])
    (2, 4, ['epoch', 'grad_norm', 'loss', 'rho', 'sharpness'])

    References:
        Foret et al. 2021, equation 1 (sharpness max_eps L(w+eps) - L(w),
        estimated to first order with eps of equation 2).
    """

    def __init__(
        self, filename=None, per_batch=False, batch_filename=None, append=False
    ):
        super().__init__()
        self.filename = None if filename is None else os.fspath(filename)
        self.batch_filename = (
            None if batch_filename is None else os.fspath(batch_filename)
        )
        self.per_batch = bool(per_batch) or self.batch_filename is not None
        self.append = append
        self.epochs = []
        self.batches = []
        self._trackers = {}
        self._previous = {}
        self._epoch = 0

    def table(self, per_batch=False) -> dict:
        """The per-epoch (or per-step) table as a dict of numpy columns."""
        rows = self.batches if per_batch else self.epochs
        if not rows:
            return {}
        return {k: np.array([row[k] for row in rows]) for k in rows[0]}

    def _find_trackers(self):
        metrics = getattr(self.model, "sam_metrics", None)
        if metrics is None:
            raise ValueError(
                f"SharpnessLogger reads the statistics {list(_STATS)} that "
                "`keras_sam.SAMModel`'s train step records, but model "
                f"{self.model.name!r} is a {type(self.model).__name__}: "
                "train a `keras_sam.SAMModel` (or "
                "`SAMModel.from_model(model)`)."
            )
        metrics = {m.name: m for m in metrics}
        return {name: metrics[name] for name in _STATS}

    def _rho(self):
        rho = getattr(self.model, "rho", None)
        if rho is None:
            return float("nan")
        return float(keras.ops.convert_to_numpy(rho))

    @staticmethod
    def _start_csv(path, columns, append):
        if path is None or (append and os.path.exists(path)):
            return
        with open(path, "w", newline="") as f:
            csv.writer(f).writerow(columns)

    @staticmethod
    def _write_row(path, row):
        if path is not None:
            with open(path, "a", newline="") as f:
                csv.writer(f).writerow(list(row.values()))

    def on_train_begin(self, logs=None):
        self._trackers = self._find_trackers()
        self.epochs, self.batches = [], []
        self._start_csv(
            self.filename,
            ["epoch", "rho", "loss", *_STATS],
            self.append,
        )
        if self.per_batch:
            self._start_csv(
                self.batch_filename,
                ["epoch", "batch", "rho", *_STATS],
                self.append,
            )

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch
        # fit() resets the trackers before each epoch.
        self._previous = {name: (0.0, 0.0) for name in _STATS}

    def on_train_batch_end(self, batch, logs=None):
        if not self.per_batch:
            return
        row = {"epoch": self._epoch, "batch": batch, "rho": self._rho()}
        for name, tracker in self._trackers.items():
            total = float(keras.ops.convert_to_numpy(tracker.total))
            count = float(keras.ops.convert_to_numpy(tracker.count))
            old_total, old_count = self._previous[name]
            self._previous[name] = (total, count)
            delta = count - old_count
            row[name] = (total - old_total) / delta if delta else float("nan")
        self.batches.append(row)
        self._write_row(self.batch_filename, row)

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        rho = logs.get("rho", self._rho())
        row = {"epoch": epoch, "rho": float(rho)}
        row["loss"] = float(logs.get("loss", float("nan")))
        own = {}  # log_statistics=False: read the model's own trackers
        if any(name not in logs for name in _STATS):
            own = getattr(self.model, "sam_logs", dict)()
        for name in _STATS:
            value = logs.get(name, own.get(name, float("nan")))
            row[name] = float(keras.ops.convert_to_numpy(value))
        if "rho" not in logs and hasattr(self.model, "rho"):
            logs["rho"] = row["rho"]
        self.epochs.append(row)
        self._write_row(self.filename, row)
