"""Tests for experiments/data.py: digits, mock tfds, augmentation, mixup."""

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from experiments import data as data_lib


@pytest.fixture(scope="module")
def cifar():
    with tfds.testing.mock_data(num_examples=24):
        return data_lib.load("cifar10")


def test_digits_subsets_and_shapes():
    full = data_lib.load("digits")
    assert full.x_train.shape == (1347, 64) and full.num_classes == 10
    assert full.mean is None and full.augmentation["cutout"] == 0
    small = data_lib.load("digits", image=True, train_size=50, test_size=20)
    assert small.x_train.shape == (50, 8, 8, 1)
    assert small.x_test.shape == (20, 8, 8, 1)
    assert small.input_shape == (8, 8, 1)


def test_mock_tfds_cifar10(cifar):
    assert cifar.x_train.dtype == np.uint8
    assert cifar.x_train.shape[1:] == (32, 32, 3)
    assert len(cifar.x_train) == len(cifar.y_train) == 24
    assert cifar.num_classes == 10
    pixels = cifar.x_train.reshape(-1, 3).astype("float64")
    np.testing.assert_allclose(cifar.mean, pixels.mean(0), rtol=1e-5)
    np.testing.assert_allclose(cifar.std, pixels.std(0), rtol=1e-5)
    assert cifar.augmentation == {"pad": 4, "flip": True, "cutout": 16}


def test_unknown_dataset_raises():
    with pytest.raises(ValueError, match="Unknown data set"):
        data_lib.load("imagenet")


def test_train_dataset_batches(cifar):
    ds = data_lib.train_dataset(cifar, cifar.y_train, 8, seed=0)
    batches = list(ds)
    assert len(batches) == 3  # 24 // 8, static batches
    for x, y in batches:
        assert x.shape == (8, 32, 32, 3) and x.dtype == tf.float32
        np.testing.assert_allclose(y.numpy().sum(1), 1.0)
    labels = np.concatenate([b[1].numpy().argmax(1) for b in batches])
    assert sorted(labels) == sorted(cifar.y_train)  # one pass, shuffled
    with pytest.raises(ValueError, match="exceeds"):
        data_lib.train_dataset(cifar, cifar.y_train, 64, seed=0)


def test_train_dataset_without_augmentation_keeps_images():
    data = data_lib.load("digits", train_size=32)
    (x, y), = list(data_lib.train_dataset(data, data.y_train, 32, seed=0))
    rows = {tuple(r) for r in data.x_train}
    assert all(tuple(r) in rows for r in x.numpy())


def test_random_crop_flip_preserves_pixels_without_pad():
    image = tf.reshape(tf.range(2 * 3 * 1, dtype=tf.float32), (2, 3, 1))
    out = data_lib.random_crop_flip(image, pad=0, flip=True).numpy()
    assert sorted(out.ravel()) == sorted(image.numpy().ravel())
    padded = data_lib.random_crop_flip(image, pad=2, flip=False)
    assert padded.shape == image.shape


def test_cutout_square_is_filled():
    images = tf.fill((64, 32, 32, 3), 200.0)
    out = data_lib.cutout(images, 8, fill=[1.0, 2.0, 3.0]).numpy()
    filled = np.all(out == [1.0, 2.0, 3.0], axis=-1)
    untouched = np.all(out == 200.0, axis=-1)
    assert np.all(filled | untouched)
    counts = filled.sum(axis=(1, 2))
    assert counts.max() == 64 and counts.min() > 0  # clipped at borders
    for mask in filled:  # one axis-aligned rectangle per image
        rows, cols = np.nonzero(mask)
        assert mask[rows.min():rows.max() + 1, cols.min():cols.max() + 1].all()


@pytest.mark.skipif(not hasattr(keras.layers, "RandomErasing"),
                    reason="this Keras has no RandomErasing")
def test_random_erasing_as_cutout():
    layer = data_lib.cutout_layer(16, 32, [10.0, 20.0, 30.0])
    out = layer(tf.fill((4, 32, 32, 3), 200.0), training=True).numpy()
    filled = np.all(out == [10.0, 20.0, 30.0], axis=-1)
    np.testing.assert_array_equal(filled.sum(axis=(1, 2)), [256] * 4)


def test_mixup_is_a_convex_combination_of_pairs():
    # With inputs equal to their one-hot labels, mixing inputs and labels
    # with the same lambda and partner gives equal outputs.
    labels = tf.one_hot(tf.range(16) % 5, 5)
    x, y = data_lib.mixup(labels, labels, alpha=0.4)
    np.testing.assert_allclose(x.numpy(), y.numpy(), atol=1e-6)
    np.testing.assert_allclose(y.numpy().sum(1), 1.0, atol=1e-6)
    assert np.all(y.numpy() >= -1e-7)
    assert not np.allclose(y.numpy(), labels.numpy())  # something mixed
    images = tf.random.uniform((6, 4, 4, 3))
    mixed, _ = data_lib.mixup(images, tf.one_hot(tf.range(6), 6), 1.0)
    assert mixed.shape == images.shape


def test_mixup_in_pipeline_gives_soft_labels():
    data = data_lib.load("digits", train_size=64)
    ds = data_lib.train_dataset(data, data.y_train, 32, 0, mixup_alpha=1.0)
    x, y = next(iter(ds))
    assert x.shape == (32, 64)
    assert np.sum((y.numpy() > 0) & (y.numpy() < 1)) > 0


def test_predict_classes_in_order():
    data = data_lib.load("digits", train_size=40)
    inputs = keras.Input((64,))
    model = keras.Model(inputs, keras.layers.Dense(10)(inputs))
    expected = model.predict(data.x_train, verbose=0).argmax(1)
    got = data_lib.predict_classes(model, data, data.x_train, batch_size=16)
    np.testing.assert_array_equal(got, expected)
