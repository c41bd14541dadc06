"""Classic mixed-model datasets, as R's lme4 ships them (factor levels in R's order).

>>> import jaxmlm as jm
>>> jm.datasets.load("sleepstudy").head()
"""

from __future__ import annotations

import functools
import json
from importlib import resources

import pandas as pd

__all__ = ["load", "names"]


@functools.lru_cache(maxsize=1)
def _schema() -> dict:
    with resources.files(__name__).joinpath("data/schema.json").open("r") as fh:
        return json.load(fh)


def names() -> list[str]:
    """The names of the bundled datasets."""
    return sorted(_schema(), key=str.lower)


def load(name: str) -> pd.DataFrame:
    """Load a bundled dataset as a pandas DataFrame; factors become ordered/unordered Categoricals in R's level order."""
    schema = _schema()
    lookup = {k.lower(): k for k in schema}
    key = lookup.get(str(name).lower())
    if key is None:
        raise ValueError(f"unknown dataset {name!r}; available: {', '.join(names())}")
    columns = schema[key]["columns"]
    dtypes = {c: str for c, spec in columns.items() if spec["kind"] == "factor"}
    with resources.files(__name__).joinpath(f"data/{key}.csv.gz").open("rb") as fh:
        frame = pd.read_csv(fh, compression="gzip", dtype=dtypes, keep_default_na=True)
    for col, spec in columns.items():
        kind = spec["kind"]
        if kind == "factor":
            frame[col] = pd.Categorical(frame[col], categories=spec["levels"], ordered=bool(spec.get("ordered")))
        elif kind == "integer":
            frame[col] = frame[col].astype("int64")
        elif kind == "numeric":
            frame[col] = frame[col].astype("float64")
    frame.attrs["name"] = key  # shown as "Data:" in summaries
    return frame
