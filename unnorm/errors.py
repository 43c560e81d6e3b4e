"""The fit's exception, in a module below every stage that raises it (the driver, the closed
form of :mod:`unnorm.solvers`), and the description of the data's scale its messages give."""

from __future__ import annotations

import numpy as np

__all__ = ["FitError", "data_scale"]


class FitError(RuntimeError):
    """A fit that cannot go on: repeated non-finite losses or gradients, or an objective whose
    derivatives are not finite where a closed-form solve needs them."""


def data_scale(data) -> str:
    """Where the data are largest in magnitude, for messages about overflow.

    Examples
    --------
    >>> data_scale(np.array([[1.0, -2.0], [3e30, 0.0]]))
    'the largest |value| in the data is 3e+30, in row 1'
    """
    magnitude = np.abs(np.asarray(data, dtype=float)).reshape(len(data), -1)
    row = int(np.argmax(magnitude.max(axis=1)))
    return f"the largest |value| in the data is {magnitude[row].max():.3g}, in row {row}"
