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
