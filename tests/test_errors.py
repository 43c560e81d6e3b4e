"""Bad input: every path raises a clear exception naming the argument; NaN never leaks out."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import unnorm as un
from unnorm import constraints

KEY = jax.random.key(0)
FAST = {"num_chains": 2, "num_warmup": 20, "num_samples": 20, "progress_bar": False,
        "warn": False}


def quadratic(params, x):
    return 0.5 * jnp.sum((x - params["mu"]) ** 2)


@pytest.fixture(scope="module")
def model():
    return un.Model(quadratic, params={"mu": jnp.zeros(2)}, support=un.supports.real(2))


@pytest.fixture(scope="module")
def spin_model():
    return un.models.ising_chain(4)


# ---- declaring a model -------------------------------------------------------------------------

def test_energy_not_scalar():
    with pytest.raises(ValueError, match=r"must return a scalar .* returned shape \(2,\)"):
        un.Model(lambda p, x: x * p["a"], params={"a": jnp.ones(2)}, support=un.supports.real(2))


def test_energy_that_fails_to_trace_names_the_shape():
    with pytest.raises(ValueError, match=r"energy\(params, x\) failed for x of shape \(3,\)"):
        un.Model(lambda p, x: p["w"] @ x, params={"w": jnp.ones((2, 2))},
                 support=un.supports.real(3))


@pytest.mark.parametrize("bad", [jnp.nan, jnp.inf, -jnp.inf])
def test_params_with_nan_or_inf(bad):
    with pytest.raises(ValueError, match=r"params\['mu'\] contains NaN or infinite"):
        un.Model(quadratic, params={"mu": jnp.array([0.0, bad])}, support=un.supports.real(2))


def test_initial_value_violating_its_constraint():
    with pytest.raises(ValueError, match=r"initial value of params\['prec'\] violates"):
        un.Model(lambda p, x: 0.5 * x @ p["prec"] @ x, params={"prec": -jnp.eye(2)},
                 constraints={"prec": constraints.positive_definite},
                 support=un.supports.real(2))


def test_constraint_for_unknown_parameter():
    with pytest.raises(ValueError, match=r"not in params"):
        un.Model(quadratic, params={"mu": jnp.zeros(2)},
                 constraints={"sigma": constraints.positive}, support=un.supports.real(2))


def test_constraint_that_is_not_a_constraint():
    with pytest.raises(TypeError, match=r"constraints\['mu'\] must be a constraint"):
        un.Model(quadratic, params={"mu": jnp.zeros(2)}, constraints={"mu": "positive"},
                 support=un.supports.real(2))


def test_missing_or_wrong_support():
    with pytest.raises(TypeError, match="support must be one of"):
        un.Model(quadratic, params={"mu": jnp.zeros(2)})
    with pytest.raises(TypeError, match="support must be one of"):
        un.Model(quadratic, params={"mu": jnp.zeros(2)}, support=2)


def test_energy_not_callable():
    with pytest.raises(TypeError, match="energy must be a callable"):
        un.Model("not a function", params={}, support=un.supports.real(2))


# ---- data ----------------------------------------------------------------------------------------

def test_data_shape_not_matching_support():
    with pytest.raises(ValueError, match=r"data has shape \(10, 3\).*needs shape \(n, 2\)"):
        un.supports.real(2).check_data(np.zeros((10, 3)))


def test_data_with_nan_names_the_row():
    data = np.zeros((10, 2))
    data[7, 1] = np.nan
    with pytest.raises(ValueError, match=r"NaN or infinite value\(s\) \(first at row 7\)"):
        un.supports.real(2).check_data(data)


def test_binary_data_outside_zero_one():
    data = np.zeros((5, 3))
    data[2, 0] = -1.0
    with pytest.raises(ValueError, match=r"outside \{0, 1\}.*row 2.*un.supports.spin"):
        un.supports.binary(3).check_data(data)


def test_positive_data_with_zero():
    with pytest.raises(ValueError, match=r"<= 0"):
        un.supports.positive(1).check_data(np.array([[1.0], [0.0]]))


# ---- sampling ------------------------------------------------------------------------------------

def test_unknown_sampler_lists_valid_names(model):
    with pytest.raises(ValueError, match=r"unknown sampler 'nut'.*'nuts'.*'gibbs'"):
        un.sample(model, model.params, key=KEY, sampler="nut", **FAST)


@pytest.mark.parametrize("argument", ["num_chains", "num_samples"])
@pytest.mark.parametrize("value", [0, -3])
def test_counts_below_one(model, argument, value):
    with pytest.raises(ValueError, match=f"{argument} must be >= 1; got {value}"):
        un.sample(model, model.params, key=KEY, **{**FAST, argument: value})


def test_counts_that_are_not_integers(model):
    with pytest.raises(TypeError, match="num_samples must be an integer"):
        un.sample(model, model.params, key=KEY, **{**FAST, "num_samples": 10.5})


@pytest.mark.parametrize("step_size", [0.0, -0.1, float("inf")])
def test_step_size_not_positive(model, step_size):
    with pytest.raises(ValueError, match="step_size must be a finite number > 0"):
        un.sample(model, model.params, key=KEY, sampler="mala", step_size=step_size, **FAST)


@pytest.mark.parametrize("key", [0, np.array([1, 2]), jnp.zeros(2), "seed"])
def test_key_that_is_not_a_prng_key(model, key):
    with pytest.raises(TypeError, match=r"key must be a JAX PRNG key such as jax.random.key"):
        un.sample(model, model.params, key=key, **FAST)


def test_legacy_prng_key_is_accepted(model):
    idata = un.sample(model, model.params, key=jax.random.PRNGKey(0), sampler="rwmh", **FAST)
    assert idata.posterior["x"].shape == (2, 20, 2)


@pytest.mark.parametrize("sampler", ["nuts", "hmc", "mala", "langevin", "rwmh"])
def test_continuous_sampler_on_spin_support(spin_model, sampler):
    with pytest.raises(ValueError, match=r"needs a continuous support.*use sampler='gibbs'"):
        un.sample(spin_model, spin_model.params, key=KEY, sampler=sampler, **FAST)


def test_gibbs_on_continuous_support(model):
    with pytest.raises(ValueError, match=r"'gibbs' works on binary and spin supports only"):
        un.sample(model, model.params, key=KEY, sampler="gibbs", **FAST)


def test_energy_not_finite_at_initial_state_lists_parameter_values():
    model = un.Model(lambda p, x: jnp.sum(p["scale"] * jnp.log(x)), params={"scale": jnp.ones(2)},
                     support=un.supports.real(2))
    with pytest.raises(ValueError, match=r"(?s)Initial evaluation failed.*energy.*"
                                         r"Parameter values:.*scale = \[1\., 1\.\]"):
        un.sample(model, model.params, key=KEY, init=jnp.array([-1.0, 1.0]), **FAST)


def test_gradient_not_finite_at_initial_state():
    # sqrt(|x|) is finite at 0 but its gradient is not
    model = un.Model(lambda p, x: p["a"] * jnp.sum(jnp.sqrt(jnp.abs(x))), params={"a": 1.0},
                     support=un.supports.real(2))
    with pytest.raises(ValueError, match=r"Initial evaluation failed: the gradient"):
        un.sample(model, model.params, key=KEY, sampler="mala", init=jnp.zeros(2), **FAST)


def test_params_with_nan_at_sample_time(model):
    with pytest.raises(ValueError, match=r"params\['mu'\] contains NaN"):
        un.sample(model, {"mu": jnp.array([jnp.nan, 0.0])}, key=KEY, **FAST)


def test_params_with_wrong_names_or_shapes(model):
    with pytest.raises(ValueError, match=r"missing \['mu'\], unexpected \['nu'\]"):
        un.sample(model, {"nu": jnp.zeros(2)}, key=KEY, **FAST)
    with pytest.raises(ValueError, match=r"params\['mu'\] has shape \(3,\); the model expects"):
        un.sample(model, {"mu": jnp.zeros(3)}, key=KEY, **FAST)


def test_init_of_wrong_shape_or_outside_support(model):
    with pytest.raises(ValueError, match=r"init has shape \(3,\)"):
        un.sample(model, model.params, key=KEY, init=jnp.zeros(3), **FAST)
    positive = un.Model(lambda p, x: jnp.sum(x) * p["rate"], params={"rate": 1.0},
                        support=un.supports.positive(1))
    with pytest.raises(ValueError, match=r"init has \d+ value\(s\) <= 0, outside the positive"):
        un.sample(positive, positive.params, key=KEY, init=jnp.array([-1.0]), **FAST)


def test_unknown_sampler_option(model):
    with pytest.raises(TypeError, match=r"does not take option\(s\) \['max_tree_depth'\]"):
        un.sample(model, model.params, key=KEY, sampler="mala", max_tree_depth=5, **FAST)


def test_target_accept_outside_unit_interval(model):
    with pytest.raises(ValueError, match="target_accept must lie strictly between 0 and 1"):
        un.sample(model, model.params, key=KEY, sampler="mala", target_accept=1.5, **FAST)


def test_model_that_is_not_a_model():
    with pytest.raises(TypeError, match="model must be an unnorm.Model"):
        un.sample(quadratic, {"mu": jnp.zeros(2)}, key=KEY, **FAST)


# ---- NaN mid-run is rejected and counted, never returned ----------------------------------------

@pytest.mark.parametrize("sampler", ["mala", "langevin", "rwmh", "nuts",
                                     pytest.param("hmc", marks=pytest.mark.slow)])
def test_nan_energy_mid_run_is_rejected_and_counted(sampler):
    # Finite on x < 1.5, NaN beyond, and the mode on that edge: proposals keep crossing, and
    # every crossing must be rejected and counted as divergent.
    # sqrt of a negative number: energy and gradient are both NaN past the edge, as in a user's
    # energy that takes log or sqrt of a quantity that should stay positive.
    def energy(params, x):
        return 0.5 * jnp.sum((x - params["mu"]) ** 2) + 0.0 * jnp.sum(jnp.sqrt(1.5 - x))

    model = un.Model(energy, params={"mu": jnp.full(2, 1.5)}, support=un.supports.real(2))
    # HMC with an adapted step size and a fixed trajectory length would take ever more leapfrog
    # steps as divergences shrink the step; a fixed number of steps keeps this test short.
    # The local samplers get a fixed step of 1.0 so that crossings stay frequent after warmup.
    options = {"hmc": {"num_steps": 8}, "nuts": {}}.get(
        sampler, {"step_size": 1.0, "adapt_step_size": False})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", un.ConvergenceWarning)
        idata = un.sample(model, model.params, key=jax.random.key(3), sampler=sampler,
                          num_chains=2, num_warmup=100, num_samples=200,
                          init=jnp.zeros(2), progress_bar=False, **options)
    draws = np.asarray(idata.posterior["x"])
    assert np.all(np.isfinite(draws)) and np.all(draws < 1.5)
    assert np.all(np.isfinite(np.asarray(idata.sample_stats["lp"])))
    assert int(np.sum(idata.sample_stats["diverging"])) > 0


def test_nan_energy_mid_run_in_gibbs_keeps_the_site():
    # NaN whenever all four spins are +1: that configuration can never be entered.
    def energy(params, x):
        return jnp.where(jnp.all(x > 0), jnp.nan, -params["J"] * jnp.sum(x[:-1] * x[1:]))

    model = un.Model(energy, params={"J": jnp.asarray(0.3)}, support=un.supports.spin(4))
    idata = un.sample(model, model.params, key=KEY, sampler="gibbs", num_chains=2,
                      num_warmup=10, num_samples=300, init=-jnp.ones(4), progress_bar=False,
                      warn=False)
    draws = np.asarray(idata.posterior["x"]).reshape(-1, 4)
    assert not np.any(np.all(draws > 0, axis=1))
    assert int(np.sum(idata.sample_stats["diverging"])) > 0


# ---- log Z ---------------------------------------------------------------------------------------

def test_log_partition_on_continuous_support_points_to_ais(model):
    with pytest.raises(ValueError, match=r"cannot be enumerated.*method='ais'"):
        un.log_partition(model, model.params, method="exact")


def test_log_partition_beyond_twenty_units():
    big = un.models.ising_chain(21)
    with pytest.raises(ValueError, match=r"2\*\*21 configurations.*limit is 20.*method='ais'"):
        un.log_partition(big, big.params, method="exact")


def test_log_partition_unknown_method(spin_model):
    with pytest.raises(ValueError, match=r"unknown method 'bridge'; choose one of 'exact'"):
        un.log_partition(spin_model, spin_model.params, method="bridge")


def test_log_partition_nan_energy():
    model = un.Model(lambda p, x: jnp.where(x[0] > 0, jnp.nan, p["a"] * x[1]), params={"a": 1.0},
                     support=un.supports.spin(2))
    with pytest.raises(ValueError, match="NaN or -inf"):
        un.log_partition(model, model.params)


@pytest.mark.parametrize(
    "sampler, options, error, match",
    [
        ("hmc", {"num_steps": 0}, ValueError, "num_steps must be >= 1; got 0"),
        ("hmc", {"trajectory_length": -1.0}, ValueError, "trajectory_length must be a finite"),
        ("hmc", {"jitter": 2.0}, ValueError, r"jitter must be a number in \[0, 1\)"),
        ("nuts", {"max_tree_depth": 0}, ValueError, "max_tree_depth must be >= 1; got 0"),
        ("nuts", {"dense_mass": "yes"}, TypeError, "dense_mass must be True or False"),
        ("mala", {"adapt_step_size": 1}, TypeError, "adapt_step_size must be True or False"),
    ],
)
def test_sampler_options_are_checked(model, sampler, options, error, match):
    with pytest.raises(error, match=match):
        un.sample(model, model.params, key=KEY, sampler=sampler, **FAST, **options)


def test_zero_dimensional_arrays_are_numbers(model):
    idata = un.sample(model, model.params, key=KEY, sampler="mala",
                      step_size=jnp.asarray(0.5), adapt_step_size=False, **FAST)
    assert float(idata.sample_stats["step_size"][0, 0]) == pytest.approx(0.5)


@pytest.mark.parametrize("estimator", ["sm", "dsm", "ssm", "nce", "ksd", "mle", "cd", "pcd"])
def test_energy_not_finite_at_data_rows_names_them(estimator):
    # log|x - 3| is -inf at x = 3 and the energy +inf there: rows 4 and 7 sit on it
    model = un.Model(lambda p, x: 0.5 * jnp.sum((x - p["mu"]) ** 2) - jnp.log(jnp.abs(x[0] - 3.0)),
                     params={"mu": jnp.zeros(1)}, support=un.supports.real(1))
    data = np.random.default_rng(0).normal(size=(20, 1))
    data[[4, 7]] = 3.0
    with pytest.raises(ValueError, match=r"energy is not finite at 2 row\(s\) of data "
                                         r"\(rows 4, 7; row 4 is x = \[3\.\]"):
        un.fit(model, data, estimator, key=jax.random.key(0), progress_bar=False)


@pytest.mark.parametrize("estimator", ["pl", "rm", "mpf"])
def test_energy_not_finite_at_discrete_data_rows_names_them(estimator):
    model = un.Model(lambda p, x: p["h"] * jnp.sum(x) + jnp.where(jnp.sum(x) > 2, jnp.nan, 0.0),
                     params={"h": jnp.asarray(0.0)}, support=un.supports.spin(3))
    data = np.array([[1, -1, -1], [1, 1, 1], [-1, -1, 1]] * 5, dtype=float)
    with pytest.raises(ValueError, match=r"energy is not finite at 5 row\(s\) of data "
                                         r"\(rows 1, 4, 7, 10, 13;"):
        un.fit(model, data, estimator, key=jax.random.key(0), progress_bar=False)
