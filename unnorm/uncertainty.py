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

import warnings
from typing import NamedTuple

import jax
import numpy as np

__all__ = ["Sandwich", "sandwich_covariance", "sandwich_from_moments", "jacobi_scale",
           "unit_curvature_scale", "precision_floor", "underflowing", "delta_method",
           "parameter_names", "symmetric_pinv", "unidentified_directions", "describe_direction"]


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
    return sandwich_from_moments(hessian, grads.T @ grads / grads.shape[0], grads.shape[0],
                                 "per-observation gradients")


def sandwich_from_moments(hessian, score_outer, num_observations: int,
                          score_name: str = "per-observation gradients") -> Sandwich:
    """Sandwich covariance of ``θ̂`` from the mean Hessian and the mean outer product of the
    per-observation gradients, the two sums a pass over the data in blocks of rows can carry
    (Godambe 1960; Huber 1967), so that the ``n × p`` gradients need never be held at once.

    Parameters
    ----------
    hessian : array (p, p)
        ``H = (1/n) Σ_i ∇²ℓ_i(θ̂)``.
    score_outer : array (p, p)
        ``J = (1/n) Σ_i ∇ℓ_i(θ̂) ∇ℓ_i(θ̂)ᵀ``.
    num_observations : int
        ``n``.
    score_name : str
        What ``J`` was computed from, named in the warning when it is not finite.

    Returns
    -------
    Sandwich
        ``H⁺ J H⁺ / n`` (see :func:`sandwich_covariance`), the pseudo-inverse taken of ``H``
        scaled to unit diagonal (:func:`jacobi_scale`), so that parameters on very different
        scales are not cut off as singular; all NaN, with a warning, when ``H`` or ``J`` has
        non-finite entries.

    Example
    -------
    >>> s = sandwich_from_moments(np.diag([2.0, 1.0]), np.diag([4.0, 1.0]), 100)
    >>> np.diag(s.covariance).tolist()
    [0.01, 0.01]
    """
    hessian = np.asarray(hessian, dtype=float)
    score_cov = np.asarray(score_outer, dtype=float)
    n = int(num_observations)
    hessian = 0.5 * (hessian + hessian.T)
    score_cov = 0.5 * (score_cov + score_cov.T)
    bad = [name for name, matrix in (("Hessian", hessian), (score_name, score_cov))
           if not np.all(np.isfinite(matrix))]
    if bad:
        # no covariance to compute, but the estimate itself may be fine: NaN standard errors
        # and a warning, not an exception
        verb = "has" if bad == ["Hessian"] else "have"
        warnings.warn(
            f"the {' and the '.join(bad)} of the objective at the estimate {verb} non-finite "
            "entries, so the standard errors are NaN: the energy or its derivatives overflow "
            "there. Check the scale of the data (standardize each coordinate) and the energy "
            "for overflow.", RuntimeWarning, stacklevel=3)
        nan = np.full((hessian.shape[0],) * 2, np.nan)
        return Sandwich(nan, hessian, score_cov, n)
    # scaled to unit diagonal first (Jacobi preconditioning) and mapped back: a location of
    # data on a scale of 1e8 has a curvature 1e-16 times a log-precision's, under the
    # pseudo-inverse's cut-off of 1e-15 relative to the largest eigenvalue, which gave it a
    # variance of about 0 instead of (1e8)²/n
    scale = jacobi_scale(hessian)
    h_pinv = symmetric_pinv(scale[:, None] * hessian * scale[None, :])
    cov = h_pinv @ (scale[:, None] * score_cov * scale[None, :]) @ h_pinv / n
    cov = scale[:, None] * cov * scale[None, :]
    return Sandwich(0.5 * (cov + cov.T), hessian, score_cov, n)


def jacobi_scale(hessian) -> np.ndarray:
    """``diag(H)^{-1/2}`` where the diagonal is positive and finite, 1 elsewhere: the scaling
    ``S H S`` of a Hessian to unit diagonal, which leaves the sandwich unchanged in exact
    arithmetic and makes its inverse independent of the parameters' units.

    Examples
    --------
    >>> jacobi_scale(np.diag([4.0, 0.25, 0.0])).tolist()
    [0.5, 2.0, 1.0]
    """
    diagonal = np.diag(np.asarray(hessian, dtype=float))
    usable = np.isfinite(diagonal) & (diagonal > 0)
    return np.where(usable, 1.0 / np.sqrt(np.where(usable, diagonal, 1.0)), 1.0)


def unit_curvature_scale(hessian, scale, dtype) -> np.ndarray:
    """The coordinate scale, after ``scale``, in which ``hessian`` (computed in the coordinates
    ``θ = scale ⊙ ψ``) has unit diagonal, rounded to ``dtype`` as the derivative passes read
    it. A curvature lost to underflow gives no scale of its own: the largest one's, the
    objective's, lifts it at least to the objective's size.

    Example
    -------
    >>> unit_curvature_scale(np.diag([4.0, 0.0]), np.ones(2), np.float32).tolist()
    [0.5, 0.5]
    """
    diagonal = np.diag(np.asarray(hessian, dtype=float))
    usable = np.isfinite(diagonal) & (diagonal > 0)
    fallback = 1.0 / np.sqrt(diagonal[usable].max()) if np.any(usable) else 1.0
    step = np.where(usable, jacobi_scale(hessian), fallback)
    return np.asarray(np.asarray(scale, dtype=float) * step, dtype=dtype).astype(float)


def precision_floor(dtype) -> float:
    """The smallest magnitude at which a mean of squares summed in ``dtype`` keeps about half
    of its digits: ``tiny / √ε``. Squares below ``tiny``, the smallest normal number, are
    flushed to zero (XLA's CPU backend does so) or lose their digits, each by at most
    ``tiny``, so a mean above this floor is off by at most ``√ε`` relative to itself.

    Example
    -------
    >>> f"{precision_floor(np.float32):.2g}"
    '3.4e-35'
    """
    info = np.finfo(dtype)
    return float(info.tiny) / float(np.sqrt(info.eps))


def underflowing(hessian, score_outer, dtype) -> np.ndarray:
    """Which parameters' curvature ``H_ii`` or gradient second moment ``J_ii``, computed in
    ``dtype``, lies below :func:`precision_floor`, so that the sandwich would rest on numbers
    lost to underflow: a boolean mask. A parameter with both exactly zero is not among them:
    the objective does not depend on it, which :func:`unidentified_directions` reports.

    Example
    -------
    >>> underflowing(np.diag([1.0, 1e-32, 0.0]), np.diag([1.0, 0.0, 0.0]), np.float32).tolist()
    [False, True, False]
    """
    h = np.abs(np.diag(np.asarray(hessian, dtype=float)))
    j = np.abs(np.diag(np.asarray(score_outer, dtype=float)))
    floor = precision_floor(dtype)
    flat = (h == 0) & (j == 0)
    return ~flat & ((h < floor) | (j < floor))


def symmetric_pinv(matrix) -> np.ndarray:
    """Pseudo-inverse of the symmetric part of ``matrix``; all NaN when it has non-finite
    entries or its eigendecomposition fails (the callers' standard errors are then NaN, which
    they report, rather than LAPACK's error).

    Examples
    --------
    >>> symmetric_pinv(np.diag([2.0, 0.0])).tolist()
    [[0.5, 0.0], [0.0, 0.0]]
    """
    matrix = np.asarray(matrix, dtype=float)
    nan = np.full(matrix.shape, np.nan)
    if not np.all(np.isfinite(matrix)):
        return nan
    try:
        return np.linalg.pinv(0.5 * (matrix + matrix.T), hermitian=True)
    except np.linalg.LinAlgError:
        return nan


def unidentified_directions(hessian, dtype=np.float32) -> np.ndarray:
    """Directions of the parameters along which an objective with this Hessian at its minimum
    does not change, to the working precision of ``dtype``: the parameters are not identified
    from the data along them. Rows of the returned ``(k, p)`` array are unit vectors; ``k = 0``
    when the Hessian is nonsingular.

    The Hessian is first scaled to unit diagonal (``S H S`` with ``S = diag(H)^{-1/2}``), so
    that parameters of very different scales do not look singular; a parameter with zero
    curvature is a direction of its own. An eigenvalue of the scaled Hessian within
    ``100 p ε`` of zero (ε the precision of ``dtype``, in which the objective was evaluated)
    is taken for zero: a structurally unidentified direction (the energy depends on ``a·b``
    only) comes out of float32 derivatives at about ``10 p ε``, and a direction that weakly
    identified would have standard errors hundreds of times those of the others, resting
    on the rounding of the Hessian.

    Examples
    --------
    >>> h = np.array([[1.0, 1.0], [1.0, 1.0]])      # the loss depends on a + b only
    >>> np.round(np.abs(unidentified_directions(h)), 3).tolist()
    [[0.707, 0.707]]
    >>> unidentified_directions(np.diag([1.0, 1e-4])).shape
    (0, 2)
    """
    hessian = np.asarray(hessian, dtype=float)
    p = hessian.shape[0]
    if p == 0 or not np.all(np.isfinite(hessian)):
        return np.zeros((0, p))
    hessian = 0.5 * (hessian + hessian.T)
    diagonal = np.diag(hessian)
    flat = diagonal <= 0
    scale = np.where(flat, 1.0, 1.0 / np.sqrt(np.where(flat, 1.0, diagonal)))
    scaled = scale[:, None] * hessian * scale[None, :]
    scaled[flat, :] = 0.0
    scaled[:, flat] = 0.0
    eigvals, eigvecs = np.linalg.eigh(scaled)
    tol = 100 * p * float(np.finfo(dtype).eps)
    # |λ|: a clearly negative eigenvalue is a saddle, not a flat direction
    null = eigvecs[:, np.abs(eigvals) <= tol] * scale[:, None]  # in the parameters' coordinates
    null = null / np.linalg.norm(null, axis=0, keepdims=True)
    return null.T


def describe_direction(direction, names: list[str], limit: int = 4) -> str:
    """A direction in parameter space as a readable combination, largest components first:
    ``0.71·a − 0.71·b``.

    Examples
    --------
    >>> describe_direction(np.array([0.6, -0.8, 0.0]), ["a", "b", "c"])
    '0.8·b − 0.6·a'
    """
    direction = np.asarray(direction, dtype=float)
    # largest first; equal ones (to rounding) in the parameters' order
    order = np.argsort(-np.round(np.abs(direction), 6), kind="stable")
    if direction[order[0]] < 0:
        direction = -direction  # the sign of a null direction is arbitrary: lead with a plus
    order = [i for i in order if abs(direction[i]) > 1e-3][:limit]
    text = ""
    for i in order:
        value = direction[i]
        sign = "" if not text else (" − " if value < 0 else " + ")
        text += f"{sign}{abs(value):.2g}·{names[i]}"
    if len(order) < np.sum(np.abs(direction) > 1e-3):
        text += " + ..."
    return text


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
