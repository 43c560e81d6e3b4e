"""The normalizing constant ``log Z(θ) = log Σ_x exp(-E(x; θ))`` (seed 004, eq. 2, with the
integral a sum over a discrete support).

``method="exact"`` enumerates every configuration of a binary or spin support in chunks of
2**14, combining chunks with a running float64 log-sum-exp so that nothing overflows. Energies are
evaluated in JAX's default precision: enable float64 (``jax.config.update("jax_enable_x64",
True)``) for agreement to 1e-10 rather than about 1e-6.

Example
-------
>>> import jax.numpy as jnp
>>> import unnorm as un
>>> # seed 001's three-unit example: H = -x1x2 - x1x3 + 2 x2x3 + x2, Z = 172.420
>>> model = un.models.ising(J=jnp.array([-1.0, -1.0, 2.0]), h=jnp.array([0.0, 1.0, 0.0]))
>>> lz = un.log_partition(model, model.params, method="exact")
>>> round(float(jnp.exp(lz.estimate)), 2)
172.42
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from . import _checks
from .model import Model

__all__ = ["LogPartition", "log_partition", "METHODS", "MAX_EXACT_UNITS"]

METHODS = ("exact",)
MAX_EXACT_UNITS = 20
_CHUNK = 2**14


class LogPartition(NamedTuple):
    """An estimate of ``log Z`` with its standard error (0.0 for exact enumeration)."""

    estimate: float
    stderr: float
    method: str


@functools.partial(jax.jit, static_argnames=("model", "size", "total"))
def _chunk_logsumexp(model: Model, params, start, size: int, total: int):
    """log Σ exp(-E) over configurations start .. start+size-1 (those < total)."""
    index = start + jnp.arange(size, dtype=jnp.uint32)
    configs = model.support.configurations(index).astype(jnp.result_type(float))
    log_weights = -jax.vmap(lambda x: model.energy(params, x))(configs)
    valid = index < total
    invalid_value = jnp.isnan(log_weights) | (log_weights == jnp.inf)
    log_weights = jnp.where(valid, log_weights, -jnp.inf)
    return jax.scipy.special.logsumexp(log_weights), jnp.any(valid & invalid_value)


def log_partition(
    model: Model, params: dict | None = None, method: str = "exact", *, key=None,
    max_units: int = MAX_EXACT_UNITS,
) -> LogPartition:
    """Log normalizing constant ``log Z(θ)`` of ``p(x; θ) ∝ exp(-E(x; θ))`` (eq. 2).

    Parameters
    ----------
    model : Model
        A model on a ``binary`` or ``spin`` support for ``method="exact"``.
    params : dict, optional
        Parameter values; default ``model.params``.
    method : str
        ``"exact"``: enumerate all ``2**d`` configurations (d <= ``max_units``).
    key : jax PRNG key, optional
        Unused by ``"exact"``; accepted so every method shares one signature.
    max_units : int
        Largest number of units enumerated (default 20, about a million configurations).

    Returns
    -------
    LogPartition
        ``estimate`` (float), ``stderr`` (0.0 for exact), ``method``.

    Example
    -------
    >>> import jax.numpy as jnp
    >>> import unnorm as un
    >>> model = un.models.boltzmann(W=jnp.zeros(3), b=jnp.zeros(3))  # uniform on {0,1}^3
    >>> round(un.log_partition(model).estimate, 6) == round(3 * float(jnp.log(2.0)), 6)
    True
    """
    if not isinstance(model, Model):
        raise TypeError(f"model must be an unnorm.Model; got {type(model).__name__}.")
    _checks.check_choice(method, "method", METHODS)
    if key is not None:
        _checks.check_key(key)
    max_units = _checks.check_int(max_units, "max_units", 1)
    params = model.params if params is None else model.check_params(params)
    support = model.support
    if not support.is_discrete:
        raise ValueError(
            f"method='exact' enumerates discrete supports (binary, spin); the model's support "
            f"is {support!r}, which cannot be enumerated. Use method='ais' (annealed importance "
            "sampling) for continuous models."
        )
    if support.size > min(max_units, 30):
        raise ValueError(
            f"method='exact' would enumerate 2**{support.size} configurations of "
            f"{support!r}; the limit is {min(max_units, 30)} units (max_units). Use "
            "method='ais' (annealed importance sampling) for larger models."
        )
    total = 2**support.size
    running = -np.inf
    size = min(_CHUNK, total)
    for start in range(0, total, size):
        stop = min(start + size, total)
        lse, invalid = _chunk_logsumexp(model, params, jnp.uint32(start), size, total)
        if bool(invalid):
            raise ValueError(
                "the energy is NaN or -inf at some configuration(s) among "
                f"{start}..{stop - 1} of {support!r}; log Z is undefined for these params."
            )
        running = float(np.logaddexp(running, float(lse)))
    return LogPartition(running, 0.0, method)
