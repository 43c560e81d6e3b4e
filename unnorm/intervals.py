"""Confidence intervals that respect the parameters' constraints.

The standard errors are asymptotic: ``û`` is approximately ``N(u*, Σ_u)`` in the unconstrained
space the fit works in (NumPyro's ``biject_to``), and the constrained parameters are
``θ = g(u)``. The symmetric delta-method (Wald) interval ``θ̂ ± z·se`` can leave the parameter
space (a variance below 0, a probability above 1). Mapping the unconstrained interval back
instead keeps it inside: for an elementwise constraint (real, positive, an interval) the
interval of ``θ_k`` is ``g_k(û_k ± z·se_{u,k})`` exactly, since ``g_k`` is monotone; for a
constraint that couples entries (positive-definite matrices, the simplex), the marginal
quantiles of ``g(u)``, ``u ~ N(û, Σ_u)``, are taken by simulation with a fixed seed, and every
draw lies in the parameter space. Both reduce to the Wald interval when ``g`` is the identity.

So that results stay plain arrays (no transform to carry, nothing to pickle), each scalar
parameter's interval endpoints are stored on a grid of normal scores :data:`Z_GRID`; an interval
at any level interpolates that grid.
"""

from __future__ import annotations

import functools
from statistics import NormalDist

import jax
import numpy as np
from jax.flatten_util import ravel_pytree

__all__ = ["Z_GRID", "NUM_DRAWS", "endpoint_grid", "interval_from_grid",
           "unconstrained_covariance"]

#: normal scores at which the endpoints are stored: ±6 covers every level below 1 - 2e-9
Z_GRID = np.linspace(-6.0, 6.0, 241)
#: draws of ``u ~ N(û, Σ_u)`` for constraints that couple entries: the Monte Carlo error of a
#: 95% endpoint is then about 0.02 standard errors
NUM_DRAWS = 20_000


def unconstrained_covariance(jacobian: np.ndarray, covariance: np.ndarray) -> np.ndarray:
    """``Σ_u`` from the constrained covariance ``Σ = D Σ_u Dᵀ`` and the Jacobian ``D`` of
    ``θ(u)`` (full column rank): ``D⁺ Σ D⁺ᵀ``, the delta method inverted. Every route of the fit
    (closed form, sandwich, the estimators' own covariances) reports ``Σ``; this recovers the
    covariance the intervals are built from."""
    pinv = np.linalg.pinv(np.asarray(jacobian, dtype=float))
    cov_u = pinv @ np.asarray(covariance, dtype=float) @ pinv.T
    return 0.5 * (cov_u + cov_u.T)


def endpoint_grid(to_constrained, theta_u, cov_u: np.ndarray, elementwise: np.ndarray,
                  seed: int = 0) -> np.ndarray:
    """The constrained value at every normal score of :data:`Z_GRID`, per scalar parameter.

    Parameters
    ----------
    to_constrained : callable
        ``θ = g(u)`` on the unconstrained pytree ``theta_u``.
    theta_u : pytree
        The estimate ``û`` in the unconstrained space.
    cov_u : array (p_u, p_u)
        Its covariance, flattened in ``ravel_pytree`` order.
    elementwise : bool array (p,)
        Per scalar of the flattened ``g(û)``: whether ``θ_k`` depends on ``u_k`` alone through a
        monotone map (then exact), else its quantiles are simulated.
    seed : int
        Seed of the simulation (the result is deterministic).

    Returns
    -------
    array (p, len(Z_GRID))
        Row k is nondecreasing; its columns are the endpoints at the scores of ``Z_GRID``.

    Examples
    --------
    >>> import jax.numpy as jnp, numpy as np
    >>> grid = endpoint_grid(lambda u: {"s": jnp.exp(u["s"])}, {"s": jnp.zeros(1)},
    ...                      np.array([[0.25]]), np.array([True]))
    >>> lower, upper = interval_from_grid(grid, 0.95)
    >>> bool(np.allclose([lower[0], upper[0]], np.exp([-0.98, 0.98]), atol=1e-3))
    True
    """
    flat_u, _ = ravel_pytree(theta_u)
    cov_u = np.asarray(cov_u, dtype=float)
    se_u = np.sqrt(np.clip(np.diag(cov_u), 0.0, None))

    def constrained_flat(points):
        return _constrained_points(to_constrained, theta_u, points)

    dtype = flat_u.dtype
    shifted = (np.asarray(flat_u, dtype=float)[None, :]
               + Z_GRID[:, None] * se_u[None, :])
    if np.all(elementwise):
        exact = np.asarray(constrained_flat(np.asarray(shifted, dtype=dtype)), dtype=float).T
        return np.sort(exact, axis=1)
    # the joint normal of û, mapped through g: a draw of N(0, Σ_u) from its eigendecomposition
    # (Σ_u may be singular in directions the objective does not see)
    eigval, eigvec = np.linalg.eigh(cov_u)
    root = eigvec * np.sqrt(np.clip(eigval, 0.0, None))
    z = np.random.default_rng(seed).standard_normal((NUM_DRAWS, cov_u.shape[0]))
    draws = np.asarray(flat_u, dtype=float)[None, :] + z @ root.T
    # the grid's points and the draws in one call, cast by NumPy: one compiled program where
    # two shapes and their conversions compiled four
    points = np.asarray(np.concatenate([shifted, draws]), dtype=dtype)
    mapped = np.asarray(constrained_flat(points), dtype=float)
    exact, values = mapped[:len(Z_GRID)].T, mapped[len(Z_GRID):]
    coupled = ~np.asarray(elementwise, dtype=bool)
    grid = np.sort(exact, axis=1)
    grid[coupled] = _quantiles(values[:, coupled], _PROBABILITIES).T
    return grid


#: the normal probabilities of :data:`Z_GRID`
_PROBABILITIES = np.array([NormalDist().cdf(t) for t in Z_GRID])


def _quantiles(values: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
    """``np.quantile(values, probabilities, axis=0)`` (its default, linear interpolation
    between order statistics) from one sort of each column: ``np.quantile`` selects each of
    the 241 probabilities' order statistics apart, which took most of a millisecond fit's
    time. A column holding NaN gives NaN, as there."""
    ordered = np.sort(values, axis=0)
    position = probabilities * (len(ordered) - 1)
    below = np.floor(position).astype(int)
    above = np.minimum(below + 1, len(ordered) - 1)
    fraction = (position - below)[:, None]
    low, high = ordered[below], ordered[above]
    result = low + (high - low) * fraction
    result[:, np.isnan(values).any(axis=0)] = np.nan
    return result


@functools.partial(jax.jit, static_argnums=0)
def _constrained_points(to_constrained, theta_u, points):
    """Each row of ``points`` (flat unconstrained parameters shaped like ``theta_u``) mapped to
    the flat constrained parameters. One program per ``to_constrained`` and shape: outside a
    trace a vmap runs op by op, compiling a small program per op, and a jitted closure would
    compile again at every fit (callers pass the same ``to_constrained`` object for a model)."""
    _, unravel = ravel_pytree(theta_u)
    return jax.vmap(lambda f: ravel_pytree(to_constrained(unravel(f)))[0])(points)


def interval_from_grid(grid: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
    """Lower and upper endpoints at coverage ``level`` from :func:`endpoint_grid`'s rows."""
    z = NormalDist().inv_cdf(0.5 + level / 2)
    lower = np.array([np.interp(-z, Z_GRID, row) for row in grid])
    upper = np.array([np.interp(z, Z_GRID, row) for row in grid])
    return lower, upper
