"""Trust-region Newton for small smooth objectives, the refinement's second attempt.

Damped Newton (:mod:`unnorm.newton`) polishes a point that is already near a minimum. Far from
one, where the Hessian is indefinite and the objective flat (an optimizer that stopped short on
data far from the origin), its shifted steps are either tiny or rejected. A trust region
(Moré & Sorensen 1983; Nocedal & Wright 2006, ch. 4) follows negative curvature and doubles its
radius while the model predicts the objective well, so it crosses any distance in a number of
steps that grows with its logarithm, and it ends in Newton's own quadratic convergence.
"""

from __future__ import annotations

from collections.abc import Callable

import jax.numpy as jnp
import numpy as np

from .newton import polish

__all__ = ["trust_region_newton"]


def _step(eigvals: np.ndarray, eigvecs: np.ndarray, grad: np.ndarray, radius: float):
    """The minimizer of ``g·p + ½ pᵀHp`` over ``|p| ≤ radius``, with ``H = V diag(w) Vᵀ``:
    ``p(σ) = -(H + σI)⁻¹ g`` for the smallest ``σ ≥ max(0, -w_min)`` with ``|p(σ)| ≤ radius``,
    found by bisection on ``log σ`` in the eigenbasis."""
    coefficients = eigvecs.T @ grad
    floor = max(0.0, -eigvals[0])
    scale = max(abs(eigvals[-1]), abs(eigvals[0]), 1e-300)

    def step_at(shift):
        return -eigvecs @ (coefficients / (eigvals + shift))

    if eigvals[0] > 0:
        newton = step_at(0.0)
        if np.linalg.norm(newton) <= radius:
            return newton
    low = floor * (1 + 1e-12) + 1e-12 * scale
    inside = step_at(low)
    if np.linalg.norm(inside) <= radius:
        # the hard case: g has (almost) no component along the lowest eigenvector, so no shift
        # reaches the boundary; go there along that eigenvector
        extra = np.sqrt(max(radius**2 - float(inside @ inside), 0.0))
        return inside + extra * eigvecs[:, 0]
    high = low + np.linalg.norm(grad) / radius + scale
    for _ in range(200):
        middle = np.sqrt(low * high) if low > 0 else 0.5 * (low + high)
        if np.linalg.norm(step_at(middle)) > radius:
            low = middle
        else:
            high = middle
        if high - low <= 1e-10 * high:
            break
    return step_at(high)


def _at_minimum(u, value: float, grad: np.ndarray, hess: np.ndarray, eps: float) -> bool:
    """Whether Newton can no longer improve ``u`` in its dtype: over the coordinates whose
    Newton step is larger than the spacing of their floating-point numbers (the others cannot
    move), the decrease Newton predicts is at the rounding of the value. Data far from the
    origin leave a location parameter with a spacing of about a standard error in float32."""
    spacing = np.spacing(np.abs(np.asarray(u))).astype(float)
    # the minimum-norm step where the Hessian is singular (parameters the data do not identify)
    newton = -np.linalg.lstsq(hess, grad, rcond=None)[0]
    movable = np.abs(newton) > spacing
    if not movable.any():
        return True
    block = hess[np.ix_(movable, movable)]
    decrement = float(grad[movable] @ np.linalg.lstsq(block, grad[movable], rcond=None)[0])
    return decrement <= 100 * eps * max(abs(value), np.finfo(float).tiny)


def trust_region_newton(derivs_fn: Callable, u0: jnp.ndarray, max_iter: int = 300,
                        negligible: float | None = None) -> tuple[jnp.ndarray, bool]:
    """Minimize a smooth objective by trust-region Newton steps.

    Parameters
    ----------
    derivs_fn : callable
        ``u -> (value, grad, hessian)``, the derivatives in ``u``'s dtype.
    u0 : array
        The starting point (flat).
    max_iter : int
        The most derivative evaluations.
    negligible : float, optional
        The Newton decrement at which a minimum is finished (:func:`unnorm.newton.polish`).

    Returns
    -------
    (u, converged)
        The point, and whether it is a minimum to working precision: the Hessian positive
        semidefinite and the decrease Newton predicts, over the coordinates its step can still
        move in ``u``'s dtype, at the value's rounding.

    Examples
    --------
    A minimum a thousand units away along one coordinate, reached from the origin:

    >>> import jax.numpy as jnp, numpy as np
    >>> target = np.array([1e3, -2.0])
    >>> def derivs(u):
    ...     gap = np.asarray(u, dtype=float) - target
    ...     return 0.5 * float(gap @ gap), gap, np.eye(2)
    >>> u, converged = trust_region_newton(derivs, jnp.zeros(2))
    >>> np.asarray(u).tolist(), converged
    ([1000.0, -2.0], True)
    """
    eps = float(jnp.finfo(u0.dtype).eps)

    def evaluate(u):
        return tuple(np.asarray(a, dtype=float) for a in derivs_fn(u))

    u = u0
    value, grad, hess = evaluate(u)
    radius = 1.0
    for _ in range(max_iter):
        if not (np.isfinite(value) and np.all(np.isfinite(grad)) and np.all(np.isfinite(hess))):
            return u, False
        hess = 0.5 * (hess + hess.T)
        # Everything is judged in coordinates scaled by the Hessian's diagonal (Jacobi scaling,
        # as in Moré's dynamic scaling): a location parameter in units of 1e6 and a log-scale in
        # units of 1 then move alike per unit of radius, and a curvature of 1e-24 along the
        # first is not mistaken for zero next to one of 1 along the second.
        scaling = np.sqrt(np.abs(np.diag(hess)))
        scaling = np.where(scaling > 0, scaling, max(float(scaling.max()), 1e-300))
        scaled_hess = hess / np.outer(scaling, scaling)
        try:
            eigvals, eigvecs = np.linalg.eigh(0.5 * (scaled_hess + scaled_hess.T))
        except np.linalg.LinAlgError:
            return u, False
        semidefinite = eigvals[0] >= -100 * eigvals.size * eps * abs(eigvals[-1])
        if semidefinite and _at_minimum(u, value, grad, hess, eps):
            return polish(evaluate, u, (value, grad, hess), eps, negligible), True
        step = _step(eigvals, eigvecs, grad / scaling, radius) / scaling
        if not np.all(np.isfinite(step) & (np.abs(step) <= np.finfo(u.dtype).max / 4)):
            radius *= 0.25  # a step past the dtype's range: the region was far too large
            continue
        candidate = u + jnp.asarray(step, dtype=u.dtype)
        if bool(jnp.all(candidate == u)):
            return u, False  # the region has shrunk below the spacing of u's numbers
        # the model's prediction for the step as rounded to u's dtype: far from the origin a
        # location parameter's part of it rounds to a multiple of its spacing
        taken = np.asarray(candidate, dtype=float) - np.asarray(u, dtype=float)
        predicted = -(float(grad @ taken) + 0.5 * float(taken @ hess @ taken))
        evaluated = evaluate(candidate)
        actual = value - evaluated[0]
        if np.isfinite(evaluated[0]) and abs(actual) <= 64 * eps * max(abs(value),
                                                                     abs(evaluated[0])):
            # The change is lost in the value's rounding (an objective dominated by a constant:
            # DSM's E|z|²/σ², 50 at σ = 0.1, beside a change of 1e-6): estimate it from the
            # gradients at both ends by the trapezoidal rule, as Hager & Zhang's (2005)
            # approximate Wolfe conditions do, since gradients carry no such constant.
            actual = -0.5 * float((grad + evaluated[1]) @ taken)
        ratio = actual / predicted if predicted > 0 else -np.inf
        norm = float(np.linalg.norm(step * scaling))
        if not np.isfinite(evaluated[0]) or ratio < 0.25:
            radius = 0.25 * norm
        elif ratio > 0.75 and norm >= 0.99 * radius:
            radius = 2.0 * radius
        if np.isfinite(evaluated[0]) and ratio > 1e-4:
            u, (value, grad, hess) = candidate, evaluated
    return u, False
