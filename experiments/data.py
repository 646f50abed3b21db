"""Data for the experiments: embedded digits or a tfds data set, as pipelines.

    data = load("digits")                      # offline, 1,797 8x8 digits
    data = load("cifar10")                     # tfds, when you have it
    train = train_dataset(data, x, labels, batch_size=128, seed=0,
                          augment=True, mixup_alpha=0.0)
    test = eval_dataset(data, data.x_test, data.y_test, batch_size=256)

Images stay raw (uint8 for tfds, [0, 1] floats for digits): the
per-channel normalisation is the first layer of every model
(`experiments.models.build`), so the same model predicts on raw arrays when
bootstrapping relabels the training set. Training batches get the papers'
augmentation: random crop after padding 4 pixels, horizontal flip (not for
SVHN and digits) and cutout (Foret et al. appendix C; DeVries and Taylor
2017), then optionally mixup on one-hot labels (Zhang et al. 2018).
"""

from typing import NamedTuple, Optional

import keras
import numpy as np
import tensorflow as tf

from keras_sam import datasets as digits_lib

# Augmentation of each data set: padding of the random crop, horizontal
# flip, and side of the cutout square (DeVries and Taylor 2017 use 16 on
# CIFAR and 20 on SVHN; Foret et al. appendix C use cutout on CIFAR).
AUGMENTATION = {
    "digits": {"pad": 0, "flip": False, "cutout": 0},
    "cifar10": {"pad": 4, "flip": True, "cutout": 16},
    "cifar100": {"pad": 4, "flip": True, "cutout": 16},
    "svhn_cropped": {"pad": 4, "flip": False, "cutout": 20},
    "fashion_mnist": {"pad": 4, "flip": True, "cutout": 14},
}


class Data(NamedTuple):
    """A data set in memory: raw arrays, statistics and augmentation."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    mean: Optional[np.ndarray]  # per-channel, in raw units; None: no norm.
    std: Optional[np.ndarray]
    augmentation: dict

    @property
    def input_shape(self) -> tuple:
        return tuple(self.x_train.shape[1:])


def _subset(x, y, size, seed):
    """A class-balanced-in-expectation random subset of `size` examples."""
    if not size or size >= len(y):
        return x, y
    order = np.random.default_rng(seed).permutation(len(y))[:size]
    return x[order], y[order]


def load(
    name: str = "digits",
    image: bool = False,
    train_size: Optional[int] = None,
    test_size: Optional[int] = None,
    seed: int = 0,
    data_dir: Optional[str] = None,
) -> Data:
    """Loads the embedded digits or a tfds data set into memory.

    Args:
        name: "digits" (scikit-learn, offline) or a tfds name with
            `image`/`label` features: "cifar10", "cifar100",
            "svhn_cropped", "fashion_mnist".
        image: Boolean, digits only: (8, 8, 1) images for convolutional
            models instead of 64-vectors.
        train_size: Optional integer, keep a random subset of the training
            set (for tests and quick runs).
        test_size: Optional integer, the same for the test set.
        seed: Integer seed of the digits split and of the subsets.
        data_dir: Optional tfds data directory.

    Returns:
        A `Data`. For tfds sets, `mean`/`std` are the per-channel
        statistics of the training images, used by the models' first
        layer.
    """
    if name == "digits":
        digits = digits_lib.load_digits(image=image, seed=seed)
        x_train, y_train = _subset(*digits.train, train_size, seed)
        x_test, y_test = _subset(*digits.test, test_size, seed + 1)
        return Data(
            name, x_train, y_train, x_test, y_test, digits.num_classes,
            None, None, AUGMENTATION["digits"],
        )
    if name not in AUGMENTATION:
        raise ValueError(
            f"Unknown data set {name!r}: use 'digits' or one of the tfds "
            f"names {sorted(set(AUGMENTATION) - {'digits'})}."
        )
    import tensorflow_datasets as tfds

    (x_train, y_train), (x_test, y_test), info = _tfds_arrays(
        tfds, name, data_dir
    )
    x_train, y_train = _subset(x_train, y_train, train_size, seed)
    x_test, y_test = _subset(x_test, y_test, test_size, seed + 1)
    pixels = x_train.reshape(-1, x_train.shape[-1]).astype("float64")
    std = np.maximum(pixels.std(axis=0), 1e-3)
    return Data(
        name, x_train, y_train, x_test, y_test,
        info.features["label"].num_classes,
        pixels.mean(axis=0).astype("float32"), std.astype("float32"),
        AUGMENTATION[name],
    )


def _tfds_arrays(tfds, name, data_dir):
    # Read in batches of 1,024 rather than with `batch_size=-1`, which
    # aborts the process (std::length_error) on `tfds.testing.mock_data`.
    splits, info = tfds.load(
        name,
        split=["train", "test"],
        as_supervised=True,
        shuffle_files=False,
        with_info=True,
        data_dir=data_dir,
    )
    arrays = []
    for split in splits:
        xs, ys = [], []
        for x, y in tfds.as_numpy(split.batch(1024)):
            xs.append(x)
            ys.append(y)
        arrays.append(
            (np.concatenate(xs), np.concatenate(ys).astype("int32"))
        )
    return arrays[0], arrays[1], info


# ---------------------------------------------------------- augmentation


def random_crop_flip(image, pad: int, flip: bool):
    """Pads `pad` pixels (zeros), crops back at random, flips at random."""
    if pad:
        shape = tf.shape(image)
        padded = tf.pad(image, [[pad, pad], [pad, pad], [0, 0]])
        image = tf.image.random_crop(padded, shape)
    if flip:
        image = tf.image.random_flip_left_right(image)
    return image


def cutout(images, size: int, fill):
    """Cutout: one `size` x `size` square per image, set to `fill`.

    The square's centre is uniform over the image and the square is clipped
    at the borders (DeVries and Taylor 2017). Used when the installed Keras
    has no `keras.layers.RandomErasing`.

    Args:
        images: Float tensor (batch, height, width, channels).
        size: Integer side of the square.
        fill: Scalar or per-channel values written into the square.

    Returns:
        The images with one square each replaced by `fill`.
    """
    shape = tf.shape(images)
    batch, height, width = shape[0], shape[1], shape[2]
    cy = tf.random.uniform([batch, 1, 1], 0, height, dtype=tf.int32)
    cx = tf.random.uniform([batch, 1, 1], 0, width, dtype=tf.int32)
    rows = tf.range(height)[None, :, None]
    cols = tf.range(width)[None, None, :]
    half = size // 2
    inside = (rows >= cy - half) & (rows < cy - half + size)
    inside &= (cols >= cx - half) & (cols < cx - half + size)
    fill = tf.cast(tf.broadcast_to(fill, tf.shape(images)[-1:]), images.dtype)
    return tf.where(inside[..., None], fill, images)


def cutout_layer(size: int, image_size: int, fill):
    """`keras.layers.RandomErasing` set up as cutout, or None if absent.

    A square of side `size` (scale (size / image_size)^2 of each side
    squared, always applied, filled with `fill`, the per-channel mean, so
    that it is 0 after normalisation as in DeVries and Taylor).
    """
    if not hasattr(keras.layers, "RandomErasing"):
        return None
    area = float(size / image_size) ** 2
    fill = [float(v) for v in np.ravel(fill)]
    return keras.layers.RandomErasing(
        factor=(1.0, 1.0),
        scale=(area, area),
        fill_value=fill[0] if len(fill) == 1 else tuple(fill),
        value_range=(0.0, 255.0),
        dtype="float32",
    )


def mixup(images, labels, alpha: float):
    """Mixup on a batch: x = lam x_i + (1 - lam) x_j, the same for labels.

    lam ~ Beta(alpha, alpha), drawn per example (as `keras.layers.MixUp`
    does), as the ratio of two Gamma(alpha) draws; j is a random
    permutation of the batch. `keras.layers.MixUp` exists in Keras 3 but
    reshapes its weights to rank-4 images, and the digits MLPs take
    vectors, hence this small map.

    Args:
        images: Float tensor, examples along the first axis (any rank).
        labels: Float one-hot (or soft) labels (batch, classes).
        alpha: Float > 0, the Beta distribution's parameter.

    Returns:
        `(mixed_images, mixed_labels)`.

    References:
        Zhang et al., "mixup: Beyond Empirical Risk Minimization", ICLR
        2018; Foret et al. 2021, table 4 (the Mixup baseline).
    """
    batch = tf.shape(labels)[0]
    a = tf.random.gamma([batch], alpha)
    b = tf.random.gamma([batch], alpha)
    lam = a / (a + b)
    order = tf.random.shuffle(tf.range(batch))
    lam_x = tf.reshape(lam, [-1] + [1] * (len(images.shape) - 1))
    images = lam_x * images + (1 - lam_x) * tf.gather(images, order)
    lam_y = lam[:, None]
    labels = lam_y * labels + (1 - lam_y) * tf.gather(labels, order)
    return images, labels


# ------------------------------------------------------------ pipelines


def _one_hot(labels, num_classes):
    return np.eye(num_classes, dtype="float32")[np.asarray(labels)]


def train_dataset(
    data: Data,
    labels,
    batch_size: int,
    seed: int,
    augment: bool = True,
    mixup_alpha: float = 0.0,
):
    """Shuffled, augmented batches of (image, one-hot label) for `fit`.

    Batches are of static size (`drop_remainder=True`), as `m` groups,
    XLA and TPUs need.

    Args:
        data: A `Data`; its training inputs are used.
        labels: Integer labels of the training inputs (e.g. noisy).
        batch_size: Integer, the global batch size.
        seed: Integer seed of the shuffling.
        augment: Boolean, apply the data set's augmentation.
        mixup_alpha: Float; > 0 applies mixup with this alpha.

    Returns:
        A `tf.data.Dataset`.
    """
    if batch_size > len(labels):
        raise ValueError(
            f"batch_size={batch_size} exceeds the {len(labels)} training "
            "examples: every batch would be dropped. Use a smaller batch."
        )
    y = _one_hot(labels, data.num_classes)
    ds = tf.data.Dataset.from_tensor_slices((data.x_train, y))
    ds = ds.shuffle(len(y), seed=seed, reshuffle_each_iteration=True)
    ds = ds.map(lambda x, y: (tf.cast(x, tf.float32), y))
    aug = data.augmentation if augment else {}
    if aug.get("pad") or aug.get("flip"):
        ds = ds.map(
            lambda x, y: (random_crop_flip(x, aug["pad"], aug["flip"]), y),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
    ds = ds.batch(batch_size, drop_remainder=True)
    if aug.get("cutout"):
        fill = data.mean if data.mean is not None else 0.0
        layer = cutout_layer(aug["cutout"], data.input_shape[0], fill)
        if layer is None:
            ds = ds.map(lambda x, y: (cutout(x, aug["cutout"], fill), y))
        else:
            ds = ds.map(lambda x, y: (layer(x, training=True), y))
    if mixup_alpha:
        ds = ds.map(lambda x, y: mixup(x, y, mixup_alpha))
    return ds.prefetch(tf.data.AUTOTUNE)


def eval_dataset(data: Data, x, labels=None, batch_size: int = 256):
    """Batches of (image, one-hot label), or images only, in order."""
    if labels is None:
        ds = tf.data.Dataset.from_tensor_slices(x)
        ds = ds.map(lambda x: tf.cast(x, tf.float32))
    else:
        y = _one_hot(labels, data.num_classes)
        ds = tf.data.Dataset.from_tensor_slices((x, y))
        ds = ds.map(lambda x, y: (tf.cast(x, tf.float32), y))
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def predict_classes(model, data: Data, x, batch_size: int = 256):
    """The model's argmax classes on raw inputs `x`, in order."""
    logits = model.predict(
        eval_dataset(data, x, batch_size=batch_size), verbose=0
    )
    return np.asarray(logits).argmax(axis=1).astype("int32")
