"""Pseudo-likelihood for binary and spin data (Besag 1975).

Score matching needs derivatives in ``x`` and so a continuous support; on ``{0,1}^d`` or
``{-1,+1}^d`` the classical partition-free estimator replaces the likelihood by the product of
the full conditionals. With ``x^(j)`` the observation with coordinate ``j`` flipped,

    p(x_j | x_-j) = exp(-E(x)) / (exp(-E(x)) + exp(-E(x^(j)))) = σ(E(x^(j)) - E(x)),

so the per-observation loss is ``ℓ(x) = Σ_j softplus(E(x) - E(x^(j)))``: ``d`` energy evaluations,
no normalizing constant (Beigy's lecture slides use the same conditionals for Gibbs sampling). It
is consistent, and its sandwich standard errors come from the same per-observation terms.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from ..model import Model
from .base import Estimator, Objective, Traits

__all__ = ["PseudoLikelihood", "flip_energy_gaps"]


def flip_energy_gaps(model: Model, params, x: jax.Array) -> jax.Array:
    """``E(x^(j)) - E(x)`` for every coordinate ``j`` of one observation ``x`` (shape
    ``event_shape``), where ``x^(j)`` flips coordinate ``j`` to the support's other value.

    The partition-free estimators for binary and spin data (pseudo-likelihood, ratio matching,
    minimum probability flow) are functions of these ``d`` gaps alone: ``d + 1`` energy
    evaluations per observation.

    Examples
    --------
    >>> import jax.numpy as jnp, unnorm as un
    >>> m = un.models.ising_chain(3, coupling=1.0)
    >>> flip_energy_gaps(m, m.params, jnp.ones(3))   # an end breaks one bond, the middle two
    Array([2., 4., 2.], dtype=float32)
    """
    low, high = model.support.values
    flat = x.reshape(-1)
    flipped = jnp.where(jnp.eye(flat.size, dtype=bool), low + high - flat[None, :], flat[None, :])
    energy = model.energy(params, x)
    energies = jax.vmap(lambda y: model.energy(params, y.reshape(x.shape)))(flipped)
    return (energies - energy).reshape(x.shape)


def check_flip_support(model: Model, name: str, title: str) -> None:
    """The binary-or-spin check the single-flip estimators (PL, RM, MPF) share."""
    if not model.support.is_discrete:
        raise ValueError(
            f"estimator {name!r} ({title}) needs a binary or spin support; the model's "
            f"support is {model.support!r}. For continuous data use 'sm', 'ssm' or 'dsm'."
        )


def flip_objective(model: Model, per_site, traits: Traits) -> Objective:
    """The objective whose per-observation term is ``Σ_j per_site(E(x^(j)) - E(x))`` over the
    single-flip neighbours (PL, RM, MPF): no state, deterministic."""
    def terms(params, state, batch, key):
        gaps = jax.vmap(lambda x: flip_energy_gaps(model, params, x))(batch.x)
        return jnp.sum(per_site(gaps).reshape(gaps.shape[0], -1), axis=1)

    def init(params, key, data):
        return ()

    def loss(params, state, batch, key):
        return jnp.mean(terms(params, state, batch, key)), (state, {})

    return Objective(init, loss, terms, traits)


@dataclasses.dataclass(frozen=True)
class PseudoLikelihood(Estimator):
    """Maximum pseudo-likelihood for binary and spin supports (Besag 1975).

    Minimizes ``mean_i Σ_j -log p(x_ij | x_i,-j) = mean_i Σ_j softplus(E(x_i) - E(x_i^(j)))``
    where ``x^(j)`` flips coordinate ``j``; it works for any discrete energy.

    Examples
    --------
    >>> import jax, jax.numpy as jnp, unnorm as un
    >>> model = un.models.ising_chain(6, coupling=0.0)
    >>> data = un.sample(un.models.ising_chain(6, coupling=0.5, field=0.2), key=jax.random.key(0),
    ...                  sampler="gibbs", num_chains=4, num_warmup=100, num_samples=500,
    ...                  thinning=5, progress_bar=False).posterior["x"].values.reshape(-1, 6)
    >>> fit = un.fit(model, data, "pl", key=jax.random.key(1), stderr=False, progress_bar=False)
    >>> bool(abs(fit.params["coupling"] - 0.5) < 0.15)
    True
    """

    name = "pl"

    def check(self, model: Model) -> None:
        check_flip_support(model, "pl", "pseudo-likelihood")

    def build(self, model: Model, resample: bool) -> Objective:
        # -log p(x_j | x_-j) = softplus(-gap)
        return flip_objective(model, lambda gaps: jax.nn.softplus(-gaps),
                              Traits(convex_if_linear_energy=True))
