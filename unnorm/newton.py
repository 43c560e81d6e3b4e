"""Damped Newton on small smooth objectives, and the Jacobian of the delta method.

A lower module than :mod:`unnorm.solvers` (which knows the estimators' objectives): the
estimators that finish their own fits (MLE's Monte Carlo MLE, KSD's U-statistic) call these
directly, so that imports point one way, estimators → newton, never back.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

__all__ = ["newton", "constrained_jacobian"]


def constrained_jacobian(flat_u: jax.Array, template_u, to_constrained: Callable) -> jax.Array:
    """Jacobian of the flattened ``to_constrained(unravel(flat_u))`` in the flattened
    unconstrained values: the delta method's ``D`` (``template_u`` gives the tree structure).

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> d = constrained_jacobian(jnp.zeros(1), {"s": jnp.zeros(1)},
    ...                          lambda t: {"s": jnp.exp(t["s"])})
    >>> float(d[0, 0])
    1.0

    Compiled once per ``to_constrained``, not op by op where it is called outside compiled
    code. A bound method is keyed on its object's own equality (Python compares bound methods
    by the identity of their object), so the method of a model built again, equal to the
    first, reuses its program.
    """
    return _constrained_jacobian(flat_u, template_u, to_constrained=_static_callable(
        to_constrained))


class _BoundMethod(NamedTuple):
    """``getattr(owner, name)``, equal and hashed as ``(owner, name)`` are."""

    owner: object
    name: str

    def __call__(self, *args, **kwargs):
        return getattr(self.owner, self.name)(*args, **kwargs)


def _static_callable(function: Callable) -> Callable:
    """``function`` as a static argument of ``jax.jit``: a bound method as a
    :class:`_BoundMethod`, anything else as it is."""
    if inspect.ismethod(function):
        return _BoundMethod(function.__self__, function.__name__)
    return function


@functools.partial(jax.jit, static_argnames=("to_constrained",))
def _constrained_jacobian(flat_u, template_u, *, to_constrained: Callable) -> jax.Array:
    _, unravel = ravel_pytree(template_u)
    return jax.jacfwd(lambda f: ravel_pytree(to_constrained(unravel(f)))[0])(flat_u)


def _solve(matrix: np.ndarray, rhs: np.ndarray) -> np.ndarray:
    """``matrix⁻¹ rhs``; for an exactly singular matrix (two parameters that enter the
    objective only through their sum: not identified) the minimum-norm solution, a step along
    the identified directions only. The sandwich covariance then reports the unidentified ones
    (:func:`unnorm.uncertainty.unidentified_directions`)."""
    try:
        return np.linalg.solve(matrix, rhs)
    except np.linalg.LinAlgError:
        return np.linalg.lstsq(matrix, rhs, rcond=None)[0]


def newton(derivs_fn: Callable, u0: jax.Array, max_iter: int = 100) -> tuple[jax.Array, bool]:
    """Damped Newton with backtracking on a smooth full-data objective.

    ``derivs_fn(u) -> (value, grad, hessian)``; the line search reuses it (one compiled function
    instead of two, and an accepted point's derivatives serve the next iteration). Returns the
    point and whether it is a minimum to working precision (Newton decrement tiny, Hessian
    positive semidefinite to working precision: a flat direction, along which the data do not
    identify the parameters, leaves a valley of minima, and the point is one of them).
    """
    eps = float(jnp.finfo(u0.dtype).eps)

    def evaluate(u):
        return tuple(np.asarray(a, dtype=float) for a in derivs_fn(u))

    u = u0
    value, grad, hess = evaluate(u)
    for _ in range(max_iter):
        if not (np.isfinite(value) and np.all(np.isfinite(grad)) and np.all(np.isfinite(hess))):
            return u, False
        hess = 0.5 * (hess + hess.T)
        try:
            eigvals = np.linalg.eigvalsh(hess)  # finite, so LAPACK converges but in freak cases
        except np.linalg.LinAlgError:
            return u, False
        positive = eigvals[0] > 0
        # a zero eigenvalue computed from rounded derivatives comes out at about ±p ε |λ_max|
        semidefinite = eigvals[0] >= -100 * eigvals.size * eps * abs(eigvals[-1])
        shift = 0.0 if positive else abs(eigvals[0]) + 1e-8 * max(abs(eigvals[-1]), 1.0)
        direction = -_solve(hess + shift * np.eye(hess.shape[0]), grad)
        decrement = -float(grad @ direction)
        scale = max(1.0, abs(float(value)))
        # Done when the decrease Newton predicts is near the value's own rounding, eps·|value|:
        # with the floor of `scale` the rule turned absolute for objectives whose values are
        # small and stopped ratio matching (a mean of squared sigmoids, 0.027 on a peaked
        # 3-spin model) three standard errors short of its minimum.
        if semidefinite and decrement <= 100 * eps * max(abs(float(value)), np.finfo(float).tiny):
            return u, True
        step, accepted = 1.0, None
        for _ in range(40):
            candidate = u + jnp.asarray(step * direction, dtype=u.dtype)
            evaluated = evaluate(candidate)
            if np.isfinite(evaluated[0]) and evaluated[0] <= value - 1e-4 * step * decrement:
                accepted = evaluated
                break
            step *= 0.5
        if accepted is None:
            # no decrease at working precision: a minimum if the curvature says so
            return u, bool(semidefinite and decrement <= 1e4 * eps * scale)
        u, (value, grad, hess) = candidate, accepted
    return u, False
