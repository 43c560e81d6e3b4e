"""Interrupts: Ctrl-C stops a long un.sample or un.fit within about one paced call, and the
process is usable at once; the pacing of the compiled calls does not change any result.

A compiled call cannot be interrupted: the KeyboardInterrupt is raised when it returns. Before
the calls were paced, one call could hold every draw of a run (and every step of a fit with up
to 100 steps), so SIGINT took effect only when the whole run had finished, and the chain
groups' threads went on computing after an interrupt, holding up the next call.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time

import jax
import numpy as np
import optax
import pytest

import unnorm as un
from unnorm import pacing

MODEL = un.models.gaussian(2)
# The child process below runs these two configurations too (same programs: the persistent
# compilation cache of the test process serves them).
SMALL_SAMPLE = dict(sampler="mala", num_chains=4, num_warmup=20, num_samples=40,
                    progress_bar=False, warn=False)
SMALL_FIT = dict(optimizer=optax.adam(1e-2), num_steps=100, batch_size=16, method="optimizer",
                 stderr=False, progress_bar=False)
FIT_DATA = np.random.default_rng(0).normal(1.0, 2.0, size=(200, 2))


def _every(count):
    """A pacing that runs ``count`` steps per call (fewer where the phase or block ends)."""
    return lambda last, remaining, capacity, target=0.5: max(1, min(count, remaining, capacity))


class _CompileCounter:
    """Counts XLA compilations while ``counting``: jax.monitoring's listeners stay for the
    process, so one is registered for the module."""

    def __init__(self):
        self.counting, self.count = False, 0
        jax.monitoring.register_event_duration_secs_listener(self._event)

    def _event(self, name, *args, **kwargs):
        if self.counting and "backend_compile" in name:
            self.count += 1

    def compiles(self, call):
        self.counting, self.count = True, 0
        try:
            return call(), self.count
        finally:
            self.counting = False


COMPILES = _CompileCounter()


def test_draws_do_not_depend_on_the_pacing(monkeypatch):
    paced = un.sample(MODEL, key=jax.random.key(3), **SMALL_SAMPLE)
    monkeypatch.setattr(pacing, "next_count", _every(7))
    # other counts per call, the same programs
    sevens, compiled = COMPILES.compiles(
        lambda: un.sample(MODEL, key=jax.random.key(3), **SMALL_SAMPLE))
    assert compiled == 0
    for name in ("x",):
        np.testing.assert_array_equal(paced.posterior[name].values, sevens.posterior[name].values)
    for name in ("lp", "acceptance_rate", "step_size"):
        np.testing.assert_array_equal(paced.sample_stats[name].values,
                                      sevens.sample_stats[name].values)


def test_fit_does_not_depend_on_the_pacing(monkeypatch):
    paced = un.fit(MODEL, FIT_DATA, "sm", key=jax.random.key(4), **SMALL_FIT)
    monkeypatch.setattr(pacing, "next_count", _every(3))
    threes, compiled = COMPILES.compiles(
        lambda: un.fit(MODEL, FIT_DATA, "sm", key=jax.random.key(4), **SMALL_FIT))
    assert compiled == 0
    np.testing.assert_array_equal(paced.loss, threes.loss)
    for name in ("mu", "prec"):
        np.testing.assert_array_equal(paced.params[name], threes.params[name])


def test_next_count_grows_and_shrinks_with_the_time_of_the_last_call():
    assert pacing.next_count(None, 1000, 1000) == pacing.FIRST_STEPS
    # a fast call: at most GROWTH times more, never past what remains or fits
    assert pacing.next_count(pacing.Pace(4, 1e-4), 1000, 1000) == 4 * pacing.GROWTH
    assert pacing.next_count(pacing.Pace(64, 1e-4), 100, 1000) == 100
    assert pacing.next_count(pacing.Pace(64, 1e-4), 1000, 50) == 50
    # a slow call: as many steps as take the target time at its pace, at least one
    assert pacing.next_count(pacing.Pace(64, 2.0), 1000, 1000) == 16
    assert pacing.next_count(pacing.Pace(2, 30.0), 1000, 1000) == 1


def test_stored_loop_traces_its_step_once_and_fills_the_rows_past_the_count():
    traces = []

    def step(carry, index):
        traces.append(index)
        total = carry + index
        return total, {"total": total, "index": index.astype(np.int8)}

    def chunk(start, count):
        return pacing.stored_loop(step, start, count, length=5, fill=-1)

    carry, out = jax.jit(chunk)(np.float32(10.0), 3)
    assert len(traces) == 1
    assert float(carry) == 13.0  # 10 + 0 + 1 + 2
    np.testing.assert_array_equal(out["total"], [10.0, 11.0, 13.0, -1.0, -1.0])
    np.testing.assert_array_equal(out["index"], [0, 1, 2, -1, -1])
    assert out["index"].dtype == np.int8
    # the same program for another count: nothing traced again
    carry, out = jax.jit(chunk)(np.float32(0.0), 5)
    assert float(carry) == 10.0 and out["total"][-1] == 10.0
    assert len(traces) == 1


_CHILD = textwrap.dedent("""
    import json, os, signal, sys, threading, time
    import jax, numpy as np, optax
    import unnorm as un
    import unnorm.pacing

    # a SIGINT that the parent process blocks or ignores stays so across exec (seen in the
    # full suite on Python 3.12: the runs below went to the end with SIGINT sent); this
    # process undoes both, so that the os.kill below reaches it
    inherited = (signal.SIGINT in signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT}),
                 signal.getsignal(signal.SIGINT) is signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.default_int_handler)

    model = un.models.gaussian(2)
    small_sample = dict(sampler="mala", num_chains=4, num_warmup=20, num_samples=40,
                        progress_bar=False, warn=False)
    small_fit = dict(optimizer=optax.adam(1e-2), num_steps=100, batch_size=16,
                     method="optimizer", stderr=False, progress_bar=False)
    fit_data = np.random.default_rng(0).normal(1.0, 2.0, size=(200, 2))

    class Alarm:
        # SIGINT one second after the first compiled call of the interrupted run returned (its
        # compilation done), so that it comes while compiled code runs
        def __init__(self):
            self.timer, self.sent, self.armed = None, None, True
            self.timed = un.pacing.timed
            un.pacing.timed = self.watch
        def watch(self, call, count):
            result = self.timed(call, count)
            if not self.armed:
                self.armed = True
                self.timer = threading.Timer(1.0, self.fire)
                self.timer.start()
            return result
        def fire(self):
            self.sent = time.perf_counter()
            os.kill(os.getpid(), signal.SIGINT)
        def interrupt(self, call):
            self.sent, self.armed = None, False
            try:
                call()
            except KeyboardInterrupt as err:
                caught = time.perf_counter()
                self.armed = True
                if self.sent is None:
                    return None, "interrupted before SIGINT was sent: " + repr(err)
                return caught - self.sent, str(err)
            self.armed = True
            return None, ("not interrupted (SIGINT sent: %s; inherited blocked, ignored: %s)"
                          % (self.sent is not None, inherited))

    def timed(call):
        started = time.perf_counter()
        call()
        return time.perf_counter() - started

    def small():
        un.sample(model, key=jax.random.key(1), **small_sample)

    alarm, out = Alarm(), {}
    small()
    fit_small = lambda: un.fit(model, fit_data, "sm", key=jax.random.key(2), **small_fit)
    fit_small()
    # one call held every draw before (no warmup: the chunk length was num_samples)
    out["sample"] = alarm.interrupt(lambda: un.sample(
        model, key=jax.random.key(0), sampler="mala", num_chains=4, num_warmup=0,
        num_samples=20000, thinning=2000, progress_bar=False, warn=False))
    out["sample_after_sample"] = timed(small)
    # 100 slow full-batch steps: one call before
    big = np.random.default_rng(1).normal(size=(2_000_000, 2))
    out["fit"] = alarm.interrupt(lambda: un.fit(
        model, big, "sm", key=jax.random.key(0), optimizer=optax.adam(1e-2), num_steps=100,
        method="optimizer", stderr=False, progress_bar=False))
    out["sample_after_fit"] = timed(small)
    out["fit_after_fit"] = timed(fit_small)
    print("RESULT " + json.dumps(out))
""")


@pytest.fixture(scope="module")
def interrupted_child():
    env = dict(os.environ)
    # the child finds the programs this process compiled (tests/conftest.py's cache)
    env["JAX_COMPILATION_CACHE_DIR"] = jax.config.jax_compilation_cache_dir or ""
    env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    env["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "-1"
    env.pop("CI", None)
    proc = subprocess.run([sys.executable, "-c", _CHILD], env=env, capture_output=True,
                          text=True, timeout=240)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    return json.loads(lines[-1][len("RESULT "):])


# The bounds are generous (a loaded CI machine): a paced call takes about half a second, and
# before pacing the interrupt came after the whole run, tens of seconds.
REACTION_BOUND = 5.0


def test_sigint_stops_a_long_sample_and_says_where(interrupted_child):
    reaction, message = interrupted_child["sample"]
    assert reaction is not None, message
    assert reaction < REACTION_BOUND, f"KeyboardInterrupt came {reaction:.1f} s after SIGINT"
    assert "while sampling with 'mala': during sampling, after" in message
    assert "of 20000 draws of 2000 steps" in message


def test_sigint_stops_a_long_fit_and_says_where(interrupted_child):
    reaction, message = interrupted_child["fit"]
    assert reaction is not None, message
    assert reaction < REACTION_BOUND, f"KeyboardInterrupt came {reaction:.1f} s after SIGINT"
    assert "while fitting 'sm': in the optimizer stage, after" in message
    assert "of num_steps=100 steps" in message


@pytest.mark.parametrize("after", ["sample_after_sample", "sample_after_fit", "fit_after_fit"])
def test_the_process_is_usable_at_once_after_an_interrupt(interrupted_child, after):
    # compiled before the interrupts: nothing left running holds these calls up
    assert interrupted_child[after] < REACTION_BOUND, interrupted_child


def test_an_interrupt_leaves_no_chain_group_running():
    # a KeyboardInterrupt raised while the groups run reaches the caller once they finish
    import threading

    from unnorm.samplers import chain_groups

    layout = chain_groups.GroupLayout(num_chains=4, num_groups=2)
    pool = chain_groups.executor(layout)
    started, finished = threading.Semaphore(0), []

    def run_group(g):
        started.release()
        time.sleep(0.2)  # still running when the interrupt comes
        finished.append(g)
        return g

    def interrupt():
        for _ in range(2):
            assert started.acquire(timeout=30)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        chain_groups.map_groups(run_group, layout, pool, interrupt)
    assert sorted(finished) == [0, 1]
