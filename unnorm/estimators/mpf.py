"""Minimum probability flow for binary and spin data (Sohl-Dickstein, Battaglino & DeWeese 2011).

MPF sets up dynamics that would carry the data distribution to the model's and minimizes the
probability that flows out of the data in an infinitesimal time. With transitions between
states that differ in one coordinate (the single-bit-flip connectivity ``g_ij`` of the paper)
and rates chosen to satisfy detailed balance, the objective is their ``K(θ)``: the mean over the
data states ``x`` of ``Σ_y exp((E(x) - E(y)) / 2)`` over the connected states ``y``. This module
sums over **all** ``d`` neighbours ``x^(j)`` (coordinate ``j`` flipped), including those that
are themselves data states, as practical implementations do:

    ℓ(x) = Σ_j exp((E(x) - E(x^(j))) / 2).

Each observation's term depends on that observation alone, so the estimator is an ordinary
M-estimator and the driver's sandwich standard errors apply; the paper's variant, which drops
the neighbours that occur in the data set, couples the observations through that set.

**Consistency.** With ``p(x) ∝ exp(-E(x))`` the weight ``p(x) exp((E(x) - E(x^(j)))/2) ∝
exp(-(E(x) + E(x^(j)))/2)`` is symmetric in the pair ``(x, x^(j))``, while the gradient of the
term, ``½ exp(...) (∇_θE(x) - ∇_θE(x^(j)))``, is antisymmetric in it. Summed over the pairs,
the expected gradient at the true θ vanishes: the truth is a stationary point of the
population objective. **Convexity.** For an energy affine in θ (an exponential family such as
the Ising and Boltzmann models) every term is the exponential of an affine function of θ, so
the objective is convex and the driver runs Newton from the initial values. Cost: ``d + 1``
energy evaluations per observation, as for pseudo-likelihood.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from ..model import Model
from .base import Estimator, Objective, Traits
from .pseudolikelihood import check_flip_support, flip_objective

__all__ = ["MPF"]


@dataclasses.dataclass(frozen=True)
class MPF(Estimator):
    """Minimum probability flow with single-flip connectivity (Sohl-Dickstein, Battaglino &
    DeWeese 2011), for binary and spin supports.

    Minimizes ``mean_i Σ_j exp((E(x_i) - E(x_i^(j))) / 2)``, where ``x^(j)`` flips coordinate
    ``j``: the probability flow ``K(θ)`` of the paper out of each observation into all of its
    ``d`` neighbours. Convex in θ when the energy is affine in θ.

    Examples
    --------
    >>> import jax, jax.numpy as jnp, unnorm as un
    >>> model = un.models.ising_chain(6, coupling=0.0)
    >>> data = un.sample(un.models.ising_chain(6, coupling=0.5, field=0.2), key=jax.random.key(0),
    ...                  sampler="gibbs", num_chains=4, num_warmup=100, num_samples=500,
    ...                  thinning=5, progress_bar=False).posterior["x"].values.reshape(-1, 6)
    >>> fit = un.fit(model, data, "mpf", key=jax.random.key(1), progress_bar=False)
    >>> fit.method
    'newton'
    >>> bool(abs(fit.params["coupling"] - 0.5) < 0.15)
    True
    """

    name = "mpf"

    def check(self, model: Model) -> None:
        check_flip_support(model, 'mpf', 'minimum probability flow')

    def build(self, model: Model, resample: bool) -> Objective:
        # exp(-gap/2) is computed as it stands: its argument stays below float32's limit of
        # 88.7 unless a data point is some 1e77 times less probable than a neighbour, and the
        # driver skips such a non-finite step. A log-sum-exp would not help: the term itself
        # is the exponential.
        return flip_objective(model, lambda gaps: jnp.exp(-0.5 * gaps),
                              Traits(deterministic=True, convex_if_linear_energy=True))
