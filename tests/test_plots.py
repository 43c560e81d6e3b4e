"""un.plots: the forest plot of un.compare, the loss trace of a fit, the energy of a model."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
import pandas as pd
import pytest

import unnorm as un
from unnorm import _compat

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

TRUTH = {"mu": np.array([0.5, -1.0]), "prec": np.array([[2.0, 0.6], [0.6, 1.0]])}
DATA = np.random.default_rng(1).multivariate_normal(TRUTH["mu"], np.linalg.inv(TRUTH["prec"]),
                                                    size=500)
SHOWN = ["mu[0]", "mu[1]", "prec[0,0]", "prec[0,1]", "prec[1,1]"]


@pytest.fixture(scope="module")
def compared():
    """un.compare's table (with the error column) and the two fits, shared by the tests."""
    table, fits = un.compare(un.models.gaussian(2), DATA, ["sm", "ssm"], key=jax.random.key(0),
                             truth=TRUTH, progress_bar=False, return_fits=True)
    return table, fits


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _errorbars(ax) -> dict:
    """Estimator label -> (x of the markers, y, interval segments) of each errorbar."""
    out = {}
    for container in ax.containers:
        data_line, _, (bars,) = container.lines
        out[container.get_label()] = (np.asarray(data_line.get_xdata()),
                                      np.asarray(data_line.get_ydata()), bars.get_segments())
    return out


def _legend_texts(ax) -> list[str]:
    return [t.get_text() for t in ax.get_legend().get_texts()]


def _truth_line(ax):
    (line,) = [line for line in ax.get_lines() if line.get_label() == "truth"]
    return np.asarray(line.get_xdata()), np.asarray(line.get_ydata())


# ---- plot_compare -------------------------------------------------------------------------------
def test_forest_plot_draws_each_estimate_with_its_interval_and_the_truth(compared):
    table, _ = compared
    ax = un.plots.plot_compare(table)
    assert isinstance(ax, matplotlib.axes.Axes)
    # the symmetric entry prec[1,0] equals prec[0,1] for both estimators: shown once
    assert [t.get_text() for t in ax.get_yticklabels()] == SHOWN
    bars = _errorbars(ax)
    assert list(bars) == ["sm", "ssm"]
    for name, (x, y, segments) in bars.items():
        rows = table[table.estimator == name].set_index("parameter").loc[SHOWN]
        np.testing.assert_allclose(x, rows["estimate"])
        # one row per parameter, the estimators offset within it without overlapping
        np.testing.assert_array_equal(np.round(y), np.arange(len(SHOWN)))
        lows, highs = [s[0][0] for s in segments], [s[1][0] for s in segments]
        np.testing.assert_allclose(lows, rows["ci_lower"], rtol=1e-6)
        np.testing.assert_allclose(highs, rows["ci_upper"], rtol=1e-6)
    assert not np.allclose(bars["sm"][1], bars["ssm"][1])
    # the truth from the error column (estimate − error), at the row of its parameter
    x, y = _truth_line(ax)
    truth_flat = {"mu[0]": 0.5, "mu[1]": -1.0, "prec[0,0]": 2.0, "prec[0,1]": 0.6,
                  "prec[1,1]": 1.0}
    np.testing.assert_allclose(x, [truth_flat[p] for p in SHOWN], atol=1e-5)
    np.testing.assert_array_equal(y, np.arange(len(SHOWN)))
    assert _legend_texts(ax) == ["truth", "sm", "ssm"]
    assert "95% interval" in ax.get_xlabel() and ax.get_ylabel() == "parameter"


def test_the_truth_argument_gives_the_same_marks_without_an_error_column(compared):
    table, _ = compared
    fig, ax = plt.subplots()
    out = un.plots.plot_compare(table.drop(columns="error"), truth=TRUTH, ax=ax, level=0.9)
    assert out is ax
    x, _ = _truth_line(ax)
    np.testing.assert_allclose(x, [0.5, -1.0, 2.0, 0.6, 1.0])
    assert "90% interval" in ax.get_xlabel()
    # neither truth nor an error column: no truth mark, no legend entry
    ax = un.plots.plot_compare(table.drop(columns="error"))
    assert "truth" not in _legend_texts(ax)


def test_failed_rows_are_skipped_and_unequal_mirror_entries_both_shown(compared):
    table, _ = compared
    table = table.copy()
    ssm = table.estimator == "ssm"
    table.loc[ssm & (table.parameter == "mu[0]"), ["estimate", "ci_lower", "ci_upper"]] = np.nan
    # a matrix parameter that is not symmetric: both entries stay
    table.loc[ssm & (table.parameter == "prec[1,0]"), "estimate"] += 0.1
    failed = table[table.estimator == "sm"].assign(estimator="cd", estimate=np.nan,
                                                   ci_lower=np.nan, ci_upper=np.nan)
    table = pd.concat([table, failed.assign(error_message="FitError: diverged")])
    ax = un.plots.plot_compare(table)
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert labels == ["mu[0]", "mu[1]", "prec[0,0]", "prec[0,1]", "prec[1,0]", "prec[1,1]"]
    bars = _errorbars(ax)
    assert list(bars) == ["sm", "ssm"]
    assert len(bars["sm"][0]) == 6 and len(bars["ssm"][0]) == 5
    assert np.all(np.isfinite(bars["ssm"][0]))
    assert "cd (fit failed)" in _legend_texts(ax)


@pytest.mark.parametrize("kwargs, error, match", [
    ({"table": "not a table"}, TypeError, "table must be the pandas DataFrame"),
    ({"table": pd.DataFrame({"estimator": ["sm"]})}, ValueError, r"table lacks the columns"),
    ({"truth": {"sigma": 1.0}}, ValueError, r"truth has the parameters \['sigma'\]"),
    ({"truth": [0.5, -1.0]}, TypeError, "truth must be a dict"),
    ({"level": 95}, ValueError, r"level must be a number in \(0, 1\)"),
    ({"ax": "axes"}, TypeError, "ax must be a matplotlib Axes"),
])
def test_plot_compare_rejects_bad_input(compared, kwargs, error, match):
    kwargs = {"table": compared[0], **kwargs}
    with pytest.raises(error, match=match):
        un.plots.plot_compare(**kwargs)


def test_plot_compare_refuses_a_table_of_failed_fits(compared):
    table = compared[0].assign(estimate=np.nan)
    with pytest.raises(ValueError, match="no finite estimate"):
        un.plots.plot_compare(table)


# ---- plot_fit -----------------------------------------------------------------------------------
def test_loss_trace_is_labelled_by_the_estimator(compared):
    fit = compared[1]["ssm"]
    assert fit.loss.size > 0
    ax = un.plots.plot_fit(fit)
    (line,) = ax.get_lines()
    np.testing.assert_allclose(line.get_ydata(), fit.loss)
    np.testing.assert_array_equal(line.get_xdata(), np.arange(1, fit.loss.size + 1))
    assert "sliced score-matching" in ax.get_ylabel()
    assert ax.get_xlabel() == "optimizer step"
    assert fit.method in ax.get_title()


def test_a_monte_carlo_loss_gets_its_running_mean_and_a_note(compared):
    # the trace of a PCD fit, made from the SSM fit's: what is drawn depends on the estimator's
    # name and the loss values only (a real PCD fit would cost this file seconds)
    noise = np.random.default_rng(0).normal(size=compared[1]["ssm"].loss.size)
    fit = dataclasses.replace(compared[1]["ssm"], estimator="pcd",
                              loss=compared[1]["ssm"].loss + noise)
    fit.loss[3] = np.nan  # a skipped step
    ax = un.plots.plot_fit(fit, window=10)
    trace, mean = ax.get_lines()
    assert "surrogate" in ax.get_ylabel()
    assert _legend_texts(ax) == ["loss at each step", "running mean (10 steps)"]
    # the trailing mean over the finite steps of the window
    y = np.asarray(mean.get_ydata())
    np.testing.assert_allclose(y[50], np.mean(fit.loss[41:51]))
    np.testing.assert_allclose(y[12], np.mean(np.delete(fit.loss[3:13], 0)))
    assert np.all(np.isfinite(y))
    assert any("surrogate" in t.get_text() for t in ax.texts)


def test_an_empty_loss_says_so(compared):
    fit = dataclasses.replace(compared[1]["sm"], loss=np.zeros(0), method="closed form")
    ax = un.plots.plot_fit(fit)
    assert ax.get_lines() == []
    (text,) = ax.texts
    assert "no optimizer steps" in text.get_text() and "closed form" in text.get_text()


@pytest.mark.parametrize("kwargs, error, match", [
    ({"fit": {"mu": 0.0}}, TypeError, "fit must be the FitResult"),
    ({"window": 0}, ValueError, "window must be a positive int"),
])
def test_plot_fit_rejects_bad_input(compared, kwargs, error, match):
    kwargs = {"fit": compared[1]["sm"], **kwargs}
    with pytest.raises(error, match=match):
        un.plots.plot_fit(**kwargs)


# ---- plot_energy --------------------------------------------------------------------------------
def test_energy_contours_with_data_and_draws_in_2d(compared):
    fit = compared[1]["sm"]
    model = un.models.gaussian(2)
    draws = np.random.default_rng(2).multivariate_normal(
        fit.params["mu"], np.linalg.inv(fit.params["prec"]), size=(2, 100))
    idata = _compat.to_inference_data({"x": draws})  # the layout un.sample returns
    ax = un.plots.plot_energy(model, fit.params, data=DATA, samples=idata)
    contours = [c for c in ax.collections if isinstance(c, matplotlib.contour.ContourSet)]
    assert len(contours) == 1 and len(contours[0].levels) > 3
    scatters = [c for c in ax.collections if isinstance(c, matplotlib.collections.PathCollection)
                and not isinstance(c, matplotlib.contour.ContourSet)]
    np.testing.assert_allclose(scatters[0].get_offsets(), DATA)
    np.testing.assert_allclose(scatters[1].get_offsets(), draws.reshape(-1, 2))
    assert _legend_texts(ax) == ["energy E(x; θ)", "data", "model draws"]
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("x[0]", "x[1]")
    # the view covers the data's central part
    lo, hi = ax.get_xlim()
    assert lo < np.quantile(DATA[:, 0], 0.01) and hi > np.quantile(DATA[:, 0], 0.99)
    # an (n, 2) array of draws does as well, and bounds set the view
    ax = un.plots.plot_energy(model, fit.params, samples=draws.reshape(-1, 2),
                              bounds=((-2, 3), (-4, 2)))
    assert ax.get_xlim() == (-2, 3) and ax.get_ylim() == (-4, 2)
    assert _legend_texts(ax) == ["energy E(x; θ)", "model draws"]


def test_1d_density_is_normalized_by_quadrature():
    model = un.models.gaussian(1)
    params = {"mu": np.array([1.0]), "prec": np.array([[0.25]])}
    rng = np.random.default_rng(3)
    data, draws = rng.normal(1.0, 2.0, size=(300, 1)), rng.normal(1.0, 2.0, size=(200, 1))
    ax = un.plots.plot_energy(model, params, data=data, samples=draws)
    (line,) = ax.get_lines()
    x, y = np.asarray(line.get_xdata()), np.asarray(line.get_ydata())
    np.testing.assert_allclose(np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2), 1.0, rtol=1e-6)
    # the normalizing constant is right, not only self-consistent: N(1, 2²)
    normal = np.exp(-0.5 * ((x - 1.0) / 2.0) ** 2) / (2.0 * np.sqrt(2 * np.pi))
    np.testing.assert_allclose(y, normal, atol=1e-5)
    assert len(ax.patches) > 10  # the histograms' bars
    assert _legend_texts(ax) == ["data", "model draws", "model density"]
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("x", "density")


def test_1d_density_on_a_positive_support_grows_its_grid_to_the_tail():
    # exponential with rate 0.5; the view (0, 3) holds only half the mass
    model = un.Model(lambda p, x: p["rate"] * jnp.sum(x), params={"rate": 0.5},
                     constraints={"rate": un.constraints.positive},
                     support=un.supports.positive(1))
    ax = un.plots.plot_energy(model, bounds=(0.0, 3.0))
    (line,) = ax.get_lines()
    x, y = np.asarray(line.get_xdata()), np.asarray(line.get_ydata())
    assert x[0] > 0 and x[-1] > 30
    np.testing.assert_allclose(y, 0.5 * np.exp(-0.5 * x), rtol=1e-2)
    assert ax.get_xlim() == (0.0, 3.0)


def _ising():
    return un.models.ising(J=jnp.ones(3), h=jnp.zeros(3))


@pytest.mark.parametrize("kwargs, error, match", [
    ({"model": "gaussian"}, TypeError, "model must be an unnorm.Model"),
    ({"model": _ising()}, ValueError,
     r"model: plot_energy draws continuous models .* got the support spin\(d=\(3,\)\)"),
    ({"model": un.models.gaussian(3)}, ValueError, r"real\(d=\(3,\)\), with 3 coordinate"),
    ({"data": np.zeros((5, 3))}, ValueError, r"data has shape \(5, 3\)"),
    ({"samples": np.zeros((5, 1))}, ValueError, r"samples has shape \(5, 1\)"),
    ({"samples": _compat.to_inference_data({"y": np.zeros((1, 5, 2))})}, ValueError,
     "without a posterior variable 'x'"),
    ({"bounds": (0, 1)}, ValueError, r"bounds must be \(\(low0, high0\), \(low1, high1\)\)"),
    ({"bounds": ((0, 1), (2, 2))}, ValueError, "low < high"),
    ({"grid_size": 3}, ValueError, "grid_size must be an int >= 10"),
    ({"params": {"mu": np.zeros(2)}}, ValueError, "params must have the model's parameter"),
])
def test_plot_energy_rejects_bad_input(kwargs, error, match):
    kwargs = {"model": un.models.gaussian(2), **kwargs}
    with pytest.raises(error, match=match):
        un.plots.plot_energy(**kwargs)
