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

__all__ = ["newton", "polish", "newton_decrement", "constrained_jacobian"]


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


#: Newton decrements below ``ε ** NEGLIGIBLE_EXPONENT · |value|`` are not polished. For a mean
#: over n rows whose minimizer is z standard errors away the decrement is about Σz²/n, so such
#: a point is within Σz² ≤ 1 of the minimum for n up to ε^-1.5 / |value| (several 10⁹ rows of
#: float32 at |value| ≈ 10), and far closer for fewer rows.
NEGLIGIBLE_EXPONENT = 1.5

#: the most extra full-data evaluations `polish` spends
POLISH_STEPS = 3


def newton_decrement(grad: np.ndarray, hess: np.ndarray, eps: float = 2.0**-52) -> float:
    """``gᵀH⁻¹g``, the Newton decrement squared (Boyd & Vandenberghe 2004, §9.5.1):
    the gradient's squared length in the Hessian's metric, twice the decrease a Newton step
    predicts; NaN where the Hessian is not positive definite to the precision ``eps`` of the
    numbers it was computed in.

    Examples
    --------
    >>> import numpy as np
    >>> newton_decrement(np.array([2.0, 0.0]), np.diag([4.0, 1.0]))
    1.0
    >>> newton_decrement(np.array([1.0, 1.0]), np.ones((2, 2)))  # singular
    nan
    """
    return _newton_step(grad, hess, eps)[1]


def _newton_step(grad: np.ndarray, hess: np.ndarray,
                 eps: float) -> tuple[np.ndarray | None, float]:
    """The Newton step ``-H⁻¹g`` and the decrement ``gᵀH⁻¹g``; ``(None, nan)`` unless the
    symmetrized Hessian is positive definite to working precision. Its smallest eigenvalue must
    stand clear of the ±p ε λ_max that rounding gives a zero one: along a direction the data do
    not identify (two parameters entering only through their sum) the step would be rounding
    divided by rounding, a jump along the valley of minima."""
    hess = 0.5 * (hess + hess.T)
    try:
        eigvals, eigvecs = np.linalg.eigh(hess)
    except np.linalg.LinAlgError:
        return None, float("nan")
    if not eigvals[0] > 100 * eigvals.size * eps * abs(eigvals[-1]):
        return None, float("nan")
    coefficients = eigvecs.T @ grad
    step = -eigvecs @ (coefficients / eigvals)
    return step, float(coefficients @ (coefficients / eigvals))


def polish(evaluate: Callable, u: jax.Array, derivatives: tuple, eps: float,
           negligible: float | None = None) -> jax.Array:
    """Full Newton steps from a point where the objective's value can no longer show progress,
    kept while the gradient shrinks.

    Newton's stopping rules compare the decrease they predict with the rounding of the value,
    ``ε·|value|``. For a mean over n rows the statistical scale of that decrease is ``p/n``, so
    in float32 with many rows (``ε·|value|`` ≈ 6e-7 at |value| = 5 against p/n ≈ 6.5e-6 at
    n = 10⁷) the rules can stop many standard errors short of the minimum while every value
    comparison is lost in rounding. Near a minimum the objective is quadratic and the Newton
    step is as accurate as the gradient, which carries no constant of the value's size: the
    step is taken whenever the Newton decrement ``gᵀH⁻¹g`` (Nocedal & Wright 2006, §3.3; Boyd &
    Vandenberghe 2004, §9.5.1) at the new point is smaller, and repeated while it falls at
    least fourfold, as quadratic convergence makes it, up to `POLISH_STEPS` times. A step that
    raises the value beyond its rounding, leaves the Hessian indefinite or gives a non-finite
    derivative is not taken.

    Parameters
    ----------
    evaluate : callable
        ``u -> (value, grad, hessian)`` as float64 NumPy arrays.
    u : array
        The point Newton stopped at (flat, the objective's dtype).
    derivatives : tuple
        ``evaluate(u)``, already computed.
    eps : float
        The machine epsilon of ``u``'s dtype.
    negligible : float, optional
        The decrement at which the point is as good as the minimum: no step is taken from
        there. For a mean over n rows ``1e-2 / n`` puts it within a tenth of a standard error
        (Σz² ≤ 0.01). Default ``ε ** NEGLIGIBLE_EXPONENT · |value|``.

    Returns
    -------
    array
        The polished point (``u`` itself where no step was taken).

    Examples
    --------
    A quadratic whose value carries a constant of 1e12 that swamps its changes in float64:

    >>> import jax.numpy as jnp, numpy as np
    >>> target = np.array([1e-5, -2e-5])
    >>> def evaluate(u):
    ...     gap = np.asarray(u, dtype=float) - target
    ...     return 1e12 + 0.5 * float(gap @ gap), gap, np.eye(2)
    >>> start = jnp.zeros(2)
    >>> bool(np.allclose(polish(evaluate, start, evaluate(start), 2.2e-16), target, rtol=1e-9))
    True
    """
    value, grad, hess = derivatives
    step, decrement = _newton_step(grad, hess, eps)
    tiny = float(np.finfo(float).tiny)
    if negligible is None:
        negligible = eps ** NEGLIGIBLE_EXPONENT * max(abs(float(value)), tiny)
    for _ in range(POLISH_STEPS):
        if not decrement > negligible:
            break  # (NaN: an indefinite or singular Hessian, which Newton's steps do not fix)
        candidate = u + jnp.asarray(step, dtype=u.dtype)
        if bool(jnp.all(candidate == u)):
            break  # the step is below the spacing of u's numbers
        new_value, new_grad, new_hess = evaluate(candidate)
        if not (np.isfinite(new_value) and np.all(np.isfinite(new_grad))
                and np.all(np.isfinite(new_hess))):
            break
        if new_value > value + 100 * eps * max(abs(float(value)), abs(float(new_value)), tiny):
            break  # a real increase: not the quadratic neighbourhood
        new_step, new_decrement = _newton_step(new_grad, new_hess, eps)
        if not new_decrement < decrement:
            break  # at the gradient's own rounding (or an indefinite Hessian: NaN)
        falling = new_decrement < 0.25 * decrement
        u, value, step, decrement = candidate, new_value, new_step, new_decrement
        if not falling:
            break
    return u


def newton(derivs_fn: Callable, u0: jax.Array, max_iter: int = 100,
           negligible: float | None = None) -> tuple[jax.Array, bool]:
    """Damped Newton with backtracking on a smooth full-data objective.

    ``derivs_fn(u) -> (value, grad, hessian)``; the line search reuses it (one compiled function
    instead of two, and an accepted point's derivatives serve the next iteration). Returns the
    point and whether it is a minimum to working precision (Newton decrement tiny, Hessian
    positive semidefinite to working precision: a flat direction, along which the data do not
    identify the parameters, leaves a valley of minima, and the point is one of them). Where
    the value can no longer show progress the point is finished by :func:`polish`, which
    stops at a decrement of ``negligible``.
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
            return polish(evaluate, u, (value, grad, hess), eps, negligible), True
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
            at_minimum = bool(semidefinite and decrement <= 1e4 * eps * scale)
            if at_minimum:
                u = polish(evaluate, u, (value, grad, hess), eps, negligible)
            return u, at_minimum
        u, (value, grad, hess) = candidate, accepted
    return u, False
