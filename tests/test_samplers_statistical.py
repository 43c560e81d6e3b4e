"""Statistical tests of ``un.sample``: every sampler against a known truth.

Each check is a z-test in the style of BlackJAX's ``MonteCarloStandardErrorTest``: for a function
``f`` of the draws, ``|mean(f) - E[f]| / MCSE(f) < 4``, with the MCSE and the (bulk) effective
sample size from ArviZ on the ``(chain, draw)`` array of ``f``. Every run has >= 4 chains and the
ESS of every tested function is asserted to be >= 400, so a sampler that barely moves cannot pass
through a huge MCSE. ``P(|z| > 4) ≈ 6e-5`` per check, so even the ~200 checks of this file fail
by chance with probability about 1%; the run sizes are chosen so the ESS bound holds with a wide
margin and the tests survive a reseed (JAX does not promise the same random stream across
versions). Exact identities (log Z by enumeration, reproducibility of the stream, ``lp``) are
checked exactly.

Compile time dominates the cost of the NUTS/HMC runs (a chunk of the jitted scan is compiled per
distinct length), so those runs use ``num_warmup == num_samples`` (one compiled chunk serves both
phases) and each run is made once per module and shared between tests.
"""

from __future__ import annotations

import functools
import itertools
import warnings

import arviz as az
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import unnorm as un

MAX_Z = 4.0
MIN_ESS = 400
NUM_CHAINS = 4


# ---- helpers ------------------------------------------------------------------------------------


def _ess_and_mcse(values: np.ndarray) -> tuple[float, float]:
    values = np.asarray(values, dtype=float)
    assert values.ndim == 2 and values.shape[0] >= 4, values.shape
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(az.ess(values)), float(az.mcse(values))


def assert_mcse_z(checks: dict[str, tuple[np.ndarray, float]], max_z: float = MAX_Z,
                  min_ess: float = MIN_ESS) -> None:
    """``checks``: name -> ((chain, draw) values of f, E[f]). Assert ESS >= min_ess and
    |mean - truth| / MCSE < max_z for each; report every failure at once."""
    failures, rows = [], []
    for name, (values, truth) in checks.items():
        ess, mcse = _ess_and_mcse(values)
        estimate = float(np.mean(values))
        z = (estimate - truth) / mcse if mcse > 0 else np.inf
        rows.append(f"{name}: estimate {estimate:.5f} truth {truth:.5f} mcse {mcse:.5f} "
                    f"z {z:+.2f} ess {ess:.0f}")
        if not ess >= min_ess:
            failures.append(f"{name}: ESS {ess:.0f} < {min_ess}")
        if not abs(z) < max_z:
            failures.append(f"{name}: |z| = {abs(z):.2f} >= {max_z}")
    print("\n".join(rows))  # shown with pytest -s: the margins of every check
    assert not failures, "\n".join(failures) + "\n--- all checks ---\n" + "\n".join(rows)


def _draws(idata) -> np.ndarray:
    return np.asarray(idata.posterior["x"], dtype=float)


def _stat(idata, name: str) -> np.ndarray:
    return np.asarray(idata.sample_stats[name])


def _sample(model, key: int, sampler: str, **kwargs):
    kwargs.setdefault("num_chains", NUM_CHAINS)
    kwargs.setdefault("progress_bar", False)
    kwargs.setdefault("warn", False)  # convergence is checked here, through the ESS bound
    return un.sample(model, key=jax.random.key(key), sampler=sampler, **kwargs)


def _gaussian_checks(x: np.ndarray, mean: np.ndarray, cov: np.ndarray,
                     cross: bool) -> dict[str, tuple[np.ndarray, float]]:
    """Mean, variance (and, if ``cross``, covariance) checks of Gaussian draws (chain, draw, d).

    The mean is known, so the second moments are tested as E[(x_i - μ_i)(x_j - μ_j)] = Σ_ij: an
    unbiased plain average with an honest MCSE, rather than the sample variance whose MCSE ArviZ
    only approximates (method="sd")."""
    centred = x - mean
    checks = {}
    for i in range(x.shape[-1]):
        checks[f"E[x{i}]"] = (x[..., i], float(mean[i]))
        checks[f"Var[x{i}]"] = (centred[..., i] ** 2, float(cov[i, i]))
    if cross:
        for i, j in itertools.combinations(range(x.shape[-1]), 2):
            checks[f"Cov[x{i},x{j}]"] = (centred[..., i] * centred[..., j], float(cov[i, j]))
    return checks


# ---- models -------------------------------------------------------------------------------------

# 2-D Gaussian, unit variances, correlation 0.75: eigenvalues 1.75 and 0.25 of the covariance.
COV2 = np.array([[1.0, 0.75], [0.75, 1.0]])
GAUSS2 = un.models.gaussian(2, precision=np.linalg.inv(COV2))


def _ill_conditioned_covariance(d: int, seed: int) -> np.ndarray:
    """Σ = Q diag(λ) Qᵀ with λ log-spaced from 0.1 to 10 (condition number 100) and Q a random
    rotation (QR of a Gaussian matrix, signs fixed) from a fixed numpy seed."""
    rng = np.random.default_rng(seed)
    q, r = np.linalg.qr(rng.normal(size=(d, d)))
    q = q * np.sign(np.diag(r))
    eigenvalues = np.logspace(-1.0, 1.0, d)
    return (q * eigenvalues) @ q.T


D20 = 20
COV20 = _ill_conditioned_covariance(D20, seed=20240)
MEAN20 = np.random.default_rng(7).normal(size=D20)
GAUSS20 = un.models.gaussian(D20, mean=MEAN20, precision=np.linalg.inv(COV20))

# Gamma(a, 1) on the positive half-line: E(x) = x - (a - 1) log x; mean a, variance a.
GAMMA_SHAPE = 3.0
GAMMA = un.Model(lambda p, x: jnp.sum(x - (p["a"] - 1.0) * jnp.log(x)),
                 params={"a": jnp.asarray(GAMMA_SHAPE)},
                 support=un.supports.positive(1), name="gamma")


# ---- shared runs (each compiled and sampled once per module) ------------------------------------

# ULA's step for the unbiasedness test. For the Gaussian target, ULA (x' = x + (ε²/2)∇log p + εz)
# is a linear AR(1) chain in each eigen-direction of Σ (variance λ): x' = a x + εz with
# a = 1 - ε²/(2λ), so its stationary variance is ε²/(1 - a²) = λ / (1 - ε²/(4λ)) ≈ λ + ε²/4 and
# its mean is exactly 0. With ε = 0.1 the bias is +0.00250 and +0.00253 in the two eigen-
# directions (λ = 1.75, 0.25): +0.0025 in E[x_i²] and -1e-5 in E[x1 x2]. The integrated
# autocorrelation time of the slow direction is (1 + a)/(1 - a) ≈ 4λ/ε² = 700 steps, so 200 000
# steps per chain give ESS ≈ 4·200000/700 ≈ 1100 for the means and more for the squares:
# MCSE(E[x_i²]) ≈ 0.026, ten times the bias. So the test checks that ULA is correct up to its
# known, here negligible, discretization bias (the two test_ula_bias_* tests check the bias).
ULA_STEP = 0.1

# HMC runs with its defaults: path length π, jittered by ±50% per draw. (A fixed path of 2π,
# NumPyro's default, is one full period of a Gaussian direction whose scale the mass matrix has
# learnt: draws barely move and the ESS of the means drops to ~50-200 per 4000 draws.)
RUNS2 = {
    # num_warmup == num_samples for NUTS/HMC: one compiled chunk serves both phases.
    "nuts": dict(num_warmup=1000, num_samples=1000),
    "hmc": dict(num_warmup=1000, num_samples=1000),
    "mala": dict(num_warmup=1000, num_samples=2000, thinning=2),
    "rwmh": dict(num_warmup=1000, num_samples=2000, thinning=4),
    "langevin": dict(num_warmup=100, num_samples=4000, thinning=50, step_size=ULA_STEP,
                     adapt_step_size=False),
}

RUNS20 = {
    "nuts": dict(num_warmup=1000, num_samples=1000),
    "hmc": dict(num_warmup=2000, num_samples=2000),
    # MALA has an isotropic proposal: its step is set by the smallest variance (0.1) and it
    # needs ~λ_max/λ_min times more steps to cross the largest one (10): thin heavily.
    "mala": dict(num_warmup=500, num_samples=3000, thinning=25),
}


@functools.cache
def gauss2_run(sampler: str):
    return _sample(GAUSS2, 11, sampler, **RUNS2[sampler])


@functools.cache
def gauss20_run(sampler: str):
    return _sample(GAUSS20, 12, sampler, **RUNS20[sampler])


@functools.cache
def gamma_run():
    return _sample(GAMMA, 13, "nuts", num_warmup=1000, num_samples=1000)


# ---- 1. 2-D correlated Gaussian, every continuous sampler ---------------------------------------


@pytest.mark.parametrize("sampler", ["nuts", "hmc", "mala", "langevin", "rwmh"])
def test_gaussian_2d_moments(sampler):
    idata = gauss2_run(sampler)
    x = _draws(idata)
    assert x.shape == (NUM_CHAINS, RUNS2[sampler]["num_samples"], 2)
    # Means, E[x_i²] = Var = 1 and E[x1 x2] = Cov = correlation = 0.75 (mean 0 is known).
    assert_mcse_z(_gaussian_checks(x, np.zeros(2), COV2, cross=True))
    assert not _stat(idata, "diverging").any()


def _ula_stationary_covariance(cov: np.ndarray, step: float) -> np.ndarray:
    """Stationary covariance of ULA with step ε on N(0, Σ): λ → λ / (1 - ε²/(4λ)) per
    eigen-direction of Σ (see ULA_STEP above)."""
    lam, vec = np.linalg.eigh(cov)
    return (vec * (lam / (1.0 - step**2 / (4.0 * lam)))) @ vec.T


def test_ula_bias_below_mcse_at_test_step():
    # The reasoning behind ULA_STEP, checked: the analytic bias of every second moment is well
    # below one MCSE of the run used in test_gaussian_2d_moments["langevin"].
    biased = _ula_stationary_covariance(COV2, ULA_STEP)
    x = _draws(gauss2_run("langevin"))
    checks = _gaussian_checks(x, np.zeros(2), COV2, cross=True)
    for name, (i, j) in {"Var[x0]": (0, 0), "Var[x1]": (1, 1), "Cov[x0,x1]": (0, 1)}.items():
        _, mcse = _ess_and_mcse(checks[name][0])
        assert abs(biased[i, j] - COV2[i, j]) < 0.25 * mcse, (name, biased[i, j], mcse)


def test_ula_bias_matches_closed_form_at_large_step():
    # At ε = 0.7 (stable while ε² < 4 λ_min = 1) ULA is visibly biased: the closed form gives
    # Var 1.186 and Cov 0.696 instead of 1 and 0.75. The kernel must follow eq. 6 exactly, so its
    # moments match the biased values, and are far (many MCSE) from the exact ones.
    step = 0.7
    biased = _ula_stationary_covariance(COV2, step)
    idata = _sample(GAUSS2, 14, "langevin", num_warmup=200, num_samples=4000, thinning=2,
                    step_size=step, adapt_step_size=False)
    x = _draws(idata)
    np.testing.assert_allclose(_stat(idata, "step_size"), step, rtol=1e-6)
    assert_mcse_z(_gaussian_checks(x, np.zeros(2), biased, cross=True))
    exact = _gaussian_checks(x, np.zeros(2), COV2, cross=True)
    for name in ("Var[x0]", "Var[x1]"):
        values, truth = exact[name]
        _, mcse = _ess_and_mcse(values)
        assert abs(np.mean(values) - truth) / mcse > MAX_Z, name


# ---- 2. 20-D Gaussian, condition number 100 -----------------------------------------------------


def test_ill_conditioned_target_is_what_it_claims():
    lam = np.linalg.eigvalsh(COV20)
    np.testing.assert_allclose(lam.max() / lam.min(), 100.0, rtol=1e-8)
    off_diagonal = COV20 - np.diag(np.diag(COV20))
    assert np.abs(off_diagonal).max() > 0.5  # genuinely dense, not axis-aligned


# a study of the gradient samplers on a hard target; their 2-D moments run by default
@pytest.mark.slow
@pytest.mark.parametrize("sampler", ["nuts", "hmc", "mala"])
def test_gaussian_20d_ill_conditioned(sampler):
    idata = gauss20_run(sampler)
    x = _draws(idata)
    assert x.shape == (NUM_CHAINS, RUNS20[sampler]["num_samples"], D20)
    # 20 means and 20 variances E[(x_i - μ_i)²] = Σ_ii (μ known), each within 4 MCSE.
    assert_mcse_z(_gaussian_checks(x, MEAN20, COV20, cross=False))
    assert not _stat(idata, "diverging").any()


# ---- 3. Gibbs on small spin / binary models, exact moments by enumeration -----------------------


def _enumerate_moments(values: tuple[float, float], J: np.ndarray, h: np.ndarray):
    """Exact E[x_i] and E[x_i x_j] of p(x) ∝ exp(Σ_{i<j} J_ij x_i x_j + hᵀx) on {a, b}^d, by
    summing over all 2^d configurations in float64 (independently of unnorm's enumeration)."""
    d = h.shape[0]
    configs = np.array(list(itertools.product(values, repeat=d)), dtype=float)
    rows, cols = np.triu_indices(d, k=1)
    log_w = (configs[:, rows] * configs[:, cols]) @ J + configs @ h
    w = np.exp(log_w - log_w.max())
    w /= w.sum()
    first = w @ configs
    second = np.einsum("n,ni,nj->ij", w, configs, configs)
    return first, second


def _pairwise_checks(x: np.ndarray, first: np.ndarray, second: np.ndarray):
    d = x.shape[-1]
    checks = {f"E[x{i}]": (x[..., i], float(first[i])) for i in range(d)}
    for i, j in itertools.combinations(range(d), 2):
        checks[f"E[x{i} x{j}]"] = (x[..., i] * x[..., j], float(second[i, j]))
    return checks


def _random_pairwise(d: int, seed: int, coupling: float, field: float):
    rng = np.random.default_rng(seed)
    J = rng.uniform(-coupling, coupling, size=d * (d - 1) // 2)
    h = rng.uniform(-field, field, size=d)
    return J, h


ISING_J, ISING_H = _random_pairwise(6, seed=3, coupling=0.6, field=0.4)
ISING6 = un.models.ising(J=ISING_J, h=ISING_H)
BM_W, BM_B = _random_pairwise(5, seed=4, coupling=1.5, field=1.0)
BOLTZMANN5 = un.models.boltzmann(W=BM_W, b=BM_B)
# Gibbs uses one step function in both phases: equal lengths share one compiled chunk.
GIBBS_RUN = dict(num_warmup=3000, num_samples=3000)


@functools.cache
def gibbs_run(name: str):
    model = {"ising": ISING6, "boltzmann": BOLTZMANN5}[name]
    return _sample(model, 21, "gibbs", **GIBBS_RUN)


def test_gibbs_ising_exact_moments():
    x = _draws(gibbs_run("ising"))
    assert set(np.unique(x)) == {-1.0, 1.0}
    first, second = _enumerate_moments((-1.0, 1.0), ISING_J, ISING_H)
    # 6 magnetizations and 15 pair correlations
    assert_mcse_z(_pairwise_checks(x, first, second))


def test_gibbs_boltzmann_exact_moments():
    x = _draws(gibbs_run("boltzmann"))
    assert set(np.unique(x)) == {0.0, 1.0}
    first, second = _enumerate_moments((0.0, 1.0), BM_W, BM_B)
    # 5 marginals P(x_i = 1) and 10 pairwise P(x_i = x_j = 1)
    assert_mcse_z(_pairwise_checks(x, first, second))


# The blocked (chromatic) scan, exact for any energy whose interaction graph it certifies.


def _enumerate_energy_moments(energy, values, d: int):
    """Exact E[x_i] and E[x_i x_j] under p ∝ exp(-energy(x)) on {a, b}^d by summing over the
    2^d configurations in float64; ``energy`` is a NumPy function of a (n, d) batch."""
    configs = np.array(list(itertools.product(values, repeat=d)), dtype=float)
    log_w = -energy(configs)
    w = np.exp(log_w - log_w.max())
    w /= w.sum()
    return w @ configs, np.einsum("n,ni,nj->ij", w, configs, configs)


# Ising model on a 3 x 3 lattice (open boundaries): random couplings on the 12 lattice bonds,
# zero elsewhere, so the graph at θ is the lattice and two colours (a checkerboard) cover it.
_LATTICE_J = np.zeros((9, 9))
for _site in range(9):
    _row, _col = divmod(_site, 3)
    if _col < 2:
        _LATTICE_J[_site, _site + 1] = 1.0
    if _row < 2:
        _LATTICE_J[_site, _site + 3] = 1.0
_LATTICE_J *= np.random.default_rng(8).uniform(-0.8, 0.8, size=(9, 9))
LATTICE_J = _LATTICE_J[np.triu_indices(9, k=1)]
LATTICE_H = np.random.default_rng(9).uniform(-0.4, 0.4, size=9)
LATTICE = un.models.ising(J=_LATTICE_J, h=LATTICE_H)

# Binary units on a (2, 3) grid: a pairwise chain through the six units (C order), fields, and
# two pure three-way terms, x0 x1 x2 and x3 x4 x5. Multilinear, so the flip differences come
# from the gradient; the graph is the chain plus the two triangles (three colours).
TRIPLE_CHAIN = np.array([0.9, -0.7, 0.5, 0.8, -0.6])
TRIPLE_B = np.array([-0.5, 0.3, -0.2, 0.4, -0.6, 0.1])
TRIPLE_C = np.array([1.5, -1.8])


def _triple_energy(params, x):
    flat = x.reshape(-1)
    return (-jnp.sum(params["w"] * flat[:-1] * flat[1:]) - params["b"] @ flat
            - params["c"][0] * flat[0] * flat[1] * flat[2]
            - params["c"][1] * flat[3] * flat[4] * flat[5])


def _triple_energy_np(configs):
    return (-(configs[:, :-1] * configs[:, 1:]) @ TRIPLE_CHAIN - configs @ TRIPLE_B
            - TRIPLE_C[0] * configs[:, 0] * configs[:, 1] * configs[:, 2]
            - TRIPLE_C[1] * configs[:, 3] * configs[:, 4] * configs[:, 5])


TRIPLE = un.Model(_triple_energy, params={"w": TRIPLE_CHAIN, "b": TRIPLE_B, "c": TRIPLE_C},
                  support=un.supports.binary((2, 3)), name="triple")

# Spins on a ring of 7 with a three-way term, written so that the energy is NOT multilinear as a
# function of real x (squares of sums): the flip differences are then computed from a batch of
# energy evaluations per colour. On spins, (x_i + x_j)² = 2 + 2 x_i x_j.
RING_J = np.array([0.6, -0.5, 0.7, 0.4, -0.8, 0.5, 0.3])
RING_H = np.array([0.2, -0.3, 0.1, 0.0, 0.4, -0.2, 0.3])
RING_C = 0.9


def _ring_energy(params, x):
    neighbours = jnp.roll(x, -1)
    return (-0.5 * jnp.sum(params["J"] * (x + neighbours) ** 2) - params["h"] @ x
            - params["c"] * x[0] * x[2] * x[4])


def _ring_energy_np(configs):
    neighbours = np.roll(configs, -1, axis=1)
    return (-0.5 * ((configs + neighbours) ** 2) @ RING_J - configs @ RING_H
            - RING_C * configs[:, 0] * configs[:, 2] * configs[:, 4])


RING = un.Model(_ring_energy, params={"J": RING_J, "h": RING_H, "c": RING_C},
                support=un.supports.spin(7), name="ring")

BLOCKED = {"lattice": LATTICE, "triple": TRIPLE, "ring": RING}


@functools.cache
def blocked_run(name: str):
    return _sample(BLOCKED[name], 22, "gibbs", scan="blocked", **GIBBS_RUN)


def test_blocked_gibbs_uses_the_expected_colourings():
    from unnorm.samplers import structure

    found = {name: structure.gibbs_structure(model, model.params, "auto")
             for name, model in BLOCKED.items()}
    assert len(found["lattice"].blocks.colors) == 2 and found["lattice"].blocks.multilinear
    assert len(found["triple"].blocks.colors) == 3 and found["triple"].blocks.multilinear
    assert not found["ring"].blocks.multilinear
    # ring of 7 plus the triangle {0, 2, 4}
    assert int(found["ring"].adjacency.sum()) // 2 == 7 + 3


def test_blocked_gibbs_ising_lattice_exact_moments():
    x = _draws(blocked_run("lattice"))
    assert set(np.unique(x)) == {-1.0, 1.0}
    first, second = _enumerate_moments((-1.0, 1.0), LATTICE_J, LATTICE_H)
    # 9 magnetizations and 36 pair correlations
    assert_mcse_z(_pairwise_checks(x, first, second))


def test_blocked_gibbs_three_way_interactions_exact_moments():
    x = _draws(blocked_run("triple")).reshape(NUM_CHAINS, -1, 6)
    assert set(np.unique(x)) == {0.0, 1.0}
    first, second = _enumerate_energy_moments(_triple_energy_np, (0.0, 1.0), 6)
    checks = _pairwise_checks(x, first, second)
    # and the three-way moments that the extra terms act on directly
    configs = np.array(list(itertools.product((0.0, 1.0), repeat=6)))
    weights = np.exp(-_triple_energy_np(configs))
    weights /= weights.sum()
    for a, b, c in [(0, 1, 2), (3, 4, 5)]:
        exact = float(weights @ (configs[:, a] * configs[:, b] * configs[:, c]))
        checks[f"E[x{a} x{b} x{c}]"] = (x[..., a] * x[..., b] * x[..., c], exact)
    assert_mcse_z(checks)


def test_blocked_gibbs_non_multilinear_energy_exact_moments():
    x = _draws(blocked_run("ring"))
    assert set(np.unique(x)) == {-1.0, 1.0}
    first, second = _enumerate_energy_moments(_ring_energy_np, (-1.0, 1.0), 7)
    assert_mcse_z(_pairwise_checks(x, first, second))


@pytest.mark.parametrize("name", list(BLOCKED))
def test_lp_is_minus_energy_blocked_gibbs(name):
    _assert_lp_is_minus_energy(BLOCKED[name], blocked_run(name))


# ---- 4. exact log Z -----------------------------------------------------------------------------


def _x64():
    """A context with float64 enabled, in every supported JAX version."""
    if hasattr(jax, "enable_x64"):
        return jax.enable_x64(True)
    from jax.experimental import enable_x64  # older JAX

    return enable_x64()


def test_log_partition_seed_001_three_units():
    # Seed 001: H = -x1x2 - x1x3 + 2 x2x3 + x2 ... has Z = 172.420 (3 decimals in the source).
    model = un.models.ising(J=[-1.0, -1.0, 2.0], h=[0.0, 1.0, 0.0])
    lz = un.log_partition(model, model.params, method="exact")
    assert lz.stderr == 0.0 and lz.method == "exact"
    assert abs(np.exp(lz.estimate) - 172.420) < 5e-4
    # and the enumeration agrees with an independent float64 sum
    configs = np.array(list(itertools.product((-1.0, 1.0), repeat=3)))
    J, h = np.array([-1.0, -1.0, 2.0]), np.array([0.0, 1.0, 0.0])
    rows, cols = np.triu_indices(3, k=1)
    z = np.exp((configs[:, rows] * configs[:, cols]) @ J + configs @ h).sum()
    np.testing.assert_allclose(np.exp(lz.estimate), z, rtol=1e-6)


def test_log_partition_boltzmann_10_units_x64():
    W, b = _random_pairwise(10, seed=5, coupling=1.0, field=1.0)
    configs = np.array(list(itertools.product((0.0, 1.0), repeat=10)))
    rows, cols = np.triu_indices(10, k=1)
    log_w = (configs[:, rows] * configs[:, cols]) @ W + configs @ b
    expected = log_w.max() + np.log(np.exp(log_w - log_w.max()).sum())
    with _x64():
        model = un.models.boltzmann(W=W, b=b)  # built inside the context: float64 params
        assert all(leaf.dtype == jnp.float64 for leaf in jax.tree_util.tree_leaves(model.params))
        lz = un.log_partition(model, model.params, method="exact")
    assert abs(lz.estimate - expected) < 1e-10
    assert lz.stderr == 0.0


# ---- 5. reproducibility -------------------------------------------------------------------------

SHARED_RUNS = {
    **{f"{sampler}-2d": (GAUSS2, 11, sampler, RUNS2[sampler],
                         functools.partial(gauss2_run, sampler)) for sampler in RUNS2},
    "gibbs-ising": (ISING6, 21, "gibbs", GIBBS_RUN, functools.partial(gibbs_run, "ising")),
}


@pytest.mark.parametrize("run", list(SHARED_RUNS))
def test_same_key_same_draws_other_key_other_draws(run):
    # Re-running a shared configuration reuses its compiled code: this costs only the sampling.
    model, key, sampler, kwargs, shared = SHARED_RUNS[run]
    first = shared()
    again = _sample(model, key, sampler, **kwargs)
    other = _sample(model, key + 1000, sampler, **kwargs)
    x = _draws(first)
    assert np.array_equal(x, _draws(again))
    for stat in ("lp", "acceptance_rate"):
        assert np.array_equal(_stat(first, stat), _stat(again, stat)), stat
    assert not np.array_equal(x, _draws(other))
    # the chains of one run are different streams too
    assert not np.array_equal(x[0], x[1])


@pytest.mark.parametrize("run", ["mala-2d", "gibbs-ising"])
def test_progress_bar_chunking_does_not_change_draws(run, monkeypatch):
    # With the bar on, each phase runs as ~20 jitted chunks instead of one scan (and MALA's
    # step-size adaptation state crosses the chunk boundaries); the stream must not change.
    # The CI variable forces the bar off, which would make the comparison vacuous: unset it.
    monkeypatch.delenv("CI", raising=False)
    model, key, sampler, kwargs, shared = SHARED_RUNS[run]
    plain = shared()
    with_bar = _sample(model, key, sampler, **{**kwargs, "progress_bar": True})
    assert np.array_equal(_draws(plain), _draws(with_bar))
    assert np.array_equal(_stat(plain, "lp"), _stat(with_bar, "lp"))


@pytest.mark.parametrize("run", ["mala-2d", "gibbs-ising"])
def test_chain_groups_do_not_change_draws(run, monkeypatch):
    # chain_method="parallel" splits the chains into one group per core; with 3 cores, 5 chains
    # are groups of 2, 2 and 1 (the last padded with a copy of chain 4). Each chain's draws must
    # be those of the single vectorized computation.
    from unnorm.samplers import chain_groups

    monkeypatch.setattr(chain_groups, "available_cores", lambda: 3)
    model, key, sampler, kwargs, _ = SHARED_RUNS[run]
    kwargs = {**kwargs, "num_chains": 5}
    assert chain_groups.choose_layout(5, "parallel").num_groups == 3
    grouped = _sample(model, key, sampler, **kwargs)
    vectorized = _sample(model, key, sampler, chain_method="vectorized", **kwargs)
    assert _draws(grouped).shape[:2] == (5, kwargs["num_samples"])
    assert np.array_equal(_draws(grouped), _draws(vectorized))
    for stat in ("lp", "acceptance_rate", "diverging"):
        assert np.array_equal(_stat(grouped, stat), _stat(vectorized, stat)), stat


@pytest.mark.parametrize("run", ["mala-2d", "gibbs-ising"])
def test_sampling_compile_options_leave_the_draws_unchanged(run, monkeypatch):
    # The sampling chunks prefer 512-bit vectors on the CPU (unnorm._xla); other vector code
    # may round differently, nothing more. For these runs the draws come out identical.
    from unnorm import _xla
    from unnorm.samplers import run as sample_run

    assert _xla.sampling_compiler_options() in ({}, {"xla_cpu_prefer_vector_width": 512})
    model, key, sampler, kwargs, shared = SHARED_RUNS[run]
    tuned = shared()
    plain = jax.jit(sample_run._run_chunk_impl, static_argnames=sample_run._RUN_CHUNK_STATIC)
    monkeypatch.setattr(sample_run, "_chunk_runner", lambda options=(): plain)
    default = _sample(model, key, sampler, **kwargs)
    np.testing.assert_allclose(_draws(tuned), _draws(default), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(_stat(tuned, "lp"), _stat(default, "lp"), rtol=1e-6, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("sampler", ["nuts", "hmc", "rwmh", "langevin"])
def test_progress_bar_chunking_does_not_change_draws_slow(sampler, monkeypatch):
    # Slow only because every chunk length is a fresh compilation (NUTS: ~20 s each).
    monkeypatch.delenv("CI", raising=False)
    kwargs = RUNS2[sampler]
    plain = gauss2_run(sampler)
    with_bar = _sample(GAUSS2, 11, sampler, **{**kwargs, "progress_bar": True})
    assert np.array_equal(_draws(plain), _draws(with_bar))


# ---- 6. the 'lp' statistic and a positive support -----------------------------------------------


def _assert_lp_is_minus_energy(model, idata, draws=(0, 1, 17, -1)):
    x = _draws(idata)
    lp = _stat(idata, "lp")
    assert lp.shape == x.shape[:2]
    # one compiled program for every (chain, draw) checked: run eagerly, each of the energy's
    # operations would compile on its own, for every model
    energy = jax.jit(jax.vmap(jax.vmap(lambda point: model.energy(model.params, point))))
    draws = list(draws)
    expected = -np.asarray(energy(jnp.asarray(x[:, draws], dtype=jnp.float32)), dtype=float)
    np.testing.assert_allclose(lp[:, draws], expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("sampler", ["nuts", "hmc", "mala", "langevin", "rwmh"])
def test_lp_is_minus_energy_real_support(sampler):
    _assert_lp_is_minus_energy(GAUSS2, gauss2_run(sampler))


@pytest.mark.parametrize("name", ["ising", "boltzmann"])
def test_lp_is_minus_energy_gibbs(name):
    model = {"ising": ISING6, "boltzmann": BOLTZMANN5}[name]
    _assert_lp_is_minus_energy(model, gibbs_run(name))


def _assert_flip_rate_counts_changed_sites(idata):
    # flip_rate of draw t is the fraction of sites that differ from draw t - 1 (a sweep visits
    # every site once); draw 0 is compared with the end of the warmup, which is not returned.
    x = np.asarray(idata.posterior["x"]).reshape(NUM_CHAINS, -1, np.prod(
        idata.posterior["x"].shape[2:], dtype=int))
    changed = np.mean(x[:, 1:] != x[:, :-1], axis=-1)
    np.testing.assert_allclose(np.asarray(idata.sample_stats["flip_rate"])[:, 1:], changed,
                               rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", ["ising", "boltzmann"])
def test_gibbs_flip_rate_counts_changed_sites(name):
    _assert_flip_rate_counts_changed_sites(gibbs_run(name))


@pytest.mark.parametrize("name", list(BLOCKED))
def test_blocked_gibbs_flip_rate_counts_changed_sites(name):
    _assert_flip_rate_counts_changed_sites(blocked_run(name))


def test_lp_is_minus_energy_positive_support():
    # lp is -E(x) of the drawn x, not the unconstrained log-density (which adds log|dx/du|).
    idata = gamma_run()
    assert (_draws(idata) > 0).all()
    _assert_lp_is_minus_energy(GAMMA, idata)


def test_nuts_positive_support_gamma_moments():
    # NUTS runs on u = log x with target -E(e^u) + u; wrong Jacobian handling would give
    # Gamma(a - 1, 1) (mean 2) instead of Gamma(a, 1) (mean 3, variance 3).
    x = _draws(gamma_run())[..., 0]
    assert_mcse_z({"E[x]": (x, GAMMA_SHAPE),
                   "Var[x] = E[(x - a)^2]": ((x - GAMMA_SHAPE) ** 2, GAMMA_SHAPE)})
