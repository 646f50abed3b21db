"""SAM's state outside `model.weights`, and the check on custom steps."""

import functools
import threading
import warnings
from typing import NamedTuple

import keras

from keras_sam import backend


class SAMGradients(NamedTuple):
    """What `SAMModel.compute_sam_gradients` returns."""

    gradients: list
    y_pred: object
    loss: object


class SAMState:
    """rho, the options and SAM's statistics: state outside `model.weights`.

    A plain object, so Keras tracks none of it: rho and the trackers are not
    weights (checkpoints move freely between a SAMModel and a keras.Model)
    and `grad_norm`/`sharpness` are not metrics (`evaluate` is unchanged).
    """

    def __init__(self, rho, options):
        backend.check_options(options)
        self.options = options
        self.rho = keras.Variable(
            rho, dtype="float32", trainable=False, name="rho"
        )
        self.grad_norm = keras.metrics.Mean(name="grad_norm")
        self.sharpness = keras.metrics.Mean(name="sharpness")
        self.step_state = None  # built with the train function
        self.calls = 0
        self.warned = False
        # Per replica thread (MirroredStrategy runs replicas in threads):
        # the moving statistics to average after the optimizer step.
        self.local = threading.local()

    def record(self, stats):
        # A step whose gradient overflowed (skipped by a LossScaleOptimizer)
        # has no meaningful norm or sharpness: leave it out of the means.
        ops = keras.ops
        finite = ops.cast(ops.isfinite(stats["grad_norm"]), "float32")
        norm = ops.where(finite > 0, stats["grad_norm"], 0.0)
        sharpness = ops.where(finite > 0, stats["sharpness"], 0.0)
        self.grad_norm.update_state(norm, sample_weight=finite)
        self.sharpness.update_state(
            sharpness, sample_weight=finite * stats["sam_weight"]
        )

    def apply_deferred(self):
        """Applies this replica's deferred updates (synced statistics)."""
        deferred = getattr(self.local, "deferred", None)
        if deferred:  # only TensorFlow's step defers
            from keras_sam.backend.tensorflow.sync import sync_statistics

            sync_statistics(deferred)
        self.local.deferred = []

    @property
    def variables(self) -> list:
        """rho, the trackers' and the policy's variables (state of Keras'
        JAX step)."""
        policy = self.step_state
        kept = [] if policy is None else [
            v for group in (policy.trigger_stats, policy.direction,
                            policy.mask) if group for v in group
        ]
        return [self.rho, *self.grad_norm.variables,
                *self.sharpness.variables, *kept]

    def logs(self) -> dict:
        return {
            # A copy, not `convert_to_tensor`: eagerly (run_eagerly=True)
            # that returns the variable itself, which Keras' eager step
            # cannot pass through its tf.experimental.Optional.
            "rho": keras.ops.copy(self.rho),
            "grad_norm": self.grad_norm.result(),
            "sharpness": self.sharpness.result(),
        }

    def reset(self):
        self.grad_norm.reset_state()
        self.sharpness.reset_state()


def warn_if_sam_unused(train_step):
    """Wraps a subclass's `train_step`: adds SAM's logs, warns if no SAM."""

    @functools.wraps(train_step)
    def checked_train_step(self, data):
        calls = self._sam.calls
        logs = train_step(self, data)
        # A step that applied its gradients with `optimizer.apply` rather
        # than `apply_sam_gradients` still gets what SAM deferred.
        self._sam.apply_deferred()
        if self._sam.calls > calls and isinstance(logs, dict):
            logs = {**self.sam_logs(in_logs=True), **logs}
        elif self._sam.calls == calls and not self._sam.warned:
            self._sam.warned = True
            warnings.warn(
                f"{type(self).__name__}.train_step does not call "
                "`self.compute_sam_gradients(x, y, sample_weight)`, so it "
                "trains with the base optimizer only, not SAM. Replace the "
                "GradientTape block of the custom step by it (it returns "
                "the gradients, y_pred and loss), or subclass keras.Model "
                "if SAM is not wanted.",
                stacklevel=2,
            )
        return logs

    return checked_train_step
