"""unnorm: fit unnormalized statistical models ``p(x; θ) ∝ exp(-E(x; θ))`` in JAX.

Declare an energy (:class:`Model` or :func:`model` with :func:`param`), draw samples with
:func:`sample` (ArviZ InferenceData out), fit θ with :func:`fit` (estimates with standard
errors) and tabulate several estimators with :func:`compare`, and compute exact normalizing
constants of small discrete models with :func:`log_partition`.

Examples
--------
>>> import jax, jax.numpy as jnp
>>> import unnorm as un
>>> model = un.models.gaussian(2)
>>> idata = un.sample(model, model.params, key=jax.random.key(0), sampler="nuts",
...                   num_chains=4, num_warmup=300, num_samples=300, progress_bar=False)
>>> idata.posterior["x"].dims
('chain', 'draw', 'x_dim_0')
"""

# The public names are imported on first use (PEP 562): ``import unnorm`` alone loads no JAX,
# so that ``unnorm --help`` (whose module, unnorm.cli, runs this file first) answers at once.
# ``un.fit``, ``from unnorm import fit`` and ``dir(un)`` behave as if everything were imported
# here, in the order of _PUBLIC.

import importlib
import importlib.util
import sys
import types

__version__ = "0.1.0"

# public name -> the submodule it comes from (None: the name is itself a submodule), in the
# order the names were once imported eagerly
_PUBLIC = {
    "constraints": None,
    "diagnostics": None,
    "estimators": None,
    "models": None,
    "plots": None,
    "samplers": None,
    "supports": None,
    "from_netcdf": "_compat",
    "to_netcdf": "_compat",
    "compare": "comparison",
    "ConvergenceWarning": "diagnostics",
    "FitError": "driver",
    "fit": "driver",
    "Model": "model",
    "model": "model",
    "param": "model",
    "LogPartition": "partition",
    "log_partition": "partition",
    "FitResult": "result",
    "load_fit": "result",
    "sample": "samplers",
    "KSDTest": "stein",
    "ksd_test": "stein",
}

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


def __getattr__(name: str):
    if name not in _PUBLIC:
        # any submodule, as when the eager imports had loaded them all (un.stein.ksd)
        if not name.startswith("__") and importlib.util.find_spec(f"{__name__}.{name}"):
            return importlib.import_module(f"{__name__}.{name}")
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    source = _PUBLIC[name]
    if source is None:
        value = importlib.import_module(f"{__name__}.{name}")
    else:
        value = getattr(importlib.import_module(f"{__name__}.{source}"), name)
    globals()[name] = value  # later lookups find it without calling __getattr__
    return value


def __dir__() -> list[str]:
    # what the eager imports left in the namespace: every public name, and the submodules
    # they loaded on the way
    for name in _PUBLIC:
        __getattr__(name)
    return sorted(set(globals()) - _OWN)


class _Package(types.ModuleType):
    """The package's module type: it keeps ``unnorm.model`` the decorator.

    Importing a submodule binds it on its package, so loading ``unnorm/model.py`` (which any
    lazy name may do) would set ``unnorm.model`` to that module; the eager imports used to
    rebind the decorator right after. Here the binding of the module is skipped instead: it
    stays reachable as ``sys.modules["unnorm.model"]`` and by ``from unnorm.model import``.
    """

    def __setattr__(self, name: str, value) -> None:
        if name == "model" and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)

    def __reduce__(self):
        # pickled by name, as a plain module is: cloudpickle (closures that use ``un.``)
        # dispatches on the exact type ``ModuleType`` and would not recognize this subclass
        return importlib.import_module, (self.__name__,)


sys.modules[__name__].__class__ = _Package
# this file's own machinery, left out of dir()
_OWN = {"importlib", "sys", "types", "_PUBLIC", "_Package", "_OWN", "__getattr__", "__dir__"}
