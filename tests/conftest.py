"""Test-session settings.

Every test builds its own model objects, so each fit traces and compiles programs whose XLA is
identical to one compiled a few tests earlier. JAX's persistent compilation cache, keyed by the
program's fingerprint, serves those from disk instead of compiling again. It lives in a
temporary directory of this process (one per pytest-xdist worker: the cache files are not
written atomically) and is removed at the end of the session. ``UNNORM_TEST_JAX_CACHE=<dir>``
keeps it in ``<dir>`` across sessions instead, one directory for all workers: a program one
worker compiled serves the other, and a later session (CI's run of the ``docs`` mark after the
default run) reads what an earlier one compiled. A worker that reads an entry while the other
is still writing it gets a warning from JAX and compiles the program itself.

Nearly all of the suite's time is XLA compiling thousands of small programs once each. Where the
installed jaxlib still offers XLA's older CPU fusion emitters (jaxlib 0.10; later ones have only
the new ones), the suite asks for them through ``XLA_FLAGS``: they compile the same programs
faster, with the same results (measured in benchmarks/README.md, "The test suite"). A jaxlib
that does not know the flag would abort at start, so a child process tries it first, once per
session (the workers inherit the answer); ``UNNORM_TEST_XLA_EMITTERS=new`` keeps XLA's default.
"""

from __future__ import annotations

import collections
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

_LEGACY_EMITTERS = "--xla_cpu_use_fusion_emitters=false"


def _accepts_xla_flag(flag: str) -> bool:
    """Whether a JAX started with ``flag`` in ``XLA_FLAGS`` comes up (an unknown flag aborts)."""
    env = dict(os.environ, XLA_FLAGS=f"{os.environ.get('XLA_FLAGS', '')} {flag}".strip(),
               JAX_PLATFORMS="cpu")
    probe = subprocess.run([sys.executable, "-c", "import jax; jax.numpy.zeros(1)"], env=env,
                           capture_output=True, timeout=120)
    return probe.returncode == 0


# before JAX starts its backend, which reads XLA_FLAGS once; pytest-xdist's workers and the
# tests' child processes inherit the result through the environment
if os.environ.get("UNNORM_TEST_XLA_EMITTERS") is None:
    legacy = _accepts_xla_flag(_LEGACY_EMITTERS)
    os.environ["UNNORM_TEST_XLA_EMITTERS"] = "legacy" if legacy else "new"
    if legacy:
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_LEGACY_EMITTERS}".strip()

import jax  # noqa: E402

_KEEP = os.environ.get("UNNORM_TEST_JAX_CACHE")
_CACHE_DIR = _KEEP or tempfile.mkdtemp(prefix="unnorm-test-jax-cache-")
jax.config.update("jax_compilation_cache_dir", _CACHE_DIR)
# every program, however small or quick to compile: the suite compiles thousands of them
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
# the child processes some tests start (two host devices, interrupts, joblib's workers, the
# benchmarks' quick runs) read the same cache: their programs are mostly the worker's own. The
# worker waits while its child runs; two joblib workers writing one entry at once at worst
# leave a read that fails, which JAX answers by compiling
os.environ["JAX_COMPILATION_CACHE_DIR"] = _CACHE_DIR
os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "-1"


def pytest_sessionfinish(session, exitstatus):
    _write_durations(session.config)
    if not _KEEP:
        shutil.rmtree(_CACHE_DIR, ignore_errors=True)


#: Test files whose tests share no module-level state: pytest-xdist may hand out their tests
#: one by one. The documentation's pages and modules (``-m docs``) are all in one file, which
#: ``--dist loadfile`` would otherwise run on one worker while the others wait.
_SPLIT_FILES = ("tests/test_docs.py",)


#: Each test file's seconds in a default run (setup, call and teardown of its tests, summed),
#: written by ``UNNORM_TEST_DURATIONS=write python -m pytest``. pytest-xdist hands out whole
#: files in collection order, and a long file handed out last keeps one worker busy while the
#: others wait; the files are therefore collected longest first (files not listed last, in
#: their own order). Stale seconds only make that order less good.
_DURATIONS = Path(__file__).with_name("durations.json")


def _file_of(nodeid: str) -> str:
    return nodeid.split("::", 1)[0]


def _recorded_seconds() -> dict[str, float]:
    return json.loads(_DURATIONS.read_text()) if _DURATIONS.exists() else {}


def pytest_collection_modifyitems(config, items):
    seconds = _recorded_seconds()
    # a stable sort: each file's tests keep their order; every worker sorts alike, so
    # pytest-xdist still sees one collection
    items.sort(key=lambda item: -seconds.get(_file_of(item.nodeid), 0.0))


#: this session's seconds per file, kept only when writing ``durations.json``
_RUN_SECONDS: collections.Counter = collections.Counter()


def pytest_runtest_logreport(report):
    if os.environ.get("UNNORM_TEST_DURATIONS") == "write":
        _RUN_SECONDS[_file_of(report.nodeid)] += report.duration


def _write_durations(config) -> None:
    """The files run in this session replace their entries in ``durations.json``."""
    if os.environ.get("UNNORM_TEST_DURATIONS") != "write" or hasattr(config, "workerinput"):
        return
    seconds = _recorded_seconds()
    seconds.update({name: round(total, 1) for name, total in _RUN_SECONDS.items()})
    ordered = dict(sorted(seconds.items(), key=lambda entry: -entry[1]))
    _DURATIONS.write_text(json.dumps(ordered, indent=1) + "\n")


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """``--dist loadfile`` (the default options in ``pyproject.toml``), but with the tests of
    ``_SPLIT_FILES`` handed out one at a time, and the files in collection order (longest
    first, ``_DURATIONS``) rather than pytest-xdist's default of most tests first."""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    config.option.loadscopereorder = False

    class _FileScheduling(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            if _file_of(nodeid) in _SPLIT_FILES:
                return nodeid
            return super()._split_scope(nodeid)

    return _FileScheduling(config, log)


def pytest_xdist_auto_num_workers(config):
    """``-n auto``: one worker per core, at most 4 (each holds its own compiled programs,
    about a gigabyte)."""
    cores = (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
             else os.cpu_count() or 1)
    return max(1, min(cores, 4))
