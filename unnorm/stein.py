"""The kernel Stein discrepancy (KSD) and the KSD goodness-of-fit test :func:`ksd_test`.

The Stein discrepancy of Song & Kingma 2021, eq. 30, is

    D(q ‖ p) = sup_{f ∈ F} E_{x~q}[ s_p(x)ᵀ f(x) + tr ∇ₓf(x) ],   s_p = ∇ₓ log p = -∇ₓE,

and needs only the model's score, never its normalizing constant. When ``F`` is the unit ball of
a reproducing-kernel Hilbert space of vector fields with kernel ``k`` the supremum has a closed
form (Liu, Lee & Jordan 2016; Chwialkowski, Strathmann & Gretton 2016; Gorham & Mackey 2017):

    KSD²(q ‖ p) = E_{x, y ~ q} [u_p(x, y)],
    u_p(x, y) = s(x)ᵀs(y) k(x, y) + s(x)ᵀ∇_y k(x, y) + s(y)ᵀ∇_x k(x, y) + tr ∇_x∇_y k(x, y),

estimated without bias by the U-statistic ``Û = Σ_{i≠j} u_p(x_i, x_j) / (n(n-1))``.

This module holds the checked, model-level calls :func:`ksd` and :func:`ksd_test`; the pure
JAX kernel layer they are built on (closed-form radial kernels, the Stein kernel, the
U-statistic, the median heuristic) is :mod:`unnorm.stein_kernels`.

Examples
--------
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

from . import _checks, threefry
from .model import Model
from .stein_kernels import (
    KERNELS,
    block_rows,
    check_bandwidth,
    ksd_ustat,
    median_bandwidth,
    off_diagonal_block,
    row_blocks,
)

__all__ = ["KSDTest", "ksd", "ksd_test", "BOOTSTRAP_MAX_WEIGHTS"]

#: Largest bootstrap weight matrix, (1 + num_bootstrap) * n entries (1 GiB in float32).
BOOTSTRAP_MAX_WEIGHTS = 2**28


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
    bandwidth = check_bandwidth(bandwidth)
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
    arr = support.check_data(data, "data", dtype=jnp.result_type(float))
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
    return jnp.asarray(scores), jnp.asarray(points), float(bandwidth)


def ksd(
    model: Model, params: dict | None, data, kernel: str = "imq",
    bandwidth: str | float = "median", *, unconstrained: bool = False,
) -> float:
    """The U-statistic estimate ``Û`` of the squared kernel Stein discrepancy KSD²(data ‖ p).

    ``Û = Σ_{i≠j} u_p(x_i, x_j) / (n(n-1))`` with the Stein kernel ``u_p`` of the module
    docstring (the kernelized form of the Stein discrepancy, Song & Kingma 2021, eq. 30; Liu, Lee &
    Jordan
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

    Examples
    --------
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
    eps = threefry.rademacher(key, (num_bootstrap, n), scores.dtype)
    weights = jnp.concatenate([jnp.ones((1, n), scores.dtype), eps]).T      # (n, 1 + B)
    x = points - jnp.mean(points, axis=0)
    # the (block, n) slab times the (n, 1 + B) weights is one matrix product per block; memory
    # is the slab plus (block, 1 + B), never n² when n is large
    block = block_rows(n, None)
    index, s_blocks, x_blocks, w_blocks = row_blocks(n, block, scores, x, weights)

    def forms(args):
        idx, sa, xa, wa = args
        u = off_diagonal_block(idx, sa, xa, scores, x, kernel, bandwidth)
        return jnp.sum(wa * (u @ weights), axis=0)

    return jnp.sum(jax.lax.map(forms, (index, s_blocks, x_blocks, w_blocks)), axis=0) / (n - 1)


def ksd_test(
    model: Model, params: dict | None, data, *, key, kernel: str = "imq",
    bandwidth: str | float = "median", num_bootstrap: int = 1000, level: float = 0.05,
    unconstrained: bool = False,
) -> KSDTest:
    """Kernel Stein discrepancy goodness-of-fit test of H0: data ~ p(·; params), i.i.d.

    **Statistic.** ``T = n·Û = Σ_{i≠j} u_p(x_i, x_j) / (n - 1)``, with ``Û`` the U-statistic
    estimate of KSD² (:func:`ksd`; Song & Kingma 2021, eq. 30 kernelized as in Liu, Lee & Jordan
    2016 and
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

    Examples
    --------
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
    if (1 + num_bootstrap) * n > BOOTSTRAP_MAX_WEIGHTS:
        # the Rademacher weights are one (n, 1 + num_bootstrap) matrix: past this, its
        # allocation fails inside XLA (an abort of the process, not an exception)
        raise ValueError(
            f"num_bootstrap={num_bootstrap} with n={n} observations needs a weight matrix of "
            f"{(1 + num_bootstrap) * n:.3g} entries; the limit is (1 + num_bootstrap) * n <= "
            f"{BOOTSTRAP_MAX_WEIGHTS} (2**28). Lower num_bootstrap (the p-value's resolution "
            "is 1 / (1 + num_bootstrap)) or test a subsample of the data.")
    forms = np.asarray(_wild_bootstrap(scores, points, h, key, kernel, num_bootstrap))
    statistic, boot = float(forms[0]), forms[1:]
    pvalue = (1.0 + float(np.sum(boot >= statistic))) / (1.0 + num_bootstrap)
    return KSDTest(
        statistic=statistic, pvalue=pvalue, ksd=statistic / n, reject=bool(pvalue <= level),
        level=level, n=n, kernel=kernel, bandwidth=h, num_bootstrap=num_bootstrap,
    )
