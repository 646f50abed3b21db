"""A KerasHub task takes SAM in one line on JAX and PyTorch too.

A `BertTextClassifier` built from config (no download, no tokenizer) is
trained two epochs as Keras built it, as `SAMModel.from_model(task,
rho=0)` and with rho = 0.05, in one process per backend. KerasHub feeds
its tasks through `tf.data` (or Grain), so TensorFlow stays importable
here, as it is for users of KerasHub on these backends.
"""

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow  # a process per backend

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = """
import json
import keras, keras_hub, numpy as np
import keras_sam

def build():
    keras.utils.set_random_seed(3)
    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=50, num_layers=1, num_heads=2, hidden_dim=8,
        intermediate_dim=16, max_sequence_length=12)
    return keras_hub.models.BertTextClassifier(
        backbone, num_classes=2, preprocessor=None)

rng = np.random.default_rng(0)
x = {"token_ids": rng.integers(0, 50, (8, 12)),
     "segment_ids": np.zeros((8, 12), "int32"),
     "padding_mask": np.ones((8, 12), "bool")}
y = rng.integers(0, 2, 8)
runs = {}
for name, rho in (("keras", None), ("rho_0", 0.0), ("rho_0.05", 0.05)):
    task = build()
    model = task if rho is None else keras_sam.SAMModel.from_model(
        task, rho=rho)
    model.compile(optimizer="adam", loss=keras.losses.
                  SparseCategoricalCrossentropy(from_logits=True))
    history = model.fit(x, y, batch_size=4, epochs=2, verbose=0,
                        shuffle=False)
    runs[name] = {
        "class": type(model).__name__,
        "is_sam": isinstance(model, keras_sam.SAMModel),
        "loss": history.history["loss"],
        "weights": [keras.ops.convert_to_numpy(v).tolist()
                    for v in model.trainable_variables],
    }
print(json.dumps(runs))
"""


def max_difference(a, b):
    import numpy as np

    return max(float(np.max(np.abs(np.asarray(u) - np.asarray(v))))
               for u, v in zip(a, b))


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_bert_classifier_takes_sam_in_one_line(backend):
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3",
               CUDA_VISIBLE_DEVICES="", JAX_PLATFORMS="cpu",
               PYTHONPATH=ROOT)
    result = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT,
                            env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    runs = json.loads(result.stdout.strip().splitlines()[-1])
    keras_run, zero, sam = runs["keras"], runs["rho_0"], runs["rho_0.05"]
    assert zero["class"] == sam["class"] == keras_run["class"]
    assert zero["is_sam"] and sam["is_sam"] and not keras_run["is_sam"]
    # rho = 0 is the task's own training (to float rounding on JAX, whose
    # jitted SAM step fuses differently; bit for bit on PyTorch).
    assert max_difference(zero["weights"], keras_run["weights"]) <= 1e-6
    assert zero["loss"] == pytest.approx(keras_run["loss"], abs=1e-6)
    # rho > 0 is SAM: it moves the weights elsewhere.
    assert max_difference(sam["weights"], keras_run["weights"]) > 1e-4
