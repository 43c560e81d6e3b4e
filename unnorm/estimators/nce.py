"""Noise-contrastive estimation (Gutmann & Hyvärinen 2010, 2012; Song & Kingma 2021, §5, eq. 18-24).

NCE learns θ by telling the data apart from draws of a noise distribution ``p_n`` whose density
is known. With ``log p_θ(x) = -E(x; θ) - c``, where ``c`` estimates ``log Z(θ)`` and is learned
with θ ("Z_θ is treated as a learnable (scalar) parameter", Song & Kingma 2021, §5), and ``ν``
noise draws
per observation, the posterior probability that ``x`` is data (eq. 19, with Song & Kingma's ratio
written as noise over data, Gutmann & Hyvärinen's convention) is

    h(x) = σ(G(x)),     G(x) = log p_θ(x) - log p_n(x) - log ν,

and NCE maximizes the conditional log-likelihood of the labels (eq. 21),

    J(θ, c) = E_data[log h(x)] + ν E_noise[log(1 - h(y))].

Per observation ``x_i`` with ``K`` noise draws ``y_i1..y_iK`` the loss term is

    ℓ_i = softplus(-G(x_i)) + (ν / K) Σ_k softplus(G(y_ik)),

whose mean has the population minimizer ``p_θ = p_data`` and ``c = log Z(θ)`` (eq. 22-24).
The noise is keyed on the observation's row, so the objective is a fixed M-estimation criterion
and the sandwich covariance of :mod:`unnorm.uncertainty` treats each observation with its noise
draws as one i.i.d. unit: the standard errors include the noise's share of the variance.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
from jax.flatten_util import ravel_pytree
from jax.scipy.linalg import solve_triangular

from .. import _checks, threefry
from ..model import Model
from ..supports import Support
from ..trust_region import trust_region_newton
from ..uncertainty import precision_floor
from .base import Batch, Estimator, Objective, Traits, observation_keys

__all__ = ["NCE"]

#: noise draws behind the start of log Z by importance sampling, and the first of them behind the
#: member of the model nearest the noise
START_DRAWS = 1024
START_DIVERGENCE_DRAWS = 256
#: at most this many observations (evenly spaced rows) decide between two starting points
START_ROWS = 2048
#: NCE looks for a better start when the model at its starting parameters and the noise overlap
#: less than this: an importance-sampling effective sample size below this fraction of the
#: draws means log-ratios of model to noise spread over more than about two units, where the
#: logistic loss saturates
START_OVERLAP = 0.05
#: ... and when the model is much wider than the noise, which the effective sample size of
#: draws from the noise cannot see (their weights then vary as the noise's own density does,
#: whatever the width): the model's log-density varies over the noise draws by less than this
#: fraction of the noise's own (a Gaussian 32 times the noise's width), so that the
#: optimizer, stepping about its learning rate in a log-precision, would have the logarithm
#: of that ratio to cross on an objective nearly flat in it
START_SPREAD = 1e-3


class NCEState(NamedTuple):
    """The key the per-observation noise is drawn from and the fitted noise's parameters:
    a :class:`GaussianNoise` in the unconstrained space (continuous supports) or the
    ``probs`` of independent coordinates (binary / spin). ``overlap``: how much the model at the
    starting parameters and the noise overlap, the effective sample size of the importance
    weights behind the start of log Z as a fraction of the draws (Kong 1992). ``spread``: the
    standard deviation of the model's log-density over those draws relative to the noise's
    own, small where the model is much wider than the noise."""

    noise_key: jax.Array
    noise_params: Any
    overlap: Any = ()
    spread: Any = ()


# ---- the default noise: fitted to the data ------------------------------------------------------

class GaussianNoise(NamedTuple):
    """The default noise of a continuous support: a Gaussian in the unconstrained space, with
    its Cholesky factor and that factor's inverse (the whitening matrix), which the fit
    computes once. NumPyro's ``MultivariateNormal.log_prob`` solves a triangular system for
    every row it is given, and XLA's CPU triangular solve made that most of an NCE step from
    four dimensions on (benchmarks/README.md); with the inverse at hand each row's density
    is a matrix-vector product."""

    loc: jax.Array
    scale_tril: jax.Array
    whitening: jax.Array

    def log_prob(self, u: jax.Array) -> jax.Array:
        """The log-density at one flat point ``u``: ``-|W(u - loc)|²/2 - Σ log L_ii -
        (d/2) log 2π``, as NumPyro's ``MultivariateNormal(loc, scale_tril=L)`` gives it."""
        z = self.whitening @ (u - self.loc)
        return (-0.5 * jnp.sum(z * z) - jnp.sum(jnp.log(jnp.diagonal(self.scale_tril)))
                - 0.5 * u.shape[-1] * math.log(2 * math.pi))

    def sample(self, key: jax.Array, k: int) -> jax.Array:
        """``k`` flat draws ``loc + L ε``, ``ε`` standard normal: those of NumPyro's
        ``MultivariateNormal(loc, scale_tril=L).sample(key, (k,))``, computed as it computes
        them, without building the distribution, whose checks run op by op (a dozen small
        compiled programs for each new shape, even inside ``jit``)."""
        eps = threefry.normal(key, (k, self.loc.shape[-1]), jnp.result_type(float))
        return self.loc + jnp.squeeze(jnp.matmul(self.scale_tril, eps[..., None]), axis=-1)


def _power_of_two_at_most(values: jax.Array) -> jax.Array:
    """Elementwise, the largest power of two at most each value (1 where a value is not
    positive and finite). Dividing or multiplying by a power of two is exact, so arithmetic in
    units of one rounds as it does without them, wherever neither overflows nor underflows."""
    usable = (values > 0) & jnp.isfinite(values)
    exponent = jnp.frexp(jnp.where(usable, values, 1.0))[1]
    return jnp.where(usable, jnp.ldexp(jnp.ones_like(values), exponent - 1), 1.0)


def _power_of_two_below(values: jax.Array) -> jax.Array:
    """The largest power of two at most the largest magnitude of ``values`` (1 where that is
    0 or not finite)."""
    return _power_of_two_at_most(jnp.max(jnp.abs(values)))


def _fit_noise(support: Support, data: jax.Array):
    """Parameters of the default noise, matched to the data's first two moments.

    Continuous supports: a Gaussian with the data's mean and covariance in the unconstrained
    space of the support (a ridge of 1e-3 of the mean variance keeps it proper when the data are
    degenerate; relative to the data's own variance, so that the noise scales with the data at
    any scale), mapped to the support: NCE works best with noise close to the data
    (Gutmann & Hyvärinen 2012, §2.4). Discrete supports: independent coordinates with the data's
    marginal frequencies, shrunk as (count + 1) / (n + 2) so that no configuration has noise
    probability zero.

    The mean and covariance are computed in units of a power of two near the data's largest
    magnitude and deviation, and only the Cholesky factor and its inverse are brought back:
    the covariance itself of data on a scale of 1e18 (1e36, summed over the rows) overflows
    float32, where its factor (1e18) does not.
    """
    n = data.shape[0]
    flat = data.reshape(n, -1)
    if support.is_discrete:
        high = support.values[1]
        count = jnp.sum(flat == high, axis=0)
        return ((count + 1.0) / (n + 2.0),)
    u = flat if support.kind == "real" else jax.vmap(
        lambda x: support.transform.inv(x.reshape(support.event_shape)).reshape(-1))(flat)
    magnitude = _power_of_two_below(u)
    loc = jnp.mean(u / magnitude, axis=0) * magnitude
    centred = u - loc

    def covariance_in(unit):
        scaled = centred / unit
        return scaled.T @ scaled / max(n - 1, 1)

    unit = _power_of_two_below(centred)
    cov = covariance_in(unit)
    # an absolute floor made the noise of data on a scale of 1e-8 (variance 1e-16) ten times
    # the data's variance; only data whose spread the dtype cannot hold (every row alike)
    # take the floor, a noise variance of 1e-15, in units of 2⁻²⁰ (about its root)
    variance = jnp.trace(cov) / cov.shape[0]
    held = jnp.sqrt(variance) * unit > jnp.sqrt(1e3 * jnp.finfo(cov.dtype).tiny)
    floor_unit = 2.0**-20
    unit = jnp.where(held, unit, floor_unit)
    cov = jnp.where(held, cov, covariance_in(floor_unit))
    ridge = 1e-3 * jnp.where(held, variance, 1e-12 / floor_unit**2)
    eye = jnp.eye(cov.shape[0], dtype=cov.dtype)
    factor = jnp.linalg.cholesky(cov + ridge * eye)
    return GaussianNoise(loc, unit * factor,
                         solve_triangular(factor, eye, lower=True) / unit)


def _default_noise(support: Support):
    """``(sample(noise_params, key, k) -> (k, *event_shape), log_prob(noise_params, x))``."""
    shape = support.event_shape
    if support.is_discrete:
        low, high = support.values

        def sample(noise_params, key, k):
            (probs,) = noise_params
            on = threefry.uniform(key, (k, probs.size), probs.dtype) < probs
            return jnp.where(on, high, low).astype(probs.dtype).reshape(k, *shape)

        def log_prob(noise_params, x):
            (probs,) = noise_params
            on = x.reshape(-1) == high
            return jnp.sum(jnp.where(on, jnp.log(probs), jnp.log1p(-probs)))

        return sample, log_prob

    if support.kind == "real":
        def sample(noise_params, key, k):
            return noise_params.sample(key, k).reshape(k, *shape)

        def log_prob(noise_params, x):
            return noise_params.log_prob(x.reshape(-1))

        return sample, log_prob

    transform = support.transform

    def sample(noise_params, key, k):
        u = noise_params.sample(key, k).reshape(k, *shape)
        return jax.vmap(transform)(u)

    def log_prob(noise_params, x):
        # the density of x = T(u), u Gaussian: change of variables
        u = transform.inv(x)
        return noise_params.log_prob(u.reshape(-1)) - transform.log_abs_det_jacobian(u, x)

    return sample, log_prob


def _user_noise(noise):
    def sample(noise_params, key, k):
        return noise.sample(key, (k,))

    def log_prob(noise_params, x):
        return noise.log_prob(x)

    return sample, log_prob


def _std(values: jax.Array) -> jax.Array:
    """The standard deviation of ``values``, computed in units of their largest magnitude:
    the squares of log-densities of 1e-21 (data on a scale of 1e-10) underflow float32, and
    those of 1e27 (a scale of 1e14) overflow it."""
    largest = jnp.max(jnp.abs(values))
    largest = jnp.where((largest > 0) & jnp.isfinite(largest), largest, 1.0)
    return jnp.std(values / largest) * largest


def _widened(state: NCEState, width: float) -> NCEState:
    """The state with its default noise, a Gaussian, widened ``width`` times about its
    location: drawn with the same key, the same draws stretched."""
    if width == 1.0:
        return state
    noise = state.noise_params
    width = jnp.asarray(width, noise.scale_tril.dtype)
    return state._replace(noise_params=noise._replace(scale_tril=width * noise.scale_tril,
                                                      whitening=noise.whitening / width))


def _spread_line(data) -> str:
    """The data's smallest and largest standard deviation over the coordinates, for
    messages."""
    flat = np.asarray(data, dtype=float).reshape(len(data), -1)
    sd = flat.std(axis=0)
    if sd.size == 1:
        return f"the data's standard deviation is {sd[0]:.3g}"
    return f"the data's standard deviations range from {sd.min():.3g} to {sd.max():.3g}"


def _widening(spread: float, default_noise: bool) -> list[float]:
    """The widths, relative to the noise's, of the noises the start moves the model to in
    turn: the last is the noise itself. Where the model is much wider than the noise (its
    log-density varies over the noise draws ``spread`` times as much as the noise's, about
    the squared ratio of the widths for energies quadratic near the noise), the Fisher
    divergence is nearly flat in the model's width, and a search from there wandered off
    (data on a scale of 1e-8 from a precision of 1: its location moved to 0.77, where
    float32 no longer holds ``x − μ``). The default noise, a Gaussian, is then first widened
    to the model's width and narrowed in steps of at most a hundred (a continuation), each
    search starting where the last ended, within a hundred of its noise's width."""
    if not (default_noise and np.isfinite(spread) and 0 < spread < START_SPREAD):
        return [1.0]
    ratio = spread ** -0.5
    steps = math.ceil(math.log10(ratio) / 2)
    return [ratio ** (k / steps) for k in range(steps, 0, -1)] + [1.0]


# ---- the estimator ------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class NCE(Estimator):
    """Noise-contrastive estimation with a learned log normalizing constant (Song & Kingma 2021,
    eq. 18-24).

    Minimizes ``mean_i softplus(-G(x_i)) + (ν/K) Σ_k softplus(G(y_ik))`` over θ and ``c``, with
    ``G(x) = -E(x; θ) - c - log p_n(x) - log ν`` and ``K`` noise draws ``y_ik`` per observation.
    ``c`` estimates ``log Z(θ̂)``; it is returned, with its standard error, as
    ``fit.nuisance["log_z"]`` and ``fit.nuisance_stderr["log_z"]``.

    Parameters
    ----------
    noise : numpyro Distribution, optional
        The noise distribution ``p_n``, with the model's event shape and its support. Default:
        fitted to the data — a Gaussian with the data's mean and covariance (in the unconstrained
        space of a positive or interval support), or independent coordinates with the data's
        marginal frequencies on binary and spin supports.
    nu : float
        Noise-to-data ratio ``ν`` of the classification problem (Gutmann & Hyvärinen's; the
        seed's eq. 18 writes its reciprocal). Larger ν lowers the variance towards that of the
        MLE, at ν times the energy evaluations.
    num_noise : int, optional
        Noise draws per observation, ``K``; default ``ceil(nu)``. Any ``K`` gives a consistent
        estimator; more draws lower the noise's share of the variance.

    Examples
    --------
    >>> import jax, numpy as np, unnorm as un
    >>> x = np.random.default_rng(0).normal(1.0, 0.5, size=(2000, 2))
    >>> fit = un.fit(un.models.gaussian(2), x, un.estimators.NCE(nu=4), key=jax.random.key(0),
    ...              progress_bar=False)
    >>> bool(np.all(abs(fit.params["mu"] - 1.0) < 4 * fit.stderr["mu"]))
    True
    >>> # log Z of N(1, 0.5² I) in two dimensions as an energy ½ |x - μ|² / σ²: log(2π σ²)
    >>> error = fit.nuisance["log_z"] - np.log(2 * np.pi * 0.5**2)
    >>> bool(abs(error) < 4 * fit.nuisance_stderr["log_z"])
    True
    """

    noise: Any = None
    nu: float = 1.0
    num_noise: int | None = None
    name = "nce"

    def __post_init__(self):
        _checks.check_positive_float(self.nu, "nu")
        if self.num_noise is not None:
            _checks.check_int(self.num_noise, "num_noise", minimum=1)

    @property
    def _num_noise(self) -> int:
        return int(self.num_noise) if self.num_noise is not None else max(1, math.ceil(self.nu))

    def check(self, model: Model) -> None:
        if self.noise is None:
            return
        if not isinstance(self.noise, dist.Distribution):
            raise TypeError(
                "noise must be a numpyro.distributions.Distribution (with sample and log_prob) or "
                f"None for noise fitted to the data; got {type(self.noise).__name__}."
            )
        shape = tuple(self.noise.batch_shape) + tuple(self.noise.event_shape)
        if shape != model.support.event_shape:
            raise ValueError(
                f"noise draws have shape {shape} (batch_shape + event_shape), but the model's "
                f"observations have shape {model.support.event_shape}; use e.g. "
                "dist.Normal(0, 1).expand(event_shape).to_event()."
            )

    def build(self, model: Model, resample: bool) -> Objective:
        support = model.support
        sample_noise, noise_log_prob = (_default_noise(support) if self.noise is None
                                        else _user_noise(self.noise))
        nu, k = float(self.nu), self._num_noise
        log_nu = math.log(nu)

        def log_ratio(params, log_z, noise_params, x):
            return (-model.energy(params, x) - log_z - noise_log_prob(noise_params, x)
                    - jnp.asarray(log_nu, x.dtype))

        def term(theta, noise_params, x, key):
            params, nuisance = theta
            log_z = nuisance["log_z"]
            ys = sample_noise(noise_params, key, k).astype(x.dtype)
            data_term = jax.nn.softplus(-log_ratio(params, log_z, noise_params, x))
            noise_terms = jax.vmap(lambda y: jax.nn.softplus(
                log_ratio(params, log_z, noise_params, y)))(ys)
            return data_term + nu * jnp.mean(noise_terms)

        def init(params, key, data):
            return NCEState(jax.random.fold_in(key, 0x9C3), ())

        def start_draws(state, dtype):
            draw_key = threefry.split(state.noise_key)[0]
            return sample_noise(state.noise_params, draw_key, START_DRAWS).astype(dtype)

        @functools.partial(jax.jit, static_argnums=1)
        def divergence_draws(state, dtype):
            # one program: run op by op, each operation of the draws and their slice
            # compiled a program of its own for every new shape of the data
            return start_draws(state, dtype)[:START_DIVERGENCE_DRAWS]

        def importance_log_z(params, state, dtype):
            """log Z(θ) by importance sampling from the noise, the weights' effective sample
            size as a fraction of the draws, and the spread of the model's log-density over
            the draws relative to the noise's."""
            ys = start_draws(state, dtype)
            model_log_p = jax.vmap(lambda y: -model.energy(params, y))(ys)
            noise_log_p = jax.vmap(lambda y: noise_log_prob(state.noise_params, y))(ys)
            # log of the model's unnormalized density over the noise's, at each draw
            log_w = model_log_p - noise_log_p
            log_z = jax.scipy.special.logsumexp(log_w) - jnp.log(log_w.shape[0])
            overlap = jnp.exp(2 * jax.scipy.special.logsumexp(log_w)
                              - jax.scipy.special.logsumexp(2 * log_w)) / log_w.shape[0]
            spread = _std(model_log_p) / _std(noise_log_p)
            # a non-finite energy at the noise says nothing about the overlap (NaN: no
            # start is sought), and the optimizer's checks report it
            finite = jnp.isfinite(log_z)
            return (jnp.where(finite, log_z, 0.0).astype(dtype),
                    jnp.where(finite, overlap, jnp.nan).astype(dtype),
                    jnp.where(finite, spread, jnp.nan).astype(dtype))

        @jax.jit
        def nuisance(params, state, data):
            noise_params = _fit_noise(support, data) if self.noise is None else ()
            state = state._replace(noise_params=noise_params)
            # log Z(θ₀) by importance sampling from the noise: a starting point near the
            # optimum of c, where the NCE objective is best conditioned
            log_z, overlap, spread = importance_log_z(params, state, data.dtype)
            return state._replace(overlap=overlap, spread=spread), {"log_z": log_z}

        # ---- the start: the member of the model nearest the noise ----
        _, unravel = ravel_pytree(model.to_unconstrained(model.params))

        def standardized_scores(flat_u, noise_params, ys, unit=1.0):
            """The model's score ``s_θ = ∇ₓ log p_θ``, its gap to the noise's centred score
            ``s_n − s̄_n`` and that centred score, at each noise draw, times the draws'
            standard deviation per coordinate: in the noise's standardized coordinates,
            where they are of order one near the noise at any scale of the data; in units of
            ``1 / unit``."""
            params = model.to_constrained(unravel(flat_u))
            num = ys.shape[0]
            model_scores = jax.vmap(jax.grad(lambda y: -model.energy(params, y)))(ys)
            gaps = jax.vmap(jax.grad(
                lambda y: -model.energy(params, y) - noise_log_prob(noise_params, y)))(ys)
            noise_scores = jax.vmap(jax.grad(lambda y: noise_log_prob(noise_params, y)))(ys)
            spread = jnp.std(ys.reshape(num, -1), axis=0)
            # the unit enters before the scores do: (1e14 · 1e14) / 1e28 would be formed
            # as 1e14 · (1e14 / 1e28), whose square in the curvatures underflows
            spread = jnp.where((spread > 0) & jnp.isfinite(spread), spread, 1.0) * unit
            # The noise's score has mean 0; its draws' mean, left in, drew the model to a
            # constant score of the same size (a wide model far from the noise, a false
            # minimum). The gap is formed in one gradient, before it is scaled and squared,
            # which keeps its precision where the energy itself (½ Λ x² at x = 1e6) has lost
            # it in rounding.
            noise_mean = jnp.mean(noise_scores.reshape(num, -1), axis=0)
            return (model_scores.reshape(num, -1) * spread,
                    (gaps.reshape(num, -1) + noise_mean) * spread,
                    (noise_scores.reshape(num, -1) - noise_mean) * spread)

        @jax.jit
        def divergence_derivatives(flat_u, noise_params, ys):
            """``M`` and the value, gradient and Hessian of ``(D − F) / M²`` at ``flat_u``:
            ``D = E_noise ‖s_θ − s_n‖²``, the Fisher divergence of the model from the noise
            in the standardized coordinates, less its value ``F = E_noise ‖s_n‖²`` where the
            model is flat, and ``M`` the largest standardized score there, held fixed.

            ``F`` is taken off so that where the model is much wider than the noise (data
            on a scale of 1e-6 from a precision of 1), on the plateau ``D ≈ F``, the value is
            of the size of its slope, and the trust region, whose tests are relative to the
            value, neither stops there as if at a minimum nor loses the changes in rounding:
            the value is formed as ``s_θ · (s_θ − 2 s_n)``, its derivatives as those of
            ``‖s_θ − s_n‖²`` (equal, ``F`` being constant), each the more precise where it is
            used. ``M`` keeps the pieces of order one, so that neither ``D`` from a start far
            off (1e40 from Λ = 1 on a scale of 1e10) overflows nor the curvature of a
            location near the noise (Λ², 1e-40 in the data's units) underflows float32; the
            host multiplies by ``M²`` in float64.
            """
            model_scores, gaps, noise_scores = standardized_scores(flat_u, noise_params, ys)
            largest = jax.lax.stop_gradient(jnp.maximum(jnp.max(jnp.abs(gaps)),
                                                        jnp.max(jnp.abs(noise_scores))))
            largest = jnp.where((largest > 0) & jnp.isfinite(largest), largest, 1.0)

            def gaps_at(flat):
                return standardized_scores(flat, noise_params, ys, 1.0 / largest)[1]

            # Each parameter is moved in units of a power of two near the change that moves
            # the gaps by one (exact, so that where nothing under- or overflows the result is
            # as without them): at data on a scale of 1e18 from a precision of 1, a location
            # moves the gaps by 1e-18 per unit where a log-precision moves them by 1, and
            # the location's curvature, formed as products of such derivatives in the
            # Hessian's passes, flushed to 0 in float32.
            sensitivity = jnp.max(jnp.abs(jax.jacfwd(gaps_at)(flat_u)), axis=(0, 1))
            param_unit = jax.lax.stop_gradient(_power_of_two_at_most(1.0 / sensitivity))

            def divergence(step):
                flat = flat_u + param_unit * step
                model_scores, gaps, noise_scores = standardized_scores(
                    flat, noise_params, ys, 1.0 / largest)
                value = jnp.mean(jnp.sum(model_scores * (model_scores - 2 * noise_scores),
                                         axis=1))
                squared = jnp.mean(jnp.sum(jnp.square(gaps), axis=1))
                return jax.lax.stop_gradient(value) + (squared
                                                       - jax.lax.stop_gradient(squared))

            step = jnp.zeros_like(flat_u)
            value, grad = jax.value_and_grad(divergence)(step)
            return largest, param_unit, value, grad, jax.hessian(divergence)(step)

        def divergence_in_float64(flat_u, noise_params, ys):
            # Newton's and the trust region's steps do not change when the objective is
            # multiplied by a constant, so the objective is (D − F) / M² times M² wherever it
            # is evaluated
            largest, param_unit, value, grad, hess = (
                np.asarray(a, dtype=float)
                for a in divergence_derivatives(flat_u, noise_params, ys))
            return (largest**2 * value, largest**2 * grad / param_unit,
                    largest**2 * hess / np.outer(param_unit, param_unit))

        @jax.jit
        def start_loss(params, state, data):
            # the NCE objective, log Z set by importance sampling, on evenly spaced rows
            rows = jnp.linspace(0, data.shape[0] - 1, min(data.shape[0], START_ROWS))
            batch = Batch(data[rows.astype(jnp.int32)], rows.astype(jnp.int32))
            keys = observation_keys(state.noise_key, batch, state.noise_key, False)
            theta = (params, {"log_z": importance_log_z(params, state, data.dtype)[0]})
            return jnp.mean(jax.vmap(term, in_axes=(None, None, 0, 0))(
                theta, state.noise_params, batch.x, keys))

        def start(params, state, data):
            if not (float(state.overlap) < START_OVERLAP or float(state.spread) < START_SPREAD):
                # the model at its start overlaps the noise, so the objective is well
                # conditioned there (or the energy is not finite at the noise: NaN)
                return params
            flat = ravel_pytree(model.to_unconstrained(params))[0]
            for width in _widening(float(state.spread), self.noise is None):
                widened = _widened(state, width)
                ys = divergence_draws(widened, np.dtype(data.dtype))
                flat, _ = trust_region_newton(
                    lambda f, noise=widened.noise_params, ys=ys:
                    divergence_in_float64(f, noise, ys), flat)
            candidate = model.to_constrained(unravel(flat))
            before = float(start_loss(params, state, data))
            after = float(start_loss(candidate, state, data))
            better = np.isfinite(after) and not after >= before
            return candidate if better else params

        def check_estimate(theta, state, data):
            if self.noise is not None or support.kind != "real":
                # a user's noise need not resemble the data, and on a bounded support a
                # flat density is a density
                return None
            params, _ = theta
            variance = np.var(np.asarray(data).reshape(data.shape[0], -1), axis=0,
                              dtype=np.float64)
            dtype = np.dtype(data.dtype)
            if np.any(variance < precision_floor(dtype)):
                return ("the data's variance is too small for "
                        f"{dtype.name} to hold the sums of squares behind NCE's noise and "
                        f"objective ({_spread_line(data)}), so the estimate may be off in "
                        "every parameter. Standardize the data (and map the estimates back), "
                        "or compute in float64 (jax.config.update('jax_enable_x64', True)).")
            # the nuisance program as first called (the state as initialized): no compiling
            spread = float(nuisance(params, NCEState(state.noise_key, ()), data)[0].spread)
            if not spread < START_SPREAD:
                return None
            return (f"at the estimate the model's log-density varies over draws of the noise "
                    f"(a Gaussian with the data's mean and covariance) by {spread:.2g} times "
                    "as much as the noise's own: the fitted model is far wider than the data, "
                    "so NCE did not fit them, and the estimate may be off in every parameter. "
                    "This happens for data on a scale that the working dtype cannot hold "
                    f"({_spread_line(data)}), or from a start far off. Standardize the data "
                    "(and map the estimates back), or compute in float64 "
                    "(jax.config.update('jax_enable_x64', True)).")

        def terms(theta, state, batch: Batch, key):
            keys = observation_keys(state.noise_key, batch, key, resample)
            return jax.vmap(term, in_axes=(None, None, 0, 0))(theta, state.noise_params,
                                                               batch.x, keys)

        def loss(theta, state, batch, key):
            return jnp.mean(terms(theta, state, batch, key)), (state, {})

        return Objective(init, loss, terms,
                         Traits(deterministic=not resample, convex_if_linear_energy=True),
                         nuisance=nuisance, start=None if support.is_discrete else start,
                         check_estimate=None if support.is_discrete else check_estimate)
