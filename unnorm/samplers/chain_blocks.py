"""Chain blocks: chains computed in blocks of a fixed width, so that a chain's arithmetic does not
depend on how many chains run beside it.

XLA compiles a vectorized (``vmap``) computation for the size of its batch, and on the CPU it
picks the vectorization of a loop, the order of a reduction's sums or the algorithm of a batched
product by that size: the same chain computed in a batch of 2 and in a batch of 8 can differ in
the last bits of a log-density or of a gradient. A Metropolis decision on a knife edge, or the
step-size adaptation, which feeds every acceptance probability back into the step size, then
turns one rounding into different draws. ``un.sample`` therefore runs the chains of NUTS and
HMC (and of parallel tempering over them) on the CPU in blocks of a fixed width ``W`` (the
kernel's ``chain_block``): chain ``c`` is lane ``c mod W`` of block ``c // W``, the last block
padded with copies of the last chain, and every block is one call of the same compiled program
of ``W`` chains, for its start and for each chunk of steps (:mod:`unnorm.samplers.run`).
Whatever the number of chains, their grouping over cores (a group runs its blocks one after
the other), the CPU devices they are split over (each block runs on its device, compiled there
from the same program: :mod:`unnorm.samplers.devices`) or the chains in the block's other
lanes, chain ``c`` is computed by the same code, in the same lane, from the same inputs;
lanes never exchange values (no step reduces over chains), so its draws are identical bit for
bit. The identity rests on one
compiled program giving the same bits for the same inputs (the same jaxlib, CPU and
``XLA_FLAGS``), not on how XLA vectorizes a batch. One compilation (one per device) also
serves every number of chains.

NUTS and HMC take narrow blocks (``W = 2``): their vectorized trajectories wait for the longest
lane, so blocks of few chains lose little against one vectorized group. The Langevin kernels
(MALA, ULA, annealed Langevin, and tempering over them) run without blocks by default, each
group one vectorized computation: a block pays a fixed cost per call of each of its fused
operations, which for these few vector operations per chain is that of several lanes'
arithmetic, so that narrow blocks multiply the cost of many chains and wide ones compute
padding lanes for few chains; no width kept both within a third of the unblocked cost
(benchmarks/README.md, which also records a padding of every group to a multiple of 16 chains
in one call, tried instead). Unblocked, their chains agree across chain counts and groupings
only as far as XLA rounds batches of those sizes alike, which it does for some models and not
for others (a dense Gaussian's gradient rounded differently in batches of 2 and 8 chains). A
user who needs the identity asks for it with the sampler option ``chain_block=W``
(``un.sample(..., sampler="mala", chain_block=8)``; tempering passes it to its base): the
kernel's ``chain_block`` is then ``W`` and its chains run in blocks of ``W`` exactly as those of
NUTS and HMC do, on one device or several, at the cost of that width (few chains compute the
padding of a block wider than their number; many chains make one call per block).
Gradient-free kernels (random-walk Metropolis, Gibbs) and accelerators keep one vectorized
computation per group too, and on several devices one computation partitioned by XLA.

Example
-------
>>> from unnorm.samplers import build_sampler, chain_blocks, chain_groups
>>> width = chain_blocks.block_width(build_sampler("nuts", num_warmup=10))
>>> layout = chain_groups.choose_layout(5, "parallel", cores=2, block=width)
>>> [list(layout.units_of(g)) for g in range(layout.num_groups)]
[[0, 1], [2]]
>>> chain_blocks.block_width(build_sampler("mala", num_warmup=10)) is None
True
>>> chain_blocks.block_width(build_sampler("mala", num_warmup=10, chain_block=8))
8
"""

from __future__ import annotations

import jax

__all__ = ["TRAJECTORY_BLOCK", "block_width"]

#: The block width of NUTS and HMC: lanes of a vectorized trajectory wait for the longest one
#: (its loop runs until every lane's tree or path is done), so narrow blocks waste the least;
#: two keep the default 4 chains in two blocks, one per core of a 2-core CPU.
TRAJECTORY_BLOCK = 2


def block_width(kernel) -> int | None:
    """The block width ``un.sample`` runs ``kernel``'s chains in: the kernel's ``chain_block``
    (NUTS's and HMC's own, or the Langevin kernels' ``chain_block`` option) on the CPU backend;
    None (every group one vectorized computation) on accelerators, which run one vectorized
    computation over all chains in parallel, whatever the option."""
    return kernel.chain_block if jax.default_backend() == "cpu" else None
