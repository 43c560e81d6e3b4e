"""Direct solvers for small smooth objectives: the closed form of quadratic objectives and
damped Newton, both on the full-data objective, plus the derivatives the standard errors need.

Everything here is jitted with the model and the bound estimator as static arguments, so a
second fit of the same model and estimator reuses the compiled code.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from .estimators import Batch, Objective, objective_params
from .model import Model

__all__ = ["score_is_linear", "energy_is_linear", "closed_form", "newton", "derivatives",
           "observation_grads", "constrained_jacobian"]


# ---- closed form --------------------------------------------------------------------------------

@functools.partial(jax.jit, static_argnames=("model", "of"))
def _second_derivatives(theta0, template, xs, directions, *, model: Model, of: str):
    """Second directional derivatives in θ of ``model.score`` or ``model.energy`` (``of``) at
    ``xs`` along ``directions``, and the values at θ0."""
    _, unravel = ravel_pytree(template)
    quantity = model.score if of == "score" else model.energy

    def second_derivative(x, v):
        def along(t):
            return quantity(unravel(theta0 + t * v), x)

        def first(t):
            return jax.jvp(along, (t,), (jnp.ones_like(t),))[1]

        zero = jnp.zeros((), theta0.dtype)
        return jax.jvp(first, (zero,), (jnp.ones_like(zero),))[1]

    second = jax.vmap(jax.vmap(second_derivative, (None, 0)), (0, None))(xs, directions)
    values = jax.vmap(lambda x: quantity(unravel(theta0), x))(xs)
    return second, values


def _is_affine_in_params(model: Model, params: dict, data: jax.Array, of: str) -> bool:
    theta0, _ = ravel_pytree(params)
    xs = data[: min(8, data.shape[0])]
    directions = jnp.asarray(np.random.default_rng(0).normal(size=(3, theta0.size)),
                             dtype=theta0.dtype)
    second, values = _second_derivatives(theta0, params, xs, directions, model=model, of=of)
    second = np.asarray(second)
    scale = 1.0 + float(np.max(np.abs(np.asarray(values))))
    tol = float(jnp.finfo(theta0.dtype).eps) ** 0.5 * scale
    return bool(np.all(np.isfinite(second)) and np.max(np.abs(second)) <= tol)


def score_is_linear(model: Model, params: dict, data: jax.Array) -> bool:
    """Whether ``-∇ₓE(x; θ)`` is affine in the flattened constrained θ, checked by second
    directional derivatives along random directions at a few observations (they vanish
    identically for an affine map, and almost never by accident otherwise)."""
    return _is_affine_in_params(model, params, data, "score")


def energy_is_linear(model: Model, params: dict, data: jax.Array) -> bool:
    """Whether ``E(x; θ)`` is affine in the flattened constrained θ (an exponential family),
    checked as :func:`score_is_linear` is. The estimators' full-data objectives are then convex
    in θ (SM's family and KSD quadratic, pseudo-likelihood a sum of log-sum-exps, NCE a logistic
    regression), so a local minimum found by Newton's method from any start is the minimum.

    Example
    -------
    >>> import jax.numpy as jnp
    >>> import unnorm as un
    >>> ising = un.models.ising(J=jnp.zeros(3), h=jnp.zeros(3))
    >>> energy_is_linear(ising, ising.params, jnp.ones((4, 3)))
    True
    >>> energy_is_linear(un.models.rbm(3, 2), un.models.rbm(3, 2).params, jnp.ones((4, 3)))
    False
    """
    return _is_affine_in_params(model, params, data, "energy")


def closed_form(objective: Objective, model: Model, params: dict, state, data, key):
    """Minimizer of an objective that is quadratic in the flattened constrained θ: one Newton
    step from any point is exact. Returns ``None`` when the quadratic has no minimizer inside
    the constraints (the caller then optimizes)."""
    theta0, unravel = ravel_pytree(params)
    _, grad, hessian = derivatives(theta0, params, data, state, key, model=model,
                                    objective=objective, constrained=True)
    hessian = np.asarray(hessian, dtype=float)
    hessian = 0.5 * (hessian + hessian.T)
    eigvals = np.linalg.eigvalsh(hessian)
    if eigvals[0] < -1e-8 * max(abs(eigvals[-1]), 1e-300):
        return None  # unbounded below: no minimizer
    step = np.linalg.lstsq(hessian, -np.asarray(grad, dtype=float), rcond=None)[0]
    theta = jnp.asarray(np.asarray(theta0, dtype=float) + step, dtype=theta0.dtype)
    solution = unravel(theta)
    for name, value in solution.items():
        con = model.constraints[name]
        if not all(bool(jnp.all(con.check(leaf))) for leaf in jax.tree_util.tree_leaves(value)):
            return None
    return solution


# ---- full-data derivatives (compiled once per model and estimator) ------------------------------

def _full_data_term(model, objective, template, est_state, key, constrained: bool):
    """``term(flat, x, i)``: the loss of one observation at flat parameters, constrained or
    unconstrained as ``template`` (a params pytree of the same layout) is."""
    _, unravel = ravel_pytree(template)

    def term(flat, x, index):
        params = unravel(flat) if constrained else objective_params(model, objective,
                                                                    unravel(flat))
        return objective.terms(params, est_state, Batch(x[None], index[None]), key)[0]

    return term


def _map_over_data(fn, data, chunk: int = 8192):
    """``fn(x_i, i)`` for every observation: one vmap for data sets up to ``chunk`` rows
    (cheapest to compile), blocks of ``chunk`` rows beyond that (bounded memory)."""
    index = jnp.arange(data.shape[0])
    if data.shape[0] <= chunk:
        return jax.vmap(fn)(data, index)
    return jax.lax.map(lambda a: fn(a[0], a[1]), (data, index), batch_size=chunk)


def _mean_over_data(term, flat, data):
    return jnp.mean(_map_over_data(lambda x, i: term(flat, x, i), data))


_STATIC = ("model", "objective", "constrained")


@functools.partial(jax.jit, static_argnames=_STATIC)
def derivatives(flat, template, data, est_state, key, *, model, objective, constrained):
    """Value, gradient and Hessian of the full-data objective."""
    term = _full_data_term(model, objective, template, est_state, key, constrained)

    def mean_loss(f):
        return _mean_over_data(term, f, data)

    value, grad = jax.value_and_grad(mean_loss)(flat)
    return value, grad, jax.hessian(mean_loss)(flat)


@functools.partial(jax.jit, static_argnames=_STATIC)
def observation_grads(flat, template, data, est_state, key, *, model, objective, constrained):
    """``∇ℓ_i`` for every observation, shape ``(n, p)``."""
    grad_term = jax.grad(_full_data_term(model, objective, template, est_state, key,
                                         constrained))
    return _map_over_data(lambda x, i: grad_term(flat, x, i), data)


@functools.partial(jax.jit, static_argnames=("model", "objective"))
def constrained_jacobian(flat_u, template_u, *, model, objective=None):
    """Jacobian of the flattened constrained params (and nuisance, if any) in the unconstrained
    ones: the delta method's ``D``."""
    _, unravel = ravel_pytree(template_u)

    def constrained(f):
        theta = unravel(f)
        if objective is None:
            return ravel_pytree(model.to_constrained(theta))[0]
        return ravel_pytree(objective_params(model, objective, theta))[0]

    return jax.jacfwd(constrained)(flat_u)


# ---- Newton refinement --------------------------------------------------------------------------

def newton(derivs_fn: Callable, u0: jax.Array, max_iter: int = 100) -> tuple[jax.Array, bool]:
    """Damped Newton with backtracking on a smooth full-data objective.

    ``derivs_fn(u) -> (value, grad, hessian)``; the line search reuses it (one compiled function
    instead of two, and an accepted point's derivatives serve the next iteration). Returns the
    point and whether it is a minimum to working precision (Newton decrement tiny, Hessian
    positive definite).
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
        eigvals = np.linalg.eigvalsh(hess)
        positive = eigvals[0] > 0
        shift = 0.0 if positive else abs(eigvals[0]) + 1e-8 * max(abs(eigvals[-1]), 1.0)
        direction = -np.linalg.solve(hess + shift * np.eye(hess.shape[0]), grad)
        decrement = -float(grad @ direction)
        scale = max(1.0, abs(float(value)))
        # Done when the decrease Newton predicts is near the value's own rounding, eps·|value|:
        # with the floor of `scale` the rule turned absolute for objectives whose values are
        # small and stopped ratio matching (a mean of squared sigmoids, 0.027 on a peaked
        # 3-spin model) three standard errors short of its minimum.
        if positive and decrement <= 100 * eps * max(abs(float(value)), np.finfo(float).tiny):
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
            return u, bool(positive and decrement <= 1e4 * eps * scale)
        u, (value, grad, hess) = candidate, accepted
    return u, False
