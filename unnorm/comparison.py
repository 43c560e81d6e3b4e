"""``un.compare``: several estimators on the same model and data, in one tidy table.

Each estimator is fitted with :func:`unnorm.fit` and the same key (common random numbers: the
same minibatch stream), and the results are stacked in long form, one row per (estimator,
scalar parameter), as a statistician would tabulate a simulation study. An estimator whose fit
fails keeps its rows, with NaN estimates and the error in ``error_message``: one estimator that
cannot fit the data does not cost the others' results.
"""

from __future__ import annotations

import sys
import time
import warnings
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from . import _checks
from .driver import fit
from .estimators import ESTIMATORS, Estimator, resolve
from .model import Model
from .result import FitResult
from .uncertainty import parameter_names

__all__ = ["compare", "default_estimators"]

#: the columns of the table ``compare`` returns (``error`` is added when ``truth`` is given,
#: ``error_message`` when an estimator failed)
COLUMNS = ["estimator", "parameter", "estimate", "std_err", "ci_lower", "ci_upper", "time_s"]


def default_estimators(model: Model) -> list[str]:
    """The names of the estimators that can fit ``model`` (on its support), in registry order."""
    names = []
    for name, cls in ESTIMATORS.items():
        try:
            cls().check(model)
        except ValueError:
            continue
        names.append(name)
    return names


def _labels(estimators: list[Estimator]) -> list[str]:
    """Each estimator's name; a name used twice gets its options (``dsm(sigma=0.05)``)."""
    names = [e.name for e in estimators]
    labels = []
    for estimator in estimators:
        if names.count(estimator.name) == 1:
            labels.append(estimator.name)
        else:
            options = ", ".join(f"{k}={v!r}" for k, v in estimator.options().items())
            labels.append(f"{estimator.name}({options})")
    if len(set(labels)) != len(labels):
        raise ValueError(f"estimators lists the same estimator twice: {labels}.")
    return labels


def compare(
    model: Model,
    data,
    estimators: Sequence[str | Estimator] | None = None,
    *,
    key,
    truth: dict | None = None,
    level: float = 0.95,
    return_fits: bool = False,
    **fit_options: Any,
) -> pd.DataFrame | tuple[pd.DataFrame, dict[str, FitResult]]:
    """Fit one model to one data set with several estimators and tabulate the results.

    Parameters
    ----------
    model : Model
        The model; its initial ``params`` are every estimator's starting point.
    data : array (n, *event_shape)
        Observations on the model's support.
    estimators : sequence of str or Estimator, optional
        Names (``"sm"``, ``"ssm"``...) or configured instances (``un.estimators.DSM(0.05)``).
        Default: every registered estimator that applies to the model's support
        (:func:`default_estimators`), listed on stderr before the first fit. All are checked
        against the model before any is fitted; a progress bar runs over them (with
        ``progress_bar=True``, the default, outside CI).
    key : jax.random key
        Passed unchanged to every fit: the estimators see the same random stream.
    truth : dict, optional
        The true parameters (structure of ``model.params``); adds the column ``error`` =
        estimate − truth.
    level : float
        Coverage of the intervals ``ci_lower``, ``ci_upper``.
    return_fits : bool
        Also return the :class:`FitResult` of each estimator, keyed by its label.
    **fit_options
        Passed to every :func:`unnorm.fit` call (``num_steps``, ``batch_size``, ``optimizer``,
        ``stderr``, ``progress_bar``...).

    Returns
    -------
    pandas.DataFrame
        Long form, one row per (estimator, scalar parameter): ``estimator, parameter,
        estimate, std_err, ci_lower, ci_upper, time_s`` (seconds of that estimator's fit,
        compilation included), and ``error`` when ``truth`` is given. ``std_err`` and the
        interval are NaN when an estimator's standard errors were not computed. When an
        estimator's fit raised, its rows hold NaN estimates, a ``RuntimeWarning`` names the
        estimator and the error, and the column ``error_message`` (added when some fit
        failed; None in the rows of the others) holds ``"ExceptionType: message"``; when
        every fit fails, the first error is raised. With ``return_fits``, the pair
        ``(table, fits)``, ``fits`` holding the fits that succeeded.

    Examples
    --------
    >>> import jax, numpy as np, unnorm as un
    >>> x = np.random.default_rng(0).normal(size=(500, 2))
    >>> model = un.models.gaussian(2)
    >>> table = un.compare(model, x, ["sm", "ssm"], key=jax.random.key(0),
    ...                    truth={"mu": np.zeros(2), "prec": np.eye(2)}, progress_bar=False)
    >>> table.groupby("estimator").size().to_dict()
    {'sm': 6, 'ssm': 6}
    >>> list(table.columns)[-2:]
    ['time_s', 'error']
    """
    if not isinstance(model, Model):
        raise TypeError(f"model must be an unnorm.Model; got {type(model).__name__}.")
    if estimators is None:
        names = default_estimators(model)
        if not names:
            raise ValueError(f"no registered estimator applies to the support {model.support!r}.")
        estimators = names
        # the user named none: say which will run (several can take minutes each)
        print(f"un.compare: fitting {len(names)} estimators that apply to the support "
              f"{model.support!r}: {', '.join(names)}", file=sys.stderr, flush=True)
    if isinstance(estimators, (str, Estimator)) or not isinstance(estimators, Sequence):
        raise TypeError("estimators must be a list of names or Estimator instances, e.g. "
                        f"['sm', 'ssm']; got {estimators!r}.")
    if len(estimators) == 0:
        raise ValueError("estimators is empty; name at least one, e.g. ['sm', 'ssm'].")
    resolved = [resolve(e, f"estimators[{i}]") for i, e in enumerate(estimators)]
    key = _checks.check_key(key)
    for estimator in resolved:  # every one, before the first (possibly long) fit
        estimator.check(model)
    labels = _labels(resolved)
    # once, rather than a failure per estimator
    model.support.check_data(data, "data", dtype=model.dtype)
    truth_flat = None
    if truth is not None:
        truth = model.check_params(truth, "truth")
        truth_flat = np.concatenate([np.ravel(np.asarray(leaf, dtype=float))
                                     for leaf in jax.tree_util.tree_leaves(truth)])

    tables, fits, failures = [], {}, {}
    show = not _checks.progress_disabled(fit_options.get("progress_bar", True))
    bar = tqdm(zip(labels, resolved, strict=True), total=len(labels), desc="compare",
               unit="estimator", disable=not show or len(labels) == 1, leave=False)
    for label, estimator in bar:
        bar.set_postfix(estimator=label)
        started = time.perf_counter()
        try:
            result = fit(model, data, estimator, key=key, **fit_options)
        except Exception as err:  # any failure of one fit (the energy is the user's code)
            failures[label] = err
            message = f"{type(err).__name__}: {err}"
            warnings.warn(f"un.compare: estimator {label!r} failed and its rows hold NaN "
                          f"estimates (see the column error_message): {message}",
                          RuntimeWarning, stacklevel=2)
            tables.append(_failed_rows(model, label, message, time.perf_counter() - started))
            continue
        fits[label] = result
        table = result.summary(level).reset_index()
        table.insert(0, "estimator", label)
        table["time_s"] = result.wall_time
        table["error_message"] = None
        tables.append(table)
    if not fits:
        raise next(iter(failures.values()))
    if truth_flat is not None:
        for table in tables:
            # the model's parameters come first; an estimator's nuisance rows (NCE's log_z)
            # have no truth
            error = np.full(len(table), np.nan)
            error[:truth_flat.size] = table["estimate"].to_numpy()[:truth_flat.size] - truth_flat
            table["error"] = error
    out = pd.concat(tables, ignore_index=True)
    extra = (["error"] if truth_flat is not None else []) + (
        ["error_message"] if failures else [])
    out = out[COLUMNS + extra]
    return (out, fits) if return_fits else out


def _failed_rows(model: Model, label: str, message: str, seconds: float) -> pd.DataFrame:
    """The rows of an estimator whose fit failed: every parameter, NaN estimates."""
    names = parameter_names(model.params)
    nan = np.full(len(names), np.nan)
    return pd.DataFrame({"estimator": label, "parameter": names, "estimate": nan,
                         "std_err": nan, "ci_lower": nan, "ci_upper": nan, "time_s": seconds,
                         "error_message": message})
