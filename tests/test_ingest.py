"""Arrow-family input (parquet, IPC, datasets, tables, readers, polars): the same models as from pandas, reading only
the formula's columns, batch by batch."""

import warnings

import numpy as np
import pandas as pd
import pytest

pa = pytest.importorskip("pyarrow")
import pyarrow.dataset as ds  # noqa: E402
import pyarrow.feather as feather  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

import jaxmlm as jm  # noqa: E402
from jaxmlm.formula import _ingest  # noqa: E402

SLEEP = "Reaction ~ Days + (Days | Subject)"
CROSSED = "y ~ x + f + (1 | a) + (1 | b)"


def _with_extra(table):
    """An extra column no formula names, of a type the reader does not convert (it must never be read)."""
    extra = pa.array([[i, i + 1] for i in range(table.num_rows)], type=pa.list_(pa.int64()))
    return table.append_column("extra", extra)


@pytest.fixture(scope="module")
def sleep_frame():
    d = jm.datasets.load("sleepstudy")
    return d.assign(Subject=d["Subject"].astype(str).astype(object))  # plain strings, as a file would hold them


@pytest.fixture(scope="module")
def sleep_table(sleep_frame):
    return _with_extra(pa.Table.from_pandas(sleep_frame, preserve_index=False))


@pytest.fixture(scope="module")
def sleep_fit(sleep_frame):
    return jm.Model(SLEEP, sleep_frame).fit()


@pytest.fixture(scope="module")
def files(tmp_path_factory, sleep_table):
    root = tmp_path_factory.mktemp("ingest")
    pq.write_table(sleep_table, root / "sleep.parquet", row_group_size=37)  # several row groups
    feather.write_feather(sleep_table, root / "sleep.arrow", chunksize=50)
    (root / "parts").mkdir()
    for k, start in enumerate(range(0, sleep_table.num_rows, 70)):
        pq.write_table(sleep_table.slice(start, 70), root / "parts" / f"part-{k}.parquet")
    return root


SOURCES = ["parquet", "ipc", "directory", "table", "reader", "dataset", "polars"]


def _source(kind, files, table):
    if kind == "parquet":
        return str(files / "sleep.parquet")
    if kind == "ipc":
        return files / "sleep.arrow"  # a PathLike
    if kind == "directory":
        return str(files / "parts")
    if kind == "table":
        return table
    if kind == "reader":
        return table.to_reader(max_chunksize=40)
    if kind == "dataset":
        return ds.dataset(str(files / "sleep.parquet"))
    pl = pytest.importorskip("polars")
    return pl.from_arrow(table.drop_columns(["extra"]))


def _same_fit(got, want):
    assert got.objective == pytest.approx(want.objective, rel=1e-12)
    assert list(got.fixef.index) == list(want.fixef.index)
    np.testing.assert_allclose(got.fixef.to_numpy(), want.fixef.to_numpy(), rtol=1e-8)
    for name, re_want in want.ranef().items():
        re_got = got.ranef()[name]
        assert list(re_got.index) == list(re_want.index)
        np.testing.assert_allclose(re_got.to_numpy(), re_want.to_numpy(), rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("kind", SOURCES)
def test_every_source_fits_as_pandas(kind, files, sleep_table, sleep_fit):
    fit = jm.Model(SLEEP, _source(kind, files, sleep_table)).fit()
    _same_fit(fit, sleep_fit)


def test_only_the_formula_columns_are_read(files, sleep_frame):
    frame = jm.read_data(files / "sleep.parquet", columns=["Subject", "Reaction"])
    assert list(frame.columns) == ["Reaction", "Subject"]  # the file's order
    assert isinstance(frame["Subject"].dtype, pd.CategoricalDtype)
    assert list(frame["Subject"].cat.categories) == sorted(sleep_frame["Subject"].unique())
    np.testing.assert_array_equal(frame["Subject"].astype(str).to_numpy(), sleep_frame["Subject"].to_numpy())
    model = jm.Model(SLEEP, files / "sleep.parquet")
    assert model.design.n == len(sleep_frame)
    with pytest.raises(jm.DataError, match="no column 'Reaktion'; did you mean 'Reaction'"):
        jm.read_data(files / "sleep.parquet", columns=["Reaktion"])


def test_missing_column_is_the_pandas_formula_error(files, sleep_frame):
    formula = "Reaktion ~ Days + (Days | Subject)"
    with pytest.raises(jm.FormulaError) as from_pandas:
        jm.Model(formula, sleep_frame)
    with pytest.raises(jm.FormulaError) as from_parquet:
        jm.Model(formula, files / "sleep.parquet")
    assert str(from_parquet.value) == str(from_pandas.value)
    assert "did you mean 'Reaction'" in str(from_parquet.value)
    with pytest.raises(jm.FormulaError, match="weights='w' is not a column"):
        jm.Model(SLEEP, files / "sleep.parquet", weights="w")


def test_unsupported_sources_are_refused(tmp_path):
    with pytest.raises(jm.DataTypeError, match="must be a pandas or polars DataFrame"):
        jm.read_data([1, 2, 3])
    sheet = tmp_path / "data.xlsx"
    sheet.write_bytes(b"PK\x03\x04 not a table jaxmlm reads")
    with pytest.raises(jm.DataTypeError, match="CSV / TSV files"):
        jm.Model(SLEEP, sheet)
    with pytest.raises(FileNotFoundError):
        jm.read_data(tmp_path / "absent.parquet")
    with pytest.raises(FileNotFoundError, match=r"bundled dataset: data=jm\.datasets\.load\('sleepstudy'\)"):
        jm.Model(SLEEP, "sleepstudy")  # a name, not a path
    with pytest.raises(jm.DataError, match="batch_rows"):
        jm.read_data(pa.table({"y": [1.0]}), batch_rows=0)


@pytest.mark.parametrize("name,sep", [("sleep.csv", ","), ("sleep.csv.gz", ","), ("sleep.tsv", "\t")])
def test_csv_paths_fit_as_pandas(tmp_path, sleep_frame, sleep_fit, name, sep):
    """The Python API reads the CSV and TSV files the command line reads (pyarrow's CSV reader, by suffix)."""
    path = tmp_path / name
    sleep_frame.to_csv(path, sep=sep, index=False)
    _same_fit(jm.Model(SLEEP, path).fit(), sleep_fit)
    frame = jm.read_data(str(path), columns=["Subject", "Reaction"])
    np.testing.assert_array_equal(frame["Reaction"].to_numpy(), sleep_frame["Reaction"].to_numpy())
    np.testing.assert_array_equal(frame["Subject"].astype(str).to_numpy(), sleep_frame["Subject"].astype(str).to_numpy())


# ---------------------------------------------------------------------------- crossed model, dictionaries, nulls
def _crossed_frame(n=240, seed=3):
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 12, n)
    b = rng.integers(0, 9, n)
    f = rng.integers(0, 3, n)
    x = rng.standard_normal(n)
    y = 1 + 0.5 * x + np.array([0.0, 0.7, -0.4])[f] + rng.standard_normal(12)[a] + 0.5 * rng.standard_normal(9)[b]
    y = y + 0.8 * rng.standard_normal(n)
    return pd.DataFrame({
        "y": y,
        "x": x,
        "f": pd.Categorical(np.array(["c", "a", "b"])[f], categories=["c", "a", "b"]),  # not sorted: kept
        "a": np.array([f"s{k}" for k in range(12)], dtype=object)[a],  # strings: sorted levels
        "b": (b * 7 + 100).astype(np.int64),  # integer ids stay integers
    })


def _to_table(frame):
    t = pa.Table.from_pandas(frame, preserve_index=False)
    return t.set_column(t.schema.get_field_index("f"), "f", t.column("f").cast(pa.dictionary(pa.int32(), pa.string())))


@pytest.fixture(scope="module")
def crossed():
    frame = _crossed_frame()
    frame.loc[[3, 50], "x"] = np.nan  # nulls in a numeric column: dropped as NA
    frame.loc[[10], "a"] = None  # a null grouping value: dropped as NA
    frame.loc[[77], "b"] = -1
    frame.loc[[77], "y"] = np.nan  # the only row of b = -1: its level vanishes with the row
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", jm.MissingValuesWarning)
        want = jm.Model(CROSSED, frame).fit()
    return frame, want


def test_crossed_model_from_parquet_with_dictionaries_and_nulls(tmp_path, crossed):
    frame, want = crossed
    table = _to_table(frame)
    assert table.column("x").null_count == 2 and pa.types.is_dictionary(table.schema.field("f").type)
    path = tmp_path / "crossed.parquet"
    pq.write_table(table, path, row_group_size=64)
    with pytest.warns(jm.MissingValuesWarning, match="4 row"):
        fit = jm.Model(CROSSED, path).fit()
    assert list(fit.fixef.index) == ["(Intercept)", "x", "fa", "fb"]  # f's own level order, 'c' first
    assert -1 not in fit.ranef()["b"].index.astype(int)
    _same_fit(fit, want)
    # predict on an Arrow table of new rows (all its columns) = predict on the same rows in pandas
    rows = frame.iloc[:20].dropna()
    np.testing.assert_allclose(fit.predict(_to_table(rows)).to_numpy(), want.predict(rows).to_numpy(), rtol=1e-10)


def test_unused_string_level_after_na_drop_matches_pandas(tmp_path):
    frame = _crossed_frame(seed=5).assign(h=lambda d: np.where(np.arange(len(d)) % 2, "p", "q").astype(object))
    frame.loc[0, "h"] = "r"  # the only 'r' row loses its response: pandas never sees the level
    frame.loc[0, "y"] = np.nan
    formula = "y ~ x + h + (1 | a)"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", jm.MissingValuesWarning)
        want = jm.Model(formula, frame).fit()
        warnings.simplefilter("error", jm.RankDeficiencyWarning)
        got = jm.Model(formula, pa.Table.from_pandas(frame, preserve_index=False)).fit()
    _same_fit(got, want)


# ---------------------------------------------------------------------------- batches
def _batchy_table():
    """Columns whose batches differ: nulls in some batches only, a dictionary column with per-batch dictionaries."""
    rng = np.random.default_rng(0)
    batches = []
    for k in range(4):
        n = 23 + 5 * k
        words = np.array(["delta", "alpha", "émile", "Zed", "b", f"only{k}"], dtype=object)[rng.integers(0, 6, n)]
        words[rng.random(n) < 0.1] = None
        ints = pa.array(rng.integers(-5, 5, n), mask=(rng.random(n) < 0.2) if k == 2 else None)
        flags = pa.array(rng.random(n) < 0.5, mask=(rng.random(n) < 0.2) if k == 1 else None)
        dict_values = pa.array(["u", "t", "s"][k % 2:])
        codes = pa.array(rng.integers(0, len(dict_values), n), type=pa.int32())
        batches.append(pa.record_batch({
            "v": pa.array(rng.standard_normal(n).astype(np.float32)),
            "w": pa.array(words, type=pa.large_string()),
            "i": ints,
            "k": flags,
            "d": pa.DictionaryArray.from_arrays(codes, dict_values),
        }))
    return pa.Table.from_batches(batches)


def test_tiny_batches_give_the_same_frame(monkeypatch):
    table = _batchy_table()
    whole = jm.read_data(table, batch_rows=10**6)
    for name in ("_FLUSH_ROWS", "_FLUSH_LEVELS", "_LEVEL_RATIO"):  # grow the dictionaries after every batch, too
        monkeypatch.setattr(_ingest, name, 1)
    tiny = jm.read_data(table, batch_rows=7)
    streamed = jm.read_data(table.to_reader(max_chunksize=11), batch_rows=7)  # length unknown up front
    pd.testing.assert_frame_equal(tiny, whole)
    pd.testing.assert_frame_equal(streamed, whole)
    # against the values themselves (pandas' own conversion of the table)
    plain = table.to_pandas()
    assert whole["v"].dtype == np.float64 and whole["i"].dtype == np.float64  # float32 widened; ints with nulls
    np.testing.assert_array_equal(whole["v"].to_numpy(), plain["v"].to_numpy(dtype=np.float64))
    np.testing.assert_array_equal(whole["i"].isna(), plain["i"].isna())
    assert list(whole["k"]) == list(plain["k"])
    words = whole["w"].cat.categories
    assert list(words) == sorted(words) and not whole["w"].cat.codes.lt(-1).any()
    assert list(whole["w"].astype(object).fillna("<NA>")) == list(plain["w"].astype(object).fillna("<NA>"))
    assert list(whole["d"].cat.categories) == ["u", "t", "s"]  # first appearance across batch dictionaries
    assert list(whole["d"].astype(str)) == list(plain["d"].astype(str))


def test_poststratify_and_predict_take_arrow_frames():
    rng = np.random.default_rng(0)
    poll = pd.DataFrame({"state": rng.choice(["A", "B", "C", "D"], size=240, p=[0.4, 0.3, 0.2, 0.1]),
                         "age": rng.choice(["18-29", "30-44", "45+"], size=240)})
    poll["y"] = 2.0 + (poll["state"] == "C") - (poll["state"] == "A") + 0.5 * (poll["age"] == "45+")
    poll["y"] += rng.normal(size=240)
    fit = jm.lmer("y ~ age + (1 | state)", pa.Table.from_pandas(poll, preserve_index=False))
    cells = pd.MultiIndex.from_product([["A", "B", "C", "D", "E"], ["18-29", "30-44", "45+"]],
                                       names=["state", "age"]).to_frame(index=False)
    cells["N"] = np.arange(1, len(cells) + 1) * 10.0
    want = jm.poststratify(fit, cells, weight="N", by=["state"], draws=50, seed=1)
    got = jm.poststratify(fit, pa.Table.from_pandas(cells, preserve_index=False), weight="N", by=["state"],
                          draws=50, seed=1)
    assert list(got["state"].astype(str)) == list(want["state"].astype(str))
    np.testing.assert_allclose(got[["estimate", "sd"]].to_numpy(), want[["estimate", "sd"]].to_numpy(), rtol=1e-12)
