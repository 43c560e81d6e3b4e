"""The kernel layer of the kernel Stein discrepancy: pure JAX functions of precomputed scores
``(n, d)`` and points ``(n, d)``, usable inside ``jax.jit`` and differentiable in the scores (so
in θ through ``s(x; θ)``), for the model-level calls of :mod:`unnorm.stein` and for estimators
that minimize the KSD (:class:`unnorm.estimators.KSD`).

With the score ``s = ∇ₓ log p = -∇ₓE`` and a kernel ``k`` (Song & Kingma 2021, eq. 30; Liu, Lee &
Jordan
2016; Chwialkowski, Strathmann & Gretton 2016)

    u_p(x, y) = s(x)ᵀs(y) k(x, y) + s(x)ᵀ∇_y k(x, y) + s(y)ᵀ∇_x k(x, y) + tr ∇_x∇_y k(x, y),

and KSD² is estimated without bias by ``Û = Σ_{i≠j} u_p(x_i, x_j) / (n(n-1))``
(:func:`ksd_ustat`). Kernels are radial, ``k(x, y) = φ(‖x - y‖²)``, so every derivative in
``u_p`` follows from ``φ'`` and ``φ''`` in closed form (:func:`kernel_and_derivatives`); with
``r = x - y``, ``q = ‖r‖²`` and ``d`` coordinates,

    u_p(x, y) = φ(q) s(x)ᵀs(y) + 2φ'(q) (s(y) - s(x))ᵀ r - 4φ''(q) q - 2d φ'(q).

Examples
--------
>>> import jax.numpy as jnp
>>> from unnorm import stein_kernels
>>> x = jnp.array([[0.0], [1.0], [-1.0]])
>>> u = stein_kernels.stein_kernel_matrix(-x, x, kernel="imq", bandwidth=1.0)   # N(0, 1): s(x) = -x
>>> u.shape
(3, 3)
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from . import _checks

__all__ = [
    "KERNELS", "SteinGram", "check_bandwidth", "gram_ustat", "kernel_and_derivatives",
    "kernel_slope", "kernel_value", "ksd_ustat", "median_bandwidth", "stein_gram",
    "stein_kernel_cross", "stein_kernel_matrix", "stein_row_means",
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
#: Largest kernel matrix :func:`stein_gram` keeps (256 MB in float32, n up to 8192).
GRAM_MAX_ENTRIES = 2**26
#: The median heuristic uses at most this many observations (all pairs of them).
_MEDIAN_MAX_POINTS = 5000


# ---- kernels ------------------------------------------------------------------------------------

def kernel_profile(kernel: str, q: jax.Array, bandwidth) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``φ(q)``, ``φ'(q)``, ``φ''(q)`` of the radial kernel ``k(x, y) = φ(‖x - y‖²)``."""
    h2 = jnp.asarray(bandwidth, dtype=q.dtype) ** 2
    if kernel == "imq":
        base = IMQ_C**2 + q / h2
        # one power instead of three: φ = base^β, φ' = β/h² base^(β-1), φ'' = β(β-1)/h⁴ base^(β-2)
        low = base ** (IMQ_BETA - 2.0)
        phi = low * base * base
        d1 = (IMQ_BETA / h2) * low * base
        # 1/h² twice rather than 1/h⁴: h⁴ underflows float32 for h below about 1e-10, and
        # (1/h⁴)·low is then inf·0 = NaN where the kernel itself has underflowed to 0
        d2 = (IMQ_BETA * (IMQ_BETA - 1.0) / h2) * (low / h2)
        return phi, d1, d2
    if kernel == "rbf":
        phi = jnp.exp(-q / (2.0 * h2))
        # a product of two quotients, as for "imq": XLA rewrites a quotient of a quotient,
        # (φ / 2h²) / 2h², as φ / 4h⁴, whose h⁴ underflows float32 for h below about 1e-10
        # (jaxlib 0.12.1), and φ'' of every pair whose kernel has underflowed is then 0/0
        return phi, -phi / (2.0 * h2), (0.5 / h2) * (phi / (2.0 * h2))
    raise ValueError(f"unknown kernel {kernel!r}; choose one of {', '.join(map(repr, KERNELS))}.")


def kernel_slope(kernel: str, phi: jax.Array, bandwidth) -> jax.Array:
    """``φ'(q)`` from ``φ(q)`` (entries of a kernel matrix), with no power of ``q`` evaluated
    again: ``-φ/(2h²)`` for ``"rbf"``; for ``"imq"``, ``φ = b^β`` with ``b = c² + q/h²``, so
    ``φ' = (β/h²) b^(β-1) = (β/h²) φ^((β-1)/β)``, ``φ³`` for ``β = -1/2``. A zero entry (the
    zeroed diagonal of :class:`SteinGram`) stays zero.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> q = jnp.array([0.5, 2.0])
    >>> phi, d1, _ = kernel_profile("imq", q, 1.5)
    >>> bool(jnp.allclose(kernel_slope("imq", phi, 1.5), d1))
    True
    """
    h2 = jnp.asarray(bandwidth, dtype=phi.dtype) ** 2
    if kernel == "imq":
        power = (IMQ_BETA - 1.0) / IMQ_BETA
        # an integer power is a few multiplications per entry, not an exp and a log
        powered = phi ** int(power) if float(power).is_integer() else phi ** power
        return (IMQ_BETA / h2) * powered
    if kernel == "rbf":
        return -phi / (2.0 * h2)
    raise ValueError(f"unknown kernel {kernel!r}; choose one of {', '.join(map(repr, KERNELS))}.")


def kernel_value(x: jax.Array, y: jax.Array, *, kernel: str = "imq", bandwidth) -> jax.Array:
    """The base kernel ``k(x, y)`` of two observations (any equal shapes; flattened).

    ``"imq"``: ``(c² + ‖x - y‖²/h²)^β`` with ``c = 1``, ``β = -1/2`` (Gorham & Mackey 2017);
    ``"rbf"``: ``exp(-‖x - y‖² / (2h²))``; ``h`` is ``bandwidth``.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> float(kernel_value(jnp.zeros(2), jnp.array([3.0, 4.0]), kernel="imq", bandwidth=5.0))
    0.7071067...
    """
    r = jnp.ravel(x) - jnp.ravel(y)
    return kernel_profile(kernel, jnp.sum(r * r), bandwidth)[0]


def kernel_and_derivatives(
    x: jax.Array, y: jax.Array, *, kernel: str = "imq", bandwidth
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """``k(x, y)``, ``∇_x k``, ``∇_y k`` and ``tr ∇_x∇_y k`` in closed form.

    For ``k = φ(q)``, ``q = ‖r‖²``, ``r = x - y`` with ``d`` coordinates:
    ``∇_x k = 2φ'(q) r``, ``∇_y k = -∇_x k`` and ``tr ∇_x∇_y k = -4φ''(q) q - 2d φ'(q)``.
    The gradients have the shape of ``x``.

    Examples
    --------
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
    phi, d1, d2 = kernel_profile(kernel, q, bandwidth)
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
    phi, d1, d2 = kernel_profile(kernel, q, bandwidth)
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

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> x = jnp.array([[0.0], [1.0]])
    >>> U = stein_kernel_matrix(-x, x, kernel="rbf", bandwidth=1.0)  # N(0, 1): s(x) = -x
    >>> round(float(U[0, 0]), 4), round(float(U[1, 1]), 4)           # s² + d/h²
    (1.0, 2.0)
    """
    return stein_kernel_cross(scores, points, scores, points, kernel=kernel, bandwidth=bandwidth)


def block_rows(n: int, block_size: int | None) -> int:
    if block_size is None:
        return n if n * n <= _MAX_BLOCK_ENTRIES else max(1, _MAX_BLOCK_ENTRIES // n)
    return max(1, min(int(block_size), n))


def row_blocks(n: int, block: int, *arrays: jax.Array) -> tuple[jax.Array, ...]:
    """Each ``(n, ...)`` array padded with zero rows to a multiple of ``block`` and reshaped to
    ``(num_blocks, block, ...)``, plus the global row index of every block row."""
    num = -(-n // block)
    pad = num * block - n
    out = tuple(
        jnp.pad(a, ((0, pad),) + ((0, 0),) * (a.ndim - 1)).reshape((num, block, *a.shape[1:]))
        for a in arrays
    )
    return (jnp.arange(num * block).reshape(num, block), *out)


def off_diagonal_block(index, sa, xa, scores, x, kernel, bandwidth) -> jax.Array:
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
    block = block_rows(n, block_size)
    index, s_blocks, x_blocks = row_blocks(n, block, scores, x)

    def rows(args):
        idx, sa, xa = args
        return jnp.sum(off_diagonal_block(idx, sa, xa, scores, x, kernel, bandwidth), axis=1)

    sums = jax.lax.map(rows, (index, s_blocks, x_blocks)).reshape(-1)[:n]
    return sums / (n - 1)


def ksd_ustat(
    scores: jax.Array, points: jax.Array, *, kernel: str = "imq", bandwidth,
    block_size: int | None = None,
) -> jax.Array:
    """The unbiased estimate ``Û = Σ_{i≠j} u_p(x_i, x_j) / (n(n-1))`` of KSD² (a JAX scalar).

    Pure JAX, jit-able and differentiable in ``scores``; evaluated in row blocks (see
    :func:`stein_row_means`) so memory stays bounded for large ``n``. ``Û`` can be negative.

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> x = jax.random.normal(jax.random.key(0), (1000, 2))
    >>> u0 = ksd_ustat(-x, x, bandwidth=1.0)                 # the model N(0, I): Û ≈ 0
    >>> u1 = ksd_ustat(-(x - 1.0), x, bandwidth=1.0)         # the model N(1, I): Û > 0
    >>> bool(abs(u0) < 0.01 < u1)
    True
    """
    return jnp.mean(stein_row_means(scores, points, kernel=kernel, bandwidth=bandwidth,
                                    block_size=block_size))


class SteinGram(NamedTuple):
    """The θ-free pieces of ``Σ_{i≠j} u_p(x_i, x_j)`` for a fixed sample (:func:`stein_gram`).

    ``u_p`` is bilinear in the scores, so over all ordered pairs (``r_ij = x_i - x_j``,
    ``φ_ij = φ(‖r_ij‖²)``, ``φ'`` its derivative)

        Σ_{i≠j} u_p(x_i, x_j) = Σ_{i≠j} φ_ij s_iᵀs_j - 4 Σ_i s_iᵀc_i + Σ_{i≠j} tr ∇_x∇_y k,
        c_i = Σ_{j≠i} φ'_ij r_ij,

    since ``φ'`` is symmetric and ``r_ji = -r_ij`` turn the two cross terms of ``u_p`` into one.
    The scores enter through one ``n × n`` matrix product.
    """

    weights: jax.Array   #: ``φ_ij`` with a zero diagonal, ``(n, n)``
    drift: jax.Array     #: ``c_i``, ``(n, d)``
    constant: jax.Array  #: ``Σ_{i≠j} tr ∇_x∇_y k(x_i, x_j)``, a scalar


def stein_gram(points: jax.Array, *, kernel: str = "imq", bandwidth) -> SteinGram:
    """The kernel matrix and the other θ-free pieces of the KSD U-statistic (:class:`SteinGram`).

    Computed once per sample; :func:`gram_ustat` then evaluates ``Û`` for any scores in
    O(n² d) multiply-adds, with no kernel evaluations, which is what makes minimizing the KSD
    over θ fast (the kernel and its bandwidth do not move with θ).

    Parameters
    ----------
    points : array, shape (n, d), n >= 2
        The observations, flattened.
    kernel : {"imq", "rbf"}
    bandwidth : float or scalar array

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> x = jax.random.normal(jax.random.key(0), (200, 2))
    >>> gram = stein_gram(x, bandwidth=1.0)
    >>> bool(jnp.allclose(gram_ustat(-x, gram), ksd_ustat(-x, x, bandwidth=1.0), atol=1e-6))
    True
    """
    n = jnp.shape(points)[0]
    if jnp.ndim(points) != 2 or n < 2:
        raise ValueError(f"stein_gram: points must have shape (n, d) with n >= 2; got "
                         f"{jnp.shape(points)}.")
    return _stein_gram(points, kernel, bandwidth)


@functools.partial(jax.jit, static_argnums=(1,))
def _stein_gram(points, kernel, bandwidth):
    n, d = points.shape
    x = points - jnp.mean(points, axis=0)
    sq = jnp.sum(x * x, axis=1)
    q = jnp.maximum(sq[:, None] + sq[None, :] - 2.0 * (x @ x.T), 0.0)
    off = ~jnp.eye(n, dtype=bool)
    phi, d1, d2 = (jnp.where(off, a, 0.0) for a in kernel_profile(kernel, q, bandwidth))
    drift = jnp.sum(d1, axis=1)[:, None] * x - d1 @ x
    constant = jnp.sum(-4.0 * d2 * q - 2.0 * d * d1)
    return SteinGram(phi, drift, constant)


def gram_ustat(scores: jax.Array, gram: SteinGram) -> jax.Array:
    """``Û = Σ_{i≠j} u_p(x_i, x_j) / (n(n-1))`` from the scores and the sample's
    :class:`SteinGram`: the value of :func:`ksd_ustat`, differentiable in ``scores``.

    Parameters
    ----------
    scores : array, shape (n, d)
        ``s(x_i) = -∇ₓE(x_i)`` at the observations the Gram pieces were built from, same order.
    gram : SteinGram
    """
    n = gram.weights.shape[0]
    if jnp.shape(scores) != jnp.shape(gram.drift):
        raise ValueError(f"gram_ustat: scores must have shape {jnp.shape(gram.drift)} (the "
                         f"sample of the Gram pieces); got {jnp.shape(scores)}.")
    total = (_symmetric_form(gram.weights, scores) - 4.0 * jnp.sum(scores * gram.drift)
             + gram.constant)
    return total / (n * (n - 1))


@jax.custom_vjp
def _symmetric_form(weights, scores):
    """``Σ_ij W_ij s_iᵀs_j`` for a symmetric ``W`` held fixed."""
    return jnp.sum(scores * (weights @ scores))


def _symmetric_form_fwd(weights, scores):
    product = weights @ scores
    return jnp.sum(scores * product), (weights, product)


def _symmetric_form_bwd(residuals, cotangent):
    # W is symmetric, so the gradient is 2WS: the product of the forward pass serves again and
    # the n × n matrix, which dominates the cost (it is read from memory), is read once per step
    weights, product = residuals
    return jnp.zeros_like(weights), 2.0 * cotangent * product


_symmetric_form.defvjp(_symmetric_form_fwd, _symmetric_form_bwd)


def median_bandwidth(points) -> float:
    """The median heuristic: the median Euclidean distance ``‖x_i - x_j‖`` over pairs ``i ≠ j``.

    ``points`` has shape ``(n, d)`` (observations flattened). For ``n`` above 5000 the median is
    taken over all pairs of 5000 observations drawn without replacement with a fixed seed (so the
    result is deterministic): the median over their 12.5 million pairs differs from the full one
    by sampling noise far below what matters for a bandwidth, and the cost stays bounded.
    Returns a Python float, computed outside ``jit``; raises ``ValueError`` when more than
    half of the pairs coincide (the median is 0). It is the one bandwidth rule of the library:
    :func:`unnorm.ksd_test` and the KSD estimator both use it.

    Examples
    --------
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
    q = np.asarray(squared_distances(jnp.asarray(x, dtype=jnp.result_type(float)))).ravel()
    # the n diagonal zeros sort first; the n(n-1) off-diagonal entries (each pair twice) follow,
    # so their median is at positions n + (m-1)//2 and n + m//2 — found by partition, O(n²)
    # rather than a sort; the two middle distances are averaged, as np.median does
    m = n * (n - 1)
    lo, hi = n + (m - 1) // 2, n + m // 2
    part = np.partition(q, (lo, hi))
    # only the two middle entries in float64, not the n² partitioned ones
    median = float(0.5 * (np.sqrt(np.float64(part[lo])) + np.sqrt(np.float64(part[hi]))))
    dtype = jnp.dtype(jnp.result_type(float)).name
    if not np.isfinite(median):
        raise ValueError(
            f"the median heuristic cannot compute a bandwidth: the squared distances between "
            f"observations overflow {dtype} (the largest |value| in the data is "
            f"{np.abs(x).max():.3g}). Rescale the data (e.g. standardize each coordinate).")
    if not median > 0:
        raise ValueError(
            "the median heuristic gives bandwidth 0: more than half of the pairs of "
            f"observations coincide, or their squared distances underflow {dtype} (the largest "
            f"|value| in the data is {np.abs(x).max():.3g}). Pass bandwidth=<positive float> "
            "instead, or rescale the data."
        )
    return median


def check_bandwidth(bandwidth) -> str | float:
    """``"median"`` or the bandwidth as a positive Python float; a clear error otherwise."""
    if isinstance(bandwidth, str):
        if bandwidth != "median":
            raise ValueError(
                f"unknown bandwidth {bandwidth!r}; give 'median' (the median heuristic) or a "
                "positive number."
            )
        return bandwidth
    try:
        h = _checks.check_positive_float(bandwidth, "bandwidth")
    except TypeError:
        raise TypeError(
            f"bandwidth must be 'median' or a positive number; got {bandwidth!r}."
        ) from None
    dtype = jnp.result_type(float)
    if not float(np.asarray(h, dtype=dtype)) ** 2 >= float(jnp.finfo(dtype).tiny):
        # the kernels divide by h²: below this, h² rounds to 0 or loses its precision
        raise ValueError(
            f"bandwidth {h!r} is too small for {jnp.dtype(dtype).name}: its square underflows "
            f"(the smallest bandwidth is about {math.sqrt(float(jnp.finfo(dtype).tiny)):.1e}). "
            "Give a bandwidth on the scale of the distances between observations, or rescale "
            "the data.")
    return h


@jax.jit
def squared_distances(x: jax.Array) -> jax.Array:
    x = x - jnp.mean(x, axis=0)
    sq = jnp.sum(x * x, axis=1)
    q = jnp.maximum(sq[:, None] + sq[None, :] - 2.0 * (x @ x.T), 0.0)
    return q.at[jnp.arange(x.shape[0]), jnp.arange(x.shape[0])].set(0.0)
