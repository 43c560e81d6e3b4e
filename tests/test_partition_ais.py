"""Annealed importance sampling, ``un.log_partition(..., method="ais")``, against known log Z.

Statistical checks are z-tests: ``|estimate - truth| < 4 stderr + FLOOR``, with ``stderr`` the
returned delta-method standard error. ``FLOOR`` = 0.01 covers float32 rounding: a log-weight
sums a few hundred increments, each rounded to about 1e-7 relative, and the references are
themselves float32 (the enumerated log Z) or float64 closed forms. Runs are kept short (128
chains, 200-500 temperatures); the stderr bound (< 0.1) checks that they are still informative.
"""

import math
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import unnorm as un

FLOOR = 0.01
FAST = {"num_chains": 128, "num_temperatures": 200, "progress_bar": False}


def assert_close(lz, truth, max_stderr=0.1):
    assert lz.method == "ais"
    assert np.isfinite(lz.estimate)
    assert 0 < lz.stderr < max_stderr, lz
    assert 1 <= lz.ess <= FAST["num_chains"] + 1e-6, lz
    assert abs(lz.estimate - truth) < 4 * lz.stderr + FLOOR, (lz, truth)


def gaussian_truth(precision):
    d = precision.shape[0]
    return 0.5 * d * math.log(2 * math.pi) - 0.5 * np.linalg.slogdet(precision)[1]


def random_precision(d, seed):
    a = np.random.default_rng(seed).normal(size=(d, d))
    return a @ a.T / d + 0.5 * np.eye(d)


PREC_2D = np.array([[2.0, 0.6], [0.6, 1.0]])


# One model object per test model: the compiled annealing is cached per model, and params, keys
# and the base are traced arguments, so the tests below that share a model compile once.
@pytest.fixture(scope="module")
def gauss2():
    return un.models.gaussian(2, mean=jnp.array([1.0, -0.5]), precision=jnp.asarray(PREC_2D))


def test_gaussian_2d(gauss2):
    lz = un.log_partition(gauss2, method="ais", key=jax.random.key(0), **FAST)
    assert_close(lz, gaussian_truth(PREC_2D))


def test_the_pacing_of_the_annealing_changes_no_weight(gauss2, monkeypatch):
    # the compiled calls run a traced number of temperatures (unnorm.pacing): 3 per call runs
    # the same program, the same steps and keys, as the default pacing
    from unnorm import pacing

    paced = un.log_partition(gauss2, method="ais", key=jax.random.key(0), **FAST)
    monkeypatch.setattr(pacing, "next_count",
                        lambda last, remaining, capacity, target=0.5: min(3, remaining))
    threes = un.log_partition(gauss2, method="ais", key=jax.random.key(0), **FAST)
    assert (threes.estimate, threes.stderr) == (paced.estimate, paced.stderr)


@pytest.mark.slow
def test_gaussian_10d_non_identity_precision():
    prec = random_precision(10, seed=3)
    assert not np.allclose(prec, np.diag(np.diag(prec)))
    model = un.models.gaussian(10, mean=jnp.linspace(-1.0, 1.0, 10), precision=jnp.asarray(prec))
    lz = un.log_partition(model, method="ais", key=jax.random.key(1),
                          **{**FAST, "num_temperatures": 500})
    assert_close(lz, gaussian_truth(prec))


def test_params_argument_overrides_model_params(gauss2):
    prec = jnp.array([[3.0, 0.0], [0.0, 0.5]])
    lz = un.log_partition(gauss2, {"mu": jnp.zeros(2), "prec": prec}, method="ais",
                          key=jax.random.key(2), **FAST)
    assert_close(lz, gaussian_truth(np.asarray(prec)))


def test_identical_base_and_target_gives_exact_weights(gauss2):
    # With the base equal to the (normalized) target every weight is exactly 1.
    params = {"mu": jnp.array([0.5, -1.0]), "prec": 4.0 * jnp.eye(2)}
    lz = un.log_partition(gauss2, params, method="ais", key=jax.random.key(0),
                          base_loc=[0.5, -1.0], base_scale=0.5, **FAST)
    assert abs(lz.estimate - gaussian_truth(4.0 * np.eye(2))) < 1e-4
    assert lz.stderr < 1e-4
    assert lz.ess == pytest.approx(FAST["num_chains"])


def gamma_model(a, b):
    def energy(params, x):
        return jnp.sum(-(params["a"] - 1.0) * jnp.log(x) + params["b"] * x)

    return un.Model(energy, params={"a": jnp.array(a), "b": jnp.array(b)},
                    support=un.supports.positive(1))


@pytest.fixture(scope="module")
def gamma():
    return gamma_model(3.0, 2.0)


def test_gamma_on_positive_support(gamma):
    # Z = ∫ x^(a-1) e^(-bx) dx = Γ(a) / b^a; the chains run in u = log x, so this checks the
    # transform and its Jacobian.
    a, b = 3.0, 2.0
    lz = un.log_partition(gamma, method="ais", key=jax.random.key(0), **FAST)
    assert_close(lz, math.lgamma(a) - a * math.log(b))


def test_interval_support():
    # E = x² on [-1, 2]^2: Z = (∫_{-1}^{2} e^(-x²) dx)², a logit transform per coordinate.
    model = un.Model(lambda params, x: jnp.sum(x**2), params={},
                     support=un.supports.interval(-1.0, 2.0, 2))
    one = 0.5 * math.sqrt(math.pi) * (math.erf(2.0) + math.erf(1.0))
    lz = un.log_partition(model, method="ais", key=jax.random.key(0), **FAST)
    assert_close(lz, 2 * math.log(one))


def test_ising_chain_against_exact_enumeration():
    model = un.models.ising_chain(12, coupling=0.5, field=0.1)
    exact = un.log_partition(model, method="exact")
    assert exact.ess is None and exact.stderr == 0.0
    lz = un.log_partition(model, method="ais", key=jax.random.key(0), **FAST)
    assert_close(lz, exact.estimate)


def test_same_key_same_result_different_keys_differ(gauss2):
    first = un.log_partition(gauss2, method="ais", key=jax.random.key(7), **FAST)
    again = un.log_partition(gauss2, method="ais", key=jax.random.key(7), **FAST)
    other = un.log_partition(gauss2, method="ais", key=jax.random.key(8), **FAST)
    legacy = un.log_partition(gauss2, method="ais", key=jax.random.PRNGKey(7), **FAST)
    assert first == again
    assert legacy == first  # a legacy uint32 key is the same key
    assert other.estimate != first.estimate


def test_nan_chains_are_dropped_with_a_warning():
    # The energy is NaN for x[0] > 1: chains starting there (16% of the base draws) end
    # with a NaN log-weight; they are dropped, and the estimate stays finite.
    def energy(params, x):
        return 0.5 * jnp.sum(x**2) + jnp.where(x[0] > 1.0, jnp.nan, 0.0)

    model = un.Model(energy, params={}, support=un.supports.real(2))
    with pytest.warns(RuntimeWarning, match=r"\d+ of 128 chains ended with a NaN .* dropped"):
        lz = un.log_partition(model, method="ais", key=jax.random.key(0), **FAST)
    assert np.isfinite(lz.estimate) and np.isfinite(lz.stderr)


def test_energy_nowhere_finite_raises_before_annealing():
    model = un.Model(lambda params, x: jnp.sum(x) * jnp.nan, params={},
                     support=un.supports.real(2))
    with pytest.raises(ValueError, match=r"energy is not finite at any of the 128 starting"):
        un.log_partition(model, method="ais", key=jax.random.key(0), **FAST)


def test_progress_bar_does_not_change_the_result(gamma):
    quiet = un.log_partition(gamma, method="ais", key=jax.random.key(0), **FAST)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tqdm's notebook / terminal notices
        shown = un.log_partition(gamma, method="ais", key=jax.random.key(0),
                                 **{**FAST, "progress_bar": True})
    assert shown == quiet


# ---- bad input ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def model():
    return un.models.gaussian(2)


def test_missing_key(model):
    with pytest.raises(ValueError, match=r"method='ais' .* needs key=.*got key=None"):
        un.log_partition(model, method="ais")


def test_key_of_wrong_type(model):
    with pytest.raises(TypeError, match=r"key must be a JAX PRNG key"):
        un.log_partition(model, method="ais", key=0)


@pytest.mark.parametrize("argument, value, minimum", [
    ("num_chains", 0, 1), ("num_temperatures", 1, 2), ("num_mcmc_steps", 0, 1),
])
def test_counts_out_of_range(model, argument, value, minimum):
    with pytest.raises(ValueError, match=f"{argument} must be >= {minimum}; got {value}"):
        un.log_partition(model, method="ais", key=jax.random.key(0), **{argument: value})


def test_count_not_an_integer(model):
    with pytest.raises(TypeError, match=r"num_chains must be an integer >= 1; got 2.5"):
        un.log_partition(model, method="ais", key=jax.random.key(0), num_chains=2.5)


@pytest.mark.parametrize("value", [0.0, -0.1, float("inf")])
def test_step_size_not_positive(model, value):
    with pytest.raises(ValueError, match=r"step_size must be a finite number > 0"):
        un.log_partition(model, method="ais", key=jax.random.key(0), step_size=value)


def test_target_accept_out_of_range(model):
    with pytest.raises(ValueError, match=r"target_accept must lie strictly between 0 and 1"):
        un.log_partition(model, method="ais", key=jax.random.key(0), target_accept=1.5)


def test_adapt_step_size_not_bool(model):
    with pytest.raises(TypeError, match=r"adapt_step_size must be True or False"):
        un.log_partition(model, method="ais", key=jax.random.key(0), adapt_step_size="yes")


@pytest.mark.parametrize("value", [0.0, -1.0, [1.0, 0.0]])
def test_base_scale_not_positive(model, value):
    with pytest.raises(ValueError, match=r"base_scale must be finite and > 0 everywhere"):
        un.log_partition(model, method="ais", key=jax.random.key(0), base_scale=value)


def test_base_scale_wrong_shape(model):
    with pytest.raises(ValueError, match=r"base_scale has shape \(3,\); give a scalar or an "
                                         r"array of the event shape \(2,\)"):
        un.log_partition(model, method="ais", key=jax.random.key(0), base_scale=jnp.ones(3))


def test_base_loc_not_finite(model):
    with pytest.raises(ValueError, match=r"base_loc must be finite"):
        un.log_partition(model, method="ais", key=jax.random.key(0), base_loc=[0.0, np.nan])


@pytest.mark.parametrize("argument", ["step_size", "base_loc", "base_scale"])
def test_continuous_only_options_on_spin_support(argument):
    spin = un.models.ising_chain(4)
    with pytest.raises(ValueError, match=f"{argument} does not apply to the spin"):
        un.log_partition(spin, method="ais", key=jax.random.key(0), **{argument: 0.5})


def test_unknown_method_lists_exact_and_ais(model):
    with pytest.raises(ValueError, match=r"unknown method 'laplace'; choose one of 'exact', "
                                         r"'ais'"):
        un.log_partition(model, method="laplace", key=jax.random.key(0))


def test_exact_on_continuous_support_points_to_ais(model):
    with pytest.raises(ValueError, match=r"cannot be enumerated. Use method='ais'"):
        un.log_partition(model, method="exact")
