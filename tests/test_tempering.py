"""Parallel tempering (``sampler="tempering"``): mode weights of a well-separated mixture, the
4×4 Ising model at its critical coupling against exact enumeration, the swap statistics, the
caches after a swap, and every bad option.

Statistical checks are z-tests against the truth, ``|estimate − truth| / MCSE < 4`` with the
MCSE and the bulk ESS from ArviZ, over 4 chains with the ESS asserted to be >= 400.
"""

from __future__ import annotations

import itertools
import math
import warnings

import arviz as az
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import unnorm as un
from unnorm import _xla
from unnorm.samplers import registry, tempering

MAX_Z = 4.0
MIN_ESS = 400
NUM_CHAINS = 4
RUN = {"num_chains": NUM_CHAINS, "progress_bar": False, "warn": False}

# ---- the targets --------------------------------------------------------------------------------

#: two unit-variance Gaussians 8 SDs apart: means ±4, weights 0.3 (left) and 0.7 (right)
WEIGHTS, MEANS = (0.3, 0.7), (-4.0, 4.0)


def _mixture_energy(params, x):
    x = x[0]
    return -jnp.logaddexp(math.log(WEIGHTS[0]) - 0.5 * (x - MEANS[0]) ** 2,
                          math.log(WEIGHTS[1]) - 0.5 * (x - MEANS[1]) ** 2)


def _normal_cdf(z: float) -> float:
    return 0.5 * math.erfc(-z / math.sqrt(2.0))


#: P(x > 0) under the mixture: each component's mass above 0
MIXTURE_RIGHT = WEIGHTS[0] * _normal_cdf(MEANS[0]) + WEIGHTS[1] * _normal_cdf(MEANS[1])

#: the critical coupling of the square-lattice Ising model, ln(1 + √2) / 2 (Onsager 1944)
CRITICAL = 0.4407
SIDE = 4


def _torus_couplings(side: int, coupling: float) -> np.ndarray:
    """J of the periodic side×side lattice: ``coupling`` on each nearest-neighbour bond."""
    J = np.zeros((side * side, side * side))
    for r, c in itertools.product(range(side), repeat=2):
        i = r * side + c
        for j in (r * side + (c + 1) % side, ((r + 1) % side) * side + c):
            J[i, j] = J[j, i] = coupling
    return J


def _exact_mean_abs_magnetization(J: np.ndarray) -> float:
    """E|Σ x_i| / d by enumerating the 2^d spin configurations."""
    d = J.shape[0]
    codes = np.arange(2**d)[:, None] >> np.arange(d)[None, :]
    spins = 2.0 * (codes & 1) - 1.0
    energies = -0.5 * np.einsum("ni,ij,nj->n", spins, J, spins)
    weights = np.exp(-(energies - energies.min()))
    return float(weights @ np.abs(spins.sum(axis=1)) / weights.sum() / d)


def _ess_and_mcse(values: np.ndarray) -> tuple[float, float]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(az.ess(values)), float(az.mcse(values))


@pytest.fixture(scope="module")
def mixture():
    return un.Model(_mixture_energy, params={}, support=un.supports.real(1), name="mixture")


@pytest.fixture(scope="module")
def mixture_runs(mixture):
    """PT (base MALA) and plain MALA, every chain started in the left (lighter) mode.

    MALA takes the step size PT's β = 1 replica adapted to, held fixed: the same local moves
    without the swaps. (Its own dual averaging tries steps ten times its initial one early in
    warmup, which can throw a chain across the barrier once; it is stuck there just the same.)
    """
    options = dict(num_warmup=500, num_samples=2000, init=jnp.array([MEANS[0]]), **RUN)
    pt = un.sample(mixture, key=jax.random.key(0), sampler="tempering", base="mala", **options)
    step_size = float(pt.sample_stats["step_size"].mean())
    mala = un.sample(mixture, key=jax.random.key(0), sampler="mala", step_size=step_size,
                     adapt_step_size=False, **options)
    return pt, mala


@pytest.fixture(scope="module")
def ising_run():
    model = un.models.ising(J=_torus_couplings(SIDE, CRITICAL), h=np.zeros(SIDE * SIDE))
    idata = un.sample(model, key=jax.random.key(1), sampler="tempering", num_warmup=200,
                      num_samples=2000, **RUN)
    return model, idata


# ---- what it samples ----------------------------------------------------------------------------

def test_tempering_recovers_the_weights_of_modes_eight_sds_apart(mixture_runs):
    pt, mala = mixture_runs
    right = (np.asarray(pt.posterior["x"])[..., 0] > 0).astype(float)
    ess, mcse = _ess_and_mcse(right)
    estimate = right.mean()
    print(f"PT: P(x > 0) = {estimate:.4f} ± {mcse:.4f} (ESS {ess:.0f}), "
          f"truth {MIXTURE_RIGHT:.5f}")
    assert ess >= MIN_ESS
    assert abs(estimate - MIXTURE_RIGHT) < MAX_Z * mcse

    # MALA from the same start never leaves the left mode: in every chain the fraction lies
    # far outside the band of ±4 MCSE (of PT's estimate) around the truth.
    mala_right = (np.asarray(mala.posterior["x"])[..., 0] > 0).mean(axis=1)
    print(f"MALA: P(x > 0) per chain = {mala_right}, "
          f"step size {float(mala.sample_stats['step_size'].mean()):.2f}")
    assert np.all(mala_right < 0.05)
    assert np.all(np.abs(mala_right - MIXTURE_RIGHT) > MAX_Z * mcse)


def test_tempering_with_gibbs_matches_the_critical_ising_model_exactly(ising_run):
    model, idata = ising_run
    exact = _exact_mean_abs_magnetization(_torus_couplings(SIDE, CRITICAL))
    spins = np.asarray(idata.posterior["x"])
    magnetization = np.abs(spins.sum(axis=-1)) / spins.shape[-1]
    ess, mcse = _ess_and_mcse(magnetization)
    estimate = magnetization.mean()
    print(f"PT: E|m| = {estimate:.4f} ± {mcse:.4f} (ESS {ess:.0f}), exact {exact:.5f}")
    assert ess >= MIN_ESS
    assert abs(estimate - exact) < MAX_Z * mcse


def test_tempering_flips_the_magnetization_where_gibbs_is_stuck(ising_run):
    # J = 1, deep in the ordered phase: single-site Gibbs keeps each chain at one sign of the
    # magnetization (16 spins to turn against the field of their neighbours), while the hot
    # replicas, whose β J of down to 0.1 is far below the critical 0.44, carry the chain
    # across. The truth E[m] = 0 is the spin-flip symmetry; E|m| is enumerated.
    model, _ = ising_run
    J = _torus_couplings(SIDE, 1.0)
    params = {"J": J[np.triu_indices(SIDE * SIDE, k=1)], "h": np.zeros(SIDE * SIDE)}
    options = dict(params=params, num_warmup=200, num_samples=4000, **RUN)
    gibbs = un.sample(model, key=jax.random.key(2), sampler="gibbs", **options)
    pt = un.sample(model, key=jax.random.key(2), sampler="tempering", **options)

    def magnetization(idata):
        spins = np.asarray(idata.posterior["x"])
        return spins.sum(axis=-1) / spins.shape[-1]

    stuck = magnetization(gibbs).mean(axis=1)
    print("Gibbs: E[m] per chain", np.round(stuck, 3))
    assert np.all(np.abs(stuck) > 0.9)

    m = magnetization(pt)
    checks = {"E[m]": (m, 0.0), "E|m|": (np.abs(m), _exact_mean_abs_magnetization(J))}
    for name, (values, truth) in checks.items():
        ess, mcse = _ess_and_mcse(values)
        print(f"PT: {name} = {values.mean():.4f} ± {mcse:.4f} (ESS {ess:.0f}), truth {truth:.4f}")
        assert ess >= MIN_ESS
        assert abs(values.mean() - truth) < MAX_Z * mcse


@pytest.mark.slow
def test_pooled_over_sixteen_keys_no_bias_shows(mixture, ising_run):
    # Sixteen independent runs of each test above pooled: the MCSE of the pooled estimate is a
    # quarter of one run's, so a bias a single run hides (a swap ratio off by a little, a cache
    # left at the wrong temperature) shows here.
    model, _ = ising_run
    exact = _exact_mean_abs_magnetization(_torus_couplings(SIDE, CRITICAL))
    runs = {"P(x > 0)": ([], [], MIXTURE_RIGHT), "E|m|": ([], [], exact)}
    for seed in range(100, 116):
        pt = un.sample(mixture, key=jax.random.key(seed), sampler="tempering", base="mala",
                       num_warmup=500, num_samples=2000, init=jnp.array([MEANS[0]]), **RUN)
        spins = np.asarray(un.sample(model, key=jax.random.key(seed), sampler="tempering",
                                     num_warmup=200, num_samples=2000, **RUN).posterior["x"])
        values = {"P(x > 0)": (np.asarray(pt.posterior["x"])[..., 0] > 0).astype(float),
                  "E|m|": np.abs(spins.sum(axis=-1)) / spins.shape[-1]}
        for name, v in values.items():
            ess, mcse = _ess_and_mcse(v)
            assert ess >= MIN_ESS, (name, seed, ess)
            runs[name][0].append(v.mean())
            runs[name][1].append(mcse)
    for name, (estimates, mcses, truth) in runs.items():
        estimate = np.mean(estimates)
        mcse = np.sqrt(np.sum(np.square(mcses))) / len(mcses)
        z = (np.asarray(estimates) - truth) / np.asarray(mcses)
        print(f"{name}: pooled {estimate:.5f} ± {mcse:.5f}, truth {truth:.5f}; "
              f"per-run z: mean {z.mean():+.2f}, sd {z.std(ddof=1):.2f}")
        assert abs(estimate - truth) < MAX_Z * mcse


# ---- what it reports ----------------------------------------------------------------------------

def test_swap_acceptance_rates_are_in_sample_stats_per_adjacent_pair(ising_run, mixture_runs):
    _, idata = ising_run
    swaps = idata.sample_stats["swap_acceptance_rate"]
    num_pairs = tempering.NUM_TEMPERATURES - 1
    assert swaps.dims == ("chain", "draw", "swap_acceptance_rate_dim_0")
    assert swaps.shape == (NUM_CHAINS, 2000, num_pairs)
    values = np.asarray(swaps)
    assert np.all((values >= 0) & (values <= 1))
    rates = values.mean(axis=(0, 1))
    print("Ising swap rates:", np.round(rates, 3))
    assert np.all((rates > 0) & (rates < 1))
    # Gibbs has no step size; its flip rate is the β = 1 replica's
    assert "replica_step_size" not in idata.sample_stats
    assert {"acceptance_rate", "diverging", "flip_rate", "lp",
            "replica_acceptance_rate"} <= set(idata.sample_stats.data_vars)

    pt, _ = mixture_runs
    rates = np.asarray(pt.sample_stats["swap_acceptance_rate"]).mean(axis=(0, 1))
    steps = np.asarray(pt.sample_stats["replica_step_size"]).mean(axis=(0, 1))
    print("mixture swap rates:", np.round(rates, 3), "step sizes:", np.round(steps, 2))
    assert np.all((rates > 0) & (rates < 1))
    # each replica adapts its own step: the hottest, widest one takes the largest
    assert steps.shape == (tempering.NUM_TEMPERATURES,) and steps[-1] > steps[0]
    np.testing.assert_array_equal(np.asarray(pt.sample_stats["step_size"]),
                                  np.asarray(pt.sample_stats["replica_step_size"])[..., 0])


def test_draws_are_reproducible_for_a_fixed_key(ising_run):
    # the model, ladder and chunk length (num_warmup, the common divisor of both phases) of
    # ising_run: these runs reuse its compiled programs
    model, _ = ising_run
    options = dict(sampler="tempering", num_warmup=200, num_samples=200, **RUN)
    first = un.sample(model, key=jax.random.key(7), **options)
    again = un.sample(model, key=jax.random.key(7), **options)
    other = un.sample(model, key=jax.random.key(8), **options)
    assert first.sample_stats["swap_acceptance_rate"].shape == (
        NUM_CHAINS, 200, tempering.NUM_TEMPERATURES - 1)
    np.testing.assert_array_equal(first.posterior["x"], again.posterior["x"])
    np.testing.assert_array_equal(first.sample_stats["swap_acceptance_rate"],
                                  again.sample_stats["swap_acceptance_rate"])
    assert not np.array_equal(first.posterior["x"], other.posterior["x"])


def test_after_swaps_every_replica_caches_its_own_tempered_target(mixture):
    betas = (1.0, 0.5, 0.25, 0.125)
    kernel = registry.build_sampler("tempering", num_warmup=10, betas=betas)
    logdensity = un.samplers.unconstrained_logdensity(mixture, mixture.params)

    def scan(position, init_key, key):
        # the start inside the compiled program too: run eagerly, its dozens of small
        # operations would each compile on their own
        state = kernel.init(position, logdensity, init_key)

        def one(state, k):
            state, info = kernel.step(k, state, logdensity, jnp.asarray(True))
            return state, (info.is_swapped, state.step)
        return jax.lax.scan(one, state, jax.random.split(key, 200))

    # the kernel's own compile options, as un.sample's chunks use them (see tempering.py)
    run = jax.jit(scan, compiler_options=_xla.sampling_compiler_options(kernel.compiler_options))

    state, (swapped, steps) = run(jnp.array([MEANS[0]]), jax.random.key(0), jax.random.key(1))
    swapped, steps = np.asarray(swapped), np.asarray(steps)
    # the even pairs (0, 1), (2, 3) swap after even steps, the odd pair (1, 2) after odd ones
    parity_before = (steps - 1) % 2
    assert not swapped[parity_before == 0][:, 1].any()
    assert not swapped[parity_before == 1][:, [0, 2]].any()
    assert swapped.any(axis=0).all()

    cached = state.replicas.kernel           # MALA's LangevinState, one row per replica
    value, grad = jax.jit(jax.vmap(jax.value_and_grad(logdensity)))(cached.position)
    b = jnp.asarray(betas)
    np.testing.assert_allclose(cached.logdensity, b * value, rtol=1e-6)
    np.testing.assert_allclose(cached.logdensity_grad, b[:, None] * grad, rtol=1e-6)
    assert float(kernel.logdensity(state)) == pytest.approx(float(value[0]))


def test_geometric_ladder():
    betas = tempering.geometric_betas(5, 0.0625)
    np.testing.assert_allclose(betas, [1.0, 0.5, 0.25, 0.125, 0.0625])
    assert betas[0] == 1.0


def test_tempering_is_listed_for_both_kinds_of_support():
    assert "tempering" in registry.sampler_names(True)
    assert "tempering" in registry.sampler_names(False)
    assert registry.SAMPLERS["tempering"] is tempering.TEMPERING


# ---- bad options --------------------------------------------------------------------------------

FAST = {"num_chains": 2, "num_warmup": 10, "num_samples": 10, "progress_bar": False,
        "warn": False}


@pytest.mark.parametrize(
    "options, error, match",
    [
        ({"base": "foo"}, ValueError, r"unknown base 'foo'; choose one of 'nuts'.*'gibbs'"),
        ({"base": "tempering"}, ValueError, r"base='tempering' cannot be a base"),
        ({"betas": (1.0, 0.5, 0.5)}, ValueError,
         r"betas must decrease strictly from 1; got betas\[2\] = 0.5 after betas\[1\] = 0.5"),
        ({"betas": (0.9, 0.5)}, ValueError, r"betas must start at 1.*betas\[0\] = 0.9"),
        ({"betas": (1.0, 0.5, 0.0)}, ValueError, r"betas must stay > 0.*betas\[2\] = 0.0"),
        ({"betas": (1.0,)}, ValueError, r"betas must be a sequence of at least 2"),
        ({"betas": "hot"}, ValueError, r"betas must be a sequence of at least 2.*'hot'"),
        ({"num_temperatures": 1}, ValueError, r"num_temperatures must be >= 2; got 1"),
        ({"num_temperatures": 2.5}, TypeError, r"num_temperatures must be an integer >= 2"),
        ({"min_beta": 1.5}, ValueError, r"min_beta must lie strictly between 0 and 1; got 1.5"),
        ({"betas": (1.0, 0.5), "num_temperatures": 4}, ValueError,
         r"betas=\(1.0, 0.5\) fixes the ladder; give either betas or num_temperatures"),
        ({"base": "gibbs"}, ValueError,
         r"base 'gibbs' works on binary and spin supports only.*use base='nuts'"),
        ({"scan": "blocked"}, TypeError,
         r"with base='mala': sampler 'mala' does not take option\(s\) \['scan'\]"),
        ({"temperatures": 3}, TypeError,
         r"sampler 'tempering' does not take option\(s\) \['temperatures'\]"),
    ],
)
def test_bad_options_name_the_option_and_what_is_accepted(mixture, options, error, match):
    with pytest.raises(error, match=match):
        un.sample(mixture, key=jax.random.key(0), sampler="tempering", **FAST, **options)


def test_bad_base_options_on_a_spin_model():
    model = un.models.ising_chain(4)
    with pytest.raises(ValueError, match=r"base 'mala' works on continuous supports only, not "
                                         r"on discrete ones such as the model's spin.*"
                                         r"use base='gibbs'"):
        un.sample(model, key=jax.random.key(0), sampler="tempering", base="mala", **FAST)
    with pytest.raises(TypeError, match=r"base='gibbs': sampler 'gibbs' does not take "
                                        r"option\(s\) \['step_size'\]"):
        un.sample(model, key=jax.random.key(0), sampler="tempering", step_size=0.3, **FAST)
