"""Supports: event shapes, data validation, dispersed starts, enumeration."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import unnorm as un


@pytest.mark.parametrize(
    "support, shape",
    [
        (un.supports.real(3), (3,)),
        (un.supports.real((2, 4)), (2, 4)),
        (un.supports.positive(2), (2,)),
        (un.supports.interval(0.0, 1.0, 2), (2,)),
        (un.supports.binary(5), (5,)),
        (un.supports.spin((2, 2)), (2, 2)),
    ],
)
def test_event_shape_and_dispersed_starts_lie_in_support(support, shape):
    assert support.event_shape == shape
    starts = support.initial_positions(jax.random.key(0), 8)
    assert starts.shape == (8, *shape)
    support.check_data(np.asarray(starts))  # raises if outside the support
    assert np.unique(np.asarray(starts)).size > 1  # dispersed, not all equal


def test_interval_with_array_bounds():
    support = un.supports.interval(jnp.array([0.0, -1.0]), jnp.array([1.0, 5.0]), 2)
    starts = np.asarray(support.initial_positions(jax.random.key(1), 100))
    assert np.all(starts[:, 0] > 0) and np.all(starts[:, 0] < 1)
    assert np.all(starts[:, 1] > -1) and np.all(starts[:, 1] < 5)


@settings(max_examples=25, deadline=None)
@given(st.integers(min_value=1, max_value=8))
def test_enumeration_lists_every_configuration_once(d):
    configs = np.asarray(un.supports.binary(d).enumerate())
    assert configs.shape == (2**d, d)
    assert len({tuple(row) for row in configs}) == 2**d
    spins = np.asarray(un.supports.spin(d).enumerate())
    np.testing.assert_array_equal(spins, 2 * configs - 1)


def test_enumeration_of_multidimensional_support():
    configs = np.asarray(un.supports.spin((2, 2)).enumerate())
    assert configs.shape == (16, 2, 2)
    assert len({tuple(c.ravel()) for c in configs}) == 16


def test_check_data_returns_float_array():
    data = un.supports.binary(3).check_data([[0, 1, 1], [1, 0, 0]])
    assert data.dtype == float and data.shape == (2, 3)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: un.supports.real(0), ">= 1"),
        (lambda: un.supports.real("a"), "positive int"),
        (lambda: un.supports.interval(1.0, 0.0, 2), "low < high"),
        (lambda: un.supports.interval(0.0, jnp.inf, 2), "finite"),
        (lambda: un.supports.interval(jnp.zeros(3), 1.0, 2), "broadcast"),
    ],
)
def test_bad_support_arguments(make, match):
    with pytest.raises((TypeError, ValueError), match=match):
        make()


def test_check_point_validates_one_observation():
    support = un.supports.interval(0.0, 1.0, 2)
    np.testing.assert_array_equal(support.check_point([0.2, 0.7]), [0.2, 0.7])
    with pytest.raises(ValueError, match=r"x has shape \(3,\).*needs shape \(2,\)"):
        support.check_point([0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match=r"outside the support interval"):
        support.check_point([0.5, 1.5])
