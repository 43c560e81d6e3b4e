"""unnorm: fit unnormalized statistical models ``p(x; θ) ∝ exp(-E(x; θ))`` in JAX.

Declare an energy (:class:`Model` or :func:`model` with :func:`param`), draw samples with
:func:`sample` (ArviZ InferenceData out), fit θ with :func:`fit` (estimates with standard
errors) and tabulate several estimators with :func:`compare`, and compute exact normalizing
constants of small discrete models with :func:`log_partition`.

Example
-------
>>> import jax, jax.numpy as jnp
>>> import unnorm as un
>>> model = un.models.gaussian(2)
>>> idata = un.sample(model, model.params, key=jax.random.key(0), sampler="nuts",
...                   num_chains=2, num_warmup=200, num_samples=200, progress_bar=False)
>>> idata.posterior["x"].dims
('chain', 'draw', 'x_dim_0')
"""

from . import constraints, diagnostics, estimators, models, plots, samplers, supports
from ._compat import from_netcdf, to_netcdf
from .comparison import compare
from .diagnostics import ConvergenceWarning
from .driver import FitError, fit
from .model import Model, model, param
from .partition import LogPartition, log_partition
from .result import FitResult, load_fit
from .samplers import sample
from .stein import KSDTest, ksd_test

__version__ = "0.1.0"

__all__ = [
    "ConvergenceWarning",
    "FitError",
    "FitResult",
    "KSDTest",
    "LogPartition",
    "Model",
    "compare",
    "constraints",
    "diagnostics",
    "estimators",
    "fit",
    "from_netcdf",
    "ksd_test",
    "load_fit",
    "log_partition",
    "model",
    "models",
    "param",
    "plots",
    "sample",
    "samplers",
    "supports",
    "to_netcdf",
]
