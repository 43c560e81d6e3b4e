"""XLA compile options for unnorm's own training loops (per compilation, never process-wide).

On the CPU, XLA hands dot products and the elementwise work around them to YNNPACK fusions by
default. For the fit driver's training steps on small networks, batch 256, these ran slower
than XLA's own loop emitters: with them off, a denoising score matching step of a 2-layer MLP
took 0.97-1.26 ms against 1.40-1.73 ms at d = 2, 1.71-1.80 against 2.08-2.09 at d = 32 and
2.42-2.59 against 3.36-3.60 at d = 256 (benchmarks/README.md). The option is experimental in
XLA, so it is used only when the installed jaxlib accepts it, and only on the CPU backend;
elsewhere nothing is changed.
"""

from __future__ import annotations

import functools

import jax

__all__ = ["training_compiler_options"]

_CPU_TRAINING_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": ""}


@functools.cache
def training_compiler_options() -> dict[str, str]:
    """The options the fit driver compiles its training chunks with: ``{}`` off the CPU or
    when this jaxlib does not know the option (it then raises "No such compile option")."""
    if jax.default_backend() != "cpu":
        return {}
    try:
        jax.jit(lambda x: x + 1.0, compiler_options=_CPU_TRAINING_OPTIONS)(1.0)
    except Exception:  # noqa: BLE001 - any rejection means: compile with XLA's defaults
        return {}
    return dict(_CPU_TRAINING_OPTIONS)
