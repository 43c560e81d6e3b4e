"""Chain groups: the vectorized chains of ``un.sample`` split over the CPU's cores.

Chains are independent, so they can run in any grouping. One vectorized (``vmap``) computation
over all chains runs mostly on one core of XLA's CPU backend, and two computations dispatched
from one Python thread run one after the other. Compiled JAX code releases the GIL, so groups
of chains dispatched from threads of their own run at the same time on different cores:
``chain_method="parallel"`` splits the chains into one group per available core, each group
vectorized, dispatched from a thread pool kept for the process. Measured on 2 cores
(benchmarks/README.md): the sampling chunk of 256 Gibbs chains on a 100-spin Ising chain, 400
sweeps, in 27–35 ms as two groups of 128 against 60–100 ms as one vectorized call; a whole
``un.sample`` call in 40–60 ms against 70–90 ms (28–30 ms since the later changes listed there).
Each worker also copies its group's draws into the output arrays, so the copies run in parallel
too; the dispatching thread, which only waits, allocates the draws' array meanwhile
(:meth:`DrawSink.reserve_first`).

Every group has the same size, so one compilation serves them all: when the chains do not
divide evenly, the last group is padded with copies of the last chain, whose draws are dropped.
The chains of NUTS and HMC (and of the Langevin kernels given ``chain_block``) come in
fixed-width blocks (:mod:`unnorm.samplers.chain_blocks`): a group then holds whole blocks,
which it runs one compiled call after the other (:attr:`GroupLayout.units`,
:meth:`GroupLayout.units_of`), so that every block is the same program of the same width.
The groups change nothing in the algorithm: each chain's steps depend only on its own state
and key, so its draws are those of ``chain_method="vectorized"`` and of any other number of
chains, bit for bit for the blocked kernels; for the kernels that run each group as one
vectorized computation (the Langevin kernels by default, random-walk Metropolis, Gibbs) as far
as XLA rounds their energies and gradients alike in batches of every size, which the tests
find for the gradient-free kernels on the built-in models but not for MALA on a dense Gaussian.

Example
-------
>>> from unnorm.samplers import chain_groups
>>> layout = chain_groups.GroupLayout(num_chains=5, num_groups=2)
>>> layout.group_size, [layout.real_chains(g) for g in range(2)]
(3, [3, 2])
"""

from __future__ import annotations

import functools
import math
import mmap
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np

__all__ = ["CHAIN_METHODS", "GroupLayout", "available_cores", "cgroup_cpu_limit",
           "choose_layout", "spread", "split", "executor", "map_groups", "host_view", "DrawSink"]

#: ``un.sample``'s ``chain_method`` values.
CHAIN_METHODS = ("parallel", "vectorized")


class GroupLayout(NamedTuple):
    """``num_chains`` chains in ``num_groups`` groups of ``group_size`` (the last one padded).

    With a ``block`` width (:mod:`unnorm.samplers.chain_blocks`) every group holds whole blocks
    of that many chains, so that chain ``c`` is lane ``c mod block`` of a block whatever the
    grouping; None: each group is one vectorized computation of its chains."""

    num_chains: int
    num_groups: int
    block: int | None = None

    @property
    def group_size(self) -> int:
        if self.block is None:
            return -(-self.num_chains // self.num_groups)
        return self.block * -(-self.num_blocks // self.num_groups)

    @property
    def num_blocks(self) -> int:
        """The blocks the chains fill (1 without a block width)."""
        return 1 if self.block is None else -(-self.num_chains // self.block)

    @property
    def units(self) -> GroupLayout:
        """The units a compiled call runs: one block each (the layout of the blocks as groups
        of ``block`` chains), or without a block width the groups themselves."""
        return self if self.block is None else GroupLayout(self.num_chains, self.num_blocks,
                                                           self.block)

    def units_of(self, group: int) -> range:
        """The units (indices into :attr:`units`) that group ``group`` runs, one after the
        other."""
        if self.block is None:
            return range(group, group + 1)
        per_group = self.group_size // self.block
        return range(group * per_group, min((group + 1) * per_group, self.num_blocks))

    def real_chains(self, group: int) -> int:
        """How many of the group's chains are real (the rest are padding)."""
        start = group * self.group_size
        return max(0, min(self.group_size, self.num_chains - start))


def cgroup_cpu_limit(root: str = "/sys/fs/cgroup") -> float | None:
    """The CPUs a Linux control group's quota allows (cgroup v2 ``cpu.max``, or v1
    ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``), or None when there is no quota.

    A container limited to 2 CPUs on a 64-core host still sees 64 cores in its affinity mask;
    64 groups would then share 2 CPUs."""
    base = Path(root)
    v2 = _read_text(base / "cpu.max")
    if v2 is not None:  # "<quota> <period>", or "max <period>" for no quota
        fields = v2.split()
        if len(fields) >= 2 and fields[0] != "max" and fields[0].isdigit() and fields[1].isdigit():
            return int(fields[0]) / int(fields[1])
        return None
    quota = _read_text(base / "cpu" / "cpu.cfs_quota_us")
    period = _read_text(base / "cpu" / "cpu.cfs_period_us")
    try:
        quota_us, period_us = int(quota), int(period)
    except (TypeError, ValueError):  # no v1 files either, or unreadable ones
        return None
    return None if quota_us <= 0 or period_us <= 0 else quota_us / period_us


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def available_cores() -> int:
    """The CPU cores this process may run on: its affinity mask (where the OS has one), capped
    by a control group's CPU quota."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    limit = cgroup_cpu_limit()
    if limit is not None:
        cores = min(cores or 1, math.ceil(limit))
    return max(1, cores or 1)


def choose_layout(num_chains: int, chain_method: str, cores: int | None = None,
                  block: int | None = None) -> GroupLayout:
    """One group per core (``cores``, default :func:`available_cores`) for ``"parallel"`` on
    the CPU backend, at least one chain (one block of ``block`` chains, when given) per group;
    a single group for ``"vectorized"`` and on accelerators (which run one vectorized
    computation in parallel already)."""
    if chain_method == "parallel" and jax.default_backend() == "cpu":
        return spread(num_chains, available_cores() if cores is None else cores, block)
    return GroupLayout(num_chains, 1, block)


def spread(num_chains: int, workers: int, block: int | None = None) -> GroupLayout:
    """``num_chains`` chains (in blocks of ``block``, when given) split into at most
    ``workers`` groups (cores, or devices), each with at least one real chain."""
    units = num_chains if block is None else -(-num_chains // block)
    groups = max(1, min(units, workers))
    # No empty group: with 2 cores, 3 chains are 2 + 1 (padded), never 3 + 0.
    while groups > 1 and GroupLayout(num_chains, groups, block).real_chains(groups - 1) == 0:
        groups -= 1
    return GroupLayout(num_chains, groups, block)


def split(tree: Any, layout: GroupLayout) -> tuple:
    """A PyTree whose leaves have a leading chain axis -> one PyTree per group (traceable).

    Padding repeats the last chain, so padded chains start where a real one does and stay
    finite."""
    size = layout.group_size
    if layout.num_groups == 1 and size == layout.num_chains:
        return (tree,)
    index = np.minimum(np.arange(layout.num_groups * size), layout.num_chains - 1)
    return tuple(
        jax.tree_util.tree_map(lambda leaf, g=g: leaf[index[g * size:(g + 1) * size]], tree)
        for g in range(layout.num_groups)
    )


@functools.cache
def _shared_pool(workers: int) -> ThreadPoolExecutor:
    # Kept for the life of the process: starting two threads took 3-4 ms a call, a tenth of a
    # 256-chain Gibbs run. Tasks never wait on one another, so calls from several threads can
    # share the pool: their groups queue.
    return ThreadPoolExecutor(max_workers=workers, thread_name_prefix="unnorm-chains")


def executor(layout: GroupLayout) -> ThreadPoolExecutor | None:
    """The thread pool that runs ``layout``'s groups (one worker per group, shared between
    calls), or None for a single group."""
    return None if layout.num_groups == 1 else _shared_pool(layout.num_groups)


def map_groups(run_group: Callable[[int], Any], layout: GroupLayout,
               pool: ThreadPoolExecutor | None,
               while_waiting: Callable[[], None] | None = None) -> list:
    """``[run_group(g) for g in groups]``, the groups at once on ``pool``. ``run_group`` must
    block until its result is computed (``jax.block_until_ready``): JAX dispatches
    asynchronously, and only a blocking call keeps the worker until the group is done.
    ``while_waiting`` runs on the calling thread once the groups are submitted (first, without
    a pool). When an exception (a ``KeyboardInterrupt``, a group's error) stops the wait, it
    is raised once every group has finished."""
    if pool is None:
        if while_waiting is not None:
            while_waiting()
        return [run_group(g) for g in range(layout.num_groups)]
    futures = [pool.submit(run_group, g) for g in range(layout.num_groups)]
    try:
        if while_waiting is not None:
            while_waiting()
        return [future.result() for future in futures]
    except BaseException:
        # An interrupt (or one group's error) reaches this thread while the other groups
        # compute, and compiled code cannot be stopped: wait for them, so that nothing of this
        # call still runs, nor holds the pool's workers, when the caller regains control.
        for future in futures:
            future.cancel()
        wait(futures)
        raise


def host_view(leaf) -> np.ndarray:
    """A NumPy view of a CPU array's buffer, without a copy.

    DLPack never copies; ``np.asarray`` of a JAX array took 4-5 ms for a 20 MB buffer one call
    in two, as much as the copy into the output (measured on jax 0.10)."""
    try:
        return np.from_dlpack(leaf)
    except (TypeError, BufferError, RuntimeError, AttributeError):  # not a CPU buffer
        return np.asarray(leaf)


class DrawSink:
    """The sampling phase's outputs, gathered into one NumPy array per leaf, dims (draw, chain,
    ...), the padding dropped.

    The groups' workers write their own chunks (:meth:`write`), so the copies run at the same
    time, on the cores that computed them. A run of one group in one chunk keeps the device's
    buffer as it is (no copy) unless its dtype is to change.

    ``host_dtypes`` maps a leaf dtype to the dtype it is stored in (e.g. int8 -> float32);
    other leaves keep theirs."""

    def __init__(self, layout: GroupLayout, total: int, host_dtypes: dict | None = None,
                 keep_buffers: bool = True):
        self.layout, self.total = layout, total
        self._keep_buffers = keep_buffers
        self._host_dtypes = {np.dtype(k): np.dtype(v) for k, v in (host_dtypes or {}).items()}
        self._lock = threading.Lock()
        self._treedef = None
        self._arrays: list | None = None
        self._reserved: np.ndarray | None = None

    def keeps_device_buffer(self, count: int, length: int) -> bool:
        """Whether a first call of ``count`` draws in outputs of ``length`` is stored as the
        device's buffers (one group, all draws in one call): no output array is allocated
        then."""
        return (self._keep_buffers and self.layout.num_groups == 1
                and count == length == self.total)

    def allocate(self, shapes: Any) -> None:
        """Allocate the output arrays for outputs shaped as ``shapes`` (``jax.ShapeDtypeStruct``
        leaves of dims (draw, chain, ...)), before any :meth:`write`: a process that computes
        none of the chains (they belong to other processes' devices) then still holds arrays
        for them to be gathered into."""
        leaves, treedef = jax.tree_util.tree_flatten(shapes)
        with self._lock:
            if self._arrays is None:
                self._treedef = treedef
                self._arrays = [self._new_array(leaf) for leaf in leaves]
                self._reserved = None

    def reserve_first(self, event_shape: tuple, dtype) -> None:
        """Allocate the first leaf's array (the draws: ``event_shape`` per chain and draw, in
        ``dtype``) now, and touch each of its memory pages.

        Meant for the dispatching thread while the groups compute: the pages of a fresh array
        are mapped on first write, and when the workers took those page faults in their copies,
        a 41 MB copy took 20-60 ms one call in five or ten instead of 2-5 ms (256 Gibbs chains
        × 400 draws of 100 spins; benchmarks/README.md). Nothing when :meth:`allocate` has
        made the arrays already."""
        with self._lock:
            if self._arrays is not None:
                return
        array = np.empty((self.total, self.layout.num_chains, *event_shape), dtype)
        array.reshape(-1)[::max(1, mmap.PAGESIZE // array.itemsize)] = 0
        with self._lock:
            if self._arrays is None:
                self._reserved = array

    def write(self, out: Any, start: int, group: int, count: int | None = None) -> None:
        """Store group ``group``'s outputs (leaves of dims (draw, chain, ...)) for the draws
        from ``start`` on: the first ``count`` of them (default all), those past ``total``
        dropped."""
        leaves, treedef = jax.tree_util.tree_flatten(out)
        length = leaves[0].shape[0]
        count = length if count is None else count
        # a chain axis padded for the devices (unnorm.samplers.devices) is cut on the copy
        padded = leaves[0].shape[1] != self.layout.num_chains
        if start == 0 and self.keeps_device_buffer(count, length) and not padded:
            views = [host_view(leaf) for leaf in leaves]
            self._treedef = treedef
            self._arrays = [view.astype(self._host_dtype(view.dtype), copy=False)
                            for view in views]
            return
        with self._lock:
            if self._arrays is None:
                self._treedef = treedef
                self._arrays = [self._new_array(leaf) for leaf in leaves]
                self._reserved = None
        chains, offset = self.layout.real_chains(group), group * self.layout.group_size
        kept = min(count, self.total - start)
        for target, leaf in zip(self._arrays, leaves, strict=True):
            if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
                self._write_shards(target, leaf, start, kept)
                continue
            target[start:start + kept, offset:offset + chains] = host_view(leaf)[:kept, :chains]

    def _write_shards(self, target: np.ndarray, leaf: jax.Array, start: int, kept: int) -> None:
        """The chains of ``leaf`` (one group split over several processes' devices) that this
        process's devices hold, into their columns of ``target``."""
        num_chains = self.layout.num_chains
        for shard in leaf.addressable_shards:
            chains = shard.index[1]
            first = chains.start or 0
            last = min(num_chains, leaf.shape[1] if chains.stop is None else chains.stop)
            if last > first:
                target[start:start + kept, first:last] = (
                    host_view(shard.data)[:kept, :last - first])

    def _new_array(self, leaf) -> np.ndarray:
        shape = (self.total, self.layout.num_chains, *leaf.shape[2:])
        dtype = self._host_dtype(leaf.dtype)
        reserved = self._reserved
        if reserved is not None and reserved.shape == shape and reserved.dtype == dtype:
            self._reserved = None
            return reserved
        return np.empty(shape, dtype)

    def _host_dtype(self, dtype) -> np.dtype:
        return self._host_dtypes.get(np.dtype(dtype), np.dtype(dtype))

    def result(self) -> Any:
        """The outputs as NumPy arrays of dims (chain, draw, ...) (views of the stored ones)."""
        return self._treedef.unflatten([np.swapaxes(a, 0, 1) for a in self._arrays])
