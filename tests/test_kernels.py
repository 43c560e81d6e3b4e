"""Kernels in the BlackJAX shape run inside a jitted loop while θ changes, without recompiling."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import unnorm as un
from unnorm.samplers import gibbs, hmc, langevin, rwmh


def gaussian_logdensity(theta):
    return lambda x: -0.5 * jnp.sum((x - theta) ** 2)


def make_loop(init, step, num_steps=200):
    @jax.jit
    def run(theta, key):
        logdensity_fn = gaussian_logdensity(theta)
        state = init(jnp.zeros(2), logdensity_fn)

        def body(state, key):
            state, info = step(key, state, logdensity_fn)
            return state, state.position

        _, positions = jax.lax.scan(body, state, jax.random.split(key, num_steps))
        return positions

    return run


@pytest.mark.parametrize(
    "init, step",
    [
        (langevin.init, lambda k, s, f: langevin.mala_step(k, s, f, 0.9)),
        (langevin.init, lambda k, s, f: langevin.ula_step(k, s, f, 0.3)),
        (rwmh.init, lambda k, s, f: rwmh.step(k, s, f, 1.0)),
    ],
    ids=["mala", "ula", "rwmh"],
)
def test_kernel_follows_changing_theta_without_recompiling(init, step):
    run = make_loop(init, step, num_steps=2000)
    first = run(jnp.array([0.0, 0.0]), jax.random.key(0))
    moved = run(jnp.array([3.0, -2.0]), jax.random.key(0))
    assert run._cache_size() == 1
    # The chain follows θ: means near (0, 0) and (3, -2); sd of a 1,500-draw mean of a chain with
    # autocorrelation time below ~20 is under 0.12, so 0.6 is a > 4-sigma margin.
    np.testing.assert_allclose(np.asarray(first[500:]).mean(0), [0.0, 0.0], atol=0.6)
    np.testing.assert_allclose(np.asarray(moved[500:]).mean(0), [3.0, -2.0], atol=0.6)


def test_numpyro_nuts_kernel_takes_the_logdensity_per_step():
    kernel = hmc.build("nuts", step_size=0.5, adapt_step_size=False, adapt_mass_matrix=False)

    @jax.jit
    def run(theta, key):
        logdensity_fn = gaussian_logdensity(theta)
        state = kernel.init(jnp.zeros(2), logdensity_fn, 0, key)

        def body(state, key):
            state, info = kernel.step(key, state, logdensity_fn)
            return state, (state.z, info.num_steps)

        return jax.lax.scan(body, state, jax.random.split(key, 300))[1]

    positions, num_steps = run(jnp.array([2.0, 1.0]), jax.random.key(1))
    run(jnp.array([-1.0, 0.0]), jax.random.key(1))
    assert run._cache_size() == 1
    assert np.all(np.asarray(num_steps) >= 1)
    np.testing.assert_allclose(np.asarray(positions[50:]).mean(0), [2.0, 1.0], atol=0.4)


def test_gibbs_kernel_on_independent_spins_matches_the_logistic_conditional():
    # Independent spins with fields h: P(x_i = +1) = σ(2 h_i); mean spin = tanh(h_i).
    fields = jnp.array([0.5, -1.0, 0.0])

    @jax.jit
    def run(h, key):
        logdensity_fn = lambda x: h @ x  # noqa: E731
        state = gibbs.init(jnp.ones(3), logdensity_fn)

        def body(state, key):
            state, info = gibbs.step(key, state, logdensity_fn, values=(-1.0, 1.0))
            return state, state.position

        return jax.lax.scan(body, state, jax.random.split(key, 4000))[1]

    draws = np.asarray(run(fields, jax.random.key(2)))
    run(-fields, jax.random.key(2))
    assert run._cache_size() == 1
    # Independent sweeps: sd of the mean <= 1/sqrt(4000) ≈ 0.016; 0.07 is > 4 sigma.
    np.testing.assert_allclose(draws.mean(0), np.tanh(np.asarray(fields)), atol=0.07)


def test_unconstrained_logdensity_includes_the_jacobian():
    # Exponential(1) on the positive support: with x = exp(u), log p(u) = -exp(u) + u.
    model = un.Model(lambda p, x: p["rate"] * jnp.sum(x), params={"rate": 1.0},
                     support=un.supports.positive(1))
    logdensity = un.samplers.unconstrained_logdensity(model, model.params)
    u = jnp.array([0.3])
    assert float(logdensity(u)) == pytest.approx(float(-jnp.exp(0.3) + 0.3), rel=1e-6)


@pytest.mark.parametrize("sampler", ["mala", "rwmh"])
def test_thinning_keeps_every_kth_step_of_the_same_stream(sampler):
    # Step keys are fold_in(chain_key, global step), so with no warmup a thinned run is exactly
    # every k-th draw of the unthinned one.
    model = un.models.gaussian(2)
    options = {"key": jax.random.key(5), "sampler": sampler, "num_chains": 2, "num_warmup": 0,
               "progress_bar": False, "warn": False}
    full = np.asarray(un.sample(model, model.params, num_samples=60, **options).posterior["x"])
    thinned = un.sample(model, model.params, num_samples=20, thinning=3, **options)
    np.testing.assert_array_equal(np.asarray(thinned.posterior["x"]), full[:, 2::3])
    assert thinned.posterior["x"].shape == (2, 20, 2)
