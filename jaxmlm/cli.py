"""The ``jaxmlm`` command line.

    jaxmlm fit FORMULA DATA [--family F] [--link L] [--ml] [--method nuts] [--weights COL] [--offset COL]
                            [--factor COL ...] [--json OUT]
    jaxmlm fit FORMULA --data sleepstudy          (a bundled dataset)
    jaxmlm datasets                               (list the bundled datasets)

DATA is what the Python API reads: a .csv, .csv.gz or .tsv file, a parquet file (.parquet, .pq), an Arrow IPC
file (.arrow, .feather, .ipc), a directory of parquet or Arrow files, or a bundled dataset's name. ``--factor
COL`` (repeatable) reads a column as a factor (categorical, levels sorted as R's factor() sorts them), for
numeric codes that are categories. ``fit`` prints lme4's summary for a fit, or the posterior summary table with
``--method nuts``; ``--json OUT`` also writes the numbers (``-`` for standard output). Errors print one line and
exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import warnings

__all__ = ["main"]

EXIT_ERROR = 2


class _CliError(Exception):
    pass


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jaxmlm", description="Multilevel (mixed-effects) models in JAX.")
    sub = parser.add_subparsers(dest="command", required=True)
    fit = sub.add_parser("fit", help="fit a model and print its summary")
    fit.add_argument("formula", help="lme4 formula, e.g. 'Reaction ~ Days + (Days | Subject)'")
    fit.add_argument("path", nargs="?", help="data: .csv, .csv.gz, .tsv, .parquet, .arrow/.feather/.ipc, a "
                     "directory of parquet or Arrow files, or a bundled dataset's name")
    fit.add_argument("--data", dest="dataset", help="a bundled dataset by name instead of a file")
    fit.add_argument("--family", default="gaussian", help="gaussian (default), binomial or poisson")
    fit.add_argument("--link", default=None, help="link function (binomial: logit, probit, cloglog)")
    fit.add_argument("--ml", action="store_true", help="maximum likelihood instead of REML (Gaussian)")
    fit.add_argument("--weights", default=None, metavar="COL", help="column of prior weights")
    fit.add_argument("--offset", default=None, metavar="COL", help="column added to the linear predictor")
    fit.add_argument("--factor", action="append", default=[], metavar="COL",
                     help="read column COL as a factor (repeatable)")
    fit.add_argument("--nagq", type=int, default=1, help="adaptive Gauss-Hermite points (GLMM; 1 = Laplace)")
    fit.add_argument("--method", default=None, help="reml, ml, laplace, agq, or nuts (Bayesian)")
    fit.add_argument("--chains", type=int, default=4)
    fit.add_argument("--draws", type=int, default=1000)
    fit.add_argument("--warmup", type=int, default=1000)
    fit.add_argument("--seed", type=int, default=0)
    fit.add_argument("--json", dest="json_out", help="write the numbers as JSON to this file ('-': stdout)")
    sub.add_parser("datasets", help="list the bundled datasets")
    return parser


_CSV_SUFFIXES = (".csv", ".csv.gz", ".txt", ".txt.gz")
_TSV_SUFFIXES = (".tsv", ".tsv.gz", ".tab")
_ARROW_SUFFIXES = (".parquet", ".pq", ".arrow", ".feather", ".ipc")
_READABLE = ".csv, .csv.gz, .tsv, .parquet, .arrow/.feather/.ipc files, a directory of parquet or Arrow files"


def _read_file(path: str):
    """A DataFrame from a data file, by its name's suffix; an unknown suffix is refused before any reading."""
    import pandas as pd

    lower = path.lower()
    if not os.path.isdir(path) and not lower.endswith(_CSV_SUFFIXES + _TSV_SUFFIXES + _ARROW_SUFFIXES):
        raise _CliError(f"cannot read {os.path.basename(path)!r}: jaxmlm reads {_READABLE}, "
                        "or a bundled dataset's name")
    try:
        if os.path.isdir(path) or lower.endswith(_ARROW_SUFFIXES):
            from .formula._ingest import read_data

            return read_data(path)  # the Python API's reader (pyarrow)
        return pd.read_csv(path, sep="\t" if lower.endswith(_TSV_SUFFIXES) else ",")
    except _CliError:
        raise
    except Exception as exc:
        raise _CliError(f"cannot read {path!r}: {exc}") from None


def _read_data(args):
    from . import datasets

    if args.dataset and args.path:
        raise _CliError("give a data file or --data NAME, not both")
    if args.dataset:
        return datasets.load(args.dataset), args.dataset
    if not args.path:
        raise _CliError("no data: give a data file (CSV, parquet, Arrow) or --data NAME for a bundled dataset")
    path = args.path
    if not os.path.exists(path):
        if path.lower() in {n.lower() for n in datasets.names()}:
            return datasets.load(path), path
        raise _CliError(f"data file {path!r} not found (and no bundled dataset has that name: jaxmlm datasets)")
    return _read_file(path), os.path.basename(path.rstrip(os.sep))


def _declare_factors(frame, columns):
    """Columns named by --factor as categoricals (R's factor(): levels sorted, numbers as numbers)."""
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise _no_column("--factor", missing[0], frame)
    if columns:
        frame = frame.copy()
        for col in columns:
            frame[col] = frame[col].astype("category")
    return frame


def _no_column(option, column, frame) -> _CliError:
    return _CliError(f"{option}: no column {column!r} in the data (columns: {', '.join(map(str, frame.columns))})")


def _check_column(frame, column, option):
    if column is not None and column not in frame.columns:
        raise _no_column(option, column, frame)


def _clean(value):
    """JSON-safe numbers (NaN and infinities become null)."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        try:
            value = value.item()
        except (ValueError, AttributeError):
            pass
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _fit(args) -> int:
    from .fit._model import Model

    frame, name = _read_data(args)
    frame = _declare_factors(frame, args.factor)
    _check_column(frame, args.weights, "--weights")
    _check_column(frame, args.offset, "--offset")
    method = (args.method or "").lower() or None
    model = Model(args.formula, frame, family=args.family, link=args.link, weights=args.weights,
                  offset=args.offset, data_name=name)
    if method == "nuts":
        result = model.sample(chains=args.chains, draws=args.draws, warmup=args.warmup, seed=args.seed)
        text = repr(result)
    else:
        if method is None:
            if model.is_gaussian:
                method = "ml" if args.ml else "reml"
            else:
                method = "agq" if args.nagq > 1 else "laplace"
        elif args.ml and method != "ml":
            raise _CliError(f"--ml conflicts with --method {method}")
        result = model.fit(method=method, nagq=args.nagq if method == "agq" else None)
        text = str(result.summary())
    if args.json_out != "-":
        print(text)
    if args.json_out:
        payload = json.dumps(_clean(result.to_dict()), indent=2)
        if args.json_out == "-":
            print(payload)
        else:
            with open(args.json_out, "w") as fh:
                fh.write(payload + "\n")
    return 0


def _show_warning(message, category, filename, lineno, file=None, line=None):
    print(f"warning: {message}", file=sys.stderr)


def main(argv=None) -> int:
    """Entry point of the ``jaxmlm`` console script; returns the exit status. Runs in float64 (for this call only,
    `_config.float64`); JAX is imported only once a command needs it."""
    from ._config import float64

    return float64(_main)(argv)


def _main(argv=None) -> int:
    args = _parser().parse_args(argv)  # argparse itself exits with status 2 on bad usage
    previous, warnings.showwarning = warnings.showwarning, _show_warning
    try:
        if args.command == "datasets":
            from . import datasets

            for n in datasets.names():
                print(n)
            return 0
        return _fit(args)
    except KeyboardInterrupt:
        print("jaxmlm: interrupted", file=sys.stderr)
        return EXIT_ERROR
    except Exception as exc:  # one line, no traceback
        message = " ".join(str(exc).split()) or type(exc).__name__
        print(f"jaxmlm: error: {message}", file=sys.stderr)
        return EXIT_ERROR
    finally:
        warnings.showwarning = previous


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
