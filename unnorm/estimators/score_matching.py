"""The score-matching family: SM (Song & Kingma 2021, eq. 8), DSM (eq. 10-14) and SSM (eq. 15-17).

All three need the score ``s(x) = -∇ₓE(x; θ)`` only, never the normalizing constant. Signs: the
seed writes eq. 8 and eq. 15 with ``+∂²E``; with ``p ∝ exp(-E)`` integration by parts gives
``½‖∇ₓE‖² - tr ∇ₓ²E`` (Hyvärinen 2005, eq. 4 in terms of ``ψ = ∇ log p = -∇E``), which is what is
implemented (for ``E = ½ λ x²`` it gives ``λ̂ = 1 / mean(x²)``, the MLE).

On ``positive`` and ``interval`` supports the integration by parts picks up boundary terms and
plain SM is inconsistent; there the generalized score matching of Hyvärinen (2007) and Yu, Drton
& Shojaie (2019) is used: with a weight ``h_j(x)`` vanishing on the boundary,

    ℓ(x) = Σ_j ½ h_j(x) (∂_j E)² - h_j(x) ∂²_j E - ∂_j h_j(x) ∂_j E,

which reduces to eq. 8 for ``h ≡ 1``.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from typing import NamedTuple

import folx
import jax
import jax.numpy as jnp

from .. import _checks, threefry
from ..model import Model
from ..supports import Support
from .base import Estimator, Objective, Traits, observation_keys

__all__ = ["SM", "DSM", "SSM", "boundary_weight", "grad_and_hessian_diagonal", "grad_and_laplacian"]


class NoiseState(NamedTuple):
    """State of the score-matching estimators: the key per-observation noise is drawn from."""

    noise_key: jax.Array


# ---- derivatives in x ---------------------------------------------------------------------------

def grad_and_hessian_diagonal(energy_x: Callable, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``∇ₓE`` and the diagonal of ``∇ₓ²E`` by forward-over-reverse Hessian-vector products.

    The gradient is linearized once (``jax.linearize``) and the ``d`` products ``e_jᵀ H e_j``
    reuse that linearization; the d×d Hessian is never formed as an output.
    """
    grad, hvp = jax.linearize(jax.grad(energy_x), x)
    basis = jnp.eye(x.size, dtype=x.dtype).reshape((x.size, *x.shape))
    diag = jax.vmap(lambda e: jnp.vdot(e, hvp(e)))(basis)
    return grad, diag.reshape(x.shape)


def grad_and_laplacian(energy_x: Callable, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``∇ₓE`` and the Laplacian ``tr ∇ₓ²E`` at one observation ``x``: the two terms of SM's
    objective (Song & Kingma 2021, eq. 8).

    Computed by the forward Laplacian (Li et al. 2023, "Forward Laplacian"; the ``folx``
    library): one forward pass carries each intermediate value's gradient in ``x`` and its
    Laplacian, so neither a backward pass nor ``d`` Hessian-vector products are needed; on MLP
    energies this is 1.5-3.5x faster than :func:`grad_and_hessian_diagonal`
    (benchmarks/README.md). Energies whose operations the forward Laplacian cannot trace (a
    ``lax.scan`` over ``x``, a ``fori_loop``) fall back to :func:`grad_and_hessian_diagonal`;
    both are exact.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> from unnorm.estimators.score_matching import grad_and_laplacian
    >>> grad, lap = grad_and_laplacian(lambda x: jnp.sum(x**3), jnp.array([1.0, 2.0]))
    >>> grad.tolist(), float(lap)                       # 3x², Σ 6x
    ([3.0, 12.0], 18.0)
    """
    def energy_flat(y):
        return energy_x(y.reshape(x.shape))

    previous = logging.root.manager.disable
    # folx logs to the root logger while it traces (and on the failures we recover from)
    logging.disable(logging.CRITICAL)
    try:
        out = folx.forward_laplacian(energy_flat, sparsity_threshold=0)(x.reshape(-1))
        return out.jacobian.dense_array.reshape(x.shape), out.laplacian
    except Exception:  # noqa: BLE001 - any primitive folx cannot trace: the HVP route is exact
        grad, diag = grad_and_hessian_diagonal(energy_x, x)
        return grad, jnp.sum(diag)
    finally:
        logging.disable(previous)


def _grad_and_quadratic_forms(energy_x: Callable, x: jax.Array, vs: jax.Array):
    """``∇ₓE`` and ``vᵀ ∇ₓ²E v`` for each row ``v`` of ``vs`` (Song & Kingma 2021, eq. 16: O(d)
    each)."""
    if vs.shape[0] == 1:
        # one projection: a plain jvp; a vmap over a size-1 axis compiles to a slower step
        grad, hv = jax.jvp(jax.grad(energy_x), (x,), (vs[0],))
        return grad, jnp.vdot(vs[0], hv)[None]
    grad, hvp = jax.linearize(jax.grad(energy_x), x)
    return grad, jax.vmap(lambda v: jnp.vdot(v, hvp(v)))(vs)


# ---- boundary weights for generalized score matching -------------------------------------------

def boundary_weight(support: Support, truncation: float | None = None):
    """The weight ``h(x)`` of generalized score matching and its derivative, per coordinate.

    ``h_j(x) = min(dist_j, C)²`` with ``dist_j`` the distance of ``x_j`` to the nearest bound
    (``x_j`` on a positive support: Hyvärinen 2007's ``x_j²``; ``min(x_j - a, b - x_j)`` on an
    interval) and ``C`` the ``truncation`` (none by default; a finite ``C`` bounds the weight
    far from the boundary, as in Yu, Drton & Shojaie 2019). Returns ``None`` on a real support
    (``h ≡ 1``: plain SM).
    """
    if support.kind == "real":
        return None
    if support.kind == "positive":
        def distance(x):
            return x, jnp.ones_like(x)
    elif support.kind == "interval":
        low, high = jnp.asarray(support.low), jnp.asarray(support.high)

        def distance(x):
            below, above = x - low.astype(x.dtype), high.astype(x.dtype) - x
            nearer_low = below <= above
            return jnp.where(nearer_low, below, above), jnp.where(nearer_low, 1.0, -1.0)
    else:
        raise ValueError(f"no boundary weight for the {support.kind} support.")

    def weight(x):
        dist, ddist = distance(x)
        if truncation is not None:
            ddist = jnp.where(dist < truncation, ddist, 0.0)
            dist = jnp.minimum(dist, truncation)
        return dist**2, 2.0 * dist * ddist

    return weight


# ---- shared plumbing ----------------------------------------------------------------------------

def _check_continuous(estimator: Estimator, model: Model) -> None:
    if model.support.is_discrete:
        raise ValueError(
            f"estimator {estimator.name!r} needs a continuous support, but the model's support is "
            f"{model.support!r}: score matching differentiates the energy in x. For binary or "
            "spin data use pseudo-likelihood, estimator='pl'."
        )


def _check_truncation(truncation) -> float | None:
    if truncation is None:
        return None
    return _checks.check_positive_float(truncation, "truncation")


def _objective(term: Callable, resample: bool, uses_noise: bool) -> Objective:
    """An :class:`Objective` from a per-observation term ``term(params, x, key) -> scalar``."""

    def init(params, key, data):
        return NoiseState(jax.random.fold_in(key, 0x5EED))

    def terms(params, state, batch, key):
        if not uses_noise:
            # no keys to draw: their hashes would be traced under every derivative of the
            # loss only for XLA to remove them
            return jax.vmap(term, in_axes=(None, 0, None))(params, batch.x, None)
        keys = observation_keys(state.noise_key, batch, key, resample)
        return jax.vmap(term, in_axes=(None, 0, 0))(params, batch.x, keys)

    def loss(params, state, batch, key):
        return jnp.mean(terms(params, state, batch, key)), (state, {})

    return Objective(init, loss, terms, Traits(
        deterministic=not (resample and uses_noise), convex_if_linear_energy=True,
        quadratic_if_linear_score=True))


# ---- SM -----------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class SM(Estimator):
    """Score matching (Hyvärinen 2005; Song & Kingma 2021, eq. 8), generalized on bounded supports.

    Minimizes ``mean_i ½‖∇ₓE(x_i)‖² - tr ∇ₓ²E(x_i)``; the trace comes from a forward
    Laplacian pass (:func:`grad_and_laplacian`), the Hessian never formed. On ``positive`` and
    ``interval`` supports the boundary-weighted form of Hyvärinen (2007) is used (see
    :func:`boundary_weight`). When the score is linear in θ (exponential families) the objective
    is quadratic and :func:`unnorm.fit` solves it in closed form.

    Parameters
    ----------
    truncation : float, optional
        Caps the boundary weight at ``min(dist, truncation)²`` (bounded supports only).

    Examples
    --------
    >>> import jax, jax.numpy as jnp, numpy as np, unnorm as un
    >>> def energy(params, x):                     # linear in K: a closed-form fit
    ...     return 0.5 * x @ params["K"] @ x
    >>> model = un.Model(energy, params={"K": jnp.eye(2)},
    ...                  constraints={"K": un.constraints.positive_definite},
    ...                  support=un.supports.real(2))
    >>> x = np.random.default_rng(0).normal(size=(500, 2))
    >>> fit = un.fit(model, x, "sm", key=jax.random.key(0), progress_bar=False)
    >>> fit.method
    'closed form'
    >>> bool(np.allclose(fit.params["K"], np.linalg.inv(x.T @ x / 500), rtol=1e-3))
    True
    """

    truncation: float | None = None
    name = "sm"

    def check(self, model: Model) -> None:
        _check_continuous(self, model)
        _check_truncation(self.truncation)

    def build(self, model: Model, resample: bool) -> Objective:
        weight = boundary_weight(model.support, _check_truncation(self.truncation))

        def term(params, x, key):
            energy_x = lambda y: model.energy(params, y)  # noqa: E731
            if weight is None:
                grad, laplacian = grad_and_laplacian(energy_x, x)
                return 0.5 * jnp.sum(grad**2) - laplacian
            # the weighted sum Σ h_j ∂²_j E needs the diagonal itself
            grad, diag = grad_and_hessian_diagonal(energy_x, x)
            h, dh = weight(x)
            return jnp.sum(0.5 * h * grad**2 - h * diag - dh * grad)

        return _objective(term, resample, uses_noise=False)


# ---- DSM ----------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class DSM(Estimator):
    """Denoising score matching (Vincent 2011; Song & Kingma 2021, eq. 10-11).

    Each observation is perturbed, ``x̃ = x + σz`` with ``z ~ N(0, I)``, and the model's score at
    ``x̃`` is regressed on the score of the noise kernel::

        ℓ(x, z) = ½ ‖z/σ - ∇ₓE(x + σz)‖²                                   (eq. 11)

    It fits the noise-perturbed density, so it is consistent for θ only as σ → 0.

    Parameters
    ----------
    sigma : float or sequence of float
        Noise scale (> 0). A sequence gives the noise-conditional objective of Amini's lecture
        notes,
        ``(1/L) Σ_l σ_l² ℓ_{σ_l}``; when the energy function has a ``sigma`` keyword
        (``energy(params, x, sigma)``) it is told the level, as in a noise-conditional score
        network.
    control_variate : bool
        Subtract the control variate of eq. 13 (Wang et al. 2020), ``c = -(2/σ) zᵀ∇ₓE(x) +
        ‖z‖²/σ² - d/σ²``, which has mean zero and cuts the variance at small σ (eq. 14). On by
        default: without it the standard errors at σ = 0.1 are about ten times larger on a 2-D
        Gaussian, for one more gradient of the energy per observation. ``False`` gives the plain
        loss of eq. 11.

    Examples
    --------
    >>> import jax, numpy as np, unnorm as un
    >>> x = np.random.default_rng(0).normal(size=(500, 2))
    >>> fit = un.fit(un.models.gaussian(2), x, un.estimators.DSM(0.05), key=jax.random.key(0),
    ...              progress_bar=False)
    >>> bool(np.all(abs(fit.params["mu"]) < 4 * fit.stderr["mu"]))   # the truth is 0
    True
    """

    sigma: float | tuple[float, ...] = 0.1
    control_variate: bool = True
    name = "dsm"

    def _sigmas(self) -> tuple[float, ...]:
        if isinstance(self.sigma, (list, tuple)):
            if not self.sigma:
                raise ValueError("sigma must be a number > 0 or a non-empty list of them; got [].")
            return tuple(_checks.check_positive_float(s, f"sigma[{i}]")
                         for i, s in enumerate(self.sigma))
        return (_checks.check_positive_float(self.sigma, "sigma"),)

    def __post_init__(self):
        if isinstance(self.sigma, list):
            object.__setattr__(self, "sigma", tuple(self.sigma))

    def check(self, model: Model) -> None:
        _check_continuous(self, model)
        self._sigmas()
        _checks.check_bool(self.control_variate, "control_variate")
        if model.support.kind != "real":
            raise ValueError(
                f"estimator 'dsm' adds Gaussian noise, which leaves the model's {model.support!r} "
                "support; use 'sm' or 'ssm', which switch to generalized score matching there."
            )

    def build(self, model: Model, resample: bool) -> Objective:
        sigmas = self._sigmas()
        conditional = len(sigmas) > 1 and model.noise_conditional
        control_variate = self.control_variate

        def energy_at(params, sigma):
            if conditional:
                return lambda y: model.energy(params, y, sigma=sigma)
            return lambda y: model.energy(params, y)

        def one_level(params, x, key, sigma):
            z = threefry.normal(key, x.shape, x.dtype)
            energy_x = energy_at(params, sigma)
            perturbed = jax.grad(energy_x)(x + sigma * z)
            if control_variate:
                # eq. 11 minus half eq. 13's c = -(2/σ) zᵀ∇E(x) + ‖z‖²/σ² - d/σ² (with
                # ∇ log p = -∇E), less the constant d/(2σ²) it leaves:
                #     ½‖∇E(x + σz)‖² - zᵀ(∇E(x + σz) - ∇E(x))/σ,
                # the same gradients in θ. Written out, the two terms of size ‖z‖²/σ² cancel
                # in floating point, and their rounding (about ε d/σ²) swamped the part that
                # depends on θ when the data are on a large scale: the minimum's tests then
                # stopped Newton far from it
                value = 0.5 * jnp.sum(perturbed**2) - jnp.vdot(
                    z, perturbed - jax.grad(energy_x)(x)) / sigma
            else:
                value = 0.5 * jnp.sum((z / sigma - perturbed) ** 2)
            return value

        def term(params, x, key):
            if len(sigmas) == 1:
                return one_level(params, x, key, sigmas[0])
            keys = threefry.split(key, len(sigmas))
            levels = [sigma**2 * one_level(params, x, k, sigma)
                      for k, sigma in zip(keys, sigmas, strict=True)]
            return jnp.mean(jnp.stack(levels))

        return _objective(term, resample, uses_noise=True)


# ---- SSM ----------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class SSM(Estimator):
    """Sliced score matching (Song et al. 2019; Song & Kingma 2021, eq. 15-17).

    With random projections ``v`` (``E[vvᵀ] = I``)::

        ℓ(x, v) = ½ (vᵀ∇ₓE)² - vᵀ ∇ₓ²E v                                   (eq. 15)
        ℓ(x, v) = ½ ‖∇ₓE‖²  - vᵀ ∇ₓ²E v        (variance reduced,          eq. 17)

    Each ``vᵀHv`` is one Hessian-vector product (eq. 16), so the cost is linear in ``d``. On
    bounded supports the boundary-weighted (generalized) form is sliced the same way, with
    ``w = √h ⊙ v`` in the second-order term.

    Parameters
    ----------
    num_projections : int
        Projections per observation (≥ 1).
    projection : {"gaussian", "rademacher"}
        Distribution of ``v``.
    variance_reduction : bool
        Use eq. 17 (the first term in closed form). Valid for both projections since both have
        ``E[vvᵀ] = I``; on by default.
    truncation : float, optional
        Caps the boundary weight (bounded supports only), as in :class:`SM`.

    Examples
    --------
    >>> import jax, numpy as np, unnorm as un
    >>> x = np.random.default_rng(0).normal(size=(500, 2))
    >>> fit = un.fit(un.models.gaussian(2), x, un.estimators.SSM(num_projections=1),
    ...              key=jax.random.key(0), progress_bar=False)
    >>> sorted(fit.params)
    ['mu', 'prec']
    """

    num_projections: int = 1
    projection: str = "gaussian"
    variance_reduction: bool = True
    truncation: float | None = None
    name = "ssm"

    def check(self, model: Model) -> None:
        _check_continuous(self, model)
        _checks.check_int(self.num_projections, "num_projections", minimum=1)
        _checks.check_choice(self.projection, "projection", ("gaussian", "rademacher"))
        _checks.check_bool(self.variance_reduction, "variance_reduction")
        _check_truncation(self.truncation)

    def build(self, model: Model, resample: bool) -> Objective:
        weight = boundary_weight(model.support, _check_truncation(self.truncation))
        num, rademacher = int(self.num_projections), self.projection == "rademacher"
        variance_reduction = self.variance_reduction

        def term(params, x, key):
            shape = (num, *x.shape)
            if rademacher:
                vs = threefry.rademacher(key, shape, x.dtype)
            else:
                vs = threefry.normal(key, shape, x.dtype)
            energy_x = lambda y: model.energy(params, y)  # noqa: E731
            if weight is None:
                h, dh = 1.0, 0.0
            else:
                h, dh = weight(x)
                vs = vs * jnp.sqrt(h)
            grad, quad = _grad_and_quadratic_forms(energy_x, x, vs)
            if variance_reduction:
                first = 0.5 * jnp.sum(h * grad**2)
            else:
                # (wᵀ∇E)² with w = √h ⊙ v has mean Σ h_j (∂_j E)², as the unsliced form
                first = 0.5 * jnp.mean(jax.vmap(lambda w: jnp.vdot(w, grad) ** 2)(vs))
            return first - jnp.mean(quad) - jnp.sum(dh * grad)

        return _objective(term, resample, uses_noise=True)
