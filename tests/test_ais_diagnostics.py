"""AIS's honesty about its Monte Carlo error: Pareto k̂ and ESS warnings, replicate runs, and a
study on the 16 × 16 Ising torus against Kaufman's exact log Z."""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import logsumexp
from scipy.stats import chi2

import unnorm as un
from tests._kaufman import torus_energy, torus_log_z


def _torus(m: int, n: int, coupling: float) -> un.Model:
    return un.Model(torus_energy(m, n), params={"K": jnp.asarray(coupling)},
                    support=un.supports.spin(m * n), name=f"torus{m}x{n}")


@pytest.mark.parametrize("m, n", [(4, 4), (3, 4)])
@pytest.mark.parametrize("coupling", [0.2, 0.4407, 0.7])
def test_kaufman_matches_enumeration(m, n, coupling):
    # every configuration, in float64: the rows of the bit patterns of 0 .. 2^(mn) - 1
    bits = (np.arange(2 ** (m * n))[:, None] >> np.arange(m * n)) & 1
    grid = (2.0 * bits - 1.0).reshape(-1, m, n)
    bonds = grid * np.roll(grid, 1, axis=1) + grid * np.roll(grid, 1, axis=2)
    exact = logsumexp(coupling * bonds.sum(axis=(1, 2)))
    assert torus_log_z(m, n, coupling) == pytest.approx(exact, abs=1e-10)
    # and unnorm's enumeration (float32) of the same energy
    enumerated = un.log_partition(_torus(m, n, coupling), method="exact").estimate
    assert enumerated == pytest.approx(exact, rel=1e-6)


def test_light_weights_report_their_pareto_k_quietly():
    chain = un.models.ising_chain(8, coupling=0.3)
    with warnings.catch_warnings():
        warnings.simplefilter("error", un.ConvergenceWarning)
        lz = un.log_partition(chain, method="ais", key=jax.random.key(0), num_chains=128,
                              num_temperatures=200, progress_bar=False)
    assert lz.pareto_k < 0.7 and lz.ess > 0.5 * 128 and lz.num_replicates == 1
    exact = un.log_partition(chain).estimate
    assert abs(lz.estimate - exact) < 4 * lz.stderr
    assert un.log_partition(chain).pareto_k is None


@pytest.mark.parametrize("num_weights", [5, 16, 24])
def test_too_few_weights_have_no_pareto_k(num_weights):
    # PSIS's tail is the largest min(S/5, 3√S) weights; ArviZ 1.x refuses fewer than 5 of them
    # (it raised with 16 chains): no k̂ below 25 weights, on both ArviZ lines
    from unnorm._compat import pareto_khat

    log_weights = np.random.default_rng(0).normal(size=num_weights)
    assert np.isnan(pareto_khat(log_weights))


def test_heavy_weights_warn():
    # importance sampling straight from the uniform base (two temperatures) on a strongly
    # coupled torus: a few weights dominate
    model = _torus(4, 4, 0.7)
    with pytest.warns(un.ConvergenceWarning, match=r"heavy-tailed \(Pareto k̂ = .*"
                                                   r"num_replicates=10"):
        lz = un.log_partition(model, method="ais", key=jax.random.key(1), num_chains=256,
                              num_temperatures=2, progress_bar=False)
    assert lz.pareto_k > 0.7 or lz.ess < 0.1 * 256


def test_improper_density_warns():
    # exp(x⁴) is not integrable: the weights of the chains that run away dominate
    model = un.Model(lambda p, x: -p["a"] * jnp.sum(x**4), params={"a": jnp.asarray(1.0)},
                     support=un.supports.real(1))
    with pytest.warns(un.ConvergenceWarning, match="heavy-tailed"):
        un.log_partition(model, method="ais", key=jax.random.key(0), num_chains=64,
                         num_temperatures=100, progress_bar=False)


def test_replicates_pool_the_chains_and_take_the_spread_as_standard_error():
    chain = un.models.ising_chain(6, coupling=0.4)
    options = dict(method="ais", num_chains=32, num_temperatures=50, progress_bar=False)
    key = jax.random.key(3)
    lz = un.log_partition(chain, key=key, num_replicates=4, **options)
    runs = [un.log_partition(chain, key=jax.random.fold_in(key, r), **options)
            for r in range(4)]
    estimates = np.array([run.estimate for run in runs])
    assert lz.num_replicates == 4
    assert lz.stderr == pytest.approx(np.std(estimates, ddof=1) / 2, rel=1e-6)
    # the pooled estimate is the log of the mean weight over all 128 chains, which lies
    # between the runs' extremes
    assert estimates.min() <= lz.estimate <= estimates.max()
    with pytest.raises(ValueError, match="num_replicates must be >= 1"):
        un.log_partition(chain, key=key, num_replicates=0, **options)


@pytest.mark.slow
@pytest.mark.parametrize("coupling", [0.4407])
def test_ais_standard_errors_on_the_16x16_torus(coupling):
    """Over 20 runs the reported standard errors give Σz² inside the χ² 99% range, or the runs
    that break it are the ones the k̂ / ESS warning flags.

    At the critical coupling both hold. At β = 0.6 (the ordered phase) neither does, and no
    diagnostic of the weights can say so: the runs furthest below the truth (z = -4.7, -3.3)
    had the best-balanced weights (ESS 28% of 64 chains, k̂ = 0.17), because no chain reached
    the configurations that carry the missing mass; docs/partition.md records it."""
    model = _torus(16, 16, coupling)
    exact = torus_log_z(16, 16, coupling)
    z, flagged = [], []
    for run in range(20):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", un.ConvergenceWarning)
            lz = un.log_partition(model, method="ais", key=jax.random.key(run), num_chains=64,
                                  num_temperatures=1000, progress_bar=False)
        z.append((lz.estimate - exact) / lz.stderr)
        flagged.append(any(issubclass(w.category, un.ConvergenceWarning) for w in caught))
    z, flagged = np.array(z), np.array(flagged)
    low, high = chi2.ppf([0.005, 0.995], df=z.size)
    if low <= np.sum(z**2) <= high:
        return
    trusted = z[~flagged]
    assert flagged.any(), (np.sum(z**2), z)
    if trusted.size:
        low, high = chi2.ppf([0.005, 0.995], df=trusted.size)
        assert low <= np.sum(trusted**2) <= high, (trusted, z, flagged)
