"""What a benchmark's results record about where they were measured: the machine, the package
versions and the commit (shared by the benchmark scripts of this folder)."""

from __future__ import annotations

import contextlib
import datetime
import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def git_state() -> dict:
    """The commit, and unnorm's files that differ from it (measurements of uncommitted code)."""
    def git(*args):
        done = subprocess.run(["git", *args], capture_output=True, text=True, cwd=ROOT,
                              check=False)
        return done.stdout.strip() if done.returncode == 0 else None

    status = git("status", "--porcelain", "--", "unnorm")
    return {"commit": git("rev-parse", "HEAD"),
            "unnorm_uncommitted": status.splitlines() if status else []}


def environment(packages: tuple[str, ...]) -> dict:
    """Date, Python, platform, CPU (named by /proc/cpuinfo on Linux), cores, XLA_FLAGS, the
    versions of ``packages`` (None when not installed) and :func:`git_state`."""
    cpu = platform.processor()
    with contextlib.suppress(OSError, StopIteration), open("/proc/cpuinfo") as f:
        cpu = next(line.split(":", 1)[1].strip() for line in f if "model name" in line)
    versions = {}
    for pkg in packages:
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "xla_flags": os.environ.get("XLA_FLAGS"),
        "versions": versions,
        "git": git_state(),
    }
