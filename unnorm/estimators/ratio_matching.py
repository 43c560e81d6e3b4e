"""Ratio matching for binary and spin data (Hyvärinen 2007).

Score matching compares the derivatives of ``log p`` in ``x``; on ``{0,1}^d`` or ``{-1,+1}^d``
Hyvärinen (2007, "Some extensions of score matching", Comput. Stat. Data Anal. 51, the
extension to binary variables) compares instead the ratios ``p(x) / p(x^(j))`` between an
observation and its neighbours ``x^(j)``, each with coordinate ``j`` flipped. Through
``g(u) = 1 / (1 + u)``, in the expected squared distance ``Σ_j E[(g(data's ratio) - g(model's
ratio))²]`` the data's unknown ratios appear only in terms free of θ: the cross term is
constant because ``g(u) + g(1/u) = 1`` and the pairs ``(x, x^(j))`` enter it symmetrically.
What is left, averaged over the data, is the per-observation loss (written this way by Marlin,
Swersky, Chen & de Freitas 2010, "Inductive principles for restricted Boltzmann machine
learning")

    ℓ(x) = Σ_j g(p(x) / p(x^(j)))² = Σ_j σ(E(x) - E(x^(j)))²,

since ``p(x) / p(x^(j)) = exp(E(x^(j)) - E(x))``: the normalizing constant cancels in every
ratio. ``d + 1`` energy evaluations per observation. The estimator is consistent (the data's own
ratios minimize the population objective), but ``σ(t)²`` is not convex (its second derivative
changes sign at ``σ(t) = 2/3``), so the objective is not convex in θ even for an exponential
family; the driver optimizes first and refines by Newton.
"""

from __future__ import annotations

import dataclasses

import jax

from ..model import Model
from .base import Estimator, Objective, Traits
from .pseudolikelihood import check_flip_support, flip_objective

__all__ = ["RatioMatching"]


@dataclasses.dataclass(frozen=True)
class RatioMatching(Estimator):
    """Ratio matching for binary and spin supports (Hyvärinen 2007).

    Minimizes ``mean_i Σ_j σ(E(x_i) - E(x_i^(j)))²``, where ``x^(j)`` flips coordinate ``j``:
    Hyvärinen's ``Σ_j g(p(x)/p(x^(j)))²`` with ``g(u) = 1/(1 + u)``. It works for any energy on
    a binary or spin support; the objective is not convex in θ, so the driver runs the optimizer
    before Newton even for energies linear in θ.

    Examples
    --------
    >>> import jax, jax.numpy as jnp, unnorm as un
    >>> model = un.models.ising_chain(6, coupling=0.0)
    >>> data = un.sample(un.models.ising_chain(6, coupling=0.5, field=0.2), key=jax.random.key(0),
    ...                  sampler="gibbs", num_chains=4, num_warmup=100, num_samples=500,
    ...                  thinning=5, progress_bar=False).posterior["x"].values.reshape(-1, 6)
    >>> fit = un.fit(model, data, "rm", key=jax.random.key(1), stderr=False, progress_bar=False)
    >>> bool(abs(fit.params["coupling"] - 0.5) < 0.15)
    True
    """

    name = "rm"

    def check(self, model: Model) -> None:
        check_flip_support(model, 'rm', 'ratio matching')

    def build(self, model: Model, resample: bool) -> Objective:
        # g(p(x)/p(x^(j))) = σ(E(x) - E(x^(j))) = σ(-gap): jax's sigmoid is stable both ways
        return flip_objective(model, lambda gaps: jax.nn.sigmoid(-gaps) ** 2,
                              Traits(deterministic=True, convex_if_linear_energy=False))
