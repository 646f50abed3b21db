"""The public API: every exported name imports and is documented."""

import importlib

import pytest

import keras_sam


def test_every_public_name_is_exported_and_documented():
    assert keras_sam.__version__
    for name in keras_sam.__all__:
        obj = getattr(keras_sam, name)
        assert obj.__doc__, f"{name} has no docstring"


# Modules that moved into subpackages: the old paths re-export the same
# objects (see keras_sam/__init__.py).
OLD_PATHS = {
    "keras_sam.hessian": ("keras_sam.diagnostics.hessian",
                          ["top_hessian_eigenvalues", "HessianOperator"]),
    "keras_sam.sharpness": ("keras_sam.diagnostics.sharpness",
                            ["m_sharpness", "SharpnessEstimate"]),
    "keras_sam.landscape": ("keras_sam.diagnostics.landscape",
                            ["interpolate", "Surface"]),
    "keras_sam.landscape_plots": ("keras_sam.diagnostics.plots",
                                  ["plot_contour", "save_curves"]),
    "keras_sam.bootstrap": ("keras_sam.noise.bootstrapping",
                            ["bootstrap", "relabel", "reinitialize"]),
    "keras_sam.datasets": ("keras_sam.noise.data",
                           ["Split", "clean_validation_split"]),
    "keras_sam.tuner": ("keras_sam.tuning",
                        ["grid_search", "bayesian_search", "PAPER_GRID"]),
    "keras_sam.hypermodel": ("keras_sam.tuning.space",
                             ["PAPER_GRID", "check_rho_values"]),
    "keras_sam.sharding": ("keras_sam.core.groups",
                           ["map_groups", "split_into_groups", "check_m"]),
}


@pytest.mark.parametrize("old", sorted(OLD_PATHS))
def test_old_import_paths_reexport_the_moved_objects(old):
    new, names = OLD_PATHS[old]
    if old == "keras_sam.landscape_plots":  # the `plots` extra
        pytest.importorskip("matplotlib")
    old_module = importlib.import_module(old)
    new_module = importlib.import_module(new)
    for name in names:
        assert getattr(old_module, name) is getattr(new_module, name), name
