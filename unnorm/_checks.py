"""Argument checks shared by the public functions: plain Python, run before anything is jitted.

Each raises ``TypeError`` / ``ValueError`` whose message names the argument, what was received
and what is accepted.
"""

from __future__ import annotations

import math
import numbers
import os

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "INT32_MAX", "check_key", "check_int", "check_positive_float", "check_probability",
    "check_fraction", "check_bool", "check_choice",
]


def check_key(key, name: str = "key") -> jax.Array:
    """Accept a typed key (``jax.random.key``) or a legacy ``uint32[2]`` key
    (``jax.random.PRNGKey``); return a typed key."""
    if isinstance(key, jax.Array):
        if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
            if key.shape != ():
                raise ValueError(
                    f"{name} must be a single PRNG key; got a batch of keys of shape {key.shape}."
                )
            return key
        if key.dtype == jnp.uint32 and key.shape == (2,):
            return jax.random.wrap_key_data(key)
    got = type(key).__name__
    if isinstance(key, (jax.Array, np.ndarray)):
        got = f"array of dtype {key.dtype} and shape {key.shape}"
    raise TypeError(
        f"{name} must be a JAX PRNG key such as jax.random.key(0) (or jax.random.PRNGKey(0)); "
        f"got {got}" + (f" {key!r}" if isinstance(key, (int, float, str)) else "") + "."
    )


def _scalar(value, kind: type) -> float | int | None:
    """``value`` as a Python number of ``kind`` (a 0-d NumPy/JAX array counts), else None."""
    if isinstance(value, (bool, np.bool_)):
        return None
    if isinstance(value, (np.ndarray, jax.Array)) and value.ndim == 0:
        value = value.item()
    if kind is int and isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return int(value)
    if kind is float and isinstance(value, numbers.Real) and not isinstance(value, bool):
        return float(value)
    return None


#: Largest step count a compiled loop takes: JAX passes Python ints to jitted code as int32.
INT32_MAX = 2**31 - 1


def check_int(value, name: str, minimum: int = 1, maximum: int | None = None) -> int:
    """An integer ``>= minimum`` (bool is not an integer here) and, when given, ``<= maximum``."""
    number = _scalar(value, int)
    if number is None:
        raise TypeError(f"{name} must be an integer >= {minimum}; got {value!r}.")
    if number < minimum:
        raise ValueError(f"{name} must be >= {minimum}; got {number}.")
    if maximum is not None and number > maximum:
        raise ValueError(f"{name} must be at most {maximum}; got {number}.")
    return number


def check_positive_float(value, name: str) -> float:
    """A finite real number > 0."""
    number = _scalar(value, float)
    if number is None:
        raise TypeError(f"{name} must be a positive number; got {value!r}.")
    if not math.isfinite(number) or number <= 0:
        raise ValueError(f"{name} must be a finite number > 0; got {number}.")
    return number


def check_probability(value, name: str) -> float:
    """A number strictly between 0 and 1."""
    number = _scalar(value, float)
    if number is None:
        raise TypeError(f"{name} must be a number in (0, 1); got {value!r}.")
    if not 0 < number < 1:
        raise ValueError(f"{name} must lie strictly between 0 and 1; got {number}.")
    return number


def check_fraction(value, name: str) -> float:
    """A number in [0, 1)."""
    number = _scalar(value, float)
    if number is None or not 0 <= number < 1:
        raise ValueError(f"{name} must be a number in [0, 1); got {value!r}.")
    return number


def check_bool(value, name: str) -> bool:
    """True or False."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False; got {value!r}.")
    return bool(value)


def check_choice(value, name: str, choices) -> str:
    """One of ``choices`` (strings); the message lists them."""
    if not isinstance(value, str) or value not in choices:
        valid = ", ".join(map(repr, choices))
        raise ValueError(f"unknown {name} {value!r}; choose one of {valid}.")
    return value


def progress_disabled(progress_bar: bool) -> bool:
    """Whether a tqdm bar stays hidden: when the user asked for none, or under CI (the ``CI``
    environment variable), where bars only clutter the logs."""
    return not progress_bar or bool(os.environ.get("CI"))
