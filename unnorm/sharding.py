"""The data rows of ``un.fit`` placed over several devices with ``jax.sharding``.

A fit over ``d`` devices builds a one-dimensional :class:`jax.sharding.Mesh` whose axis is
named ``"data"`` and places the observations with ``NamedSharding(mesh, P("data"))``: each
device holds a contiguous slice of the rows. The parameters, the estimator's state and the
keys are small and replicated. Two kinds of computation then run where the rows live:

* the full-data passes (:func:`unnorm.solvers.derivatives`: the closed form's sums, Newton's
  steps and the sandwich's ``H`` and ``J``) run under ``jax.shard_map``: each device sums the
  value, gradient, Hessian and gradient outer products of its own rows, in the same blocks as
  on one device, and ``psum`` adds the devices' sums;
* the full-batch optimizer steps are the driver's own compiled chunk called on the sharded
  rows: XLA's SPMD partitioner (GSPMD, Xu et al. 2021) splits the loss's mean over the rows
  and adds the partial sums of its gradient, so each device differentiates its own rows.

The persistent chains of the chain-based estimators (PCD's and MLE's :class:`ChainState`) are
placed on the same mesh, along their chain axis (:func:`split_chains`), when their number is a
multiple of the device count and, on CPU devices, each device would get at least
:data:`MIN_CPU_CHAINS_PER_DEVICE` of them (:func:`chains_worth_splitting`); the compiled chunk
keeps them there (:func:`placed_jit`): each device advances its own chains, and only the means
over chains that the loss takes cross devices. A chain's keys are split from the step's key by
its index, so its draws do not depend on the device count. Other chain counts stay
replicated: every device then runs every chain (padding copies would change the means over
chains that the loss and the step-size control take; and CPU devices advance a few chains
each in less time than the all-reduce of their means that a split adds to every step).

When the row count ``n`` is not a multiple of ``d``, the rows are padded to the next multiple
with copies of the last observation (a padding row that is an observation keeps every energy
finite); the full-data passes give the padding weight 0, and the optimizer's chunk drops it
(``data[:n]``) before its loss. Every row keeps its global index, on which estimators key
their per-observation noise, so a sharded fit computes the same objective as a single-device
one, up to the order of floating-point sums.

Several processes (``jax.distributed.initialize``) hold the rows of one global ``jax.Array``
between them; such an array is used where it lives, its row count a multiple of the device
count as JAX requires of an evenly sharded array. What the driver reads on the host (its
argument checks, the starting values, the post-fit sampling stages of the chain-based
estimators) reads a copy of the rows gathered to every process, so that every process makes
the same decisions and returns the same result.

Example
-------
>>> import jax, numpy as np
>>> rows = place_rows(np.zeros((5, 2)), tuple(jax.devices()[:1]), np.float32)
>>> rows.shape, rows.array.shape
((5, 2), (5, 2))
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from .samplers.devices import check_devices, global_array, host_array, require_local

__all__ = ["ROW_AXIS", "MIN_CPU_CHAINS_PER_DEVICE", "RowShards", "FitDevices",
           "choose_devices", "place_rows", "global_rows", "sum_over_rows", "replicated_jit",
           "chains_worth_splitting", "split_chains", "placed_jit", "uncommitted"]

#: the mesh axis the data rows are split along
ROW_AXIS = "data"

#: The fewest persistent chains each CPU device must get for :func:`split_chains` to split
#: them. Split chains make every step's means over the chains (the loss's, the step-size
#: control's) an all-reduce between the devices; CPU host devices share the host's cores, so
#: splitting saves only the replicated copies' arithmetic, which pays for that exchange only
#: when each device holds many chains (the crossover measured in benchmarks/README.md, "PCD's
#: persistent chains on two CPU host devices"). Read at every call, so that a test may lower
#: it to exercise the split path with a few chains.
MIN_CPU_CHAINS_PER_DEVICE = 128


class RowShards:
    """``num_rows`` observations split over the devices of ``array``'s mesh along its first
    axis, ``array`` holding them padded to a multiple of the device count.

    It answers ``shape``, ``dtype`` and ``len`` as the unpadded data would, and converts to a
    NumPy array of those rows (gathered from every process), so that the driver's messages
    read it as data."""

    __slots__ = ("array", "num_rows")

    def __init__(self, array: jax.Array, num_rows: int):
        self.array = array
        self.num_rows = int(num_rows)

    @property
    def mesh(self) -> Mesh:
        return self.array.sharding.mesh

    @property
    def shape(self) -> tuple:
        return (self.num_rows, *self.array.shape[1:])

    @property
    def dtype(self):
        return self.array.dtype

    @property
    def padded(self) -> bool:
        return self.array.shape[0] != self.num_rows

    def __len__(self) -> int:
        return self.num_rows

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        rows = host_array(self.array)[: self.num_rows]
        return rows if dtype is None else rows.astype(dtype)


class FitDevices(NamedTuple):
    """The devices ``un.fit`` runs on: ``devices`` (one, or the mesh's), and ``spanning``,
    the user's global array when its rows belong to several processes (else None)."""

    devices: tuple
    spanning: jax.Array | None = None

    @property
    def sharded(self) -> bool:
        return len(self.devices) > 1


def _row_mesh_devices(array: jax.Array) -> tuple:
    """The devices of a global array sharded over its rows along a 1-D mesh, in mesh order;
    ValueError naming ``data`` for any other layout."""
    sharding = array.sharding
    spec = getattr(sharding, "spec", None)
    mesh = getattr(sharding, "mesh", None)
    if (not isinstance(sharding, NamedSharding) or len(mesh.axis_names) != 1
            or not spec or spec[0] != mesh.axis_names[0]
            or any(axis is not None for axis in spec[1:])):
        raise ValueError(
            "data spanning several processes must be a jax.Array split over its rows along a "
            "one-dimensional mesh, as jax.make_array_from_process_local_data("
            "NamedSharding(Mesh(jax.devices(), ('data',)), P('data')), local_rows) builds it; "
            f"got an array of shape {array.shape} with sharding {sharding}.")
    return tuple(mesh.devices.reshape(-1))


def choose_devices(devices: Any, data: Any) -> FitDevices:
    """``un.fit``'s ``devices`` argument checked (as ``un.sample``'s) and matched with the
    data: a ``jax.Array`` whose rows belong to several processes is used on its own devices,
    which ``devices`` may only name again."""
    if isinstance(data, jax.Array) and not data.is_fully_addressable:
        own = _row_mesh_devices(data)
        if devices is not None and set(check_devices(devices)) != set(own):
            raise ValueError(
                "devices must be None or the devices of data when data spans several "
                f"processes (its {len(own)} device(s) hold its rows where they are); got "
                f"{devices!r}.")
        return FitDevices(own, data)
    return FitDevices(require_local(check_devices(devices)))


def place_rows(data: Any, devices: tuple, dtype) -> RowShards:
    """The rows of host ``data`` in ``dtype``, padded with copies of the last row to a multiple
    of ``len(devices)`` and split over them along a 1-D mesh."""
    rows = np.asarray(data, dtype=dtype)
    n = rows.shape[0]
    padded = -(-n // len(devices)) * len(devices)
    if padded != n:
        rows = rows[np.minimum(np.arange(padded), n - 1)]
    mesh = Mesh(np.array(devices), (ROW_AXIS,))
    return RowShards(jax.device_put(rows, NamedSharding(mesh, P(ROW_AXIS))), n)


def global_rows(array: jax.Array, dtype) -> RowShards:
    """A global array spanning several processes, in ``dtype``, left where its rows are."""
    if array.dtype != dtype:
        array = jax.jit(lambda a: a.astype(dtype), out_shardings=array.sharding)(array)
    return RowShards(array, array.shape[0])


def sum_over_rows(local_sums, mesh: Mesh, rows: jax.Array, num_rows: int, *replicated):
    """``local_sums(local_rows, first_row, num_rows, *replicated)`` summed over the devices of
    ``mesh``: each device calls it on its own rows of ``rows`` (split along the mesh's axis,
    padded past ``num_rows``; ``first_row`` is the global index of the device's first), the
    devices' results are added with ``psum``, and the sum comes back replicated. Call inside
    ``jax.jit``, with ``mesh`` and ``num_rows`` static."""
    local_count = rows.shape[0] // mesh.devices.size

    def on_device(local, *args):
        first_row = jax.lax.axis_index(ROW_AXIS) * local_count
        sums = local_sums(local, first_row, num_rows, *args)
        return jax.lax.psum(sums, ROW_AXIS)

    # the replicated arguments (parameters, estimator state, keys) are read, never split;
    # check_vma off: estimators' scans mix them with per-device values in one carry
    mapped = jax.shard_map(on_device, mesh=mesh,
                           in_specs=(P(ROW_AXIS),) + (P(),) * len(replicated),
                           out_specs=P(), check_vma=False)
    return mapped(rows, *replicated)


@functools.lru_cache(maxsize=16)
def replicated_jit(function, mesh: Mesh, static_argnames: tuple, compiler_options=None):
    """``function`` jitted with every output replicated over ``mesh``: what a sharded call
    returns can then be read on the host by every process."""
    options = {} if compiler_options is None else {"compiler_options": dict(compiler_options)}
    return jax.jit(function, static_argnames=static_argnames,
                   out_shardings=NamedSharding(mesh, P()), **options)


def chains_worth_splitting(num_chains: int, num_devices: int, platform: str,
                           min_cpu_chains_per_device: int | None = None) -> bool:
    """Whether ``num_chains`` persistent chains are split over ``num_devices`` devices of
    ``platform`` (``jax.Device.platform``: ``"cpu"``, ``"gpu"``, ``"tpu"``, ...).

    They are when the count is a multiple of the device count (padding copies would enter the
    means over the chains) and, on the CPU, when each device gets at least
    ``min_cpu_chains_per_device`` of them (None: :data:`MIN_CPU_CHAINS_PER_DEVICE`), since
    CPU host devices share the host's cores and a split's all-reduce per step outweighs the
    arithmetic it saves on a few chains. Accelerators bring their own compute: there any
    multiple is split.

    Parameters
    ----------
    num_chains : int
        The persistent chains of the fit.
    num_devices : int
        The devices of the fit's mesh.
    platform : str
        Their platform, as ``jax.Device.platform`` names it.
    min_cpu_chains_per_device : int, optional
        The fewest chains a CPU device for a split; None reads
        :data:`MIN_CPU_CHAINS_PER_DEVICE` at the call.

    Returns
    -------
    bool
        True to split the chains along their axis, False to keep them replicated.

    Examples
    --------
    >>> chains_worth_splitting(4096, 2, "cpu"), chains_worth_splitting(64, 2, "cpu")
    (True, False)
    >>> chains_worth_splitting(64, 2, "gpu"), chains_worth_splitting(63, 2, "gpu")
    (True, False)
    """
    if num_devices < 2 or num_chains % num_devices:
        return False
    if platform != "cpu":
        return True
    minimum = (MIN_CPU_CHAINS_PER_DEVICE if min_cpu_chains_per_device is None
               else min_cpu_chains_per_device)
    return num_chains // num_devices >= minimum


def split_chains(tree: Any, mesh: Mesh) -> Any:
    """A PyTree of per-chain arrays (leading chain axis, as the chain runner's states are)
    split over ``mesh`` along that axis when :func:`chains_worth_splitting` says so for the
    chain count, the mesh's device count and platform; as it is otherwise, to be replicated.
    Leaves without the chain axis stay as they are. Over several processes each process
    places the slices of its own devices from its copy of the whole array, which every
    process computed alike (and decides alike: the counts and the platform are the same
    everywhere)."""
    leaves = jax.tree_util.tree_leaves(tree)
    if not leaves or np.ndim(leaves[0]) == 0:
        return tree
    num_chains = leaves[0].shape[0]
    if not chains_worth_splitting(num_chains, mesh.devices.size,
                                  mesh.devices.flat[0].platform):
        return tree
    split = NamedSharding(mesh, P(ROW_AXIS))
    across = any(d.process_index != jax.process_index() for d in mesh.devices.flat)

    def place(leaf):
        if np.ndim(leaf) == 0 or leaf.shape[0] != num_chains:
            return leaf
        return global_array(leaf, split) if across else jax.device_put(leaf, split)

    return jax.tree_util.tree_map(place, tree)


def _is_split(leaf: Any, mesh: Mesh) -> bool:
    sharding = getattr(leaf, "sharding", None)
    return (isinstance(sharding, NamedSharding) and sharding.mesh == mesh
            and any(axis is not None for axis in sharding.spec))


def placed_jit(function, mesh: Mesh, static_argnames: tuple, compiler_options, like: Any):
    """``function`` jitted with its outputs placed as the leaves of ``like`` (a PyTree of the
    outputs' structure) are: those split over ``mesh`` (:func:`split_chains`) stay split, the
    others are replicated. With nothing split, :func:`replicated_jit`."""
    leaves, treedef = jax.tree_util.tree_flatten(like)
    if not any(_is_split(leaf, mesh) for leaf in leaves):
        return replicated_jit(function, mesh, static_argnames, compiler_options)
    replicated = NamedSharding(mesh, P())
    shardings = tuple(leaf.sharding if _is_split(leaf, mesh) else replicated
                      for leaf in leaves)
    return _jit_placed(function, static_argnames, compiler_options, treedef, shardings)


@functools.lru_cache(maxsize=16)
def _jit_placed(function, static_argnames: tuple, compiler_options, treedef, shardings):
    options = {} if compiler_options is None else {"compiler_options": dict(compiler_options)}
    return jax.jit(function, static_argnames=static_argnames,
                   out_shardings=treedef.unflatten(shardings), **options)


def uncommitted(tree: Any) -> Any:
    """A PyTree of arrays, replicated or split over a mesh, as host-made arrays that no
    device holds yet (gathered from every process where some slices are others'): later
    computations run on JAX's default device of each process, as for a single-device fit,
    or move to whatever device set their other arguments are on. Typed PRNG keys stay keys.
    Every process must call it."""
    def local(leaf):
        if not isinstance(leaf, jax.Array):
            return leaf
        if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            data = host_array(jax.random.key_data(leaf))
            return jax.random.wrap_key_data(data, impl=jax.random.key_impl(leaf))
        return jax.numpy.asarray(host_array(leaf))

    return jax.tree_util.tree_map(local, tree)
