"""Maximum likelihood with MCMC (Song & Kingma 2021, §3, eq. 3-4), finished by Monte Carlo MLE.

Two stages:

1. **Stochastic approximation.** Persistent chains (MALA, or Gibbs on binary and spin data:
   ``chain_sampler``) and the gradient of eq. 3-4, ``mean ∇E(x_i) - mean_j ∇E(ỹ_j)``, as in
   :class:`~unnorm.estimators.PCD` (Younes 1999), bring θ near the MLE; the estimate is the
   average of the second half of the iterates.
2. **Monte Carlo MLE** (Geyer & Thompson 1992; Geyer 1991). The fitted model ``p_ψ`` is sampled
   with ``sampler`` (NUTS by default; ``fit.chains``), and the importance-sampling log-likelihood

       f(θ) = mean_i E(x_i; θ) + log mean_j exp(E(y_j; ψ) - E(y_j; θ)),    y_j ~ p_ψ,

   (``-mean log p_θ(x_i)`` up to the constant ``log Z(ψ)``) is minimized by Newton's method:
   the Monte Carlo noise of stage 1 is gone, and what remains is that of the importance-sampling
   estimate of ``log Z(θ)/Z(ψ)``, small when θ̂ is near ψ. If the importance weights degenerate
   (effective sample size below half the draws), the model is sampled again at the new θ̂.

The standard errors are the sandwich ``H⁻¹JH⁻¹/n`` of :mod:`unnorm.uncertainty` with
``H = ∇²f`` (the observed Fisher information) and ``J`` from ``∇E(x_i) - E_θ̂[∇E]``, computed in
the unconstrained space and carried to the constrained one by the delta method, plus the
Monte Carlo error of θ̂ (Geyer 1994): ``H⁻¹VH⁻¹`` with ``V`` the batch-means variance of the
importance-sampling estimate of ``E_θ[∇E]``. By default the model is sampled with 5 n draws,
and again with more (up to 25 000 per chain) while the Monte Carlo variance of a parameter
exceeds a quarter of its statistical variance. The errors assume the draws represent ``p_θ̂``
(check ``fit.chains`` with ArviZ).
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
from jax.flatten_util import ravel_pytree

from .. import _checks
from ..model import Model
from ..newton import constrained_jacobian, newton
from ..uncertainty import delta_method, sandwich_covariance
from .contrastive import (
    ChainEstimator,
    check_k,
    flat_draws,
    likelihood_pieces,
    monte_carlo_covariance,
    reference_energies,
    sample_model,
)

__all__ = ["MLE"]

#: the importance weights are trusted while their effective sample size is at least this
#: fraction of the draws; below it the model is sampled again at the new estimate
MIN_WEIGHT_ESS = 0.5

#: the fitted model is sampled again, with more draws, while the Monte Carlo variance of some
#: parameter exceeds this fraction of its statistical variance (when num_samples is not given)
MAX_MONTE_CARLO_SHARE = 0.25
MAX_SAMPLES_PER_CHAIN = 25_000


def _monte_carlo_share(statistical: np.ndarray, monte_carlo: np.ndarray) -> float:
    """The largest ratio of Monte Carlo to statistical variance over the parameters."""
    stat, mc = np.diag(statistical), np.diag(monte_carlo)
    varying = stat > 1e-12 * max(float(np.max(stat, initial=0.0)), 1e-300)
    return float(np.max(mc[varying] / stat[varying], initial=0.0))


@dataclasses.dataclass(frozen=True)
class MLE(ChainEstimator):
    """Maximum likelihood with MCMC: persistent-chain stochastic approximation, then Monte Carlo
    MLE by importance-sampling Newton steps (Song & Kingma 2021, §3, eq. 3-4; Geyer 1991).

    Parameters
    ----------
    sampler : str, optional
        ``"nuts"``, ``"hmc"``, ``"mala"`` (or any sampler of :func:`unnorm.sample` for the
        support); default ``"nuts"`` on continuous supports and ``"gibbs"`` on binary and spin
        ones. It samples the fitted model: the draws of ``fit.chains``, of the Monte Carlo MLE
        and of the standard errors.
    chain_sampler : str, optional
        The sampler of the persistent chains of the first stage; default ``"mala"`` on
        continuous supports and ``"gibbs"`` on binary and spin ones. The first stage only
        brings θ near the MLE (the Monte Carlo MLE of the second stage, on draws of
        ``sampler``, gives the estimate), and its chains take ``k`` steps at every one of
        thousands of optimizer steps: a cheap kernel serves it, where NUTS's trajectories
        cost many gradients per step and compile into a large program.
    k : int
        MCMC steps per optimizer step of the first stage.
    num_chains : int
        Persistent chains of the first stage.
    step_size : float, optional
        The initial step size of the persistent chains' kernel.
    num_warmup, num_samples : int
        Warmup and kept draws per chain (4 chains) of each sampling of the fitted model;
        default ``num_samples``: ``5 n / 4`` for n observations (at least 1000), raised up to
        25 000 while the Monte Carlo variance exceeds a quarter of the statistical one.
    max_rounds : int
        At most this many samplings of the fitted model (each followed by Newton steps).

    Examples
    --------
    >>> import jax, numpy as np, unnorm as un
    >>> x = np.random.default_rng(0).normal(1.0, 0.5, size=(1000, 1))
    >>> fit = un.fit(un.models.gaussian(1), x, un.estimators.MLE(sampler="mala"),
    ...              key=jax.random.key(0), num_steps=500, progress_bar=False)
    >>> # the Gaussian MLE is the sample mean and the inverse of the 1/n variance
    >>> bool(abs(fit.params["mu"][0] - x.mean()) < fit.stderr["mu"][0])
    True
    >>> bool(abs(fit.params["prec"][0, 0] * x.var() - 1) < 0.05)
    True
    """

    sampler: str | None = None
    chain_sampler: str | None = None
    k: int = 5
    num_chains: int = 64
    step_size: float | None = None
    num_warmup: int = 500
    num_samples: int | None = None
    max_rounds: int = 4
    name = "mle"
    preferred_sampler = "nuts"

    def __post_init__(self):
        check_k(self.k)
        _checks.check_int(self.num_chains, "num_chains", minimum=1)
        _checks.check_int(self.num_warmup, "num_warmup", minimum=0)
        if self.num_samples is not None:
            _checks.check_int(self.num_samples, "num_samples", minimum=10)
        _checks.check_int(self.max_rounds, "max_rounds", minimum=1)

    def _chain_sampler(self, model: Model) -> str:
        if self.chain_sampler is not None:
            return self.chain_sampler
        return "gibbs" if model.support.is_discrete else "mala"

    def _post_fit_sampling(self, num_observations: int) -> tuple[int, int, int]:
        if self.num_samples is not None:
            return 4, int(self.num_warmup), int(self.num_samples)
        return 4, int(self.num_warmup), int(min(max(1000, -(-5 * num_observations // 4)),
                                                 25_000))

    def _finish(self, model: Model, params, data, draws, key, compute_se, sampler, chains,
                num_warmup, num_samples, progress_bar, devices=None, excluded=None):
        u = model.to_unconstrained(params)
        flat, unravel = ravel_pytree(u)
        for round_index in range(int(self.max_rounds)):
            points = flat_draws(draws, model)
            reference = reference_energies(model, params, points)

            def derivatives(f, points=points, reference=reference):
                return likelihood_pieces(f, u, data, points, reference, model=model)[:3]

            flat, newton_converged = newton(derivatives, flat)
            params = model.to_constrained(unravel(flat))
            _, _, hessian, grads, ess, weights, draw_grads = likelihood_pieces(
                flat, u, data, points, reference, model=model)
            hessian = np.asarray(hessian, dtype=float)
            cov_u = sandwich_covariance(np.asarray(grads), hessian).covariance
            mc_cov_u = monte_carlo_covariance(hessian, weights, draw_grads)
            share = _monte_carlo_share(cov_u, mc_cov_u)
            degenerate = float(ess) < MIN_WEIGHT_ESS * points.shape[0]
            # more draws while the Monte Carlo error is a large part of the total, when the
            # number of draws is ours to choose
            more = (share > MAX_MONTE_CARLO_SHARE and self.num_samples is None
                    and num_samples < MAX_SAMPLES_PER_CHAIN)
            if not (degenerate or more) or round_index + 1 == self.max_rounds:
                break
            if more:
                num_samples = int(min(MAX_SAMPLES_PER_CHAIN, np.ceil(
                    num_samples * share / MAX_MONTE_CARLO_SHARE)))
            draws = sample_model(model, params, jax.random.fold_in(key, round_index + 1),
                                 sampler, chains, num_warmup, num_samples, draws.x[:, -1],
                                 progress_bar, devices)
        covariance = None
        if compute_se:
            covariance = delta_method(constrained_jacobian(flat, u, model.to_constrained),
                                      cov_u + mc_cov_u)
        # the estimate is the Monte Carlo MLE's: converged when its Newton steps reached the
        # minimum of the importance-sampling likelihood and the weights did not degenerate
        converged = bool(newton_converged) and not degenerate
        return params, covariance, hessian, "Monte Carlo MLE", draws, converged
