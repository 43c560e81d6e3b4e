"""Multivariate Gaussian in precision form: ``E(x) = ½ (x - μ)ᵀ Λ (x - μ)``."""

from __future__ import annotations

import numpy as np
from numpyro.distributions import constraints

from ..model import Model
from ..supports import real

__all__ = ["gaussian"]


def _energy(params, x):
    centred = x - params["mu"]
    return 0.5 * centred @ params["prec"] @ centred


def gaussian(d: int, mean=None, precision=None) -> Model:
    """A d-dimensional Gaussian with parameters ``mu`` (real) and ``prec`` (positive definite).

    ``E(x; μ, Λ) = ½ (x - μ)ᵀ Λ (x - μ)``, so ``log Z = (d/2) log 2π - ½ log det Λ``. Its energy
    is linear in (Λμ, Λ): score matching has a closed form for it.

    Parameters
    ----------
    d : int
        Dimension.
    mean, precision : array, optional
        Initial values; default zeros and the identity.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> m = gaussian(2)
    >>> float(m.energy(m.params, jnp.array([1.0, 0.0])))
    0.5
    """
    # the defaults made on the host: the Model casts them there, without compiling
    mu = np.zeros(d) if mean is None else np.asarray(mean, dtype=float)
    prec = np.eye(d) if precision is None else np.asarray(precision, dtype=float)
    return Model(_energy, params={"mu": mu, "prec": prec},
                 constraints={"prec": constraints.positive_definite}, support=real(d),
                 name="gaussian")
