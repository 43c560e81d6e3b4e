"""Chain-based estimators: contrastive divergence (CD) and persistent CD (PCD), Song & Kingma 2021,
§3.

The log-likelihood gradient of an energy-based model is (Song & Kingma 2021, eq. 3-4)

    ∇_θ log p_θ(x) = -∇_θE(x; θ) + E_{y ~ p_θ}[∇_θE(y; θ)],

so minimizing the surrogate

    L(θ) = mean_i E(x_i; θ) - mean_j E(ỹ_j; θ),     ỹ_j MCMC draws at the current θ (held fixed),

by stochastic gradient steps follows the likelihood. The draws come from the sampler kernels of
:mod:`unnorm.samplers` (MALA, Langevin of eq. 6, HMC/NUTS, random-walk Metropolis; Gibbs on binary
and spin supports), which take the log-density as an argument, so θ changes between steps
without recompiling:

* **CD-k** (Hinton 2002) starts one chain at each observation of the minibatch and runs ``k``
  steps: cheap and low-variance, but biased (it does not maximize the likelihood);
* **PCD-k** (Tieleman 2008) keeps ``num_chains`` chains from step to step and runs ``k`` more
  steps at each, so the chains track ``p_θ`` as θ moves: a stochastic approximation of the MLE
  (Younes 1999).

``fit.loss`` records the surrogate ``L``, not the log-likelihood. The estimate is the average
of the iterates over the second half of the run (Polyak & Juditsky 1992). After the run the
fitted model is sampled with ``un.sample`` (``fit.chains``, to check with ArviZ), and the standard
errors are the likelihood's sandwich at θ̂ computed from those draws (:func:`likelihood_pieces`):
exact for PCD asymptotically, an approximation for CD, whose own limit differs from the MLE.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from .. import _checks, threefry
from ..model import Model
from ..newton import constrained_jacobian
from ..samplers import chains as chain_runner
from ..samplers import gibbs, structure
from ..samplers.registry import build_kernel, check_sampler, check_step_options, check_tuning
from ..samplers.run import Draws, reusable_chunk, sample_draws
from ..samplers.target import to_position, unconstrained_logdensity
from ..uncertainty import delta_method, sandwich_covariance, symmetric_pinv
from .base import Estimator, Objective, PostFit, Traits
from .boundary import find_boundary

__all__ = ["CD", "PCD", "ChainState"]


class ChainState(NamedTuple):
    """The persistent chains (PCD, MLE): the kernels' states, vmapped over chains, in the
    unconstrained space; ``()`` for CD, which starts afresh at the data. ``buffer``: PCD's
    replay buffer of past chain positions (unconstrained), ``()`` without one."""

    chains: Any
    buffer: Any = ()


def _noise_starts(support, key, num: int) -> jax.Array:
    """Fresh starting points inside a compiled step, as ``initial_unconstrained`` draws them on
    the host: Uniform(-2, 2) in the unconstrained space, or each coordinate uniform over the
    two values of a discrete support."""
    shape = (num, *support.event_shape)
    dtype = jnp.result_type(float)
    if support.is_discrete:
        lo, hi = support.values
        return jnp.where(threefry.bernoulli(key, 0.5, shape), hi, lo).astype(dtype)
    return threefry.uniform(key, shape, dtype, minval=-2.0, maxval=2.0)


#: gain of the persistent chains' step-size control: after each optimizer step the shared step
#: size moves by ``exp(gain · (mean acceptance - target))``. Dual averaging run for ever makes each
#: chain's step size depend on its own whole past (its raw iterate swings ever wider, √t), which
#: biased a Gaussian's precision 8 % low; a step size frozen after a warmup lets the chains stop
#: mixing once θ has moved (a precision then ran away to 1e19). One step size for all chains,
#: steered by their mean acceptance with a constant gain, follows θ and keeps each chain's
#: dependence on its own past negligible.
STEP_SIZE_GAIN = 0.1

# ---- checks and defaults ------------------------------------------------------------------------

def _default_sampler(model: Model, preferred: str) -> str:
    return "gibbs" if model.support.is_discrete else preferred


def _sampler_spec(estimator, model: Model, sampler: str, argument: str = "sampler"):
    where = (f"estimator {estimator.name!r}: " if argument == "sampler"
             else f"estimator {estimator.name!r}, {argument}: ")
    spec = check_sampler(sampler, model, where=where)
    check_step_options(spec, step_size=estimator.step_size)
    return spec


# ---- the likelihood's sandwich from model draws -------------------------------------------------

#: the likelihood's pieces are computed over blocks of this many draws (and observations),
#: so that one compiled block serves every number of draws (MLE's rounds differ) and of
#: observations
PIECES_BLOCK = 4096


@functools.partial(jax.jit, static_argnames=("model",))
def _block_pieces(flat_u, template_u, points, reference, tilt, mask, *, model: Model):
    """One block of points ``y_j`` (``mask`` false on padding): their energies ``E_j`` and
    gradients ``g_j = ∇E_j`` at flat unconstrained parameters, and with the log weights
    ``lw_j = reference_j - tilt · E_j``, their largest value ``m`` and, with
    ``a_j = exp(lw_j - m)``, the sums ``Σ a_j``, ``Σ a_j ∇²E_j`` and ``Σ a_j g_j g_jᵀ``."""
    _, unravel = ravel_pytree(template_u)

    def energy(flat, x):
        return model.energy(model.to_constrained(unravel(flat)), x)

    values, grads = jax.vmap(jax.value_and_grad(energy), (None, 0))(flat_u, points)
    log_weights = jnp.where(mask, reference - tilt * values, -jnp.inf)
    top = jnp.max(log_weights)
    # a constant to the Hessian below: the weights are not differentiated
    weights = jnp.where(mask, jnp.exp(log_weights - top), 0.0)
    hessian = jax.hessian(lambda f: weights @ jax.vmap(lambda x: energy(f, x))(points))(flat_u)
    outer = (grads * weights[:, None]).T @ grads
    return values, grads, top, jnp.sum(weights), hessian, outer


class _BlockSums(NamedTuple):
    """:func:`_block_pieces` over every block of a set of points, combined in float64: the
    per-point energies and gradients, the log weights' maximum ``top`` and, with weights
    ``exp(lw_j - top)``, the sums of the weights, of the weighted Hessians and of the weighted
    outer products of the gradients."""

    values: np.ndarray
    grads: np.ndarray
    top: float
    total: float
    hessian: np.ndarray
    outer: np.ndarray


def _block_sums(flat_u, template_u, points, reference, tilt: float, *, model: Model
                ) -> _BlockSums:
    points = np.asarray(points)
    count = points.shape[0]
    reference = np.broadcast_to(np.asarray(reference, dtype=points.dtype), (count,))
    dtype = jnp.asarray(flat_u).dtype
    outputs = []
    for start in range(0, count, PIECES_BLOCK):
        block = points[start:start + PIECES_BLOCK]
        size = block.shape[0]
        pad = PIECES_BLOCK - size
        # padding repeats a real point (finite energy) with zero weight
        index = np.concatenate([np.arange(size), np.zeros(pad, dtype=int)])
        mask = np.arange(PIECES_BLOCK) < size
        outputs.append(_block_pieces(flat_u, template_u, block[index],
                                     reference[start:start + PIECES_BLOCK][index],
                                     np.asarray(tilt, dtype=dtype), mask, model=model))
    outputs = [[np.asarray(a, dtype=float) for a in out] for out in outputs]
    sizes = [min(PIECES_BLOCK, count - start) for start in range(0, count, PIECES_BLOCK)]
    tops = np.array([out[2] for out in outputs])
    top = float(np.max(tops))
    scale = np.exp(tops - top)
    return _BlockSums(
        np.concatenate([out[0][:size] for out, size in zip(outputs, sizes, strict=True)]),
        np.concatenate([out[1][:size] for out, size in zip(outputs, sizes, strict=True)]),
        top,
        float(scale @ np.array([out[3] for out in outputs])),
        np.einsum("b,bij->ij", scale, np.stack([out[4] for out in outputs])),
        np.einsum("b,bij->ij", scale, np.stack([out[5] for out in outputs])),
    )


def likelihood_pieces(flat_u, template_u, data, draws, reference_energies, *, model: Model):
    """The Monte Carlo log-likelihood of Geyer (1991) at flat unconstrained parameters, with the
    pieces of its sandwich.

    With draws ``y_j`` from ``p_ψ`` and ``E_ref,j = E(y_j; ψ)``,

        f(θ) = mean_i E(x_i; θ) + log mean_j exp(E_ref,j - E(y_j; θ))

    is the negative mean log-likelihood up to the constant ``log Z(ψ)``: its second term
    estimates ``log Z(θ) - log Z(ψ)`` by importance sampling. Returns ``f``, its gradient and
    Hessian (which at ψ = θ is the Fisher information ``Cov_θ(∇E)`` plus ``mean ∇²E_data -
    E_θ[∇²E]``), the per-observation gradients ``∇E(x_i) - Σ_j w_j ∇E(y_j)`` of the sandwich's
    middle, the importance weights' effective sample size, the weights and the per-draw
    gradients ``∇E(y_j)`` (for the Monte Carlo error, :func:`monte_carlo_covariance`), as
    float64 NumPy arrays.

    The energies and their derivatives are computed in blocks of ``PIECES_BLOCK`` points (one
    compilation for any number of draws and observations) and combined in float64: with
    ``w_j`` the normalized weights and ``ḡ = Σ_j w_j ∇E(y_j)``, the gradient is
    ``mean ∇E(x_i) - ḡ`` and the Hessian ``mean ∇²E(x_i) - Σ_j w_j ∇²E(y_j)
    + Σ_j w_j ∇E(y_j)∇E(y_j)ᵀ - ḡḡᵀ``.
    """
    on_data = _block_sums(flat_u, template_u, data, 0.0, 0.0, model=model)
    on_draws = _block_sums(flat_u, template_u, draws, reference_energies, 1.0, model=model)
    n = on_data.values.shape[0]
    log_weights = np.asarray(reference_energies, dtype=float) - on_draws.values
    log_mean = _logsumexp(log_weights) - np.log(log_weights.size)
    weights = np.exp(log_weights - np.max(log_weights))
    weights /= weights.sum()
    draw_grads = on_draws.grads
    model_mean = weights @ draw_grads
    value = float(np.mean(on_data.values)) + log_mean
    grad = on_data.grads.mean(axis=0) - model_mean
    hessian = (on_data.hessian / n - on_draws.hessian / on_draws.total
               + on_draws.outer / on_draws.total - np.outer(model_mean, model_mean))
    observation_grads = on_data.grads - model_mean
    ess = 1.0 / float(np.sum(weights**2))
    return value, grad, hessian, observation_grads, ess, weights, draw_grads


def _logsumexp(values: np.ndarray) -> float:
    top = float(np.max(values))
    return top + float(np.log(np.sum(np.exp(values - top))))


def monte_carlo_covariance(hessian, weights, draw_grads, num_batches: int = 20) -> np.ndarray:
    """The Monte Carlo share of the covariance of the Monte Carlo MLE (Geyer 1994, §3).

    θ̂ solves ``mean_i ∇E(x_i) = Σ_j w_j ∇E(y_j)``; the right side's Monte Carlo error ``V``,
    estimated by batch means over consecutive draws (which keeps the chains' autocorrelation
    in), gives ``H⁺ V H⁺``. The draws must be in chain order, as :func:`flat_draws` gives them.
    """
    weights = np.asarray(weights, dtype=float)
    draw_grads = np.asarray(draw_grads, dtype=float)
    batches = np.array_split(np.arange(weights.size), num_batches)
    means = np.stack([weights[b] @ draw_grads[b] / weights[b].sum() for b in batches])
    variance = np.cov(means.T, ddof=1).reshape(means.shape[1], means.shape[1]) / num_batches
    h_pinv = symmetric_pinv(hessian)  # NaN, not a LAPACK error, if hessian is not finite
    return h_pinv @ variance @ h_pinv


def flat_draws(draws: Draws, model: Model) -> np.ndarray:
    """The draws of every chain, one after the other: shape ``(chains × draws, *event_shape)``."""
    return draws.x.reshape(-1, *model.support.event_shape)


def reference_energies(model: Model, params, draws) -> np.ndarray:
    """``E(y_j; params)`` for the draws, computed as :func:`likelihood_pieces` computes them at
    the same parameters (the importance weights at ψ = θ are then exactly equal)."""
    u = model.to_unconstrained(params)
    flat, _ = ravel_pytree(u)
    return _block_sums(flat, u, draws, 0.0, 0.0, model=model).values


def _sandwich(model: Model, params, data, draws, excluded=None
              ) -> tuple[np.ndarray, np.ndarray]:
    """The likelihood's sandwich covariance at ``params`` (constrained, flattened) from draws
    of the model at ``params``, and the likelihood's Hessian (unconstrained) it came from.
    ``excluded``: unconstrained coordinates held at their values (a likelihood unbounded
    along them, :mod:`~unnorm.estimators.boundary`): the sandwich is that of the others; the
    fit driver gives NaN to the constrained parameters that move with an excluded coordinate
    (``unnorm.driver._warn_unbounded``), as it does for MLE's own covariance."""
    u = model.to_unconstrained(params)
    flat, _ = ravel_pytree(u)
    ref = reference_energies(model, params, draws)
    _, _, hessian, grads, *_ = likelihood_pieces(flat, u, data, draws, ref, model=model)
    jacobian = np.asarray(constrained_jacobian(flat, u, model.to_constrained), dtype=float)
    if excluded is None or not np.any(excluded):
        cov_u = sandwich_covariance(grads, hessian).covariance
        return delta_method(jacobian, cov_u), np.asarray(hessian, dtype=float)
    kept = ~np.asarray(excluded)
    cov_u = np.zeros_like(np.asarray(hessian, dtype=float))
    cov_u[np.ix_(kept, kept)] = sandwich_covariance(
        np.asarray(grads)[:, kept], np.asarray(hessian)[np.ix_(kept, kept)]).covariance
    return delta_method(jacobian, cov_u), np.asarray(hessian, dtype=float)


def sample_model(model: Model, params, key, sampler: str, chains: int, num_warmup: int,
                 num_samples: int, init, progress_bar: bool, devices: tuple | None = None
                 ) -> Draws:
    """Draws of the fitted model, as :func:`unnorm.sample` takes them (thinned as the sampler's
    spec says: the local samplers move less per step than NUTS), kept as arrays: the source of
    the standard errors, and of ``fit.chains``. In chunks of one length whatever
    ``num_samples``, so that one compilation serves every sampling of a fit (MLE's rounds
    differ in length) and every fit of the model. ``devices``: the fit's devices, over which
    the chains of NUTS and HMC are split as :func:`unnorm.sample` splits them, their draws
    one device's bit for bit (:func:`unnorm.samplers.run.sample_draws`; None: one device)."""
    thinning = check_sampler(sampler, model).thinning
    return sample_draws(model, params, key=key, sampler=sampler, num_chains=chains,
                        num_warmup=num_warmup, num_samples=num_samples, thinning=thinning,
                        init=init, progress_bar=progress_bar,
                        chunk=reusable_chunk(num_warmup, thinning), devices=devices)


# ---- the shared machinery -----------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class ChainEstimator(Estimator):
    """What CD, PCD and MLE share: MCMC draws inside the loss, iterate averaging, and the
    post-fit sampling that gives ``fit.chains`` and the standard errors."""

    persistent = True
    preferred_sampler = "mala"

    def _resolved_sampler(self, model: Model) -> str:
        return self.sampler if self.sampler is not None else _default_sampler(
            model, self.preferred_sampler)

    def _chain_sampler(self, model: Model) -> str:
        """The sampler of the chains inside the optimizer loop: by default the estimator's."""
        return self._resolved_sampler(model)

    def check(self, model: Model) -> None:
        _sampler_spec(self, model, self._resolved_sampler(model))
        _sampler_spec(self, model, self._chain_sampler(model), "chain_sampler")

    def _post_fit_sampling(self, num_observations: int) -> tuple[int, int, int]:
        """Chains, warmup and draws per chain of the sampling at θ̂."""
        return 4, 500, 1000

    def build(self, model: Model, resample: bool) -> Objective:
        support = model.support
        sampler = self._resolved_sampler(model)    # the sampling of the fitted model
        sampler_spec = _sampler_spec(self, model, self._chain_sampler(model))
        tuning = check_tuning(sampler_spec, check_step_options(sampler_spec,
                                                               step_size=self.step_size))
        if sampler_spec.name == "gibbs":
            # not the sampler's prepare step, whose colouring holds at one θ (a coupling that
            # is 0 there couples at the next): a graph certified for every θ, or the
            # sequential scan
            tuning = gibbs.with_blocks(tuning, structure.training_structure(model).blocks)
        values = support.values if support.is_discrete else None
        # NumPyro's kernels adapt inside their first num_warmup steps (here the chain steps of
        # the first optimizer steps); the other kernels ignore it, their step size is steered
        # below
        spec = build_kernel(sampler_spec, 100, values, tuning)
        k = int(self.k)
        persistent = self.persistent
        buffer_size = getattr(self, "buffer_size", None)
        reinit = float(getattr(self, "reinit", 0.0))
        target_accept = tuning.get("target_accept")

        def to_unconstrained(x):
            return x if support.is_discrete else support.transform.inv(x)

        def start_chains(positions_u, logdensity_fn, key):
            keys = threefry.split(key, positions_u.shape[0])
            return chain_runner.start(spec, positions_u, logdensity_fn, keys)

        def run_chains(states, logdensity_fn, key):
            # k steps of every chain at the frozen θ, with the same runner as un.sample
            chain_keys = threefry.split(key, jax.tree_util.tree_leaves(states)[0].shape[0])
            states, infos = chain_runner.advance(spec, states, logdensity_fn, chain_keys,
                                                 jnp.arange(k))
            return states, jnp.mean(infos.acceptance_rate)

        def draw(params, state, batch, key):
            frozen = jax.lax.stop_gradient(params)
            logdensity_fn = unconstrained_logdensity(model, frozen)
            start_key, run_key = threefry.split(key)
            if buffer_size is not None:
                states, slots = replay_starts(state, logdensity_fn, start_key)
            elif persistent:
                states = jax.vmap(lambda st: spec.refresh(st, logdensity_fn))(state.chains)
            else:
                # CD's chains start at the data with the initial step size
                states = start_chains(jax.vmap(to_unconstrained)(batch.x), logdensity_fn,
                                      start_key)
            states, acceptance = run_chains(states, logdensity_fn, run_key)
            if persistent and target_accept is not None:
                states = spec.set_step_size(states, spec.get_step_size(states) * jnp.exp(
                    STEP_SIZE_GAIN * (acceptance - target_accept)))
            ends = jax.vmap(spec.position)(states)
            ys = jax.lax.stop_gradient(jax.vmap(lambda u: to_position(model, u))(ends))
            new_state = state
            if buffer_size is not None:
                new_state = ChainState(states, state.buffer.at[slots].set(ends))
            elif persistent:
                new_state = ChainState(states)
            return ys, new_state, acceptance

        def replay_starts(state, logdensity_fn, key):
            """Du & Mordatch (2019)'s replay buffer (Song & Kingma 2021, §3): each chain starts at
            a random
            entry of the buffer, or with probability ``reinit`` at a fresh noise point, and
            carries the shared step size; its end is written back to the entry it came from."""
            pick_key, reinit_key, noise_key, init_key = threefry.split(key, 4)
            num = jax.tree_util.tree_leaves(state.chains)[0].shape[0]
            slots = threefry.randint(pick_key, (num,), 0, buffer_size)
            fresh = threefry.bernoulli(reinit_key, reinit, (num,))
            fresh = fresh.reshape(num, *([1] * len(support.event_shape)))
            starts = jnp.where(fresh, _noise_starts(support, noise_key, num),
                               state.buffer[slots])
            states = start_chains(starts, logdensity_fn, init_key)
            if target_accept is not None:
                states = spec.set_step_size(states, spec.get_step_size(state.chains))
            return states, slots

        def contrast(params, xs, ys):
            # E(x_i) - mean_j E(ỹ_j): eq. 3-4's gradient with the draws held fixed
            def energies(points):
                return jax.vmap(lambda x: model.energy(params, x))(points)

            return energies(xs) - jnp.mean(energies(ys))

        def terms(params, state, batch, key):
            ys, _, _ = draw(params, state, batch, key)
            return contrast(params, batch.x, ys)

        def loss(params, state, batch, key):
            ys, new_state, acceptance = draw(params, state, batch, key)
            value = jnp.mean(contrast(params, batch.x, ys))
            return value, (new_state, {"acceptance_rate": acceptance})

        num_chains = int(self.num_chains) if persistent else 0

        @jax.jit
        def start_persistent(params, starts, key):
            # compiled once per objective: run op by op, a kernel's init compiled a few dozen
            # small programs on a model's first fit
            return start_chains(starts, unconstrained_logdensity(model, params),
                                threefry.fold_in(key, 1))

        def init(params, key, data):
            if not persistent:
                return ChainState(())
            starts = np.asarray(support.initial_unconstrained(key, num_chains),
                                dtype=jnp.result_type(float))
            chains = start_persistent(params, starts, key)
            if buffer_size is None:
                return ChainState(chains)
            buffer = jnp.asarray(support.initial_unconstrained(jax.random.fold_in(key, 2),
                                                               buffer_size),
                                 dtype=jnp.result_type(float))
            return ChainState(chains, buffer)

        def post_fit(params, state, data, key, compute_se, progress_bar, devices=None):
            chains, num_warmup, num_samples = self._post_fit_sampling(data.shape[0])
            draws = self._sample_fitted(model, params, state, spec, sampler, key, chains,
                                        num_warmup, num_samples, progress_bar, devices)
            # the coordinates along which the likelihood is unbounded, and each one's Fisher
            # information (the convergence judgement's scale without standard errors)
            boundary = find_boundary(model, params, data, flat_draws(draws, model))
            params, covariance, hessian, refined_by, draws, converged = self._finish(
                model, params, data, draws, key, compute_se, sampler, chains, num_warmup,
                num_samples, progress_bar, devices=devices, excluded=boundary.excluded)
            # ArviZ only here, once, for the user
            return PostFit(params, covariance, draws.inference_data(), refined_by,
                           "likelihood sandwich from model draws" if compute_se else None,
                           converged, hessian, boundary)

        def place_state(state, split):
            # the chains along their axis; the replay buffer, whose entries any chain may
            # draw, stays whole on every device
            return ChainState(split(state.chains), state.buffer) if persistent else state

        return Objective(init, loss, terms,
                         Traits(deterministic=False, monte_carlo_gradient=True),
                         post_fit=post_fit, place_state=place_state)

    def _sample_fitted(self, model, params, state, spec, sampler, key, chains, num_warmup,
                       num_samples, progress_bar, devices=None):
        init = None
        if self.persistent:
            # the persistent chains are already near p_θ̂: start there
            positions = jax.vmap(spec.position)(state.chains)[:chains]
            init = np.asarray(jax.vmap(lambda u: to_position(model, u))(positions))
        return sample_model(model, params, key, sampler, chains, num_warmup, num_samples, init,
                            progress_bar, devices)

    def _finish(self, model, params, data, draws: Draws, key, compute_se, sampler, chains,
                num_warmup, num_samples, progress_bar, devices=None, excluded=None):
        """The final params, their covariance and the (unconstrained) Hessian it came from, the
        solve stage run on the draws (None for none), the draws of the fitted model the
        covariance comes from, and whether that stage converged (None without one: the driver
        judges the optimizer's iterates). ``excluded``: the unconstrained coordinates that get
        no standard error (:class:`~unnorm.estimators.boundary.Boundary`)."""
        covariance = hessian = None
        if compute_se:
            covariance, hessian = _sandwich(model, params, data, flat_draws(draws, model),
                                            excluded)
        return params, covariance, hessian, None, draws, None


def check_k(k) -> int:
    return _checks.check_int(k, "k", minimum=1)


@dataclasses.dataclass(frozen=True)
class CD(ChainEstimator):
    """Contrastive divergence, CD-k (Hinton 2002; Song & Kingma 2021, §3): each step starts one
    chain at
    every observation of the minibatch, runs ``k`` MCMC steps at the current θ and follows the
    surrogate gradient ``mean ∇E(x_i) - mean ∇E(ỹ_i)`` (eq. 3-4 with the chains' ends as draws).

    Biased: its fixed point is not the MLE unless the chains mix in ``k`` steps. The standard
    errors are the likelihood's sandwich at θ̂ (from ``fit.chains``, draws of the fitted model),
    an approximation for CD.

    Parameters
    ----------
    k : int
        MCMC steps per optimizer step.
    sampler : str, optional
        A sampler of :func:`unnorm.sample` for the model's support; default ``"mala"`` on
        continuous supports and ``"gibbs"`` on binary and spin ones: the blocked (chromatic)
        scan where the energy's interaction graph is certified for every θ
        (:func:`unnorm.samplers.structure.training_structure`), else the sequential scan.
    step_size : float, optional
        The kernel's step size (default the sampler's: 0.1 for MALA and Langevin).

    Examples
    --------
    >>> import jax, numpy as np, unnorm as un
    >>> truth = un.models.ising_chain(6, coupling=0.4, field=0.2)
    >>> configs = np.asarray(truth.support.enumerate())
    >>> p = np.exp(-np.asarray(jax.vmap(lambda x: truth.energy(truth.params, x))(configs)))
    >>> rows = np.random.default_rng(0).choice(64, size=2000, p=p / p.sum())
    >>> fit = un.fit(un.models.ising_chain(6, coupling=0.0), configs[rows],
    ...              un.estimators.CD(k=1), key=jax.random.key(1), num_steps=500,
    ...              batch_size=200, progress_bar=False)
    >>> bool(abs(fit.params["coupling"] - 0.4) < 0.1)
    True
    """

    k: int = 1
    sampler: str | None = None
    step_size: float | None = None
    name = "cd"
    persistent = False

    def __post_init__(self):
        check_k(self.k)


@dataclasses.dataclass(frozen=True)
class PCD(ChainEstimator):
    """Persistent contrastive divergence, PCD-k (Tieleman 2008; Song & Kingma 2021, §3):
    ``num_chains``
    chains persist across optimizer steps, each step runs ``k`` more MCMC steps at the current θ
    and follows ``mean ∇E(x_i) - mean_j ∇E(ỹ_j)`` (eq. 3-4). With a slowly moving θ the chains
    stay near ``p_θ``: a stochastic approximation of the MLE (Younes 1999).

    With ``buffer_size``, the replay buffer of Du & Mordatch (2019) (Song & Kingma 2021, §3): the
    chains'
    positions are kept in a buffer of ``buffer_size`` entries, started from noise; at each step
    every chain starts at a random entry, runs ``k`` steps, and its end replaces the entry it
    came from. The buffer holds many more states than there are chains, so the draws of one
    step are less correlated with the last step's; it is still a stochastic approximation of
    the MLE. ``reinit > 0`` adds Du & Mordatch's restarts: each chain starts with that
    probability at a fresh noise point (Uniform(-2, 2) in the unconstrained space). They keep
    modes the chains have left within reach (multimodal, neural energies), but draws only
    ``k`` steps from noise bias the fit, and when ``k`` is short of the mixing time they can
    drive it away: on a 1-D Gaussian, MALA with ``k=2`` and ``reinit=0.05`` sent the precision
    to 10^6 (docs/likelihood.md).

    Parameters
    ----------
    k : int
        MCMC steps per optimizer step.
    num_chains : int
        Persistent chains (the model draws per step).
    sampler : str, optional
        A sampler of :func:`unnorm.sample`; default ``"mala"`` on continuous supports and
        ``"gibbs"`` on binary and spin ones (the blocked scan where the energy's interaction
        graph is certified for every θ, else the sequential scan, as for :class:`CD`). Step
        sizes keep adapting.
    step_size : float, optional
        The kernel's initial step size.
    buffer_size : int, optional
        Entries of the replay buffer, at least ``num_chains``; None (default) for plain PCD.
    reinit : float
        With a buffer, the probability that a chain restarts from noise: default 0 (Song & Kingma's
        buffer); Du & Mordatch used 0.05.

    Examples
    --------
    >>> import jax, numpy as np, unnorm as un
    >>> x = np.random.default_rng(0).normal(1.0, 0.5, size=(2000, 2))
    >>> fit = un.fit(un.models.gaussian(2), x, un.estimators.PCD(k=5, num_chains=64),
    ...              key=jax.random.key(0), num_steps=2000, progress_bar=False)
    >>> bool(np.all(abs(fit.params["mu"] - x.mean(axis=0)) < 0.05))
    True
    """

    k: int = 5
    num_chains: int = 64
    sampler: str | None = None
    step_size: float | None = None
    buffer_size: int | None = None
    reinit: float = 0.0
    name = "pcd"

    def __post_init__(self):
        check_k(self.k)
        _checks.check_int(self.num_chains, "num_chains", minimum=1)
        if self.buffer_size is not None:
            _checks.check_int(self.buffer_size, "buffer_size", minimum=self.num_chains)
        if not (isinstance(self.reinit, (int, float)) and not isinstance(self.reinit, bool)
                and 0.0 <= self.reinit <= 1.0):
            raise ValueError(f"reinit must be a probability in [0, 1]; got {self.reinit!r}.")
