"""The unrolled Threefry hash gives jax.random's draws bit for bit, in both counter layouts."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from unnorm import threefry

KEYS = [jax.random.key(0), jax.random.key(1), jax.random.key(2**31 + 12345)]


@pytest.mark.parametrize("key", KEYS)
@pytest.mark.parametrize("data", [0, 1, 7, 2**31 + 5, 2**32 - 1])
def test_fold_in_matches_jax(key, data):
    np.testing.assert_array_equal(jax.random.key_data(threefry.fold_in(key, data)),
                                  jax.random.key_data(jax.random.fold_in(key, data)))


def test_fold_in_matches_jax_under_jit_and_vmap():
    keys = jax.random.split(jax.random.key(3), 4)
    steps = jnp.arange(5)
    ours = jax.jit(jax.vmap(lambda k: jax.vmap(lambda i: threefry.fold_in(k, i))(steps)))(keys)
    theirs = jax.vmap(lambda k: jax.vmap(lambda i: jax.random.fold_in(k, i))(steps))(keys)
    np.testing.assert_array_equal(jax.random.key_data(ours), jax.random.key_data(theirs))


@pytest.mark.parametrize("partitionable", [True, False])
@pytest.mark.parametrize("shape", [(1,), (7,), (100,), (3, 5), (2, 3, 4)])
@pytest.mark.parametrize("bounds", [(0.0, 1.0), (-1.0, 1.0), (2.5, 3.0)])
def test_uniform_matches_jax(partitionable, shape, bounds):
    key = jax.random.key(11)
    with jax.threefry_partitionable(partitionable):
        theirs = jax.random.uniform(key, shape, jnp.float32, *bounds)
    ours = threefry.uniform(key, shape, jnp.float32, *bounds, partitionable=partitionable)
    assert ours.dtype == theirs.dtype and ours.shape == theirs.shape
    np.testing.assert_array_equal(ours, theirs)


def test_uniform_follows_the_current_layout():
    key = jax.random.key(5)
    for partitionable in (True, False):
        with jax.threefry_partitionable(partitionable):
            np.testing.assert_array_equal(threefry.uniform(key, (9,)),
                                          jax.random.uniform(key, (9,)))


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
    draws = np.asarray(threefry.uniform(jax.random.key(8), (100_000,), partitionable=False))
    assert draws.min() >= 0.0 and draws.max() < 1.0
    assert abs(draws.mean() - 0.5) < 4 / np.sqrt(12 * draws.size)


@pytest.mark.parametrize("partitionable", [True, False])
@pytest.mark.parametrize("num", [1, 2, 3, 5])
def test_split_matches_jax(partitionable, num):
    key = jax.random.key(13)
    with jax.threefry_partitionable(partitionable):
        np.testing.assert_array_equal(jax.random.key_data(threefry.split(key, num)),
                                      jax.random.key_data(jax.random.split(key, num)))


@pytest.mark.parametrize("partitionable", [True, False])
@pytest.mark.parametrize("shape", [(1,), (7,), (256, 2), (2, 3, 4)])
def test_normal_matches_jax(partitionable, shape):
    key = jax.random.key(17)
    with jax.threefry_partitionable(partitionable):
        np.testing.assert_array_equal(jax.jit(lambda k: threefry.normal(k, shape))(key),
                                      jax.random.normal(key, shape))


@pytest.mark.parametrize("partitionable", [True, False])
@pytest.mark.parametrize("bounds", [(0, 3), (0, 2048), (-5, 1000), (10, 11), (0, 65536),
                                    (3, 100_000), (0, 2**31 - 1), (-(2**31), 2**31 - 1)])
def test_randint_matches_jax(partitionable, bounds):
    key = jax.random.key(19)
    with jax.threefry_partitionable(partitionable):
        ours = jax.jit(lambda k: threefry.randint(k, (256,), *bounds))(key)
        theirs = jax.random.randint(key, (256,), *bounds)
    assert ours.dtype == theirs.dtype
    np.testing.assert_array_equal(ours, theirs)
