"""m-sharpness of a trained model: how much the loss can rise within rho.

Foret et al. (section 4.1) measure sharpness as the mean, over disjoint
groups S of m examples, of

    max_{||eps||_p <= rho} L_S(w + eps) - L_S(w),

where L_S is the mean loss of the group. The maximisation is approximated by
projected gradient ascent from eps_0 = 0 (appendix C.6):

    eps_{t+1} = Proj_rho(eps_t + dual_vector(grad L_S(w + eps_t), step_size)),

whose first step, with the default step_size = rho, is SAM's own
eps = rho g / ||g|| (equation 2). The value reported is at the last
iterate. On a convex loss every projected step can only increase it, so k
steps give at least the one-step value. `m=None` takes the whole data set as
one group (the sharpness of Foret et al.'s Theorem 1).

The model is evaluated with `stateless_call(..., training=False)`: its
variables are not modified and BatchNormalization is in inference mode.
It needs the TensorFlow backend (`tf.GradientTape`, `tf.vectorized_map`);
on another backend `m_sharpness` raises a `RuntimeError` that says so.
"""

import math
from typing import NamedTuple, Optional

import keras
import numpy as np

from keras_sam import _optional
from keras_sam.core import perturbation
from keras_sam.core.options import check_m
from keras_sam.diagnostics import stateless_loss
from keras_sam.core.options import check_rho

# Imported at first use: the module imports on every backend.
tf = _optional.LazyTensorFlow("keras_sam.diagnostics.sharpness")


class SharpnessEstimate(NamedTuple):
    """The mean sharpness, its standard error, and the value of each group."""

    value: float
    std_error: float  # NaN with a single group
    per_group: np.ndarray


def _check_arguments(m, rho, steps, p, step_size):
    check_m(m)
    if check_rho(rho) == 0:
        raise ValueError(
            "`rho` must be > 0 to measure sharpness (rho=0 gives 0). "
            f"Received: rho={rho!r}"
        )
    if int(steps) != steps or steps < 1:
        raise ValueError(
            "`steps` must be a positive integer (1 is SAM's single ascent "
            f"step). Received: steps={steps!r}"
        )
    p = perturbation.check_p(p)
    if steps > 1 and not (p == 2.0 or math.isinf(p)):
        raise ValueError(
            "Several ascent steps need a projection onto the p-ball, "
            f"available for p=2 and p=float('inf'). Received: p={p} with "
            f"steps={steps}: use steps=1 or p=2."
        )
    step_size = rho if step_size is None else float(step_size)
    if not step_size > 0:
        raise ValueError(
            f"`step_size` must be > 0 (or None for rho). Received: "
            f"step_size={step_size!r}"
        )
    return p, step_size


class _Ascent:
    """Projected gradient ascent on the loss of one group of examples."""

    def __init__(self, loss, rho, steps, p, step_size):
        self.loss, self.rho, self.steps = loss, rho, steps
        self.p, self.step_size = p, step_size

    def value_and_grad(self, trainable, non_trainable, x, y, sample_weight):
        return stateless_loss.loss_and_gradient(
            self.loss, trainable, non_trainable, x, y, sample_weight
        )

    @staticmethod
    def shift(trainable, eps):
        return [w + tf.cast(e, w.dtype) for w, e in zip(trainable, eps)]

    def step(self, eps, grads):
        ascent = perturbation.dual_vector(grads, self.step_size, self.p)
        if not (self.p == 2.0 or math.isinf(self.p)):
            # One step only (checked): ||ascent||_p = step_size, so the
            # projection onto the rho-ball is a rescaling.
            return [a * min(1.0, self.rho / self.step_size) for a in ascent]
        if eps is None:  # eps_0 = 0
            eps = [tf.zeros_like(a) for a in ascent]
        return perturbation.project(
            [e + a for e, a in zip(eps, ascent)], self.rho, self.p
        )

    def sharpness(self, trainable, non_trainable, x, y, sample_weight):
        loss, grads = self.value_and_grad(
            trainable, non_trainable, x, y, sample_weight
        )
        eps = self.step(None, grads)
        for _ in range(self.steps - 1):
            _, grads = self.value_and_grad(
                self.shift(trainable, eps), non_trainable, x, y,
                sample_weight,
            )
            eps = self.step(eps, grads)
        perturbed = self.loss(
            self.shift(trainable, eps), non_trainable, x, y, sample_weight
        )
        return tf.cast(perturbed - loss, tf.float64)


def _grouped(ascent, values, dataset, m, groups_per_call, progbar):
    """Sharpness of each group of m examples, vectorised over groups."""

    def chunk(trainable, non_trainable, x, y, sample_weight):
        def one_group(group):
            gx, gy = group[0], group[1]
            gw = group[2] if len(group) == 3 else None
            return ascent.sharpness(trainable, non_trainable, gx, gy, gw)

        elems = (x, y) if sample_weight is None else (x, y, sample_weight)
        return tf.vectorized_map(one_group, elems)

    chunk = tf.function(chunk, reduce_retracing=True)
    chunks = (
        dataset.unbatch().batch(m, drop_remainder=True).batch(groups_per_call)
    )
    results, seen = [], 0
    for batch in chunks:
        x, y, sample_weight = stateless_loss.unpack(batch)
        results.append(chunk(*values, x, y, sample_weight).numpy())
        seen += len(results[-1])
        progbar.update(seen)
    if not results:
        raise ValueError(
            f"`data` holds fewer than m={m} examples: no group to measure. "
            "Use a smaller `m` or more data."
        )
    return np.concatenate(results)


def _whole_dataset(ascent, values, dataset):
    """Sharpness of the full-data loss, gradients accumulated over batches."""
    trainable, non_trainable = values
    value_and_grad = tf.function(ascent.value_and_grad, reduce_retracing=True)
    loss_at = tf.function(ascent.loss, reduce_retracing=True)

    def batch_fn(weights):
        def fn(x, y, sample_weight):
            loss, grads = value_and_grad(
                weights, non_trainable, x, y, sample_weight
            )
            return [loss, *grads]

        return fn

    def full(weights):
        loss, *grads = stateless_loss.weighted_mean(batch_fn(weights), dataset)
        return loss, [tf.constant(g, tf.float32) for g in grads]

    loss, grads = full(trainable)
    eps = ascent.step(None, grads)
    for _ in range(ascent.steps - 1):
        _, grads = full(ascent.shift(trainable, eps))
        eps = ascent.step(eps, grads)
    (perturbed,) = stateless_loss.weighted_mean(
        lambda x, y, sw: [
            loss_at(ascent.shift(trainable, eps), non_trainable, x, y, sw)
        ],
        dataset,
    )
    return np.array([perturbed - loss])


def m_sharpness(
    model, data, m: Optional[int], rho: float = 0.05, steps: int = 1,
    p: float = 2.0, step_size: Optional[float] = None, loss_fn=None,
    batch_size: int = 128, verbose: int = 0,
) -> SharpnessEstimate:
    """Mean over groups of m examples of max_{||eps|| <= rho} L(w+eps) - L(w).

    Args:
        model: A built Keras model (not modified).
        data: Tuple `(x, y)` or `(x, y, sample_weight)` of arrays, or a
            batched `tf.data.Dataset`. Consecutive examples form the groups
            (shuffle first for random groups); the last `n mod m` examples
            are left out.
        m: Integer, examples per group, or None for the whole data set as
            one group (its gradient accumulated over batches).
        rho: Float > 0, the radius of the perturbation ball. Defaults to
            0.05.
        steps: Integer >= 1, projected ascent steps; 1 is SAM's single
            first-order step (equation 2). Defaults to 1.
        p: Float > 1 or `float("inf")`, the norm of the ball (only 2 and
            inf with `steps > 1`). Defaults to 2.
        step_size: Float, the length of each ascent step; defaults to
            `rho`, whose first step is SAM's eps.
        loss_fn: Optional loss; defaults to the model's compiled loss.
        batch_size: Integer, the batch size for arrays, and the number of
            examples processed per call when grouping. Defaults to 128.
        verbose: 0 (silent) or 1 (progress bar over groups). Defaults to 0.

    Returns:
        `SharpnessEstimate(value, std_error, per_group)`.

    >>> model = keras.Sequential(
    ...     [keras.Input((1,)), keras.layers.Dense(1, use_bias=False)])
    >>> model.set_weights([np.ones((1, 1))])
    >>> data = (np.ones((4, 1), "float32"), np.zeros((4, 1), "float32"))
    >>> # L(w) = w^2 at w = 1: eps = 0.1, L(1.1) - L(1) = 0.21.
    >>> round(m_sharpness(model, data, m=2, rho=0.1, loss_fn="mse").value, 4)
    0.21

    References:
        Foret et al., "Sharpness-Aware Minimization for Efficiently
        Improving Generalization", ICLR 2021: section 4.1 (m-sharpness),
        appendix C.6 (several projected ascent steps).
    """
    stateless_loss.check_backend("m_sharpness")
    p, step_size = _check_arguments(m, rho, steps, p, step_size)
    full = stateless_loss.DatasetLoss(model, data, loss_fn, batch_size)
    ascent = _Ascent(full.loss, float(rho), int(steps), p, step_size)
    values = full.trainable, full.non_trainable
    if m is None:
        per_group = _whole_dataset(ascent, values, full.dataset)
    else:
        per_group = _grouped(
            ascent, values, full.dataset, int(m),
            max(1, int(batch_size) // int(m)),
            _group_progbar(data, int(m), verbose),
        )
    error = stateless_loss.standard_error(per_group)
    return SharpnessEstimate(float(per_group.mean()), error, per_group)


def _group_progbar(data, m: int, verbose: int):
    total = None
    if not isinstance(data, tf.data.Dataset):
        total = len(tf.nest.flatten(tuple(data))[0]) // m
    return keras.utils.Progbar(total, verbose=verbose, unit_name="group")
