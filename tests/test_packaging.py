"""Packaging: optional dependencies, declared bounds, license and sdist.

These tests also run from a copy of `tests/` next to `setup.cfg` and the
requirement files, against an installed wheel (`.ci/run oldest`); the ones
that need the source tree skip themselves there.
"""

import configparser
import os
import shutil
import subprocess
import sys
import tarfile
import textwrap

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from keras_sam import _optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SETUP_CFG = os.path.join(ROOT, "setup.cfg")
PINNED = os.path.join(ROOT, "requirements.txt")
OLDEST = os.path.join(ROOT, "requirements-oldest.txt")

# Optional packages hidden from `import keras_sam`. absl-py is not among
# them: Keras and TensorFlow import it themselves, so it is always there;
# keras_sam declares it only for experiments/.
BLOCKED = ("matplotlib", "sklearn", "tensorflow_datasets")


def _need(*paths):
    missing = [p for p in paths if not os.path.exists(p)]
    if missing:
        pytest.skip(f"not in a source tree: {missing} missing")


def _declared(skip_extras=()) -> dict:
    """The requirements of setup.cfg, core and extras, by package name.

    Args:
        skip_extras: Names of extras whose requirements are left out.

    Returns:
        A dict from lower-case package name to its `SpecifierSet`.
    """
    config = configparser.ConfigParser()
    config.read(SETUP_CFG)
    lines = config["options"]["install_requires"].splitlines()
    for name, extra in config["options.extras_require"].items():
        if name not in skip_extras:
            lines += extra.splitlines()
    specifiers = {}
    for line in filter(None, (line.strip() for line in lines)):
        requirement = Requirement(line)
        name = requirement.name.lower()
        specifiers[name] = specifiers.get(name, SpecifierSet()) & (
            requirement.specifier
        )
    return specifiers


def _pins(path: str) -> dict:
    """The `name==version` lines of a requirements file."""
    pins = {}
    with open(path) as f:
        for line in f:
            line = line.split("#")[0].strip()
            if "==" in line:
                name, version = line.split("==")
                pins[name.strip().lower()] = Version(version.strip())
    return pins


@pytest.mark.slow  # subprocess
def test_import_works_without_optional_packages_and_names_the_extra():
    code = textwrap.dedent(f"""
        import sys
        for name in {BLOCKED!r}:
            sys.modules[name] = None
        import keras_sam
        assert keras_sam.SAMModel
        try:
            import keras_sam.diagnostics.plots
        except ImportError as error:
            assert 'keras_sam[plots]' in str(error), error
            assert 'matplotlib' in str(error), error
        else:
            raise AssertionError("diagnostics.plots imported without matplotlib")
        try:
            keras_sam.datasets.load_digits()
        except ImportError as error:
            assert 'keras_sam[data]' in str(error), error
            assert 'scikit-learn' in str(error), error
        else:
            raise AssertionError("load_digits ran without scikit-learn")
        print("ok")
    """)
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr


@pytest.mark.slow  # subprocess
def test_import_without_tensorflow_names_the_extras():
    code = textwrap.dedent("""
        import sys
        sys.modules["tensorflow"] = None
        try:
            import keras_sam
        except ImportError as error:
            print(error)
    """)
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True,
        timeout=120,
    )
    assert 'pip install "keras_sam[tensorflow-cpu]"' in result.stdout, (
        result.stdout + result.stderr
    )


def test_require_names_package_module_and_extra():
    with pytest.raises(ImportError) as info:
        _optional.require(
            "sklearn_not_there.sub", extra="data", feature="load_digits"
        )
    message = str(info.value)
    assert "load_digits needs `sklearn_not_there`" in message
    assert 'pip install "keras_sam[data]"' in message


def test_require_maps_module_to_distribution(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn", None)
    with pytest.raises(ImportError, match="`scikit-learn`"):
        _optional.require("sklearn", extra="data")


def test_missing_tensorflow_names_both_extras(monkeypatch):
    monkeypatch.setattr(_optional.importlib.util, "find_spec", lambda _: None)
    with pytest.raises(ImportError) as info:
        _optional.check_tensorflow()
    assert "keras_sam[tensorflow]" in str(info.value)
    assert "keras_sam[tensorflow-cpu]" in str(info.value)


def test_core_requirements_leave_tensorflow_and_extras_out():
    _need(SETUP_CFG)
    config = configparser.ConfigParser()
    config.read(SETUP_CFG)
    core = {
        Requirement(line).name.lower()
        for line in config["options"]["install_requires"].split()
    }
    optional = {"tensorflow", "tensorflow-cpu", "keras-tuner", "tensorboard",
                "matplotlib", "scikit-learn", "tensorflow-datasets", "absl-py"}
    assert not core & optional, core & optional


@pytest.mark.parametrize("path", [PINNED, OLDEST])
def test_pins_satisfy_declared_bounds(path):
    _need(SETUP_CFG, path)
    declared = _declared()
    for name, version in _pins(path).items():
        if name in declared:
            assert version in declared[name], (
                f"{os.path.basename(path)} pins {name}=={version}, outside "
                f"setup.cfg's `{name}{declared[name]}`"
            )


def test_oldest_pins_are_the_declared_lower_bounds():
    _need(SETUP_CFG, OLDEST)
    declared = _declared(skip_extras=("test",))  # test tools: any version
    oldest = _pins(OLDEST)
    assert {"keras", "tensorflow-cpu"} <= set(oldest), oldest
    for name, version in oldest.items():
        lows = [
            Version(s.version) for s in declared.get(name, ())
            if s.operator == ">="
        ]
        if lows:
            assert version == max(lows), (
                f"requirements-oldest.txt pins {name}=={version}, but "
                f"setup.cfg declares {name}>={max(lows)}: CI must run the "
                "lowest declared version"
            )


def test_python_requires_matches_this_interpreter():
    _need(SETUP_CFG)
    config = configparser.ConfigParser()
    config.read(SETUP_CFG)
    python = SpecifierSet(config["options"]["python_requires"])
    assert Version("%d.%d" % sys.version_info[:2]) in python


def test_license_is_apache_and_declared():
    _need(SETUP_CFG)
    license_path = os.path.join(ROOT, "LICENSE")
    _need(license_path)
    with open(license_path) as f:
        text = f.read()
    assert "Apache License" in text and "Version 2.0" in text
    assert "The keras_sam authors" in text
    config = configparser.ConfigParser()
    config.read(SETUP_CFG)
    assert config["metadata"]["license"] == "Apache-2.0"
    assert config["metadata"]["license_files"].split() == ["LICENSE"]


@pytest.mark.slow  # subprocess
def test_sdist_carries_the_tests_and_their_helpers(tmp_path):
    _need(os.path.join(ROOT, "keras_sam"), os.path.join(ROOT, "MANIFEST.in"))
    pytest.importorskip("setuptools")
    # Built from a copy, so that setuptools' egg-info stays out of the tree.
    source = tmp_path / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        ".git", ".venv", "runs", "build", "dist", "*.egg-info",
        "__pycache__", ".hypothesis"))
    result = subprocess.run(
        [sys.executable, "-c",
         "import sys; from setuptools import build_meta; "
         "print(build_meta.build_sdist(sys.argv[1]))", str(tmp_path)],
        cwd=source, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    name = result.stdout.split()[-1]
    with tarfile.open(tmp_path / name) as sdist:
        members = {m.split("/", 1)[-1] for m in sdist.getnames()}
    for path in ("LICENSE", "requirements.txt", "requirements-oldest.txt",
                 "tests/conftest.py", "tests/reference.py",
                 "tests/test_packaging.py", "experiments/common.py",
                 "tools/benchmark.py", ".ci/run"):
        assert path in members, f"{path} is missing from the sdist"
