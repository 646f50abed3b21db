"""SAM on KerasHub task models: `SAMModel.from_model` and SAMModel mixes.

Tiny tasks built from config (no preset is downloaded): a BERT text
classifier on raw strings, a GPT-2 causal LM (`generate()`) and a ResNet
image classifier on raw images. With rho = 0 a converted task must train
exactly as its plain twin (same config, weights and seeds); with rho > 0 only
its weights may differ.
"""

import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

import keras_sam

# `keras.Model(inputs, outputs)` builds one; Keras exports no public name.
from keras.src.models.functional import Functional

from tests.helpers import Subclassed
from tests.helpers import max_difference

keras_hub = pytest.importorskip("keras_hub")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAM_LOG_KEYS = {"rho", "grad_norm", "sharpness"}

BERT_VOCAB = [
    "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]",
    "the", "quick", "brown", "fox", "jumped", "over", "lazy", "dog",
    "a", "cat", "sat", "on", "mat", ".",
]
TEXTS = np.array([
    "the quick brown fox jumped over the lazy dog .",
    "a cat sat on the mat .",
    "the lazy cat jumped .",
    "a quick dog sat on a fox .",
    "the brown dog jumped over a cat .",
    "a fox sat .",
    "the cat sat on the quick fox .",
    "a lazy brown dog .",
])
LABELS = np.array([0, 1, 1, 0, 0, 1, 1, 0])


def tiny_text_task(family, task, tokenizer_kwargs, sequence_length,
                   num_layers, max_sequence_length, seed, cls=None,
                   **task_kwargs):
    """A tiny KerasHub text task built from config, the same for the same
    seed: keras_hub.models' `{family}Tokenizer`, `{family}{task}Preprocessor`,
    `{family}Backbone` and `{family}{task}` (or `cls`)."""
    models = keras_hub.models
    keras.utils.set_random_seed(seed)
    tokenizer = getattr(models, f"{family}Tokenizer")(**tokenizer_kwargs)
    preprocessor = getattr(models, f"{family}{task}Preprocessor")(
        tokenizer=tokenizer, sequence_length=sequence_length
    )
    backbone = getattr(models, f"{family}Backbone")(
        vocabulary_size=len(tokenizer_kwargs["vocabulary"]),
        num_layers=num_layers,
        num_heads=2,
        hidden_dim=16,
        intermediate_dim=32,
        max_sequence_length=max_sequence_length,
    )
    cls = cls or getattr(models, f"{family}{task}")
    return cls(backbone=backbone, preprocessor=preprocessor, **task_kwargs)


def bert_classifier(seed=7, cls=None, **kwargs):
    """A tiny BertTextClassifier (or `cls`), the same for the same seed."""
    return tiny_text_task(
        "Bert", "TextClassifier", {"vocabulary": BERT_VOCAB},
        sequence_length=12, num_layers=2, max_sequence_length=16,
        seed=seed, cls=cls, num_classes=2, **kwargs,
    )


def compile_task(model, learning_rate=1e-2):
    # The task's own defaults for loss and metrics ("auto"); no XLA, which
    # compiles slowly on CPU.
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate), jit_compile=False
    )
    return model


def fit(model, x, y=None, epochs=2, seed=11, batch_size=4):
    keras.utils.set_random_seed(seed)
    return model.fit(x, y, batch_size=batch_size, epochs=epochs, verbose=0)


def dropout_states(model):
    """The state of every dropout layer's SeedGenerator, in layer order
    (auto-generated layer names differ between twins)."""
    return [
        np.asarray(layer.seed_generator.state.numpy())
        for layer in model._flatten_layers()
        if isinstance(getattr(layer, "seed_generator", None),
                      keras.random.SeedGenerator)
    ]


def assert_states_equal(actual, expected):
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected):
        np.testing.assert_array_equal(a, e)


def assert_weights_equal(actual, expected, atol=1e-6):
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected):
        np.testing.assert_allclose(a, e, atol=atol, rtol=0)


@pytest.fixture(scope="module")
def plain_bert():
    """The plain twin, trained once: its initial and final weights, logs,
    dropout states and evaluation."""
    model = compile_task(bert_classifier())
    initial = model.get_weights()
    states = dropout_states(model)
    history = fit(model, TEXTS, LABELS)
    return {
        "initial": initial,
        "initial_states": states,
        "weights": model.get_weights(),
        "states": dropout_states(model),
        "history": history.history,
        "evaluate": model.evaluate(
            TEXTS, LABELS, batch_size=4, verbose=0, return_dict=True
        ),
        "evaluate_list": model.evaluate(TEXTS, LABELS, batch_size=4,
                                        verbose=0),
    }


def sam_bert(plain, **sam_kwargs):
    """A SAM BertTextClassifier, converted in place, with the twin's initial
    weights."""
    task = bert_classifier()
    task.set_weights(plain["initial"])
    sam = keras_sam.SAMModel.from_model(task, **sam_kwargs)
    return compile_task(sam)


# ------------------------------------------------------------ conversion


def test_from_model_converts_task_in_place():
    task = bert_classifier()
    before = type(task)
    weights = task.get_weights()
    sam = keras_sam.SAMModel.from_model(task, rho=0.0, m=2, p=3.0)
    assert sam is task
    assert isinstance(task, before)
    assert isinstance(task, keras_hub.models.TextClassifier)
    assert isinstance(task, keras_sam.SAMModel)
    assert type(task) is not before
    assert type(task).__name__ == before.__name__ == "BertTextClassifier"
    # Keeps its layers, weights and preprocessor.
    assert task.preprocessor is not None
    assert_weights_equal(task.get_weights(), weights, atol=0)
    config = task.get_config()
    assert config["num_classes"] == 2
    assert config["rho"] == 0.0 and config["m"] == 2 and config["p"] == 3.0
    assert task.get_sam_config()["m"] == 2
    # The same class is reused for every converted BertTextClassifier.
    other = keras_sam.SAMModel.from_model(bert_classifier(seed=8), rho=0.1)
    assert type(other) is type(task)
    with pytest.raises(ValueError, match="already trains with SAM"):
        keras_sam.SAMModel.from_model(task, rho=0.1)


# -------------------------------------------------------------- training


def test_rho_zero_trains_like_plain_task(plain_bert):
    sam = sam_bert(plain_bert, rho=0.0)
    # Same construction seed: the same dropout seeds as the twin.
    states = dropout_states(sam)
    assert len(states) >= 4  # backbone and classifier dropouts
    assert_states_equal(states, plain_bert["initial_states"])

    history = fit(sam, TEXTS, LABELS).history  # raw strings: preprocessor

    assert SAM_LOG_KEYS <= set(history)
    assert set(history) - SAM_LOG_KEYS == set(plain_bert["history"])
    assert history["rho"] == [0.0, 0.0]
    assert all(np.isfinite(history["grad_norm"]))
    assert all(g > 0 for g in history["grad_norm"])
    np.testing.assert_allclose(history["sharpness"], 0.0, atol=1e-6)
    for key, values in plain_bert["history"].items():
        np.testing.assert_allclose(history[key], values, atol=1e-6,
                                   err_msg=key)
    # Training moved the weights, and exactly as the plain task's.
    assert max_difference(plain_bert["weights"], plain_bert["initial"]) > 1e-3
    assert_weights_equal(sam.get_weights(), plain_bert["weights"])
    # Dropout masks advance between steps (one draw per step) as in Keras.
    final = dropout_states(sam)
    for state, start in zip(final, states):
        assert not np.array_equal(state, start)
    assert_states_equal(final, plain_bert["states"])

    result = sam.evaluate(TEXTS, LABELS, batch_size=4, verbose=0,
                          return_dict=True)
    assert set(result) == set(plain_bert["evaluate"])
    assert not SAM_LOG_KEYS & set(result)
    for key, value in plain_bert["evaluate"].items():
        np.testing.assert_allclose(result[key], value, atol=1e-6)
    as_list = sam.evaluate(TEXTS, LABELS, batch_size=4, verbose=0)
    assert len(as_list) == len(plain_bert["evaluate_list"])
    np.testing.assert_allclose(as_list, plain_bert["evaluate_list"], atol=1e-6)


def test_positive_rho_trains_differently(plain_bert):
    sam = sam_bert(plain_bert, rho=0.05)
    history = fit(sam, TEXTS, LABELS).history
    assert SAM_LOG_KEYS <= set(history)
    np.testing.assert_allclose(history["rho"], 0.05, rtol=1e-6)
    assert all(np.isfinite(history["sharpness"]))
    assert any(abs(s) > 0 for s in history["sharpness"])
    assert max_difference(sam.get_weights(), plain_bert["weights"]) > 1e-4
    # The same random draws as the plain task: one per step.
    assert_states_equal(dropout_states(sam), plain_bert["states"])


# ---------------------------------------------------------------- GPT-2

GPT2_MERGES = ["Ġ q", "u i", "c k", "ui ck", "Ġq uick", "Ġ f", "o x",
               "Ġf ox", "Ġ a"]
# Every merge's parts and result are tokens (the tokenizer checks the parts).
GPT2_TOKENS = ["<|endoftext|>", "a", ".", "Ġ", "q", "u", "i", "c", "k", "f",
               "o", "x"] + ["".join(merge.split()) for merge in GPT2_MERGES]
GPT2_VOCAB = {token: i for i, token in enumerate(GPT2_TOKENS)}


def gpt2_causal_lm(seed=5):
    """A tiny GPT2CausalLM, the same for the same seed."""
    return tiny_text_task(
        "GPT2", "CausalLM", {"vocabulary": GPT2_VOCAB, "merges": GPT2_MERGES},
        sequence_length=8, num_layers=1, max_sequence_length=8, seed=seed,
    )


def test_causal_lm_generates_after_conversion_and_fit():
    lm = gpt2_causal_lm()
    lm.compile(
        optimizer=keras.optimizers.Adam(1e-2),
        sampler="greedy",
        jit_compile=False,
    )
    prompts = ["a quick", "a fox"]
    before = lm.generate(prompts, max_length=8)
    sam = keras_sam.SAMModel.from_model(lm, rho=0.05)
    assert sam is lm
    assert isinstance(lm, keras_hub.models.GPT2CausalLM)
    assert isinstance(lm, keras_sam.SAMModel)
    assert type(lm).__name__ == "GPT2CausalLM"
    # Conversion alone changes nothing the model computes.
    assert lm.generate(prompts, max_length=8) == before

    initial = lm.get_weights()
    features = ["a quick fox.", "a fox quick.", "a fox.", "a quick a fox."]
    history = fit(lm, features, epochs=1, batch_size=2).history
    assert SAM_LOG_KEYS <= set(history) and "loss" in history
    assert np.isfinite(history["loss"][0])
    np.testing.assert_allclose(history["rho"], 0.05, rtol=1e-6)
    assert all(np.isfinite(history["sharpness"]))
    assert max_difference(lm.get_weights(), initial) > 1e-4

    after = lm.generate(prompts, max_length=8)
    assert len(after) == 2
    assert all(isinstance(text, str) for text in after)
    assert after[0].startswith("a quick") and after[1].startswith("a fox")


# --------------------------------------------------------------- saving

LOAD_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import keras
    import keras_hub
    import keras_sam

    path, texts_path, out_path = sys.argv[1:4]
    model = keras.models.load_model(path)
    texts = np.load(texts_path)
    np.save(out_path, model.predict(texts, batch_size=4, verbose=0))
    print(json.dumps({
        "name": type(model).__name__,
        "is_task": isinstance(model, keras_hub.models.BertTextClassifier),
        "is_sam": isinstance(model, keras_sam.SAMModel),
        "sam_config": model.get_sam_config(),
        "has_preprocessor": model.preprocessor is not None,
        "compiled": model.compiled,
        "weights": len(model.get_weights()),
    }))
    """
)


@pytest.mark.slow  # a fresh interpreter imports TensorFlow and KerasHub
def test_saved_task_loads_in_fresh_process(tmp_path):
    sam = keras_sam.SAMModel.from_model(
        bert_classifier(), rho=0.07, m=2, p=3.0
    )
    compile_task(sam)
    expected = sam.predict(TEXTS, batch_size=4, verbose=0)
    path = str(tmp_path / "bert_sam.keras")
    sam.save(path)
    texts_path = str(tmp_path / "texts.npy")
    out_path = str(tmp_path / "predictions.npy")
    np.save(texts_path, TEXTS)

    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [REPO] + [p for p in [env.get("PYTHONPATH")] if p]
    )
    env.setdefault("KERAS_BACKEND", "tensorflow")
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    out = subprocess.run(
        [sys.executable, "-c", LOAD_SCRIPT, path, texts_path, out_path],
        capture_output=True, text=True, timeout=300, env=env, cwd=REPO,
    )
    assert out.returncode == 0, out.stderr[-4000:]
    loaded = json.loads(out.stdout.strip().splitlines()[-1])
    assert loaded["name"] == "BertTextClassifier"
    assert loaded["is_task"] and loaded["is_sam"]
    assert loaded["has_preprocessor"]
    assert loaded["compiled"]
    assert loaded["weights"] == len(sam.get_weights())
    config = loaded["sam_config"]
    expected_config = sam.get_sam_config()
    # (Every key of this process's options: the subprocess may import a
    # newer keras_sam when the working tree changes during the run.)
    assert set(expected_config) <= set(config)
    assert {k: config[k] for k in expected_config} == pytest.approx(
        expected_config
    )
    assert config["rho"] == pytest.approx(0.07)
    assert config["m"] == 2 and config["p"] == 3.0
    np.testing.assert_allclose(np.load(out_path), expected, atol=1e-5)


# ----------------------------------------------------- user-defined mix


class BertSAMClassifier(keras_sam.SAMModel, keras_hub.models.BertTextClassifier):
    """A user's SAM BERT classifier: SAMModel mixed into the task class."""


def test_user_mix_with_task_class_keeps_samodel_intact():
    # Functional models built first (Keras rewrites the bases of classes
    # whose construction is functional).
    inputs = keras.Input((3,))
    keras.Model(inputs, keras.layers.Dense(2)(inputs))
    functional_sam = keras_sam.SAMModel(
        inputs, keras.layers.Dense(2)(inputs), rho=0.1
    )
    assert isinstance(functional_sam, Functional)
    compile_task(bert_classifier())  # a plain task, functional inside

    model = bert_classifier(seed=9, cls=BertSAMClassifier, rho=0.1)
    assert isinstance(model, BertSAMClassifier)
    assert isinstance(model, keras_hub.models.BertTextClassifier)
    assert isinstance(model, keras_sam.SAMModel)
    np.testing.assert_allclose(float(model.rho.numpy()), 0.1, rtol=1e-6)
    compile_task(model)
    initial = model.get_weights()
    history = fit(model, TEXTS, LABELS, epochs=1).history
    assert SAM_LOG_KEYS <= set(history)
    np.testing.assert_allclose(history["rho"], 0.1, rtol=1e-6)
    assert any(abs(s) > 0 for s in history["sharpness"])
    assert max_difference(model.get_weights(), initial) > 1e-4

    # SAMModel itself was not rewritten into a Functional subclass.
    assert keras_sam.SAMModel.__bases__[-1] is keras.Model
    assert Functional not in keras_sam.SAMModel.__bases__
    assert not issubclass(keras_sam.SAMModel, Functional)

    net = Subclassed(rho=0.05)  # a SAMModel subclass with one Dense(2)
    assert not isinstance(net, Functional)
    net.compile(optimizer="sgd", loss="mse", jit_compile=False)
    x = np.random.default_rng(0).normal(size=(8, 3)).astype("float32")
    net_history = net.fit(x, np.zeros((8, 2), "float32"), batch_size=4,
                          epochs=1, verbose=0).history
    assert SAM_LOG_KEYS <= set(net_history)
    assert net.built and len(net.trainable_weights) == 2


# --------------------------------------------------------------- ResNet


def resnet_classifier(seed=3):
    keras.utils.set_random_seed(seed)
    backbone = keras_hub.models.ResNetBackbone(
        input_conv_filters=[64],
        input_conv_kernel_sizes=[3],
        stackwise_num_filters=[64],  # keras_hub requires 64 first
        stackwise_num_blocks=[1],
        stackwise_num_strides=[1],
        block_type="basic_block",
        image_shape=(16, 16, 3),
    )
    converter = keras_hub.layers.ResNetImageConverter(
        image_size=(16, 16), scale=1 / 255.0
    )
    preprocessor = keras_hub.models.ResNetImageClassifierPreprocessor(
        image_converter=converter
    )
    return keras_hub.models.ResNetImageClassifier(
        backbone=backbone, preprocessor=preprocessor, num_classes=3
    )


@pytest.mark.slow
def test_image_classifier_on_raw_images_rho_zero_matches_plain():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(8, 20, 20, 3)).astype("float32")
    labels = np.array([0, 1, 2, 0, 1, 2, 0, 1])

    plain = compile_task(resnet_classifier())
    initial = plain.get_weights()
    fit(plain, images, labels)

    task = resnet_classifier()
    task.set_weights(initial)
    before = type(task)
    sam = keras_sam.SAMModel.from_model(task, rho=0.0)
    assert sam is task and isinstance(sam, before)
    assert type(sam).__name__ == "ResNetImageClassifier"
    compile_task(sam)
    history = fit(sam, images, labels).history
    assert SAM_LOG_KEYS <= set(history)
    # BatchNormalization moving statistics included (non-trainable weights).
    assert max_difference(plain.get_weights(), initial) > 1e-3
    assert_weights_equal(sam.get_weights(), plain.get_weights())


# ------------------------------------------------------------ m-sharpness


@pytest.mark.slow
def test_m_sharpness_on_task_with_embeddings(plain_bert):
    # m splits each batch of 4 into groups of 2 (one eps each). The task's
    # preprocessor leaves the batch size unknown while tracing, and BERT's
    # embeddings have sparse (IndexedSlices) gradients.
    sam = sam_bert(plain_bert, rho=0.05, m=2)
    history = fit(sam, TEXTS, LABELS, epochs=1).history
    assert SAM_LOG_KEYS <= set(history)
    assert np.isfinite(history["loss"][0])
    assert all(np.isfinite(history["sharpness"]))
    assert max_difference(sam.get_weights(), plain_bert["initial"]) > 1e-4


def gemma_lm(m=None):
    """A tiny Gemma backbone with LoRA (rank 2) and a logits head, built
    from config: its attention softmax is rank 5 (batch, kv heads, query
    heads per kv head, queries, keys)."""
    keras.utils.set_random_seed(21)
    backbone = keras_hub.models.GemmaBackbone(
        vocabulary_size=16, num_layers=1, num_query_heads=2,
        num_key_value_heads=1, hidden_dim=8, intermediate_dim=16,
        head_dim=4,
    )
    backbone.enable_lora(rank=2)
    inputs = {
        "token_ids": keras.Input((6,), dtype="int32", name="token_ids"),
        "padding_mask": keras.Input((6,), dtype="int32",
                                    name="padding_mask"),
    }
    logits = keras.layers.Dense(16, name="lm_head")(backbone(inputs))
    if m is False:
        return keras.Model(inputs, logits)
    return keras_sam.SAMModel(inputs, logits, rho=0.3, m=m)


@pytest.mark.parametrize("m", [2, 1])
def test_m_on_a_lora_gemma_matches_the_float64_oracle(m):
    """m-sharpness on the model people fine-tune: mapping the groups must
    not raise the attention's rank past what CPU kernels take (oneDNN's
    softmax aborts on rank 6), and each group's SAM step is hand SAM's."""
    from tests import oracle

    rng = np.random.default_rng(0)
    x = {"token_ids": rng.integers(1, 16, (4, 6)).astype("int32"),
         "padding_mask": np.ones((4, 6), "int32")}
    y = rng.integers(0, 16, (4, 6)).astype("int32")
    model = gemma_lm(m)
    model.compile(
        optimizer=keras.optimizers.SGD(1.0),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    twin = oracle.Oracle(oracle.float64_twin(lambda: gemma_lm(False), model))
    expected = oracle.sam_step(twin, x, y, 0.3, m=m)
    whole = oracle.sam_step(twin, x, y, 0.3)
    assert oracle.max_difference(expected.sam_grads, whole.sam_grads) > 1e-4
    model.fit(x, y, batch_size=4, epochs=1, shuffle=False, verbose=0)
    for variable, value in zip(model.trainable_variables,
                               oracle.sgd_weights(twin, expected.sam_grads)):
        np.testing.assert_allclose(variable.numpy(), value, atol=2e-5,
                                   rtol=2e-5, err_msg=variable.path)
