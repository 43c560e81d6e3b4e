"""Pictures of fits and models: ``un.plots.plot_compare``, ``plot_fit`` and ``plot_energy``.

Each function draws on a matplotlib Axes (a new figure when ``ax`` is not given) and returns it,
so that titles, limits and saving stay in the caller's hands. matplotlib is imported when a
function is first called, not with ``unnorm``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import jax
import numpy as np
import pandas as pd

from . import _compat
from .model import Model, energies
from .result import FitResult
from .uncertainty import parameter_names

if TYPE_CHECKING:
    from matplotlib.axes import Axes

__all__ = ["plot_compare", "plot_fit", "plot_energy", "MONTE_CARLO_ESTIMATORS", "LOSS_LABELS"]

#: the estimators whose recorded loss is a Monte Carlo surrogate (MCMC draws inside the loss)
MONTE_CARLO_ESTIMATORS = ("mle", "cd", "pcd")

#: what ``fit.loss`` holds, per estimator name (the y label of :func:`plot_fit`)
LOSS_LABELS = {
    "sm": "score-matching objective (SM)",
    "dsm": "denoising score-matching objective (DSM)",
    "ssm": "sliced score-matching objective (SSM)",
    "nce": "NCE logistic loss",
    "ksd": "kernel Stein discrepancy (KSD)",
    "mle": "MLE surrogate: mean E(data) − mean E(draws)",
    "cd": "CD surrogate: mean E(data) − mean E(draws)",
    "pcd": "PCD surrogate: mean E(data) − mean E(draws)",
    "pl": "negative log pseudo-likelihood (PL)",
    "rm": "ratio-matching objective (RM)",
    "mpf": "minimum probability flow objective (MPF)",
}

_TABLE_COLUMNS = ("estimator", "parameter", "estimate", "ci_lower", "ci_upper")
_MATRIX_ENTRY = re.compile(r"^(?P<name>.+)\[(?P<i>\d+),(?P<j>\d+)\]$")


def _new_axes(ax, figsize):
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=figsize, layout="constrained")
        return ax
    from matplotlib.axes import Axes

    if not isinstance(ax, Axes):
        raise TypeError(f"ax must be a matplotlib Axes or None; got {type(ax).__name__}.")
    return ax


# ---- plot_compare -------------------------------------------------------------------------------
def _check_table(table) -> pd.DataFrame:
    if not isinstance(table, pd.DataFrame):
        raise TypeError(f"table must be the pandas DataFrame that un.compare returns; got "
                        f"{type(table).__name__}.")
    missing = [c for c in _TABLE_COLUMNS if c not in table.columns]
    if missing:
        raise ValueError(f"table lacks the columns {missing}; it needs {list(_TABLE_COLUMNS)} "
                         f"(un.compare's table); got columns {list(table.columns)}.")
    if len(table) == 0:
        raise ValueError("table has no rows.")
    return table


def _truth_values(table: pd.DataFrame, truth) -> dict[str, float]:
    """Parameter name -> true value, from ``truth`` or else from the ``error`` column."""
    if truth is not None:
        if not isinstance(truth, Mapping):
            raise TypeError(f"truth must be a dict in the structure of model.params; got "
                            f"{type(truth).__name__}.")
        flat = np.concatenate([np.ravel(np.asarray(leaf, dtype=float))
                               for leaf in jax.tree_util.tree_leaves(dict(truth))] or [[]])
        values = dict(zip(parameter_names(dict(truth)), flat, strict=True))
        unknown = sorted(set(values) - set(table["parameter"]))
        if unknown:
            listed = list(table["parameter"].unique())
            raise ValueError(f"truth has the parameters {unknown}, which the table does not "
                             f"list; the table's parameters are {listed}.")
        return values
    if "error" not in table.columns:
        return {}
    known = table[np.isfinite(table["estimate"]) & np.isfinite(table["error"])]
    known = known.drop_duplicates("parameter")
    return dict(zip(known["parameter"], known["estimate"] - known["error"], strict=True))


def _mirrored_entries(table: pd.DataFrame) -> set[str]:
    """The lower entries ``m[j,i]`` (j > i) that equal ``m[i,j]`` for every estimator."""
    wide = table.set_index(["parameter", "estimator"])[["estimate", "ci_lower", "ci_upper"]]
    present = set(table["parameter"])
    drop = set()
    for name in present:
        match = _MATRIX_ENTRY.match(name)
        if not match or int(match["i"]) <= int(match["j"]):
            continue
        upper = f"{match['name']}[{match['j']},{match['i']}]"
        if upper not in present:
            continue
        lower_rows = wide.loc[name].sort_index()
        upper_rows = wide.loc[upper].sort_index()
        if lower_rows.index.equals(upper_rows.index) and np.allclose(
                lower_rows.to_numpy(float), upper_rows.to_numpy(float), rtol=1e-6, atol=0,
                equal_nan=True):
            drop.add(name)
    return drop


def plot_compare(table: pd.DataFrame, truth: Mapping[str, Any] | None = None, *,
                 ax: Axes | None = None, level: float = 0.95) -> Axes:
    """Forest plot of :func:`unnorm.compare`'s table: every estimate with its interval.

    One row per scalar parameter, top to bottom in the table's order; within a row, one marker
    and interval per estimator (one colour each, offset vertically so they do not overlap).
    The interval is the table's ``ci_lower`` to ``ci_upper``. Entries of a symmetric matrix
    are drawn once: when ``m[1,0]`` has the same estimate and interval as ``m[0,1]`` for every
    estimator, only ``m[0,1]`` is shown. Rows with a NaN estimate (a failed fit) are skipped;
    an estimator with no finite row is listed in the legend as failed.

    Parameters
    ----------
    table : pandas.DataFrame
        ``un.compare``'s table (columns ``estimator, parameter, estimate, ci_lower,
        ci_upper``; ``error`` is used for the truth when ``truth`` is not given).
    truth : dict, optional
        The true parameters, in the structure of ``model.params``; drawn as black diamonds.
        Default: ``estimate − error`` from the table's ``error`` column when it has one (no
        truth marks otherwise). Parameters the truth does not cover (an estimator's nuisance
        rows, such as NCE's ``log_z``) get no mark.
    ax : matplotlib Axes, optional
        Where to draw; a new figure, sized to the number of rows, by default.
    level : float
        The coverage of the table's intervals (the ``level`` given to ``un.compare``, 0.95 by
        default there too); used in the x label only.

    Returns
    -------
    matplotlib.axes.Axes

    Raises
    ------
    TypeError, ValueError
        When ``table`` is not a DataFrame with those columns, ``truth`` names a parameter the
        table lacks, or ``level`` is not in (0, 1).

    Examples
    --------
    >>> import jax, numpy as np, unnorm as un
    >>> x = np.random.default_rng(0).normal(size=(500, 2))
    >>> truth = {"mu": np.zeros(2), "prec": np.eye(2)}
    >>> table = un.compare(un.models.gaussian(2), x, ["sm", "ssm"], key=jax.random.key(0),
    ...                    truth=truth, progress_bar=False)
    >>> ax = un.plots.plot_compare(table)
    >>> [t.get_text() for t in ax.get_yticklabels()]
    ['mu[0]', 'mu[1]', 'prec[0,0]', 'prec[0,1]', 'prec[1,1]']
    """
    table = _check_table(table)
    if isinstance(level, bool) or not isinstance(level, (int, float)) or not 0 < level < 1:
        raise ValueError(f"level must be a number in (0, 1), the coverage of the table's "
                         f"intervals; got {level!r}.")
    truth_values = _truth_values(table, truth)
    drop = _mirrored_entries(table)
    shown = table[~table["parameter"].isin(drop)]
    finite = shown[np.isfinite(shown["estimate"].to_numpy(float))]
    parameters = list(dict.fromkeys(finite["parameter"]))
    if not parameters:
        raise ValueError("table has no finite estimate to draw: every fit failed.")
    estimators = list(dict.fromkeys(table["estimator"]))
    ax = _new_axes(ax, (6.4, 1.5 + 0.4 * len(parameters) * max(1.0, len(estimators) / 3)))
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    row = {name: i for i, name in enumerate(parameters)}
    span = 0.6
    offsets = (np.linspace(-span / 2, span / 2, len(estimators)) if len(estimators) > 1
               else np.zeros(1))
    colours = plt.rcParams["axes.prop_cycle"].by_key().get("color", ["C0"])
    failed = []
    for k, name in enumerate(estimators):
        rows = finite[finite["estimator"] == name]
        colour = colours[k % len(colours)]
        if rows.empty:
            failed.append((name, colour))
            continue
        y = np.array([row[p] for p in rows["parameter"]]) + offsets[k]
        est = rows["estimate"].to_numpy(float)
        lo, hi = rows["ci_lower"].to_numpy(float), rows["ci_upper"].to_numpy(float)
        has_ci = np.isfinite(lo) & np.isfinite(hi)
        xerr = np.where(has_ci, [est - lo, hi - est], 0.0)
        ax.errorbar(est, y, xerr=np.maximum(xerr, 0.0), fmt="o", color=colour, markersize=4,
                    capsize=2, linewidth=1.2, label=name)
    marks = [(truth_values[p], row[p]) for p in parameters if p in truth_values]
    if marks:
        xs, ys = map(np.asarray, zip(*marks, strict=True))
        ax.plot(xs, ys, linestyle="none", marker="D", color="black", markerfacecolor="none",
                markersize=7, label="truth", zorder=3)
    handles, labels = ax.get_legend_handles_labels()
    for name, colour in failed:
        handles.append(Line2D([], [], linestyle="none", marker="x", color=colour))
        labels.append(f"{name} (fit failed)")
    ax.legend(handles, labels, loc="best", fontsize="small")
    ax.set_yticks(range(len(parameters)), parameters)
    ax.set_ylim(len(parameters) - 0.5, -0.5)  # first parameter on top
    ax.axvline(0.0, color="0.85", linewidth=0.8, zorder=0)
    ax.set_xlabel(f"estimate with {level:.0%} interval")
    ax.set_ylabel("parameter")
    ax.grid(axis="x", color="0.92")
    return ax


# ---- plot_fit -----------------------------------------------------------------------------------
def _running_mean(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing mean over ``window`` steps, NaN (skipped) steps left out."""
    ok = np.isfinite(values)
    sums = np.cumsum(np.where(ok, values, 0.0))
    counts = np.cumsum(ok)
    sums[window:] = sums[window:] - sums[:-window]
    counts[window:] = counts[window:] - counts[:-window]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


def plot_fit(fit: FitResult, *, ax: Axes | None = None, window: int | None = None) -> Axes:
    """The loss trace of a fit: ``fit.loss`` at every optimizer step.

    The y label says what the loss is (per estimator, :data:`LOSS_LABELS`). For the Monte Carlo
    estimators (``mle``, ``cd``, ``pcd``) the recorded loss is a stochastic surrogate, ``mean
    E(data) − mean E(draws)`` with fresh MCMC draws at every step, whose level is not the
    log-likelihood: the plot adds its running mean (same axes, same units) and a note saying
    so; judge convergence by the running mean levelling off. Steps skipped because the loss
    was not finite are gaps. When ``fit.loss`` is empty (θ̂ in closed form, or by Newton
    from the start) the Axes holds a sentence saying so instead of an empty plot. The title
    gives the stages that found θ̂ (``fit.method``): steps taken after the optimizer (Newton)
    are not in the trace.

    Parameters
    ----------
    fit : FitResult
        What :func:`unnorm.fit` returned (or :func:`unnorm.load_fit` read).
    ax : matplotlib Axes, optional
        Where to draw; a new figure by default.
    window : int, optional
        Steps in the running mean of Monte Carlo fits; default ``max(1, len(fit.loss) // 20)``.

    Returns
    -------
    matplotlib.axes.Axes
        One Axes, also for Monte Carlo fits (the running mean shares it).

    Raises
    ------
    TypeError, ValueError
        When ``fit`` is not a FitResult or ``window`` is not a positive int.

    Examples
    --------
    >>> import jax, numpy as np, unnorm as un
    >>> x = np.random.default_rng(0).normal(size=(500, 2))
    >>> fit = un.fit(un.models.gaussian(2), x, "ssm", key=jax.random.key(0),
    ...              progress_bar=False)
    >>> ax = un.plots.plot_fit(fit)
    >>> ax.get_xlabel()
    'optimizer step'
    """
    if not isinstance(fit, FitResult):
        raise TypeError(f"fit must be the FitResult that un.fit returns; got "
                        f"{type(fit).__name__}.")
    if window is not None and (isinstance(window, bool) or not isinstance(window, int)
                               or window < 1):
        raise ValueError(f"window must be a positive int (steps) or None; got {window!r}.")
    loss = np.asarray(fit.loss, dtype=float).ravel()
    name = fit.estimator
    ax = _new_axes(ax, (6.4, 3.6))
    ax.set_title(f"{name}: θ̂ by {fit.method}", fontsize="medium")
    if loss.size == 0:
        ax.text(0.5, 0.5, f"no optimizer steps: θ̂ was found by {fit.method}\n"
                "(fit.loss is empty)", ha="center", va="center", transform=ax.transAxes)
        ax.set_xticks([])
        ax.set_yticks([])
        return ax
    steps = np.arange(1, loss.size + 1)
    label = LOSS_LABELS.get(name, f"{name} loss")
    monte_carlo = name in MONTE_CARLO_ESTIMATORS
    ax.plot(steps, loss, linewidth=0.8, color="C0", alpha=0.6 if monte_carlo else 1.0,
            label="loss at each step")
    if monte_carlo:
        window = window or max(1, loss.size // 20)
        ax.plot(steps, _running_mean(loss, window), linewidth=2.0, color="C1",
                label=f"running mean ({window} steps)")
        ax.text(0.01, 0.01, "Monte Carlo surrogate: fresh MCMC draws at every step; its level "
                "is not the log-likelihood", transform=ax.transAxes, fontsize="x-small",
                va="bottom", ha="left", color="0.3")
        ax.legend(loc="upper right", fontsize="small")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(label)
    return ax


# ---- plot_energy --------------------------------------------------------------------------------
def _draws(samples, model: Model) -> np.ndarray:
    """``samples`` (an array or ``un.sample``'s InferenceData) as ``(n, size)`` rows."""
    size = model.support.size
    if _compat.is_inference_data(samples):
        try:
            draws = samples["posterior"]["x"]
        except KeyError:
            raise ValueError("samples is InferenceData without a posterior variable 'x'; give "
                             "what un.sample returns, or an array of draws "
                             f"(n, {size}).") from None
        arr = np.asarray(draws.values, dtype=float)
        if arr.ndim < 2 or math.prod(arr.shape[2:]) != size:
            raise ValueError(f"samples' posterior 'x' has shape {arr.shape}; the model needs "
                             f"(chain, draw, {', '.join(map(str, model.event_shape))}).")
        return arr.reshape(-1, size)
    arr = model.support.check_data(samples, "samples")
    return arr.reshape(len(arr), size)


def _default_range(model: Model, coordinate: int, points: list[np.ndarray]) -> tuple:
    """The plotted range of one coordinate: the central 99% of the data and draws, widened by
    a tenth each side, within the support; ±3 around 0 when there are none."""
    support = model.support
    values = np.concatenate([p[:, coordinate] for p in points]) if points else np.zeros(0)
    if values.size:
        lo, hi = np.quantile(values, [0.005, 0.995])
        pad = 0.1 * (hi - lo) if hi > lo else max(1.0, abs(lo))
        lo, hi = lo - pad, hi + pad
    else:
        lo, hi = -3.0, 3.0
    if support.kind == "positive":
        lo = max(lo, 0.0)
        hi = hi if hi > 0 else 3.0
    elif support.kind == "interval":
        a = float(np.ravel(support.low)[coordinate])
        b = float(np.ravel(support.high)[coordinate])
        lo, hi = (max(lo, a), min(hi, b)) if values.size else (a, b)
    return float(lo), float(hi)


def _check_bounds(bounds, dims: int) -> list[tuple[float, float]]:
    try:
        pairs = [bounds] if dims == 1 and np.ndim(bounds) == 1 else bounds
        shape = np.shape(pairs) if isinstance(pairs, (Sequence, np.ndarray)) else None
    except ValueError:  # ragged
        shape = None
    if shape != (dims, 2):
        want = "(low, high)" if dims == 1 else "((low0, high0), (low1, high1))"
        raise ValueError(f"bounds must be {want} for a model with {dims} coordinate(s); got "
                         f"{bounds!r}.")
    pairs = [(float(a), float(b)) for a, b in pairs]
    if not all(np.isfinite([a, b]).all() and a < b for a, b in pairs):
        raise ValueError(f"bounds must be finite with low < high; got {bounds!r}.")
    return pairs


def _inside(model: Model, coordinate: int, lo: float, hi: float) -> tuple[float, float]:
    """Pull an open support's boundary in by a hair (the energy may be infinite there)."""
    support = model.support
    eps = 1e-6 * (hi - lo)
    if support.kind == "positive":
        lo = max(lo, eps)
    elif support.kind == "interval":
        lo = max(lo, float(np.ravel(support.low)[coordinate]) + eps)
        hi = min(hi, float(np.ravel(support.high)[coordinate]) - eps)
    return lo, hi


def _energy_on(model: Model, params, points: np.ndarray) -> np.ndarray:
    xs = np.asarray(points, dtype=model.dtype).reshape(len(points), *model.event_shape)
    return np.asarray(energies(model, params, xs), dtype=float)


def _trapezoid(y: np.ndarray, x: np.ndarray) -> float:
    """The trapezoid rule (``numpy.trapezoid`` exists from NumPy 2.0 only)."""
    return float(np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2))


def _density_1d(model: Model, params, lo: float, hi: float, num: int = 4001):
    """The normalized density on a grid wide enough for its tails: the range is widened (for
    real and positive supports) until the density at its ends is below 1e-8 of its peak, then
    ``Z`` is the trapezoid rule on that grid."""
    support = model.support
    width = hi - lo
    for _ in range(12):
        a, b = _inside(model, 0, lo, hi)
        grid = np.linspace(a, b, num)
        energy = _energy_on(model, params, grid[:, None])
        finite = np.isfinite(energy)
        if not finite.any():
            raise ValueError(f"the energy is not finite anywhere on [{a:.4g}, {b:.4g}] at "
                             "params; check the params or give bounds where it is.")
        weights = np.where(finite, np.exp(-(energy - energy[finite].min())), 0.0)
        peak = weights.max()
        grow_lo = support.kind == "real" and weights[0] > 1e-8 * peak
        grow_hi = support.kind in ("real", "positive") and weights[-1] > 1e-8 * peak
        if not (grow_lo or grow_hi):
            break
        lo, hi = lo - width * grow_lo, hi + width * grow_hi
        width *= 2
    else:
        raise ValueError("the density does not vanish within "
                         f"[{lo:.4g}, {hi:.4g}]: is exp(-E) integrable at params?")
    return grid, weights / _trapezoid(weights, grid)


def plot_energy(model: Model, params: Mapping[str, Any] | None = None, data=None, samples=None,
                *, ax: Axes | None = None, bounds=None, grid_size: int = 100,
                bins: int | str = "auto") -> Axes:
    """The model at ``params`` with the data over it: energy contours in 2-D, density in 1-D.

    * **Two coordinates** (continuous support, event size 2): contours of ``E(x; params)`` on
      a ``grid_size × grid_size`` grid (levels between the grid's minimum and the 90%
      quantile of its energies, labelled), the data and the model draws scattered over them.
    * **One coordinate**: the normalized density ``exp(−E(x)) / Z`` over a histogram of the
      data, and the draws as a second (outlined) histogram. ``Z`` is computed by numerical
      quadrature: the trapezoid rule on a grid of 4001 points, widened until the density at its
      ends is below 1e-8 of its peak (real and positive supports; an interval's grid is the
      interval). The drawn curve spans that whole grid (its trapezoid integral is 1); the view
      is limited to ``bounds``.

    Parameters
    ----------
    model : Model
        A model on a continuous support (real, positive, interval) with 1 or 2 coordinates.
    params : dict, optional
        Parameter values (structure of ``model.params``), e.g. ``fit.params``; default
        ``model.params``.
    data : array (n, *event_shape), optional
        Observations, drawn as points (2-D) or a filled histogram (1-D).
    samples : array (n, *event_shape) or InferenceData, optional
        Draws from the model, e.g. :func:`unnorm.sample`'s output (posterior variable ``x``).
    ax : matplotlib Axes, optional
        Where to draw; a new figure by default.
    bounds : optional
        The plotted range, ``(low, high)`` in 1-D, ``((low0, high0), (low1, high1))`` in
        2-D. Default: the central 99% of the data and draws widened by a tenth each side,
        within the support; ±3 around 0 without data or draws (the support's range for an
        interval, up to 3 for a positive support).
    grid_size : int
        Grid points per coordinate of the 2-D contours.
    bins : int or str
        The histograms' bins (numpy's rules, 1-D only).

    Returns
    -------
    matplotlib.axes.Axes

    Raises
    ------
    ValueError
        When the support is discrete or has more than 2 coordinates (naming ``model``), and
        for bad ``params``, ``data``, ``samples``, ``bounds`` or ``grid_size``.
    TypeError
        When ``model`` is not a Model.

    Examples
    --------
    >>> import numpy as np, unnorm as un
    >>> model = un.models.gaussian(1)
    >>> x = np.random.default_rng(0).normal(size=(300, 1))
    >>> ax = un.plots.plot_energy(model, model.params, data=x)
    >>> ax.get_ylabel()
    'density'
    """
    if not isinstance(model, Model):
        raise TypeError(f"model must be an unnorm.Model; got {type(model).__name__}.")
    support = model.support
    if support.is_discrete or support.size > 2:
        raise ValueError(
            f"model: plot_energy draws continuous models (real, positive or interval support) "
            f"with 1 or 2 coordinates; got the support {support!r}, with {support.size} "
            f"coordinate(s). For other models plot the data and un.sample's draws directly.")
    params = model.check_params(model.params if params is None else params, "params")
    if isinstance(grid_size, bool) or not isinstance(grid_size, int) or grid_size < 10:
        raise ValueError(f"grid_size must be an int >= 10; got {grid_size!r}.")
    dims = support.size
    data_rows = None if data is None else support.check_data(data, "data").reshape(-1, dims)
    draw_rows = None if samples is None else _draws(samples, model)
    points = [p for p in (data_rows, draw_rows) if p is not None]
    ranges = (_check_bounds(bounds, dims) if bounds is not None
              else [_default_range(model, i, points) for i in range(dims)])
    labels = [f"x[{','.join(map(str, idx))}]" for idx in np.ndindex(model.event_shape)]
    if dims == 1 and len(model.event_shape) == 1:
        labels = ["x"]
    ax = _new_axes(ax, (5.6, 4.8) if dims == 2 else (6.4, 4.0))

    if dims == 1:
        (lo, hi), = ranges
        grid, density = _density_1d(model, params, lo, hi)
        edges = np.histogram_bin_edges(np.concatenate(points)[:, 0], bins=bins,
                                       range=(lo, hi)) if points else None
        if data_rows is not None:
            ax.hist(data_rows[:, 0], bins=edges, density=True, color="0.8", label="data")
        if draw_rows is not None:
            ax.hist(draw_rows[:, 0], bins=edges, density=True, histtype="step", color="C1",
                    linewidth=1.5, label="model draws")
        ax.plot(grid, density, color="C0", linewidth=2, label="model density")
        ax.set_xlim(lo, hi)
        ax.set_xlabel(labels[0])
        ax.set_ylabel("density")
        ax.legend(loc="best", fontsize="small")
        return ax

    import matplotlib
    from matplotlib.lines import Line2D

    axes_grid = [np.linspace(*_inside(model, i, lo, hi), grid_size)
                 for i, (lo, hi) in enumerate(ranges)]
    g0, g1 = np.meshgrid(*axes_grid, indexing="xy")
    energy = _energy_on(model, params, np.column_stack([g0.ravel(), g1.ravel()]))
    energy = energy.reshape(g0.shape)
    finite = energy[np.isfinite(energy)]
    if finite.size < 2 or finite.min() == finite.max():
        raise ValueError("the energy is constant or not finite on the plotted range at params; "
                         f"give other bounds (got {ranges}).")
    levels = np.linspace(finite.min(), np.quantile(finite, 0.9), 10)[1:]
    contours = ax.contour(g0, g1, np.ma.masked_invalid(energy), levels=levels, cmap="viridis",
                          linewidths=1.0)
    ax.clabel(contours, fontsize=7, fmt="%.3g")
    handles = [Line2D([], [], color=matplotlib.colormaps["viridis"](0.5),
                      label="energy E(x; θ)")]
    if data_rows is not None:
        handles.append(ax.scatter(data_rows[:, 0], data_rows[:, 1], s=6, alpha=0.5,
                                  color="0.3", label="data", linewidths=0))
    if draw_rows is not None:
        handles.append(ax.scatter(draw_rows[:, 0], draw_rows[:, 1], s=6, alpha=0.4,
                                  color="C1", label="model draws", linewidths=0))
    ax.set_xlim(*ranges[0])
    ax.set_ylim(*ranges[1])
    ax.set_xlabel(labels[0])
    ax.set_ylabel(labels[1])
    ax.legend(handles=handles, loc="upper right", fontsize="small", markerscale=2.5)
    return ax
