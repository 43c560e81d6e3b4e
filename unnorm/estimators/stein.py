"""Minimum kernel Stein discrepancy estimation (Song & Kingma 2021, §6.2, eq. 30; Barp et al. 2019).

The estimator minimizes the U-statistic estimate of the squared kernel Stein discrepancy between
the data and the model (Liu, Lee & Jordan 2016; Chwialkowski, Strathmann & Gretton 2016):

    Û(θ) = Σ_{i≠j} u_θ(x_i, x_j) / (n(n-1)),
    u_θ(x, y) = s(x)ᵀs(y) k(x, y) + s(x)ᵀ∇_y k(x, y) + s(y)ᵀ∇_x k(x, y) + tr ∇_x∇_y k(x, y),

with the model's score ``s(x) = -∇ₓE(x; θ)`` and a radial kernel ``k`` of
:mod:`unnorm.stein_kernels` whose bandwidth is fixed from the data (it must not move with
θ). Like score matching it needs no normalizing constant, and it resists outliers in location
(Barp et al. 2019 study the robustness of minimum Stein discrepancy estimators): an observation
far from the others gets a kernel weight that decays with its distance.

``Û`` is a pairwise statistic, not a mean of per-observation terms, so the per-observation
machinery of :mod:`unnorm.solvers` (closed form, Newton refinement and sandwich covariance built
from one observation at a time) does not apply. The estimator brings its own ``post_fit``:
trust-region Newton steps (Moré & Sorensen 1983) on the full-data ``Û`` with derivatives
assembled from kernel matrices (below), and the sandwich covariance of a U-statistic
M-estimator. An evaluation of those derivatives costs about as much as a few optimizer steps
(both read the ``n × n`` kernel matrix), so :func:`unnorm.fit` starts Newton from the initial
values rather than after the optimizer (``Traits.cheap_newton``).

**Derivatives.** ``u`` is bilinear in the scores: with ``r = x_i - x_j``, ``φ_ij = k(x_i, x_j)``
and ``φ'_ij`` the derivative of the kernel's profile in ``‖r‖²``,
``∂u_ij/∂s_i = φ_ij s_j - 2φ'_ij r`` and ``∂²u_ij/∂s_i∂s_j = φ_ij I``. Writing ``J_i = ∂s_i/∂θ``
(d × p) and ``B_i = Σ_{j≠i} ∂u_ij/∂s_i / (n-1)``,

    ∇Û  = (2/n) Σ_i J_iᵀ B_i,
    ∇²Û = 2 / (n(n-1)) Σ_{i≠j} φ_ij J_iᵀ J_j + (2/n) Σ_i ∇²_θ (B_iᵀ s_i(θ))   (B_i held fixed),

so everything is a product of the ``n × n`` matrices ``φ``, ``φ'`` with ``n × d × p`` arrays,
formed in blocks of rows: O(n² d p) time, no ``n²`` autodiff tape. Every sum runs over the
rows ``i``, each against all columns ``j``, so data whose rows are split over several devices
are summed where they are: each device takes its own rows, and the devices' sums are added.

**Standard errors.** ``∇Û`` is a second-order U-statistic with kernel ``∇_θ u_θ(x, y)``; by
Hoeffding's decomposition its variance is ``(4/n) Var h₁(x) + O(1/n²)``, with
``h₁(x) = E_y ∇_θ u_θ(x, y)`` estimated by ``h₁ᵢ = Σ_{j≠i} ∇_θ u_θ(x_i, x_j) / (n-1)`` (the
gradient of the row mean ``m_i``). The sandwich of :mod:`unnorm.uncertainty` with the
"observation gradients" ``2 h₁ᵢ`` and ``H = ∇²Û`` gives ``Cov θ̂ ≈ H⁻¹ (4 Var h₁) H⁻¹ / n``
(Hoeffding 1948; Barp et al. 2019 give the estimator's asymptotic normality).
"""

from __future__ import annotations

import dataclasses
import functools
import warnings
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from .. import _checks
from ..model import Model
from ..newton import constrained_jacobian
from ..sharding import RowShards, sum_over_rows
from ..stein_kernels import (
    GRAM_MAX_ENTRIES,
    KERNELS,
    SteinGram,
    block_rows,
    check_bandwidth,
    gram_ustat,
    kernel_profile,
    kernel_slope,
    median_bandwidth,
    row_blocks,
    stein_gram,
    stein_row_means,
)
from ..trust_region import trust_region_newton
from ..uncertainty import delta_method, sandwich_from_moments
from .base import Batch, Estimator, Objective, PostFit, Traits

__all__ = ["KSD"]

class KSDState(NamedTuple):
    """The kernel bandwidth: the user's value, or the median heuristic of the full data
    (:func:`unnorm.stein_kernels.median_bandwidth`, the rule :func:`unnorm.ksd_test` uses),
    fixed for the whole fit; and the data's :class:`~unnorm.stein_kernels.SteinGram` (``()``
    above ``GRAM_MAX_ENTRIES`` pairs and for fits that take minibatches, which never read it),
    through which a full-batch step or Newton evaluation reads ``Û`` with matrix products
    instead of ``n²`` kernel evaluations and their autodiff tape."""

    bandwidth: jax.Array
    gram: SteinGram | tuple = ()


def _check_pairs(size: int, what: str) -> None:
    # a static shape: safe to check while tracing
    if size < 2:
        raise ValueError(
            f"estimator 'ksd' compares pairs of observations and needs at least 2 per {what}; "
            f"got {size}. Use more data or a larger batch_size.")


# ---- scores and the full-data derivatives -------------------------------------------------------

def _flat_scores(model: Model, params, x: jax.Array) -> jax.Array:
    """Scores ``-∇ₓE(x_i; θ)`` of a batch, flattened to ``(b, d)``."""
    return jax.vmap(lambda xi: model.score(params, xi))(x).reshape(x.shape[0], -1)


def _kernel_sums(index, sa, xa, scores, jac, jac_x, x, kernel: str, bandwidth):
    """For the rows ``index`` of the Stein matrix (diagonal and padding rows excluded): the row
    sums of ``u``, of ``∂u_ij/∂s_i`` (``B`` times n-1), and ``φ J``, ``φ' J``, ``φ' Jᵀx``."""
    n, d = x.shape
    sq_a, sq = jnp.sum(xa * xa, axis=1), jnp.sum(x * x, axis=1)
    q = jnp.maximum(sq_a[:, None] + sq[None, :] - 2.0 * (xa @ x.T), 0.0)
    keep = (index[:, None] != jnp.arange(n)[None, :]) & (index[:, None] < n)
    phi, d1, d2 = (jnp.where(keep, a, 0.0) for a in kernel_profile(kernel, q, bandwidth))
    mixed = (xa @ scores.T + sa @ x.T
             - jnp.sum(sa * xa, axis=1)[:, None] - jnp.sum(scores * x, axis=1)[None, :])
    u = phi * (sa @ scores.T) + 2.0 * d1 * mixed - 4.0 * d2 * q - 2.0 * d * d1
    # ∂u_ij/∂s_i = φ s_j - 2φ' (x_i - x_j)
    b = phi @ scores - 2.0 * (jnp.sum(d1, axis=1)[:, None] * xa - d1 @ x)
    flat_jac = jac.reshape(n, -1)
    return (jnp.sum(u, axis=1), b, (phi @ flat_jac).reshape(-1, *jac.shape[1:]),
            (d1 @ flat_jac).reshape(-1, *jac.shape[1:]), d1 @ jac_x)


def _pair_sums(flat, template, rows, first_row, columns, bandwidth, *, model: Model,
               kernel: str, block_size: int | None = None):
    """The U-statistic's sums over the rows ``rows`` of the Stein matrix, observations
    ``first_row, first_row + 1, ...`` of ``columns`` (the whole data set; rows at or past its
    length, padding, weigh 0), each row against every column: ``Σ m_i``, ``Σ 2 J_iᵀB_i``, the
    rows' part of ``n ∇²Û`` and their ``h₁ᵢ`` (module docstring). Divided by ``n`` (and summed
    over the devices that hold the other rows) they are :func:`_derivatives`."""
    _, unravel = ravel_pytree(template)
    n, m = columns.shape[0], rows.shape[0]
    points = columns.reshape(n, -1)
    center = jnp.mean(points, axis=0)
    x = points - center

    def scores_of(f, at):
        return _flat_scores(model, model.to_constrained(unravel(f)), at)

    def jacobian(at):
        # J_i = ∂s_i/∂θ, (b, d, p): p forward passes through the score, cheap
        return jnp.moveaxis(jax.vmap(lambda v: jax.jvp(lambda f: scores_of(f, at), (flat,),
                                                       (v,))[1])(
            jnp.eye(flat.size, dtype=flat.dtype)), 0, -1)

    scores, jac = scores_of(flat, columns), jacobian(columns)
    jac_x = jnp.einsum("ndp,nd->np", jac, x)
    row_scores, row_jac = scores_of(flat, rows), jacobian(rows)
    row_x = rows.reshape(m, -1) - center

    # each block of rows against all n columns: at most the entries of one device's matrix
    block = min(block_rows(n, block_size), m)
    positions, s_blocks, x_blocks = row_blocks(m, block, row_scores, row_x)
    sums = jax.lax.map(
        lambda a: _kernel_sums(*a, scores, jac, jac_x, x, kernel, bandwidth),
        (first_row + positions, s_blocks, x_blocks))
    # the blocks' own padding rows are cut; rows past the data (a device's padding) have
    # global indices _kernel_sums weighs 0
    u_sum, b_sum, phi_jac, d1_jac, d1_jac_x = (a.reshape(-1, *a.shape[2:])[:m] for a in sums)

    b = b_sum / (n - 1)                                     # B_i = ∂m_i/∂s_i
    value = jnp.sum(u_sum) / (n - 1)
    grad = 2.0 * jnp.einsum("ndp,nd->p", row_jac, b)
    cross = 2.0 / (n - 1) * jnp.einsum("ndp,ndq->pq", row_jac, phi_jac)
    weights = jax.lax.stop_gradient(2.0 * b)
    curvature = jax.hessian(lambda f: jnp.sum(weights * scores_of(f, rows)))(flat)
    # h₁ᵢ = J_iᵀB_i + Σ_{j≠i} J_jᵀ ∂u_ij/∂s_j / (n-1), with ∂u_ij/∂s_j = φ s_i + 2φ' (x_i - x_j)
    h1 = (jnp.einsum("ndp,nd->np", row_jac, b)
          + (jnp.einsum("ndp,nd->np", phi_jac, row_scores)
             + 2.0 * (jnp.einsum("ndp,nd->np", d1_jac, row_x) - d1_jac_x)) / (n - 1))
    return value, grad, cross + curvature, h1


@functools.partial(jax.jit, static_argnames=("model", "kernel", "block_size"))
def _derivatives(flat, template, data, bandwidth, *, model: Model, kernel: str,
                 block_size: int | None = None):
    """``Û``, its gradient and Hessian in the flat unconstrained parameters, and ``h₁``
    ``(n, p)``, the gradients of the row means (module docstring). The Stein matrix is formed
    ``block_size`` rows at a time (default: all rows up to ``n² = 2²⁴`` entries)."""
    n = data.shape[0]
    value, grad, hessian, h1 = _pair_sums(flat, template, data, 0, data, bandwidth,
                                          model=model, kernel=kernel, block_size=block_size)
    return value / n, grad / n, hessian / n, h1


@functools.partial(jax.jit, static_argnames=("model", "kernel", "mesh", "num_rows"))
def _sharded_derivatives(flat, template, padded, bandwidth, *, model: Model, kernel: str,
                         mesh, num_rows: int):
    """``Û``, its gradient and Hessian, and the sandwich's middle ``J = (1/n) Σ 4 h₁ᵢh₁ᵢᵀ``,
    from data whose rows are split over the devices of ``mesh`` (``padded``, its first
    ``num_rows`` rows the observations): each device sums its own rows of the Stein matrix
    against every column (the columns gathered to every device) and ``psum`` adds the
    devices' sums (:func:`unnorm.sharding.sum_over_rows`). The same numbers as
    :func:`_derivatives`, up to the order of the sums."""
    def local_sums(rows, first_row, total_rows, flat, template, columns, bandwidth):
        value, grad, hessian, h1 = _pair_sums(flat, template, rows, first_row,
                                              columns[:total_rows], bandwidth, model=model,
                                              kernel=kernel)
        return value, grad, hessian, 4.0 * (h1.T @ h1)

    sums = sum_over_rows(local_sums, mesh, padded, num_rows, flat, template, padded, bandwidth)
    return tuple(total / num_rows for total in sums)


@functools.partial(jax.jit, static_argnames=("model", "kernel", "with_h1"))
def _gram_derivatives(flat, template, data, gram: SteinGram, bandwidth=None, *, model: Model,
                      kernel: str | None = None, with_h1: bool = False):
    """``Û``, its gradient and Hessian in the flat unconstrained parameters, and with
    ``with_h1`` also ``h₁`` (``kernel`` and ``bandwidth`` then needed), as :func:`_derivatives`
    gives them, from the data's :class:`~unnorm.stein_kernels.SteinGram`: the kernel matrix is
    read, not evaluated again (``n²`` powers). ``∇Û`` needs only ``B_i = ((φS)_i - 2c_i)/(n-1)``,
    so one evaluation costs two products of the ``n × n`` matrix, with the scores and with
    their Jacobian; ``h₁`` adds the matrix ``φ'``, an elementwise function of ``φ``
    (:func:`~unnorm.stein_kernels.kernel_slope`)."""
    _, unravel = ravel_pytree(template)
    n = data.shape[0]

    def scores_of(f):
        return _flat_scores(model, model.to_constrained(unravel(f)), data)

    scores = scores_of(flat)
    jac = jnp.moveaxis(jax.vmap(lambda v: jax.jvp(scores_of, (flat,), (v,))[1])(
        jnp.eye(flat.size, dtype=flat.dtype)), 0, -1)
    weighted = gram.weights @ scores
    value = ((jnp.sum(scores * weighted) - 4.0 * jnp.sum(scores * gram.drift) + gram.constant)
             / (n * (n - 1)))
    b = (weighted - 2.0 * gram.drift) / (n - 1)
    grad = 2.0 / n * jnp.einsum("ndp,nd->p", jac, b)
    phi_jac = (gram.weights @ jac.reshape(n, -1)).reshape(jac.shape)
    cross = 2.0 / (n * (n - 1)) * jnp.einsum("ndp,ndq->pq", jac, phi_jac)
    weights = jax.lax.stop_gradient(2.0 / n * b)
    curvature = jax.hessian(lambda f: jnp.sum(weights * scores_of(f)))(flat)
    if not with_h1:
        return value, grad, cross + curvature
    points = data.reshape(n, -1)
    x = points - jnp.mean(points, axis=0)
    d1 = kernel_slope(kernel, gram.weights, bandwidth)
    d1_jac = (d1 @ jac.reshape(n, -1)).reshape(jac.shape)
    d1_jac_x = d1 @ jnp.einsum("ndp,nd->np", jac, x)
    h1 = (jnp.einsum("ndp,nd->np", jac, b)
          + (jnp.einsum("ndp,nd->np", phi_jac, scores)
             + 2.0 * (jnp.einsum("ndp,nd->np", d1_jac, x) - d1_jac_x)) / (n - 1))
    return value, grad, cross + curvature, h1


def _outer(h1) -> np.ndarray:
    """The sandwich's middle ``J = (1/n) Σ_i (2h₁ᵢ)(2h₁ᵢ)ᵀ`` from the ``(n, p)`` ``h₁``."""
    h1 = np.asarray(h1, dtype=float)
    return 4.0 * (h1.T @ h1) / h1.shape[0]


# ---- the estimator ------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class KSD(Estimator):
    """Minimum kernel Stein discrepancy estimation (Song & Kingma 2021, §6.2, eq. 30; Barp et al.
    2019).

    Minimizes the U-statistic estimate of the squared kernel Stein discrepancy,

        Û(θ) = Σ_{i≠j} u_θ(x_i, x_j) / (n(n-1)),
        u_θ(x, y) = s(x)ᵀs(y) k(x, y) + s(x)ᵀ∇_y k + s(y)ᵀ∇_x k + tr ∇_x∇_y k,

    with ``s = -∇ₓE(x; θ)`` (Liu, Lee & Jordan 2016; Barp, Briol, Duncan, Girolami & Mackey
    2019, "Minimum Stein discrepancy estimators"). No normalizing constant is needed. The
    estimate is found or finished by trust-region Newton steps on the full-data ``Û`` (from
    the initial values with the default optimizer and full batch, where an evaluation of the
    derivatives costs a few optimizer steps; after the optimizer otherwise, e.g. with
    ``method="optimizer"``; skipped without standard errors, as for the other estimators),
    and the standard errors are the sandwich of a U-statistic M-estimator,
    ``H⁻¹ (4 Var h₁) H⁻¹ / n`` (module docstring). Each evaluation costs O(n² d).

    Parameters
    ----------
    kernel : {"imq", "rbf"}
        The base kernel (:mod:`unnorm.stein_kernels`): ``"imq"``,
        ``(1 + ‖x - y‖²/h²)^(-1/2)``, whose estimator is robust to outliers (Barp et al. 2019,
        §4); ``"rbf"``, ``exp(-‖x - y‖²/(2h²))``.
    bandwidth : "median" or float
        ``h``, fixed during the fit (it must not depend on θ). ``"median"``: the median pairwise
        distance of the full data, taken once before the fit
        (:func:`unnorm.stein_kernels.median_bandwidth`, the rule of :func:`unnorm.ksd_test`:
        all pairs up to 5000 observations, a fixed random subset of 5000 beyond).

    Examples
    --------
    >>> import jax, numpy as np, unnorm as un
    >>> x = np.random.default_rng(0).normal(1.0, 0.5, size=(500, 1))
    >>> fit = un.fit(un.models.gaussian(1), x, "ksd", key=jax.random.key(0), progress_bar=False)
    >>> bool(abs(fit.params["mu"][0] - 1.0) < 4 * fit.stderr["mu"][0])
    True
    >>> bool(abs(fit.params["prec"][0, 0] - 4.0) < 4 * fit.stderr["prec"][0, 0])
    True
    """

    kernel: str = "imq"
    bandwidth: float | str = "median"
    name = "ksd"

    def __post_init__(self):
        _checks.check_choice(self.kernel, "kernel", KERNELS)
        # a plain float: the estimator is hashed (compiled objectives are cached on it)
        object.__setattr__(self, "bandwidth", check_bandwidth(self.bandwidth))

    def check(self, model: Model) -> None:
        support = model.support
        if support.is_discrete:
            raise ValueError(
                f"estimator 'ksd' needs a continuous support, but the model's support is "
                f"{support!r}: the Stein operator uses the score -∇ₓE(x), undefined on binary or "
                "spin data. For binary or spin data use pseudo-likelihood, estimator='pl'."
            )
        if support.kind != "real":
            raise ValueError(
                f"estimator 'ksd' on the {support!r} support: the Stein identity behind the KSD "
                "needs p(x)k(x, ·) to vanish on the boundary of the support, which many models "
                "there do not satisfy (an exponential density at 0). Use estimator='sm' or 'ssm', "
                "which switch to generalized score matching on bounded supports."
            )

    def build(self, model: Model, resample: bool) -> Objective:
        # no noise: ``resample`` changes nothing
        kernel = self.kernel
        fixed = None if self.bandwidth == "median" else float(self.bandwidth)

        def init_minibatch(params, key, data):
            dtype = ravel_pytree(params)[0].dtype
            n = data.shape[0]
            _check_pairs(n, "data set")
            points = data.reshape(n, -1)
            h = fixed if fixed is not None else median_bandwidth(np.asarray(points))
            return KSDState(jnp.asarray(h, dtype=dtype))

        def init(params, key, data):
            state = init_minibatch(params, key, data)
            n = data.shape[0]
            if n * n > GRAM_MAX_ENTRIES:
                return state
            points = jnp.asarray(data.reshape(n, -1), dtype=state.bandwidth.dtype)
            return state._replace(gram=stein_gram(points, kernel=kernel,
                                                  bandwidth=state.bandwidth))

        def row_means(params, state, batch: Batch):
            b = batch.x.shape[0]
            _check_pairs(b, "batch")
            points = batch.x.reshape(b, -1)
            means = stein_row_means(_flat_scores(model, params, batch.x), points, kernel=kernel,
                                    bandwidth=state.bandwidth)
            return means, state

        def terms(params, state, batch, key):
            # ℓ_i = Σ_{j≠i} u(x_i, x_j) / (b-1): their mean is the U-statistic of the batch
            return row_means(params, state, batch)[0]

        def loss(params, state, batch, key):
            if isinstance(state.gram, SteinGram) and batch.x.shape[0] == len(state.gram.weights):
                # the full data in the order of init (the driver's full batch): Û through
                # the precomputed kernel matrix, the same value
                return gram_ustat(_flat_scores(model, params, batch.x), state.gram), (state, {})
            means, state = row_means(params, state, batch)
            return jnp.mean(means), (state, {})

        def post_fit(params, state, data, key, compute_se, progress_bar,
                     devices=None) -> PostFit:
            # devices go unread: KSD samples nothing, and its sums run where data's rows are
            n = data.shape[0]
            _check_pairs(n, "data set")
            if not compute_se:
                # as the driver does for the other estimators: without standard errors (a
                # large model) no p × p Newton steps, the optimizer's answer stands
                return PostFit(params, None, None)
            h = state.bandwidth
            u = model.to_unconstrained(params)
            flat, unravel = ravel_pytree(u)
            static = dict(model=model, kernel=kernel)
            if isinstance(data, RowShards):
                # rows split over several devices: each sums its rows' pairs where they are
                def derivatives(f, with_outer=False):
                    found = _sharded_derivatives(f, u, data.array, h, mesh=data.mesh,
                                                 num_rows=data.num_rows, **static)
                    return found if with_outer else found[:3]
            elif isinstance(state.gram, SteinGram) and len(state.gram.weights) == n:
                def derivatives(f, with_outer=False):
                    found = _gram_derivatives(f, u, data, state.gram, h, with_h1=with_outer,
                                              **static)
                    return found if not with_outer else (*found[:3], _outer(found[3]))
            else:
                # a minibatch fit (or n beyond the matrix's limit): the kernel in row blocks
                def derivatives(f, with_outer=False):
                    found = _derivatives(f, u, data, h, **static)
                    return found[:3] if not with_outer else (*found[:3], _outer(found[3]))
            # Trust-region Newton steps: from the initial values, where the driver starts KSD
            # (Traits.cheap_newton), the Hessian of Û is often indefinite, and line-searched
            # Newton steps along its shifted inverse overflowed to NaN and were halved back
            # many times each (the counts are in benchmarks/README.md); near a minimum, after
            # the optimizer, the trust region takes Newton's own steps.
            flat, converged = trust_region_newton(derivatives, flat)
            if not converged:
                warnings.warn(
                    "the Newton steps of estimator 'ksd' did not reach a minimum of the full-data "
                    "KSD to working precision; the estimate and its standard errors may be off. "
                    "Start nearer the minimizer (init=...) or let the optimizer run first "
                    "(method='optimizer', more num_steps).",
                    RuntimeWarning, stacklevel=3)
            fitted = model.to_constrained(unravel(flat))
            _, _, hessian, outer = derivatives(flat, with_outer=True)
            cov_u = sandwich_from_moments(np.asarray(hessian), np.asarray(outer), n).covariance
            covariance = delta_method(constrained_jacobian(flat, u, model.to_constrained), cov_u)
            return PostFit(fitted, covariance, None, refined_by="newton",
                           covariance_from="U-statistic sandwich", converged=bool(converged),
                           hessian=np.asarray(hessian, dtype=float))

        return Objective(init, loss, terms,
                         Traits(convex_if_linear_energy=True, cheap_newton=True,
                                sharded_post_fit=True),
                         post_fit=post_fit, init_minibatch=init_minibatch)
