"""un.compare: several estimators on one model and data set, one tidy table."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import unnorm as un

KEY = jax.random.key(0)
MODEL = un.models.gaussian(2)
TRUTH = {"mu": np.array([0.5, -1.0]), "prec": np.array([[2.0, 0.6], [0.6, 1.0]])}
DATA = np.random.default_rng(1).multivariate_normal(TRUTH["mu"], np.linalg.inv(TRUTH["prec"]),
                                                    size=2000)


def test_table_matches_the_individual_fits_and_the_truth():
    estimators = ["sm", "ssm", un.estimators.DSM(0.05, control_variate=True)]
    table, fits = un.compare(MODEL, DATA, estimators, key=KEY, truth=TRUTH, progress_bar=False,
                             return_fits=True)
    assert list(table.columns) == ["estimator", "parameter", "estimate", "std_err", "ci_lower",
                                   "ci_upper", "time_s", "error"]
    assert list(fits) == ["sm", "ssm", "dsm"]
    assert table.groupby("estimator", sort=False).size().to_dict() == {"sm": 6, "ssm": 6,
                                                                        "dsm": 6}
    sm = table[table.estimator == "sm"].set_index("parameter")
    alone = un.fit(MODEL, DATA, "sm", key=KEY, progress_bar=False).summary()
    np.testing.assert_allclose(sm["estimate"], alone["estimate"], rtol=1e-6)
    np.testing.assert_allclose(sm["std_err"], alone["std_err"], rtol=1e-6)
    truth_flat = np.concatenate([TRUTH["mu"], TRUTH["prec"].ravel()])
    np.testing.assert_allclose(sm["error"], sm["estimate"] - truth_flat, rtol=1e-6, atol=1e-7)
    # every consistent estimator within 4 SE of the truth (DSM at small sigma: bias O(σ²))
    z = table["error"] / table["std_err"]
    assert np.all(np.abs(z) < 4), table
    assert np.all(table["time_s"] > 0)
    assert np.all(table["ci_lower"] < table["estimate"]) and np.all(
        table["estimate"] < table["ci_upper"])


def test_default_estimators_follow_the_support():
    assert un.compare.__module__ == "unnorm.comparison"
    from unnorm.comparison import default_estimators

    assert default_estimators(MODEL) == ["sm", "dsm", "ssm", "nce", "ksd", "mle", "cd", "pcd"]
    assert default_estimators(un.models.ising(J=jnp.ones(3), h=jnp.zeros(3))) == [
        "nce", "mle", "cd", "pcd", "pl", "rm", "mpf"]
    positive = un.Model(lambda p, x: p["rate"] * jnp.sum(x), params={"rate": 1.0},
                        constraints={"rate": un.constraints.positive},
                        support=un.supports.positive(1))
    # KSD's Stein operator needs a density vanishing at the boundary: not on positive supports
    assert default_estimators(positive) == ["sm", "ssm", "nce", "mle", "cd", "pcd"]


def test_the_same_estimator_twice_is_labelled_by_its_options():
    # DSM(0.05) on MODEL and DATA is also fitted in the first test: its compiled code is shared
    table = un.compare(MODEL, DATA, [un.estimators.DSM(0.05), un.estimators.DSM(0.3)],
                       key=KEY, progress_bar=False)
    assert list(table.estimator.unique()) == ["dsm(sigma=0.05, control_variate=True)",
                                              "dsm(sigma=0.3, control_variate=True)"]
    assert "error" not in table.columns


@pytest.mark.parametrize("kwargs, error, match", [
    ({"estimators": []}, ValueError, "estimators is empty"),
    ({"estimators": "sm"}, TypeError, "estimators must be a list"),
    ({"estimators": ["sm", "nope"]}, ValueError, r"unknown estimators\[1\] 'nope'"),
    ({"estimators": ["sm", "pl"]}, ValueError, "needs a binary or spin support"),
    ({"estimators": ["sm", "sm"]}, ValueError, "the same estimator twice"),
    ({"truth": {"mu": np.zeros(2)}}, ValueError, r"truth must have the model's parameter names"),
    ({"truth": {"mu": np.zeros(2), "prec": -np.eye(2)}}, ValueError,
     r"truth\['prec'\] violates its constraint"),
])
def test_bad_arguments_fail_before_any_fit(kwargs, error, match):
    kwargs = {"estimators": ["sm"], **kwargs}
    with pytest.raises(error, match=match):
        un.compare(MODEL, DATA, key=KEY, progress_bar=False, **kwargs)


def test_fit_result_has_no_chains_for_sample_free_estimators():
    # the shape of the first test's fit: no new compilation
    assert un.fit(MODEL, DATA, "sm", key=KEY, progress_bar=False).chains is None


def test_compare_without_a_list_says_which_estimators_it_runs(capsys):
    model = un.models.ising_chain(3, coupling=0.2)
    data = np.asarray(model.support.enumerate())[np.random.default_rng(0).integers(0, 8, 200)]
    names = un.comparison.default_estimators(model)
    # the names alone: run none of the fits
    with pytest.raises(TypeError, match="key must be"):
        un.compare(model, data, key="not a key", progress_bar=False)
    assert capsys.readouterr().err.strip() == (
        f"un.compare: fitting {len(names)} estimators that apply to the support "
        f"{model.support!r}: {', '.join(names)}")
