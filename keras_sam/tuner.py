"""Searching rho with KerasTuner: the paper's grid, or Bayesian optimisation.

Foret et al. pick rho by a grid search over {0.01, 0.02, 0.05, 0.1, 0.2, 0.5}
scored on 10% of the training set held out as validation data, and, with
noisy labels, on a held-out set whose labels are clean (appendix C.1). This
module runs that search (`grid_search`), or a Gaussian-process search over a
log-uniform rho (`bayesian_search`), on a `SAMHyperModel` around any Keras
model, with KerasTuner's on-disk oracle: run the same call again
(`overwrite=False`, same `directory` and `project_name`) and an interrupted
search resumes where it stopped.

    train, validation = clean_validation_split(x, y)   # before the noise
    train.y = label_noise(train.y)                     # training part only
    for rho in space:                                  # one trial each
        score[rho] = max over epochs of validation accuracy
    best rho = argmax score
"""

from typing import Any, Callable, NamedTuple, Optional, Sequence

import keras_tuner
import numpy as np

from keras_sam import datasets
from keras_sam.hypermodel import BAYESIAN_RHO_RANGE
from keras_sam.hypermodel import OBJECTIVE
from keras_sam.hypermodel import PAPER_GRID
from keras_sam.hypermodel import SAMHyperModel
from keras_sam.hypermodel import check_rho_range
from keras_sam.hypermodel import check_rho_values

__all__ = [
    "BAYESIAN_RHO_RANGE",
    "OBJECTIVE",
    "PAPER_GRID",
    "SAMHyperModel",
    "SearchData",
    "SearchResult",
    "bayesian_search",
    "grid_search",
    "prepare_search_data",
]


class SearchData(NamedTuple):
    """What a search trains and scores on.

    `train` may carry noisy labels; `validation` is held out before the
    noise and stays clean. `noise` is what `label_noise` returned (e.g.
    `NoisyLabels`, with the clean labels and the corruption mask), or None.
    """

    train: datasets.Split
    validation: datasets.Split
    noise: Any


def prepare_search_data(
    x,
    y,
    *,
    validation_data: Optional[tuple] = None,
    validation_fraction: float = 0.1,
    label_noise: Optional[Callable] = None,
    seed: int = 0,
) -> SearchData:
    """Holds out a clean validation split, then adds noise to the rest.

    Args:
        x: Training inputs, examples along the first axis.
        y: Clean integer training labels.
        validation_data: Optional `(x_val, y_val)` with clean labels; if
            None, `validation_fraction` of `(x, y)` is held out.
        validation_fraction: Float in (0, 1), the share held out. Defaults
            to 0.1 (Foret et al. section 3.1).
        label_noise: Optional `label_noise(labels)` returning noisy labels
            or a `NoisyLabels`, applied to the training part only.
        seed: Integer seed of the held-out split.

    Returns:
        A `SearchData`.

    >>> import numpy as np
    >>> data = prepare_search_data(np.zeros((20, 2)), np.arange(20) % 2)
    >>> len(data.train.y), len(data.validation.y)
    (18, 2)

    References:
        Foret et al. 2021, section 3.1 and appendix C.1.
    """
    x, y = np.asarray(x), np.asarray(y)
    if validation_data is not None:
        x_val, y_val = (np.asarray(a) for a in validation_data)
        if len(y_val) == 0 or len(x_val) != len(y_val):
            raise ValueError(
                "`validation_data` must hold matching, non-empty inputs and "
                f"labels to score rho on. Received {len(x_val)} inputs and "
                f"{len(y_val)} labels: pass held-out examples with clean "
                "labels, or validation_data=None to hold out "
                "`validation_fraction` of the training set."
            )
        train, validation = datasets.Split(x, y), datasets.Split(x_val, y_val)
    else:
        n_val = (
            int(round(validation_fraction * len(y)))
            if 0 < validation_fraction < 1
            else 0
        )
        if n_val == 0 or n_val >= len(y):
            raise ValueError(
                "`validation_fraction` must hold out at least one example and "
                f"leave some for training. Received: validation_fraction="
                f"{validation_fraction!r} of {len(y)} examples gives "
                f"{n_val} validation examples. Use a fraction in (0, 1) such "
                "as 0.1, more data, or pass `validation_data`."
            )
        train, validation = datasets.clean_validation_split(
            x, y, fraction=validation_fraction, seed=seed
        )
    noise = None
    if label_noise is not None:
        noise = label_noise(train.y)
        labels = np.asarray(getattr(noise, "labels", noise))
        if labels.shape != train.y.shape:
            raise ValueError(
                "`label_noise` must return one label per training example. "
                f"Received labels of shape {labels.shape} for "
                f"{train.y.shape}."
            )
        train = datasets.Split(train.x, labels)
    return SearchData(train, validation, noise)


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
    tuner: keras_tuner.Tuner
    data: SearchData


class _ResumableGridSearchOracle(keras_tuner.oracles.GridSearchOracle):
    """`GridSearchOracle` that can continue a reloaded search.

    KerasTuner 1.4.8 does not save the grid oracle's walk through the grid
    (keras-team/keras-tuner#1055): a reloaded grid search stops at once.
    This rebuilds that state from the reloaded trials.
    """

    def set_state(self, state):
        super().set_state(state)
        hps = self.get_space()
        names = [hp.name for hp in hps.space]
        orders = {
            hp.name: [hp.default]
            + [v for v in hp.values if v != hp.default]
            for hp in hps.space
        }

        def position(trial_id):
            values = self.trials[trial_id].hyperparameters.values
            return tuple(
                orders[n].index(values[n]) if n in values else -1
                for n in names
            )

        ordered = sorted(self.start_order, key=position)
        self._ordered_ids = type(self._ordered_ids)()
        for trial_id in ordered:
            self._ordered_ids.insert(trial_id)
        self._populate_next = list(ordered)


def _space(hyperparameters, default):
    """The tuner's search space: the user's (checked for rho) or `default`."""
    if hyperparameters is None:
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


def _as_hypermodel(hypermodel) -> keras_tuner.HyperModel:
    if isinstance(hypermodel, keras_tuner.HyperModel):
        return hypermodel
    return SAMHyperModel(hypermodel)


def _run(tuner, data: SearchData, **fit_kwargs) -> SearchResult:
    """Runs (or resumes) `tuner` on `data` and tabulates its trials."""
    fit_kwargs["callbacks"] = list(fit_kwargs["callbacks"] or [])
    tuner.search(
        data.train.x,
        data.train.y,
        validation_data=(data.validation.x, data.validation.y),
        **fit_kwargs,
    )
    oracle = tuner.oracle
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


def grid_search(
    hypermodel,
    x,
    y,
    *,
    directory: str,
    project_name: str = "rho_grid_search",
    rho_values: Sequence[float] = PAPER_GRID,
    hyperparameters: Optional[keras_tuner.HyperParameters] = None,
    max_trials: Optional[int] = None,
    epochs: int = 10,
    batch_size: int = 32,
    validation_data: Optional[tuple] = None,
    validation_fraction: float = 0.1,
    label_noise: Optional[Callable] = None,
    seed: int = 0,
    objective=OBJECTIVE,
    overwrite: bool = False,
    callbacks: Optional[list] = None,
    verbose: int = 0,
) -> SearchResult:
    """Grid search of rho scored on a clean validation split.

    Args:
        hypermodel: A `SAMHyperModel`, any `keras_tuner.HyperModel`, a
            model-building function or a Keras model to clone.
        x: Training inputs.
        y: Clean integer training labels (see `prepare_search_data`).
        directory: String, where KerasTuner keeps the search; run again with
            the same `directory`, `project_name` and `overwrite=False` to
            resume an interrupted search.
        project_name: String, the search's sub-directory.
        rho_values: The grid of rho. Defaults to `PAPER_GRID`.
        hyperparameters: Optional `keras_tuner.HyperParameters`, the whole
            space instead of `rho_values`; must declare "rho".
        max_trials: Optional integer; None searches the whole grid.
        epochs: Integer, epochs per trial.
        batch_size: Integer.
        validation_data, validation_fraction, label_noise, seed: See
            `prepare_search_data`.
        objective: The score, by default the best epoch's "val_accuracy".
        overwrite: Boolean, whether to discard a previous search.
        callbacks: Optional list of Keras callbacks for every trial.
        verbose: Integer, verbosity of KerasTuner and `fit`.

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
        0.5}, 10% validation split) and appendix C.1 (clean validation set
        for noisy labels).
    """
    default = keras_tuner.HyperParameters()
    default.Choice("rho", list(check_rho_values(rho_values)))
    space = _space(hyperparameters, default)
    data = prepare_search_data(
        x,
        y,
        validation_data=validation_data,
        validation_fraction=validation_fraction,
        label_noise=label_noise,
        seed=seed,
    )
    oracle = _ResumableGridSearchOracle(
        objective=objective,
        max_trials=max_trials,
        hyperparameters=space,
        seed=seed,
    )
    tuner = keras_tuner.Tuner(
        oracle=oracle,
        hypermodel=_as_hypermodel(hypermodel),
        directory=directory,
        project_name=project_name,
        overwrite=overwrite,
    )
    return _run(
        tuner,
        data,
        epochs=epochs,
        batch_size=batch_size,
        callbacks=callbacks,
        verbose=verbose,
    )


def bayesian_search(
    hypermodel,
    x,
    y,
    *,
    directory: str,
    project_name: str = "rho_bayesian_search",
    rho_range: tuple = BAYESIAN_RHO_RANGE,
    hyperparameters: Optional[keras_tuner.HyperParameters] = None,
    max_trials: int = 10,
    num_initial_points: Optional[int] = None,
    epochs: int = 10,
    batch_size: int = 32,
    validation_data: Optional[tuple] = None,
    validation_fraction: float = 0.1,
    label_noise: Optional[Callable] = None,
    seed: int = 0,
    objective=OBJECTIVE,
    overwrite: bool = False,
    callbacks: Optional[list] = None,
    verbose: int = 0,
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

    >>> import keras, numpy as np, tempfile
    >>> def build():
    ...     return keras.Sequential([keras.Input((4,)), keras.layers.Dense(2,
    ...         activation="softmax")])
    >>> x, y = np.random.rand(40, 4), np.arange(40) % 2
    >>> result = bayesian_search(build, x, y, directory=tempfile.mkdtemp(),
    ...                          max_trials=2, epochs=1)
    >>> 0.005 <= result.best_rho <= 1.0
    True

    References:
        Alexandru, "Sharpness-aware minimisation and label noise", section
        7 (Bayesian optimisation of rho); Foret et al. 2021, appendix C.1.
    """
    low, high = check_rho_range(rho_range)
    default = keras_tuner.HyperParameters()
    default.Float("rho", low, high, sampling="log")
    space = _space(hyperparameters, default)
    data = prepare_search_data(
        x,
        y,
        validation_data=validation_data,
        validation_fraction=validation_fraction,
        label_noise=label_noise,
        seed=seed,
    )
    tuner = keras_tuner.BayesianOptimization(
        hypermodel=_as_hypermodel(hypermodel),
        objective=objective,
        max_trials=max_trials,
        num_initial_points=num_initial_points,
        hyperparameters=space,
        seed=seed,
        directory=directory,
        project_name=project_name,
        overwrite=overwrite,
    )
    return _run(
        tuner,
        data,
        epochs=epochs,
        batch_size=batch_size,
        callbacks=callbacks,
        verbose=verbose,
    )
