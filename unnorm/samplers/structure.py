"""The interaction graph of an energy on a binary or spin support, and a colouring of it.

Sites i and j *interact* when the energy difference of flipping site i depends on x_j. Sites of
one colour of a proper colouring do not interact, so given the other sites they are
conditionally independent and can be drawn together from their exact conditionals: a blocked
(chromatic) Gibbs scan, exact for any energy whose graph is right.

How the graph is found, and why it is exact
-------------------------------------------
The energy is first *certified*: its jaxpr is walked, and every operation that depends on ``x``
must be a real-analytic one (``+ - * /``, ``exp``, ``log``, ``tanh``, powers, sums, matrix
products, slicing, reshaping, indexing with indices that do not depend on ``x``, …). Then
``E(·; θ)`` is analytic on the open box between the two values, and

* sites i ≠ j interact on the support only if ``∂²E/∂x_i∂x_j`` is not identically zero on the
  box (if it is, ``E = f(x_−j) + g(x_−i)`` there and, by continuity, at the corners: the flip
  difference of i does not involve x_j);
* a non-zero analytic function vanishes only on a set of measure zero, so the Hessian at a few
  random points of the box has a non-zero (i, j) entry whenever the function is not identically
  zero — including pure higher-order terms: for ``x1 x2 x3`` the entry (1, 2) is ``x3 ≠ 0``.

The graph is the union of the non-zero (or non-finite) Hessian entries over those points, so it
can only err towards *more* edges. An energy that cannot be certified — comparisons,
``where``, ``max``/``abs``, integer casts, ``stop_gradient``, indexing by ``x``, loops, or library
functions written with them such as ``jax.nn.softplus`` — is treated as fully interacting.

If, in addition, the Hessian diagonal is zero, ``E`` is affine in each coordinate (multilinear)
and the flip difference of every site is one gradient away:
``E(x_i = b) − E(x_i = a) = (b − a) ∂E/∂x_i``.

The graph is computed at the parameter values of the call: ``un.sample`` holds θ fixed, so the
conditional independences at that θ are the ones its scan relies on (a coupling that is zero
at θ does not couple). The chains inside a fit (CD, PCD, MLE) move with θ, so their graph must
hold at every θ: :func:`training_structure` certifies the energy in ``x`` and ``θ`` together
and takes the Hessian at random parameter values as well as random points, by the same
argument (``∂²E/∂x_i∂x_j`` is then analytic in both, and zero at random ``(x, θ)`` only if it is
zero everywhere, with probability one), so that a coupling whose initial value is 0 is an
edge.
"""

from __future__ import annotations

import functools
import hashlib
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

__all__ = ["GibbsBlocks", "Structure", "certify", "greedy_coloring", "interaction_graph",
           "gibbs_structure", "training_structure"]

#: Operations that are real-analytic in every operand (where the result is finite).
_ANALYTIC = frozenset({
    "add", "add_any", "sub", "mul", "div", "neg", "exp", "exp2", "log", "log1p", "expm1",
    "tanh", "logistic", "sin", "cos", "tan", "sinh", "cosh", "asinh", "acosh", "atanh", "asin",
    "acos", "atan", "atan2", "sqrt", "rsqrt", "cbrt", "integer_pow", "pow", "square", "erf",
    "erfc", "erf_inv", "lgamma", "digamma", "dot_general", "reduce_sum", "reduce_prod", "cumsum",
    "cumprod", "cumlogsumexp", "broadcast_in_dim", "reshape", "squeeze", "expand_dims",
    "transpose", "slice", "split", "concatenate", "pad", "rev", "copy", "copy_p",
    "reduce_precision", "real", "imag", "complex", "conj",
})
#: Data movement whose listed operands (positions) may depend on x; the others are indices.
_INDEXED = {
    "gather": (0,), "dynamic_slice": (0,), "dynamic_update_slice": (0, 1),
    "scatter-add": (0, 2), "scatter_add": (0, 2), "scatter": (0, 2), "select_n": None,
}
#: Call-like primitives whose body is walked in place.
_CALLS = frozenset({"pjit", "jit", "closed_call", "core_call", "remat", "checkpoint",
                    "custom_jvp_call", "custom_vjp_call", "custom_vjp_call_jaxpr"})

#: Above this many sites ``scan="auto"`` does not look for a graph (the Hessian is d × d).
MAX_AUTO_SITES = 1024
#: Random points of the box at which the Hessian is taken.
NUM_POINTS = 3
#: Random parameter values at which the graph of a fit's chains is taken (each with the
#: ``NUM_POINTS`` points of the box): :func:`training_structure`
NUM_PARAMETER_POINTS = 3
_CHUNK = 128


class GibbsBlocks(NamedTuple):
    """A static tuning input of the blocked Gibbs kernel: the colours (tuples of flat site
    indices, together covering every site once) and whether the energy is multilinear."""

    colors: tuple[tuple[int, ...], ...]
    multilinear: bool


class Structure(NamedTuple):
    """What :func:`gibbs_structure` found. ``blocks`` is None when the energy could not be
    certified (``reason`` says why)."""

    adjacency: np.ndarray | None
    blocks: GibbsBlocks | None
    reason: str


class _NotCertified(Exception):
    pass


def _inner_jaxpr(eqn):
    for name in ("jaxpr", "call_jaxpr", "fun_jaxpr"):
        inner = eqn.params.get(name)
        if inner is not None:
            return inner
    return None


def _walk(jaxpr, depends: list[bool]) -> list[bool]:
    """Forward pass over ``jaxpr``: which variables depend on x; raise on an operation that is
    not analytic in an x-dependent operand."""
    flags: dict[Any, bool] = {}

    def dep(v) -> bool:  # literals (constants written into the jaxpr) have no dependence
        return False if type(v).__name__ == "Literal" else flags.get(v, False)

    for v, d in zip(jaxpr.invars, depends, strict=True):
        flags[v] = d
    for eqn in jaxpr.eqns:
        ins = [dep(v) for v in eqn.invars]
        name = eqn.primitive.name
        if not any(ins):
            outs = [False] * len(eqn.outvars)
        elif name in _CALLS and _inner_jaxpr(eqn) is not None:
            inner = _inner_jaxpr(eqn)
            inner = getattr(inner, "jaxpr", inner)
            if len(inner.invars) != len(ins):
                raise _NotCertified(name)
            outs = _walk(inner, ins)
        elif name in _ANALYTIC:
            outs = [True] * len(eqn.outvars)
        elif name == "convert_element_type":
            if not jnp.issubdtype(eqn.params["new_dtype"], jnp.inexact):
                raise _NotCertified(f"{name} to {eqn.params['new_dtype']}")
            outs = [True]
        elif name in _INDEXED:
            allowed = _INDEXED[name]
            if name == "select_n":  # the predicate (operand 0) must not depend on x
                allowed = tuple(range(1, len(ins)))
            if any(d and i not in allowed for i, d in enumerate(ins)):
                raise _NotCertified(f"{name} with indices or a predicate that depend on x")
            outs = [True] * len(eqn.outvars)
        else:
            raise _NotCertified(name)
        for v, d in zip(eqn.outvars, outs, strict=True):
            flags[v] = d
    return [dep(v) for v in jaxpr.outvars]


def certify(fn: Callable[[jax.Array], jax.Array], example: jax.Array) -> str:
    """``""`` when every operation of ``fn`` that depends on its argument is real-analytic;
    otherwise the name of the first one that is not."""
    closed = jax.make_jaxpr(fn)(example)
    try:
        _walk(closed.jaxpr, [True])
    except _NotCertified as err:
        return str(err)
    return ""


def greedy_coloring(adjacency: np.ndarray) -> tuple[tuple[int, ...], ...]:
    """A proper colouring of the graph (Welsh–Powell: largest degree first, each site takes
    the smallest colour none of its neighbours has). Colours are tuples of sorted sites."""
    adjacency = np.asarray(adjacency, dtype=bool)
    d = adjacency.shape[0]
    neighbours = [np.flatnonzero(adjacency[i]) for i in range(d)]
    order = sorted(range(d), key=lambda i: (-len(neighbours[i]), i))
    color = np.full(d, -1)
    for i in order:
        taken = set(color[neighbours[i]].tolist())
        c = 0
        while c in taken:
            c += 1
        color[i] = c
    return tuple(tuple(np.flatnonzero(color == c).tolist()) for c in range(color.max() + 1))


def _points(shape, values, num_points: int) -> np.ndarray:
    """Random points strictly inside the box between the two values (fixed seed)."""
    low, high = values
    rng = np.random.default_rng(20240611)
    u = rng.uniform(0.05, 0.95, size=(num_points, *shape))
    return low + (high - low) * u


@functools.partial(jax.jit, static_argnums=0)
def _hessian_chunk(energy: Callable, params, points, columns):
    """For the given columns: any(H[:, c] != 0 or non-finite) over the points, and the diagonal
    entries H[c, c] != 0 (or non-finite), H the Hessian of the flattened energy."""
    shape = points.shape[1:]
    size = math.prod(shape)

    def flat_grad(flat):
        return jax.grad(lambda z: energy(params, z.reshape(shape)))(flat)

    def one_point(x):
        flat = x.reshape(size)

        def column(c):
            tangent = jnp.zeros(size, flat.dtype).at[c].set(1.0)
            return jax.jvp(flat_grad, (flat,), (tangent,))[1]

        cols = jax.vmap(column)(columns)  # (chunk, size): H[:, c] for each c (H symmetric)
        return (cols != 0) | ~jnp.isfinite(cols)

    hits = jax.lax.map(one_point, points)
    return jnp.any(hits, axis=0)


def interaction_graph(energy: Callable, params, shape, values, num_points: int = NUM_POINTS,
                      max_density: float = 1.0) -> tuple[np.ndarray, bool] | None:
    """Adjacency (d × d, no self loops) and multilinearity of ``x -> energy(params, x)``, an
    energy whose x-dependent operations are analytic (see :func:`certify`). ``energy`` is
    hashable (compiled code is reused across calls with other ``params``). ``None`` when more
    than ``max_density`` of the pairs seen in the first chunk of columns interact."""
    size = math.prod(shape)
    points = jnp.asarray(_points(shape, values, num_points), dtype=jnp.result_type(float))
    chunk = min(size, _CHUNK)
    nonzero = np.zeros((size, size), dtype=bool)
    for start in range(0, size, chunk):
        columns = np.minimum(np.arange(start, start + chunk), size - 1)
        # (chunk, size): the columns' non-zero pattern
        block = np.asarray(_hessian_chunk(energy, params, points, jnp.asarray(columns)))
        nonzero[columns] |= block
        if start == 0 and size > chunk and max_density < 1.0:
            off = block.sum() - np.count_nonzero(block[np.arange(chunk), columns])
            if off > max_density * chunk * (size - 1):
                return None
    nonzero |= nonzero.T
    multilinear = not nonzero.diagonal().any()
    np.fill_diagonal(nonzero, False)
    return nonzero, multilinear


def _params_digest(params) -> str:
    digest = hashlib.sha1()
    for leaf in jax.tree_util.tree_leaves(params):
        arr = np.asarray(leaf)
        digest.update(f"{arr.shape}{arr.dtype}".encode())
        digest.update(np.ascontiguousarray(arr).tobytes())
    digest.update(str(jax.tree_util.tree_structure(params)).encode())
    return digest.hexdigest()


def gibbs_structure(model, params, scan: str) -> Structure:
    """The interaction graph and colouring of ``model`` at ``params`` (cached per model and
    parameter values). ``scan="auto"`` gives up early on large or dense graphs."""
    return _cached_structure(model, _params_digest(params), scan == "auto",
                             _Frozen(params))


class _Frozen:
    """Carries params through the cache without being part of its key."""

    def __init__(self, value):
        self.value = value

    def __hash__(self):
        return 0

    def __eq__(self, other):
        return isinstance(other, _Frozen)


@functools.lru_cache(maxsize=64)
def _cached_structure(model, digest: str, auto: bool, frozen: _Frozen) -> Structure:
    params = frozen.value
    support = model.support
    example = jnp.full(support.event_shape, support.values[1], dtype=jnp.result_type(float))
    reason = certify(lambda x: model.energy(params, x), example)
    if reason:
        return Structure(None, None, f"the energy uses {reason}")
    if auto and support.size > MAX_AUTO_SITES:
        return Structure(None, None, f"more than {MAX_AUTO_SITES} sites")
    found = interaction_graph(model.energy, params, support.event_shape, support.values,
                              max_density=0.5 if auto else 1.0)
    if found is None:
        return Structure(None, None, "the graph is dense")
    adjacency, multilinear = found
    return Structure(adjacency, GibbsBlocks(greedy_coloring(adjacency), multilinear), "")


def training_structure(model) -> Structure:
    """The interaction graph and colouring of ``model`` at every value of its parameters: the
    graph the chains inside a fit may rely on (CD, PCD and MLE's first stage), whose θ moves at
    every optimizer step. Cached per model.

    The energy is certified as a function of ``x`` and of the flattened constrained parameters
    together (:func:`certify`: every operation that depends on either is real-analytic), so
    that each ``∂²E/∂x_i∂x_j`` is analytic on the box times the parameters' open domain. The
    graph is the union of the Hessian's non-zero (or non-finite) entries at the box's random
    points for ``NUM_PARAMETER_POINTS`` random parameter values: the unconstrained initial
    values plus standard normal noise, mapped to the constrained space. An entry zero at all of
    them is identically zero, with probability one, whatever θ: a coupling whose initial value
    is 0 is an edge. ``blocks`` is None where the energy cannot be certified, the support has
    more than ``MAX_AUTO_SITES`` sites, the graph is dense, or it needs a colour per site (the
    blocked scan is then the sequential one).

    Examples
    --------
    >>> import unnorm as un
    >>> from unnorm.samplers import structure
    >>> chain = un.models.ising_chain(6, coupling=0.0)  # an initial coupling of 0 still couples
    >>> structure.training_structure(chain).blocks.colors
    ((1, 3, 5), (0, 2, 4))
    """
    return _cached_training_structure(model)


@functools.lru_cache(maxsize=64)
def _cached_training_structure(model) -> Structure:
    support = model.support
    size = support.size
    if size > MAX_AUTO_SITES:
        return Structure(None, None, f"more than {MAX_AUTO_SITES} sites")
    flat_params, unravel = ravel_pytree(model.params)
    if not jnp.issubdtype(flat_params.dtype, jnp.inexact):
        return Structure(None, None, "parameters that are not floating point")
    dtype = jnp.result_type(float)
    shape = support.event_shape

    def joint_energy(z):
        return model.energy(unravel(z[size:]), z[:size].reshape(shape))

    example = jnp.concatenate([jnp.full(size, support.values[1], dtype),
                               flat_params.astype(dtype)])
    reason = certify(joint_energy, example)
    if reason:
        return Structure(None, None, f"the energy uses {reason}")
    flat_u, unravel_u = ravel_pytree(model.to_unconstrained(model.params))
    rng = np.random.default_rng(20240612)
    adjacency = np.zeros((size, size), dtype=bool)
    multilinear = True
    for _ in range(NUM_PARAMETER_POINTS):
        noise = rng.standard_normal(flat_u.shape)
        params = model.to_constrained(unravel_u(flat_u + jnp.asarray(noise, flat_u.dtype)))
        found = interaction_graph(model.energy, params, shape, support.values,
                                  max_density=0.5)
        if found is None:
            return Structure(None, None, "the graph is dense")
        adjacency |= found[0]
        multilinear &= found[1]
    colors = greedy_coloring(adjacency)
    if len(colors) == size:
        return Structure(adjacency, None, "every site needs a colour of its own")
    return Structure(adjacency, GibbsBlocks(colors, multilinear), "")
