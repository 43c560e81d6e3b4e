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
import time
import warnings

import numpy as np

__all__ = ["main", "demo"]

# The samplers the demo shows on its continuous model.
_DEMO_SAMPLERS = ("nuts", "hmc", "mala", "langevin", "rwmh")


def _fit_rows(label: str, table, truth_flat: np.ndarray, seconds: float) -> list[str]:
    """One estimator's lines of the demo's fit table: truth, estimate, standard error, the
    error in standard errors and the seconds of the fit (on its first line)."""
    lines = []
    for row, (_, entry) in enumerate(table.iterrows()):
        if row >= truth_flat.size:  # nuisance rows (NCE's log Z) are printed on their own
            break
        z = (entry["estimate"] - truth_flat[row]) / entry["std_err"]
        lines.append(f"{label if row == 0 else '':<35}{entry['parameter']:<10}"
                     f"{truth_flat[row]:>8.4f}{entry['estimate']:>10.4f}{entry['std_err']:>9.4f}"
                     f"{z:>8.2f}" + (f"{seconds:>9.1f}" if row == 0 else ""))
    return lines


def _fit_table(un, say, seed: int, mean: np.ndarray, precision: np.ndarray) -> None:
    """Fit a 2-D Gaussian to simulated data with every estimator; print each estimator's
    estimates and standard errors next to the truth as soon as its fit finishes."""
    import jax

    n = 2000
    data = np.random.default_rng(seed).multivariate_normal(mean, np.linalg.inv(precision), n)
    truth = {"mu": mean, "prec": precision}
    truth_flat = np.concatenate([mean.ravel(), precision.ravel()])
    estimators = ["sm", un.estimators.SSM(num_projections=1),
                  un.estimators.DSM(sigma=0.05),
                  un.estimators.NCE(nu=4), un.estimators.MLE(),
                  un.estimators.PCD(k=5, num_chains=64)]
    if "ksd" in un.estimators.ESTIMATORS:
        estimators.append("ksd")
    say(f"Fitting mu and prec of a 2-D Gaussian from n = {n} simulated observations; each "
        "estimator's lines print as its fit ends\n(z = (estimate - truth) / std_err, seconds "
        "include compilation):\n")
    say(f"{'estimator':<35}{'parameter':<10}{'truth':>8}{'estimate':>10}{'std_err':>9}"
        f"{'z':>8}{'seconds':>9}")
    key = jax.random.key(seed)
    model = un.models.gaussian(2)
    for estimator in estimators:
        with warnings.catch_warnings():
            # the chain-based fits sample the fitted model; their convergence is not the point
            warnings.simplefilter("ignore", un.ConvergenceWarning)
            # un.compare one estimator at a time (the same key for each, as one call would
            # pass): its table, and the fit's line printed as soon as it is done
            table, fits = un.compare(model, data, [estimator], key=key, truth=truth,
                                     progress_bar=False, return_fits=True, num_steps=1500)
        (name, fit), = fits.items()
        for line in _fit_rows(f"{name} ({fit.method})", table, truth_flat,
                              float(table["time_s"].iloc[0])):
            say(line)
        if name == "nce":
            say(f"{'':<35}NCE's learned log Z: {float(fit.nuisance['log_z']):.4f} ± "
                f"{float(fit.nuisance_stderr['log_z']):.4f} (exact at the truth: "
                f"{np.log(2 * np.pi) - 0.5 * np.linalg.slogdet(precision)[1]:.4f})")
    say("(DSM fits the density of x + σz, so its precision is biased by about σ²Λ²; the 95% "
        "intervals of SM and SSM cover the truth about 95% of the time.)\n")


def draws_for_test(un, model, key) -> np.ndarray:
    """500 exact (independent) draws of the demo's Gaussian: the Stein test assumes i.i.d. data,
    which MCMC draws are not."""
    import jax

    prec = np.asarray(model.params["prec"], dtype=float)
    cov = np.linalg.inv(prec)
    seed = int(np.asarray(jax.random.key_data(key)).ravel()[-1])
    return np.random.default_rng(seed).multivariate_normal(np.zeros(2), cov, size=500)


def demo(seed: int = 0, num_samples: int = 1000, progress_bar: bool = False, out=None) -> None:
    """Fit a 2-D Gaussian with every estimator; sample a correlated 2-D Gaussian with every
    continuous sampler and a 10-spin Ising chain with Gibbs; print the fits, ArviZ summaries,
    the truth, and the exact log Z of the chain."""
    import arviz as az
    import jax
    import jax.numpy as jnp
    import pandas as pd

    import unnorm as un

    out = out or sys.stdout

    def say(text: str = "") -> None:
        print(text, file=out, flush=True)

    rho = 0.75
    cov = jnp.array([[1.0, rho], [rho, 1.0]])
    gaussian = un.models.gaussian(2, precision=jnp.linalg.inv(cov))
    _fit_table(un, say, seed, np.array([1.0, -0.5]), np.asarray(jnp.linalg.inv(cov)))
    say(f"unnorm {un.__version__} demo: the energy E(x) = ½ xᵀ Σ⁻¹ x with unit variances and "
        f"correlation {rho}.")
    # steps per kept draw, as each sampler's spec says: the local samplers move less per step
    thinnings = {name: un.samplers.SAMPLERS[name].thinning for name in _DEMO_SAMPLERS}
    say(f"Each sampler: 4 chains, 500 warmup steps, {num_samples} kept draws (thinning: "
        + ", ".join(f"{name} {k}" for name, k in thinnings.items() if k > 1) + ").\n")
    rows = []
    key = jax.random.key(seed)
    for index, (sampler, thinning) in enumerate(thinnings.items()):
        started = time.perf_counter()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", un.ConvergenceWarning)
            idata = un.sample(gaussian, gaussian.params, key=jax.random.fold_in(key, index),
                              sampler=sampler, num_chains=4, num_warmup=500,
                              num_samples=num_samples, thinning=thinning,
                              progress_bar=progress_bar)
        seconds = time.perf_counter() - started
        draws = np.asarray(idata.posterior["x"]).reshape(-1, 2)
        say(f"── {sampler} ({seconds:.1f} s) " + "─" * 40)
        say(az.summary(idata, var_names=["x"], kind="diagnostics").to_string())
        for warning in caught:
            say(f"  warning: {warning.message}")
        rows.append({
            "sampler": sampler,
            "mean[0]": draws[:, 0].mean(),
            "mean[1]": draws[:, 1].mean(),
            "var[0]": draws[:, 0].var(),
            "var[1]": draws[:, 1].var(),
            "corr": np.corrcoef(draws.T)[0, 1],
            "accept": float(np.mean(idata.sample_stats["acceptance_rate"])),
            "divergent": int(np.sum(idata.sample_stats["diverging"])),
            "seconds": seconds,
        })
    rows.append({"sampler": "truth", "mean[0]": 0.0, "mean[1]": 0.0, "var[0]": 1.0,
                 "var[1]": 1.0, "corr": rho})
    say("\nMoments of the draws against the truth:")
    say(pd.DataFrame(rows).set_index("sampler").round(3).to_string(na_rep=""))

    chain = un.models.ising_chain(10, coupling=0.5, field=0.2)
    say("\n── gibbs on a 10-spin Ising chain, E(x) = -0.5 Σ x_i x_{i+1} - 0.2 Σ x_i "
        + "─" * 10)
    started = time.perf_counter()
    idata = un.sample(chain, chain.params, key=jax.random.fold_in(key, 99), sampler="gibbs",
                      num_chains=4, num_warmup=200, num_samples=num_samples,
                      progress_bar=progress_bar)
    seconds = time.perf_counter() - started
    say(az.summary(idata, var_names=["x"], kind="diagnostics").head(4).to_string())
    magnetization = float(np.asarray(idata.posterior["x"]).mean())
    configs = chain.support.enumerate()
    energies = jax.vmap(lambda x: chain.energy(chain.params, x))(configs)
    weights = np.exp(-(np.asarray(energies, dtype=float) - float(np.min(energies))))
    exact = float((weights[:, None] * np.asarray(configs)).sum() / weights.sum() / 10)
    lz = un.log_partition(chain, chain.params, method="exact")
    ais = un.log_partition(chain, chain.params, method="ais", key=jax.random.fold_in(key, 100),
                           progress_bar=progress_bar)
    say(f"mean spin: Gibbs {magnetization:.3f}, exact {exact:.3f}   ({seconds:.1f} s)")
    say(f"log Z: exact over 2^10 configurations {lz.estimate:.6f}; annealed importance "
        f"sampling {ais.estimate:.4f} ± {ais.stderr:.4f}")
    test = un.ksd_test(gaussian, gaussian.params, draws_for_test(un, gaussian, key),
                       key=jax.random.fold_in(key, 101))
    say(f"kernel Stein test of exact N(0, Σ) draws against the model: p = {test.pvalue:.3f}")


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
    demo_parser.add_argument("--num-samples", type=int, default=1000,
                             help="kept draws per chain (default 1000)")
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
        if args.num_samples < 1:
            parser.error(f"--num-samples must be >= 1; got {args.num_samples}")
        demo(seed=args.seed, num_samples=args.num_samples, progress_bar=args.progress_bar)
        return 0
    if args.command in ("fit", "sample", "compare"):
        _run_command(args)
        return 0
    parser.print_help()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
