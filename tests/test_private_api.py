"""Private Keras and TensorFlow API is touched in one place only.

Every use of a private Keras or TensorFlow name (a `keras.src` or
`tensorflow.python` import, an `_attribute` keras_sam does not define,
read directly or through `getattr`/`hasattr`) lives in `keras_sam/_keras.py`,
each with the reason no public route exists. Private *methods* that only a
subclass can override stay in their classes, listed in
`_keras.PRIVATE_OVERRIDES`. This test walks the package's syntax trees and
fails on any new one elsewhere, so that the next Keras release is checked
in one file.
"""

import ast
import pathlib

import keras_sam
from keras_sam import _keras

PACKAGE = pathlib.Path(keras_sam.__file__).parent
ADAPTER = PACKAGE / "_keras.py"
PRIVATE_PACKAGES = ("keras.src", "keras._tf_keras", "tensorflow.python")
# KerasTuner's private state, used in one place with its reason and issue
# (keras_sam/tuning/search.py, keras-team/keras-tuner#1055).
KERAS_TUNER = {"_ordered_ids", "_populate_next"}


def _modules():
    return sorted(PACKAGE.rglob("*.py"))


def _is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def own_private_names() -> set:
    """Every `_name` keras_sam defines: functions, classes, methods,
    attributes it assigns, module globals and NamedTuple helpers."""
    names = {"_replace", "_asdict", "_fields", "_make"}  # NamedTuple API
    for path in _modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif isinstance(node, ast.Attribute) and isinstance(
                node.ctx, ast.Store
            ):
                names.add(node.attr)
            elif isinstance(node, ast.Name) and isinstance(
                node.ctx, ast.Store
            ):
                names.add(node.id)
            elif isinstance(node, ast.Dict):  # type(...) namespaces
                names.update(
                    k.value for k in node.keys
                    if isinstance(k, ast.Constant) and isinstance(k.value, str)
                )
    return {n for n in names if _is_private(n)}


def foreign_private_uses(path, own) -> list:
    """`(line, what)` of each private Keras/TF use in one module."""
    uses = []
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            modules = [node.module]
        elif isinstance(node, ast.Import):
            modules = [a.name for a in node.names]
        else:
            modules = []
        for module in modules:
            if module.startswith(PRIVATE_PACKAGES):
                uses.append((node.lineno, f"import {module}"))
        if isinstance(node, ast.Attribute) and _is_private(node.attr):
            if node.attr not in own:
                uses.append((node.lineno, f".{node.attr}"))
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in ("getattr", "hasattr", "setattr")
            and len(node.args) >= 2
            and isinstance(node.args[1], ast.Constant)
            and isinstance(node.args[1].value, str)
            and _is_private(node.args[1].value)
            and node.args[1].value not in own
        ):
            uses.append((node.lineno, f"{node.func.id}(..., "
                                      f"{node.args[1].value!r})"))
    return uses


def test_private_keras_api_only_in_the_adapter():
    own = own_private_names()
    overrides = set(_keras.PRIVATE_OVERRIDES)
    own -= overrides  # an override is Keras' name, not ours
    problems = []
    for path in _modules():
        if path == ADAPTER:
            continue
        for line, what in foreign_private_uses(path, own | KERAS_TUNER):
            name = what.lstrip(".")
            if name in overrides:  # super()._method() in the override
                continue
            problems.append(f"{path.relative_to(PACKAGE.parent)}:{line}: "
                            f"{what}")
    assert not problems, (
        "private Keras/TensorFlow API outside keras_sam/_keras.py (move it "
        "there, with the reason):\n" + "\n".join(problems)
    )


def test_private_overrides_are_listed_with_their_classes():
    """Each private method keras_sam overrides is in the inventory, and
    each inventory entry is overridden somewhere."""
    defined = {}
    for path in _modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                for item in node.body:
                    if isinstance(item, ast.FunctionDef) and _is_private(
                        item.name
                    ):
                        defined.setdefault(item.name, []).append(node.name)
    for name, owners in _keras.PRIVATE_OVERRIDES.items():
        assert name in defined, f"{name} is listed but not overridden"
        assert set(owners) <= set(defined[name]), (name, defined[name])


def test_the_walk_finds_a_private_use(tmp_path):
    """The test can fail: a snippet with each kind of use is caught."""
    sample = tmp_path / "sample.py"
    sample.write_text(
        "import keras\n"
        "from keras.src.models import functional\n"
        "def f(model):\n"
        "    return model._compile_config, getattr(model, '_loss_tracker')\n"
    )
    uses = foreign_private_uses(sample, own_private_names())
    assert sorted(what for _, what in uses) == sorted([
        "import keras.src.models", "._compile_config",
        "getattr(..., '_loss_tracker')",
    ]), uses
