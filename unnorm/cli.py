"""The ``unnorm`` command line.

``unnorm fit``, ``unnorm sample`` and ``unnorm compare`` run :func:`unnorm.fit`,
:func:`unnorm.sample` and :func:`unnorm.compare` on a model found in a Python file (what they do
is :mod:`unnorm.cli_commands`, imported only when one runs: ``unnorm --help`` loads no JAX).
``unnorm demo`` fits a built-in model with every estimator (estimates, standard errors and
intervals next to the truth), then samples built-in models with every sampler and prints ArviZ
summaries next to the exact answers, so a fresh install shows at once that the pieces work
together.
"""

from __future__ import annotations

import argparse
import sys
import textwrap

__all__ = ["main", "demo"]


def demo(*args, **kwargs) -> None:
    """:func:`unnorm.demo.demo` (imported on use: ``unnorm --help`` loads no JAX)."""
    from .demo import demo as run_demo

    run_demo(*args, **kwargs)



class _Parser(argparse.ArgumentParser):
    """argparse, with its errors on one line: ``unnorm: error: ...``."""

    def error(self, message: str):
        _fail(f"{message} (see '{self.prog} --help')", 2)


def _fail(message: str, code: int):
    print(f"unnorm: error: {message}", file=sys.stderr)
    raise SystemExit(code)


def _count(minimum: int):
    """An argparse type: an integer of at least ``minimum``."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}; got {text!r}")
        return value
    return parse


_MODEL_HELP = ("a Python file, executed as Python (like an import) to find MODEL in it: an "
               "unnorm.Model or a function of no arguments that returns one")
_DATA_HELP = ("observations, one per row: a .npy array, or a .csv of numbers (a header line of "
              "column names is allowed); a row holding a flattened observation is reshaped to "
              "the model's event shape")


def _build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="unnorm",
        description="Fit unnormalized statistical models p(x) ∝ exp(-E(x; θ)) in JAX.",
        epilog="MODEL files are Python: unnorm executes them to find the model, so run only "
               "files you trust.",
    )
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    commands = parser.add_subparsers(dest="command", parser_class=_Parser)
    demo_parser = commands.add_parser(
        "demo", help="fit a built-in model with every estimator, then sample built-in models with "
        "every sampler and print ArviZ summaries"
    )
    demo_parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    demo_parser.add_argument("--num-samples", type=int, default=None,
                             help="kept draws per chain (default 1000, 200 with --quick)")
    demo_parser.add_argument("--quick", action="store_true",
                             help="500 observations instead of 2000 and 200 draws per chain")
    demo_parser.add_argument("--out", metavar="DIR", default="unnorm-demo",
                             help="folder for the pictures and the NetCDF draws (default "
                                  "./unnorm-demo, created if needed)")
    demo_parser.add_argument("--progress-bar", action="store_true", help="show progress bars")

    def command(name: str, summary: str, example: str) -> argparse.ArgumentParser:
        description = textwrap.fill(f"{summary[0].upper()}{summary[1:]}. FILE.py is executed as "
                                    "Python to find the model, so run only files you trust.")
        sub = commands.add_parser(name, help=summary.replace("%", "%%"), description=description,
                                  epilog=f"example:\n  {example}",
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
        sub.add_argument("model", metavar="FILE.py:MODEL", help=_MODEL_HELP)
        return sub

    def seed(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--seed", type=_count(0), default=0,
                         help="the key jax.random.key(SEED) (default 0)")

    fit = command("fit", "fit the model's parameters to data with one estimator and print "
                  "estimates, standard errors and 95% intervals",
                  "unnorm fit examples/gaussian_model.py:model examples/gaussian_data.csv "
                  "--estimator sm --out fit.json")
    fit.add_argument("data", metavar="DATA", help=_DATA_HELP)
    fit.add_argument("--estimator", required=True, metavar="NAME",
                     help="sm, dsm, ssm, nce, ksd, mle, cd, pcd, pl, rm or mpf")
    fit.add_argument("--out", metavar="FILE.json", help="save the fit (JSON, with its arrays in "
                     ".npz beside it; read it back with unnorm.load_fit)")
    seed(fit)
    fit.add_argument("--num-steps", type=_count(1), metavar="N",
                     help="most optimizer steps (default: unnorm.fit's, 3000)")
    fit.add_argument("--no-stderr", action="store_true",
                     help="skip the standard errors and intervals")

    sample = command("sample", "draw samples from the model and print ArviZ's summary",
                     "unnorm sample examples/gaussian_model.py:model --sampler nuts "
                     "--out draws.nc")
    sample.add_argument("--sampler", required=True, metavar="NAME",
                        help="nuts, hmc, mala, langevin, rwmh, annealed_langevin, tempering "
                        "(continuous models), gibbs (binary and spin models)")
    sample.add_argument("--params", metavar="FILE.json",
                        help="sample at the estimates of a fit saved by 'unnorm fit --out' "
                        "(default: the model's own parameters)")
    sample.add_argument("--num-chains", type=_count(1), default=4, metavar="N",
                        help="chains (default 4)")
    sample.add_argument("--num-samples", type=_count(1), default=1000, metavar="N",
                        help="kept draws per chain (default 1000)")
    sample.add_argument("--num-warmup", type=_count(0), default=500, metavar="N",
                        help="warmup steps per chain, discarded (default 500)")
    seed(sample)
    sample.add_argument("--out", metavar="FILE.nc", help="write the draws as NetCDF "
                        "(read them with arviz.from_netcdf)")

    compare = command("compare", "fit the model to data with several estimators and print one "
                      "table", "unnorm compare examples/gaussian_model.py:model "
                      "examples/gaussian_data.csv --estimators sm,ssm,nce")
    compare.add_argument("data", metavar="DATA", help=_DATA_HELP)
    compare.add_argument("--estimators", metavar="NAMES", help="estimator names separated by "
                         "commas, e.g. sm,ssm,nce (default: every estimator that applies to the "
                         "model)")
    seed(compare)
    compare.add_argument("--num-steps", type=_count(1), metavar="N",
                         help="most optimizer steps of each fit (default: unnorm.fit's, 3000)")
    compare.add_argument("--out", metavar="FILE.csv", help="write the table as CSV")
    return parser


def _run_command(args) -> None:
    """Run ``unnorm fit``, ``sample`` or ``compare``; bad input ends it with one line on stderr."""
    from . import cli_commands

    try:
        cli_commands.run(args, sys.stdout)
    except cli_commands.CommandError as err:
        _fail(str(err), err.code)
    except BrokenPipeError:  # the reader of the output went away (`| head`): stop quietly
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise SystemExit(1) from None


def main(argv: list[str] | None = None) -> int:
    parser = _build_parser()
    args = parser.parse_args(argv)
    if args.version:
        import unnorm

        print(unnorm.__version__)
        return 0
    if args.command == "demo":
        if args.num_samples is not None and args.num_samples < 1:
            parser.error(f"--num-samples must be >= 1; got {args.num_samples}")
        demo(seed=args.seed, num_samples=args.num_samples, progress_bar=args.progress_bar,
             folder=args.out, quick=args.quick)
        return 0
    if args.command in ("fit", "sample", "compare"):
        _run_command(args)
        return 0
    parser.print_help()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
