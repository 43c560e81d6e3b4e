"""JAX's default generator, Threefry-2x32, with its 20 rounds unrolled, for the inner loops.

The samplers draw a key per chain and step (``fold_in``) and a few random numbers from it; the
fit driver draws a minibatch and the estimators' noise at every step. On the CPU, JAX lowers
the Threefry hash as a loop of five steps of four rounds: inside a sampler's own loop that
inner loop ran several separately launched XLA kernels per step, more than the arithmetic of a
Gibbs sweep, a DSM training step of a small MLP ran four such loops, and jaxlib 0.12 compiles
the loop more slowly than the straight-line hash, in every program that draws
(benchmarks/README.md). This module evaluates the same hash (Salmon et al. 2011,
"Parallel random numbers: as easy as 1, 2, 3", Threefry-2x32 with 20 rounds) as straight-line
array code, which XLA compiles as a kernel or two of its own in the caller's program.

Its outputs equal ``jax.random``'s bit for bit, in both of JAX's counter layouts
(``jax.threefry_partitionable``), so every draw is what ``jax.random`` would
give (tests/test_threefry.py checks this on every JAX version the CI runs). Keys of another
generator (``jax.random.key(0, impl="rbg")``), legacy ``uint32[2]`` keys and float64 draws go to
``jax.random`` itself, and so does every draw off the CPU backend: on a GPU, JAX's own lowering
of the hash is already straight-line code.

Examples
--------
>>> import jax, numpy as np
>>> from unnorm import threefry
>>> key = jax.random.key(0)
>>> bool(np.array_equal(jax.random.key_data(threefry.fold_in(key, 3)),
...                     jax.random.key_data(jax.random.fold_in(key, 3))))
True
>>> bool(np.array_equal(threefry.uniform(key, (5,)), jax.random.uniform(key, (5,))))
True
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["fold_in", "split", "uniform", "normal", "randint", "bernoulli", "rademacher"]

# The rotation constants of Threefry-2x32 (Salmon et al. 2011, table 4), four rounds each,
# alternating, and the key-schedule parity constant.
_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))
_PARITY = np.uint32(0x1BD11BDA)


def _rotate_left(word: jax.Array, distance: int) -> jax.Array:
    return jax.lax.bitwise_or(jax.lax.shift_left(word, np.uint32(distance)),
                              jax.lax.shift_right_logical(word, np.uint32(32 - distance)))


@jax.jit
def _hash_2x32(key_words: jax.Array, x0: jax.Array, x1: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Threefry-2x32 (20 rounds) of the counter pairs ``(x0, x1)`` under the key
    ``key_words`` (two uint32 words): five groups of four mix rounds, each group followed by a
    key injection.

    Jitted, so that its hundred-odd operations are traced once per shape: code that draws is
    traced under vmaps over chains and derivatives of losses with per-row noise, and each of
    its traces then binds one call, whose vmapped and differentiated forms JAX also keeps,
    instead of tracing every operation again.

    The hash is fenced off from the code around it (``jax.lax.optimization_barrier`` on its
    inputs and outputs): XLA then compiles it as kernels of its own, computed once, rather
    than fusing its operations into each consumer of the draws (a derivative pass over
    per-row noise has many) and compiling them again in every such fusion. The draws are
    the same; the compile times are in benchmarks/README.md ("Threefry behind a barrier")."""
    add, xor = jax.lax.add, jax.lax.bitwise_xor
    key_words, x0, x1 = jax.lax.optimization_barrier((key_words, x0, x1))
    k0, k1 = key_words[0], key_words[1]
    schedule = (k0, k1, xor(xor(k0, k1), _PARITY))
    x0 = add(x0, schedule[0])
    x1 = add(x1, schedule[1])
    for group in range(5):
        for distance in _ROTATIONS[group % 2]:
            x0 = add(x0, x1)
            x1 = xor(_rotate_left(x1, distance), x0)
        x0 = add(x0, schedule[(group + 1) % 3])
        x1 = add(add(x1, schedule[(group + 2) % 3]), np.uint32(group + 1))
    return jax.lax.optimization_barrier((x0, x1))


def _unrolled(key) -> bool:
    """Whether this module hashes ``key`` itself: a typed Threefry key on the CPU backend.

    Legacy ``uint32[2]`` keys and other generators go to jax.random, and so does every key on an
    accelerator: there JAX already lowers the hash as straight-line code (or, by its
    ``jax_threefry_gpu_kernel_lowering`` option, as one fused kernel), so the loop this module
    avoids does not arise and the draws are the same either way."""
    return (jax.default_backend() == "cpu"
            and jnp.issubdtype(key.dtype, jax.dtypes.prng_key)
            and str(jax.random.key_impl(key)) == "threefry2x32")


def fold_in(key, data) -> jax.Array:
    """``jax.random.fold_in(key, data)``, bit for bit: the key's hash of the counter pair
    ``(0, data)`` (``data`` a non-negative integer below 2^32)."""
    if not _unrolled(key):
        return jax.random.fold_in(key, data)
    words = jax.random.key_data(key)
    y0, y1 = _hash_2x32(words, jnp.zeros((), jnp.uint32), jnp.asarray(data, jnp.uint32))
    return jax.random.wrap_key_data(jnp.stack([y0, y1]), impl="threefry2x32")


def split(key, num: int = 2) -> jax.Array:
    """``jax.random.split(key, num)``, bit for bit, in JAX's current counter layout."""
    if not _unrolled(key):
        return jax.random.split(key, num)
    words = jax.random.key_data(key)
    if jax.config.jax_threefry_partitionable:
        data = jnp.stack(_partitionable_hash(words, num), axis=1)
    else:
        data = _classic_bits(words, 2 * num).reshape(num, 2)
    return jax.random.wrap_key_data(data, impl="threefry2x32")


def _partitionable_hash(words: jax.Array, size: int) -> tuple[jax.Array, jax.Array]:
    """The partitionable layout: one hash per index, of the counters (high, low) of the index
    (high = 0 below 2^32)."""
    return _hash_2x32(words, jnp.zeros(size, jnp.uint32), jnp.arange(size, dtype=jnp.uint32))


def _classic_bits(words: jax.Array, size: int) -> jax.Array:
    """The classic layout: counters 0..size-1 (an odd count padded with one 0) split into two
    halves, hashed pairwise; both outputs kept."""
    half = (size + 1) // 2
    count = jnp.concatenate([jnp.arange(size, dtype=jnp.uint32),
                             jnp.zeros(2 * half - size, jnp.uint32)])
    y0, y1 = _hash_2x32(words, count[:half], count[half:])
    return jnp.concatenate([y0, y1])[:size]


def _bits_32(key, size: int, partitionable: bool) -> jax.Array:
    """``size`` uniform uint32 words, in JAX's partitionable or classic counter layout."""
    words = jax.random.key_data(key)
    if partitionable:
        y0, y1 = _partitionable_hash(words, size)
        return y0 ^ y1   # one word per hash: its two outputs XORed
    return _classic_bits(words, size)


def uniform(key, shape: tuple[int, ...], dtype=jnp.float32, minval=0.0, maxval=1.0, *,
            partitionable: bool | None = None) -> jax.Array:
    """``jax.random.uniform(key, shape, dtype, minval, maxval)``, bit for bit: the top 23 bits
    of each word become the mantissa of a float in [1, 2), shifted and scaled to
    ``[minval, maxval)``.

    ``partitionable`` picks the counter layout as ``jax.threefry_partitionable`` does; None
    follows JAX's current setting. The classic layout (False) hashes half as many counters.
    """
    if partitionable is None:
        partitionable = bool(jax.config.jax_threefry_partitionable)
    dtype = jnp.dtype(dtype)
    size = math.prod(shape)
    if dtype != jnp.float32 or not _unrolled(key) or size >= 2**32:
        with jax.threefry_partitionable(partitionable):
            return jax.random.uniform(key, shape, dtype, minval, maxval)
    bits = _bits_32(key, size, partitionable)
    one = np.array(1.0, np.float32).view(np.uint32)
    floats = jax.lax.bitcast_convert_type((bits >> np.uint32(9)) | one, jnp.float32) - 1.0
    minval = jnp.asarray(minval, dtype)
    maxval = jnp.asarray(maxval, dtype)
    return jnp.maximum(minval, (floats * (maxval - minval) + minval).reshape(shape))


def normal(key, shape: tuple[int, ...], dtype=jnp.float32) -> jax.Array:
    """``jax.random.normal(key, shape, dtype)``, bit for bit: ``√2 erf⁻¹(w)`` with ``w``
    uniform on ``(-1, 1)``."""
    dtype = jnp.dtype(dtype)
    if dtype != jnp.float32 or not _unrolled(key):
        return jax.random.normal(key, shape, dtype)
    low = np.nextafter(np.float32(-1.0), np.float32(0.0))
    w = uniform(key, shape, dtype, low, 1.0)
    return np.float32(np.sqrt(2.0)) * jax.lax.erf_inv(w)


def bernoulli(key, p, shape: tuple[int, ...]) -> jax.Array:
    """``jax.random.bernoulli(key, p, shape)``, bit for bit (JAX's default mode): a uniform
    draw in ``p``'s floating dtype below ``p``.

    Examples
    --------
    >>> import jax, numpy as np
    >>> from unnorm import threefry
    >>> key = jax.random.key(0)
    >>> bool(np.array_equal(threefry.bernoulli(key, 0.3, (8,)),
    ...                     jax.random.bernoulli(key, 0.3, (8,))))
    True
    """
    dtype = jnp.result_type(p)
    return uniform(key, shape, dtype) < jnp.asarray(p, dtype)


def rademacher(key, shape: tuple[int, ...], dtype) -> jax.Array:
    """``jax.random.rademacher(key, shape, dtype)``, bit for bit: ``2 b - 1`` for ``b`` a
    Bernoulli(½) draw: sliced score matching's random projections (Song & Kingma 2021,
    eq. 15-17) with ``projection="rademacher"``.

    Examples
    --------
    >>> import jax, jax.numpy as jnp, numpy as np
    >>> from unnorm import threefry
    >>> key = jax.random.key(0)
    >>> signs = threefry.rademacher(key, (2, 3), jnp.float32)
    >>> bool(np.array_equal(signs, jax.random.rademacher(key, (2, 3), jnp.float32)))
    True
    >>> sorted(set(np.asarray(signs).ravel().tolist())) in ([-1.0, 1.0], [-1.0], [1.0])
    True
    """
    # the Python 2 and 1 are weakly typed: the result stays in dtype
    return 2 * bernoulli(key, 0.5, shape).astype(dtype) - 1


def randint(key, shape: tuple[int, ...], minval: int, maxval: int) -> jax.Array:
    """``jax.random.randint(key, shape, minval, maxval)`` (int32), bit for bit: 64 random bits
    per value, reduced modulo the span ``maxval - minval`` as JAX does."""
    bounded = (isinstance(minval, int) and isinstance(maxval, int)
               and -(2**31) <= minval < maxval < 2**31)
    if not bounded or not _unrolled(key) or jnp.result_type(int) != jnp.int32:
        return jax.random.randint(key, shape, minval, maxval)
    size = math.prod(shape)
    partitionable = bool(jax.config.jax_threefry_partitionable)
    high_key, low_key = split(key)
    high = _bits_32(high_key, size, partitionable).reshape(shape)
    low = _bits_32(low_key, size, partitionable).reshape(shape)
    span = np.uint32(maxval - minval)
    # JAX's "2^32 mod span" as (2^16 mod span)² mod span, the square wrapping in uint32 as
    # JAX's does (which makes it 0, not 2^32 mod span, for spans of 2^16 and more)
    multiplier = np.uint32(((2**16 % int(span)) ** 2 % 2**32) % int(span))
    offset = ((high % span) * multiplier + low % span) % span
    return jnp.int32(minval) + offset.astype(jnp.int32)
