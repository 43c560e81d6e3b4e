"""Compiled loops paced by wall time, so that an interrupt (Ctrl-C) stops them within a second.

Python regains control, and a ``KeyboardInterrupt`` can be raised, only between calls of a
compiled program: one ``lax.scan`` over all of a fit's steps or all of a run's draws cannot be
stopped once it has started. The loops of ``un.fit``, ``un.sample`` (with the chain-based
estimators and parallel tempering that run through it) and AIS therefore run their compiled
chunks as loops whose trip count is a traced argument: one compiled program of a fixed
``capacity`` (its output buffers' length) runs any number of steps up to it, and the number each
call runs is chosen here from the wall time of the call before, so that a call takes about
:data:`TARGET_SECONDS`. The first call runs :data:`FIRST_STEPS` steps (its time includes the
compilation); each later one at most :data:`GROWTH` times as many as the one before, so that a
step time misjudged from a short call costs little. Since the counts are traced, pacing never
compiles anything, and since every step's key is ``fold_in(key, step)`` with the global step
number, the results do not depend on the counts.

Example
-------
>>> from unnorm import pacing
>>> pacing.next_count(None, remaining=1000, capacity=1000)
4
>>> pacing.next_count(pacing.Pace(count=4, seconds=0.001), remaining=1000, capacity=1000)
64
>>> pacing.next_count(pacing.Pace(count=64, seconds=1.0), remaining=1000, capacity=1000)
32
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.extend.core import jaxpr_as_fun

__all__ = ["TARGET_SECONDS", "FIRST_STEPS", "GROWTH", "Pace", "next_count", "timed",
           "interrupted", "stored_loop"]

#: the wall time a compiled call is paced to: an interrupt waits at most about this long
#: (twice it where a step's time varies within a run)
TARGET_SECONDS = 0.5
#: steps of the first call of a loop, whose time (compilation included) nothing predicts
FIRST_STEPS = 4
#: a call runs at most this many times the steps of the call before it
GROWTH = 16


class Pace(NamedTuple):
    """The last call of a paced loop: how many steps it ran and how long it took (seconds)."""

    count: int
    seconds: float


def next_count(last: Pace | None, remaining: int, capacity: int,
               target: float = TARGET_SECONDS) -> int:
    """How many steps the next call runs: about ``target`` seconds at the pace of ``last``
    (:data:`FIRST_STEPS` when None), at most :data:`GROWTH` times ``last.count``, at least 1,
    and at most ``remaining`` and ``capacity``."""
    if last is None:
        count = FIRST_STEPS
    else:
        ceiling = last.count * GROWTH
        count = ceiling if last.seconds <= 0 else min(ceiling,
                                                      int(target * last.count / last.seconds))
    return max(1, min(count, remaining, capacity))


def timed(call: Callable[[], Any], count: int) -> tuple[Any, Pace]:
    """``call()`` (which must block until its result is computed) and its :class:`Pace`."""
    started = time.perf_counter()
    result = call()
    return result, Pace(count, time.perf_counter() - started)


def interrupted(err: KeyboardInterrupt, where: str) -> KeyboardInterrupt:
    """A ``KeyboardInterrupt`` saying where a run stopped, with ``err``'s traceback: raise it
    ``from None`` in place of ``err``."""
    return KeyboardInterrupt(f"interrupted {where}").with_traceback(err.__traceback__)


def stored_loop(step: Callable, carry, count, length: int, fill=0):
    """``count`` iterations (traced, at most ``length``) of ``carry, out = step(carry, i)`` for
    ``i = 0, 1, …``, inside a traced function: the loop of a paced compiled chunk. Each
    iteration's ``out`` (a PyTree of arrays) is stored at index ``i`` of buffers of ``length``
    rows, the rows past ``count`` left at ``fill``. Returns ``(carry, buffers)``.

    ``step`` is traced once. The buffers' shapes are those of its outputs, which tracing it
    gives; the jaxpr of that trace is then replayed as the loop's body instead of tracing
    ``step`` a second time inside the loop. A second trace cost as much again: for a vmapped
    NUTS step (whose tree-building loops JAX batches again at each trace) as much as XLA's
    compilation of the whole chunk.

    Example
    -------
    >>> import jax, jax.numpy as jnp
    >>> from unnorm import pacing
    >>> def chunk(x, count):
    ...     return pacing.stored_loop(lambda c, i: (c + 1.0, c * 2.0), x, count, length=4)
    >>> carry, doubled = jax.jit(chunk)(jnp.zeros(2), 3)
    >>> doubled[:, 0].tolist()
    [0.0, 2.0, 4.0, 0.0]
    """
    # traced at the loop index's own type (count's: fori_loop's index takes it), so that the
    # replayed program is the one the loop would have traced
    closed, shapes = jax.make_jaxpr(step, return_shape=True)(carry, count)
    replay = jaxpr_as_fun(closed)
    out_tree = jax.tree_util.tree_structure(shapes)
    out_shapes = shapes[1]
    buffers = jax.tree_util.tree_map(
        lambda shape: jnp.full((length, *shape.shape), fill, shape.dtype), out_shapes)

    def stored(index, state):
        carry, buffers = state
        carry, out = jax.tree_util.tree_unflatten(
            out_tree, replay(*jax.tree_util.tree_leaves((carry, index))))
        buffers = jax.tree_util.tree_map(
            lambda buffer, value: jax.lax.dynamic_update_index_in_dim(buffer, value, index, 0),
            buffers, out)
        return carry, buffers

    return jax.lax.fori_loop(0, count, stored, (carry, buffers))
