"""The one place that knows which ArviZ line is installed.

ArviZ 0.2x builds ``az.InferenceData`` with ``az.from_dict(posterior=..., sample_stats=...)``;
ArviZ 1.x builds an ``xarray.DataTree`` with ``az.from_dict({"posterior": ..., ...})``. Everything
else in unnorm calls the functions here and never branches on the version itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import arviz as az
import numpy as np

__all__ = [
    "ARVIZ_MAJOR",
    "InferenceData",
    "from_netcdf",
    "is_inference_data",
    "to_inference_data",
    "to_netcdf",
    "rhat_and_ess",
]

ARVIZ_MAJOR = int(az.__version__.split(".")[0])

if ARVIZ_MAJOR >= 1:
    import xarray as xr

    InferenceData = xr.DataTree
else:
    InferenceData = az.InferenceData


def to_inference_data(
    posterior: Mapping[str, np.ndarray],
    sample_stats: Mapping[str, np.ndarray] | None = None,
    attrs: Mapping[str, Any] | None = None,
):
    """Build ArviZ's InferenceData from dicts of ``(chain, draw, ...)`` arrays.

    Returns ``az.InferenceData`` on ArviZ 0.2x and ``xarray.DataTree`` on ArviZ 1.x. Event
    dimensions get ArviZ's default names (``x_dim_0``, ...).
    """
    groups = {"posterior": {k: np.asarray(v) for k, v in posterior.items()}}
    if sample_stats:
        groups["sample_stats"] = {k: np.asarray(v) for k, v in sample_stats.items()}
    idata = az.from_dict(groups) if ARVIZ_MAJOR >= 1 else az.from_dict(**groups)
    for name in groups:
        idata[name].attrs.update(dict(attrs or {}))
    return idata


def is_inference_data(obj: Any) -> bool:
    """True for what :func:`to_inference_data` returns under the installed ArviZ."""
    return isinstance(obj, InferenceData)


def rhat_and_ess(draws: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rank-normalized split R-hat and bulk ESS of every coordinate of ``(chain, draw, ...)``
    draws, flattened over the event dims. Coordinates constant across all draws give NaN."""
    import warnings

    import xarray as xr

    arr = np.asarray(draws, dtype=float)
    flat = arr.reshape(arr.shape[0], arr.shape[1], -1)
    dataset = xr.Dataset({"x": (("chain", "draw", "coordinate"), flat)})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        rhat = np.asarray(az.rhat(dataset)["x"], dtype=float)
        ess = np.asarray(az.ess(dataset)["x"], dtype=float)
    return rhat, ess


def to_netcdf(idata, path) -> None:
    """Write InferenceData / DataTree to a NetCDF file."""
    idata.to_netcdf(str(path))


def from_netcdf(path):
    """Read what :func:`to_netcdf` wrote, as the installed ArviZ's InferenceData."""
    return az.from_netcdf(str(path))
