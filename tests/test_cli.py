"""The jaxmlm command line: once as a user runs it (a subprocess on a CSV file), the rest through main()."""

import json
import os
import subprocess
import sys

import pytest
from conftest import run_cache_reader_env

import jaxmlm as jm
from jaxmlm.cli import main

FORMULA = "Reaction ~ Days + (Days | Subject)"


def _run(*args):
    env = dict(os.environ, **run_cache_reader_env())  # programs the run compiled already
    return subprocess.run([sys.executable, "-m", "jaxmlm.cli", *args], capture_output=True, text=True, timeout=300,
                          env=env)


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
        (("fit", FORMULA, "--family", "student"), "student"),
    ],
)
def test_errors_are_one_line_exit_2(csv_path, args, message, capsys):
    args = list(args)
    if args[-1] == "Reaction ~ Dayz + (1 | Subject)" or args[-2:] == ["--family", "student"]:
        args.insert(2, str(csv_path))
    assert main(args) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("jaxmlm: error:") and message in lines[0], err


def test_error_in_a_subprocess_has_no_traceback():
    res = _run("fit", "Reaction ~ Days + (1 | Subject)", "no_such_file.csv")
    assert res.returncode == 2
    assert res.stderr.strip() == ("jaxmlm: error: data file 'no_such_file.csv' not found (and no bundled dataset "
                                  "has that name: jaxmlm datasets)")


def test_usage_error_exits_2(capsys):
    with pytest.raises(SystemExit) as info:
        main(["fit"])
    assert info.value.code == 2 and "usage" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- data sources
def _json_fit(capsys, *args):
    assert main(["fit", *args, "--json", "-"]) == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out)


@pytest.fixture(scope="module")
def sleep_frame():
    import numpy as np

    frame = jm.datasets.load("sleepstudy").copy()
    frame["w"] = np.linspace(0.5, 2.0, len(frame))
    frame["o"] = 0.1 * np.arange(len(frame)) % 3
    return frame


@pytest.mark.parametrize("suffix", [".csv.gz", ".tsv", ".parquet", ".feather", "dir"])
def test_every_source_the_api_reads(sleep_frame, suffix, tmp_path, capsys):
    """The same numbers from a gzipped CSV, a TSV, parquet, Arrow IPC and a directory of parquet files."""
    frame = sleep_frame[["Reaction", "Days", "Subject"]]
    path = tmp_path / f"sleep{suffix}"
    if suffix == ".csv.gz":
        frame.to_csv(path, index=False)
    elif suffix == ".tsv":
        frame.to_csv(path, sep="\t", index=False)
    elif suffix == ".parquet":
        frame.to_parquet(path)
    elif suffix == ".feather":
        frame.to_feather(path)
    else:
        path.mkdir()
        frame.iloc[:90].to_parquet(path / "part-0.parquet")
        frame.iloc[90:].to_parquet(path / "part-1.parquet")
    numbers = _json_fit(capsys, FORMULA, str(path))
    fit = jm.lmer(FORMULA, jm.datasets.load("sleepstudy"))
    assert numbers["fixef"]["Days"] == pytest.approx(fit.fixef["Days"], rel=1e-8)
    assert numbers["nobs"] == 180


def test_bundled_dataset_name_as_the_data_argument(capsys):
    numbers = _json_fit(capsys, FORMULA, "SleepStudy")  # names are matched without case, as --data
    assert numbers["nobs"] == 180 and numbers["method"] == "reml"


def test_weights_and_offset_columns(sleep_frame, tmp_path, capsys):
    path = tmp_path / "weighted.csv"
    sleep_frame.to_csv(path, index=False)
    numbers = _json_fit(capsys, FORMULA, str(path), "--weights", "w", "--offset", "o")
    fit = jm.lmer(FORMULA, sleep_frame, weights="w", offset="o")
    assert numbers["fixef"]["Days"] == pytest.approx(fit.fixef["Days"], rel=1e-8)
    assert numbers["sigma"] == pytest.approx(fit.sigma, rel=1e-8)


def test_factor_columns(sleep_frame, tmp_path, capsys):
    path = tmp_path / "codes.csv"
    sleep_frame.to_csv(path, index=False)
    formula = "Reaction ~ Days + (1 | Subject)"
    numbers = _json_fit(capsys, formula, str(path), "--factor", "Days", "--factor", "Subject")
    frame = sleep_frame.assign(Days=sleep_frame["Days"].astype("category"))
    fit = jm.lmer(formula, frame)
    assert list(numbers["fixef"]) == list(fit.fixef.index) == ["(Intercept)"] + [f"Days{k}" for k in range(1, 10)]
    assert numbers["fixef"]["Days9"] == pytest.approx(fit.fixef["Days9"], rel=1e-8)


@pytest.mark.parametrize("args, message", [
    (("data.xlsx",), "cannot read 'data.xlsx': jaxmlm reads .csv, .csv.gz, .tsv, .parquet"),
    (("sleep.csv", "--factor", "Dayz"), "--factor: no column 'Dayz'"),
    (("sleep.csv", "--weights", "wt"), "--weights: no column 'wt'"),
    (("sleep.csv", "--offset", "off"), "--offset: no column 'off'"),
])
def test_bad_files_and_columns_are_refused(csv_path, args, message, capsys):
    args = [str(csv_path) if a == "sleep.csv" else a for a in args]
    if args[0] == "data.xlsx":
        bogus = csv_path.parent / "data.xlsx"
        bogus.write_text("not a spreadsheet")
        args[0] = str(bogus)
    assert main(["fit", FORMULA, *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("jaxmlm: error:") and message in err, err
