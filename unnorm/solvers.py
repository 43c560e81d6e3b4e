"""Direct solvers for small smooth objectives: the closed form of quadratic objectives and
damped Newton, both on the full-data objective, plus the derivatives the standard errors need.

Everything here is jitted with the model and the bound estimator as static arguments, so a
second fit of the same model and estimator reuses the compiled code.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from .errors import FitError, data_scale
from .estimators import Batch, Objective, objective_params
from .model import Model
from .newton import constrained_jacobian as jacobian_of
from .newton import newton

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


def closed_form(objective: Objective, model: Model, params: dict, state, data, key,
                label: str = "the objective"):
    """Minimizer of an objective that is quadratic in the flattened constrained θ: one Newton
    step from any point is exact. Returns ``None`` when the quadratic has no minimizer inside
    the constraints, or when the gradient does not vanish at the solution (the objective was
    not quadratic after all; the caller then optimizes). Raises :class:`~unnorm.errors.FitError`
    (naming ``label``) when the gradient or Hessian is not finite."""
    theta0, unravel = ravel_pytree(params)
    _, grad, hessian = derivatives(theta0, params, data, state, key, model=model,
                                    objective=objective, constrained=True)
    hessian = np.asarray(hessian, dtype=float)
    grad = np.asarray(grad, dtype=float)
    if not (np.all(np.isfinite(hessian)) and np.all(np.isfinite(grad))):
        # LAPACK would only say "Eigenvalues did not converge"; the Hessian of a quadratic is
        # the same at every θ, so no other starting point avoids the overflow
        matrix = "Hessian" if not np.all(np.isfinite(hessian)) else "gradient"
        raise FitError(
            f"the closed-form solve of {label} failed: the {matrix} of its objective "
            f"({hessian.shape[0]} parameters) has non-finite entries, so the linear system "
            f"cannot be solved. The energy's derivatives overflow {theta0.dtype} at these "
            f"data ({data_scale(data)}). Rescale the data (e.g. "
            "standardize each coordinate), or compute in float64 with "
            "jax.config.update('jax_enable_x64', True); if the data are of ordinary size, "
            "check the energy for overflow."
        )
    hessian = 0.5 * (hessian + hessian.T)
    eigvals = np.linalg.eigvalsh(hessian)
    if eigvals[0] < -1e-8 * max(abs(eigvals[-1]), 1e-300):
        return None  # unbounded below: no minimizer
    step = np.linalg.lstsq(hessian, -grad, rcond=None)[0]
    theta = jnp.asarray(np.asarray(theta0, dtype=float) + step, dtype=theta0.dtype)
    solution = unravel(theta)
    for name, value in solution.items():
        con = model.constraints[name]
        if not all(bool(jnp.all(con.check(leaf))) for leaf in jax.tree_util.tree_leaves(value)):
            return None
    if not _is_stationary(objective, model, params, theta, state, data, key):
        return None
    return solution


def _is_stationary(objective, model, params, theta, state, data, key) -> bool:
    """Whether the gradient vanishes at the closed form's solution to working precision: the
    decrease a Newton step from there predicts is within a small multiple of the rounding of
    the objective's value. The affinity check behind the closed form looks at a few
    observations near θ0; with data far from the origin a score that is not affine in θ
    (a Gaussian's ``Λ(x - μ)``) bends by little relative to its size there and passes it, and
    the "solution" is then no minimizer at all."""
    value, grad, hessian = (np.asarray(a, dtype=float) for a in derivatives(
        theta, params, data, state, key, model=model, objective=objective, constrained=True))
    if not (np.isfinite(value) and np.all(np.isfinite(grad)) and np.all(np.isfinite(hessian))):
        return False
    step = np.linalg.lstsq(0.5 * (hessian + hessian.T), grad, rcond=None)[0]
    eps = float(jnp.finfo(theta.dtype).eps)
    return float(grad @ step) <= 1e4 * eps * max(abs(float(value)), 1.0)


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
    if objective is None:
        return jacobian_of(flat_u, template_u, model.to_constrained)
    return jacobian_of(
        flat_u, template_u, lambda theta: objective_params(model, objective, theta))

