"""Pairwise models on discrete supports: Ising (spins) and Boltzmann machines (binary units).

Both have energy ``E(x) = -Σ_{i<j} J_ij x_i x_j - Σ_i h_i x_i`` (Beigy's lecture slides on
energy-based models, "Boltzmann machine"; their three-unit example is
``ising(J=[-1, -1, 2], h=[0, 1, 0])`` with Z = 172.420). The
couplings are stored as a vector over the pairs i < j in row-major order (see
:func:`pair_indices`), so every parameter is identifiable.
"""

from __future__ import annotations

import functools

import jax.numpy as jnp
import numpy as np

from ..model import Model
from ..supports import binary, spin

__all__ = ["pair_indices", "ising", "boltzmann", "ising_chain"]


def pair_indices(d: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows and columns (i < j) of the pairs, in the order the coupling vector uses.

    Examples
    --------
    >>> pair_indices(3)
    (array([0, 0, 1]), array([1, 2, 2]))
    """
    return np.triu_indices(d, k=1)


def _pairwise_model(J, h, support_fn, name: str, names: tuple[str, str]) -> Model:
    # checked and indexed on the host, cast there as Model casts every initial value: a
    # cast or a gather on the device compiles a program for each new shape
    h = np.asarray(h, dtype=jnp.result_type(float))
    J = np.asarray(J, dtype=jnp.result_type(float))
    if h.ndim != 1:
        raise ValueError(f"{name}: h must be a vector of length d; got shape {h.shape}.")
    d = h.shape[0]
    if J.ndim == 2:
        if J.shape != (d, d):
            raise ValueError(f"{name}: a coupling matrix J must be ({d}, {d}); got {J.shape}.")
        J = J[pair_indices(d)]
    if J.ndim != 1 or J.shape[0] != d * (d - 1) // 2:
        raise ValueError(
            f"{name}: J must be a ({d}, {d}) matrix or a vector of {d * (d - 1) // 2} couplings "
            f"(pairs i<j); got shape {J.shape}."
        )
    rows, cols = pair_indices(d)
    coupling, field = names
    # a module-level energy with its fixed arguments bound: the model pickles by name
    energy = functools.partial(_pairwise_energy, rows=rows, cols=cols, coupling=coupling,
                               field=field)
    return Model(energy, params={coupling: J, field: h}, support=support_fn(d), name=name)


def _pairwise_energy(params, x, *, rows, cols, coupling: str, field: str):
    return -jnp.sum(params[coupling] * x[rows] * x[cols]) - params[field] @ x


def ising(J, h) -> Model:
    """Ising model on spins {-1, +1}^d: ``E(x) = -Σ_{i<j} J_ij x_i x_j - hᵀx``.

    Parameters
    ----------
    J : array
        Couplings: a (d, d) matrix (its upper triangle is used) or a vector over pairs i < j.
    h : array
        Fields, shape (d,).

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> m = ising(J=jnp.array([-1.0, -1.0, 2.0]), h=jnp.array([0.0, 1.0, 0.0]))
    >>> float(m.energy(m.params, jnp.array([-1.0, 1.0, 1.0])))
    -5.0
    """
    return _pairwise_model(J, h, spin, "ising", ("J", "h"))


def boltzmann(W, b) -> Model:
    """Fully visible Boltzmann machine on {0, 1}^d: ``E(x) = -Σ_{i<j} W_ij x_i x_j - bᵀx``,
    parameters ``W`` (couplings over pairs i < j, or a (d, d) matrix) and ``b`` (biases).

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> m = boltzmann(W=jnp.array([1.0]), b=jnp.array([0.5, 0.0]))
    >>> float(m.energy(m.params, jnp.array([1.0, 1.0])))
    -1.5
    """
    return _pairwise_model(W, b, binary, "boltzmann", ("W", "b"))


def ising_chain(n: int, coupling: float = 0.5, field: float = 0.0, periodic: bool = False) -> Model:
    """Homogeneous nearest-neighbour Ising chain on {-1, +1}^n with two scalar parameters:
    ``E(x) = -J Σ_i x_i x_{i+1} - h Σ_i x_i`` (a ring when ``periodic``).

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> m = ising_chain(4, coupling=1.0)
    >>> float(m.energy(m.params, jnp.ones(4)))
    -3.0
    """
    if n < 2:
        raise ValueError(f"ising_chain needs n >= 2 spins; got {n}.")
    energy = functools.partial(_chain_energy, periodic=bool(periodic))
    return Model(energy, params={"coupling": coupling, "field": field},
                 support=spin(n), name="ising_chain")


def _chain_energy(params, x, *, periodic: bool):
    neighbours = jnp.roll(x, -1) if periodic else x[1:]
    bonds = x * neighbours if periodic else x[:-1] * neighbours
    return -params["coupling"] * jnp.sum(bonds) - params["field"] * jnp.sum(x)
