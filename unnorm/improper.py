"""Signs that a density may be improper: draws that run away, and energies of the wrong sign.

A density ``exp(-E)`` that is not integrable has no distribution to converge to: chains of
any continuous sampler drift off to infinity (when ``E`` decreases without bound, the
log-density rises along the way) or wander as a random walk (along a direction where ``E`` is
flat). Both leave traces in the draws that a proper target, once the chains have reached its
bulk, does not:

- values that are not finite, or of magnitude beyond :data:`ENORMOUS` in the unconstrained
  space (where the chains start in ``(-2, 2)`` and the step sizes adapt to the target's scale);
- a mean squared displacement that keeps growing with the lag. Over lags ``L`` beyond the
  mixing time it levels off at twice the variance for a stationary chain, so the ratio of its
  values at lags ``N/4`` and ``N/16`` is close to 1 for chains that mix (for an AR(1) chain
  with autocorrelation ``a`` at lag ``N/16`` it is ``1 + a + a² + a³``). A random walk's grows
  linearly (ratio 4), a drift's quadratically (ratio 16) (the scaling that separates
  diffusion from a stationary process; Einstein 1905). :data:`DIFFUSION_RATIO` sits between; a
  proper target reaches it only when the autocorrelation at a sixteenth of the run is still
  about 0.65 or more, a few effective draws per chain, when the chains have not explored its
  bulk either (the rule needs 64 draws per chain or more);
- a log-density that keeps rising by the same test (:data:`LP_RISE_RATIO`) while it grows.

The checks of draws are plain NumPy over what a sampler has returned: one rule for every
continuous sampler, applied after sampling. :func:`warn_energy_sign` is the check ``un.fit``
makes of the energy itself, along the data scaled outward.

Example
-------
>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> walk = np.cumsum(rng.normal(size=(4, 1000, 2)), axis=1) * np.array([0.0, 1.0])
>>> walk[..., 0] = rng.normal(size=(4, 1000))
>>> ratio = displacement_ratio(walk)
>>> bool(ratio[0] < 1.5), bool(ratio[1] > 2.5)
(True, True)
"""

from __future__ import annotations

import warnings

import jax
import numpy as np

__all__ = ["ENORMOUS", "DIFFUSION_RATIO", "LP_RISE_RATIO", "displacement_ratio",
           "unconstrained_draws", "runaway_problems", "warn_runaway", "coordinate_name",
           "weights_problem", "unbounded_below", "warn_energy_sign", "SCALINGS"]

#: magnitude of an unconstrained coordinate taken as a blow-up: far past the (-2, 2) the
#: chains start in, and where float32 resolves steps no finer than 0.06
ENORMOUS = 1e6
#: ratio of the mean squared displacements at lags N/4 and N/16 that marks a coordinate as
#: spreading without bound (random walk: 4, drift: 16, a chain that mixes: about 1; RWMH on a
#: Gaussian after a warmup of 100 steps reached 2.1 over 100 draws, a random walk along a flat
#: direction fell to 2.3 at the least)
DIFFUSION_RATIO = 2.5
#: the same ratio for the log-density: it keeps rising
LP_RISE_RATIO = 2.5
#: how many coordinates a message lists
_NAMED = 5
#: the displacement test reads at most this many chains and draws per chain (evenly thinned):
#: enough for its ratio, and it keeps the check's memory small beside a large run's draws
_MAX_CHAINS, _MAX_DRAWS = 32, 1000


def coordinate_name(flat_index: int, event_shape: tuple[int, ...]) -> str:
    """``x[i]`` (or ``x[i, j]``) for a flat index into the event shape."""
    if not event_shape:
        return "x"
    index = np.unravel_index(flat_index, event_shape)
    return "x[" + ", ".join(str(int(i)) for i in index) + "]"


def displacement_ratio(values: np.ndarray) -> np.ndarray:
    """Per coordinate of ``(chain, draw, ...)`` values, the mean squared displacement at lag
    ``N/4`` over the one at lag ``N/16`` (pooled over chains and time origins); NaN where the
    chains do not move or there are fewer than 64 draws (too few for the ratio to tell a
    random walk from a chain that mixes slowly)."""
    values = np.asarray(values, dtype=np.float64)
    flat = values.reshape(values.shape[0], values.shape[1], -1)
    short_lag = flat.shape[1] // 16
    long_lag = 4 * short_lag
    if short_lag < 4:
        return np.full(flat.shape[2], np.nan)
    with np.errstate(all="ignore"):
        # scaled by the largest value first: squares of runaway draws would overflow
        scale = np.max(np.abs(flat), axis=(0, 1))
        scale = np.where(np.isfinite(scale) & (scale > 0), scale, 1.0)
        flat = flat / scale
        short = np.mean((flat[:, short_lag:] - flat[:, :-short_lag]) ** 2, axis=(0, 1))
        long = np.mean((flat[:, long_lag:] - flat[:, :-long_lag]) ** 2, axis=(0, 1))
        return np.where(short > 0, long / np.where(short > 0, short, 1.0), np.nan)


def unconstrained_draws(support, x: np.ndarray) -> np.ndarray:
    """Continuous draws ``(chain, draw, *event)`` mapped to the unconstrained space the
    samplers move in (the inverse of ``support.transform``, in NumPy): the identity on
    ``real``, ``log x`` on ``positive``, the logit of the position within the bounds on
    ``interval``. A draw at a bound maps to an infinite value, and so does a positive draw
    within a factor 1000 of the dtype's smallest normal number: chains that run to 0 stop
    there, where smaller values underflow (and flush to 0 on some backends)."""
    x = np.asarray(x)
    with np.errstate(all="ignore"):
        if support.kind == "positive":
            tiny = np.finfo(x.dtype).tiny if np.issubdtype(x.dtype, np.floating) else 0.0
            return np.where(x > 1e3 * tiny, np.log(x), -np.inf)
        if support.kind == "interval":
            share = (x - support.low) / (support.high - support.low)
            return np.log(share) - np.log1p(-share)
    return x


def _listed(indices: np.ndarray, event_shape: tuple[int, ...]) -> str:
    names = [coordinate_name(int(i), event_shape) for i in indices[:_NAMED]]
    more = f" and {indices.size - _NAMED} more" if indices.size > _NAMED else ""
    return ", ".join(names) + more


def _principal_direction(u: np.ndarray, event_shape: tuple[int, ...]) -> str:
    """The unit vector along which the chains moved most between their first and last
    quarters (the top eigenvector of the displacements' second moments), its largest
    components named."""
    quarter = max(u.shape[1] // 4, 1)
    moves = u[:, -quarter:].mean(axis=1) - u[:, :quarter].mean(axis=1)
    moves = moves[np.all(np.isfinite(moves), axis=1)]
    if moves.size == 0 or not np.any(moves):
        return ""
    moves = moves / np.max(np.abs(moves))
    _, _, vt = np.linalg.svd(moves, full_matrices=False)
    direction = vt[0] * np.sign(vt[0][np.argmax(np.abs(vt[0]))])
    order = np.argsort(-np.abs(direction))[:_NAMED]
    terms = [f"{direction[i]:+.2f}·{coordinate_name(int(i), event_shape)}" for i in order
             if abs(direction[i]) >= 0.05]
    return " (principal direction of the growth: " + " ".join(terms) + ")"


def runaway_problems(u: np.ndarray, lp: np.ndarray, event_shape: tuple[int, ...]) -> list[str]:
    """Sentences describing draws that run away; empty if none.

    Parameters
    ----------
    u : numpy.ndarray
        The draws in the unconstrained space, ``(chain, draw, *event_shape)``
        (see :func:`unconstrained_draws`).
    lp : numpy.ndarray
        The log-density of each draw, ``(chain, draw)``.
    event_shape : tuple of int
        The support's event shape, to name coordinates.

    Examples
    --------
    >>> rng = np.random.default_rng(1)
    >>> drift = np.cumsum(1.0 + rng.normal(size=(4, 400, 1)), axis=1)
    >>> print(runaway_problems(drift, drift[..., 0], (1,))[0][:64])
    The draws run away along x[0]: their spread keeps growing with t
    >>> runaway_problems(rng.normal(size=(4, 400, 1)), rng.normal(size=(4, 400)), (1,))
    []
    """
    u = np.asarray(u)
    lp = np.asarray(lp, dtype=np.float64)
    tail = ("Check that exp(-E) is integrable on the support: an energy that decreases "
            "without bound, or is flat, along a direction makes the density improper "
            "(unnorm expects E(x) = -log p(x) + const: did you return the log density?). "
            "If it is proper, the chains have not yet reached its bulk: run a longer warmup.")
    full = u.reshape(u.shape[0], u.shape[1], -1)
    with np.errstate(invalid="ignore"):
        # one pass over every draw, in their own dtype; NaN propagates through the maximum
        peak = np.max(np.abs(full), axis=(0, 1)).astype(np.float64)
    bad = np.flatnonzero(~(peak <= ENORMOUS))
    if bad.size or not np.all(np.isfinite(lp)):
        if bad.size:
            finite_peaks = peak[bad][np.isfinite(peak[bad])]
            what = (f"reached values of magnitude up to {np.max(finite_peaks):.3g}"
                    if finite_peaks.size == bad.size else "reached non-finite values")
            what += f" along {_listed(bad, event_shape)}"
        else:
            what = "have a log-density that is not finite"
        return [f"The draws {what}, in the unconstrained space where the chains start in "
                f"(-2, 2): the density may be improper, its mass escaping to infinity (or to "
                f"a bound of the support). {tail}"]
    stride = max(1, -(-full.shape[1] // _MAX_DRAWS))
    flat = full[:_MAX_CHAINS, ::stride].astype(np.float64)
    lp = lp[:_MAX_CHAINS, ::stride]
    ratio = displacement_ratio(flat)
    spreading = np.flatnonzero(np.nan_to_num(ratio, nan=0.0) > DIFFUSION_RATIO)
    lp_ratio = float(displacement_ratio(lp[..., None])[0])
    quarter = max(lp.shape[1] // 4, 1)
    rising = (lp_ratio > LP_RISE_RATIO
              and float(np.mean(lp[:, -quarter:]) - np.mean(lp[:, :quarter])) > 0)
    if not (spreading.size or rising):
        return []
    if spreading.size:
        head = (f"The draws run away along {_listed(spreading, event_shape)}: their spread "
                f"keeps growing with the length of the run (mean squared displacement at lag "
                f"N/4 over lag N/16: {np.nanmax(ratio[spreading]):.2f}; about 1 for chains "
                f"that mix, 4 for a random walk)")
    else:
        head = "The draws run away"
    head += _principal_direction(flat, event_shape)
    if rising:
        how = ("while the log-density keeps rising (E keeps decreasing): the density may be "
               "improper, E unbounded below along that direction")
    else:
        how = ("while the log-density does not rise: the density may be improper, E flat "
               "along that direction")
    return [f"{head}, {how}. {tail}"]


def warn_runaway(support, x: np.ndarray, lp: np.ndarray, sampler: str,
                 category: type[Warning], stacklevel: int = 3) -> None:
    """Issue one ``category`` warning per problem :func:`runaway_problems` finds in continuous
    draws ``x`` (on the support) and their log-densities ``lp``, prefixed with the
    ``sampler``'s name; ``stacklevel`` counted from this function's caller's caller."""
    u = unconstrained_draws(support, x)
    for problem in runaway_problems(u, lp, support.event_shape):
        warnings.warn(f"[{sampler}] {problem}", category, stacklevel=stacklevel)


def weights_problem(final_positions: np.ndarray, event_shape: tuple[int, ...],
                    khat: float) -> str | None:
    """For annealed importance sampling: a sentence when the chains' final positions
    (``(chain, *event)``, unconstrained) are not finite or enormous, or when the log-weights'
    Pareto ``khat`` exceeds 1 (weights whose mean does not exist: what an improper target
    gives, its log Z infinite); None otherwise."""
    flat = np.asarray(final_positions, dtype=np.float64).reshape(len(final_positions), -1)
    with np.errstate(invalid="ignore"):
        bad = np.flatnonzero(np.any(~np.isfinite(flat) | (np.abs(flat) > ENORMOUS), axis=0))
    if bad.size:
        largest = np.max(np.abs(flat))
        cause = (f"the chains ended at values of magnitude up to {largest:.3g} along "
                 f"{_listed(bad, event_shape)} (the base distribution is N(base_loc, "
                 "base_scale²))")
    elif khat > 1.0:  # NaN (too few weights to fit a tail) is not
        cause = (f"the log-weights' tail is so heavy (Pareto k̂ = {khat:.2f} > 1) that their "
                 "mean, exp(log Z), may not exist")
    else:
        return None
    return (f"method='ais': {cause}: the density may be improper (exp(-E) not integrable, "
            "e.g. an energy that decreases without bound or is flat along some direction), "
            "and then log Z is infinite and the estimate meaningless. Check the energy's sign "
            "(unnorm expects E(x) = -log p(x) + const).")


#: outward scalings of the data about their mean at which the energy is compared
SCALINGS = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0)
#: rows of the data read by the check: a few directions suffice, and the energy is evaluated
#: len(SCALINGS) times per row
_SIGN_ROWS = 8
#: the energy must drop by more than this (in nats) from t = 1 to the last scaling
SIGN_DROP = 50.0


def _scaled_energies(model, params, rows, center):
    """``E(center + t (row - center))`` for every row and every t of :data:`SCALINGS`, shape
    (row, t). The energy runs eagerly, not jitted: 56 evaluations dispatched op by op cost a
    few milliseconds, where compiling them for each new model cost a few hundred. The points
    are made on the host (``rows`` and ``center`` are NumPy arrays), where they compile
    nothing."""
    scalings = np.asarray(SCALINGS, dtype=rows.dtype).reshape((1, -1) + (1,) * (rows.ndim - 1))
    points = center + scalings * (rows - center)[:, None]
    return jax.vmap(jax.vmap(lambda x: model.energy(params, x)))(points)


def unbounded_below(energies: np.ndarray) -> bool:
    """Whether energies of shape (row, t), along outward rays of the data, decrease without
    bound: at least half the rays strictly decreasing at every scaling (``-inf`` counts as
    lower, NaN as not) and dropping by more than :data:`SIGN_DROP` in all.

    Examples
    --------
    >>> t = np.array(SCALINGS)
    >>> unbounded_below(-0.5 * np.outer([0.5, 1.0, 2.0], t) ** 2)     # a log-density
    True
    >>> unbounded_below(0.5 * np.outer([0.5, 1.0, 2.0], t) ** 2)      # an energy
    False
    """
    energies = np.asarray(energies, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        steps = np.diff(energies, axis=1)
        decreasing = np.all((steps < 0) | ((energies[:, 1:] == -np.inf)
                                           & np.isfinite(energies[:, :1])), axis=1)
        drop = energies[:, 0] - energies[:, -1]
    falling = decreasing & (drop > SIGN_DROP)
    return bool(energies.shape[0] and np.sum(falling) * 2 >= energies.shape[0])


def warn_energy_sign(model, params_by_label: dict, data, category: type[Warning],
                     stacklevel: int = 3) -> None:
    """Warn when the energy of a model on a ``real`` support decreases without bound along
    the data scaled outward about their mean, ``x̄ + t (x - x̄)`` for t = 1, 2, 4, ..., 64,
    at any of the parameter values ``params_by_label`` (label → params): the sign of a user
    who returned ``log p`` instead of ``E = -log p``. Reads at most 8 rows."""
    if model.support.kind != "real" or data.shape[0] == 0:
        return
    picks = np.unique(np.linspace(0, data.shape[0] - 1, min(_SIGN_ROWS, data.shape[0]))
                      .astype(int))
    # picked and averaged on the host: op by op on the device, the gather and the mean
    # compiled seven small programs on a process's first fit
    host = np.asarray(data)
    rows = host[picks]
    center = np.mean(host, axis=0, dtype=host.dtype)
    for label, params in params_by_label.items():
        energies = np.asarray(_scaled_energies(model, params, rows, center))
        if unbounded_below(energies):
            warnings.warn(
                f"the energy decreases without bound along the data scaled outward about "
                f"their mean (x̄ + t·(x - x̄), t = 1 to {SCALINGS[-1]:g}) at the {label} "
                f"parameters: exp(-E) is then not integrable. unnorm expects "
                f"E(x) = -log p(x) + const, low where the data are likely; did you return "
                f"the log density? Negate it.", category, stacklevel=stacklevel)
            return

