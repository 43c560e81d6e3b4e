"""Ready-made models: plain functions that return a :class:`unnorm.Model`.

Examples
--------
>>> import unnorm as un
>>> un.models.gaussian(2).event_shape
(2,)
"""

from .gaussian import gaussian
from .pairwise import boltzmann, ising, ising_chain, pair_indices
from .rbm import gaussian_rbm, gaussian_rbm_mixture, rbm

__all__ = ["gaussian", "boltzmann", "ising", "ising_chain", "pair_indices", "rbm",
           "gaussian_rbm", "gaussian_rbm_mixture"]
