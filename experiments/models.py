"""The papers' models as Keras builders, and the small digits models.

    model = build("wrn", (32, 32, 3), 10, depth=28, width=10)  # 36.5M
    model = build("resnet32", (32, 32, 3), 10)                 # 0.46M
    model = build("resnet18_ln", (32, 32, 3), 10)              # 11.2M
    model = build("mlp", (64,), 10)                            # digits

Every builder returns a plain functional `keras.Model` that outputs logits
(the last Dense layer is float32 under mixed precision, and is the model's
last layer, as regularised SGD needs). Given per-channel statistics
`mean`/`std`, the first layer normalises, so that models take raw images.
Convolutions have no bias when a normalisation follows them, as in the
reference implementations, so that parameter counts match the published
ones.
"""

from typing import Optional

import keras
import numpy as np

_INIT = "he_normal"


def _norm(kind: Optional[str], name: str):
    """The normalisation layer of a kind, or None.

    "batch" is BatchNormalization; "layer" is layer normalisation: for
    images, GroupNormalization with one group (normalises each example over
    height, width and channels, with a per-channel scale and offset, as
    LayerNorm over (C, H, W) in PyTorch CNNs; same parameter count as
    BatchNormalization); for vectors, LayerNormalization.
    """
    if kind is None or kind == "none":
        return None
    if kind == "batch":
        return keras.layers.BatchNormalization(momentum=0.9, name=name)
    if kind == "layer":
        return keras.layers.GroupNormalization(groups=1, name=name)
    raise ValueError(
        f"Unknown normalisation {kind!r}: use 'batch', 'layer' or None."
    )


def _normalize(x, kind, name):
    """`x` through the normalisation layer of `kind`, if any."""
    layer = _norm(kind, name)
    return x if layer is None else layer(x)


def _norm_relu(x, kind, name):
    x = _normalize(x, kind, name + "_norm")
    return keras.layers.ReLU(name=name + "_relu")(x)


def _conv(filters, kernel, strides, name, use_bias=False):
    return keras.layers.Conv2D(
        filters, kernel, strides=strides, padding="same", use_bias=use_bias,
        kernel_initializer=_INIT, name=name,
    )


def _inputs(input_shape, mean=None, std=None):
    """The model's Input and, with `mean`, its per-channel normalisation."""
    inputs = keras.Input(tuple(input_shape))
    if mean is None:
        return inputs, inputs
    normalise = keras.layers.Normalization(
        axis=-1,
        mean=np.asarray(mean, "float32"),
        variance=np.square(np.asarray(std, "float32")),
        name="normalise",
    )
    return inputs, normalise(inputs)


def _head(x, num_classes):
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    return keras.layers.Dense(num_classes, dtype="float32", name="logits")(x)


def _residual(x, filters, strides, norm, name):
    """The residual branch of a post-activation basic block (He et al.)."""
    y = _norm_relu(_conv(filters, 3, strides, name + "_conv1")(x),
                   norm, name + "_a")
    y = _conv(filters, 3, 1, name + "_conv2")(y)
    return _normalize(y, norm, name + "_b_norm")


def _blocks_per_group(depth, extra, network, examples):
    """n of a network of 6n + `extra` layers; a ValueError for others."""
    if (depth - extra) % 6 or depth < 6 + extra:
        raise ValueError(
            f"{network} depth must be 6n + {extra} ({examples}). "
            f"Received: depth={depth}"
        )
    return (depth - extra) // 6


# --------------------------------------------------------- WideResNet


def wide_resnet(
    input_shape, num_classes, depth=28, width=10, norm="batch", dropout=0.0,
    mean=None, std=None,
):
    """WideResNet-depth-width (pre-activation basic blocks).

    Three groups of (depth - 4) / 6 blocks with 16k, 32k and 64k channels
    (k = `width`); a 1x1 convolution on the shortcut where the shape
    changes. WRN-28-10 has 36.5M parameters for 10 classes.

    References:
        Zagoruyko and Komodakis, "Wide Residual Networks", BMVC 2016
        (table 1); Foret et al. 2021, tables 1 and 10 (WRN-28-10).
    """
    blocks = _blocks_per_group(
        depth, 4, "WideResNet", "10, 16, 22, 28, 40, ..."
    )
    inputs, x = _inputs(input_shape, mean, std)
    x = _conv(16, 3, 1, "stem")(x)
    channels = 16
    for group, base in enumerate((16, 32, 64)):
        filters = base * width
        for block in range(blocks):
            name = f"g{group}b{block}"
            strides = 2 if group > 0 and block == 0 else 1
            out = _norm_relu(x, norm, name + "_a")
            if channels != filters or strides != 1:
                shortcut = _conv(filters, 1, strides, name + "_proj")(out)
            else:
                shortcut = x
            y = _conv(filters, 3, strides, name + "_conv1")(out)
            y = _norm_relu(y, norm, name + "_b")
            if dropout:
                y = keras.layers.Dropout(dropout, name=name + "_drop")(y)
            y = _conv(filters, 3, 1, name + "_conv2")(y)
            x = keras.layers.Add(name=name + "_add")([shortcut, y])
            channels = filters
    x = _norm_relu(x, norm, "final")
    outputs = _head(x, num_classes)
    return keras.Model(inputs, outputs, name=f"wrn{depth}_{width}")


# --------------------------------------------------- CIFAR ResNet (6n+2)


@keras.saving.register_keras_serializable(package="experiments")
class ZeroPadShortcut(keras.layers.Layer):
    """He et al.'s option A shortcut: subsample by 2, zero-pad channels."""

    def __init__(self, filters, **kwargs):
        super().__init__(**kwargs)
        self.filters = filters

    def call(self, x):
        x = x[:, ::2, ::2, :]
        extra = self.filters - x.shape[-1]
        return keras.ops.pad(
            x, [[0, 0], [0, 0], [0, 0], [extra // 2, extra - extra // 2]]
        )

    def compute_output_shape(self, shape):
        half = [None if s is None else (s + 1) // 2 for s in shape[1:3]]
        return (shape[0], *half, self.filters)

    def get_config(self):
        return {**super().get_config(), "filters": self.filters}


def cifar_resnet(
    input_shape, num_classes, depth=32, norm="batch", mean=None, std=None
):
    """He et al.'s CIFAR ResNet-(6n+2): 16, 32, 64 channels, n blocks each.

    Post-activation basic blocks and parameter-free (option A) shortcuts.
    ResNet-32 (n = 5) has 0.46M parameters.

    References:
        He et al., "Deep Residual Learning for Image Recognition", CVPR
        2016, section 4.2 and table 6; Foret et al. 2021, table 4
        (ResNet-32 under label noise).
    """
    blocks = _blocks_per_group(
        depth, 2, "CIFAR ResNet", "20, 32, 44, 56, 110"
    )
    inputs, x = _inputs(input_shape, mean, std)
    x = _norm_relu(_conv(16, 3, 1, "stem")(x), norm, "stem")
    for group, filters in enumerate((16, 32, 64)):
        for block in range(blocks):
            name = f"g{group}b{block}"
            strides = 2 if group > 0 and block == 0 else 1
            y = _residual(x, filters, strides, norm, name)
            if strides != 1:
                x = ZeroPadShortcut(filters, name=name + "_short")(x)
            x = keras.layers.Add(name=name + "_add")([x, y])
            x = keras.layers.ReLU(name=name + "_relu")(x)
    return keras.Model(inputs, _head(x, num_classes), name=f"resnet{depth}")


# ------------------------------------------------------------ ResNet-18


def resnet18(input_shape, num_classes, norm="layer", mean=None, std=None):
    """ResNet-18 for 32x32 images, LayerNorm by default (Baek et al.).

    A 3x3 stem of 64 channels (no max pooling), four stages of two basic
    blocks with 64, 128, 256 and 512 channels, 1x1 projection shortcuts
    where the shape changes: 11.2M parameters for 10 classes. With
    `norm="layer"` every BatchNormalization is replaced by layer
    normalisation (see `_norm`), which 1-SAM needs.

    References:
        He et al. 2016 (ResNet-18); Baek et al., "Why is SAM Robust to
        Label Noise?", ICLR 2024, section 4.3 and appendix A.2.
    """
    inputs, x = _inputs(input_shape, mean, std)
    x = _norm_relu(_conv(64, 3, 1, "stem")(x), norm, "stem")
    channels = 64
    for stage, filters in enumerate((64, 128, 256, 512)):
        for block in range(2):
            name = f"s{stage}b{block}"
            strides = 2 if stage > 0 and block == 0 else 1
            y = _residual(x, filters, strides, norm, name)
            if strides != 1 or channels != filters:
                x = _conv(filters, 1, strides, name + "_proj")(x)
                x = _normalize(x, norm, name + "_proj_norm")
            x = keras.layers.Add(name=name + "_add")([x, y])
            x = keras.layers.ReLU(name=name + "_relu")(x)
            channels = filters
    return keras.Model(inputs, _head(x, num_classes), name="resnet18")


# ------------------------------------------------------- digits models


def mlp(
    input_shape, num_classes, hidden_units=128, depth=2, norm=None,
    mean=None, std=None,
):
    """A ReLU MLP with `depth` hidden layers; optional LayerNorm after each.

    `norm="layer"` gives the LayerNorm MLP used for 1-SAM on digits.
    """
    inputs, x = _inputs(input_shape, mean, std)
    x = keras.layers.Flatten(name="flatten")(x)
    for i in range(depth):
        x = keras.layers.Dense(
            hidden_units, use_bias=norm is None, name=f"dense{i}"
        )(x)
        if norm is not None:
            x = keras.layers.LayerNormalization(name=f"dense{i}_norm")(x)
        x = keras.layers.ReLU(name=f"dense{i}_relu")(x)
    outputs = keras.layers.Dense(num_classes, dtype="float32", name="logits")(x)
    suffix = "_ln" if norm else ""
    return keras.Model(inputs, outputs, name=f"mlp{suffix}")


def small_cnn(
    input_shape, num_classes, filters=32, norm="batch", mean=None, std=None
):
    """Two 3x3 conv blocks (filters, 2 x filters), pooling, a Dense head."""
    inputs, x = _inputs(input_shape, mean, std)
    for i, f in enumerate((filters, 2 * filters)):
        x = _norm_relu(_conv(f, 3, 1, f"conv{i}", norm is None)(x),
                       norm, f"conv{i}")
        if i == 0:
            x = keras.layers.MaxPooling2D(name="pool0")(x)
    return keras.Model(inputs, _head(x, num_classes), name="small_cnn")


BUILDERS = {
    "mlp": mlp,
    "mlp_ln": lambda s, c, **kw: mlp(s, c, norm="layer", **kw),
    "small_cnn": small_cnn,
    "wrn": wide_resnet,
    "resnet32": cifar_resnet,
    "resnet18_ln": resnet18,
}

# Published parameter counts (10 classes) of the papers' models.
PUBLISHED_PARAMS = {
    "wrn28_10": 36.5e6,  # Zagoruyko and Komodakis 2016, table 1.
    "resnet32": 0.46e6,  # He et al. 2016, table 6.
    "resnet18": 11.2e6,  # He et al. 2016 for 32x32 inputs (11,173,962).
}


def build(
    name: str,
    input_shape,
    num_classes: int,
    mean=None,
    std=None,
    **kwargs,
) -> keras.Model:
    """Builds model `name`, with an input normalisation if `mean` is given.

    Args:
        name: One of `BUILDERS`: "mlp", "mlp_ln", "small_cnn", "wrn",
            "resnet32", "resnet18_ln".
        input_shape: Tuple, the shape of one example.
        num_classes: Integer, the number of logits.
        mean: Optional per-channel mean of the raw inputs; with `std`,
            `(x - mean) / std` becomes the model's first layer.
        std: Optional per-channel standard deviation.
        **kwargs: The builder's own arguments (`depth`, `width`, `norm`,
            `hidden_units`, ...).

    Returns:
        A functional `keras.Model` returning logits.
    """
    if name not in BUILDERS:
        raise ValueError(
            f"Unknown model {name!r}: use one of {sorted(BUILDERS)}."
        )
    return BUILDERS[name](
        tuple(input_shape), num_classes, mean=mean, std=std, **kwargs
    )


def count_trainable(model: keras.Model) -> int:
    """Number of trainable parameters (what papers count)."""
    return int(sum(np.prod(v.shape) for v in model.trainable_weights))
