"""The ``unnorm`` command line."""

import contextlib
import importlib
import io
import pathlib
import re
import subprocess
import sys

import arviz as az
import numpy as np
import pandas as pd
import pytest

import unnorm as un
from unnorm import cli


# The README's first command: every estimator, sampler and log Z method of the library compiled
# once more (a minute or more of CPU), so it runs with the documentation's checks (-m docs)
@pytest.mark.docs
def test_demo_runs_every_estimator_and_sampler_and_writes_its_folder(tmp_path, capsys):
    folder = tmp_path / "demo"
    assert cli.main(["demo", "--quick", "--out", str(folder)]) == 0
    text = capsys.readouterr().out
    for estimator in ("sm", "ssm", "dsm", "nce", "mle", "pcd", "ksd"):
        assert f"\n{estimator} (" in text
    assert "std_err" in text and "prec[0,1]" in text
    # each estimator's rows: truth, estimate, std_err, z; the truth is the simulation's, and
    # every estimator (DSM's O(σ²) bias is a small fraction of an SE here) lands within 4.5 SE
    rows = re.findall(r"(mu\[\d\]|prec\[\d,\d\])\s+(-?[\d.]+)\s+(-?[\d.]+)\s+([\d.]+)"
                      r"\s+(-?[\d.]+)", text)
    assert len(rows) == 7 * 6
    for _, truth, estimate, stderr, z in rows:
        assert float(z) == pytest.approx((float(estimate) - float(truth)) / float(stderr),
                                         abs=0.02 + 1e-3 / float(stderr))
        assert abs(float(z)) < 4.5, text
    for sampler in ("nuts", "hmc", "mala", "langevin", "rwmh", "gibbs"):
        assert f"── {sampler}" in text
    assert "ess_bulk" in text and "r_hat" in text
    assert "log Z: exact over 2^10 configurations" in text
    assert "annealed importance sampling" in text and "NCE's learned log Z" in text
    assert "kernel Stein test" in text
    names = {path.name for path in folder.iterdir()}
    assert {"compare.png", "fit_sm.png", "fit_pcd.png", "fit_energy.png",
            "energy_nuts.png"} <= names
    for sampler in ("nuts", "hmc", "mala", "langevin", "rwmh", "gibbs"):
        draws = un.from_netcdf(folder / f"draws_{sampler}.nc")
        assert draws.posterior["x"].shape[:2] == (4, 200)
    assert str(folder.resolve()) in text


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


# ---- unnorm fit / sample / compare on the example files ------------------------------------------
EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"
MODEL = f"{EXAMPLES / 'gaussian_model.py'}:model"
DATA = str(EXAMPLES / "gaussian_data.csv")


@pytest.fixture(scope="module")
def saved_fit(tmp_path_factory):
    """``unnorm fit ... --out fit.json`` once for the tests that read it: the printed text and
    the path."""
    path = tmp_path_factory.mktemp("fit") / "fit.json"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert cli.main(["fit", MODEL, DATA, "--estimator", "sm", "--num-steps", "300",
                         "--out", str(path)]) == 0
    return out.getvalue(), path


def test_fit_prints_the_summary_and_saves_a_loadable_fit(saved_fit):
    text, path = saved_fit
    for column in ("estimate", "std_err", "ci_lower", "ci_upper"):
        assert column in text
    assert "mu[0]" in text and "prec[1,1]" in text
    assert "method: " in text and "stages: " in text and " s\n" in text
    fit = un.load_fit(path)
    assert fit.estimator == "sm" and fit.num_observations == 500
    # the example data were drawn with mean (1, -0.5)
    assert abs(float(fit.params["mu"][0]) - 1.0) < 4 * float(fit.stderr["mu"][0]) + 0.1
    assert f"{float(fit.params['mu'][0]):.6f}" in text


def test_sample_at_a_saved_fit_writes_netcdf_that_arviz_reads(saved_fit, tmp_path, capsys):
    _, fit_path = saved_fit
    path = tmp_path / "draws.nc"
    assert cli.main(["sample", MODEL, "--sampler", "mala", "--params", str(fit_path),
                     "--num-chains", "2", "--num-warmup", "100", "--num-samples", "100",
                     "--seed", "3", "--out", str(path)]) == 0
    text = capsys.readouterr().out
    assert "x[0]" in text and "r_hat" in text and "the sm fit in" in text
    idata = az.from_netcdf(path)
    assert idata.posterior["x"].shape == (2, 100, 2)


def test_compare_prints_the_table_and_writes_csv(tmp_path, capsys):
    path = tmp_path / "table.csv"
    assert cli.main(["compare", MODEL, DATA, "--estimators", "sm,ssm", "--num-steps", "100",
                     "--out", str(path)]) == 0
    text = capsys.readouterr().out
    assert "estimator" in text and "ssm" in text and "prec[0,1]" in text
    table = pd.read_csv(path)
    assert list(table["estimator"].unique()) == ["sm", "ssm"]
    assert len(table) == 12


def test_model_may_be_a_function_and_data_a_npy_file_of_one_column(tmp_path, capsys):
    # the model file imports a module beside it
    (tmp_path / "cli_test_sizes.py").write_text("D = 1\n")
    (tmp_path / "models.py").write_text(
        "import unnorm as un\nfrom cli_test_sizes import D\n\n"
        "def make():\n    return un.models.gaussian(D)\n")
    np.save(tmp_path / "x.npy", np.random.default_rng(0).normal(2.0, 1.0, size=200))
    assert cli.main(["fit", f"{tmp_path / 'models.py'}:make", str(tmp_path / "x.npy"),
                     "--estimator", "sm", "--no-stderr"]) == 0
    text = capsys.readouterr().out
    assert "mu[0]" in text and "200 observations" in text


def _error(capsys, argv) -> str:
    """The one line ``cli.main(argv)`` prints on stderr as it exits with a non-zero status."""
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code not in (0, None)
    err = capsys.readouterr().err
    assert err.startswith("unnorm: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    return err


@pytest.fixture
def model_file(tmp_path):
    path = tmp_path / "things.py"
    path.write_text("import unnorm as un\n\nmodel = un.models.gaussian(2)\nnumber = 3\n\n"
                    "def needs(d):\n    return un.models.gaussian(d)\n\n"
                    "def wrong():\n    return 'a string'\n")
    return path


@pytest.mark.parametrize("spec, message", [
    ("{file}", "argument FILE.py:MODEL: expected a Python file and the name of the model"),
    ("{file}:", "expected a Python file and the name of the model in it, e.g."),
    ("{dir}/missing.py:model", "no file"),
    ("{file}:absent", "has no name 'absent'; models defined there: model"),
    ("{file}:number", "'number' in .* is a int, not an unnorm.Model"),
    ("{file}:needs", "is a function of d"),
    ("{file}:wrong", "returned a str, not an unnorm.Model"),
])
def test_bad_model_argument(capsys, model_file, spec, message):
    spec = spec.format(file=model_file, dir=model_file.parent)
    err = _error(capsys, ["fit", spec, DATA, "--estimator", "sm"])
    assert re.search(message, err), err


def test_bad_data_argument(capsys, model_file, tmp_path):
    model = f"{model_file}:model"
    (tmp_path / "words.csv").write_text("a,b\n1.0,x\n")
    (tmp_path / "three.csv").write_text("1,2,3\n4,5,6\n")
    (tmp_path / "data.txt").write_text("1,2\n")
    cases = [
        (str(tmp_path / "none.csv"), "argument DATA: no file"),
        (str(tmp_path / "data.txt"), "argument DATA: expected a .npy or .csv file"),
        (str(tmp_path / "words.csv"), "argument DATA: cannot read .* as numbers"),
        (str(tmp_path / "three.csv"), r"observations of shape \(3,\) .* shape \(2,\)"),
    ]
    for data, message in cases:
        assert re.search(message, _error(capsys, ["fit", model, data, "--estimator", "sm"]))


def test_bad_names_and_values(capsys, model_file, tmp_path):
    model = f"{model_file}:model"
    err = _error(capsys, ["fit", model, DATA, "--estimator", "bogus"])
    assert "argument --estimator: unknown estimator 'bogus'" in err and "'ssm'" in err
    err = _error(capsys, ["fit", model, DATA, "--estimator", "pl"])
    assert "argument --estimator:" in err
    err = _error(capsys, ["compare", model, DATA, "--estimators", "sm,,nce"])
    assert "argument --estimators: expected names separated by commas" in err
    err = _error(capsys, ["compare", model, DATA, "--estimators", "sm,nope"])
    assert "argument --estimators: unknown estimator 'nope'" in err
    err = _error(capsys, ["sample", model, "--sampler", "bogus"])
    assert "argument --sampler: unknown sampler 'bogus'" in err and "'nuts'" in err
    err = _error(capsys, ["sample", model, "--sampler", "gibbs"])
    assert "argument --sampler:" in err and "does not apply" in err
    (tmp_path / "not_a_fit.json").write_text("{}")
    err = _error(capsys, ["sample", model, "--sampler", "nuts", "--params",
                          str(tmp_path / "not_a_fit.json")])
    assert "argument --params:" in err and "is not a saved fit" in err
    err = _error(capsys, ["sample", model, "--sampler", "nuts", "--num-samples", "0"])
    assert "argument --num-samples: expected an integer >= 1; got '0'" in err
    err = _error(capsys, ["fit", model, DATA])
    assert "--estimator" in err and "required" in err


def test_errors_of_unnorm_itself_are_one_line_but_those_of_the_model_file_are_not(
        capsys, model_file, tmp_path):
    np.save(tmp_path / "nan.npy", np.full((10, 2), np.nan))
    err = _error(capsys, ["fit", f"{model_file}:model", str(tmp_path / "nan.npy"),
                          "--estimator", "sm"])
    assert "data" in err
    (tmp_path / "raises.py").write_text("raise TypeError('a bug in the model file')\n")
    with pytest.raises(TypeError, match="a bug in the model file"):
        cli.main(["fit", f"{tmp_path / 'raises.py'}:model", DATA, "--estimator", "sm"])


@pytest.mark.parametrize("command", ["fit", "sample", "compare"])
def test_subcommand_help(capsys, command):
    with pytest.raises(SystemExit) as exit_info:
        cli.main([command, "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "FILE.py:MODEL" in text and "executed as Python" in text and "example:" in text


def test_help_imports_no_jax():
    """``import unnorm.cli`` (what the console script and ``python -m unnorm`` run) and
    ``--help`` leave JAX, NumPyro, ArviZ and pandas unimported; the public names still load on
    first use."""
    code = ("import sys, contextlib, io\n"
            "import unnorm.cli\n"
            "heavy = ('jax', 'numpyro', 'arviz', 'pandas', 'unnorm.driver')\n"
            "for args in (['--help'], ['fit', '--help'], ['sample', '--help'],\n"
            "             ['compare', '--help']):\n"
            "    with contextlib.redirect_stdout(io.StringIO()):\n"
            "        try:\n"
            "            unnorm.cli.main(args)\n"
            "        except SystemExit:\n"
            "            pass\n"
            "loaded = [name for name in heavy if name in sys.modules]\n"
            "assert not loaded, loaded\n"
            "import unnorm as un\n"
            "assert callable(un.stein.ksd)  # a submodule no public name has loaded yet\n"
            "from unnorm import model, fit, samplers\n"
            "import unnorm.model\n"
            "assert un.model is model and callable(un.fit) and 'jax' in sys.modules\n")
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)


def test_lazy_package_keeps_every_public_name():
    assert sorted(un.__all__) == sorted(set(un.__all__))
    for name in un.__all__:
        assert name in dir(un)
        assert getattr(un, name) is getattr(importlib.import_module("unnorm"), name)
    # importing the submodule unnorm/model.py leaves un.model the decorator
    assert un.model is sys.modules["unnorm.model"].model
