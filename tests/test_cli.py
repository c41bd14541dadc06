"""The jaxmlm command line: once as a user runs it (a subprocess on a CSV file), the rest through main()."""

import json
import subprocess
import sys

import pytest

import jaxmlm as jm
from jaxmlm.cli import main

FORMULA = "Reaction ~ Days + (Days | Subject)"


def _run(*args):
    return subprocess.run([sys.executable, "-m", "jaxmlm.cli", *args], capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def csv_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "sleep.csv"
    jm.datasets.load("sleepstudy").to_csv(path, index=False)
    return path


def test_fit_csv_prints_summary_and_writes_json(csv_path, tmp_path):
    out = tmp_path / "fit.json"
    res = _run("fit", FORMULA, str(csv_path), "--json", str(out))
    assert res.returncode == 0, res.stderr
    assert "Linear mixed model fit by REML" in res.stdout
    assert "Fixed effects:" in res.stdout and "Days" in res.stdout
    numbers = json.loads(out.read_text())
    fit = jm.lmer(FORMULA, jm.datasets.load("sleepstudy"))
    assert numbers["method"] == "reml"
    assert numbers["fixef"]["Days"] == pytest.approx(fit.fixef["Days"], rel=1e-8)
    assert numbers["sigma"] == pytest.approx(fit.sigma, rel=1e-8)
    assert numbers["nobs"] == 180


def test_fit_ml_bundled_dataset_json_to_stdout(capsys):
    assert main(["fit", FORMULA, "--data", "sleepstudy", "--ml", "--json", "-"]) == 0
    numbers = json.loads(capsys.readouterr().out)
    fit = jm.lmer(FORMULA, jm.datasets.load("sleepstudy"), reml=False)
    assert numbers["method"] == "ml"
    assert numbers["loglik"] == pytest.approx(fit.loglik, rel=1e-8)


def test_datasets_command(capsys):
    assert main(["datasets"]) == 0
    assert set(capsys.readouterr().out.split()) == set(jm.datasets.names())


@pytest.mark.parametrize(
    "args, message",
    [
        (("fit", "Reaction ~ Dayz + (1 | Subject)"), "Dayz"),
        (("fit", FORMULA, "no_such_file.csv"), "not found"),
        (("fit", FORMULA), "no data"),
        (("fit", FORMULA, "--data", "nosuchdata"), "nosuchdata"),
        (("fit", FORMULA, "--family", "gamma"), "gamma"),
    ],
)
def test_errors_are_one_line_exit_2(csv_path, args, message, capsys):
    args = list(args)
    if args[-1] == "Reaction ~ Dayz + (1 | Subject)" or args[-2:] == ["--family", "gamma"]:
        args.insert(2, str(csv_path))
    assert main(args) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("jaxmlm: error:") and message in lines[0], err


def test_error_in_a_subprocess_has_no_traceback():
    res = _run("fit", "Reaction ~ Days + (1 | Subject)", "no_such_file.csv")
    assert res.returncode == 2
    assert res.stderr.strip() == "jaxmlm: error: data file 'no_such_file.csv' not found"


def test_usage_error_exits_2(capsys):
    with pytest.raises(SystemExit) as info:
        main(["fit"])
    assert info.value.code == 2 and "usage" in capsys.readouterr().err
