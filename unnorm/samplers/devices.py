"""The chains of ``un.sample`` placed over several devices with ``jax.sharding``.

A run over ``n`` devices builds a one-dimensional :class:`jax.sharding.Mesh` whose axis is named
``"chains"``. Every array with a leading chain axis (the kernels' states, the per-chain keys)
is placed with ``NamedSharding(mesh, P("chains"))``: each device holds ``num_chains / n``
chains. The parameters are replicated (``P()``). The compiled chunks are the same jitted
functions as on one device; XLA's SPMD partitioner (GSPMD, Xu et al. 2021) splits them along
the chain axis, which no step couples, so each device advances its own chains and the draw
buffers come out split the same way.

When ``num_chains`` is not a multiple of ``n``, the chain axis is padded with copies of the last
chain (as the CPU's chain groups are) and the padding's draws are dropped on the host. A
chain's keys are ``fold_in(key, c)`` and its steps' ``fold_in(chain_key, t)``, whatever the
device count, so its draws are those of a single-device run (up to the rounding of batched
products in gradient-based kernels, as for the chain groups).

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
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

__all__ = ["CHAIN_AXIS", "ChainPlacement", "check_devices", "placement"]

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

    def chains(self, tree: Any) -> Any:
        """A PyTree whose leaves have a leading chain axis, padded (copies of the last chain)
        and split over the devices along that axis."""
        extra = self.padded_chains - self.num_chains
        if extra:
            index = np.minimum(np.arange(self.padded_chains), self.num_chains - 1)
            tree = jax.tree_util.tree_map(lambda leaf: leaf[index], tree)
        return jax.device_put(tree, NamedSharding(self.mesh, P(CHAIN_AXIS)))

    def replicated(self, tree: Any) -> Any:
        """A PyTree copied whole onto every device (the parameters)."""
        return jax.device_put(tree, NamedSharding(self.mesh, P()))


def placement(devices: Any, num_chains: int) -> ChainPlacement | None:
    """The placement of ``un.sample``'s chains for its ``devices`` argument, or None for a
    single device (the single-device path, with the CPU's chain groups)."""
    checked = check_devices(devices)
    if len(checked) == 1:
        return None
    return ChainPlacement(checked, num_chains)
