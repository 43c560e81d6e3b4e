"""``unnorm demo``: every estimator on one model, every sampler on another, next to the truth.

The demo fits a 2-D Gaussian to simulated data with every estimator, printing each estimator's
estimates, standard errors and errors in standard errors as its fit ends; samples a correlated
2-D Gaussian with every continuous sampler and a 10-spin Ising chain with Gibbs, printing ArviZ
diagnostics and the draws' moments next to the exact ones; and computes the chain's log Z
exactly and by annealed importance sampling. With a folder, it also writes the pictures of
:mod:`unnorm.plots` and every sampler's draws as NetCDF there.
"""

from __future__ import annotations

import sys
import time
import warnings
from pathlib import Path

import numpy as np

__all__ = ["demo"]

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


def _fit_table(un, say, seed: int, mean: np.ndarray, precision: np.ndarray, n: int):
    """Fit a 2-D Gaussian to ``n`` simulated observations with every estimator; print each
    estimator's estimates and standard errors next to the truth as soon as its fit finishes.
    Returns the stacked table, the fits by label, the data and the truth."""
    import jax
    import pandas as pd

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
    tables, all_fits = [], {}
    for estimator in estimators:
        with warnings.catch_warnings():
            # the chain-based fits sample the fitted model; their convergence is not the point
            warnings.simplefilter("ignore", un.ConvergenceWarning)
            # un.compare one estimator at a time (the same key for each, as one call would
            # pass): its table, and the fit's line printed as soon as it is done
            table, fits = un.compare(model, data, [estimator], key=key, truth=truth,
                                     progress_bar=False, return_fits=True, num_steps=1500)
        (name, fit), = fits.items()
        tables.append(table)
        all_fits[name] = fit
        for line in _fit_rows(f"{name} ({fit.method})", table, truth_flat,
                              float(table["time_s"].iloc[0])):
            say(line)
        if name == "nce":
            say(f"{'':<35}NCE's learned log Z: {float(fit.nuisance['log_z']):.4f} ± "
                f"{float(fit.nuisance_stderr['log_z']):.4f} (exact at the truth: "
                f"{np.log(2 * np.pi) - 0.5 * np.linalg.slogdet(precision)[1]:.4f})")
    say("(DSM fits the density of x + σz, so its precision is biased by about σ²Λ²; the 95% "
        "intervals of SM and SSM cover the truth about 95% of the time.)\n")
    return pd.concat(tables, ignore_index=True), all_fits, data, truth


def draws_for_test(un, model, key) -> np.ndarray:
    """500 exact (independent) draws of the demo's Gaussian: the Stein test assumes i.i.d. data,
    which MCMC draws are not."""
    import jax

    prec = np.asarray(model.params["prec"], dtype=float)
    cov = np.linalg.inv(prec)
    seed = int(np.asarray(jax.random.key_data(key)).ravel()[-1])
    return np.random.default_rng(seed).multivariate_normal(np.zeros(2), cov, size=500)


def demo(seed: int = 0, num_samples: int | None = None, progress_bar: bool = False, out=None,
         folder: str | Path | None = None, quick: bool = False) -> list[Path]:
    """Fit a 2-D Gaussian with every estimator; sample a correlated 2-D Gaussian with every
    continuous sampler and a 10-spin Ising chain with Gibbs; print the fits, ArviZ summaries,
    the truth, and the exact log Z of the chain.

    Parameters
    ----------
    seed : int
        Seeds the simulated data and every key.
    num_samples : int, optional
        Kept draws per chain of each sampler; default 1000 (200 with ``quick``).
    progress_bar : bool
        Show the samplers' progress bars.
    out : file, optional
        Where the text goes (default ``sys.stdout``).
    folder : str or Path, optional
        Write the pictures (``compare.png``: every estimator's intervals and the truth;
        ``fit_sm.png``, ``fit_pcd.png``: loss traces; ``fit_energy.png``: the SM fit's energy
        over the data; ``energy_nuts.png``: the sampled model's energy under NUTS's draws)
        and each sampler's draws (``draws_<sampler>.nc``, NetCDF that ``az.from_netcdf`` reads)
        into this folder, created if needed.
    quick : bool
        500 observations instead of 2000 and 200 draws per chain: every estimator and sampler
        still runs, with wider intervals.

    Returns
    -------
    list of Path
        The files written (empty without ``folder``).
    """
    import arviz as az
    import jax
    import jax.numpy as jnp
    import pandas as pd

    import unnorm as un

    out = out or sys.stdout

    def say(text: str = "") -> None:
        print(text, file=out, flush=True)

    if num_samples is None:
        num_samples = 200 if quick else 1000
    rho = 0.75
    cov = jnp.array([[1.0, rho], [rho, 1.0]])
    gaussian = un.models.gaussian(2, precision=jnp.linalg.inv(cov))
    table, fits, data, truth = _fit_table(un, say, seed, np.array([1.0, -0.5]),
                                          np.asarray(jnp.linalg.inv(cov)),
                                          500 if quick else 2000)
    draws_by_sampler = {}
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
        draws_by_sampler[sampler] = idata
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
    draws_by_sampler["gibbs"] = idata
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
    if folder is None:
        return []
    written = _write_folder(un, Path(folder), table, fits, data, truth, gaussian,
                            draws_by_sampler)
    say(f"\nWrote {len(written)} files into {Path(folder).resolve()}: "
        + ", ".join(path.name for path in written))
    return written


def _write_folder(un, folder: Path, table, fits, data, truth, gaussian, draws_by_sampler):
    """The demo's pictures and NetCDF draws, written into ``folder``."""
    import matplotlib

    matplotlib.use("Agg", force=False)  # files only: no window, whatever the backend
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    written = []

    def save(axes, name: str) -> None:
        figure = np.ravel(axes)[0].figure
        figure.savefig(folder / name, dpi=120, bbox_inches="tight")
        plt.close(figure)
        written.append(folder / name)

    save(un.plots.plot_compare(table, truth=truth), "compare.png")
    save(un.plots.plot_fit(fits["sm"]), "fit_sm.png")
    save(un.plots.plot_fit(fits["pcd"]), "fit_pcd.png")
    save(un.plots.plot_energy(un.models.gaussian(2), fits["sm"].params, data=data),
         "fit_energy.png")
    save(un.plots.plot_energy(gaussian, gaussian.params,
                              samples=draws_by_sampler["nuts"]), "energy_nuts.png")
    for sampler, idata in draws_by_sampler.items():
        path = folder / f"draws_{sampler}.nc"
        un.to_netcdf(idata, path)
        written.append(path)
    return written


