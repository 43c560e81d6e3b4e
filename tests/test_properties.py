"""Property-based robustness of the public calls (hypothesis).

Random shapes, dtypes, scales, NaN/inf positions and option values go to ``un.fit``,
``un.sample``, ``un.compare``, ``un.log_partition`` and ``un.ksd_test``. Each call must either
return finite results (estimates and draws finite; a standard error finite, or NaN with a
warning that says why) or raise ``ValueError`` / ``TypeError`` from unnorm's own argument checks,
whose message names the offending argument. A raw error from inside NumPy or JAX (``IndexError``,
``LinAlgError``, ``XlaRuntimeError``, a ``TypeError`` of ``jnp.asarray``) fails the property.

Each example breaks at most one argument, chosen by the strategy, so the oracle is exact: with
none broken the call must succeed, with one broken it must raise naming that argument.

The default profile is deterministic (``derandomize=True``) and small, for the default suite;
``UNNORM_HYPOTHESIS_PROFILE=long`` runs many more random examples (minutes).
"""

from __future__ import annotations

import datetime
import math
import os
import re
import traceback
import warnings
from pathlib import Path

import jax
import numpy as np
import optax
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import unnorm as un

_LONG = os.environ.get("UNNORM_HYPOTHESIS_PROFILE") == "long"


def _settings(max_examples: int) -> settings:
    # The deadline is each example's time limit: it catches runaway examples (huge loops, a
    # hang), with room for the first example of a property, which compiles its programs (the
    # too_slow health check would flag that compilation, not a slow strategy).
    return settings(
        max_examples=max_examples * 10 if _LONG else max_examples,
        derandomize=not _LONG,
        deadline=datetime.timedelta(seconds=90),
        suppress_health_check=[HealthCheck.too_slow],
        print_blob=True,
    )


UNNORM_DIR = Path(un.__file__).resolve().parent
KEY = jax.random.key(0)

# one model per support, built once: a Model hashes by identity, so its compiled programs are
# found again by every example
GAUSSIAN = un.models.gaussian(2)
SPIN = un.models.ising_chain(3, coupling=0.4, field=0.1)
RNG = np.random.default_rng(0)
GAUSSIAN_DATA = RNG.normal([0.5, -0.5], [1.0, 2.0], size=(30, 2))
ADAM = optax.adam(0.05)
SPIN_DATA = np.where(RNG.random((30, 3)) < 0.5, -1.0, 1.0)


# ---- the oracle ---------------------------------------------------------------------------------

def _raised_in_unnorm(err: BaseException) -> bool:
    """Whether the innermost frame of the traceback is unnorm's own code (an argument check),
    not NumPy's, JAX's or the standard library's."""
    frames = traceback.extract_tb(err.__traceback__)
    return bool(frames) and UNNORM_DIR in Path(frames[-1].filename).resolve().parents


def _names(message: str, argument: str) -> bool:
    pattern = rf"(?<![A-Za-z0-9_]){re.escape(argument)}(?![A-Za-z0-9_])"
    return re.search(pattern, message) is not None


def outcome(call, broken: str | None, also: tuple[str, ...] = ()):
    """Run ``call``; return ``(result, warnings)``, or ``(None, warnings)`` when it raised a
    ``ValueError`` / ``TypeError`` of unnorm naming ``broken`` (or one of ``also``, the
    arguments whose values may legitimately be blamed with it). Any other exception fails."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            result = call()
        except (ValueError, TypeError) as err:
            where = traceback.extract_tb(err.__traceback__)[-1]
            assert _raised_in_unnorm(err), (
                f"raw {type(err).__name__} from {where.filename}:{where.lineno}: {err}")
            assert broken is not None, f"valid arguments raised {type(err).__name__}: {err}"
            assert any(_names(str(err), name) for name in (broken, *also)), (
                f"the message does not name {broken!r}: {err}")
            return None, caught
    assert broken is None, f"invalid {broken!r} was accepted"
    return result, caught


def _warned(caught, pattern: str) -> bool:
    return any(re.search(pattern, str(w.message)) for w in caught)


def assert_fit_finite(fit, caught) -> None:
    """Estimates finite; each standard error finite, or NaN with a warning that says why."""
    estimates = np.concatenate([np.ravel(v) for v in fit.params.values()])
    assert np.all(np.isfinite(estimates)), fit.params
    if fit.stderr is None:
        return
    errors = np.concatenate([np.ravel(v) for v in fit.stderr.values()])
    assert not np.any(np.isinf(errors)), fit.stderr
    if np.any(np.isnan(errors)):
        assert _warned(caught, r"standard error"), (
            f"NaN standard errors without a warning: {[str(w.message) for w in caught]}")


# ---- shared strategies --------------------------------------------------------------------------

BAD_COUNTS = st.sampled_from([0, -1, -100, 2.5, "10", True, None, float("nan"), [3]])
# step and chain counts of compiled loops: JAX passes them as int32
BAD_LOOP_COUNTS = st.one_of(BAD_COUNTS, st.just(10**12))
BAD_POSITIVE_FLOATS = st.sampled_from(
    [0.0, -1.0, -1e-8, float("nan"), float("inf"), "0.1", None, [0.1]])
BAD_STRINGS = st.sampled_from(["", "SM ", "nuts ", "unknown", 3, None, ["sm"]])
BAD_KEYS = st.sampled_from([0, None, "key", np.array([1, 2, 3], dtype=np.uint32),
                            jax.random.split(KEY, 2), np.zeros(2, dtype=np.float32)])
VALID_KEYS = st.sampled_from([KEY, jax.random.PRNGKey(3)])
SCALES = st.integers(-8, 8).map(lambda e: 10.0 ** e)


@st.composite
def one_broken(draw, valid: dict, invalid: dict):
    """Options drawn from ``valid``, except at most one, drawn from ``invalid``: ``(options,
    name of the broken one or None)``."""
    broken = draw(st.sampled_from([None, *invalid]))
    options = {name: draw(strategy) for name, strategy in valid.items()}
    if broken is not None:
        options[broken] = draw(invalid[broken])
    return options, broken


@st.composite
def perturbed_data(draw, base: np.ndarray, *, discrete: bool = False):
    """``base`` scaled, cast to a dtype, with NaN/inf at a position or a wrong shape: ``(data,
    what is wrong or None)``."""
    data = np.array(base, dtype=float)
    defect = draw(st.sampled_from([None, None, "nan", "inf", "-inf", "shape", "empty", "ndim"]))
    if not discrete:
        data = data * draw(SCALES)
        dtype = draw(st.sampled_from(["float32", "float64", "int64", "bool"]))
    else:
        dtype = draw(st.sampled_from(["float32", "float64", "int64", "int8"]))
    if dtype == "bool":
        data = data > np.median(data)
    data = data.astype(dtype)
    if defect in ("nan", "inf", "-inf"):
        data = data.astype(float)
        row = draw(st.integers(0, data.shape[0] - 1))
        col = draw(st.integers(0, data.shape[1] - 1))
        data[row, col] = float(defect)
    elif defect == "shape":
        data = np.concatenate([data, data[:, :1]], axis=1)
    elif defect == "empty":
        data = data[:0]
    elif defect == "ndim":
        data = data[:, :, None]
    return data, defect


# ---- un.fit: options ----------------------------------------------------------------------------

FIT_VALID = {
    "estimator": st.sampled_from(["sm"] + (["ssm", "dsm", "nce", "ksd"] if _LONG else [])),
    # the optimizer, the batch size and min(num_steps, 100) are static arguments of the
    # compiled training chunk: a few values each, so that compilations stay few
    "num_steps": st.sampled_from([20] + ([1, 7] if _LONG else [])),
    "batch_size": st.sampled_from([None, 10] if _LONG else [None]),
    "optimizer": st.sampled_from([None, ADAM]),
    "tol": st.sampled_from([1e-8, 1e-6, 1e-2]),
    "window": st.integers(2, 10),
    "max_failures": st.integers(1, 30),
    "stderr": st.sampled_from([True, False, "auto"]),
    "method": st.sampled_from(["auto", "optimizer"]),
    "resample": st.sampled_from([None, False]),
    "key": VALID_KEYS,
    "init": st.one_of(st.none(), SCALES.filter(lambda s: 1e-3 <= s <= 1e3).map(
        lambda s: {"mu": np.full(2, s), "prec": np.eye(2) * s})),
}
FIT_INVALID = {
    "estimator": st.one_of(BAD_STRINGS, st.just(un.estimators.PseudoLikelihood())),
    "num_steps": BAD_LOOP_COUNTS,
    "batch_size": st.sampled_from([0, -1, 31, 1.5, "all", True]),
    "optimizer": st.sampled_from(["adam", optax.adam, 0.01]),
    "tol": BAD_POSITIVE_FLOATS,
    "window": st.sampled_from([1, 0, 2.5, "5"]),
    "max_failures": BAD_LOOP_COUNTS,
    "stderr": st.sampled_from(["yes", 1, None]),
    "method": BAD_STRINGS,
    "resample": st.sampled_from(["no", 1]),
    "key": BAD_KEYS,
    "init": st.sampled_from([
        {"mu": np.zeros(3), "prec": np.eye(2)}, {"mu": np.zeros(2)},
        {"mu": np.array([np.nan, 0.0]), "prec": np.eye(2)},
        {"mu": np.zeros(2), "prec": -np.eye(2)}, [0.0, 0.0], "params"]),
}


@_settings(12)
@given(one_broken(FIT_VALID, FIT_INVALID))
def test_fit_options_give_finite_estimates_or_name_the_argument(drawn):
    options, broken = drawn
    result, caught = outcome(
        lambda: un.fit(GAUSSIAN, GAUSSIAN_DATA, progress_bar=False, **options), broken,
        # an estimator that does not apply names the support it needs
        also=("support",) if broken == "estimator" else ())
    if result is not None:
        assert_fit_finite(result, caught)


# ---- un.fit: data -------------------------------------------------------------------------------

@_settings(10)
@given(perturbed_data(GAUSSIAN_DATA), st.sampled_from(["sm", "ssm"] if _LONG else ["sm"]))
def test_fit_data_give_finite_estimates_or_name_data(drawn, estimator):
    data, defect = drawn
    result, caught = outcome(
        lambda: un.fit(GAUSSIAN, data, estimator, key=KEY, num_steps=20, progress_bar=False),
        "data" if defect else None)
    if result is not None:
        assert_fit_finite(result, caught)


@_settings(6)
@given(perturbed_data(SPIN_DATA, discrete=True),
       st.sampled_from(["pl", "rm", "mpf"] if _LONG else ["pl"]))
def test_fit_discrete_data_give_finite_estimates_or_name_data(drawn, estimator):
    data, defect = drawn
    result, caught = outcome(
        lambda: un.fit(SPIN, data, estimator, key=KEY, num_steps=20, progress_bar=False),
        "data" if defect else None)
    if result is not None:
        assert_fit_finite(result, caught)


# ---- un.sample ----------------------------------------------------------------------------------

SAMPLE_VALID = {
    "sampler": st.sampled_from(["mala", "rwmh"] + (["nuts", "hmc", "langevin"] if _LONG else [])),
    # chain counts and chunk lengths are compiled shapes: a few values each
    "num_chains": st.sampled_from([2] + ([1, 3] if _LONG else [])),
    "num_warmup": st.sampled_from([0, 5] + ([1, 10] if _LONG else [])),
    "num_samples": st.sampled_from([5] + ([1, 10] if _LONG else [])),
    "thinning": st.sampled_from([1, 2]),
    "step_size": st.one_of(st.none(), SCALES),
    "target_accept": st.sampled_from([None, 0.1, 0.6, 0.95]),
    "key": VALID_KEYS,
    "init": st.one_of(st.none(), SCALES.map(lambda s: np.full(2, s, dtype=np.float32))),
    "params": st.one_of(st.none(), SCALES.map(lambda s: {"mu": np.full(2, s),
                                                         "prec": np.eye(2) / s})),
    "chain_method": st.sampled_from(["parallel", "vectorized"]),
    "dims": st.sampled_from([None, ["site"], ("site",)]),
    "progress_bar": st.just(False),
    "warn": st.booleans(),
}
SAMPLE_INVALID = {
    "sampler": st.one_of(BAD_STRINGS, st.just("gibbs")),
    "num_chains": BAD_LOOP_COUNTS,
    "num_warmup": st.sampled_from([-1, 2.5, "10", None, True, 10**12]),
    "num_samples": BAD_LOOP_COUNTS,
    "thinning": BAD_LOOP_COUNTS,
    "step_size": BAD_POSITIVE_FLOATS.filter(lambda v: v is not None),
    "target_accept": st.sampled_from([0.0, 1.0, 1.5, -0.1, float("nan"), "high"]),
    "key": BAD_KEYS,
    "init": st.sampled_from([np.zeros(3), np.full(2, np.nan), np.array([np.inf, 0.0]),
                             np.zeros((4, 2)), "origin", np.full(2, 1e39)]),
    "params": st.sampled_from([{"mu": np.zeros(2)}, {"mu": np.zeros(2), "prec": -np.eye(2)},
                               {"mu": np.full(2, np.inf), "prec": np.eye(2)}, [0.0]]),
    "chain_method": BAD_STRINGS,
    "dims": st.sampled_from([3, "site", ["a", "b"], ["chain"], [1]]),
    "progress_bar": st.sampled_from(["no", None, 0]),
    "warn": st.sampled_from(["no", None, 1]),
}


@_settings(15)
@given(one_broken(SAMPLE_VALID, SAMPLE_INVALID))
def test_sample_options_give_finite_draws_or_name_the_argument(drawn):
    options, broken = drawn
    params = options.pop("params")
    result, _ = outcome(
        lambda: un.sample(GAUSSIAN, params, **options), broken,
        # a sampler that does not apply names the support; a step option, the sampler
        also={"sampler": ("support",), "init": ("chain",),
              "step_size": ("sampler",)}.get(broken, ()))
    if result is not None:
        draws = np.asarray(result.posterior["x"])
        assert draws.shape[:2] == (options["num_chains"], options["num_samples"])
        assert np.all(np.isfinite(draws))


@_settings(6)
@given(st.sampled_from([2] + ([1, 3] if _LONG else [])), st.sampled_from([0, 5]),
       st.sampled_from([5] + ([1] if _LONG else [])),
       st.sampled_from([None, np.array([1.0, -1.0, 1.0]), np.array([0.0, 1.0, 1.0]),
                        np.array([1.0, -1.0])]))
def test_gibbs_gives_draws_on_the_support_or_names_init(num_chains, num_warmup, num_samples,
                                                         init):
    on_support = init is None or (init.size == 3 and set(np.unique(init)) <= {-1.0, 1.0})
    broken = None if on_support else "init"
    result, _ = outcome(
        lambda: un.sample(SPIN, key=KEY, sampler="gibbs", num_chains=num_chains,
                          num_warmup=num_warmup, num_samples=num_samples, init=init,
                          progress_bar=False, warn=False), broken)
    if result is not None:
        draws = np.asarray(result.posterior["x"])
        assert set(np.unique(draws)) <= {-1, 1}


# ---- un.compare ---------------------------------------------------------------------------------

COMPARE_VALID = {
    "estimators": st.sampled_from([["sm"], [un.estimators.SM()]] + (
        [["sm", "ssm"], [un.estimators.SSM(2)]] if _LONG else [])),
    "level": st.sampled_from([0.5, 0.9, 0.95]),
    "truth": st.sampled_from([None, {"mu": np.zeros(2), "prec": np.eye(2)}]),
    "key": VALID_KEYS,
}
COMPARE_INVALID = {
    "estimators": st.sampled_from([[], "sm", ["sm", "bogus"], ["sm", 3], ["pl"], 5]),
    "level": st.sampled_from([0.0, 1.0, 95, -0.5, float("nan"), "0.95"]),
    "truth": st.sampled_from([{"mu": np.zeros(3), "prec": np.eye(2)}, {"mu": np.zeros(2)},
                              {"mu": np.full(2, np.nan), "prec": np.eye(2)}, [0.0]]),
    "key": BAD_KEYS,
}


@_settings(8)
@given(one_broken(COMPARE_VALID, COMPARE_INVALID))
def test_compare_gives_finite_rows_or_names_the_argument(drawn):
    options, broken = drawn
    result, _ = outcome(
        lambda: un.compare(GAUSSIAN, GAUSSIAN_DATA, num_steps=20, progress_bar=False, **options),
        broken, also={"estimators": ("estimator", "support")}.get(broken, ()))
    if result is not None:
        assert np.all(np.isfinite(result["estimate"].to_numpy(float)))
        assert not np.any(np.isinf(result["std_err"].to_numpy(float)))


# ---- un.log_partition ---------------------------------------------------------------------------

PARTITION_VALID = {
    "method": st.just("exact"),
    "max_units": st.integers(3, 20),
    "params": st.one_of(st.none(), SCALES.map(
        lambda s: {"coupling": np.float32(s), "field": np.float32(-s)})),
}
PARTITION_INVALID = {
    "method": BAD_STRINGS,
    "max_units": st.sampled_from([2, 0, -1, 2.5, "20"]),
    "params": st.sampled_from([{"coupling": np.zeros(3), "field": 0.0}, {"coupling": 0.1},
                               {"coupling": np.nan, "field": 0.0}, 0.5]),
}


@_settings(12)
@given(one_broken(PARTITION_VALID, PARTITION_INVALID))
def test_log_partition_exact_is_finite_or_names_the_argument(drawn):
    options, broken = drawn
    params = options.pop("params")
    result, _ = outcome(lambda: un.log_partition(SPIN, params, **options), broken)
    if result is not None:
        assert math.isfinite(result.estimate) and result.stderr == 0.0


AIS_VALID = {
    "num_chains": st.sampled_from([4] + ([2, 8] if _LONG else [])),
    "num_temperatures": st.sampled_from([5] + ([2, 10] if _LONG else [])),
    "num_replicates": st.integers(1, 2),
    "num_mcmc_steps": st.sampled_from([1] + ([2] if _LONG else [])),
    "step_size": st.one_of(st.none(), st.sampled_from([1e-3, 0.5, 2.0])),
    "adapt_step_size": st.booleans(),
    "target_accept": st.sampled_from([0.3, 0.574]),
    "base_loc": st.sampled_from([None, 0.0, np.zeros(2)]),
    "base_scale": st.sampled_from([None, 1.0, np.full(2, 0.5)]),
    "key": VALID_KEYS,
}
AIS_INVALID = {
    "num_chains": BAD_LOOP_COUNTS,
    "num_temperatures": st.sampled_from([1, 0, -3, 2.5, "10", 10**12]),
    "num_replicates": BAD_COUNTS,
    "num_mcmc_steps": BAD_COUNTS,
    "step_size": BAD_POSITIVE_FLOATS.filter(lambda v: v is not None),
    "adapt_step_size": st.sampled_from(["yes", 1, None]),
    "target_accept": st.sampled_from([0.0, 1.0, -1.0, float("nan"), "0.5"]),
    "base_loc": st.sampled_from([np.zeros(3), np.array([np.nan, 0.0]), "zero"]),
    "base_scale": st.sampled_from([0.0, -1.0, np.zeros(2), np.ones(3), float("inf"), "one"]),
    "key": st.sampled_from([None, 0, "key"]),
}


@_settings(10)
@given(one_broken(AIS_VALID, AIS_INVALID))
def test_log_partition_ais_is_finite_or_names_the_argument(drawn):
    options, broken = drawn
    result, _ = outcome(
        lambda: un.log_partition(GAUSSIAN, method="ais", progress_bar=False, **options), broken)
    if result is not None:
        assert math.isfinite(result.estimate)
        assert result.stderr >= 0  # inf when a single chain is kept (documented)


# ---- un.ksd_test --------------------------------------------------------------------------------

KSD_VALID = {
    "kernel": st.sampled_from(["imq", "rbf"]),
    "bandwidth": st.one_of(st.just("median"), SCALES),
    "num_bootstrap": st.sampled_from([20] + ([1, 50] if _LONG else [])),
    "level": st.sampled_from([0.01, 0.05, 0.5]),
    "key": VALID_KEYS,
}
KSD_INVALID = {
    "kernel": BAD_STRINGS,
    "bandwidth": st.sampled_from(
        [0.0, -1.0, 1e-20, float("nan"), float("inf"), "mean", None, [1.0]]),
    # (1 + num_bootstrap) * n weights: 10**9 of them would not fit in memory
    "num_bootstrap": st.one_of(BAD_COUNTS, st.just(10**9)),
    "level": st.sampled_from([0.0, 1.0, -0.1, 5, float("nan"), "0.05"]),
    "key": BAD_KEYS,
}


@_settings(12)
@given(one_broken(KSD_VALID, KSD_INVALID))
def test_ksd_test_options_give_a_pvalue_or_name_the_argument(drawn):
    options, broken = drawn
    result, _ = outcome(lambda: un.ksd_test(GAUSSIAN, None, GAUSSIAN_DATA, **options), broken)
    if result is not None:
        assert math.isfinite(result.statistic) and 0 < result.pvalue <= 1


def _mostly_coincident(data: np.ndarray) -> bool:
    """Whether more than half of the pairs of rows are equal (the median distance is 0)."""
    _, counts = np.unique(data.reshape(len(data), -1), axis=0, return_counts=True)
    n = len(data)
    return 2 * int(np.sum(counts * (counts - 1))) > n * (n - 1)


@_settings(10)
@given(perturbed_data(GAUSSIAN_DATA))
def test_ksd_test_data_give_a_pvalue_or_name_data(drawn):
    data, defect = drawn
    broken = "data" if defect else None
    if broken is None and _mostly_coincident(data):
        # tiny data cast to int are all 0: the median heuristic has no distance to give
        broken = "bandwidth"
    result, _ = outcome(
        lambda: un.ksd_test(GAUSSIAN, None, data, key=KEY, num_bootstrap=20), broken)
    if result is not None:
        assert math.isfinite(result.statistic) and 0 < result.pvalue <= 1


# ---- regressions: inputs the properties above found mishandled ----------------------------------

@pytest.mark.parametrize("call, broken", [
    # 10**12 steps: OverflowError from inside JAX (int32 loop counters)
    (lambda: un.fit(GAUSSIAN, GAUSSIAN_DATA, key=KEY, num_steps=10**12, progress_bar=False),
     "num_steps"),
    (lambda: un.fit(GAUSSIAN, GAUSSIAN_DATA, key=KEY, max_failures=10**12, progress_bar=False),
     "max_failures"),
    # RuntimeError wrapping an OverflowError / a 14.6 TiB MemoryError, after compiling
    (lambda: un.sample(GAUSSIAN, key=KEY, sampler="mala", num_warmup=10**12, progress_bar=False),
     "num_warmup"),
    (lambda: un.sample(GAUSSIAN, key=KEY, sampler="mala", num_samples=10**12,
                       progress_bar=False), "num_samples"),
    (lambda: un.sample(GAUSSIAN, key=KEY, sampler="mala", thinning=10**12, progress_bar=False),
     "thinning"),
    # accepted: any truthy value showed the bar / warned
    (lambda: un.sample(GAUSSIAN, key=KEY, sampler="mala", progress_bar="no"), "progress_bar"),
    (lambda: un.sample(GAUSSIAN, key=KEY, sampler="mala", progress_bar=False, warn="no"),
     "warn"),
    # TypeError "'int' object is not iterable", naming nothing
    (lambda: un.sample(GAUSSIAN, key=KEY, sampler="mala", dims=3, progress_bar=False), "dims"),
    # AIS with 10**12 chains hung in jax.random.split; 10**12 temperatures: MemoryError
    (lambda: un.log_partition(GAUSSIAN, method="ais", key=KEY, num_chains=10**12,
                              progress_bar=False), "num_chains"),
    (lambda: un.log_partition(GAUSSIAN, method="ais", key=KEY, num_temperatures=10**12,
                              progress_bar=False), "num_temperatures"),
    # the bootstrap weights' allocation aborted the process inside XLA
    (lambda: un.ksd_test(GAUSSIAN, None, GAUSSIAN_DATA, key=KEY, num_bootstrap=10**12),
     "num_bootstrap"),
    # h² underflows float32
    (lambda: un.ksd_test(GAUSSIAN, None, GAUSSIAN_DATA, key=KEY, bandwidth=1e-20),
     "bandwidth"),
])
def test_regression_raises_naming_the_argument(call, broken):
    outcome(call, broken)


@pytest.mark.parametrize("bandwidth", [1e-10, 1e-15])
@pytest.mark.parametrize("kernel", ["imq", "rbf"])
def test_regression_ksd_tiny_bandwidth_gives_a_finite_statistic(bandwidth, kernel):
    # was NaN: (1/h⁴)·φ'' with h⁴ underflowing float32 to 0 and the kernel to 0, inf·0
    result, _ = outcome(lambda: un.ksd_test(GAUSSIAN, None, GAUSSIAN_DATA, key=KEY,
                                            kernel=kernel, bandwidth=bandwidth,
                                            num_bootstrap=20), None)
    assert math.isfinite(result.statistic) and 0 < result.pvalue <= 1


@pytest.mark.parametrize("scale, word", [(1e30, "overflow"), (1e-25, "underflow")])
def test_regression_ksd_median_bandwidth_says_the_data_scale(scale, word):
    # said "more than half of the pairs of observations coincide" of distinct observations
    with pytest.raises(ValueError, match=rf"{word} float32 \(the largest \|value\| in the data"):
        un.ksd_test(GAUSSIAN, None, GAUSSIAN_DATA * scale, key=KEY, num_bootstrap=20)


@pytest.mark.parametrize("learning_rate", [0.01, 1e8, float("nan")])
def test_fit_learning_rate_gives_finite_estimates_or_a_fit_error(learning_rate):
    # an optax optimizer's learning rate is opaque to un.fit: a wild one may fail the fit, but
    # must never return NaN parameters (they did, with finite losses and gradients)
    optimizer = optax.sgd(learning_rate)
    try:
        result, caught = outcome(
            lambda: un.fit(GAUSSIAN, GAUSSIAN_DATA, "sm", key=KEY, optimizer=optimizer,
                           method="optimizer", num_steps=20, progress_bar=False), None)
    except un.FitError as err:
        assert learning_rate != 0.01, err
        assert re.search(r"learning rate|optimizer", str(err)), err
        return
    assert_fit_finite(result, caught)
