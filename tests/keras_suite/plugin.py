"""A pytest plugin that runs Keras' own model tests on `keras_sam.SAMModel`.

Keras ships its tests in the wheel (`keras/src/models/model_test.py`, ...).
This plugin runs them unchanged, with `SAMModel` at `rho=0` wherever a test
module names `keras.Model`, in one of these flavours:

- `direct`: the name is `keras_sam.SAMModel` itself, so `Model(inputs,
  outputs)` is a functional SAMModel and `class MyModel(Model)` a SAMModel
  subclass;
- `subclassed`: the name is `UserSAM`, a user's trivial subclass of
  SAMModel (registered for saving, as a user would);
- `from_model`: the name is `FromModel`, a stand-in whose construction
  builds the `keras.Model` and returns `SAMModel.from_model(model, rho=0)`;
  a class the test derives from it is a plain `keras.Model` subclass whose
  instances are converted in place by `from_model` as soon as their
  `__init__` returns (what a user does right after building their model);
- `keras`: nothing is substituted (the control run).

How: after collection, before any test runs, every module global of a Keras
test module that *is* `keras.Model` is rebound to the flavour's class, and
every module global that is a module exporting `Model` (`keras`,
`keras.src.models`) to a proxy of that module whose `Model` is the
flavour's class. The test files are neither copied nor rewritten, and
nothing in Keras is patched: the tests call `Model`, `keras.Model` and
`models.Model` at run time, through their module's globals, so they all
get the substitute. A test module that derives a `keras.Model` subclass
at import time (none of the four does) would escape that, so the plugin
refuses such a module rather than silently testing plain Keras.

Why rebinding rather than copying the files and rewriting their imports:
the installed files run as themselves, under their own module names (so
`mock.patch("keras.src...")` targets, Keras' paths in tracebacks and
line numbers stay right), no parser or rewriter has to track Keras'
import style from release to release, and the plugin is a few dozen
lines; the one blind spot, import-time use, is checked as above.
`Functional` (private, and what a SAM functional model derives from) and
`Sequential` (its own class with its own API) are not substituted.

Why `from_model` converts subclass instances: `from_model` is how a user
brings an existing model of any class to SAM, and the end of `__init__`
is the earliest point where a user holds the instance. It converts the
instance in place (its class becomes a SAM subclass of the test's
class), so the rest of the test exercises SAM's step on it. A class that
overrides `train_step` is refused by `from_model`, by design.

For the SAM flavours, `SAMModel.__init__` is wrapped in the test process
to default `rho` to 0 (an explicit `rho`, from a config say, still wins)
and to leave SAM's statistics (`rho`, `grad_norm`, `sharpness`) out of the
training logs, which Keras' tests compare key by key: with the keyword
`log_statistics=False` when SAMModel takes it, else by emptying
`SAMModel.sam_logs` (`--sam-logs=keep` keeps them, to count the failures
they cause on their own).

Keras' trainer tests mostly use models that mix the backend `Trainer`
into a layer (`class ExampleModel(Trainer, layers.Dense)`); those are not
`keras.Model` subclasses and stay as they are. The report counts, per
test, the SAM models it built (`sam_models`), so a run shows which tests
exercised SAM at all.

Usage (from the repository root; `run_suite` below does this):

    python -m pytest -p tests.keras_suite.plugin --sam-flavour=direct \\
        --sam-report=report.json <keras/src>/models/model_test.py ...

or `python -m tests.keras_suite.plugin direct` for a summary.
"""

import argparse
import fnmatch
import functools
import importlib.util
import json
import os
import resource
import subprocess
import sys
import time
import types

import pytest

FLAVOURS = ("keras", "direct", "subclassed", "from_model")
SAM_FLAVOURS = FLAVOURS[1:]

# The Keras test files, relative to the installed `keras/src`.
KERAS_TEST_FILES = (
    "models/model_test.py",
    "models/functional_test.py",
    "models/sequential_test.py",
    "trainers/trainer_test.py",
)

# Tests of optional dependencies, by a word of their name: skipped when
# the module is not installed (Keras' CI installs them; this project
# does not need them).
OPTIONAL_MODULES = {"grain": "grain"}

# The modules that export `keras.Model` under the name `Model`: a test
# module's global bound to one of them is replaced by a proxy.
MODEL_EXPORTS = ("keras", "keras.models", "keras.src", "keras.src.models")

# The longest failure message kept in a report.
MESSAGE_LENGTH = 20000

REPOSITORY = os.path.dirname(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
)


def keras_source_dir() -> str:
    """The installed `keras/src` directory, where Keras' tests are."""
    return os.path.dirname(importlib.util.find_spec("keras.src").origin)


# ------------------------------------------------------------------ flavours


def _sam_model():
    import keras_sam

    return keras_sam.SAMModel


@functools.cache
def user_sam_class():
    """`UserSAM`: a user's trivial SAMModel subclass, registered for saving.

    Defined on first use (keras_sam stays unimported in the `keras`
    flavour) and published as this module's `UserSAM`, where pickle looks
    for it.
    """
    import keras

    @keras.saving.register_keras_serializable(package="keras_suite")
    class UserSAM(_sam_model()):
        """A user's subclass of SAMModel that changes nothing."""

    UserSAM.__module__ = __name__
    UserSAM.__qualname__ = "UserSAM"
    globals()["UserSAM"] = UserSAM
    return UserSAM


class _Counter:
    """How many SAM models the running test built (read by the report)."""

    models = 0


def from_model_class(sam_kwargs):
    """`FromModel`: `keras.Model` for tests, SAM by `from_model` inside.

    Args:
        sam_kwargs: Dict, the `SAMModel.from_model` keyword arguments.

    Returns:
        A class: calling it returns `SAMModel.from_model(keras.Model(...),
        **sam_kwargs)`; a class deriving from it derives from `keras.Model`
        instead, and its instances go through `from_model` once built.
    """
    import keras

    sam_model = _sam_model()

    class FromModelType(type):
        """Metaclass of `FromModel` and of the classes derived from it."""

        def __new__(mcls, name, bases, namespace, **kwargs):
            # `keras.Model.__init__` rewrites the bases of a subclass built
            # functionally (to derive from `Functional`): they must be the
            # test's own classes and keras.Model, never the shared shim.
            bases = tuple(
                keras.Model if _is_shim(base) else base for base in bases
            )
            return super().__new__(mcls, name, bases, namespace, **kwargs)

        def __call__(cls, *args, **kwargs):
            if _is_shim(cls):
                model = keras.Model(*args, **kwargs)
            else:
                model = super().__call__(*args, **kwargs)
            if isinstance(model, sam_model):  # a SAM class (from a config)
                return model
            _Counter.models += 1
            return sam_model.from_model(model, **sam_kwargs)

        def __instancecheck__(cls, instance):
            if _is_shim(cls):
                return isinstance(instance, keras.Model)
            return super().__instancecheck__(instance)

        def __subclasscheck__(cls, subclass):
            if _is_shim(cls):
                return issubclass(subclass, keras.Model)
            return super().__subclasscheck__(subclass)

    def _is_shim(cls):
        return isinstance(cls, FromModelType) and "_shim" in vars(cls)

    class FromModel(keras.Model, metaclass=FromModelType):
        """`keras.Model`, converted by `SAMModel.from_model` when built."""

        _shim = True

    FromModel.__module__ = __name__
    FromModel.__qualname__ = "FromModel"
    return FromModel


def log_statistics_supported() -> bool:
    """Whether `SAMModel` takes `log_statistics=False`."""
    try:
        _sam_model()(rho=0.0, log_statistics=False)
    except (TypeError, ValueError):
        return False
    return True


def install_sam_defaults(defaults):
    """Wraps `SAMModel.__init__` to default its keyword arguments.

    Args:
        defaults: Dict of keyword arguments, used where a call omits them.
    """
    sam_model = _sam_model()
    init = sam_model.__init__

    @functools.wraps(init)
    def __init__(self, *args, **kwargs):
        for key, value in defaults.items():
            kwargs.setdefault(key, value)
        _Counter.models += 1
        init(self, *args, **kwargs)

    sam_model.__init__ = __init__


def strip_sam_logs():
    """Leaves SAM's statistics out of the training logs (`sam_logs`)."""
    _sam_model().sam_logs = lambda self, *args, **kwargs: {}


def flavour_model(flavour, logs="auto"):
    """Sets up SAM for a flavour; returns what tests get for `keras.Model`.

    Args:
        flavour: One of `FLAVOURS`.
        logs: "auto" leaves SAM's statistics out of the logs (natively or
            by stripping them), "keep" keeps them.

    Returns:
        `(model_class, logs_mode)`: the class to substitute (None for the
        `keras` flavour) and how the SAM log keys were handled: "native"
        (`log_statistics=False`), "stripped", "kept" or None.
    """
    if flavour == "keras":
        return None, None
    sam_kwargs = {"rho": 0.0}
    mode = "kept"
    if logs == "auto":
        if log_statistics_supported():
            sam_kwargs["log_statistics"] = False
            mode = "native"
        else:
            strip_sam_logs()
            mode = "stripped"
    install_sam_defaults(sam_kwargs)
    if flavour == "direct":
        return _sam_model(), mode
    if flavour == "subclassed":
        return user_sam_class(), mode
    return from_model_class(sam_kwargs), mode


class ModuleProxy(types.ModuleType):
    """A module with its `Model` replaced; everything else is the module's."""

    def __init__(self, module, model):
        super().__init__(module.__name__, module.__doc__)
        self.__dict__["_module"] = module
        self.Model = model

    def __getattr__(self, name):
        return getattr(self.__dict__["_module"], name)


def substitute(module, model):
    """Rebinds the names of `keras.Model` in a test module's globals.

    A global that is `keras.Model` becomes `model`; a global that is one of
    the `MODEL_EXPORTS` modules becomes a `ModuleProxy` whose `Model` is
    `model`.

    Args:
        module: A Keras test module (imported).
        model: The class the tests get for `keras.Model`.

    Returns:
        The sorted names rebound.

    Raises:
        pytest.UsageError: The module derived a `keras.Model` subclass at
            import time, which a rebinding after import cannot reach.
    """
    import keras

    frozen = [
        name
        for name, value in vars(module).items()
        if isinstance(value, type)
        and issubclass(value, keras.Model)
        and value is not keras.Model
        and value.__module__ == module.__name__
    ]
    if frozen:
        raise pytest.UsageError(
            f"{module.__name__} derives {frozen} from keras.Model at import "
            "time; the keras_suite plugin cannot substitute SAMModel there."
        )
    names = []
    for name, value in list(vars(module).items()):
        if value is keras.Model:
            setattr(module, name, model)
        elif isinstance(value, types.ModuleType) and (
            value.__name__ in MODEL_EXPORTS
        ):
            setattr(module, name, ModuleProxy(value, model))
        else:
            continue
        names.append(name)
    return sorted(names)


# -------------------------------------------------------------- pytest hooks


def pytest_addoption(parser):
    group = parser.getgroup("keras_suite", "Keras' tests on SAMModel")
    group.addoption(
        "--sam-flavour", choices=FLAVOURS, default=None,
        help="what the tests get for keras.Model (default: plugin off)",
    )
    group.addoption(
        "--sam-logs", choices=("auto", "keep"), default="auto",
        help="leave SAM's statistics out of the logs (auto) or keep them",
    )
    group.addoption(
        "--sam-report", default=None, help="write the outcomes as JSON here"
    )
    group.addoption(
        "--sam-only", default=None,
        help="a file of Keras test ids or fnmatch patterns (one a line): "
        "run only those",
    )


def pytest_configure(config):
    # The markers Keras' conftest.py registers (not shipped in the wheel).
    config.addinivalue_line(
        "markers", "requires_trainable_backend: needs a trainable backend"
    )
    config.addinivalue_line("markers", "multi_device: needs several devices")
    flavour = config.getoption("sam_flavour")
    if flavour is None:
        return
    model, mode = flavour_model(flavour, config.getoption("sam_logs"))
    config.stash[_STATE] = _State(flavour, model, mode)
    config.pluginmanager.register(_ReportPlugin(config), "keras_suite_report")


class _State:
    def __init__(self, flavour, model, mode):
        self.flavour = flavour
        self.model = model
        self.logs = mode
        self.rebound = {}
        self.tests = {}
        self.started = time.monotonic()


_STATE = pytest.StashKey()


def test_id(item, source_dir):
    """`models/model_test.py::ModelTest::test_x`, whatever the rootdir."""
    path = os.path.relpath(str(item.path), source_dir).replace(os.sep, "/")
    return "::".join([path, *item.nodeid.split("::")[1:]])


class _ReportPlugin:
    """Substitutes the model class after collection; records outcomes."""

    def __init__(self, config):
        self.state = config.stash[_STATE]
        self.source_dir = keras_source_dir()

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(self, config, items):
        modules = {}
        for item in items:
            module = getattr(item, "module", None)
            if module is not None:
                modules[module.__name__] = module
            for word, name in OPTIONAL_MODULES.items():
                if word in item.name and not importlib.util.find_spec(name):
                    item.add_marker(pytest.mark.skip(
                        reason=f"optional module {name!r} not installed"
                    ))
        only = config.getoption("sam_only")
        if only is not None:
            with open(only) as f:
                wanted = set(f.read().split())
            kept = [i for i in items
                    if matching_any(test_id(i, self.source_dir), wanted)]
            dropped = [i for i in items if i not in kept]
            if dropped:
                config.hook.pytest_deselected(items=dropped)
                items[:] = kept
        if self.state.model is not None:
            for name, module in sorted(modules.items()):
                self.state.rebound[name] = substitute(
                    module, self.state.model
                )

    def pytest_runtest_setup(self, item):
        _Counter.models = 0

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_makereport(self, item, call):
        outcome = yield
        report = outcome.get_result()
        report.sam_models = _Counter.models
        report.keras_id = test_id(item, self.source_dir)

    def pytest_runtest_logreport(self, report):
        key = getattr(report, "keras_id", report.nodeid)
        entry = self.state.tests.setdefault(
            key, {"outcome": "passed", "message": "", "sam_models": 0}
        )
        entry["sam_models"] = max(
            entry["sam_models"], getattr(report, "sam_models", 0)
        )
        if report.failed and entry["outcome"] != "failed":
            entry["outcome"] = "failed"
            entry["when"] = report.when
            entry["message"] = _message(report)
        elif report.skipped and entry["outcome"] == "passed":
            entry["outcome"] = "skipped"
            entry["message"] = _message(report)

    def pytest_sessionfinish(self, session):
        path = session.config.getoption("sam_report")
        if path is None:
            return
        import keras

        import keras_sam

        state = self.state
        with open(path, "w") as f:
            json.dump(
                {
                    "flavour": state.flavour,
                    "logs": state.logs,
                    "keras": keras.__version__,
                    "keras_sam": keras_sam.__version__,
                    "seconds": round(time.monotonic() - state.started, 1),
                    "rebound": state.rebound,
                    "tests": state.tests,
                },
                f,
                indent=1,
                sort_keys=True,
            )


def _message(report) -> str:
    """The one-line reason of a failure or skip."""
    longrepr = report.longrepr
    if isinstance(longrepr, tuple):  # a skip: (path, line, reason)
        return str(longrepr[2])
    crash = getattr(longrepr, "reprcrash", None)
    if crash is not None:
        return crash.message[:MESSAGE_LENGTH]
    text = str(longrepr).strip() if longrepr else ""
    return text.splitlines()[-1][:MESSAGE_LENGTH] if text else ""


# ------------------------------------------------------------------- runner


def run_suite(flavour, workdir, logs="auto", timeout=3600, extra=(),
              only=None):
    """Runs the Keras test files in a subprocess with the plugin.

    Args:
        flavour: One of `FLAVOURS`.
        workdir: A directory for the report and an empty pytest.ini, so
            that the project's pytest configuration stays out of the run.
        logs: "auto" or "keep", see `flavour_model`.
        timeout: Seconds before the run is killed.
        extra: More pytest arguments (e.g. `-k`).
        only: Optional list of Keras test ids (`test_id`): run only those.

    Returns:
        `(report, output)`: the plugin's JSON report as a dict (None if
        none was written), with the run's CPU time added as
        `cpu_seconds`, and the tail of pytest's output.
    """
    os.makedirs(workdir, exist_ok=True)
    ini = os.path.join(workdir, "pytest.ini")
    with open(ini, "w") as f:
        f.write("[pytest]\n")
    report_path = os.path.join(workdir, f"report-{flavour}.json")
    if only is not None:
        only_path = os.path.join(workdir, f"only-{flavour}.txt")
        with open(only_path, "w") as f:
            f.write("\n".join(only))
        extra = (*extra, f"--sam-only={only_path}")
    source = keras_source_dir()
    command = [
        sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
        "-c", ini, "--rootdir", source, "-W", "ignore",
        "-p", "tests.keras_suite.plugin", f"--sam-flavour={flavour}",
        f"--sam-logs={logs}", f"--sam-report={report_path}", *extra,
        *(os.path.join(source, name) for name in KERAS_TEST_FILES),
    ]
    path = os.environ.get("PYTHONPATH")
    env = dict(
        os.environ,
        KERAS_BACKEND="tensorflow",
        TF_CPP_MIN_LOG_LEVEL="2",
        PYTHONPATH=REPOSITORY + (os.pathsep + path if path else ""),
    )
    before = _children_cpu_seconds()
    result = subprocess.run(
        command, cwd=REPOSITORY, env=env, capture_output=True, text=True,
        timeout=timeout,
    )
    output = (result.stdout + result.stderr)[-6000:]
    if not os.path.exists(report_path):
        return None, output
    with open(report_path) as f:
        report = json.load(f)
    report["cpu_seconds"] = round(_children_cpu_seconds() - before, 1)
    return report, output


def _children_cpu_seconds() -> float:
    """CPU seconds (user + system) of this process's finished children."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def failures(report) -> dict:
    """Test id -> message of every failing test in a report."""
    return {
        key: entry["message"]
        for key, entry in sorted(report["tests"].items())
        if entry["outcome"] == "failed"
    }


def matching_any(key, patterns) -> bool:
    """Whether a test id is one of `patterns` or matches one (fnmatch)."""
    return key in patterns or any(
        fnmatch.fnmatchcase(key, p) for p in patterns)


def matching(pattern, ids) -> list:
    """The ids that a known-difference pattern (fnmatch) names."""
    return [key for key in ids if fnmatch.fnmatchcase(key, pattern)]


def main(argv=None):
    """Prints a summary of one flavour's run (the failures, one a line).

    Arguments it does not know go to pytest (e.g. `-k pickle`).
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("flavour", choices=FLAVOURS)
    parser.add_argument("--logs", choices=("auto", "keep"), default="auto")
    parser.add_argument("--workdir", default="/tmp/keras_suite")
    args, pytest_args = parser.parse_known_args(argv)
    report, output = run_suite(
        args.flavour, args.workdir, args.logs, extra=pytest_args
    )
    if report is None:
        print(output)
        return 1
    tests = report["tests"]
    counts = {}
    for entry in tests.values():
        counts[entry["outcome"]] = counts.get(entry["outcome"], 0) + 1
    sam = sum(1 for entry in tests.values() if entry["sam_models"])
    print(f"{args.flavour}: {counts}, {sam} tests built a SAM model, "
          f"logs {report['logs']}, {report['seconds']} s "
          f"({report['cpu_seconds']} s CPU)")
    for key, message in failures(report).items():
        print(f"FAILED {key}: {message[:200]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
