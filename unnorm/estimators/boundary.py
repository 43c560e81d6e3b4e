"""Parameters whose maximum-likelihood value is at infinity, and each parameter's Fisher
information, from the data and draws of the fitted model.

With ``g_j(x) = ∂E(x; θ)/∂u_j`` in the unconstrained coordinates ``u``, the likelihood's
gradient is ``E_θ[g_j] − mean_i g_j(x_i)``, and the maximum-likelihood equations ask the
model's mean of ``g_j`` to equal the data's. When every observation gives ``g_j`` the same
value and that value is an extreme of the values ``g_j`` takes under the model (a binary unit
never on, or always on, in the data: its bias's ``g_j`` is 0 on every observation and 0 or −1
on the model's draws), the model's mean reaches the data's only in the limit: the likelihood
increases without bound as ``u_j`` goes to ±∞, and the MLE does not exist (Barndorff-Nielsen
1978, §9.3: the data's sufficient statistic on the boundary of its convex support). A
stochastic-approximation fit then moves ``u_j`` for ever, more slowly as the model's variance of
``g_j`` collapses, so such parameters are reported, given no standard error, and left out of the
convergence judgement.

The same draws give the Fisher information ``F = Cov_θ(g)`` per observation, whose inverse is
the asymptotic covariance of the MLE from one observation when the model holds (Cramér–Rao):
``√((F⁻¹)_jj / n)`` is the standard error of ``u_j`` from ``n`` observations, the scale by which
to judge an iterate's drift where no sandwich standard errors are computed. The draws also
estimate the likelihood's gradient at the fitted values, with its Monte Carlo error, which says
whether iterates that stopped moving stopped at the maximum (a step size that decays freezes
them wherever they are). Where the matrix is too large to form (more than
``MAX_INFORMATION_MATRIX`` coordinates) or the draws too few to estimate it, its diagonal gives
a lower bound, ``(F⁻¹)_jj ≥ 1/F_jj``.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from ..model import Model
from ..uncertainty import symmetric_pinv

__all__ = ["Boundary", "GradientMoments", "find_boundary", "gradient_moments"]

#: points per compiled block of energy gradients: one compilation serves any number of points
MOMENTS_BLOCK = 4096

#: at most this many gradient entries (points × coordinates) in one block: with many
#: coordinates (a neural energy's weights) the block holds fewer points, so that its
#: per-point gradients stay of bounded size
MOMENTS_BLOCK_ENTRIES = 2**24

#: the full Fisher information matrix (p × p) is formed up to this many coordinates and when
#: the draws number at least twice the coordinates kept; beyond, its diagonal's lower bound
MAX_INFORMATION_MATRIX = 4000

#: batches of consecutive draws whose means give the Monte Carlo error of the score
NUM_BATCHES = 20

#: the data's pass computes the draws' products too (one compiled program for both) while
#: they cost at most this many multiply-adds
SHARED_PASS_FLOPS = 2**30

#: relative size below which differences between values of ``g_j`` are rounding (float32
#: energies differ from exact values by a few units of 1e-7 of their size)
VALUE_TOLERANCE = 1e-5


class GradientMoments(NamedTuple):
    """Per unconstrained coordinate, over a set of points: the mean, variance (divisor the
    count), smallest and largest value of ``∂E/∂u_j``, in float64; ``covariance``: the full
    matrix (divisor the count), or None where not asked for; ``batch_means``: the means over
    consecutive batches of the points (batches × coordinates)."""

    mean: np.ndarray
    variance: np.ndarray
    low: np.ndarray
    high: np.ndarray
    covariance: np.ndarray | None = None
    batch_means: np.ndarray | None = None


class Boundary(NamedTuple):
    """What the data and the fitted model's draws say about each unconstrained coordinate
    (flattened as ``ravel_pytree`` flattens the unconstrained parameters).

    ``information``: the Fisher information ``Var_θ(∂E/∂u_j)`` per observation.
    ``unit_se``: the standard error of each coordinate from one observation under the fitted
    model, ``√(F⁻¹)_jj`` over the coordinates not excluded (or its lower bound ``1/√F_jj``,
    see the module's description); NaN on the excluded ones, ∞ where the information is 0.
    ``score``: the gradient of the negative mean log-likelihood at the fitted values,
    ``mean_i ∂E(x_i)/∂u − E_θ[∂E/∂u]``, the draws' mean estimating ``E_θ``; ``score_mcse``:
    its Monte Carlo standard error, from batch means over ``NUM_BATCHES`` stretches of
    consecutive draws (which keep the chains' autocorrelation in); both NaN on the excluded
    coordinates.
    ``unbounded``: the likelihood increases without bound along the coordinate (the data's
    ``∂E/∂u_j`` constant, at an edge of the values the draws give it, which vary).
    ``flat``: the data and every draw give ``∂E/∂u_j`` one value, so the data say nothing of
    the coordinate at the fitted values: the energy does not depend on it there, or the fit has
    already gone far towards an unbounded likelihood. ``rising``: the direction (+1 or −1) in
    which the likelihood increases along an unbounded coordinate, 0 elsewhere."""

    information: np.ndarray
    unit_se: np.ndarray
    score: np.ndarray
    score_mcse: np.ndarray
    unbounded: np.ndarray
    flat: np.ndarray
    rising: np.ndarray

    @property
    def excluded(self) -> np.ndarray:
        """The coordinates that get no standard error and no convergence judgement."""
        return self.unbounded | self.flat


@functools.partial(jax.jit, static_argnames=("model", "matrix", "num_batches"))
def _block_moments(flat_u, template_u, points, mask, batch, *, model: Model, matrix: bool,
                   num_batches: int):
    """The mean, centred sum of squares, minimum and maximum of the energy's gradients over
    the points of one block where ``mask`` is true, with ``matrix`` the centred sums of
    their products, and their sums over each of ``num_batches`` batches (``batch``: each
    point's)."""
    _, unravel = ravel_pytree(template_u)

    def energy(flat, x):
        return model.energy(model.to_constrained(unravel(flat)), x)

    grads = jax.vmap(jax.grad(energy), (None, 0))(flat_u, points)
    count = jnp.maximum(jnp.sum(mask), 1)
    weights = mask.astype(grads.dtype)
    # Sums over the points as products with the weights, and the extremes as a scan over
    # them, not reductions along the points' axis: XLA's CPU backend reduces a (points,
    # coordinates) array along its first axis column by column, which for the tens of
    # thousands of weights of an MLP made this pass most of a PCD fit's time
    mean = weights @ grads / count
    squares = weights @ (grads - mean) ** 2

    def extremes(carry, point):
        (low, high), (row, kept) = carry, point
        return (jnp.where(kept, jnp.minimum(low, row), low),
                jnp.where(kept, jnp.maximum(high, row), high)), None

    (low, high), _ = jax.lax.scan(extremes, (jnp.full_like(mean, jnp.inf),
                                             jnp.full_like(mean, -jnp.inf)), (grads, mask))
    centred = (grads - mean) * weights[:, None]
    products = centred.T @ centred if matrix else jnp.zeros((0, 0), grads.dtype)
    sums = jax.nn.one_hot(batch, num_batches, dtype=grads.dtype).T @ (grads * weights[:, None])
    return mean, squares, low, high, products, sums


def moments_block(num_coordinates: int) -> int:
    """Points per block of :func:`gradient_moments` for gradients of ``num_coordinates``:
    ``MOMENTS_BLOCK``, or the largest power of two (at least 16) whose block holds at most
    ``MOMENTS_BLOCK_ENTRIES`` gradient entries.

    Examples
    --------
    >>> moments_block(5), moments_block(49_536)
    (4096, 256)
    """
    fits = MOMENTS_BLOCK_ENTRIES // max(int(num_coordinates), 1)
    return int(min(MOMENTS_BLOCK, max(16, 1 << max(fits.bit_length() - 1, 0))))


def gradient_moments(model: Model, params, points, matrix: bool = False,
                     num_batches: int = 1) -> GradientMoments:
    """:class:`GradientMoments` of ``∂E(x; θ)/∂u`` over ``points`` (at least
    ``num_batches``), at the constrained ``params``, computed in blocks of :func:`moments_block`
    points and combined in float64 (Chan, Golub & LeVeque 1983); with ``matrix`` the
    covariance matrix too, and the means over ``num_batches`` consecutive batches."""
    u = model.to_unconstrained(params)
    flat, _ = ravel_pytree(u)
    points = np.asarray(points)
    count = points.shape[0]
    block_size = moments_block(flat.size)
    batch_of = np.concatenate([np.full(len(part), b) for b, part in
                               enumerate(np.array_split(np.arange(count), num_batches))])
    batch_sums = 0.0
    total, mean, squares, low, high, products = 0, None, None, None, None, None
    for start in range(0, count, block_size):
        block = points[start:start + block_size]
        size = block.shape[0]
        # padding repeats a real point (finite energy), masked out
        index = np.concatenate([np.arange(size), np.zeros(block_size - size, dtype=int)])
        out = _block_moments(flat, u, block[index], np.arange(block_size) < size,
                             batch_of[start:start + block_size][index], model=model,
                             matrix=matrix, num_batches=num_batches)
        b_mean, b_squares, b_low, b_high, b_products, b_sums = (np.asarray(a, dtype=float)
                                                                for a in out)
        batch_sums = batch_sums + b_sums
        if mean is None:
            total, mean, squares, low, high, products = (size, b_mean, b_squares, b_low,
                                                         b_high, b_products)
            continue
        combined = total + size
        delta = b_mean - mean
        squares = squares + b_squares + delta**2 * total * size / combined
        if matrix:
            products = products + b_products + np.outer(delta, delta) * total * size / combined
        mean = mean + delta * size / combined
        low, high, total = np.minimum(low, b_low), np.maximum(high, b_high), combined
    sizes = np.bincount(batch_of, minlength=num_batches)[:, None]
    return GradientMoments(mean, squares / total, low, high,
                           products / total if matrix else None, batch_sums / sizes)


def _standard_errors(on_draws: GradientMoments, excluded: np.ndarray) -> np.ndarray:
    """Over the coordinates not ``excluded`` (NaN on those): the standard error from one
    observation, ``√(F⁻¹)_jj``, or ``1/√F_jj`` without the matrix; ∞ where the information is
    0, or where the pseudo-inverse's diagonal is not positive (directions of the information
    lost to rounding: a unit on in a handful of observations, whose variance the draws do not
    determine)."""
    unit_se = np.full(excluded.shape[0], np.nan)
    kept = ~excluded
    with np.errstate(divide="ignore"):
        if on_draws.covariance is None:
            unit_se[kept] = 1.0 / np.sqrt(on_draws.variance[kept])
            return unit_se
    variance = np.diag(symmetric_pinv(on_draws.covariance[np.ix_(kept, kept)]))
    usable = (variance > 0) & (on_draws.variance[kept] > 0)
    unit_se[kept] = np.where(usable, np.sqrt(np.where(usable, variance, 1.0)), np.inf)
    return unit_se


def find_boundary(model: Model, params, data, draws) -> Boundary:
    """The :class:`Boundary` of the constrained ``params`` from the ``data`` (n, *event_shape)
    and draws of the model at ``params`` (m, *event_shape)."""
    size = int(ravel_pytree(model.to_unconstrained(params))[0].size)
    count, num_rows = np.shape(draws)[0], np.shape(data)[0]
    matrix = size <= MAX_INFORMATION_MATRIX and count >= 2 * size
    batches = max(2, min(NUM_BATCHES, count))
    # the data's pass compiled as the draws' (one program a model) where its unused products
    # and batches cost little
    shared = num_rows >= batches and (not matrix or num_rows * size**2 <= SHARED_PASS_FLOPS)
    on_data = gradient_moments(model, params, data, matrix=matrix and shared,
                               num_batches=batches if shared else 1)
    on_draws = gradient_moments(model, params, draws, matrix=matrix, num_batches=batches)
    magnitude = np.maximum.reduce([np.abs(on_data.low), np.abs(on_data.high),
                                   np.abs(on_draws.low), np.abs(on_draws.high)])
    tolerance = VALUE_TOLERANCE * np.maximum(magnitude, np.finfo(float).tiny)
    constant = on_data.high - on_data.low <= tolerance
    varying = on_draws.high - on_draws.low > tolerance
    value = on_data.mean
    # the data at the top of the draws' range: the likelihood's gradient E_θ[g] − mean g(x)
    # is negative, and the likelihood rises as the coordinate decreases
    top = constant & varying & (value >= on_draws.high - tolerance)
    bottom = constant & varying & (value <= on_draws.low + tolerance)
    flat = constant & ~varying & (np.abs(value - on_draws.mean) <= tolerance)
    excluded = top | bottom | flat
    # the likelihood's gradient (per observation, of its negative) and the Monte Carlo error
    # of the draws' mean in it
    score = np.where(excluded, np.nan, on_data.mean - on_draws.mean)
    batches = on_draws.batch_means.shape[0]
    score_mcse = np.where(excluded, np.nan, on_draws.batch_means.std(axis=0, ddof=1)
                          / np.sqrt(batches))
    return Boundary(
        information=on_draws.variance,
        unit_se=_standard_errors(on_draws, excluded),
        score=score,
        score_mcse=score_mcse,
        unbounded=top | bottom,
        flat=flat,
        rising=np.where(top, -1, np.where(bottom, 1, 0)),
    )
