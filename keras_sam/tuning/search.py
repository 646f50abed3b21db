"""Searching rho with KerasTuner: the paper's grid, or Bayesian optimisation.

Foret et al. pick rho by a grid search over {0.01, 0.02, 0.05, 0.1, 0.2, 0.5}
scored on 10% of the training set held out as validation data, and, with
noisy labels, on a held-out set whose labels are clean (appendix C.1). This
module runs that search (`grid_search`), or a Gaussian-process search over a
log-uniform rho (`bayesian_search`), on a `SAMHyperModel` around any Keras
model, with KerasTuner's on-disk oracle: run the same call again
(`overwrite=False`, same `directory` and `project_name`) and an interrupted
search resumes where it stopped. Both are thin wrappers of one runner,
`run_search`. Each trial trains the user's model as the user compiled it;
only the hyperparameters of the search space vary (see `SAMHyperModel`).

    train, validation = clean_validation_split(x, y)   # before the noise
    train.y = label_noise(train.y)                     # training part only
    for rho in space:                                  # one trial each
        score[rho] = max over epochs of validation accuracy
    best rho = argmax score

KerasTuner is an optional dependency, imported when a search runs:
`pip install "keras_sam[tuning]"`.
"""

import functools
from typing import Any, Callable, NamedTuple, Optional, Sequence

import numpy as np

from keras_sam.tuning.space import default_objective
from keras_sam.tuning.data import SearchData
from keras_sam.tuning.data import prepare_search_data
from keras_sam.tuning.hypermodel import SAMHyperModel
from keras_sam.tuning.space import BAYESIAN_RHO_RANGE
from keras_sam.tuning.space import PAPER_GRID
from keras_sam.tuning.space import check_rho_range
from keras_sam.tuning.space import check_rho_values
from keras_sam.tuning.space import import_keras_tuner

class SearchResult(NamedTuple):
    """The outcome of a rho search.

    `best_rho` and `best_score` come from the completed trial with the
    highest score, `best_hyperparameters` is its dict of values, `trials`
    one row per trial (dicts with the same keys: "trial_id", "rho", the
    other hyperparameters, "score", "best_epoch", "status"), `tuner` the
    KerasTuner tuner and `data` the arrays it searched on.
    """

    best_rho: float
    best_score: float
    best_hyperparameters: dict
    trials: list
    tuner: Any
    data: SearchData


@functools.cache
def _resumable_grid_oracle():
    """KerasTuner's `GridSearchOracle`, able to continue a reloaded search.

    KerasTuner 1.4.8 does not save the grid oracle's walk through the grid
    (keras-team/keras-tuner#1055): a reloaded grid search stops at once.
    No public API sets that walk, so `set_state` rebuilds it from the
    reloaded trials, in the oracle's private `_ordered_ids` (the trial ids
    in grid order) and `_populate_next` (the trials whose successors are
    to be tried). This is the only use of KerasTuner's private API here;
    drop it once KerasTuner saves that state.
    """
    keras_tuner = import_keras_tuner()

    class ResumableGridSearchOracle(keras_tuner.oracles.GridSearchOracle):
        def set_state(self, state):
            super().set_state(state)
            ordered = sorted(self.start_order, key=_grid_position(self))
            self._ordered_ids = type(self._ordered_ids)()
            for trial_id in ordered:
                self._ordered_ids.insert(trial_id)
            self._populate_next = list(ordered)

    return ResumableGridSearchOracle


def _grid_position(oracle) -> Callable:
    """A key that sorts `oracle`'s trial ids in the order of its grid."""
    space = oracle.get_space().space
    orders = {
        hp.name: [hp.default] + [v for v in hp.values if v != hp.default]
        for hp in space
    }

    def position(trial_id):
        values = oracle.trials[trial_id].hyperparameters.values
        return tuple(
            orders[hp.name].index(values[hp.name])
            if hp.name in values
            else -1
            for hp in space
        )

    return position


def _space(keras_tuner, declare_rho: Callable, hyperparameters):
    """The search space: the user's (checked for rho) or the default rho."""
    if hyperparameters is None:
        default = keras_tuner.HyperParameters()
        declare_rho(default)
        return default
    if not isinstance(hyperparameters, keras_tuner.HyperParameters):
        raise ValueError(
            "`hyperparameters` must be a keras_tuner.HyperParameters. "
            f"Received: hyperparameters={hyperparameters!r}"
        )
    if "rho" not in hyperparameters:
        names = [hp.name for hp in hyperparameters.space]
        raise ValueError(
            "`hyperparameters` must declare 'rho', the hyperparameter this "
            f"search tunes. Received a space with {names}: add e.g. "
            f"hp.Choice('rho', {list(PAPER_GRID)}), or leave "
            "hyperparameters=None for the default space."
        )
    return hyperparameters


def _trial_rows(oracle) -> list:
    """One row per trial of `oracle`, in start order, with the same keys."""
    names = []
    for trial_id in oracle.start_order:
        for name in oracle.trials[trial_id].hyperparameters.values:
            if name != "rho" and name not in names:
                names.append(name)
    rows = []
    for trial_id in oracle.start_order:
        trial = oracle.trials[trial_id]
        values = trial.hyperparameters.values
        completed = trial.status == "COMPLETED"
        row = {"trial_id": trial_id, "rho": values.get("rho")}
        row.update({name: values.get(name) for name in names})
        row.update(
            score=float(trial.score) if completed else None,
            best_epoch=trial.best_step if completed else None,
            status=trial.status,
        )
        rows.append(row)
    return rows


def _result(tuner, data: SearchData) -> SearchResult:
    """The `SearchResult` of a finished `tuner`."""
    oracle = tuner.oracle
    rows = _trial_rows(oracle)
    done = [row for row in rows if row["score"] is not None]
    if not done:
        messages = [oracle.trials[r["trial_id"]].message for r in rows]
        raise RuntimeError(
            f"No trial of {tuner.project_dir!r} completed. First error:\n"
            + str(next((m for m in messages if m), "no trial was run"))
        )
    best = max(done, key=lambda row: row["score"])
    best_values = dict(oracle.trials[best["trial_id"]].hyperparameters.values)
    return SearchResult(
        best_rho=best["rho"],
        best_score=best["score"],
        best_hyperparameters=best_values,
        trials=rows,
        tuner=tuner,
        data=data,
    )


def run_search(
    make_tuner: Callable, declare_rho: Callable, hypermodel, x, y, *,
    directory: str, project_name: str, hyperparameters=None,
    epochs: int = 10, batch_size: int = 32,
    validation_data: Optional[tuple] = None, validation_fraction: float = 0.1,
    label_noise: Optional[Callable] = None, seed: int = 0, objective=None,
    overwrite: bool = False, callbacks: Optional[list] = None,
    verbose: int = 0,
) -> SearchResult:
    """Runs (or resumes) a KerasTuner search of rho: the searches' body.

    Args:
        make_tuner: `make_tuner(keras_tuner, **kwargs)` returning a tuner
            made with `kwargs` (hypermodel, objective, hyperparameters,
            seed, directory, project_name, overwrite).
        declare_rho: `declare_rho(hp)` declares the default "rho".
        hypermodel, x, y, directory, project_name: See `grid_search`.
        hyperparameters: Optional `keras_tuner.HyperParameters`, the whole
            space instead of the default rho; must declare "rho".
        epochs, batch_size, callbacks, verbose: Arguments of each trial's
            `fit` (`verbose` is KerasTuner's too).
        validation_data, validation_fraction, label_noise: See
            `prepare_search_data`.
        seed: Integer seed of the held-out split and of the tuner.
        objective: The score; None is `default_objective()`, the best
            epoch's "val_accuracy".
        overwrite: Boolean, whether to discard a previous search.

    Returns:
        A `SearchResult`.

    Raises:
        ImportError: If keras-tuner is not installed.
    """
    keras_tuner = import_keras_tuner()
    space = _space(keras_tuner, declare_rho, hyperparameters)
    data = prepare_search_data(
        x, y, validation_data=validation_data,
        validation_fraction=validation_fraction, label_noise=label_noise,
        seed=seed,
    )
    if not isinstance(hypermodel, keras_tuner.HyperModel):
        hypermodel = SAMHyperModel(hypermodel)
    if objective is None:
        objective = default_objective()
    tuner = make_tuner(
        keras_tuner, hypermodel=hypermodel, objective=objective,
        hyperparameters=space, seed=seed, directory=directory,
        project_name=project_name, overwrite=overwrite,
    )
    tuner.search(
        data.train.x, data.train.y,
        validation_data=(data.validation.x, data.validation.y),
        epochs=epochs, batch_size=batch_size,
        callbacks=list(callbacks or []), verbose=verbose,
    )
    return _result(tuner, data)


def grid_search(
    hypermodel, x, y, *, directory: str,
    project_name: str = "rho_grid_search",
    rho_values: Sequence[float] = PAPER_GRID,
    max_trials: Optional[int] = None, **search_kwargs,
) -> SearchResult:
    """Grid search of rho scored on a clean validation split.

    Args:
        hypermodel: A `SAMHyperModel`, any `keras_tuner.HyperModel`, a
            model-building function or a Keras model to clone; a compiled
            model keeps its compile (see `SAMHyperModel`).
        x: Training inputs.
        y: Clean training labels, integers or one-hot.
        directory: String, where KerasTuner keeps the search; run again
            with the same `directory`, `project_name` and overwrite=False
            to resume an interrupted search.
        project_name: String, the search's sub-directory.
        rho_values: The grid of rho. Defaults to `PAPER_GRID`.
        max_trials: Optional integer; None searches the whole grid.
        **search_kwargs: `hyperparameters` (a whole space instead of
            `rho_values`), `epochs`, `batch_size`, `validation_data`,
            `validation_fraction`, `label_noise`, `seed`, `objective`,
            `overwrite`, `callbacks`, `verbose`: see `run_search`.

    Returns:
        A `SearchResult`.

    >>> import keras, numpy as np, tempfile
    >>> def build():
    ...     return keras.Sequential([keras.Input((4,)), keras.layers.Dense(2,
    ...         activation="softmax")])
    >>> x, y = np.random.rand(40, 4), np.arange(40) % 2
    >>> result = grid_search(build, x, y, directory=tempfile.mkdtemp(),
    ...                      rho_values=[0.05, 0.1], epochs=1)
    >>> len(result.trials), result.best_rho in (0.05, 0.1)
    (2, True)

    References:
        Foret et al. 2021, section 3.1 (grid {0.01, 0.02, 0.05, 0.1, 0.2,
        0.5}, 10% validation split), appendix C.1 (clean validation set).
    """
    values = list(check_rho_values(rho_values))

    def make_tuner(keras_tuner, objective, hyperparameters, seed, **kwargs):
        oracle = _resumable_grid_oracle()(
            objective=objective, max_trials=max_trials,
            hyperparameters=hyperparameters, seed=seed,
        )
        return keras_tuner.Tuner(oracle=oracle, **kwargs)

    def declare_rho(hp):
        hp.Choice("rho", values)

    return run_search(
        make_tuner, declare_rho, hypermodel, x, y, directory=directory,
        project_name=project_name, **search_kwargs,
    )


def bayesian_search(
    hypermodel, x, y, *, directory: str,
    project_name: str = "rho_bayesian_search",
    rho_range: tuple = BAYESIAN_RHO_RANGE, max_trials: int = 10,
    num_initial_points: Optional[int] = None, **search_kwargs,
) -> SearchResult:
    """Bayesian optimisation (Gaussian process) of a log-uniform rho.

    Takes the arguments of `grid_search`, with `rho_range` instead of
    `rho_values`:

    Args:
        rho_range: `(min, max)`, 0 < min < max, the bounds of rho, searched
            on a log scale. Defaults to `BAYESIAN_RHO_RANGE`.
        max_trials: Integer, the number of trials. Defaults to 10.
        num_initial_points: Optional integer, random trials before the
            Gaussian process takes over (KerasTuner: 3 per dimension).

    Returns:
        A `SearchResult`.

    A compiled model is searched with its own compile (here Adam):

    >>> import keras, numpy as np, tempfile
    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2,
    ...     activation="softmax")])
    >>> model.compile(optimizer="adam", metrics=["accuracy"],
    ...               loss="sparse_categorical_crossentropy")
    >>> x, y = np.random.rand(40, 4), np.arange(40) % 2
    >>> result = bayesian_search(model, x, y, directory=tempfile.mkdtemp(),
    ...                          max_trials=2, epochs=1)
    >>> 0.005 <= result.best_rho <= 1.0
    True

    References:
        Alexandru, "Sharpness-aware minimisation and label noise", section
        7 (Bayesian optimisation of rho); Foret et al. 2021, appendix C.1.
    """
    low, high = check_rho_range(rho_range)

    def make_tuner(keras_tuner, **kwargs):
        return keras_tuner.BayesianOptimization(
            max_trials=max_trials, num_initial_points=num_initial_points,
            **kwargs,
        )

    def declare_rho(hp):
        hp.Float("rho", low, high, sampling="log")

    return run_search(
        make_tuner, declare_rho, hypermodel, x, y, directory=directory,
        project_name=project_name, **search_kwargs,
    )
