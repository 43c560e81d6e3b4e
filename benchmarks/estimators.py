"""Training speed of the score-matching estimators: ``un.fit`` against TorchEBM and a
hand-written JAX loop.

Run from the repository root (needs the ``bench`` extra: TorchEBM and a CPU build of PyTorch)::

    python benchmarks/estimators.py              # full run (under 10 minutes on 2 CPU cores)
    python benchmarks/estimators.py --quick      # small sizes, a smoke test of the script
    python benchmarks/estimators.py --only ssm --dims 2,256

The model is a neural energy ``E(x) = MLP(x)``: input d, two hidden layers of 128 units with
SiLU, a scalar output. Minibatches of 256 rows are drawn from n = 2048 standard-normal points
(the data do not matter for the timing), and each optimizer step is one Adam update (learning
rate 1e-3) on one of three losses (Song & Kingma 2021; with ``p ∝ exp(-E)``):

* ``sm``: exact score matching (Hyvärinen 2005, eq. 8 with the sign of ``p ∝ exp(-E)``),
  ``½‖∇ₓE‖² - tr ∇ₓ²E``;
* ``dsm``: denoising score matching with Gaussian noise σ = 0.1 (eq. 11),
  ``½‖z/σ - ∇ₓE(x + σz)‖²``;
* ``ssm``: sliced score matching with one Gaussian projection ``v`` (eq. 15/17).

Three implementations, same machine, same run, the same initial weights:

1. ``torchebm``: TorchEBM's ``ScoreMatching(hessian_method="exact")``,
   ``DenoisingScoreMatching(noise_scale=σ)`` and ``SlicedScoreMatching(n_projections=1,
   projection_type="gaussian")`` on a ``torchebm.core.BaseModel`` wrapping the same MLP, trained
   with ``torch.optim.Adam`` in a plain Python loop (``torch.randint`` minibatch, ``zero_grad``,
   loss, ``backward``, ``step``). PyTorch runs with 2 threads (``torch.set_num_threads(2)``).
2. ``jax``: a hand-written loop: one jitted function running a ``lax.scan`` of steps, each of
   which draws a minibatch, computes the loss (the energy of one observation, ``vmap``-ed over
   the batch) and applies ``optax.adam``.
3. ``unnorm``: ``un.fit(model, data, estimator=un.estimators.SM() |
   DSM(sigma=σ, control_variate=False) | SSM(num_projections=1), optimizer=optax.adam(1e-3),
   num_steps=N, batch_size=256, progress_bar=False, stderr=False)``. Skipped, with a message,
   when ``un.fit`` is missing.

The metric is wall time per optimizer step, the median over repeats of (block time / steps).
JAX timings are of warm calls (the same jitted function, or ``un.fit`` with the same ``Model``
and the same optimizer object, called again); the first call's extra time (compilation and
one-time setup) is reported apart. TorchEBM runs a few untimed steps before its timed blocks.
The repeats of the three implementations are interleaved, so load from other processes falls on
all of them alike.

Before timing, the losses are checked against each other on one fixed batch at the initial
weights: TorchEBM's against the hand-written JAX losses (with TorchEBM's noise and projections
replaced by the same draws), and ``un.fit``'s first recorded loss for exact SM (which draws no
noise) against the hand-written one.

Results go to ``benchmarks/results/estimators.json`` (``--out`` to change) and a table is
printed. Speed is measured here and never asserted in the tests.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import warnings
from pathlib import Path

import folx
import jax
import jax.numpy as jnp
import machine  # benchmarks/machine.py: this script's folder is on sys.path
import numpy as np
import optax

import unnorm as un

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "estimators.json"

LOSSES = ("sm", "dsm", "ssm")
IMPLS = ("torchebm", "jax", "jax-hvp", "unnorm")
TORCH_THREADS = 2

#: Steps per timed block, per (loss, d): about 0.5-5 s of work per block and implementation.
FULL = {
    "dims": [2, 32, 256], "n": 2048, "batch_size": 256, "hidden": 128, "learning_rate": 1e-3,
    "sigma": 0.1, "repeats": 5,
    "steps": {"sm": {"2": 200, "32": 20, "256": 3},
              "dsm": {"2": 500, "32": 500, "256": 300},
              "ssm": {"2": 500, "32": 300, "256": 100}},
    #: fewer repeats where one block takes seconds
    "repeats_override": {"sm:256": 3},
    "torch_warmup_steps": 3,
}
QUICK = {
    **FULL, "dims": [2, 32], "repeats": 2,
    "steps": {"sm": {"2": 20, "32": 4}, "dsm": {"2": 50, "32": 50}, "ssm": {"2": 50, "32": 50}},
    "repeats_override": {},
}


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


# ---------------------------------------------------------------------------------------------
# the energy and the losses in JAX


def init_mlp(d: int, hidden: int, seed: int = 0) -> list[dict]:
    """PyTorch's default ``nn.Linear`` initialization (uniform ±1/√fan_in for weights and
    biases), drawn with NumPy; the TorchEBM model is given the same values."""
    rng = np.random.default_rng(seed)
    layers = []
    for fan_in, fan_out in ((d, hidden), (hidden, hidden), (hidden, 1)):
        bound = 1.0 / math.sqrt(fan_in)
        layers.append({"w": rng.uniform(-bound, bound, (fan_in, fan_out)).astype(np.float32),
                       "b": rng.uniform(-bound, bound, (fan_out,)).astype(np.float32)})
    return layers


def mlp_energy(params, x):
    """``E(x)`` for ONE observation ``x`` of shape (d,): a scalar."""
    net = params["net"]
    h = jax.nn.silu(x @ net[0]["w"] + net[0]["b"])
    h = jax.nn.silu(h @ net[1]["w"] + net[1]["b"])
    return (h @ net[2]["w"] + net[2]["b"])[0]


def sm_term(params, x):
    """``½‖∇ₓE‖² - tr ∇ₓ²E`` at one observation; gradient and Laplacian from one forward
    Laplacian pass (``folx``), the algorithm ``un.estimators.SM`` uses."""
    out = folx.forward_laplacian(lambda y: mlp_energy(params, y), sparsity_threshold=0)(x)
    return 0.5 * jnp.sum(out.jacobian.dense_array**2) - out.laplacian


def sm_term_hvp(params, x):
    """The same loss with the Hessian diagonal from ``d`` forward-over-reverse Hessian-vector
    products (the d×d Hessian is not stored): the textbook way, as a reference."""
    grad_fn = jax.grad(lambda y: mlp_energy(params, y))
    grad = grad_fn(x)
    diag = jax.vmap(lambda e: jnp.vdot(e, jax.jvp(grad_fn, (x,), (e,))[1]))(jnp.eye(x.size))
    return 0.5 * jnp.sum(grad**2) - jnp.sum(diag)


def dsm_term(params, x, z, sigma):
    """``½‖z/σ - ∇ₓE(x + σz)‖²`` (Song & Kingma 2021, eq. 11 with ``∇ log p = -∇E``)."""
    residual = z / sigma - jax.grad(mlp_energy, argnums=1)(params, x + sigma * z)
    return 0.5 * jnp.sum(residual**2)


def ssm_term(params, x, v, variance_reduction=True):
    """``½‖∇ₓE‖² - vᵀ∇ₓ²E v`` (eq. 17, the default) or ``½(vᵀ∇ₓE)² - vᵀ∇ₓ²E v`` (eq. 15):
    one Hessian-vector product."""
    grad, hv = jax.jvp(jax.grad(lambda y: mlp_energy(params, y)), (x,), (v,))
    first = 0.5 * jnp.sum(grad**2) if variance_reduction else 0.5 * jnp.vdot(v, grad) ** 2
    return first - jnp.vdot(v, hv)


def batch_loss(loss: str, params, x, key, sigma: float, hvp: bool = False):
    """Mean loss over a minibatch ``x`` (b, d); ``key`` draws the noise or projections;
    ``hvp`` computes SM's trace by Hessian-vector products instead of the forward Laplacian."""
    if loss == "sm":
        return jnp.mean(jax.vmap(sm_term_hvp if hvp else sm_term, (None, 0))(params, x))
    noise = jax.random.normal(key, x.shape, x.dtype)
    if loss == "dsm":
        return jnp.mean(jax.vmap(dsm_term, (None, 0, 0, None))(params, x, noise, sigma))
    return jnp.mean(jax.vmap(ssm_term, (None, 0, 0))(params, x, noise))


# ---------------------------------------------------------------------------------------------
# implementations: each is a function seed -> {"seconds", "steps", "final_loss"}


def jax_impl(loss: str, d: int, data: np.ndarray, cfg: dict, steps: int, hvp: bool = False):
    params = {"net": [{k: jnp.asarray(v) for k, v in layer.items()}
                      for layer in init_mlp(d, cfg["hidden"])]}
    data = jnp.asarray(data)
    n, batch, sigma = data.shape[0], cfg["batch_size"], cfg["sigma"]
    optimizer = optax.adam(cfg["learning_rate"])

    @jax.jit
    def train(params, data, key):
        def step(carry, key):
            params, opt_state = carry
            batch_key, noise_key = jax.random.split(key)
            x = data[jax.random.randint(batch_key, (batch,), 0, n)]
            value, grads = jax.value_and_grad(
                lambda p: batch_loss(loss, p, x, noise_key, sigma, hvp))(params)
            updates, opt_state = optimizer.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), value

        carry = (params, optimizer.init(params))
        (params, _), losses = jax.lax.scan(step, carry, jax.random.split(key, steps))
        return params, losses

    def run(seed):
        (_, losses), seconds = timed(
            lambda: jax.tree.map(np.asarray, train(params, data, jax.random.key(seed))))
        return {"seconds": seconds, "steps": steps, "final_loss": float(losses[-1])}

    return run


def unnorm_impl(loss: str, d: int, data: np.ndarray, cfg: dict, steps: int):
    params = {"net": [{k: jnp.asarray(v) for k, v in layer.items()}
                      for layer in init_mlp(d, cfg["hidden"])]}
    model = un.Model(mlp_energy, params=params, support=un.supports.real(d))
    estimator = {"sm": lambda: un.estimators.SM(),
                 "dsm": lambda: un.estimators.DSM(sigma=cfg["sigma"], control_variate=False),
                 "ssm": lambda: un.estimators.SSM(num_projections=1)}[loss]()
    optimizer = optax.adam(cfg["learning_rate"])

    def run(seed):
        fit, seconds = timed(lambda: un.fit(
            model, data, estimator=estimator, key=jax.random.key(seed), optimizer=optimizer,
            num_steps=steps, batch_size=cfg["batch_size"], progress_bar=False, stderr=False))
        return {"seconds": seconds, "steps": int(fit.num_steps),
                "wall_time": float(fit.wall_time), "final_loss": float(np.asarray(fit.loss)[-1])}

    return run


def torch_model(d: int, hidden: int):
    import torch
    from torch import nn
    from torchebm.core import BaseModel

    class MLPEnergy(BaseModel):
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Linear(d, hidden), nn.SiLU(), nn.Linear(hidden, hidden),
                                     nn.SiLU(), nn.Linear(hidden, 1))

        def forward(self, x):
            return self.net(x).squeeze(-1)

    model = MLPEnergy()
    with torch.no_grad():
        for layer, values in zip(model.net[::2], init_mlp(d, hidden), strict=True):
            layer.weight.copy_(torch.from_numpy(values["w"].T.copy()))
            layer.bias.copy_(torch.from_numpy(values["b"]))
    return model


def torch_loss(loss: str, model, cfg: dict):
    from torchebm.losses import DenoisingScoreMatching, ScoreMatching, SlicedScoreMatching

    if loss == "sm":
        return ScoreMatching(model=model, hessian_method="exact")
    if loss == "dsm":
        return DenoisingScoreMatching(model=model, noise_scale=cfg["sigma"])
    return SlicedScoreMatching(model=model, n_projections=1, projection_type="gaussian")


def torch_impl(loss: str, d: int, data: np.ndarray, cfg: dict, steps: int):
    import torch

    model = torch_model(d, cfg["hidden"])
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    loss_fn = torch_loss(loss, model, cfg)
    data = torch.from_numpy(data)
    n, batch = data.shape[0], cfg["batch_size"]

    def train(num_steps, seed):
        model.load_state_dict(initial)
        optimizer = torch.optim.Adam(model.parameters(), lr=cfg["learning_rate"])
        generator = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)

        def loop():
            losses = []
            for _ in range(num_steps):
                x = data[torch.randint(0, n, (batch,), generator=generator)]
                optimizer.zero_grad()
                value = loss_fn(x)
                value.backward()
                optimizer.step()
                losses.append(value.detach())
            return torch.stack(losses).numpy()

        return timed(loop)

    def run(seed):
        losses, seconds = train(steps, seed)
        return {"seconds": seconds, "steps": steps, "final_loss": float(losses[-1])}

    train(cfg["torch_warmup_steps"], 0)  # untimed: first-iteration allocations
    return run


# ---------------------------------------------------------------------------------------------
# the losses agree


def check_losses(d: int, cfg: dict, have_fit: bool) -> dict:
    """Every implementation's loss on one fixed batch of 64 rows at the initial weights.

    TorchEBM's noise and projections are replaced by the draws the JAX losses get; its SSM is
    eq. 15, so it is checked against the eq. 15 form of the hand-written loss. ``un.fit``'s
    first recorded loss is checked for exact SM only (its noise is keyed in its own way)."""
    import torch
    from torchebm.losses import DenoisingScoreMatching, SlicedScoreMatching

    rng = np.random.default_rng(7)
    x = rng.normal(size=(64, d)).astype(np.float32)
    noise = rng.normal(size=(64, d)).astype(np.float32)
    sigma = cfg["sigma"]
    params = {"net": [{k: jnp.asarray(v) for k, v in layer.items()}
                      for layer in init_mlp(d, cfg["hidden"])]}
    ours = {
        "sm": jnp.mean(jax.vmap(sm_term, (None, 0))(params, x)),
        "sm_hvp": jnp.mean(jax.vmap(sm_term_hvp, (None, 0))(params, x)),
        "dsm": jnp.mean(jax.vmap(dsm_term, (None, 0, 0, None))(params, x, noise, sigma)),
        "ssm_eq15": jnp.mean(jax.vmap(lambda p, a, v: ssm_term(p, a, v, False),
                                      (None, 0, 0))(params, x, noise)),
    }

    model = torch_model(d, cfg["hidden"])
    fixed = torch.from_numpy(noise)

    class FixedNoiseDSM(DenoisingScoreMatching):
        def perturb_data(self, x, generator=None):
            return x + sigma * fixed, sigma * fixed

    class FixedProjectionSSM(SlicedScoreMatching):
        def _get_random_projections(self, shape, generator=None):
            return fixed.clone()

    xt = torch.from_numpy(x)
    theirs = {
        "sm": torch_loss("sm", model, cfg)(xt),
        "sm_hvp": torch_loss("sm", model, cfg)(xt),
        "dsm": FixedNoiseDSM(model=model, noise_scale=sigma)(xt),
        "ssm_eq15": FixedProjectionSSM(model=model, n_projections=1,
                                       projection_type="gaussian")(xt),
    }
    out = {}
    for name in ours:
        a, b = float(ours[name]), float(theirs[name].detach())
        out[name] = {"jax": a, "torchebm": b, "rel_diff": abs(a - b) / max(abs(a), 1e-12)}
    if have_fit:
        model_un = un.Model(mlp_energy, params=params, support=un.supports.real(d))
        with warnings.catch_warnings():  # one full-batch step: "did not converge"
            warnings.simplefilter("ignore", RuntimeWarning)
            fit = un.fit(model_un, x, estimator=un.estimators.SM(), key=jax.random.key(0),
                         optimizer=optax.sgd(0.0), num_steps=1, batch_size=64,
                         progress_bar=False, stderr=False)
        a, b = float(ours["sm"]), float(np.asarray(fit.loss)[0])
        out["sm"]["unnorm"] = b
        out["sm"]["rel_diff_unnorm"] = abs(a - b) / max(abs(a), 1e-12)
    return out


# ---------------------------------------------------------------------------------------------
# driver


def run_cell(loss: str, d: int, cfg: dict, impls: list[str], rows: list) -> None:
    steps = cfg["steps"][loss][str(d)]
    repeats = cfg["repeats_override"].get(f"{loss}:{d}", cfg["repeats"])
    data = np.random.default_rng(d).normal(size=(cfg["n"], d)).astype(np.float32)
    factories = {"torchebm": torch_impl, "jax": jax_impl, "unnorm": unnorm_impl,
                 "jax-hvp": lambda *args: jax_impl(*args, hvp=True)}
    if loss != "sm":  # the Hessian-vector variant differs from "jax" in SM only
        impls = [impl for impl in impls if impl != "jax-hvp"]
    runs, first = {}, {}
    for impl in impls:
        runs[impl], setup = timed(lambda impl=impl: factories[impl](loss, d, data, cfg, steps))
        if impl != "torchebm":
            first[impl] = runs[impl](0)  # compiles
            first[impl]["seconds"] += setup
    measured = {impl: [] for impl in impls}
    for seed in range(1, repeats + 1):
        for impl in impls:
            measured[impl].append(runs[impl](seed))
    for impl in impls:
        results = measured[impl]
        per_step = [r["seconds"] / r["steps"] for r in results]
        row = {"loss": loss, "dim": d, "impl": impl, "steps": results[0]["steps"],
               "repeats": repeats, "ms_per_step": 1e3 * float(np.median(per_step)),
               "ms_per_step_min": 1e3 * float(np.min(per_step)),
               "ms_per_step_all": [1e3 * t for t in per_step],
               "final_loss": results[-1]["final_loss"]}
        if impl == "unnorm":
            row["wall_time_ms_per_step"] = 1e3 * float(np.median(
                [r["wall_time"] / r["steps"] for r in results]))
        if impl in first:
            warm = float(np.median([r["seconds"] for r in results]))
            row["first_call_seconds"] = first[impl]["seconds"]
            row["first_call_extra_seconds"] = first[impl]["seconds"] - warm
        rows.append(row)
        print(f"  {loss:4} d={d:<4} {impl:9} {row['ms_per_step']:9.2f} ms/step "
              f"(min {row['ms_per_step_min']:.2f}, {row['steps']} steps x {repeats})", flush=True)


def geometric_mean(values):
    return float(np.exp(np.mean(np.log(values)))) if values else None


def summarize(rows: list) -> dict:
    cell = {(r["loss"], r["dim"], r["impl"]): r["ms_per_step"] for r in rows}
    cells = sorted({(r["loss"], r["dim"]) for r in rows}, key=lambda c: (LOSSES.index(c[0]), c[1]))
    ratios = []
    for loss, d in cells:
        entry = {"loss": loss, "dim": d}
        ours, hand, theirs = (cell.get((loss, d, i)) for i in ("unnorm", "jax", "torchebm"))
        if ours and theirs:
            entry["torchebm_over_unnorm"] = theirs / ours
        if hand and theirs:
            entry["torchebm_over_jax"] = theirs / hand
        if ours and hand:
            entry["unnorm_over_jax"] = ours / hand
        hvp = cell.get((loss, d, "jax-hvp"))
        if ours and hvp:
            entry["jax_hvp_over_unnorm"] = hvp / ours
        ratios.append(entry)
    summary = {"per_cell": ratios}
    for key in ("torchebm_over_unnorm", "torchebm_over_jax", "unnorm_over_jax"):
        values = [e[key] for e in ratios if key in e]
        summary[f"geomean_{key}"] = geometric_mean(values)
    dims = sorted({d for _, d in cells})
    growth = {}
    for impl in IMPLS:
        for loss in LOSSES:
            times = {d: cell[(loss, d, impl)] for d in dims if (loss, d, impl) in cell}
            if len(times) > 1:
                lo = min(times)
                growth[f"{loss}:{impl}"] = {f"{d}/{lo}": times[d] / times[lo]
                                            for d in sorted(times) if d != lo}
    summary["growth_with_d"] = growth
    return summary


def print_table(rows: list, summary: dict) -> None:
    cell = {(r["loss"], r["dim"], r["impl"]): r for r in rows}
    impls = [i for i in IMPLS if any(r["impl"] == i for r in rows)]
    header = f"{'loss':5} {'d':>4} " + "".join(f"{i + ' ms':>14}" for i in impls)
    header += f"{'torchebm/unnorm':>17}{'unnorm/jax':>12}{'jax 1st call s':>16}"
    print("\n" + header + "\n" + "-" * len(header))
    for e in summary["per_cell"]:
        loss, d = e["loss"], e["dim"]
        line = f"{loss:5} {d:>4} "
        for i in impls:
            r = cell.get((loss, d, i))
            line += f"{r['ms_per_step']:14.2f}" if r else f"{'':>14}"
        a, b = e.get("torchebm_over_unnorm"), e.get("unnorm_over_jax")
        line += f"{a:17.2f}" if a else f"{'':>17}"
        line += f"{b:12.2f}" if b else f"{'':>12}"
        r = cell.get((loss, d, "jax"))
        line += f"{r['first_call_extra_seconds']:16.1f}" if r else ""
        print(line)
    print()
    for key in ("torchebm_over_unnorm", "torchebm_over_jax", "unnorm_over_jax"):
        if summary[f"geomean_{key}"] is not None:
            print(f"geometric mean {key}: {summary[f'geomean_{key}']:.2f}")
    for name, ratio in summary["growth_with_d"].items():
        print(f"growth {name}: " + ", ".join(f"t(d={k.split('/')[0]})/t(d={k.split('/')[1]}) "
                                             f"= {v:.1f}" for k, v in ratio.items()))


def environment() -> dict:
    import torch

    env = machine.environment(("jax", "jaxlib", "optax", "numpy", "torch", "torchebm",
                               "unnorm"))
    env.update({"jax_devices": [str(dev) for dev in jax.devices()],
                "torch_threads": torch.get_num_threads(),
                "torch_interop_threads": torch.get_num_interop_threads()})
    return env


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (a smoke test)")
    parser.add_argument("--only", default="sm,dsm,ssm",
                        help="comma-separated subset of sm,dsm,ssm")
    parser.add_argument("--dims", help="comma-separated input dimensions (default 2,32,256)")
    parser.add_argument("--impls", default=",".join(IMPLS),
                        help="comma-separated subset of torchebm,jax,unnorm")
    parser.add_argument("--no-check", action="store_true", help="skip the loss cross-check")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON results file")
    args = parser.parse_args(argv)
    cfg = dict(QUICK if args.quick else FULL)

    losses = [s.strip() for s in args.only.split(",") if s.strip()]
    impls = [s.strip() for s in args.impls.split(",") if s.strip()]
    if sorted(set(losses) - set(LOSSES)):
        parser.error(f"--only: choose from {', '.join(LOSSES)}; got {args.only!r}")
    if sorted(set(impls) - set(IMPLS)):
        parser.error(f"--impls: choose from {', '.join(IMPLS)}; got {args.impls!r}")
    if args.dims:
        cfg["dims"] = [int(s) for s in args.dims.split(",")]
        for loss in LOSSES:
            known = cfg["steps"][loss]
            for d in cfg["dims"]:  # an unlisted d: the steps of the nearest listed one
                nearest = min(known, key=lambda k, d=d: abs(int(k) - d))
                known.setdefault(str(d), known[nearest])

    try:
        import torch
        import torchebm  # noqa: F401
    except ImportError as err:
        sys.exit(f"{err}: install the bench extra, pip install -e '.[bench]'")
    torch.set_num_threads(TORCH_THREADS)

    have_fit = hasattr(un, "fit") and hasattr(un, "estimators")
    if "unnorm" in impls and not have_fit:
        print("un.fit is not in this version of unnorm: the 'unnorm' implementation is skipped.")
        impls.remove("unnorm")

    env = environment()
    env["load_average_start"] = os.getloadavg()
    started = time.perf_counter()

    checks = {}
    if not args.no_check:
        for d in cfg["dims"]:
            checks[str(d)] = check_losses(d, cfg, have_fit and "unnorm" in impls)
            worst = max(max(v["rel_diff"], v.get("rel_diff_unnorm", 0.0))
                        for v in checks[str(d)].values())
            print(f"loss check d={d}: largest relative difference {worst:.1e}", flush=True)
            if worst > 1e-3:
                print(f"  the losses disagree: {json.dumps(checks[str(d)])}")

    rows: list[dict] = []
    for loss in losses:
        for d in cfg["dims"]:
            print(f"{loss} d={d} ...", flush=True)
            run_cell(loss, d, cfg, impls, rows)
    env["load_average_end"] = os.getloadavg()
    env["total_seconds"] = round(time.perf_counter() - started, 1)

    summary = summarize(rows)
    print_table(rows, summary)
    result = {
        "command": " ".join(["python", os.path.relpath(sys.argv[0], ROOT), *sys.argv[1:]]),
        "config": cfg,
        "environment": env,
        "loss_check": checks,
        "results": rows,
        "summary": summary,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {args.out}  ({env['total_seconds']:.0f} s; load average "
          f"{env['load_average_start'][0]:.1f} -> {env['load_average_end'][0]:.1f} "
          f"on {env['cpu_count']} cores)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
