"""What ``unnorm fit``, ``unnorm sample`` and ``unnorm compare`` do once their arguments are
parsed: find the model in a Python file, read the data, call :func:`unnorm.fit`,
:func:`unnorm.sample` or :func:`unnorm.compare`, print the tables and write the files.

The argument parsing lives in :mod:`unnorm.cli`, which imports this module (and so JAX) only
when a command runs, never for ``--help``. A problem with the arguments raises
:class:`UsageError`, naming the argument, what was received and what is accepted; the command
line prints it as one line.
"""

from __future__ import annotations

import importlib.util
import inspect
import itertools
import pathlib
import sys
import time
import warnings

import arviz as az
import jax
import numpy as np

from ._compat import to_netcdf
from .comparison import compare
from .driver import fit as fit_model
from .errors import FitError
from .estimators import resolve
from .model import Model
from .result import load_fit
from .samplers import check_sampler, sample

__all__ = ["CommandError", "UsageError", "load_model", "read_data", "run", "run_compare",
           "run_fit", "run_sample"]

#: the data files ``unnorm fit`` and ``unnorm compare`` read
DATA_SUFFIXES = (".npy", ".csv")

_loaded = itertools.count()


class CommandError(Exception):
    """What ends a command with one line on stderr and the exit status ``code``."""

    def __init__(self, message: str, code: int = 2):
        super().__init__(message)
        self.code = code


class UsageError(CommandError):
    """A command-line argument that cannot be used: ``argument``, then what is wrong with it."""

    def __init__(self, argument: str, message: str):
        super().__init__(f"argument {argument}: {message}")


def run(args, out) -> None:
    """Run the command ``args.command`` (``fit``, ``sample`` or ``compare``), printing to
    ``out``. Bad input raises :class:`CommandError`: the command line's own checks, unnorm's
    ``ValueError`` and ``TypeError`` (their messages name the argument and what it accepts) and
    :class:`unnorm.FitError`. Errors raised outside unnorm (in the model file's code, say) keep
    their traceback."""
    command = {"fit": run_fit, "sample": run_sample, "compare": run_compare}[args.command]
    caught: list = []
    try:
        with warnings.catch_warnings(record=True) as caught:
            command(args, out)
    except CommandError:
        raise
    except FitError as err:
        raise CommandError(f"the fit failed: {err}", 1) from None
    except (ValueError, TypeError) as err:
        if not _raised_by_unnorm(err):
            raise
        raise CommandError(str(err)) from None
    except KeyboardInterrupt:
        raise CommandError("interrupted", 130) from None
    finally:
        for warning in caught:  # one line each, after the tables (not the line that warned)
            print(f"unnorm: {warning.category.__name__}: {warning.message}", file=sys.stderr)


def _raised_by_unnorm(err: BaseException) -> bool:
    """Whether the innermost frame of ``err``'s traceback is in unnorm's own code (not the
    command line's: an error there is a bug, which keeps its traceback)."""
    frame = err.__traceback__
    while frame is not None and frame.tb_next is not None:
        frame = frame.tb_next
    if frame is None:
        return False
    where = pathlib.Path(frame.tb_frame.f_code.co_filename).resolve()
    package = pathlib.Path(__file__).resolve().parent
    return package in where.parents and where.stem not in ("cli", "cli_commands")


# ---- the model -----------------------------------------------------------------------------------
def load_model(spec: str, argument: str = "FILE.py:MODEL"):
    """The :class:`unnorm.Model` that ``spec`` (``FILE.py:NAME``) names: FILE.py is executed as
    a Python module and NAME looked up in it; NAME may also be a function called without
    arguments that returns the model."""
    path_text, colon, name = spec.rpartition(":")
    if not colon or not path_text or not name:
        raise UsageError(argument, f"expected a Python file and the name of the model in it, "
                         f"e.g. examples/gaussian_model.py:model; got {spec!r}")
    path = pathlib.Path(path_text)
    if not path.is_file():
        raise UsageError(argument, f"no file {path_text!r} (from {spec!r}); give the path of a "
                         "Python file that defines the model")
    if path.suffix != ".py":
        raise UsageError(argument, f"{path_text!r} is not a .py file; give a Python file that "
                         "defines the model")
    namespace = _execute(path)
    if not hasattr(namespace, name):
        found = [key for key, value in vars(namespace).items()
                 if isinstance(value, Model) and not key.startswith("_")]
        hint = (f"models defined there: {', '.join(found)}" if found
                else "it defines no unnorm.Model at its top level")
        raise UsageError(argument, f"{path_text!r} has no name {name!r}; {hint}")
    obj = getattr(namespace, name)
    if isinstance(obj, Model):
        return obj
    if callable(obj) and not isinstance(obj, type):
        if _required_arguments(obj):
            raise UsageError(argument, f"{name!r} in {path_text!r} is a function of "
                             f"{', '.join(_required_arguments(obj))}; give an unnorm.Model or a "
                             "function of no arguments that returns one")
        result = obj()
        if isinstance(result, Model):
            return result
        raise UsageError(argument, f"{name!r} in {path_text!r} returned a "
                         f"{type(result).__name__}, not an unnorm.Model")
    raise UsageError(argument, f"{name!r} in {path_text!r} is a {type(obj).__name__}, not an "
                     "unnorm.Model or a function of no arguments that returns one")


def _execute(path: pathlib.Path):
    """Run ``path`` as a fresh module (registered in ``sys.modules``, so that pickle finds the
    functions it defines; its folder first on ``sys.path`` while it runs, so that it imports
    the modules beside it)."""
    module_name = f"_unnorm_cli_model_{next(_loaded)}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    folder = str(path.resolve().parent)
    sys.path.insert(0, folder)
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[module_name]
        raise
    finally:
        if folder in sys.path:  # unless the file took it out itself
            sys.path.remove(folder)
    return module


def _required_arguments(fn) -> list[str]:
    try:
        parameters = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # no signature to read: let the call decide
        return []
    return [p.name for p in parameters if p.default is p.empty
            and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]


# ---- the data ------------------------------------------------------------------------------------
def read_data(path_text: str, model, argument: str = "DATA") -> np.ndarray:
    """The observations in ``path_text``: a ``.npy`` array, or a ``.csv`` of numbers (one
    observation per row, an optional header line), reshaped to ``(n, *model.event_shape)``
    when each row holds one observation flattened."""
    path = pathlib.Path(path_text)
    if path.suffix.lower() not in DATA_SUFFIXES:
        raise UsageError(argument, f"expected a {' or '.join(DATA_SUFFIXES)} file; got "
                         f"{path_text!r}")
    if not path.is_file():
        raise UsageError(argument, f"no file {path_text!r}")
    try:
        if path.suffix.lower() == ".npy":
            data = np.load(path, allow_pickle=False)
        else:
            data = _read_csv(path)
    except (ValueError, OSError, EOFError) as err:
        raise UsageError(argument, f"cannot read {path_text!r} as numbers: {err}") from None
    if data.dtype.kind not in "biuf":
        raise UsageError(argument, f"{path_text!r} holds {data.dtype} values; give numbers")
    if data.ndim == 0 or data.shape[0] == 0:
        raise UsageError(argument, f"{path_text!r} holds no observations (shape {data.shape})")
    event_shape = tuple(model.event_shape)
    size = int(np.prod(event_shape, dtype=int))
    if data.shape[1:] != event_shape and int(np.prod(data.shape[1:], dtype=int)) == size:
        data = data.reshape((data.shape[0], *event_shape))
    if data.shape[1:] != event_shape:
        raise UsageError(argument, f"{path_text!r} holds observations of shape {data.shape[1:]} "
                         f"({data.shape[0]} rows); the model's observations have shape "
                         f"{event_shape} ({size} numbers per row)")
    return data


def _read_csv(path: pathlib.Path) -> np.ndarray:
    with path.open() as stream:
        first = stream.readline()
    if not first.strip():
        raise ValueError("the first line is empty")
    try:
        [float(field) for field in first.split(",")]
        header = 0
    except ValueError:  # a line of column names
        header = 1
    return np.loadtxt(path, delimiter=",", skiprows=header, ndmin=2)


# ---- the commands --------------------------------------------------------------------------------
def _check_estimator(name: str, model, argument: str) -> str:
    """``name`` after checking that it names an estimator that applies to ``model``."""
    try:
        resolve(name).check(model)
    except (ValueError, TypeError) as err:
        raise UsageError(argument, str(err)) from None
    return name


def _check_sampler(name: str, model) -> str:
    try:
        check_sampler(name, model)
    except (ValueError, TypeError) as err:
        raise UsageError("--sampler", str(err)) from None
    return name


def _progress_bar() -> bool:
    return sys.stderr.isatty()


def run_fit(args, out) -> None:
    """``unnorm fit``: fit, print the summary and the run's record, save when asked."""
    model = load_model(args.model)
    data = read_data(args.data, model)
    estimator = _check_estimator(args.estimator, model, "--estimator")
    options = {} if args.num_steps is None else {"num_steps": args.num_steps}
    fit = fit_model(model, data, estimator, key=jax.random.key(args.seed),
                    stderr=not args.no_stderr, progress_bar=_progress_bar(), **options)
    print(f"{fit.estimator} fit of {args.model} to {data.shape[0]} observations in {args.data}",
          file=out)
    print(fit.summary().to_string(), file=out)
    state = "converged" if fit.converged else "not converged"
    print(f"method: {fit.method}; stages: {', '.join(fit.stages)}; {fit.num_steps} optimizer "
          f"steps, {state}; {fit.wall_time:.2f} s", file=out)
    if args.out:
        fit.save(args.out)
        path = pathlib.Path(args.out)
        written = [path.with_suffix(".npz").name]
        if fit.chains is not None:
            written.append(path.with_suffix(".chains.nc").name)
        print(f"wrote {args.out} and, beside it, {' and '.join(written)} (read them back with "
              f"unnorm.load_fit({str(path)!r}))", file=out)


def run_sample(args, out) -> None:
    """``unnorm sample``: draw from the model at its own or a saved fit's parameters, print the
    ArviZ summary, write NetCDF when asked."""
    model = load_model(args.model)
    sampler = _check_sampler(args.sampler, model)
    params, source = model.params, "the model's own parameters"
    if args.params:
        try:
            saved = load_fit(args.params)
        except ValueError as err:
            raise UsageError("--params", str(err)) from None
        try:
            params = model.check_params(saved.params, "params")
        except (ValueError, TypeError) as err:
            raise UsageError("--params", f"the fit in {args.params!r} does not match the "
                             f"model: {err}") from None
        source = f"the {saved.estimator} fit in {args.params}"
    started = time.perf_counter()
    idata = sample(model, params, key=jax.random.key(args.seed), sampler=sampler,
                      num_chains=args.num_chains, num_warmup=args.num_warmup,
                      num_samples=args.num_samples, progress_bar=_progress_bar())
    seconds = time.perf_counter() - started
    print(f"{args.model}: {sampler}, {args.num_chains} chains of {args.num_samples} draws "
          f"after {args.num_warmup} warmup steps, at {source} ({seconds:.2f} s)", file=out)
    print(az.summary(idata, var_names=["x"]).to_string(), file=out)
    if args.out:
        to_netcdf(idata, args.out)
        print(f"wrote {args.out} (read it with arviz.from_netcdf)", file=out)


def run_compare(args, out) -> None:
    """``unnorm compare``: fit with several estimators, print the long table, write CSV when
    asked."""
    model = load_model(args.model)
    data = read_data(args.data, model)
    estimators = None
    if args.estimators is not None:
        names = [name.strip() for name in args.estimators.split(",")]
        if not all(names):
            raise UsageError("--estimators", "expected names separated by commas, e.g. "
                             f"sm,ssm,nce; got {args.estimators!r}")
        estimators = [_check_estimator(name, model, "--estimators") for name in names]
    options = {} if args.num_steps is None else {"num_steps": args.num_steps}
    table = compare(model, data, estimators, key=jax.random.key(args.seed),
                       progress_bar=_progress_bar(), **options)
    # the CSV keeps every digit; the screen gets the seconds to hundredths
    shown = table.assign(time_s=table["time_s"].round(2)) if "time_s" in table else table
    print(shown.to_string(index=False), file=out)
    if args.out:
        table.to_csv(args.out, index=False)
        print(f"wrote {args.out}", file=out)
