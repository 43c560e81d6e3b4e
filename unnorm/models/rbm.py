"""Restricted Boltzmann machines as unnormalized models of their visible units.

An RBM (Beigy's lecture slides, "Restricted Boltzmann Machine") has visible units ``v`` and binary
hidden units ``h ∈ {0, 1}^F`` on a bipartite graph. Its hidden units sum out in closed form (Beigy's
lecture slides, the marginal ``p(v)``), so the visible units alone follow ``p(v) ∝ exp(-F(v))`` with
the *free energy* ``F``: an unnormalized model like any other, to sample with ``un.sample``, fit
with ``un.fit`` (every estimator that accepts the support) and normalize with ``un.log_partition``.

* :func:`rbm` — Bernoulli–Bernoulli, ``v ∈ {0, 1}^D``:

      E(v, h) = -vᵀWh - bᵀv - cᵀh,
      F(v) = -bᵀv - Σ_j softplus(c_j + (vᵀW)_j).

* :func:`gaussian_rbm` — Gaussian–Bernoulli, ``v ∈ ℝ^D``, with fixed scales ``σ_i``:

      E(v, h) = Σ_i (v_i - b_i)² / (2σ_i²) - Σ_ij w_ij h_j v_i / σ_i - cᵀh,
      F(v) = Σ_i (v_i - b_i)² / (2σ_i²) - Σ_j softplus(c_j + Σ_i w_ij v_i / σ_i).

  ``p(v)`` is a mixture of ``2^F`` Gaussians, ``N(b + σ ∘ Wh, diag σ²)`` with weights
  ∝ ``exp(cᵀh + Σ_i b_i (Wh)_i / σ_i + ½ ‖Wh‖²)`` (complete the square in each ``v_i``), and
  :func:`gaussian_rbm_mixture` returns those weights, means and the scale, which give the exact
  moments and ``log Z`` of a small model.

The hidden units are not identifiable (any permutation of them gives the same ``p(v)``), so
compare fits through the density (log-likelihood, moments), not through ``W``.
"""

from __future__ import annotations

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np

from .. import _checks
from ..model import Model
from ..supports import binary, real

__all__ = ["rbm", "gaussian_rbm", "gaussian_rbm_mixture"]


def _initial_params(num_visible: int, num_hidden: int, W, b, c, seed: int) -> dict:
    """Given arrays (shape-checked), or the defaults: W ~ N(0, 0.1²) from ``seed`` (random, so
    that the hidden units differ: identical ones stay identical under every gradient), b = c = 0.
    """
    if W is None:
        W = 0.1 * np.random.default_rng(seed).normal(size=(num_visible, num_hidden))
    expected = {"W": (num_visible, num_hidden), "b": (num_visible,), "c": (num_hidden,)}
    given = {"W": W, "b": np.zeros(num_visible) if b is None else b,
             "c": np.zeros(num_hidden) if c is None else c}
    params = {}
    for name, value in given.items():
        # cast on the host, as Model casts every initial value (a device cast compiles)
        array = np.asarray(value, dtype=jnp.result_type(float))
        if array.shape != expected[name]:
            raise ValueError(f"{name} must have shape {expected[name]} (num_visible = "
                             f"{num_visible}, num_hidden = {num_hidden}); got {array.shape}.")
        params[name] = array
    return params


def rbm(num_visible: int, num_hidden: int, W=None, b=None, c=None, seed: int = 0) -> Model:
    """Bernoulli–Bernoulli RBM on ``binary(num_visible)``, through its free energy
    ``F(v) = -bᵀv - Σ_j softplus(c_j + (vᵀW)_j)`` (Beigy's lecture slides, the marginal ``p(v)``).

    Parameters
    ----------
    num_visible, num_hidden : int
        D and F.
    W, b, c : array, optional
        Weights (D, F), visible biases (D,), hidden biases (F,). Defaults: ``W`` drawn from
        N(0, 0.1²) with NumPy's generator seeded by ``seed``; ``b`` and ``c`` zeros.
    seed : int
        Seed of the default ``W``.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> m = rbm(2, 1, W=jnp.array([[1.0], [0.0]]), b=jnp.zeros(2), c=jnp.zeros(1))
    >>> round(float(m.energy(m.params, jnp.array([1.0, 0.0]))), 4)   # -log(1 + e)
    -1.3133
    """
    num_visible = _checks.check_int(num_visible, "num_visible")
    num_hidden = _checks.check_int(num_hidden, "num_hidden")
    params = _initial_params(num_visible, num_hidden, W, b, c, seed)
    # module-level free energies: the models pickle by name
    return Model(_bernoulli_free_energy, params=params, support=binary(num_visible), name="rbm")


def _bernoulli_free_energy(params, v):
    return -params["b"] @ v - jnp.sum(jax.nn.softplus(params["c"] + v @ params["W"]))


def gaussian_rbm(num_visible: int, num_hidden: int, W=None, b=None, c=None, sigma=1.0,
                 seed: int = 0) -> Model:
    """Gaussian–Bernoulli RBM on ``real(num_visible)``, through its free energy
    ``F(v) = Σ_i (v_i - b_i)² / (2σ_i²) - Σ_j softplus(c_j + Σ_i w_ij v_i / σ_i)`` (Beigy's lecture
    slides, the Gaussian–Bernoulli energy with ``h`` summed out).

    Parameters
    ----------
    num_visible, num_hidden : int
        D and F.
    W, b, c : array, optional
        As in :func:`rbm`; ``b`` is the mean of the visible units when the hidden ones are off.
    sigma : float or array (D,)
        The scales ``σ_i``, fixed (not fitted): standardize the data and keep 1, as is usual.
    seed : int
        Seed of the default ``W``.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> m = gaussian_rbm(2, 1, W=jnp.zeros((2, 1)), b=jnp.ones(2), c=jnp.zeros(1))
    >>> round(float(m.energy(m.params, jnp.array([1.0, 1.0]))), 4)   # -log 2
    -0.6931
    """
    num_visible = _checks.check_int(num_visible, "num_visible")
    num_hidden = _checks.check_int(num_hidden, "num_hidden")
    params = _initial_params(num_visible, num_hidden, W, b, c, seed)
    scale = np.broadcast_to(np.asarray(sigma, dtype=float), (num_visible,)).copy()
    if not np.all(np.isfinite(scale) & (scale > 0)):
        raise ValueError(f"sigma must be positive and finite (a scalar or one per visible "
                         f"unit); got {sigma!r}.")
    free_energy = functools.partial(_gaussian_free_energy, scale=jnp.asarray(scale))
    return Model(free_energy, params=params, support=real(num_visible), name="gaussian_rbm")


def _gaussian_free_energy(params, v, *, scale):
    quadratic = 0.5 * jnp.sum(((v - params["b"]) / scale) ** 2)
    return quadratic - jnp.sum(jax.nn.softplus(params["c"] + (v / scale) @ params["W"]))


def gaussian_rbm_mixture(params, sigma=1.0, max_hidden: int = 16):
    """The Gaussian mixture that a Gaussian–Bernoulli RBM's ``p(v)`` is, in NumPy (float64).

    Returns ``(log_weights, means, sigma, log_partition)``: the normalized log-weights of the
    ``2^F`` components (hidden configurations in ``itertools.product`` order), their means
    ``b + σ ∘ Wh`` (shape (2^F, D)), the per-unit scale σ (D,) that every component shares,
    and ``log Z`` of the free energy :func:`gaussian_rbm` defines:

        log Z = log Σ_h exp(cᵀh + Σ_i b_i (Wh)_i / σ_i + ½ ‖Wh‖²) + Σ_i log(√(2π) σ_i).

    Examples
    --------
    >>> import numpy as np
    >>> m = gaussian_rbm(1, 1, W=np.zeros((1, 1)), b=np.zeros(1), c=np.zeros(1))
    >>> log_w, means, scale, log_z = gaussian_rbm_mixture(m.params)
    >>> round(float(log_z - np.log(2 * np.sqrt(2 * np.pi))), 12)
    0.0
    """
    W = np.asarray(params["W"], dtype=float)
    b = np.asarray(params["b"], dtype=float)
    c = np.asarray(params["c"], dtype=float)
    num_visible, num_hidden = W.shape
    if num_hidden > max_hidden:
        raise ValueError(f"the mixture has 2^{num_hidden} components; num_hidden must be at most "
                         f"max_hidden = {max_hidden} (raise it if you mean it).")
    scale = np.broadcast_to(np.asarray(sigma, dtype=float), (num_visible,))
    hidden = np.array(list(itertools.product((0.0, 1.0), repeat=num_hidden)))
    shift = hidden @ W.T                                            # (2^F, D): (Wh)_i
    log_unnormalized = hidden @ c + shift @ (b / scale) + 0.5 * np.sum(shift ** 2, axis=1)
    log_norm = np.logaddexp.reduce(log_unnormalized)
    log_partition = log_norm + np.sum(np.log(np.sqrt(2 * np.pi) * scale))
    return log_unnormalized - log_norm, b + scale * shift, np.array(scale), float(log_partition)
