"""The ``unnorm`` command line."""

import io
import subprocess
import sys

import pytest

import unnorm as un
from unnorm import cli


def test_demo_runs_every_estimator_and_sampler_and_prints_summaries():
    out = io.StringIO()
    cli.demo(num_samples=200, out=out)
    text = out.getvalue()
    for estimator in ("sm", "ssm", "dsm", "nce", "mle", "pcd"):
        assert f"{estimator} (" in text
    assert "std_err" in text and "prec[0,1]" in text
    for sampler in ("nuts", "hmc", "mala", "langevin", "rwmh", "gibbs"):
        assert f"── {sampler}" in text
    assert "ess_bulk" in text and "r_hat" in text
    assert "log Z: exact over 2^10 configurations" in text
    assert "annealed importance sampling" in text and "NCE's learned log Z" in text
    assert "kernel Stein test" in text


def test_help_and_version(capsys):
    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == un.__version__
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--help"])
    assert exit_info.value.code == 0
    assert "demo" in capsys.readouterr().out


def test_module_entry_point():
    result = subprocess.run([sys.executable, "-m", "unnorm", "--version"], capture_output=True,
                            text=True, check=True)
    assert result.stdout.strip() == un.__version__


def test_bad_num_samples():
    with pytest.raises(SystemExit):
        cli.main(["demo", "--num-samples", "0"])
