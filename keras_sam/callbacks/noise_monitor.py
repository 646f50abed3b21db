"""`NoiseMonitor`: clean vs noisy training accuracy and test accuracy."""

import keras
import numpy as np

from keras_sam.noise import NoisyLabels


def _class_indices(y, what):
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] > 1:
        return y.argmax(axis=1)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise ValueError(
            f"{what} must be integer class indices of shape (n,) or one-hot "
            f"labels of shape (n, classes). Received shape {y.shape}."
        )
    return y


def _accuracy(predicted, labels, mask=None):
    if mask is not None:
        predicted, labels = predicted[mask], labels[mask]
    if len(labels) == 0:
        return float("nan")
    return float(np.mean(predicted == labels))


class NoiseMonitor(keras.callbacks.Callback):
    """Training accuracy on the clean and noisy subsets, and test accuracy.

    At the end of each epoch it predicts the training inputs (and the test
    inputs) once, in inference mode, with the weights reached at that point,
    and writes into `logs` (so `History`, `CSVLogger` and `TensorBoard`
    have them):

    - `train_clean_accuracy`: accuracy on the examples whose label was
      left clean.
    - `train_noisy_accuracy`: accuracy on the corrupted examples against
      their noisy labels, i.e. how much of the noise is memorised.
    - `train_noisy_true_accuracy`: accuracy on the corrupted examples
      against their true labels.
    - `test_accuracy`, and `best_test_accuracy` / `best_epoch`: the best
      test accuracy so far, the early-stopping accuracy (with test data).

    This is one extra forward pass over the data per epoch (no gradient).
    A subset with no examples gives NaN.

    Args:
        x: Training inputs (an array, or anything `model.predict` takes
            that yields the examples in the order of `noisy`, unshuffled).
        noisy: `keras_sam.noise.NoisyLabels` of the training set: the labels
            trained on, the clean labels and the `is_noisy` mask.
        test_data: Optional `(x_test, y_test)` with clean test labels
            (integers or one-hot).
        batch_size: Integer, the batch size for prediction. Defaults to 256.

    >>> import keras, keras_sam, numpy as np
    >>> from keras_sam.callbacks import NoiseMonitor
    >>> from keras_sam.noise import symmetric_noise
    >>> x = np.random.rand(20, 4).astype("float32")
    >>> noisy = symmetric_noise(np.arange(20) % 3, 0.3)
    >>> inputs = keras.Input((4,))
    >>> model = keras_sam.SAMModel(inputs, keras.layers.Dense(3)(inputs))
    >>> model.compile(optimizer="sgd", loss=keras.losses.
    ...     SparseCategoricalCrossentropy(from_logits=True))
    >>> monitor = NoiseMonitor(x, noisy, test_data=(x, noisy.clean))
    >>> history = model.fit(x, noisy.labels, epochs=2, verbose=0,
    ...                     callbacks=[monitor])
    >>> sorted(k for k in history.history if "accuracy" in k)[:2]
    ['best_test_accuracy', 'test_accuracy']

    References:
        Baek et al., "Why is SAM Robust to Label Noise?", ICLR 2024,
        figures 1-2 (clean vs noisy training accuracy, peak test accuracy);
        Foret et al. 2021, section 3.3.
    """

    def __init__(self, x, noisy, test_data=None, batch_size=256):
        super().__init__()
        if not isinstance(noisy, NoisyLabels):
            raise ValueError(
                "`noisy` must be a `keras_sam.noise.NoisyLabels` (from "
                "symmetric_noise, transition_noise, labels_from_file, ...). "
                f"Received: {type(noisy).__name__}"
            )
        n = len(noisy.labels)
        if not len(noisy.clean) == len(noisy.is_noisy) == n:
            raise ValueError(
                "`noisy.labels`, `noisy.clean` and `noisy.is_noisy` must "
                f"have the same length. Received {n}, {len(noisy.clean)} "
                f"and {len(noisy.is_noisy)}."
            )
        if hasattr(x, "__len__") and len(x) != n:
            raise ValueError(
                f"`x` has {len(x)} examples but `noisy` has {n} labels: pass "
                "the training inputs that the labels belong to, in order."
            )
        self.x = x
        self.noisy = noisy
        self._noisy_labels = _class_indices(noisy.labels, "`noisy.labels`")
        self._clean_labels = _class_indices(noisy.clean, "`noisy.clean`")
        self._is_noisy = np.asarray(noisy.is_noisy, dtype=bool)
        if test_data is not None:
            if len(test_data) != 2:
                raise ValueError(
                    "`test_data` must be a pair (x_test, y_test). Received "
                    f"a sequence of length {len(test_data)}."
                )
            test_data = (test_data[0], _class_indices(test_data[1], "y_test"))
        self.test_data = test_data
        self.batch_size = int(batch_size)
        self.best_test_accuracy = float("nan")
        self.best_epoch = -1

    def _predict(self, x):
        outputs = self.model.predict(x, batch_size=self.batch_size, verbose=0)
        outputs = np.asarray(outputs)
        if outputs.ndim != 2 or outputs.shape[1] < 2:
            raise ValueError(
                "NoiseMonitor needs a classifier with one output of shape "
                f"(batch, classes), classes >= 2. Received outputs of shape "
                f"{outputs.shape}."
            )
        return outputs.argmax(axis=1)

    def on_train_begin(self, logs=None):
        self.best_test_accuracy = float("nan")
        self.best_epoch = -1

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        predicted = self._predict(self.x)
        clean, noisy = ~self._is_noisy, self._is_noisy
        logs["train_clean_accuracy"] = _accuracy(
            predicted, self._clean_labels, clean
        )
        logs["train_noisy_accuracy"] = _accuracy(
            predicted, self._noisy_labels, noisy
        )
        logs["train_noisy_true_accuracy"] = _accuracy(
            predicted, self._clean_labels, noisy
        )
        if self.test_data is None:
            return
        x_test, y_test = self.test_data
        accuracy = _accuracy(self._predict(x_test), y_test)
        if not accuracy <= self.best_test_accuracy:  # also replaces NaN
            self.best_test_accuracy, self.best_epoch = accuracy, epoch
        logs["test_accuracy"] = accuracy
        logs["best_test_accuracy"] = self.best_test_accuracy
        logs["best_epoch"] = self.best_epoch
