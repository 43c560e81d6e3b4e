"""Parameter constraints: a re-export of :mod:`numpyro.distributions.constraints`.

Constraints on parameters are NumPyro's, and so is the map to the unconstrained space
(:func:`numpyro.distributions.transforms.biject_to`), so every constraint NumPyro knows works here.

Examples
--------
>>> from unnorm import constraints
>>> constraints.positive_definite
PositiveDefinite()
"""

from numpyro.distributions.constraints import *  # noqa: F403
from numpyro.distributions.constraints import __all__  # noqa: F401
