"""Chain blocks: chains computed in blocks of a fixed width, so that a chain's arithmetic does not
depend on how many chains run beside it.

XLA compiles a vectorized (``vmap``) computation for the size of its batch, and on the CPU it
picks the vectorization of a loop, the order of a reduction's sums or the algorithm of a batched
product by that size: the same chain computed in a batch of 2 and in a batch of 8 can differ in
the last bits of a log-density or of a gradient. A Metropolis decision on a knife edge, or the
step-size adaptation, which feeds every acceptance probability back into the step size, then
turns one rounding into different draws. ``un.sample`` therefore runs the chains of a
gradient-based kernel on the CPU in blocks of a fixed width ``W`` (the kernel's
``chain_block``): chain ``c`` is lane ``c mod W`` of block ``c // W``, the last block padded with
copies of the last chain, and every block is one call of the same compiled program of ``W``
chains, for its start and for each chunk of steps (:mod:`unnorm.samplers.run`).
Whatever the number of chains, their grouping over cores (a group runs its blocks one after
the other) or the chains in the block's other lanes, chain ``c`` is computed by the same
executable, in the same lane, from the same inputs; lanes never exchange values (no step
reduces over chains), so its draws are identical bit for bit. One compilation also serves every
number of chains.

The width trades the loop's fixed cost per block and step against the padding of runs of few
chains (benchmarks/README.md): NUTS and HMC, whose vectorized trajectories wait for their
longest lane, take narrow blocks; the Langevin kernels, whose steps are a few vector operations
per chain, wider ones. Gradient-free kernels (random-walk Metropolis, Gibbs), chains sharded
over several devices and accelerators keep one vectorized computation per group.

Example
-------
>>> from unnorm.samplers import build_sampler, chain_blocks, chain_groups
>>> width = chain_blocks.block_width(build_sampler("nuts", num_warmup=10))
>>> layout = chain_groups.choose_layout(5, "parallel", cores=2, block=width)
>>> [list(layout.units_of(g)) for g in range(layout.num_groups)]
[[0, 1], [2]]
"""

from __future__ import annotations

import jax

__all__ = ["TRAJECTORY_BLOCK", "LOCAL_BLOCK", "block_width"]

#: The block width of NUTS and HMC: lanes of a vectorized trajectory wait for the longest one
#: (its loop runs until every lane's tree or path is done), so narrow blocks waste the least;
#: two keep the default 4 chains in two blocks, one per core of a 2-core CPU.
TRAJECTORY_BLOCK = 2

#: The block width of MALA, ULA and annealed Langevin: each step is a few vector operations per
#: chain, so a block must hold enough chains for the loop's cost per block to be small beside
#: their arithmetic, at the price of padding lanes in runs of fewer chains
#: (benchmarks/README.md).
LOCAL_BLOCK = 32


def block_width(kernel) -> int | None:
    """The block width ``un.sample`` runs ``kernel``'s chains in: the kernel's ``chain_block``
    on the CPU backend; None (every group one vectorized computation) on accelerators, which
    run one vectorized computation over all chains in parallel."""
    return kernel.chain_block if jax.default_backend() == "cpu" else None
