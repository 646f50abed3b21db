"""SAMModel's train step against independent hand computations."""

import keras
from keras import ops
import numpy as np
import pytest
import tensorflow as tf

import keras_sam
from tests import reference
from tests.helpers import LEARNING_RATE
from tests.helpers import RHO
from tests.helpers import TinyNet
from tests.helpers import assert_weights_close
from tests.helpers import build
from tests.helpers import initial_weights
from tests.helpers import mirrored
from tests.helpers import weights_of


@pytest.mark.parametrize("form", ["functional", "subclass", "wrapped"])
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_one_step_matches_algorithm_1(form, optimizer):
    x, y = reference.tiny_data()
    model = build(form, optimizer, rho=RHO)
    model.fit(x, y, batch_size=len(y), epochs=1, shuffle=False, verbose=0)

    g_sam = reference.sam_gradient(initial_weights(), x, y, RHO)
    update = {"sgd": reference.sgd_update, "adam": reference.adam_update}
    expected = update[optimizer](initial_weights(), g_sam, LEARNING_RATE)
    assert_weights_close(weights_of(model), expected)


def test_sample_weight_is_respected():
    x, y = reference.tiny_data()
    sample_weight = np.linspace(0.0, 2.0, len(y)).astype("float32")
    model = build(rho=RHO)
    model.fit(
        x, y, sample_weight=sample_weight, batch_size=len(y), shuffle=False,
        verbose=0,
    )
    g_sam = reference.sam_gradient(initial_weights(), x, y, RHO, sample_weight)
    expected = reference.sgd_update(initial_weights(), g_sam, LEARNING_RATE)
    assert_weights_close(weights_of(model), expected)


def test_reported_metrics_are_measured_at_w():
    x, y = reference.tiny_data()
    model = build(rho=RHO)
    logs = model.fit(x, y, batch_size=len(y), shuffle=False, verbose=0).history
    w = initial_weights()
    loss_at_w = float(reference.loss(w, x, y))
    grads = reference.gradient(w, x, y)
    norm = float(tf.sqrt(sum(tf.reduce_sum(g**2) for g in grads)))
    eps = [RHO * g / norm for g in grads]
    loss_at_w_eps = float(
        reference.loss([a + b for a, b in zip(w, eps)], x, y)
    )
    np.testing.assert_allclose(logs["loss"][0], loss_at_w, rtol=1e-5)
    np.testing.assert_allclose(logs["grad_norm"][0], norm, rtol=1e-5)
    np.testing.assert_allclose(
        logs["sharpness"][0], loss_at_w_eps - loss_at_w, rtol=1e-4
    )


def plain_network(dropout=False):
    """The reference network as a plain Keras model (fixed weights)."""
    keras.utils.set_random_seed(7)
    layers = reference.tiny_layers()
    if dropout:
        layers.insert(1, keras.layers.Dropout(0.5, seed=3))
    model = keras.Sequential([keras.Input((reference.INPUT_DIM,)), *layers])
    for variable, value in zip(model.trainable_variables, initial_weights()):
        variable.assign(value)
    return model


@pytest.mark.parametrize("dropout", [False, True])
def test_rho_zero_reproduces_the_base_optimizer(dropout):
    x, y = reference.tiny_data(n=16)

    def train(sam, rho):
        model = plain_network(dropout=dropout)
        if sam:
            model = keras_sam.SAMModel.from_model(model, rho=rho)
        model.compile(
            optimizer=keras.optimizers.SGD(LEARNING_RATE, momentum=0.9),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
        keras.utils.set_random_seed(11)
        model.fit(x, y, batch_size=4, epochs=2, shuffle=False, verbose=0)
        return weights_of(model)

    plain = train(sam=False, rho=None)
    # With dropout this also shows that both passes use the same mask and
    # that the random state advances exactly as in a plain step.
    assert_weights_close(train(sam=True, rho=0.0), plain, atol=1e-7)
    with pytest.raises(AssertionError):
        assert_weights_close(train(sam=True, rho=RHO), plain, atol=1e-4)


def assert_one_grouped_sam_step(model, x, y, group_size):
    """Asserts the model made one SGD step with the SAM gradient of groups
    of `group_size` (one eps each), not with the whole batch's."""
    g = reference.grouped_sam_gradient(initial_weights(), x, y, RHO, group_size)
    expected = reference.sgd_update(initial_weights(), g, LEARNING_RATE)
    assert_weights_close(weights_of(model), expected)
    full = reference.sam_gradient(initial_weights(), x, y, RHO)
    full_batch = reference.sgd_update(initial_weights(), full, LEARNING_RATE)
    with pytest.raises(AssertionError):
        assert_weights_close(weights_of(model), full_batch, atol=1e-5)


@pytest.mark.parametrize("group_size", [1, 2, 4])
def test_m_groups_within_one_device(group_size):
    x, y = reference.tiny_data(n=8)
    model = build(rho=RHO, m=group_size)
    model.fit(x, y, batch_size=8, shuffle=False, verbose=0)
    assert_one_grouped_sam_step(model, x, y, group_size)


@pytest.mark.parametrize(
    "replicas, group_size", [(2, None), (4, None), (2, 2)]
)
def test_mirrored_strategy_perturbs_per_replica(replicas, group_size):
    x, y = reference.tiny_data(n=8)
    # ReductionToOneDevice (helpers.mirrored): collective ops cannot mix
    # group sizes in one process, and the tests use 2 and 4 replicas.
    with mirrored(replicas).scope():
        model = build(rho=RHO, m=group_size)
    model.fit(x, y, batch_size=8, shuffle=False, verbose=0)

    # Each replica gets a contiguous slice of the global batch and computes
    # its own eps; the optimizer applies the mean of the replicas' g_sam.
    per_replica = len(y) // replicas
    assert_one_grouped_sam_step(model, x, y, group_size or per_replica)


def test_jit_and_steps_per_execution_match_the_eager_graph():
    x, y = reference.tiny_data(n=16)
    results = []
    for jit, steps in [(False, 1), (True, 1), (True, 2)]:
        model = build(rho=RHO, m=2, jit_compile=jit)
        model.compile(
            optimizer=keras.optimizers.SGD(LEARNING_RATE),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            jit_compile=jit,
            steps_per_execution=steps,
        )
        model.fit(x, y, batch_size=4, epochs=2, shuffle=False, verbose=0)
        results.append(weights_of(model))
    assert_weights_close(results[1], results[0], atol=1e-5)
    assert_weights_close(results[2], results[0], atol=1e-5)


def test_batch_norm_statistics_come_from_the_pass_at_w():
    x, _ = reference.tiny_data(n=8)
    y = np.arange(8) % 3

    def network():
        keras.utils.set_random_seed(5)
        return keras.Sequential(
            [
                keras.Input((reference.INPUT_DIM,)),
                keras.layers.Dense(6),
                keras.layers.BatchNormalization(momentum=0.5),
                keras.layers.Dense(3),
            ]
        )

    reference_net = network()
    reference_net(x, training=True)  # one forward pass at w
    expected = [v.numpy() for v in reference_net.non_trainable_variables]

    model = keras_sam.SAMModel.from_model(network(), rho=1.0)
    model.compile(
        optimizer=keras.optimizers.SGD(LEARNING_RATE),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    model.fit(x, y, batch_size=8, shuffle=False, verbose=0)
    bn = next(
        layer
        for layer in model._flatten_layers()
        if isinstance(layer, keras.layers.BatchNormalization)
    )
    actual = [bn.moving_mean.numpy(), bn.moving_variance.numpy()]
    assert_weights_close(actual, expected)


def test_zero_gradient_leaves_weights_finite_and_unchanged():
    x, y = reference.tiny_data()
    base = keras.Sequential(
        [keras.Input((reference.INPUT_DIM,)), keras.layers.Dense(3)]
    )
    model = keras_sam.SAMModel.from_model(base, rho=RHO)
    model.compile(
        optimizer=keras.optimizers.SGD(LEARNING_RATE),
        loss=lambda y_true, y_pred: 0.0 * keras.ops.sum(y_pred),
    )
    before = weights_of(model)
    logs = model.fit(x, y, batch_size=8, verbose=0).history
    after = weights_of(model)
    assert all(np.isfinite(w).all() for w in after)
    assert_weights_close(after, before, atol=0)
    assert logs["grad_norm"][0] == 0.0


def test_rho_variable_changes_the_next_step_without_retracing():
    x, y = reference.tiny_data()
    model = build(rho=RHO)
    model.fit(x, y, batch_size=8, shuffle=False, verbose=0)
    train_function = model.train_function
    start = weights_of(model)
    model.rho.assign(0.7)
    model.fit(x, y, batch_size=8, shuffle=False, verbose=0)
    assert model.train_function is train_function
    g_sam = reference.sam_gradient(start, x, y, 0.7)
    expected = reference.sgd_update(start, g_sam, LEARNING_RATE)
    assert_weights_close(weights_of(model), expected)


@pytest.mark.parametrize("compiled", [False, True])
@pytest.mark.parametrize("form", ["functional", "wrapped"])
def test_clone_model_keeps_rho_and_options(form, compiled):
    settings = {"rho": 0.2, "m": 2, "adaptive": True, "p": 3.0}
    hidden, logits = reference.tiny_layers()
    inputs = keras.Input((reference.INPUT_DIM,))
    if form == "functional":
        model = keras_sam.SAMModel(inputs, logits(hidden(inputs)), **settings)
    else:
        model = keras_sam.SAMModel.from_model(
            keras.Sequential([inputs, hidden, logits]), **settings)
    if compiled:
        model.compile(optimizer="sgd", loss="mse")
    clone = keras.models.clone_model(model)
    assert type(clone) is type(model)
    assert clone.get_sam_config() == pytest.approx(model.get_sam_config())
    assert not any(a is b for a, b in zip(clone.weights, model.weights))
    # The next functional model, SAM or not, keeps its own settings.
    fresh = keras_sam.SAMModel(inputs, logits(hidden(inputs)))
    assert fresh.get_sam_config()["rho"] == pytest.approx(0.05)
    assert fresh.sam_options.m is None


def test_a_clone_trains_like_the_model_it_copies():
    x, y = reference.tiny_data()
    model = build(rho=RHO, m=2)
    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    clone.compile(
        optimizer=keras.optimizers.SGD(LEARNING_RATE),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    for trained in (model, clone):
        trained.fit(x, y, batch_size=len(y), shuffle=False, verbose=0)
    assert_weights_close(weights_of(clone), weights_of(model))
    assert_weights_close(
        weights_of(model),
        reference.sgd_update(
            initial_weights(),
            reference.grouped_sam_gradient(initial_weights(), x, y, RHO, 2),
            LEARNING_RATE,
        ),
    )


@pytest.mark.parametrize("form", ["functional", "subclass", "wrapped"])
def test_keras_file_round_trip_keeps_sam_settings(form, tmp_path):
    x, y = reference.tiny_data()
    model = build(form, rho=RHO, m=2, p=3.0)
    model.fit(x, y, batch_size=8, verbose=0)
    model.rho.assign(0.123)
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded, keras_sam.SAMModel)
    assert (loaded.m, loaded.p) == (2, 3.0)
    np.testing.assert_allclose(float(loaded.rho.numpy()), 0.123)
    assert_weights_close(weights_of(loaded), weights_of(model), atol=0)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0))
    loaded.fit(x, y, batch_size=8, verbose=0)  # still trains with SAM


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"rho": -0.1}, "`rho` must be a finite number >= 0"),
        ({"rho": float("nan")}, "`rho` must be a finite number >= 0"),
        ({"rho": "big"}, "`rho` must be a non-negative number"),
        ({"m": 0}, "`m` must be a positive integer"),
        ({"m": 2.5}, "`m` must be a positive integer"),
        ({"p": 1}, "`p` must be > 1"),
        ({"p": "l2"}, "`p` must be a number > 1"),
    ],
)
def test_bad_arguments_raise_clear_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        build(**kwargs)


@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize("source", ["numpy", "dataset"])
def test_m_with_a_remainder_batch_trains_as_documented(jit, source):
    """Batches of 6 in groups of 3, then a remainder of 2 (< m): one group
    of 2."""
    x, y = reference.tiny_data(n=8)
    model = build(rho=RHO, m=3, jit_compile=jit)
    if source == "numpy":
        model.fit(x, y, batch_size=6, shuffle=False, verbose=0)
    else:  # a dynamic batch dimension: no drop_remainder
        data = tf.data.Dataset.from_tensor_slices((x, y)).batch(6)
        model.fit(data, verbose=0)
    weights = initial_weights()
    grads = reference.grouped_sam_gradient(weights, x[:6], y[:6], RHO, 3)
    weights = reference.sgd_update(weights, grads, LEARNING_RATE)
    grads = reference.sam_gradient(weights, x[6:], y[6:], RHO)
    expected = reference.sgd_update(weights, grads, LEARNING_RATE)
    assert_weights_close(weights_of(model), expected)
    assert np.all(np.isfinite(model.get_weights()[0]))


@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize("source", ["numpy", "dataset"])
def test_m_gives_the_leftover_examples_a_group_of_their_own(jit, source):
    """A batch of 8 with m=3: groups of 3, 3 and 2, weighted 3/8, 3/8, 2/8
    (not one group of 8, which ignored m)."""
    x, y = reference.tiny_data(n=8)
    model = build(rho=RHO, m=3, jit_compile=jit)
    if source == "numpy":
        history = model.fit(x, y, batch_size=8, shuffle=False, verbose=0)
    else:  # a dynamic batch dimension
        data = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)
        history = model.fit(data, verbose=0)
    grads = reference.grouped_sam_gradient(initial_weights(), x, y, RHO, 3)
    expected = reference.sgd_update(initial_weights(), grads, LEARNING_RATE)
    assert_weights_close(weights_of(model), expected)
    whole = reference.sgd_update(
        initial_weights(), reference.sam_gradient(initial_weights(), x, y, RHO),
        LEARNING_RATE)
    assert max(np.max(np.abs(a - b)) for a, b in zip(expected, whole)) > 1e-4
    loss = reference.loss(initial_weights(), x, y)
    np.testing.assert_allclose(history.history["loss"][0], loss, rtol=1e-5)


def test_an_empty_replica_batch_gives_no_nan():
    """5 examples in batches of 4 over 2 replicas: one replica gets none."""
    x, y = reference.tiny_data(n=5)
    # Reduction to one device: no collective ops, whose instance keys this
    # process's later MirroredStrategy tests would share.
    with mirrored(2).scope():
        model = build(rho=RHO, m=2)
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(4)
    model.fit(data, verbose=0)
    assert all(np.all(np.isfinite(w)) for w in weights_of(model))


def test_batch_norm_under_1_sam_is_refused():
    inputs = keras.Input((reference.INPUT_DIM,))
    hidden = keras.layers.BatchNormalization()(keras.layers.Dense(4)(inputs))
    model = keras_sam.SAMModel(inputs, keras.layers.Dense(3)(hidden), m=1)
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    x, y = reference.tiny_data()
    with pytest.raises(ValueError, match="LayerNormalization or Group"):
        model.fit(x, y, batch_size=8, verbose=0)


@keras.saving.register_keras_serializable(package="keras_sam_tests")
class PlainNet(keras.Model):
    """A keras.Model subclass, unbuilt until its first call."""

    def __init__(self, units=3, **kwargs):
        super().__init__(**kwargs)
        self.units = units
        self.dense = keras.layers.Dense(units)

    def call(self, inputs):
        return self.dense(inputs)

    def get_config(self):
        return {**super().get_config(), "units": self.units}


def test_from_model_turns_a_subclassed_model_into_a_sam_model(tmp_path):
    plain = PlainNet(units=3)
    model = keras_sam.SAMModel.from_model(plain, rho=0.1, m=2)
    assert model is plain
    assert isinstance(model, PlainNet) and isinstance(model, keras_sam.SAMModel)
    assert type(model).__name__ == "PlainNet"
    model.compile(optimizer="sgd", loss="mse")
    model.fit(np.ones((4, 4)), np.ones((4, 3)), verbose=0)  # builds lazily
    assert [v.name for v in model.weights] == ["kernel", "bias"]
    path = str(tmp_path / "plain_net.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded, PlainNet) and isinstance(loaded, keras_sam.SAMModel)
    assert loaded.units == 3 and loaded.m == 2
    np.testing.assert_allclose(float(loaded.rho.numpy()), 0.1)
    np.testing.assert_allclose(loaded.predict(np.ones((2, 4)), verbose=0),
                               model.predict(np.ones((2, 4)), verbose=0))
    with pytest.raises(ValueError, match="already trains with SAM"):
        keras_sam.SAMModel.from_model(model)


@keras.saving.register_keras_serializable(package="keras_sam_tests")
class FunctionalSubclass(keras_sam.SAMModel):
    """A SAMModel subclass constructed with the functional API."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)


def test_functional_use_of_a_subclass_leaves_other_subclasses_intact(tmp_path):
    inputs = keras.Input((reference.INPUT_DIM,))
    hidden, logits = reference.tiny_layers()
    model = FunctionalSubclass(inputs, logits(hidden(inputs)), rho=0.2, m=2)
    assert isinstance(model, FunctionalSubclass)
    assert keras_sam.SAMModel.__bases__[-1] is keras.Model
    path = str(tmp_path / "functional_subclass.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded, FunctionalSubclass) and loaded.m == 2
    # Subclasses written the usual way still build as before.
    TinyNet(rho=0.1)(np.zeros((1, reference.INPUT_DIM), "float32"))


class RecipeStep(keras_sam.SAMModel):
    """The README's custom `train_step` (keras.io's guide with SAM)."""

    def train_step(self, data):
        x, y = data
        grads, y_pred, loss = self.compute_sam_gradients(x, y)
        self.apply_sam_gradients(grads)
        for metric in self.metrics:
            if metric.name == "loss":
                metric.update_state(loss)
            else:
                metric.update_state(y, y_pred)
        return {m.name: m.result() for m in self.metrics}


class OptimizerApplyStep(RecipeStep):
    """The guide's step with `optimizer.apply` left as it was."""

    def train_step(self, data):
        x, y = data
        grads, _, loss = self.compute_sam_gradients(x, y)
        self.optimizer.apply(grads, self.trainable_variables)
        return {"loss": loss}


def _replica_moving_means(model_class=keras_sam.SAMModel, weights=None,
                          **sam_kwargs):
    """BatchNorm moving means of each of 2 replicas after one step (and
    the trained weights, appended to `weights` if given)."""
    keras.utils.set_random_seed(0)
    # Reduction to one device: collective ops share instance keys across the
    # process's strategies, so one aborted elsewhere would fail this test.
    with mirrored(2).scope():
        inputs = keras.Input((3,))
        normed = keras.layers.BatchNormalization()(
            keras.layers.Dense(4)(inputs)
        )
        if sam_kwargs:
            model = model_class(
                inputs, keras.layers.Dense(1)(normed), **sam_kwargs
            )
        else:
            model = keras.Model(inputs, keras.layers.Dense(1)(normed))
        model.compile("sgd", "mse")
    x = np.concatenate([np.zeros((4, 3)), 5 + np.ones((4, 3))]).astype("f4")
    model.fit(x, np.ones((8, 1)), batch_size=8, shuffle=False, verbose=0)
    bn = model.layers[2]
    if weights is not None:
        weights.append(model.get_weights())
    return [v.numpy() for v in bn.moving_mean.value.values]


def test_moving_statistics_are_averaged_across_replicas_on_request():
    plain = _replica_moving_means()
    assert not np.allclose(plain[0], plain[1])  # Keras: replicas diverge
    np.testing.assert_array_equal(_replica_moving_means(rho=0.0), plain)
    synced = _replica_moving_means(rho=0.0, sync_moving_statistics=True)
    for replica in synced:
        np.testing.assert_allclose(replica, (plain[0] + plain[1]) / 2, 1e-6)


@pytest.mark.parametrize("step", [RecipeStep, OptimizerApplyStep])
def test_custom_steps_keep_synced_moving_statistics(step):
    """A custom train_step under 2 replicas with sync_moving_statistics:
    the same statistics and weights as SAMModel's own step (the recipe's
    `apply_sam_gradients`, or after an `optimizer.apply` step)."""
    weights = []
    kwargs = {"rho": 0.1, "sync_moving_statistics": True}
    expected = _replica_moving_means(weights=weights, **kwargs)
    assert np.allclose(expected[0], expected[1])
    custom = _replica_moving_means(step, weights=weights, **kwargs)
    for replica in custom:
        np.testing.assert_allclose(replica, expected[0], rtol=1e-6)
    for a, b in zip(*weights):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_m_under_one_device_strategy_equals_grouped_hand_sam():
    """OneDeviceStrategy gives a dynamic per-replica batch dimension."""
    x, y = reference.tiny_data(n=8)
    strategy = tf.distribute.OneDeviceStrategy("/cpu:0")
    with strategy.scope():
        model = build(rho=RHO, m=2)
    model.fit(x, y, batch_size=8, shuffle=False, verbose=0)
    grads = reference.grouped_sam_gradient(initial_weights(), x, y, RHO, 2)
    expected = reference.sgd_update(initial_weights(), grads, LEARNING_RATE)
    assert_weights_close(weights_of(model), expected)


def lazy_sequential():
    keras.utils.set_random_seed(0)
    return keras.Sequential([
        keras.layers.Dense(4, activation="relu"), keras.layers.Dropout(0.2),
        keras.layers.Dense(1),
    ])


def test_from_model_of_a_lazily_built_sequential(tmp_path):
    """A Sequential without `keras.Input` (built by its first batch) gets
    SAM in place; rho=0 trains exactly as the plain Sequential."""
    x = np.random.RandomState(0).rand(16, 3).astype("float32")
    y = x.sum(axis=1, keepdims=True)
    trained = []
    for sam in (False, True):
        model = lazy_sequential()
        if sam:
            converted = keras_sam.SAMModel.from_model(model, rho=0.0, m=2)
            assert converted is model and isinstance(model, keras.Sequential)
        model.compile(optimizer="sgd", loss="mse")
        history = model.fit(x, y, batch_size=8, epochs=2, shuffle=False,
                            verbose=0).history
        trained.append(model.get_weights())
    assert "sharpness" in history
    assert_weights_close(trained[1], trained[0], atol=0)
    path = str(tmp_path / "lazy.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded, keras_sam.SAMModel) and loaded.m == 2

    shaped = keras_sam.SAMModel.from_model(lazy_sequential(), input_shape=(3,))
    assert shaped.layers[-1].built and not isinstance(shaped, keras.Sequential)


def test_log_statistics_off_gives_keras_log_keys(tmp_path):
    x, y = reference.tiny_data()
    model = build(rho=RHO, log_statistics=False)
    history = model.fit(x, y, batch_size=4, epochs=2, verbose=0)
    assert sorted(history.history) == ["accuracy", "loss"]
    assert set(model.sam_logs()) == {"rho", "grad_norm", "sharpness"}
    logger = keras_sam.SharpnessLogger()  # reads the model's trackers
    model.fit(x, y, batch_size=4, verbose=0, callbacks=[logger])
    assert np.isfinite(logger.epochs[-1]["grad_norm"])
    assert model.get_config()["log_statistics"] is False
    path = str(tmp_path / "quiet.keras")
    model.save(path)
    assert keras.models.load_model(path).sam_options.log_statistics is False
    with pytest.raises(ValueError, match="log_statistics"):
        build(log_statistics="no")


class RunningSum(keras.layers.Layer):
    """Identity that keeps a running sum and count of what it sees in
    training (state a layer updates in `call` with `assign_add`)."""

    def build(self, input_shape):
        self.total = self.add_weight(shape=(), initializer="zeros",
                                     trainable=False, name="total")
        self.count = self.add_weight(shape=(), initializer="zeros",
                                     trainable=False, name="count")

    def call(self, inputs, training=None):
        if training:
            self.total.assign_add(ops.sum(inputs))
            self.count.assign_add(ops.cast(ops.shape(inputs)[0], "float32"))
        return inputs


@pytest.mark.parametrize("m", [4, 3])
def test_state_increments_add_up_across_groups(m):
    """With m groups (and a leftover group for m=3), a running sum and
    count advance as one pass over the batch advances them."""
    x, y = reference.tiny_data(n=16)
    counted = []
    for flavour in ("plain", "sam"):
        keras.utils.set_random_seed(0)
        inputs = keras.Input((reference.INPUT_DIM,))
        hidden = RunningSum()(inputs)
        outputs = keras.layers.Dense(3)(hidden)
        if flavour == "sam":
            model = keras_sam.SAMModel(inputs, outputs, rho=0.1, m=m)
        else:
            model = keras.Model(inputs, outputs)
        model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(
            from_logits=True))
        model.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0)
        layer = model.layers[1]
        counted.append((float(layer.total.numpy()),
                        float(layer.count.numpy())))
    assert counted[0][1] == 32.0
    np.testing.assert_allclose(counted[1], counted[0], rtol=1e-6)
