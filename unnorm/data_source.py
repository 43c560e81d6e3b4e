"""Data sets read in blocks of rows: fits on data larger than memory.

``un.fit`` takes, besides an array, a NumPy memmap or any object with ``__len__`` and
``__getitem__`` over rows (``x[i:j]`` returning an array of ``j - i`` rows, as an h5py or zarr
dataset does). Such data are *streamed*: wrapped in a :class:`RowSource` and read in host
blocks of a bounded number of values, never whole. An ordinary in-memory array is not wrapped
and keeps the fit's in-memory path.

What reads a source:

* the data checks (finite, inside the support, not overflowing the parameters' dtype) and the
  check that the energy is finite at every row, one pass over host blocks
  (:func:`check_rows`);
* the full-data passes (closed form, Newton, the sandwich's ``H`` and ``J``): each host block
  goes through the in-memory pass and the sums are added (:func:`sum_over_blocks`);
* minibatch optimizer steps: the rows a step draws are read on the host
  (:func:`minibatches`), the same rows an in-memory fit with the same key draws;
* what an estimator's ``init`` and the fit's messages look at (NCE's noise fitted to the
  data's mean and covariance, the data's scale): an evenly spaced subsample of at most
  ``SAMPLE_ROWS`` rows (:func:`view`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np

from . import threefry
from .model import Model, check_finite_energies

__all__ = ["RowSource", "is_streamed", "as_source", "view", "host_block_rows", "host_blocks",
           "check_rows", "sum_over_blocks", "step_indices", "minibatches",
           "full_batch_block_rows", "blocked_value_and_grad", "HOST_BLOCK_ELEMENTS",
           "SAMPLE_ROWS", "MINIBATCH_ELEMENTS", "FULL_BATCH_BLOCK_ROWS",
           "FULL_BATCH_BLOCKED_ELEMENTS"]

#: Values (rows × values per row) in one host block of a full-data pass or a check: 2²² values
#: are 32 MiB in float64, the dtype the checks read in.
HOST_BLOCK_ELEMENTS = 2**22
#: Rows of the evenly spaced subsample that estimators' ``init`` and the fit's messages see.
SAMPLE_ROWS = 10_000
#: Values in the rows of one compiled call of minibatch steps (steps × batch × values per
#: row): a chunk of 100 steps of 256 rows of 10 values is far below it.
MINIBATCH_ELEMENTS = 2**22
#: Rows per block of a full-batch optimizer step over in-memory data summed in blocks.
FULL_BATCH_BLOCK_ROWS = 8192
#: Rows × parameters from which a full-batch step over in-memory data sums its loss and
#: gradient over blocks of rows: a step's reverse pass otherwise holds its intermediates
#: for every row at once.
FULL_BATCH_BLOCKED_ELEMENTS = 2**24


class RowSource:
    """Rows of a data set read on demand from ``rows`` (``rows[i:j]`` is an array of rows
    ``i`` to ``j - 1``), as arrays of ``dtype``. Not a JAX pytree on purpose: passed to a
    jitted function by mistake it raises instead of loading every row."""

    __slots__ = ("rows", "shape", "dtype", "_sample")

    def __init__(self, rows, shape: tuple[int, ...], dtype) -> None:
        self.rows = rows
        self.shape = tuple(shape)
        self.dtype = np.dtype(dtype)
        self._sample = None

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __repr__(self) -> str:
        return f"RowSource({type(self.rows).__name__}, shape={self.shape})"

    def read(self, start: int, stop: int) -> np.ndarray:
        """Rows ``start`` to ``stop - 1`` as a float64 array (the checks' dtype)."""
        try:
            block = self.rows[start:stop]
        except Exception as err:  # the source's own error, whatever its type
            raise TypeError(
                f"data[{start}:{stop}] failed ({type(err).__name__}: {err}); a row source "
                "must return an array of rows for x[i:j].") from None
        block = _as_float(block, f"data[{start}:{stop}]")
        expected = (stop - start, *self.shape[1:])
        if block.shape != expected:
            raise ValueError(
                f"data[{start}:{stop}] returned an array of shape {block.shape}; a row source "
                f"must return {stop - start} rows of shape {self.shape[1:]} for x[i:j], "
                f"shape {expected}.")
        return block

    def take(self, indices: np.ndarray) -> np.ndarray:
        """The rows at ``indices`` (any order, repeats allowed), in that order, as float64.
        Each distinct row is read once, in increasing order: a memmap then reads its pages
        front to back, and other sources get one slice per run of consecutive rows."""
        indices = np.asarray(indices, dtype=np.int64)
        unique, inverse = np.unique(indices.ravel(), return_inverse=True)
        if isinstance(self.rows, np.ndarray):
            rows = _as_float(self.rows[unique], "data")
        else:
            # runs of consecutive rows: one x[i:j] each
            breaks = np.flatnonzero(np.diff(unique) != 1) + 1
            runs = np.split(unique, breaks)
            rows = np.concatenate([self.read(int(run[0]), int(run[-1]) + 1) for run in runs])
        return rows[inverse].reshape(*indices.shape, *self.shape[1:])


def _as_float(block, name: str) -> np.ndarray:
    try:
        return np.asarray(block, dtype=float)
    except (TypeError, ValueError) as err:
        raise TypeError(f"{name} must be an array of numbers; could not convert a "
                        f"{type(block).__name__}: {err}") from None


#: What marks an object as an array already in memory (NumPy's array interfaces, DLPack:
#: a torch or CuPy tensor) or a table that converts to one (pandas, xarray).
_IN_MEMORY_MARKS = ("__array_interface__", "__array_struct__", "__dlpack__", "to_numpy")


def is_streamed(data) -> bool:
    """Whether ``un.fit`` streams ``data``: a NumPy memmap, or an object with ``__getitem__``
    that is not an array in memory (NumPy, JAX, torch: anything with an array interface or
    DLPack), a table with ``to_numpy`` (pandas), a list, tuple or dict, which keep the
    in-memory path. An h5py or zarr dataset is streamed."""
    if isinstance(data, (np.memmap, RowSource)):
        return True
    if isinstance(data, (np.ndarray, jax.Array, list, tuple, dict, str, bytes)) or any(
            hasattr(data, mark) for mark in _IN_MEMORY_MARKS):
        return False
    return hasattr(data, "__getitem__")


def as_source(data, event_shape: tuple[int, ...], dtype) -> RowSource:
    """``data`` (see :func:`is_streamed`) as a :class:`RowSource` of rows of ``event_shape``
    read as ``dtype``; its length and the shape of its first row are checked (the values are
    checked by :func:`check_rows`)."""
    if isinstance(data, RowSource):
        return data
    if not hasattr(data, "__len__"):
        raise TypeError(
            f"data of type {type(data).__name__} has __getitem__ but no __len__: data larger "
            "than memory is accepted as a NumPy memmap or an object with both __len__ (the "
            "number of rows) and __getitem__ over rows (x[i:j] returning an array), such as "
            "an h5py or zarr dataset.")
    n = len(data)
    if not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"data has no observations (len(data) = {n!r}).")
    source = RowSource(data, (int(n), *event_shape), dtype)
    try:
        source.read(0, 1)
    except ValueError:
        raise ValueError(
            f"data has rows of shape {np.shape(data[0:1])[1:]}, but the model's support needs "
            f"rows of shape {tuple(event_shape)}: data[i:j] must return an array of shape "
            f"(j - i, {', '.join(map(str, event_shape))}).") from None
    return source


def view(data):
    """What needs only a look at the data (an estimator's ``init``, the scale in messages,
    the sign check): ``data`` itself when it is in memory, else an evenly spaced subsample of
    at most ``SAMPLE_ROWS`` rows of the source, read once, in its dtype."""
    if not isinstance(data, RowSource):
        return data
    if data._sample is None:
        n = data.shape[0]
        picks = np.unique(np.linspace(0, n - 1, min(n, SAMPLE_ROWS)).astype(np.int64))
        data._sample = jnp.asarray(data.take(picks), dtype=data.dtype)
    return data._sample


def host_block_rows(n: int, row_size: int) -> int:
    """Rows per host block: the largest power of two with at most ``HOST_BLOCK_ELEMENTS``
    values (at least one row), or ``n`` when that is fewer.

    Example
    -------
    >>> host_block_rows(10**7, 10), host_block_rows(1000, 10)
    (262144, 1000)
    """
    budget = max(HOST_BLOCK_ELEMENTS // max(row_size, 1), 1)
    return min(n, 1 << (budget.bit_length() - 1))


def host_blocks(n: int, rows: int) -> Iterator[tuple[int, int]]:
    """``(first, skip)`` of each host block of ``rows`` rows over ``n``: the block is rows
    ``first`` to ``first + rows - 1``, of which the first ``skip`` were counted by the block
    before. A last block that ``n`` does not fill is shifted back to end at the last row, as
    the in-memory pass's blocks are, so that every block has one shape (one compilation)."""
    for start in range(0, n, rows):
        first = min(start, n - rows)
        yield first, start - first


def _row_size(source: RowSource) -> int:
    return int(np.prod(source.shape[1:], dtype=np.int64))


def check_rows(source: RowSource, model: Model, params) -> None:
    """The in-memory data checks, block by block: every value finite, inside the model's
    support and within the range of ``source.dtype``, and the energy finite at every row at
    ``params``. Messages name the block as ``data[i:j]``, with row numbers inside it."""
    n = source.shape[0]
    rows = host_block_rows(n, _row_size(source))
    for first, _ in host_blocks(n, rows):
        name = f"data[{first}:{first + rows}]"
        block = model.support.check_data(source.read(first, first + rows), name,
                                         dtype=source.dtype)
        check_finite_energies(model, params, jnp.asarray(block, dtype=source.dtype), name)


def sum_over_blocks(block_means: Callable, source: RowSource):
    """The means over all rows of what ``block_means(rows, offset, skip)`` gives for one host
    block (a pytree of means over the block's rows, the first ``skip`` of them weighted 0;
    ``rows`` the block as a device array, ``offset`` the index of its first row in the data
    set). Each block's means are turned back into sums (times the rows it holds) and added in
    float64 on the host; the result has the leaves' dtype."""
    n = source.shape[0]
    rows = host_block_rows(n, _row_size(source))
    total, dtypes = None, None
    for first, skip in host_blocks(n, rows):
        block = jnp.asarray(source.read(first, first + rows), dtype=source.dtype)
        means = block_means(block, first, skip)
        if dtypes is None:
            dtypes = jax.tree_util.tree_map(lambda leaf: leaf.dtype, means)
        sums = jax.tree_util.tree_map(lambda leaf: np.asarray(leaf, dtype=float) * rows, means)
        total = sums if total is None else jax.tree_util.tree_map(np.add, total, sums)
    return jax.tree_util.tree_map(lambda leaf, dtype: jnp.asarray(leaf / n, dtype=dtype),
                                  total, dtypes)


@functools.partial(jax.jit, static_argnames=("length", "batch_size", "n"))
def step_indices(key, start, *, length: int, batch_size: int, n: int) -> jax.Array:
    """The rows minibatch steps ``start`` to ``start + length - 1`` draw, shape ``(length,
    batch_size)``: uniform with replacement, from the step's key ``fold_in(key, step)`` as
    the fit driver's compiled steps draw them, so a streamed fit sees the rows an in-memory
    fit with the same key sees."""
    steps = start + jnp.arange(length, dtype=jnp.int32)

    def one(step):
        step_key = threefry.fold_in(key, step)
        return threefry.randint(threefry.fold_in(step_key, 1), (batch_size,), 0, n)

    return jax.vmap(one)(steps)


def minibatch_length(batch_size: int, row_size: int, length: int) -> int:
    """Steps per compiled call of a streamed minibatch fit: ``length`` or fewer, so that the
    rows read for one call hold at most ``MINIBATCH_ELEMENTS`` values."""
    return max(1, min(length, MINIBATCH_ELEMENTS // max(batch_size * row_size, 1)))


def minibatches(source: RowSource, key, start: int, count: int, length: int,
                batch_size: int) -> tuple[jax.Array, jax.Array]:
    """The rows and row indices of minibatch steps ``start`` to ``start + count - 1``, as
    arrays of ``length`` steps (the steps past ``count`` are zeros, never used): what the
    driver's compiled chunk takes in place of the data."""
    index = np.asarray(step_indices(key, jnp.asarray(start, jnp.int32), length=length,
                                    batch_size=batch_size, n=source.shape[0]))
    rows = np.zeros((length, batch_size, *source.shape[1:]), dtype=source.dtype)
    rows[:count] = source.take(index[:count])
    return jnp.asarray(rows), jnp.asarray(index)


def full_batch_error(source: RowSource, reason: str) -> ValueError:
    """The error of a full-batch optimizer stage on streamed data."""
    return ValueError(
        f"batch_size=None asks for full-batch optimizer steps, but data is streamed "
        f"({type(source.rows).__name__} of {source.shape[0]} rows) and {reason}: each step "
        "would read every row. Pass batch_size (e.g. batch_size=1024) for minibatch steps; "
        "the closed form, the Newton refinement and the standard errors still use all rows, "
        "read in blocks.")


def unsupported_estimator_error(name: str, source: RowSource) -> ValueError:
    """The error of an estimator that needs all observations in memory."""
    return ValueError(
        f"data is streamed ({type(source.rows).__name__} of {source.shape[0]} rows), but "
        f"estimator {name!r} needs all observations in memory at once (its kernel matrix or "
        "its Monte Carlo finish over the data). Streamed data work with 'sm', 'dsm', 'ssm', "
        "'nce', 'pl', 'rm' and 'mpf'; for this estimator pass an in-memory array "
        "(np.asarray(data), or a subsample of the rows).")


# ---- full-batch steps over many in-memory rows --------------------------------------------------

def full_batch_block_rows(n: int, num_params: int, objective) -> int | None:
    """Rows per block of a full-batch optimizer step over ``n`` in-memory rows, or None for
    one pass over all rows at once (fewer than ``FULL_BATCH_BLOCKED_ELEMENTS`` rows ×
    parameters, or an objective whose loss is more than the mean of its terms at a fixed
    state: a Monte Carlo gradient or an estimator's own finish)."""
    if objective.post_fit is not None or objective.traits.monte_carlo_gradient:
        return None
    if n <= FULL_BATCH_BLOCK_ROWS or n * num_params < FULL_BATCH_BLOCKED_ELEMENTS:
        return None
    return FULL_BATCH_BLOCK_ROWS


def blocked_value_and_grad(terms: Callable, theta, data: jax.Array, rows: int):
    """The mean over the rows of ``data`` of ``terms(theta, x, index)`` (the per-row terms of
    rows ``x`` with indices ``index``) and its gradient in ``theta``, summed over blocks of
    ``rows`` rows by a ``lax.scan``: the reverse pass holds one block's intermediates at a
    time. The last block is shifted back to end at the last row, the rows the block before
    counted weighted 0 (every row evaluated is an observation; one block shape)."""
    n = data.shape[0]
    dtype = jax.eval_shape(terms, theta, data[:rows], jnp.arange(rows)).dtype

    def add(carry, number):
        start = number * rows
        first = jnp.minimum(start, n - rows)
        x = jax.lax.dynamic_slice_in_dim(data, first, rows)
        index = first + jnp.arange(rows)
        weight = (index >= start).astype(dtype)
        value, grad = jax.value_and_grad(lambda t: weight @ terms(t, x, index))(theta)
        return jax.tree_util.tree_map(jnp.add, carry, (value, grad)), None

    zeros = (jnp.zeros((), dtype), jax.tree_util.tree_map(jnp.zeros_like, theta))
    (total, grads), _ = jax.lax.scan(add, zeros, jnp.arange(-(-n // rows)))
    return total / n, jax.tree_util.tree_map(lambda g: g / n, grads)
