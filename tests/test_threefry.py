"""The unrolled Threefry hash gives jax.random's draws bit for bit, in both counter layouts.

Most comparisons run both sides in one ``jax.jit`` program, as the samplers call the hash: run
outside jit, every operation of the unrolled rounds compiled a program of its own for each new
shape. Each layout's cases (shapes, bounds, counts) share one program, which returns every
pair. ``test_fold_in_matches_jax`` keeps the plain calls (as do the module's doctests). A
layout set around a call of a jitted function is part of the key JAX caches its programs by.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from unnorm import threefry

KEYS = [jax.random.key(0), jax.random.key(1), jax.random.key(2**31 + 12345)]


UNIFORM_SHAPES = [(), (1,), (7,), (100,), (3, 5), (2, 3, 4)]
UNIFORM_BOUNDS = [(0.0, 1.0), (-1.0, 1.0), (2.5, 3.0)]


@functools.partial(jax.jit, static_argnames="partitionable")
def uniform_cases_with_layout_and_jax(key, *, partitionable):
    """For every shape and bounds of the cases, ``threefry.uniform`` told the layout
    ``partitionable`` (whatever JAX's setting) and ``jax.random.uniform`` in that layout,
    float32 draws in ``[minval, maxval)``: one program."""
    pairs = {}
    for shape in UNIFORM_SHAPES:
        for minval, maxval in UNIFORM_BOUNDS:
            with jax.threefry_partitionable(partitionable):
                theirs = jax.random.uniform(key, shape, jnp.float32, minval, maxval)
            ours = threefry.uniform(key, shape, jnp.float32, minval, maxval,
                                    partitionable=partitionable)
            pairs[f"{shape} in [{minval}, {maxval})"] = (ours, theirs)
    return pairs


def _assert_pairs_equal(pairs: dict) -> None:
    """Each case's draws, ours and JAX's, of one dtype and shape and equal bit for bit."""
    for case, (ours, theirs) in pairs.items():
        assert ours.dtype == theirs.dtype and ours.shape == theirs.shape, case
        np.testing.assert_array_equal(ours, theirs, err_msg=case)


@functools.partial(jax.jit, static_argnames="shape")
def uniform_and_jax(key, *, shape):
    """``threefry.uniform`` and ``jax.random.uniform`` with their defaults, in JAX's current
    layout: one program."""
    return threefry.uniform(key, shape), jax.random.uniform(key, shape)


@jax.jit
def splits_and_jax(key):
    """The key data of ``threefry.split`` and ``jax.random.split`` in JAX's current layout,
    into 1, 2, 3 and 5 keys: one program."""
    return {f"{num} keys": (jax.random.key_data(threefry.split(key, num)),
                            jax.random.key_data(jax.random.split(key, num)))
            for num in (1, 2, 3, 5)}


@jax.jit
def normals_and_jax(key):
    """``threefry.normal`` and ``jax.random.normal`` in JAX's current layout, for each shape of
    the cases: one program."""
    return {str(shape): (threefry.normal(key, shape), jax.random.normal(key, shape))
            for shape in ((1,), (7,), (256, 2), (2, 3, 4))}


@pytest.mark.parametrize("key", KEYS)
@pytest.mark.parametrize("data", [0, 1, 7, 2**31 + 5, 2**32 - 1])
def test_fold_in_matches_jax(key, data):
    np.testing.assert_array_equal(jax.random.key_data(threefry.fold_in(key, data)),
                                  jax.random.key_data(jax.random.fold_in(key, data)))


def test_fold_in_matches_jax_under_jit_and_vmap():
    keys = jax.random.split(jax.random.key(3), 4)
    steps = np.arange(5, dtype=np.int32)

    @jax.jit
    def ours_and_jax(keys):
        # both sides in one program, not jax.random's side one operation at a time
        ours = jax.vmap(lambda k: jax.vmap(lambda i: threefry.fold_in(k, i))(steps))(keys)
        theirs = jax.vmap(lambda k: jax.vmap(lambda i: jax.random.fold_in(k, i))(steps))(keys)
        return jax.random.key_data(ours), jax.random.key_data(theirs)

    np.testing.assert_array_equal(*ours_and_jax(keys))


@pytest.mark.parametrize("partitionable", [True, False])
def test_uniform_matches_jax(partitionable):
    pairs = uniform_cases_with_layout_and_jax(jax.random.key(11), partitionable=partitionable)
    assert len(pairs) == len(UNIFORM_SHAPES) * len(UNIFORM_BOUNDS)
    _assert_pairs_equal(pairs)


def test_uniform_follows_the_current_layout():
    key = jax.random.key(5)
    for partitionable in (True, False):
        with jax.threefry_partitionable(partitionable):
            np.testing.assert_array_equal(*uniform_and_jax(key, shape=(9,)))


def test_other_generators_go_to_jax_random():
    key = jax.random.key(0, impl="rbg")
    np.testing.assert_array_equal(jax.random.key_data(threefry.fold_in(key, 3)),
                                  jax.random.key_data(jax.random.fold_in(key, 3)))
    np.testing.assert_array_equal(threefry.uniform(key, (4,)), jax.random.uniform(key, (4,)))


def test_legacy_keys_and_other_dtypes_go_to_jax_random():
    legacy = jax.random.PRNGKey(4)
    np.testing.assert_array_equal(threefry.fold_in(legacy, 2), jax.random.fold_in(legacy, 2))
    np.testing.assert_array_equal(threefry.uniform(legacy, (6,)),
                                  jax.random.uniform(legacy, (6,)))
    key = jax.random.key(4)
    np.testing.assert_array_equal(threefry.uniform(key, (6,), jnp.float16),
                                  jax.random.uniform(key, (6,), jnp.float16))


def test_uniform_draws_are_uniform():
    # 10^5 draws: the mean within 4 SE (1/sqrt(12 n)) of 1/2, every draw in [0, 1)
    draws = np.asarray(jax.jit(lambda k: threefry.uniform(k, (100_000,), partitionable=False))(
        jax.random.key(8)))
    assert draws.min() >= 0.0 and draws.max() < 1.0
    assert abs(draws.mean() - 0.5) < 4 / np.sqrt(12 * draws.size)


@pytest.mark.parametrize("partitionable", [True, False])
def test_split_matches_jax(partitionable):
    with jax.threefry_partitionable(partitionable):
        _assert_pairs_equal(splits_and_jax(jax.random.key(13)))


@pytest.mark.parametrize("partitionable", [True, False])
def test_normal_matches_jax(partitionable):
    with jax.threefry_partitionable(partitionable):
        _assert_pairs_equal(normals_and_jax(jax.random.key(17)))


@pytest.mark.parametrize("partitionable", [True, False])
def test_bernoulli_and_rademacher_match_jax(partitionable):
    # a Python float and a float32 array for p; every pair in one program, compiled once
    def ours_and_jax(key):
        return {"p = 0.5": (threefry.bernoulli(key, 0.5, (3, 50)),
                            jax.random.bernoulli(key, 0.5, (3, 50))),
                "p = float32(0.05)": (threefry.bernoulli(key, np.float32(0.05), (400,)),
                                      jax.random.bernoulli(key, np.float32(0.05), (400,))),
                "rademacher": (threefry.rademacher(key, (4, 30), jnp.float32),
                               jax.random.rademacher(key, (4, 30), jnp.float32))}

    with jax.threefry_partitionable(partitionable):
        pairs = jax.jit(ours_and_jax)(jax.random.key(23))
    _assert_pairs_equal(pairs)
    half, rare, signs = (pairs[case][0] for case in ("p = 0.5", "p = float32(0.05)",
                                                      "rademacher"))
    assert half.dtype == bool and 0 < half.mean() < 1 and 0 < rare.mean() < 0.2
    assert signs.dtype == jnp.float32 and set(np.unique(signs)) == {-1.0, 1.0}


RANDINT_BOUNDS = [(0, 3), (0, 2048), (-5, 1000), (10, 11), (0, 65536), (3, 100_000),
                  (0, 2**31 - 1), (-(2**31), 2**31 - 1)]


@pytest.mark.parametrize("partitionable", [True, False])
def test_randint_matches_jax(partitionable):
    # the bounds are Python ints, as the library passes them: each is its own case of the
    # span's reduction, all in one program
    @jax.jit
    def ours_and_jax(key):
        return {f"[{low}, {high})": (threefry.randint(key, (256,), low, high),
                                     jax.random.randint(key, (256,), low, high))
                for low, high in RANDINT_BOUNDS}

    with jax.threefry_partitionable(partitionable):
        _assert_pairs_equal(ours_and_jax(jax.random.key(19)))
