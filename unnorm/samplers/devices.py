"""The chains of ``un.sample`` placed over several devices.

Kernels that run each group of chains as one vectorized computation (MALA, ULA, random-walk
Metropolis, Gibbs by default; every kernel on accelerators) are split with ``jax.sharding``.
A run over ``n`` devices builds a one-dimensional :class:`jax.sharding.Mesh` whose axis is
named ``"chains"``. Every array with a leading chain axis (the kernels' states, the per-chain keys)
is placed with ``NamedSharding(mesh, P("chains"))``: each device holds ``num_chains / n``
chains. The parameters are replicated (``P()``). The compiled chunks are the same jitted
functions as on one device; XLA's SPMD partitioner (GSPMD, Xu et al. 2021) splits them along
the chain axis, which no step couples, so each device advances its own chains and the draw
buffers come out split the same way. When ``num_chains`` is not a multiple of ``n``, the chain
axis is padded with copies of the last chain (as the CPU's chain groups are) and the padding's
draws are dropped on the host.

Kernels that run their chains in fixed-width blocks on the CPU (NUTS, HMC, the Langevin
kernels given ``chain_block``, and parallel tempering over them:
:mod:`unnorm.samplers.chain_blocks`) keep their blocks on several devices:
the blocks are split into contiguous runs, one per device (:meth:`ChainPlacement.block_layout`),
each block's state, keys and a copy of the parameters are committed to its device
(:meth:`ChainPlacement.place_blocks`), and every call is the single-device run's program of
one block, run where its inputs are. An executable is bound to its device, so each device
compiles the program once for itself; the same program, compiled by the same XLA for the same
CPU, is the same code. One thread per device dispatches its blocks one after the other, as the
chain groups do on one device's cores, so the devices compute at once. One SPMD program
partitioned by XLA would compute the same arithmetic in a different executable, which rounded
differently (in the last bits, about 1e-14 in float64); the blocks run the same code.

A chain's keys are ``fold_in(key, c)`` and its steps' ``fold_in(chain_key, t)``, whatever the
device count, so its draws are those of a single-device run: bit for bit for the blocked
kernels (the same program on the same inputs), and for the others as far as XLA rounds the
partitioned and the single-device programs alike.

The devices may belong to several processes (``jax.distributed``), each process running the
same ``un.sample`` call. Every process computes the starting states from the same key and
places the chains of its own devices (:meth:`ChainPlacement.chains` builds the global arrays
from each process's slices; a blocked kernel's process runs only the blocks of its devices,
:meth:`ChainPlacement.is_local`). The number of draws a call runs, chosen from timings, is
process 0's (:func:`from_first_process`), so that every process calls the partitioned program
in step. Each process copies the draws of its own chains to the host, and one all-gather
(:meth:`ChainPlacement.gather`) completes every process's arrays with the others' chains:
every process returns the same draws.

Example
-------
>>> import jax
>>> from unnorm.samplers import devices
>>> placement = devices.ChainPlacement(tuple(jax.devices()[:1]), num_chains=3)
>>> placement.padded_chains
3
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from . import chain_groups

__all__ = ["CHAIN_AXIS", "ChainPlacement", "check_devices", "require_local", "placement",
           "from_first_process", "local_chains", "global_array", "host_array"]

#: the mesh axis the chains are split along
CHAIN_AXIS = "chains"


def check_devices(devices: Any) -> tuple[jax.Device, ...]:
    """``un.sample``'s ``devices`` as a tuple of distinct devices.

    None: every device of ``jax.devices()``; an int ``n``: the first ``n`` of them
    (``1 <= n <= len(jax.devices())``); a sequence of ``jax.Device`` objects: those, of one
    platform."""
    available = jax.devices()
    if devices is None:
        return tuple(available)
    if isinstance(devices, numbers.Integral) and not isinstance(devices, bool):
        count = int(devices)
        if not 1 <= count <= len(available):
            raise ValueError(
                f"devices must be between 1 and the {len(available)} device(s) of "
                f"jax.devices() when given as a count; got {count}.")
        return tuple(available[:count])
    if isinstance(devices, jax.Device):
        devices = [devices]
    if (isinstance(devices, (str, bytes)) or not isinstance(devices, Sequence)
            or not devices or not all(isinstance(d, jax.Device) for d in devices)):
        raise TypeError(
            "devices must be None (all of jax.devices()), a device count, or a non-empty list "
            f"of jax.Device objects such as jax.devices()[:2]; got {devices!r}.")
    devices = tuple(devices)
    if len(set(devices)) != len(devices):
        raise ValueError(f"devices lists a device more than once: {list(devices)!r}.")
    platforms = {d.platform for d in devices}
    if len(platforms) > 1:
        raise ValueError(f"devices must all be of one platform; got {sorted(platforms)}.")
    return devices


def require_local(devices: tuple) -> tuple:
    """``devices`` as :func:`check_devices` returns them, refused when none belongs to this
    process: a process computes only on its own devices, so a run on others' alone (such
    as ``devices=1`` on any process but the first, whose device it names) has nothing to
    run here."""
    if not any(d.process_index == jax.process_index() for d in devices):
        raise ValueError(
            f"devices must include a device of this process (process {jax.process_index()} "
            f"of {jax.process_count()}, whose devices are jax.local_devices() = "
            f"{jax.local_devices()!r}); got {list(devices)!r}.")
    return devices


class ChainPlacement(NamedTuple):
    """``num_chains`` chains split over ``devices`` (padded to a multiple of their count)."""

    devices: tuple
    num_chains: int

    @property
    def padded_chains(self) -> int:
        """The length of the chain axis on the devices: a multiple of the device count."""
        n = len(self.devices)
        return -(-self.num_chains // n) * n

    @property
    def mesh(self) -> Mesh:
        return Mesh(np.array(self.devices), (CHAIN_AXIS,))

    @property
    def spans_processes(self) -> bool:
        """Whether some of the devices belong to other processes (``jax.distributed``)."""
        return any(d.process_index != jax.process_index() for d in self.devices)

    def chains(self, tree: Any) -> Any:
        """A PyTree whose leaves have a leading chain axis, padded (copies of the last chain)
        and split over the devices along that axis."""
        extra = self.padded_chains - self.num_chains
        if extra:
            index = np.minimum(np.arange(self.padded_chains), self.num_chains - 1)
            tree = jax.tree_util.tree_map(lambda leaf: leaf[index], tree)
        return self._put(tree, NamedSharding(self.mesh, P(CHAIN_AXIS)))

    def replicated(self, tree: Any) -> Any:
        """A PyTree copied whole onto every device (the parameters)."""
        return self._put(tree, NamedSharding(self.mesh, P()))

    def _put(self, tree: Any, sharding: NamedSharding) -> Any:
        """``tree`` placed with ``sharding``. Over several processes each one holds the same
        values (every process computes the starts from the same key) and places the slices
        of its own devices: ``jax.device_put`` only reaches this process's devices."""
        if not self.spans_processes:
            return jax.device_put(tree, sharding)
        return jax.tree_util.tree_map(lambda leaf: global_array(leaf, sharding), tree)

    def is_local(self, group: int) -> bool:
        """Whether group ``group`` of a :meth:`block_layout` (device ``group``) is this
        process's to run."""
        return self.devices[group].process_index == jax.process_index()

    def block_layout(self, width: int) -> chain_groups.GroupLayout:
        """The chains in blocks of ``width``, the blocks split into contiguous runs over the
        devices: group ``g`` is the blocks of ``devices[g]``. Fewer blocks than devices leave
        the last devices unused (no device runs only padding)."""
        return chain_groups.spread(self.num_chains, len(self.devices), width)

    def place_blocks(self, blocks: tuple, params: Any, layout: chain_groups.GroupLayout
                     ) -> tuple[tuple, tuple]:
        """Each of ``blocks`` (PyTrees, one per unit of ``layout``, a :meth:`block_layout`)
        committed to its group's device, and per block the parameters on that device (one
        copy per device). A jitted function called on committed arrays runs on their
        device."""
        placed, block_params = [], []
        for group in range(layout.num_groups):
            if not self.is_local(group):
                # another process runs these blocks: they stay as they are, never run here
                placed.extend(blocks[unit] for unit in layout.units_of(group))
                block_params.extend(params for _ in layout.units_of(group))
                continue
            device = self.devices[group]
            copy = jax.device_put(params, device)
            for unit in layout.units_of(group):
                placed.append(jax.device_put(blocks[unit], device))
                block_params.append(copy)
        return tuple(placed), tuple(block_params)

    def chain_processes(self, layout: chain_groups.GroupLayout) -> np.ndarray:
        """The process that computes each of the ``num_chains`` chains: that of the device
        holding the chain, in a :meth:`block_layout` or (``layout.block`` None) split evenly
        along the padded chain axis."""
        if layout.block is None:
            per_device = self.padded_chains // len(self.devices)
            device_of_chain = np.arange(self.num_chains) // per_device
        else:
            device_of_chain = np.empty(self.num_chains, dtype=int)
            for group in range(layout.num_groups):
                units = layout.units_of(group)
                device_of_chain[units.start * layout.block:units.stop * layout.block] = group
        return np.array([self.devices[d].process_index for d in device_of_chain])

    def gather(self, tree: Any, layout: chain_groups.GroupLayout) -> Any:
        """A PyTree of NumPy arrays of dims (chain, ...) in which this process filled its own
        chains, completed in place with every other process's (an all-gather): each process
        then holds every chain. Every process must call it."""
        owners = self.chain_processes(layout)
        leaves, treedef = jax.tree_util.tree_flatten(tree)
        processes = range(jax.process_count())
        chains = [np.flatnonzero(owners == p) for p in processes]
        # process_allgather takes arrays of one shape from every process: each sends its
        # chains padded to the largest share
        width = max(1, *(len(c) for c in chains))
        mine = chains[jax.process_index()]
        local = []
        for leaf in leaves:
            part = np.zeros((width, *leaf.shape[1:]), leaf.dtype)
            part[:len(mine)] = leaf[mine]
            local.append(part)
        gathered = multihost_utils.process_allgather(local)
        for leaf, parts in zip(leaves, gathered, strict=True):
            for p in processes:
                leaf[chains[p]] = parts[p, :len(chains[p])]
        return treedef.unflatten(leaves)


def from_first_process(value: Any) -> Any:
    """``value`` (NumPy scalars or arrays, the same shapes on every process) as process 0
    holds it, on every process: the decisions taken on the host from timings (how many
    draws a call runs) are then the same everywhere, so the processes call their programs
    in step."""
    if jax.process_count() == 1:
        return value
    return multihost_utils.broadcast_one_to_all(value)


def local_chains(leaf: Any, num_chains: int) -> np.ndarray:
    """The values of dims (draw, chain, ...) that this process holds of the first
    ``num_chains`` chains of ``leaf``: all of them, or for an array split over several
    processes' devices the chains of its own (for the progress bar)."""
    if not isinstance(leaf, jax.Array) or leaf.is_fully_addressable:
        return np.asarray(leaf)[:, :num_chains]
    # one shard per start: a replicated leaf has a whole copy on each local device
    shards = {shard.index[1].start or 0: shard for shard in leaf.addressable_shards}
    parts = [np.asarray(shards[first].data)[:, :max(0, num_chains - first)]
             for first in sorted(shards)]
    return np.concatenate(parts, axis=1)


def global_array(leaf: Any, sharding: NamedSharding) -> jax.Array:
    """One array that every process holds whole, as a global array of ``sharding``: each
    process places the slices of its own devices. Typed PRNG keys stay keys."""
    if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
        data = global_array(jax.random.key_data(leaf), sharding)
        return jax.random.wrap_key_data(data, impl=jax.random.key_impl(leaf))
    host = np.asarray(leaf)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def host_array(array: Any) -> np.ndarray:
    """``array`` whole as a NumPy array, on every process: gathered from the other processes
    where some of its slices are theirs (every process must then call it), as is otherwise."""
    if (isinstance(array, jax.Array) and not array.is_fully_addressable
            and not array.is_fully_replicated):
        return np.asarray(multihost_utils.process_allgather(array, tiled=True))
    return np.asarray(array)


def placement(devices: Any, num_chains: int) -> ChainPlacement | None:
    """The placement of ``un.sample``'s chains for its ``devices`` argument, or None for a
    single device (the single-device path, with the CPU's chain groups)."""
    checked = require_local(check_devices(devices))
    if len(checked) == 1:
        return None
    return ChainPlacement(checked, num_chains)
