"""``un.fit(devices=...)`` in this process: its checks of ``devices``, and the exact solution the
sharded fits of ``tests/test_devices.py`` are compared with.

The fits on several devices and over several processes need JAX started otherwise (two host
devices, ``jax.distributed``), so they run in the children of ``tests/test_devices.py``.
"""

from __future__ import annotations

import _device_runs as runs
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import unnorm as un
from unnorm import sharding


def test_score_matching_truth_is_the_fit_on_an_explicit_device():
    # the NumPy solution against un.fit on one device named in a list, where the data are
    # placed (float32 here: 1e-4)
    model = un.Model(lambda p, x: 0.5 * p["a"] * jnp.sum(x ** 2) - jnp.dot(p["b"], x),
                     params={"a": 1.0, "b": jnp.zeros(2)},
                     constraints={"a": un.constraints.positive}, support=un.supports.real(2))
    data = runs.data()
    fitted = un.fit(model, data, key=jax.random.key(1), progress_bar=False,
                    devices=jax.devices()[:1])
    assert fitted.stages == ("closed form", "sandwich")
    truth = runs.score_matching_truth(data)
    np.testing.assert_allclose(np.r_[fitted.params["a"], fitted.params["b"]], truth["params"],
                               rtol=1e-4)
    np.testing.assert_allclose(np.r_[fitted.stderr["a"], fitted.stderr["b"]], truth["stderr"],
                               rtol=1e-4)


_MODEL = un.Model(lambda p, x: 0.5 * p["a"] * jnp.sum(x ** 2), params={"a": 1.0},
                  constraints={"a": un.constraints.positive}, support=un.supports.real(1))


@pytest.mark.parametrize("devices, error, match", [
    (0, ValueError, "devices must be between 1 and"),
    (len(jax.devices()) + 1, ValueError, "devices must be between 1 and"),
    ("cpu", TypeError, "devices must be None"),
    ([0], TypeError, "list of jax.Device"),
])
def test_fit_checks_devices_before_compiling(devices, error, match):
    with pytest.raises(error, match=match):
        un.fit(_MODEL, np.ones((4, 1)), key=jax.random.key(0), devices=devices)


@pytest.mark.parametrize("num_chains, num_devices, platform, split", [
    (8, 1, "cpu", False),          # one device: nothing to split
    (8, 1, "gpu", False),
    (7, 2, "gpu", False),          # not a multiple: padding copies would enter the means
    (8, 2, "gpu", True),           # accelerators split any multiple
    (8, 2, "tpu", True),
    (2 * 127, 2, "cpu", False),    # CPU devices: below the minimum a device
    (2 * 128, 2, "cpu", True),     # from it on
    (4 * 128, 4, "cpu", True),
    (4 * 128 + 2, 4, "cpu", False),
])
def test_chains_worth_splitting(num_chains, num_devices, platform, split):
    assert sharding.chains_worth_splitting(num_chains, num_devices, platform,
                                           min_cpu_chains_per_device=128) is split


def test_chains_worth_splitting_reads_the_cpu_minimum_at_each_call(monkeypatch):
    least = 2 * sharding.MIN_CPU_CHAINS_PER_DEVICE
    assert sharding.chains_worth_splitting(least, 2, "cpu")
    assert not sharding.chains_worth_splitting(least - 2, 2, "cpu")
    monkeypatch.setattr(sharding, "MIN_CPU_CHAINS_PER_DEVICE", 4)
    assert sharding.chains_worth_splitting(8, 2, "cpu")
    assert not sharding.chains_worth_splitting(6, 2, "cpu")
