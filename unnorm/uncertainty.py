"""Asymptotic standard errors of M-estimators: the sandwich (Godambe) covariance.

An estimator ``θ̂ = argmin (1/n) Σ_i ℓ_i(θ)`` has, under the usual regularity conditions (i.i.d.
observations, a unique interior minimizer, ``ℓ`` twice differentiable with finite moments),

    √n (θ̂ - θ*) → N(0, H⁻¹ J H⁻¹),   H = E[∇²ℓ],   J = E[∇ℓ ∇ℓᵀ],

estimated by the empirical means at ``θ̂``. No model-correctness assumption is needed (the
sandwich stays valid when the model is misspecified, unlike the inverse Fisher information).
The covariance is computed in the parameterization that was optimized and carried to the
constrained parameters by the delta method, ``Cov(g(u)) ≈ Dg Cov(u) Dgᵀ``.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import numpy as np

__all__ = ["Sandwich", "sandwich_covariance", "delta_method", "parameter_names"]


class Sandwich(NamedTuple):
    """``covariance = H⁺ J H⁺ / n`` with its pieces (flat parameter vector)."""

    covariance: np.ndarray
    hessian: np.ndarray
    score_covariance: np.ndarray
    num_observations: int


def sandwich_covariance(observation_grads, hessian) -> Sandwich:
    """Sandwich covariance of ``θ̂`` from the per-observation gradients and the mean Hessian.

    Parameters
    ----------
    observation_grads : array (n, p)
        ``∇ℓ_i(θ̂)`` for each observation.
    hessian : array (p, p)
        ``(1/n) Σ_i ∇²ℓ_i(θ̂)``.

    Returns
    -------
    Sandwich
        ``H⁺ J H⁺ / n`` with ``J = (1/n) Σ_i ∇ℓ_i ∇ℓ_iᵀ``; ``H⁺`` is the pseudo-inverse, so
        directions the loss does not depend on (e.g. the antisymmetric part of a matrix that
        enters only as a quadratic form) get zero variance instead of an infinite one.
    """
    grads = np.asarray(observation_grads, dtype=float)
    hessian = np.asarray(hessian, dtype=float)
    n = grads.shape[0]
    hessian = 0.5 * (hessian + hessian.T)
    score_cov = grads.T @ grads / n
    h_pinv = np.linalg.pinv(hessian, hermitian=True)
    cov = h_pinv @ score_cov @ h_pinv / n
    return Sandwich(0.5 * (cov + cov.T), hessian, score_cov, n)


def delta_method(jacobian, covariance: np.ndarray) -> np.ndarray:
    """Covariance of ``g(θ̂)`` from that of ``θ̂``: ``D Σ Dᵀ`` with ``D`` the Jacobian of ``g``."""
    jac = np.asarray(jacobian, dtype=float)
    return jac @ covariance @ jac.T


def parameter_names(params: dict) -> list[str]:
    """One name per scalar of ``ravel_pytree(params)``, in its order: ``mu[0]``, ``prec[0,1]``,
    ``net.0.w[1,2]``; a scalar parameter keeps its bare name."""
    names = []
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    for path, leaf in leaves:
        label = ".".join(_key_label(k) for k in path)
        shape = np.shape(leaf)
        if shape == ():
            names.append(label)
        else:
            names.extend(f"{label}[{','.join(map(str, idx))}]" for idx in np.ndindex(shape))
    return names


def _key_label(key) -> str:
    for attr in ("key", "idx", "name"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)
