"""Statistical checks of SM, DSM and SSM: |θ̂ - θ| / SE < 4 against known truths (DESIGN.md).

Data are exact draws (NumPy, rejection sampling where needed) so that the observations are
i.i.d. and the sandwich standard errors apply. Model objects are shared so compiled code is
reused.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import unnorm as un

N = 2000
KEY = jax.random.key(0)


def z_scores(fit, truth: dict) -> np.ndarray:
    scores = []
    for name, value in truth.items():
        se = np.asarray(fit.stderr[name])
        assert np.all(se[np.asarray(value) != 0] > 0) or np.all(se > 0)
        diff = np.asarray(fit.params[name]) - np.asarray(value)
        scores.append(np.ravel(diff / np.where(se > 0, se, np.inf)))
    return np.concatenate(scores)


# ---- Gaussian graphical model, d = 10, sparse (tridiagonal) precision ----------------------------

D_GGM = 10
K_TRUE = (np.eye(D_GGM) * 2.0 + np.diag(np.full(D_GGM - 1, -0.8), 1)
          + np.diag(np.full(D_GGM - 1, -0.8), -1))


def _ggm_energy(params, x):
    return 0.5 * x @ params["K"] @ x


GGM = un.Model(_ggm_energy, params={"K": jnp.eye(D_GGM)},
               constraints={"K": un.constraints.positive_definite},
               support=un.supports.real(D_GGM), name="ggm")
GGM_DATA = np.random.default_rng(10).multivariate_normal(
    np.zeros(D_GGM), np.linalg.inv(K_TRUE), size=N)


@pytest.mark.parametrize("estimator", [
    un.estimators.SM(),
    pytest.param(un.estimators.SSM(num_projections=1), marks=pytest.mark.slow),
    # DSM fits (Σ + σ²I)⁻¹: a bias of about σ²K² ≈ 0.01 here, a fraction of the SE (≈ 0.05)
    pytest.param(un.estimators.DSM(sigma=0.05, control_variate=True), marks=pytest.mark.slow),
], ids=["sm", "ssm", "dsm"])
def test_ggm_recovers_sparse_precision(estimator):
    fit = un.fit(GGM, GGM_DATA, estimator, key=KEY, progress_bar=False)
    assert fit.method == "closed form"
    upper = np.triu_indices(D_GGM)
    se = fit.stderr["K"][upper]
    assert np.all(se > 0)
    z = (fit.params["K"][upper] - K_TRUE[upper]) / se
    assert np.max(np.abs(z)) < 4, z
    # the symmetric redundancy of K is reported consistently
    np.testing.assert_allclose(fit.stderr["K"], fit.stderr["K"].T, rtol=1e-5)


# ---- Gaussian with unknown mean and precision: SM equals the MLE exactly -------------------------

def test_sm_gaussian_equals_mle_in_float64():
    rng = np.random.default_rng(3)
    a = rng.normal(size=(3, 3))
    x = rng.multivariate_normal([1.0, -2.0, 0.5], a @ a.T + np.eye(3), size=N)
    with jax.enable_x64(True):
        fit = un.fit(un.models.gaussian(3), x, "sm", key=KEY, progress_bar=False)
    assert fit.params["mu"].dtype == np.float64
    mean = x.mean(axis=0)
    prec = np.linalg.inv(np.cov(x.T, bias=True))
    np.testing.assert_allclose(fit.params["mu"], mean, rtol=1e-6, atol=1e-6 * np.abs(mean).max())
    np.testing.assert_allclose(fit.params["prec"], prec, rtol=1e-6,
                               atol=1e-6 * np.abs(prec).max())
    assert fit.converged and fit.method in ("closed form", "newton", "optimizer + newton")
    assert np.all(fit.stderr["mu"] > 0)


@pytest.mark.parametrize("estimator", [
    un.estimators.SSM(num_projections=1),
    un.estimators.DSM(sigma=0.05, control_variate=True),
], ids=["ssm", "dsm"])
def test_gaussian_mean_and_precision_recovered(estimator):
    mean = np.array([1.0, -2.0, 0.5])
    prec = np.array([[2.0, 0.5, 0.0], [0.5, 1.5, -0.4], [0.0, -0.4, 1.0]])
    x = np.random.default_rng(11).multivariate_normal(mean, np.linalg.inv(prec), size=N)
    fit = un.fit(un.models.gaussian(3), x, estimator, key=KEY, progress_bar=False)
    assert np.max(np.abs(z_scores(fit, {"mu": mean, "prec": prec}))) < 4


# ---- a 2-D non-Gaussian exponential family (quartic) ---------------------------------------------

QUARTIC_TRUTH = {"a": 1.0, "b": -0.8, "c": -0.5}


def _quartic_energy(params, x):
    return (params["a"] * jnp.sum(x**4) / 4 + params["b"] * x[0] * x[1]
            + params["c"] * jnp.sum(x**2) / 2)


def _quartic_sample(n: int, rng) -> np.ndarray:
    """Rejection sampling from exp(-E) with a N(0, 1.5²I) proposal; the bound comes from a grid
    with a 10% margin."""
    a, b, c = QUARTIC_TRUTH["a"], QUARTIC_TRUTH["b"], QUARTIC_TRUTH["c"]

    def log_target(x):  # -E row by row
        return -(a * np.sum(x**4, axis=1) / 4 + b * x[:, 0] * x[:, 1]
                 + c * np.sum(x**2, axis=1) / 2)

    grid = np.stack(np.meshgrid(np.linspace(-5, 5, 401), np.linspace(-5, 5, 401)), -1)
    grid = grid.reshape(-1, 2)
    log_prop = lambda x: -0.5 * np.sum(x**2, axis=1) / 1.5**2  # noqa: E731
    log_bound = np.max(log_target(grid) - log_prop(grid)) + np.log(1.1)
    out = []
    while sum(len(o) for o in out) < n:
        prop = rng.normal(scale=1.5, size=(20000, 2))
        accept = np.log(rng.uniform(size=20000)) < log_target(prop) - log_prop(prop) - log_bound
        out.append(prop[accept])
    return np.concatenate(out)[:n]


QUARTIC = un.Model(_quartic_energy, params={"a": 0.5, "b": 0.0, "c": 0.0},
                   support=un.supports.real(2), name="quartic")
QUARTIC_DATA = _quartic_sample(N, np.random.default_rng(4))


@pytest.mark.parametrize("estimator", [
    un.estimators.SM(),
    pytest.param(un.estimators.SSM(num_projections=2), marks=pytest.mark.slow),
    pytest.param(un.estimators.DSM(sigma=0.02, control_variate=True), marks=pytest.mark.slow),
], ids=["sm", "ssm", "dsm"])
def test_quartic_family_recovered(estimator):
    fit = un.fit(QUARTIC, QUARTIC_DATA, estimator, key=KEY, progress_bar=False)
    z = z_scores(fit, QUARTIC_TRUTH)
    assert np.max(np.abs(z)) < 4, (fit.params, fit.stderr)


def test_optimizer_route_reaches_the_closed_form():
    closed = un.fit(QUARTIC, QUARTIC_DATA, "sm", key=KEY, progress_bar=False)
    iterative = un.fit(QUARTIC, QUARTIC_DATA, "sm", key=KEY, optimizer=optax.adam(0.05),
                       num_steps=1000, method="optimizer", progress_bar=False)
    assert closed.method == "closed form"
    assert iterative.method == "optimizer + newton" and iterative.num_steps > 0
    for name in QUARTIC_TRUTH:
        np.testing.assert_allclose(iterative.params[name], closed.params[name], rtol=1e-3,
                                   atol=1e-4)
        np.testing.assert_allclose(iterative.stderr[name], closed.stderr[name], rtol=1e-2)


def test_control_variate_cuts_the_variance_of_dsm():
    plain = un.fit(QUARTIC, QUARTIC_DATA, un.estimators.DSM(sigma=0.02, control_variate=False),
                   key=KEY,
                   progress_bar=False)
    with_cv = un.fit(QUARTIC, QUARTIC_DATA, un.estimators.DSM(sigma=0.02),
                     key=KEY, progress_bar=False)
    # eq. 12: DSM's noise terms grow as 1/σ; the control variate of eq. 13-14 removes them
    for name in QUARTIC_TRUTH:
        assert plain.stderr[name] > 3 * with_cv.stderr[name]


# ---- bounded supports: generalized score matching ------------------------------------------------

def _gamma_energy(params, x):
    return jnp.sum(params["rate"] * x - (params["shape"] - 1.0) * jnp.log(x))


GAMMA = un.Model(_gamma_energy, params={"shape": jnp.full(2, 2.0), "rate": jnp.ones(2)},
                 support=un.supports.positive(2), name="gamma")
GAMMA_DATA = np.random.default_rng(5).gamma(3.0, 1 / 2.0, size=(N, 2))


@pytest.mark.parametrize("estimator", ["sm", "ssm"])
def test_positive_support_uses_generalized_sm(estimator):
    fit = un.fit(GAMMA, GAMMA_DATA, estimator, key=KEY, progress_bar=False)
    z = z_scores(fit, {"shape": np.full(2, 3.0), "rate": np.full(2, 2.0)})
    assert np.max(np.abs(z)) < 4, (fit.params, fit.stderr)


def _interval_energy(params, x):
    return jnp.sum(params["t1"] * x + params["t2"] * x**2)


def test_interval_support_uses_generalized_sm():
    t1, t2 = 0.7, -1.5
    rng = np.random.default_rng(6)
    bound = np.exp(-(t1 * np.linspace(-1, 1, 2001) + t2 * np.linspace(-1, 1, 2001) ** 2)).max()
    draws = rng.uniform(-1, 1, size=40000)
    keep = rng.uniform(size=draws.size) * bound * 1.01 < np.exp(-(t1 * draws + t2 * draws**2))
    x = draws[keep][:N, None]
    assert x.shape == (N, 1)
    model = un.Model(_interval_energy, params={"t1": 0.0, "t2": 0.0},
                     support=un.supports.interval(-1.0, 1.0, 1))
    fit = un.fit(model, x, "sm", key=KEY, progress_bar=False)
    assert np.max(np.abs(z_scores(fit, {"t1": t1, "t2": t2}))) < 4


def test_boundary_weight_vanishes_on_the_boundary():
    weight = un.estimators.score_matching.boundary_weight(un.supports.interval(-1.0, 2.0, 3))
    h, dh = weight(jnp.array([-1.0, 0.5, 2.0]))
    np.testing.assert_allclose(h, [0.0, 2.25, 0.0])
    np.testing.assert_allclose(dh, [0.0, 3.0, 0.0], atol=1e-6)
    truncated = un.estimators.score_matching.boundary_weight(un.supports.positive(2), 1.0)
    h, dh = truncated(jnp.array([0.5, 3.0]))
    np.testing.assert_allclose(h, [0.25, 1.0])
    np.testing.assert_allclose(dh, [1.0, 0.0])


def test_hessian_diagonal_matches_jax_hessian():
    def energy(x):
        return jnp.sum(jnp.sin(x) * x[::-1]) + x[0] ** 2 * x[1]

    # one compiled program for the derivatives and their references (op by op, each of the
    # Hessian's operations would be compiled on its own)
    @jax.jit
    def derivatives(x):
        return (*un.estimators.score_matching.grad_and_hessian_diagonal(energy, x),
                jax.grad(energy)(x), jnp.diag(jax.hessian(energy)(x)))

    grad, diag, grad_ref, diag_ref = derivatives(jnp.array([0.3, -1.2, 0.8]))
    np.testing.assert_allclose(grad, grad_ref, rtol=1e-6)
    np.testing.assert_allclose(diag, diag_ref, rtol=1e-5, atol=1e-6)


LAPLACIAN_ENERGIES = {
    "polynomial": (lambda x: jnp.sum(jnp.sin(x) * x[::-1]) + x[0] ** 2 * x[1], (3,)),
    "softplus-logsumexp": (lambda x: jnp.sum(jax.nn.softplus(2.0 * x)) + jax.nn.logsumexp(x),
                           (4,)),
    "matrix event": (lambda x: jnp.trace(x @ x.T @ x) + jnp.sum(jnp.exp(-x)), (2, 2)),
    # a scan over x is beyond the forward Laplacian: the Hessian-vector route takes over
    "scan over x": (lambda x: jax.lax.scan(lambda c, xi: (c + jnp.cos(c * xi), None), 0.5,
                                            x)[0], (3,)),
}


@pytest.mark.parametrize("name", list(LAPLACIAN_ENERGIES))
def test_laplacian_matches_the_trace_of_jax_hessian(name, caplog):
    energy, shape = LAPLACIAN_ENERGIES[name]
    x = jnp.asarray(np.random.default_rng(3).normal(size=shape), dtype=jnp.float32)

    def trace_of_hessian(y):
        return jnp.trace(jax.hessian(energy)(y).reshape(x.size, x.size))

    # under vmap and a parameter gradient, as inside un.fit
    def mean_laplacian(scale):
        return jnp.mean(jax.vmap(lambda y: un.estimators.score_matching.grad_and_laplacian(
            lambda z: scale * energy(z), y)[1])(jnp.stack([x, 0.5 * x])))

    # one compiled program for the derivatives and their references (op by op, each of the
    # Hessian's operations would be compiled on its own)
    @jax.jit
    def derivatives(x):
        grad, laplacian = un.estimators.score_matching.grad_and_laplacian(energy, x)
        return (grad, laplacian, jax.grad(energy)(x), trace_of_hessian(x),
                jax.grad(mean_laplacian)(2.0),
                jnp.mean(jnp.stack([trace_of_hessian(y) for y in (x, 0.5 * x)])))

    grad, laplacian, grad_ref, laplacian_ref, scaled, scaled_ref = derivatives(x)
    np.testing.assert_allclose(grad, grad_ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(laplacian, laplacian_ref, rtol=1e-5, atol=1e-5)
    assert not caplog.records  # the tracing library's messages stay quiet
    np.testing.assert_allclose(scaled, scaled_ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("num", [1, 3])
def test_quadratic_forms_match_jax_hessian(num):
    def energy(x):
        return jnp.sum(jnp.tanh(x) * x**2) + x[0] * x[2]

    # one compiled program for the derivatives and their references
    @jax.jit
    def derivatives(x, vs):
        return (*un.estimators.score_matching._grad_and_quadratic_forms(energy, x, vs),
                jax.grad(energy)(x), jnp.einsum("pi,ij,pj->p", vs, jax.hessian(energy)(x), vs))

    vs = jnp.asarray(np.random.default_rng(num).normal(size=(num, 3)), dtype=jnp.float32)
    grad, quad, grad_ref, quad_ref = derivatives(jnp.array([0.4, -0.7, 1.1]), vs)
    assert quad.shape == (num,)
    np.testing.assert_allclose(grad, grad_ref, rtol=1e-6)
    np.testing.assert_allclose(quad, quad_ref, rtol=1e-5)
