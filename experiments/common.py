"""What the studies share: configs, strategies, methods, and one training run.

A study lists `Method`s (SGD, SAM with some options, Mixup, bootstrapped
variants, regularised SGD) and calls `run_methods` once per noise level and
seed; each method is built from the same initial weights (the seed), trained
on the same shuffled batches, and summarised as one row (best and final
clean test accuracy, final sharpness estimate, wall time) plus per-epoch
history rows. A method whose options `SAMModel` refuses (an unknown option,
or a combination refused at construction) is skipped with the reason
instead of failing the study.
"""

import contextlib
import dataclasses
import inspect
import math
import time
from typing import Optional

import keras
import numpy as np
import tensorflow as tf

import keras_sam
from experiments import data as data_lib
from experiments import models
from keras_sam import schedules
from keras_sam.callbacks import NoiseMonitor
from keras_sam.distribution import enable_multi_worker_fit
from keras_sam.callbacks import RhoScheduler
from keras_sam.core.options import SAMOptions
from keras_sam.regularization import regularized_sgd_model


@dataclasses.dataclass
class BaseConfig:
    """Hyperparameters every study has. Studies extend it."""

    dataset: str = "digits"  # or a tfds name (experiments.data.AUGMENTATION)
    model: str = "mlp"  # experiments.models.BUILDERS
    model_kwargs: dict = dataclasses.field(default_factory=dict)
    train_size: int = 0  # 0: the whole training set
    test_size: int = 0
    augment: bool = True  # the data set's augmentation (none for digits)
    epochs: int = 30
    batch_size: int = 32  # global batch
    learning_rate: float = 0.05
    lr_schedule: str = "constant"  # or "cosine" (Foret et al. appendix C)
    momentum: float = 0.9
    weight_decay: float = 0.0
    label_smoothing: float = 0.0
    seeds: tuple = (0, 1, 2)
    strategy: str = "default"  # default, mirrored, multiworker, tpu
    tpu: str = ""  # TPU name or address for strategy="tpu"
    mixed_precision: str = ""  # "", "mixed_float16" or "mixed_bfloat16"
    eval_batch_size: int = 256
    data_dir: str = ""  # tfds data directory
    jit_compile: object = "auto"  # compile()'s: "auto" (XLA), True, False

    def base_name(self) -> str:
        """The part of the run directory name every study shares."""
        name = (
            f"{self.dataset}_{self.model}_ep{self.epochs}_bs{self.batch_size}"
            f"_lr{self.learning_rate:g}"
        )
        if self.lr_schedule != "constant":
            name += f"-{self.lr_schedule}"
        if self.weight_decay:
            name += f"_wd{self.weight_decay:g}"
        if self.train_size:
            name += f"_n{self.train_size}"
        if self.mixed_precision:
            name += f"_{self.mixed_precision}"
        if self.strategy != "default":
            name += f"_{self.strategy}"
        return name

    def seeds_name(self) -> str:
        return "seeds" + "-".join(str(s) for s in self.seeds)


@dataclasses.dataclass(frozen=True)
class Method:
    """One way of training, as a row of a results table.

    Attributes:
        key: Short identifier, e.g. "sam" or "boot_sam".
        label: Name in tables and plots, e.g. "Bootstrap + SAM".
        sam: `SAMModel` options (`rho`, `m`, `p`, ...), or None for a plain
            `keras.Model` trained by the optimizer alone.
        mixup_alpha: Float; > 0 trains on mixup batches.
        regularization: `{"gamma_z": ..., "gamma_v": ...}` for Baek et
            al.'s regularised SGD, or None.
        rho_schedule: `{"name": ..., **kwargs}` of
            `keras_sam.schedules.by_name`, or None for a constant rho.
        bootstrap_from: Key of a method trained before this one whose
            predicted training labels this one trains on (Foret et al.
            section 3.3), or None.
        columns: Extra columns of this method's rows (e.g. {"m": 4}).
    """

    key: str
    label: str
    sam: Optional[dict] = None
    mixup_alpha: float = 0.0
    regularization: Optional[dict] = None
    rho_schedule: Optional[dict] = None
    bootstrap_from: Optional[str] = None
    columns: dict = dataclasses.field(default_factory=dict, hash=False)


class Skipped(Exception):
    """A method `SAMModel` refuses to run (the reason)."""


# ------------------------------------------------------ the environment


def make_strategy(name: str = "default", tpu: str = ""):
    """The `tf.distribute` strategy called `name`.

    Args:
        name: "default" (one device), "mirrored" (all local GPUs, or CPUs
            split into logical devices), "multiworker" (`TF_CONFIG` names
            the cluster; create it before any other TensorFlow op), or
            "tpu".
        tpu: TPU name or address for `TPUClusterResolver` ("" finds the
            local TPU, e.g. on a TPU VM).

    Returns:
        A `tf.distribute.Strategy`.
    """
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multiworker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "tpu":
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu)
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)
    raise ValueError(
        f"Unknown strategy {name!r}: use 'default', 'mirrored', "
        "'multiworker' or 'tpu'."
    )


@contextlib.contextmanager
def dtype_policy(name: str):
    """Sets a global Keras dtype policy for the block, then restores it."""
    if not name:
        yield
        return
    if name not in ("mixed_float16", "mixed_bfloat16"):
        raise ValueError(
            f"Unknown mixed precision policy {name!r}: use '', "
            "'mixed_float16' (GPUs) or 'mixed_bfloat16' (TPUs, recent CPUs)."
        )
    previous = keras.mixed_precision.dtype_policy()
    keras.mixed_precision.set_dtype_policy(name)
    try:
        yield
    finally:
        keras.mixed_precision.set_dtype_policy(previous)


def sam_supports(options: dict) -> Optional[str]:
    """None if `SAMModel` takes all `options`, else the reason it does not.

    The options are `SAMModel.__init__`'s named arguments, or the fields of
    `keras_sam.core.options.SAMOptions` where the constructor takes `**kwargs`.
    """
    parameters = inspect.signature(keras_sam.SAMModel.__init__).parameters
    known = set(parameters) | {f.name for f in dataclasses.fields(SAMOptions)}
    missing = sorted(k for k in options if k not in known)
    if missing:
        return f"keras_sam.SAMModel has no {', '.join(missing)} option"
    return None


# ----------------------------------------------------------- one method


def _wrap(base: keras.Model, method: Method) -> keras.Model:
    if method.regularization is not None:
        return regularized_sgd_model(base, **method.regularization)
    if method.sam is None:
        return base
    reason = sam_supports(method.sam)
    if reason:
        raise Skipped(reason)
    try:
        return keras_sam.SAMModel.from_model(base, **method.sam)
    except (TypeError, ValueError, NotImplementedError) as error:
        raise Skipped(f"SAMModel({method.sam}) was refused: {error}")


def build_model(config, data, method: Method, seed: int, steps: int):
    """The compiled model of `method`, initialised from `seed`."""
    keras.utils.set_random_seed(seed)  # same initial weights per seed
    base = models.build(
        config.model, data.input_shape, data.num_classes, data.mean,
        data.std, **config.model_kwargs,
    )
    # fit/evaluate under MultiWorkerMirroredStrategy need the workarounds of
    # keras_sam.distribution (keras-team/keras#20585, tensorflow#72388);
    # they change nothing under any other strategy.
    model = enable_multi_worker_fit(_wrap(base, method))
    learning_rate = config.learning_rate
    if config.lr_schedule == "cosine":
        learning_rate = keras.optimizers.schedules.CosineDecay(
            config.learning_rate, decay_steps=config.epochs * steps
        )
    elif config.lr_schedule != "constant":
        raise ValueError(
            f"Unknown lr_schedule {config.lr_schedule!r}: use 'constant' or "
            "'cosine'."
        )
    model.compile(
        optimizer=keras.optimizers.SGD(
            learning_rate=learning_rate,
            momentum=config.momentum,
            weight_decay=config.weight_decay or None,
        ),
        loss=keras.losses.CategoricalCrossentropy(
            from_logits=True, label_smoothing=config.label_smoothing
        ),
        metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")],
        jit_compile=config.jit_compile,
    )
    return model


def fit(config, data, method, labels, seed, strategy, noisy=None):
    """Trains `method` on `labels`; returns (model, history dict, seconds).

    Args:
        noisy: Optional `NoisyLabels`; if given, `NoiseMonitor` records
            clean and noisy training accuracy each epoch (Baek et al.
            figures 1-2).
    """
    # Seed before the pipeline: tf.data derives its shuffling from the
    # global seed too, so the batches must not depend on earlier methods.
    keras.utils.set_random_seed(seed)
    train = data_lib.train_dataset(
        data, labels, config.batch_size, seed, config.augment,
        method.mixup_alpha,
    )
    test = data_lib.eval_dataset(
        data, data.x_test, data.y_test, config.eval_batch_size
    )
    steps = len(labels) // config.batch_size
    with strategy.scope():
        model = build_model(config, data, method, seed, steps)
    callbacks = []
    if method.rho_schedule is not None:
        options = dict(method.rho_schedule)
        schedule = schedules.by_name(
            options.pop("name"), method.sam["rho"], **options
        )
        callbacks.append(RhoScheduler(schedule, per="epoch"))
    if noisy is not None:
        x = data.x_train
        callbacks.append(NoiseMonitor(np.asarray(x, "float32"), noisy))
    keras.utils.set_random_seed(seed)  # same batches for every method
    start = time.perf_counter()
    history = model.fit(
        train, epochs=config.epochs, validation_data=test, verbose=0,
        shuffle=False,
        callbacks=callbacks,
    )
    return model, history.history, time.perf_counter() - start


def summarize(history: dict) -> dict:
    """Best/final clean test accuracy and final sharpness of one history."""
    test = np.asarray(history["val_accuracy"], dtype=float)
    row = {
        "best_test_acc": float(test.max()),
        "best_epoch": int(test.argmax()) + 1,
        "final_test_acc": float(test[-1]),
        "final_train_acc": float(history["accuracy"][-1]),
    }
    sharpness = history.get("sharpness")
    row["final_sharpness"] = (
        float(sharpness[-1]) if sharpness is not None else math.nan
    )
    return row


def run_methods(config, data, methods, labels, seed, strategy, noisy=None,
                columns=None, log=print):
    """Trains each method in order on `labels`; returns (rows, histories).

    A method with `bootstrap_from` trains on the predicted labels of the
    named method's trained model (which must come earlier); a method that
    cannot run gives a row with `status` "skipped: <reason>" and NaNs.

    Args:
        config: A study config (`BaseConfig` subclass).
        data: An `experiments.data.Data`.
        methods: Sequence of `Method`.
        labels: Integer training labels (e.g. noisy).
        seed: Integer seed of initialisation and shuffling.
        strategy: A `tf.distribute.Strategy`.
        noisy: Optional `NoisyLabels` for `NoiseMonitor` curves.
        columns: Dict of extra columns of every row (e.g. noise rate).
        log: Callable taking a line of progress text.

    Returns:
        `(rows, history_rows)`: one summary dict per method, and one dict
        per method and epoch.
    """
    columns = dict(columns or {})
    trained, rows, history_rows = {}, [], []
    for method in methods:
        row = {**columns, "method": method.label, "key": method.key,
               "seed": seed, **method.columns}
        try:
            train_labels = _labels_of(method, trained, labels, config, data)
            model, history, seconds = fit(
                config, data, method, train_labels, seed, strategy, noisy
            )
        except Skipped as reason:
            log(f"  {method.label}: skipped ({reason})")
            rows.append({**row, "status": f"skipped: {reason}"})
            continue
        trained[method.key] = model
        summary = summarize(history)
        rows.append({**row, "status": "ok", **summary, "seconds": seconds})
        log(
            f"  {method.label:<24} best {summary['best_test_acc']:.4f} "
            f"final {summary['final_test_acc']:.4f} ({seconds:.1f} s)"
        )
        history_rows += _epoch_rows(history, {
            **columns, "method": method.label, "seed": seed, **method.columns,
        })
    return rows, history_rows


def _labels_of(method, trained, labels, config, data):
    """The labels `method` trains on: `labels`, or a trained model's."""
    if method.bootstrap_from is None:
        return labels
    first = trained.get(method.bootstrap_from)
    if first is None:
        raise Skipped(
            f"it bootstraps from {method.bootstrap_from!r}, which did not run"
        )
    return data_lib.predict_classes(
        first, data, data.x_train, config.eval_batch_size
    )


def _epoch_rows(history, columns):
    """One row per epoch of a Keras history: `columns`, epoch and logs."""
    return [
        {**columns, "epoch": epoch + 1,
         **{k: float(v[epoch]) for k, v in history.items()}}
        for epoch in range(len(history["loss"]))
    ]


def load_data(config, seed: int):
    """The study's data set for one seed, as its config describes it."""
    return data_lib.load(
        config.dataset,
        config.model == "small_cnn",
        config.train_size,
        config.test_size,
        seed,
        config.data_dir or None,
    )
