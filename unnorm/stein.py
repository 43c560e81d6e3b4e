"""The kernel Stein discrepancy (KSD) and the KSD goodness-of-fit test :func:`ksd_test`.

The Stein discrepancy of seed 004, eq. 30, is

    D(q ‖ p) = sup_{f ∈ F} E_{x~q}[ s_p(x)ᵀ f(x) + tr ∇ₓf(x) ],   s_p = ∇ₓ log p = -∇ₓE,

and needs only the model's score, never its normalizing constant. When ``F`` is the unit ball of
a reproducing-kernel Hilbert space of vector fields with kernel ``k`` the supremum has a closed
form (Liu, Lee & Jordan 2016; Chwialkowski, Strathmann & Gretton 2016; Gorham & Mackey 2017):

    KSD²(q ‖ p) = E_{x, y ~ q} [u_p(x, y)],
    u_p(x, y) = s(x)ᵀs(y) k(x, y) + s(x)ᵀ∇_y k(x, y) + s(y)ᵀ∇_x k(x, y) + tr ∇_x∇_y k(x, y),

estimated without bias by the U-statistic ``Û = Σ_{i≠j} u_p(x_i, x_j) / (n(n-1))``.

The module has two layers:

* pure JAX functions of precomputed scores ``(n, d)`` and points ``(n, d)`` —
  :func:`stein_kernel_matrix`, :func:`stein_kernel_cross`, :func:`stein_row_means`,
  :func:`ksd_ustat` — usable inside ``jax.jit`` and differentiable in the scores (so in θ through
  ``s(x; θ)``), for estimators that minimize the KSD;
* the checked, model-level calls :func:`ksd` and :func:`ksd_test`.

Kernels are radial, ``k(x, y) = φ(‖x - y‖²)``, so every derivative in ``u_p`` follows from
``φ'`` and ``φ''`` in closed form (:func:`kernel_and_derivatives`); with ``r = x - y``,
``q = ‖r‖²`` and ``d`` coordinates,

    u_p(x, y) = φ(q) s(x)ᵀs(y) + 2φ'(q) (s(y) - s(x))ᵀ r - 4φ''(q) q - 2d φ'(q).

Example
-------
>>> import jax, numpy as np
>>> import unnorm as un
>>> model = un.models.gaussian(2)
>>> x = np.random.default_rng(0).normal(size=(300, 2))
>>> test = un.ksd_test(model, model.params, x, key=jax.random.key(0))
>>> bool(test.pvalue > 0.01)
True
>>> shifted = un.ksd_test(model, model.params, x + 1.0, key=jax.random.key(0))
>>> bool(shifted.reject)
True
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from . import _checks
from .model import Model

__all__ = [
    "KERNELS", "KSDTest", "kernel_and_derivatives", "kernel_value", "ksd", "ksd_test",
    "ksd_ustat", "median_bandwidth", "stein_kernel_cross", "stein_kernel_matrix",
    "stein_row_means",
]

KERNELS = ("imq", "rbf")
#: IMQ constants: ``k = (c² + ‖x - y‖²/h²)^β``. Gorham & Mackey (2017) show that with
#: ``β ∈ (-1, 0)`` the KSD detects non-convergence (a sequence whose KSD → 0 converges weakly to
#: p), which the Gaussian kernel does not guarantee in d ≥ 3; β = -1/2, c = 1 is their choice.
IMQ_C = 1.0
IMQ_BETA = -0.5
#: Largest number of Stein-kernel entries formed at once (64 MB in float32); larger problems are
#: evaluated in blocks of rows.
_MAX_BLOCK_ENTRIES = 2**24
#: The median heuristic uses at most this many observations (all pairs of them).
_MEDIAN_MAX_POINTS = 5000


# ---- kernels ------------------------------------------------------------------------------------

def _profile(kernel: str, q: jax.Array, bandwidth) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``φ(q)``, ``φ'(q)``, ``φ''(q)`` of the radial kernel ``k(x, y) = φ(‖x - y‖²)``."""
    h2 = jnp.asarray(bandwidth, dtype=q.dtype) ** 2
    if kernel == "imq":
        base = IMQ_C**2 + q / h2
        # one power instead of three: φ = base^β, φ' = β/h² base^(β-1), φ'' = β(β-1)/h⁴ base^(β-2)
        low = base ** (IMQ_BETA - 2.0)
        phi = low * base * base
        d1 = (IMQ_BETA / h2) * low * base
        d2 = (IMQ_BETA * (IMQ_BETA - 1.0) / (h2 * h2)) * low
        return phi, d1, d2
    if kernel == "rbf":
        phi = jnp.exp(-q / (2.0 * h2))
        return phi, -phi / (2.0 * h2), phi / (4.0 * h2 * h2)
    raise ValueError(f"unknown kernel {kernel!r}; choose one of {', '.join(map(repr, KERNELS))}.")


def kernel_value(x: jax.Array, y: jax.Array, *, kernel: str = "imq", bandwidth) -> jax.Array:
    """The base kernel ``k(x, y)`` of two observations (any equal shapes; flattened).

    ``"imq"``: ``(c² + ‖x - y‖²/h²)^β`` with ``c = 1``, ``β = -1/2`` (Gorham & Mackey 2017);
    ``"rbf"``: ``exp(-‖x - y‖² / (2h²))``; ``h`` is ``bandwidth``.

    Example
    -------
    >>> import jax.numpy as jnp
    >>> float(kernel_value(jnp.zeros(2), jnp.array([3.0, 4.0]), kernel="imq", bandwidth=5.0))
    0.7071067...
    """
    r = jnp.ravel(x) - jnp.ravel(y)
    return _profile(kernel, jnp.sum(r * r), bandwidth)[0]


def kernel_and_derivatives(
    x: jax.Array, y: jax.Array, *, kernel: str = "imq", bandwidth
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """``k(x, y)``, ``∇_x k``, ``∇_y k`` and ``tr ∇_x∇_y k`` in closed form.

    For ``k = φ(q)``, ``q = ‖r‖²``, ``r = x - y`` with ``d`` coordinates:
    ``∇_x k = 2φ'(q) r``, ``∇_y k = -∇_x k`` and ``tr ∇_x∇_y k = -4φ''(q) q - 2d φ'(q)``.
    The gradients have the shape of ``x``.

    Example
    -------
    >>> import jax.numpy as jnp
    >>> k, gx, gy, tr = kernel_and_derivatives(jnp.zeros(2), jnp.array([0.0, 1.0]),
    ...                                        kernel="rbf", bandwidth=1.0)
    >>> round(float(k), 4), round(float(gx[1]), 4)    # e^(-1/2) and -r e^(-1/2) / h²
    (0.6065, 0.6065)
    >>> round(float(tr), 4)                                      # (d - q) e^(-1/2) / h²
    0.6065
    """
    r = jnp.ravel(x) - jnp.ravel(y)
    q = jnp.sum(r * r)
    phi, d1, d2 = _profile(kernel, q, bandwidth)
    grad_x = (2.0 * d1 * r).reshape(jnp.shape(x))
    return phi, grad_x, -grad_x, -4.0 * d2 * q - 2.0 * r.size * d1


# ---- the Stein kernel ---------------------------------------------------------------------------

def _check_pair(scores: jax.Array, points: jax.Array, name: str) -> None:
    """Static shape checks (shapes are known while tracing, so this is safe under jit)."""
    if jnp.ndim(scores) != 2 or jnp.shape(scores) != jnp.shape(points):
        raise ValueError(
            f"{name}: scores and points must both have shape (n, d) (observations flattened); "
            f"got scores {jnp.shape(scores)} and points {jnp.shape(points)}."
        )


def _cross(sa, xa, sb, xb, kernel: str, bandwidth) -> jax.Array:
    """``u_p(xa_i, xb_j)`` for all pairs; the points share one (arbitrary) origin.

    Everything is matrix products of width d, so the cost is O(n_a n_b d) with no (n_a, n_b, d)
    intermediate. ``(s_b - s_a)ᵀ(x_a - x_b)`` expands to ``x_aᵀs_b + s_aᵀx_b - s_aᵀx_a -
    s_bᵀx_b``, and ``q = ‖x_a‖² + ‖x_b‖² - 2x_aᵀx_b``, clipped at 0 against rounding.
    """
    d = sa.shape[1]
    sq_a, sq_b = jnp.sum(xa * xa, axis=1), jnp.sum(xb * xb, axis=1)
    q = jnp.maximum(sq_a[:, None] + sq_b[None, :] - 2.0 * (xa @ xb.T), 0.0)
    mixed = (xa @ sb.T + sa @ xb.T
             - jnp.sum(sa * xa, axis=1)[:, None] - jnp.sum(sb * xb, axis=1)[None, :])
    phi, d1, d2 = _profile(kernel, q, bandwidth)
    return phi * (sa @ sb.T) + 2.0 * d1 * mixed - 4.0 * d2 * q - 2.0 * d * d1


def stein_kernel_cross(
    scores_a: jax.Array, points_a: jax.Array, scores_b: jax.Array, points_b: jax.Array, *,
    kernel: str = "imq", bandwidth,
) -> jax.Array:
    """The Stein kernel ``u_p(a_i, b_j)`` between two sets of points, shape ``(n_a, n_b)``.

    Parameters
    ----------
    scores_a, points_a : array, shape (n_a, d)
        Scores ``s(a_i) = -∇ₓE(a_i)`` and the points themselves (flattened observations).
    scores_b, points_b : array, shape (n_b, d)
        The same for the second set.
    kernel : {"imq", "rbf"}
    bandwidth : float or scalar array
        ``h`` of the kernel (see :func:`median_bandwidth`).
    """
    _check_pair(scores_a, points_a, "stein_kernel_cross")
    _check_pair(scores_b, points_b, "stein_kernel_cross")
    # distances are translation invariant: a common origin near the data keeps the Gram-form
    # distances accurate in float32 for data far from 0
    origin = jnp.mean(points_b, axis=0)
    return _cross(scores_a, points_a - origin, scores_b, points_b - origin, kernel, bandwidth)


def stein_kernel_matrix(
    scores: jax.Array, points: jax.Array, *, kernel: str = "imq", bandwidth
) -> jax.Array:
    """The ``(n, n)`` Stein-kernel matrix ``U_ij = u_p(x_i, x_j)`` (module docstring).

    Pure JAX: usable inside ``jax.jit`` and differentiable with respect to ``scores`` (the
    scores carry θ). Memory is ``n²`` entries (100 MB for n = 5000 in float32); for the
    U-statistic alone :func:`ksd_ustat` works in blocks.

    Parameters
    ----------
    scores : array, shape (n, d)
        ``s(x_i) = ∇ₓ log p(x_i) = -∇ₓE(x_i)``, observations flattened.
    points : array, shape (n, d)
        The observations ``x_i``, flattened.
    kernel : {"imq", "rbf"}
    bandwidth : float or scalar array

    Example
    -------
    >>> import jax.numpy as jnp
    >>> x = jnp.array([[0.0], [1.0]])
    >>> U = stein_kernel_matrix(-x, x, kernel="rbf", bandwidth=1.0)  # N(0, 1): s(x) = -x
    >>> round(float(U[0, 0]), 4), round(float(U[1, 1]), 4)           # s² + d/h²
    (1.0, 2.0)
    """
    return stein_kernel_cross(scores, points, scores, points, kernel=kernel, bandwidth=bandwidth)


def _block_rows(n: int, block_size: int | None) -> int:
    if block_size is None:
        return n if n * n <= _MAX_BLOCK_ENTRIES else max(1, _MAX_BLOCK_ENTRIES // n)
    return max(1, min(int(block_size), n))


def _row_blocks(n: int, block: int, *arrays: jax.Array) -> tuple[jax.Array, ...]:
    """Each ``(n, ...)`` array padded with zero rows to a multiple of ``block`` and reshaped to
    ``(num_blocks, block, ...)``, plus the global row index of every block row."""
    num = -(-n // block)
    pad = num * block - n
    out = tuple(
        jnp.pad(a, ((0, pad),) + ((0, 0),) * (a.ndim - 1)).reshape((num, block, *a.shape[1:]))
        for a in arrays
    )
    return (jnp.arange(num * block).reshape(num, block), *out)


def _off_diagonal_block(index, sa, xa, scores, x, kernel, bandwidth) -> jax.Array:
    """Rows ``index`` of the Stein matrix with the diagonal (and padding rows) set to 0."""
    u = _cross(sa, xa, scores, x, kernel, bandwidth)
    keep = (index[:, None] != jnp.arange(x.shape[0])[None, :]) & (index[:, None] < x.shape[0])
    return jnp.where(keep, u, 0.0)


def stein_row_means(
    scores: jax.Array, points: jax.Array, *, kernel: str = "imq", bandwidth,
    block_size: int | None = None,
) -> jax.Array:
    """``m_i = Σ_{j≠i} u_p(x_i, x_j) / (n - 1)``, shape ``(n,)``; their mean is :func:`ksd_ustat`.

    The ``m_i`` are the U-statistic's per-observation terms: ``2(m_i - Û)`` is its Hájek
    projection, so ``2·sd(m) / √n`` is its standard error when ``KSD > 0`` (under the null the
    U-statistic is degenerate and shrinks like ``1/n`` instead).

    Parameters
    ----------
    scores, points : array, shape (n, d), n >= 2
    kernel : {"imq", "rbf"}
    bandwidth : float or scalar array
    block_size : int, optional
        Rows of the Stein matrix formed at once; default all ``n`` rows when ``n² <= 2²⁴``,
        else ``2²⁴ // n`` (memory stays ~64 MB in float32 whatever ``n``).
    """
    _check_pair(scores, points, "stein_row_means")
    n = scores.shape[0]
    if n < 2:
        raise ValueError(f"stein_row_means needs n >= 2 observations; got {n}.")
    x = points - jnp.mean(points, axis=0)
    block = _block_rows(n, block_size)
    index, s_blocks, x_blocks = _row_blocks(n, block, scores, x)

    def rows(args):
        idx, sa, xa = args
        return jnp.sum(_off_diagonal_block(idx, sa, xa, scores, x, kernel, bandwidth), axis=1)

    sums = jax.lax.map(rows, (index, s_blocks, x_blocks)).reshape(-1)[:n]
    return sums / (n - 1)


def ksd_ustat(
    scores: jax.Array, points: jax.Array, *, kernel: str = "imq", bandwidth,
    block_size: int | None = None,
) -> jax.Array:
    """The unbiased estimate ``Û = Σ_{i≠j} u_p(x_i, x_j) / (n(n-1))`` of KSD² (a JAX scalar).

    Pure JAX, jit-able and differentiable in ``scores``; evaluated in row blocks (see
    :func:`stein_row_means`) so memory stays bounded for large ``n``. ``Û`` can be negative.

    Example
    -------
    >>> import jax, jax.numpy as jnp
    >>> x = jax.random.normal(jax.random.key(0), (1000, 2))
    >>> u0 = ksd_ustat(-x, x, bandwidth=1.0)                 # the model N(0, I): Û ≈ 0
    >>> u1 = ksd_ustat(-(x - 1.0), x, bandwidth=1.0)         # the model N(1, I): Û > 0
    >>> bool(abs(u0) < 0.01 < u1)
    True
    """
    return jnp.mean(stein_row_means(scores, points, kernel=kernel, bandwidth=bandwidth,
                                    block_size=block_size))


def median_bandwidth(points) -> float:
    """The median heuristic: the median Euclidean distance ``‖x_i - x_j‖`` over pairs ``i ≠ j``.

    ``points`` has shape ``(n, d)`` (observations flattened). For ``n`` above 5000 the median is
    taken over all pairs of 5000 observations drawn without replacement with a fixed seed (so the
    result is deterministic): the median over their 12.5 million pairs differs from the full one
    by sampling noise far below what matters for a bandwidth, and the cost stays bounded.
    Returns a Python float (0.0 when more than half of the pairs coincide); computed outside
    ``jit``.

    Example
    -------
    >>> import numpy as np
    >>> median_bandwidth(np.array([[0.0], [1.0], [3.0]]))     # distances 1, 2, 3
    2.0
    """
    x = np.asarray(points)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"median_bandwidth: points must have shape (n, d) with n >= 2; got "
                         f"{x.shape}.")
    if x.shape[0] > _MEDIAN_MAX_POINTS:
        rows = np.random.default_rng(0).choice(x.shape[0], _MEDIAN_MAX_POINTS, replace=False)
        x = x[np.sort(rows)]
    n = x.shape[0]
    q = np.asarray(_squared_distances(jnp.asarray(x, dtype=jnp.result_type(float)))).ravel()
    # the n diagonal zeros sort first; the n(n-1) off-diagonal entries (each pair twice) follow,
    # so their median is at positions n + (m-1)//2 and n + m//2 — found by partition, O(n²)
    # rather than a sort; the two middle distances are averaged, as np.median does
    m = n * (n - 1)
    lo, hi = n + (m - 1) // 2, n + m // 2
    part = np.partition(q, (lo, hi)).astype(np.float64)
    return float(0.5 * (np.sqrt(part[lo]) + np.sqrt(part[hi])))


@jax.jit
def _squared_distances(x: jax.Array) -> jax.Array:
    x = x - jnp.mean(x, axis=0)
    sq = jnp.sum(x * x, axis=1)
    q = jnp.maximum(sq[:, None] + sq[None, :] - 2.0 * (x @ x.T), 0.0)
    return q.at[jnp.arange(x.shape[0]), jnp.arange(x.shape[0])].set(0.0)


# ---- the model-level calls ----------------------------------------------------------------------

class KSDTest(NamedTuple):
    """Result of :func:`ksd_test`; plain Python values.

    Attributes
    ----------
    statistic : float
        ``n·Û``, the scaled U-statistic (its null distribution has a non-degenerate limit).
    pvalue : float
        Wild-bootstrap p-value ``(1 + #{B_b >= statistic}) / (1 + num_bootstrap)``.
    ksd : float
        ``Û``, the unbiased estimate of KSD² (``statistic / n``; as returned by :func:`ksd`).
    reject : bool
        ``pvalue <= level``.
    level : float
    n : int
        Number of observations.
    kernel : str
    bandwidth : float
        The bandwidth used (the median heuristic's value when ``bandwidth="median"``).
    num_bootstrap : int
    """

    statistic: float
    pvalue: float
    ksd: float
    reject: bool
    level: float
    n: int
    kernel: str
    bandwidth: float
    num_bootstrap: int


def _check_bandwidth(bandwidth) -> str | float:
    if isinstance(bandwidth, str):
        if bandwidth != "median":
            raise ValueError(
                f"unknown bandwidth {bandwidth!r}; give 'median' (the median heuristic) or a "
                "positive number."
            )
        return bandwidth
    try:
        return _checks.check_positive_float(bandwidth, "bandwidth")
    except TypeError:
        raise TypeError(
            f"bandwidth must be 'median' or a positive number; got {bandwidth!r}."
        ) from None


@functools.partial(jax.jit, static_argnames=("model", "unconstrained"))
def _scores_and_points(model: Model, params, data, unconstrained: bool):
    """Scores and points, flattened to ``(n, d)``; in the unconstrained space if asked."""
    n = data.shape[0]
    if unconstrained:
        transform = model.support.transform

        def energy_y(y):
            # the density of y = T⁻¹(x): p(T(y)) |det ∇T(y)|
            x = transform(y)
            return model.energy(params, x) - transform.log_abs_det_jacobian(y, x)

        points = jax.vmap(transform.inv)(data)
        scores = jax.vmap(lambda y: -jax.grad(energy_y)(y))(points)
    else:
        points = data
        scores = jax.vmap(lambda x: model.score(params, x))(data)
    return scores.reshape(n, -1), points.reshape(n, -1)


def _prepare(model, params, data, kernel, bandwidth, unconstrained, where: str):
    """Validate everything in plain Python; return scores, points and the bandwidth."""
    if not isinstance(model, Model):
        raise TypeError(f"model must be an unnorm.Model; got {type(model).__name__}.")
    _checks.check_choice(kernel, "kernel", KERNELS)
    bandwidth = _check_bandwidth(bandwidth)
    unconstrained = _checks.check_bool(unconstrained, "unconstrained")
    params = model.params if params is None else model.check_params(params)
    support = model.support
    if support.is_discrete:
        raise ValueError(
            f"{where} needs a continuous support, but the model's support is {support!r}: the "
            "Stein operator uses the score -∇ₓE(x), which is undefined on binary or spin data."
        )
    if support.kind != "real" and not unconstrained:
        raise ValueError(
            f"{where} on the {support!r} support: the Stein identity E_p[u_p] = 0 behind the "
            "KSD needs p(x)k(x, ·) to vanish on the boundary of the support, which many models "
            "there do not satisfy (an exponential density at 0, a uniform one at its ends). "
            "Pass unconstrained=True to test the equivalent hypothesis for y = T⁻¹(x) on R^d "
            "(T the support's bijection, the density including its log-Jacobian)."
        )
    arr = support.check_data(data, "data")
    n = arr.shape[0]
    if n < 2:
        raise ValueError(f"data has {n} observation; {where} needs at least 2 (shape {arr.shape}).")
    x = jnp.asarray(arr, dtype=jnp.result_type(float))
    scores, points = _scores_and_points(model, params, x, unconstrained)
    scores, points = np.asarray(scores), np.asarray(points)
    bad_points = ~np.all(np.isfinite(points), axis=1)
    if bad_points.any():
        row = int(np.argmax(bad_points))
        raise ValueError(
            f"data row {row} lies on the boundary of the support {support!r}: its image in the "
            f"unconstrained space is infinite ({int(bad_points.sum())} such row(s)). Drop or "
            "nudge boundary values before testing with unconstrained=True."
        )
    bad = ~np.all(np.isfinite(scores), axis=1)
    if bad.any():
        row = int(np.argmax(bad))
        raise ValueError(
            f"the score -∇ₓE(x) of the model is NaN or infinite at {int(bad.sum())} observation(s) "
            f"of data (first at row {row}: x = {np.asarray(arr[row]).ravel()[:6].tolist()}); "
            "the KSD needs a finite score at every observation. Check the energy's domain and "
            "the params."
        )
    if bandwidth == "median":
        bandwidth = median_bandwidth(points)
        if not bandwidth > 0:
            raise ValueError(
                "the median heuristic gives bandwidth 0: more than half of the pairs of "
                "observations coincide. Pass bandwidth=<positive float> instead."
            )
    return jnp.asarray(scores), jnp.asarray(points), float(bandwidth)


def ksd(
    model: Model, params: dict | None, data, kernel: str = "imq",
    bandwidth: str | float = "median", *, unconstrained: bool = False,
) -> float:
    """The U-statistic estimate ``Û`` of the squared kernel Stein discrepancy KSD²(data ‖ p).

    ``Û = Σ_{i≠j} u_p(x_i, x_j) / (n(n-1))`` with the Stein kernel ``u_p`` of the module
    docstring (the kernelized form of the Stein discrepancy, seed 004 eq. 30; Liu, Lee & Jordan
    2016; Chwialkowski, Strathmann & Gretton 2016). It is unbiased for KSD² ≥ 0, which is 0 if
    and only if the data distribution is ``p(·; params)`` (for the IMQ kernel and p with a
    Lipschitz, distantly dissipative score, Gorham & Mackey 2017); ``Û`` itself may be slightly
    negative.

    Parameters
    ----------
    model : Model
        A model on a continuous support (``real``; ``positive`` / ``interval`` with
        ``unconstrained=True``).
    params : dict or None
        Parameter values, checked by ``model.check_params``; None means ``model.params``.
    data : array, shape (n, *event_shape), n >= 2
        Observations; flattened to ``(n, d)`` for the kernel.
    kernel : {"imq", "rbf"}
        ``"imq"``: ``(1 + ‖x - y‖²/h²)^(-1/2)``; ``"rbf"``: ``exp(-‖x - y‖²/(2h²))``.
    bandwidth : "median" or float
        ``h``; ``"median"`` is the median pairwise distance of the (flattened) data
        (:func:`median_bandwidth`).
    unconstrained : bool
        Work with ``y = T⁻¹(x)`` (``T`` the support's bijection from R^d) and its density
        ``p(T(y)) |det ∇T(y)|``: required on ``positive`` and ``interval`` supports, where the
        Stein identity may fail at the boundary.

    Returns
    -------
    float

    Example
    -------
    >>> import numpy as np, unnorm as un
    >>> x = np.random.default_rng(1).normal(size=(500, 2))
    >>> model = un.models.gaussian(2)
    >>> abs(un.stein.ksd(model, None, x)) < 0.01 < un.stein.ksd(model, None, x + 0.5)
    True
    """
    scores, points, h = _prepare(model, params, data, kernel, bandwidth, unconstrained, "ksd")
    return float(_ksd_jit(scores, points, h, kernel))


@functools.partial(jax.jit, static_argnames=("kernel",))
def _ksd_jit(scores, points, bandwidth, kernel):
    return ksd_ustat(scores, points, kernel=kernel, bandwidth=bandwidth)


@functools.partial(jax.jit, static_argnames=("kernel", "num_bootstrap"))
def _wild_bootstrap(scores, points, bandwidth, key, kernel: str, num_bootstrap: int):
    """``Σ_{i≠j} w_i w_j u_ij`` for the weights ``w = 1`` (the statistic) and ``num_bootstrap``
    Rademacher vectors, one pass over row blocks of the Stein matrix."""
    n = scores.shape[0]
    eps = jax.random.rademacher(key, (num_bootstrap, n), dtype=scores.dtype)
    weights = jnp.concatenate([jnp.ones((1, n), scores.dtype), eps]).T      # (n, 1 + B)
    x = points - jnp.mean(points, axis=0)
    # the (block, n) slab times the (n, 1 + B) weights is one matrix product per block; memory
    # is the slab plus (block, 1 + B), never n² when n is large
    block = _block_rows(n, None)
    index, s_blocks, x_blocks, w_blocks = _row_blocks(n, block, scores, x, weights)

    def forms(args):
        idx, sa, xa, wa = args
        u = _off_diagonal_block(idx, sa, xa, scores, x, kernel, bandwidth)
        return jnp.sum(wa * (u @ weights), axis=0)

    return jnp.sum(jax.lax.map(forms, (index, s_blocks, x_blocks, w_blocks)), axis=0) / (n - 1)


def ksd_test(
    model: Model, params: dict | None, data, *, key, kernel: str = "imq",
    bandwidth: str | float = "median", num_bootstrap: int = 1000, level: float = 0.05,
    unconstrained: bool = False,
) -> KSDTest:
    """Kernel Stein discrepancy goodness-of-fit test of H0: data ~ p(·; params), i.i.d.

    **Statistic.** ``T = n·Û = Σ_{i≠j} u_p(x_i, x_j) / (n - 1)``, with ``Û`` the U-statistic
    estimate of KSD² (:func:`ksd`; seed 004 eq. 30 kernelized as in Liu, Lee & Jordan 2016 and
    Chwialkowski, Strathmann & Gretton 2016). Under H0, ``E u_p(x, ·) = 0`` (the Stein identity),
    ``Û`` is a degenerate U-statistic and ``T`` converges to ``Σ_k λ_k (Z_k² - 1)``; under an
    alternative ``T`` grows like ``n·KSD²``.

    **Bootstrap.** The wild (multiplier) bootstrap for degenerate U-statistics of i.i.d. data
    (Dehling & Mikosch 1994; Chwialkowski, Strathmann & Gretton 2016, whose wild bootstrap has
    i.i.d. Rademacher weights for i.i.d. data): ``B_b = Σ_{i≠j} ε_i ε_j u_p(x_i, x_j) / (n - 1)``
    with ``ε_i = ±1`` with probability 1/2, which has the same limit distribution as ``T``
    under H0. All ``num_bootstrap`` values
    come from one product of the weight matrix with the Stein matrix.
    ``pvalue = (1 + #{B_b >= T}) / (1 + num_bootstrap)``; ``reject = pvalue <= level``.

    Assumptions: i.i.d. observations (for MCMC draws, use thinned, effectively independent
    draws: this bootstrap is not valid for autocorrelated chains), a continuous support, and a
    density whose score is finite at the data.

    Parameters
    ----------
    model : Model
        On a ``real`` support (``positive`` / ``interval`` with ``unconstrained=True``).
    params : dict or None
        Parameter values of the null hypothesis; None means ``model.params``.
    data : array, shape (n, *event_shape), n >= 2
    key : jax PRNG key
        Draws the Rademacher weights; the same key gives the same p-value.
    kernel : {"imq", "rbf"}
        Default ``"imq"``, ``(1 + ‖x - y‖²/h²)^(-1/2)``: its KSD detects non-convergence
        (Gorham & Mackey 2017). ``"rbf"``: ``exp(-‖x - y‖²/(2h²))``.
    bandwidth : "median" or float
        ``h``; ``"median"`` (default) is the median pairwise distance of the flattened data.
    num_bootstrap : int
        Bootstrap replicates, >= 1 (the p-value's resolution is ``1 / (1 + num_bootstrap)``).
    level : float
        Significance level for ``reject``, in (0, 1).
    unconstrained : bool
        Test ``y = T⁻¹(x)`` against its density on R^d (see :func:`ksd`); required on
        ``positive`` and ``interval`` supports.

    Returns
    -------
    KSDTest
        ``statistic`` (``n·Û``), ``pvalue``, ``ksd`` (``Û``), ``reject``, ``level``, ``n``,
        ``kernel``, ``bandwidth`` (the value used), ``num_bootstrap``.

    Example
    -------
    >>> import jax, numpy as np, unnorm as un
    >>> model = un.models.gaussian(2)
    >>> x = np.random.default_rng(0).normal(size=(200, 2)) + [0.5, 0.0]   # mean shifted
    >>> test = un.ksd_test(model, None, x, key=jax.random.key(3))
    >>> test.pvalue < 0.05
    True
    """
    key = _checks.check_key(key)
    num_bootstrap = _checks.check_int(num_bootstrap, "num_bootstrap", 1)
    level = _checks.check_probability(level, "level")
    scores, points, h = _prepare(model, params, data, kernel, bandwidth, unconstrained,
                                 "ksd_test")
    n = scores.shape[0]
    forms = np.asarray(_wild_bootstrap(scores, points, h, key, kernel, num_bootstrap))
    statistic, boot = float(forms[0]), forms[1:]
    pvalue = (1.0 + float(np.sum(boot >= statistic))) / (1.0 + num_bootstrap)
    return KSDTest(
        statistic=statistic, pvalue=pvalue, ksd=statistic / n, reject=bool(pvalue <= level),
        level=level, n=n, kernel=kernel, bandwidth=h, num_bootstrap=num_bootstrap,
    )
