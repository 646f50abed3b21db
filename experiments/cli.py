"""The absl command line every study shares.

A study module ends with

    if __name__ == "__main__":
        cli.main(train_and_evaluate, default_config="noise_robustness")

so its flags are defined only when it runs as a program: importing several
studies (as the tests do) defines no flag and cannot collide. Flags:

    --workdir           where the run directory is created (required)
    --config            a config name in experiments/configs (e.g.
                        noise_robustness_cifar10) or a path to a .py file
                        whose get_config() returns the study's config
    --override          field=value, repeatable (Python literals: 0.4,
                        "(0.0, 0.4)", True; bare words are strings)
    --dataset           shortcut for --override dataset=...
    --strategy          default, mirrored, multiworker or tpu
    --tpu               TPU name or address (strategy=tpu)
    --mixed_precision   "", mixed_float16 or mixed_bfloat16
"""

import ast
import dataclasses
import importlib
import importlib.util
import os


def load_config(name_or_path: str):
    """Calls `get_config()` of a config module given by name or path."""
    if name_or_path.endswith(".py") or os.sep in name_or_path:
        if not os.path.isfile(name_or_path):
            raise FileNotFoundError(f"Config file not found: {name_or_path}")
        spec = importlib.util.spec_from_file_location(
            "experiment_config", name_or_path
        )
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    else:
        module = importlib.import_module(f"experiments.configs.{name_or_path}")
    return module.get_config()


def apply_overrides(config, overrides):
    """A copy of the dataclass `config` with "field=value" strings applied.

    >>> from experiments.common import BaseConfig
    >>> apply_overrides(BaseConfig(), ["epochs=3", "seeds=(0, 1)"]).seeds
    (0, 1)
    """
    fields = {f.name for f in dataclasses.fields(config)}
    changes = {}
    for item in overrides or ():
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or key not in fields:
            raise ValueError(
                f"Bad override {item!r}: use field=value with a field of "
                f"{type(config).__name__}: {sorted(fields)}."
            )
        try:
            value = ast.literal_eval(text.strip())
        except (ValueError, SyntaxError):
            value = text.strip()  # a bare word is a string
        if isinstance(value, list):
            value = tuple(value)
        changes[key] = value
    return dataclasses.replace(config, **changes)


def main(train_and_evaluate, default_config: str) -> None:
    """Defines the flags, parses them and runs `train_and_evaluate`."""
    from absl import app
    from absl import flags

    flags.DEFINE_string("workdir", None, "Output directory.", required=True)
    flags.DEFINE_string("config", default_config, "Config name or path.")
    flags.DEFINE_multi_string("override", [], "field=value, repeatable.")
    flags.DEFINE_string("dataset", None, "digits or a tfds name.")
    flags.DEFINE_enum(
        "strategy", None, ["default", "mirrored", "multiworker", "tpu"],
        "tf.distribute strategy (default: the config's).",
    )
    flags.DEFINE_string("tpu", None, "TPU name or address.")
    flags.DEFINE_enum(
        "mixed_precision", None, ["", "mixed_float16", "mixed_bfloat16"],
        "Keras dtype policy (default: the config's, float32).",
    )
    values = flags.FLAGS

    def run(argv):
        if len(argv) > 1:
            raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
        config = apply_overrides(load_config(values.config), values.override)
        for name in ("dataset", "strategy", "tpu", "mixed_precision"):
            if getattr(values, name) is not None:
                config = dataclasses.replace(
                    config, **{name: getattr(values, name)}
                )
        train_and_evaluate(config, values.workdir)

    app.run(run)
