"""Arrow-family sources → a pandas frame holding only the columns a model needs, read batch by batch.

Sources: a pyarrow Table or RecordBatch, a RecordBatchReader, a pyarrow.dataset Dataset, a polars DataFrame
(through its Arrow form), or a path to a parquet file, an Arrow IPC (feather) file, a directory of them, or a
CSV / TSV file (optionally gzipped; read by pyarrow's CSV reader, as the command line reads it).
Only the requested columns are read (column projection), `batch_rows` rows at a time into preallocated output
arrays, so the peak is the output columns plus a few batches.

What each Arrow type becomes, chosen so that a model fitted from it equals the model fitted from the same data
in pandas:
- strings → `pd.Categorical` with sorted levels (R's factor(); pandas' factorize(sort=True) and formulaic sort
  string levels the same way). Batches are dictionary-encoded together with the running dictionary of levels,
  so a string is held once per level plus once per row of the few batches waiting, never once per row of the
  data. Levels met only in rows later dropped for missing values are dropped by the design (attrs
  "string_columns"), as formulaic never sees them in a pandas string column.
- dictionary-typed columns (a pandas categorical or polars Categorical written to Arrow) → `pd.Categorical` in the
  dictionary's own order, unused entries kept, as pyarrow's to_pandas gives them.
- floating point → float64; integers keep their type, or float64 with NaN where nulls occur; booleans stay bool,
  or object with None where nulls occur (pandas' conversions), so jaxmlm's missing-value handling applies.
- anything else (dates, decimals, ...) → pyarrow's own to_pandas of the column.
pyarrow is needed only here and is imported when a source needs it.
"""

from __future__ import annotations

import os
from typing import Any, Iterable, Iterator

import numpy as np
import pandas as pd

from .._config import float64
from .._errors import DataError, DataTypeError

__all__ = ["read_data", "read_frame", "is_arrow_source", "column_names"]

BATCH_ROWS = 1 << 20  # rows per batch: ~8 MiB per float64 column in flight, large enough to amortize per-batch work
# when the batches waiting to join a categorical column's running dictionary are coded (see _Categories)
_FLUSH_ROWS = 1 << 22
_FLUSH_BYTES = 1 << 28
_FLUSH_LEVELS = 1 << 16
_LEVEL_RATIO = 4
_PARQUET_MAGIC = b"PAR1"
_IPC_MAGIC = b"ARROW1"
_IPC_SUFFIXES = (".arrow", ".feather", ".ipc")
_CSV_SUFFIXES = (".csv", ".csv.gz", ".txt", ".txt.gz")
_TSV_SUFFIXES = (".tsv", ".tsv.gz", ".tab")


def _pyarrow():
    try:
        import pyarrow as pa
        import pyarrow.compute  # noqa: F401
        import pyarrow.dataset  # noqa: F401
        import pyarrow.csv  # noqa: F401
    except ImportError:  # pragma: no cover - exercised only without pyarrow
        raise ImportError(
            "reading Arrow tables, datasets, parquet or IPC files needs pyarrow: pip install pyarrow"
        ) from None
    return pa


def _is_polars_frame(obj: Any) -> bool:
    return type(obj).__module__.startswith("polars") and hasattr(obj, "to_arrow")


def is_arrow_source(obj: Any) -> bool:
    """True for the sources this module reads (without importing pyarrow for anything else)."""
    if isinstance(obj, (str, os.PathLike)):
        return True
    if not type(obj).__module__.startswith("pyarrow"):
        return False
    pa = _pyarrow()
    return isinstance(obj, (pa.Table, pa.RecordBatch, pa.RecordBatchReader, pa.dataset.Dataset))


def column_names(data: Any) -> list[str] | None:
    """The column names of a source this module reads (polars, Arrow-family), without reading rows; else None."""
    if _is_polars_frame(data):
        return list(data.columns)
    if is_arrow_source(data):
        return list(_open(data)[0].schema.names)
    return None


# ---------------------------------------------------------------------------------------------------- sources
def _path_format(path: str) -> str:
    """'parquet' or 'ipc' from a file's magic bytes (a directory: from its files' names)."""
    if os.path.isdir(path):
        names = [n for _, _, files in os.walk(path) for n in files if not n.startswith((".", "_"))]
        if names and all(n.lower().endswith(_IPC_SUFFIXES) for n in names):
            return "ipc"
        return "parquet"
    if not os.path.exists(path):
        from .. import datasets

        bundled = {name.lower(): name for name in datasets.names()}
        hint = ""
        if path.lower() in bundled:
            hint = f"; {bundled[path.lower()]!r} is a bundled dataset: data=jm.datasets.load({bundled[path.lower()]!r})"
        raise FileNotFoundError(f"data given as a path, but there is no such file or directory: {path!r}{hint}")
    if path.lower().endswith(_CSV_SUFFIXES):
        return "csv"
    if path.lower().endswith(_TSV_SUFFIXES):
        return "tsv"
    with open(path, "rb") as fh:
        head = fh.read(6)
    if head[:4] == _PARQUET_MAGIC:
        return "parquet"
    if head == _IPC_MAGIC:
        return "ipc"
    raise DataTypeError(
        f"cannot read {os.path.basename(path)!r}: jaxmlm reads parquet files, Arrow IPC (feather v2) files, "
        "directories of parquet files and CSV / TSV files (.csv, .csv.gz, .tsv); load other formats with pandas or "
        "polars first"
    )


def _open(source: Any):
    """(dataset or table or reader, format) for any accepted source; paths and polars frames are opened lazily."""
    pa = _pyarrow()
    ds = pa.dataset
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        fmt = _path_format(path)
        if fmt == "tsv":
            tabs = ds.CsvFileFormat(parse_options=pa.csv.ParseOptions(delimiter="\t"))
            return ds.dataset(path, format=tabs), fmt
        return ds.dataset(path, format=fmt), fmt
    if isinstance(source, pa.RecordBatch):
        return pa.Table.from_batches([source]), None
    if isinstance(source, (pa.Table, pa.RecordBatchReader, ds.Dataset)):
        return source, None
    if _is_polars_frame(source):
        return source, "polars"
    raise DataTypeError(
        "data must be a pandas or polars DataFrame, a pyarrow Table, RecordBatchReader or Dataset, or a path to "
        f"a parquet / Arrow IPC file or directory; got {type(source).__name__}"
    )


def _batches(source: Any, fmt: str | None, names: list[str], batch_rows: int):
    """(iterator of RecordBatches of the named columns, total rows or None when only reading tells)."""
    pa = _pyarrow()
    if fmt == "polars":
        table = source.select(names).to_arrow()  # polars → Arrow is zero-copy for numbers
        return iter(table.to_batches(max_chunksize=batch_rows)), table.num_rows
    if isinstance(source, pa.Table):
        table = source.select(names)
        return iter(table.to_batches(max_chunksize=batch_rows)), table.num_rows
    if isinstance(source, pa.RecordBatchReader):
        def sliced() -> Iterator:
            for batch in source:
                batch = batch.select(names)
                for start in range(0, batch.num_rows, batch_rows):
                    yield batch.slice(start, batch_rows)

        return sliced(), None
    try:
        n_rows = source.count_rows()  # parquet / IPC metadata: no rows read
    except Exception:  # a dataset that cannot count cheaply: collect batch by batch instead
        n_rows = None
    # Little read-ahead, and parquet without pre-buffering (which holds whole files of column chunks): the
    # scan then keeps ~2 batches alive (71 MiB against 480 MiB by default at 10M rows x 3 columns).
    options = {}
    if isinstance(getattr(source, "format", None), pa.dataset.ParquetFileFormat):
        options["fragment_scan_options"] = pa.dataset.ParquetFragmentScanOptions(pre_buffer=False)
    batches = source.to_batches(columns=names, batch_size=batch_rows, batch_readahead=1, fragment_readahead=1,
                                **options)
    return batches, n_rows


# ---------------------------------------------------------------------------------------------------- columns
class _Values:
    """Numeric or boolean column: written batch by batch into one preallocated array (when the length is known)."""

    def __init__(self, n_rows: int | None, dtype: np.dtype):
        self.out = None if n_rows is None else np.empty(n_rows, dtype=dtype)
        self.parts: list[np.ndarray] = []
        self.dtype = dtype
        self.null_rows: list[np.ndarray] = []  # boolean columns: where the nulls are

    def add(self, start: int, chunk) -> None:
        pa = _pyarrow()
        if pa.types.is_boolean(chunk.type):
            if chunk.null_count:
                self.null_rows.append(start + np.flatnonzero(chunk.is_null().to_numpy(zero_copy_only=False)))
                chunk = chunk.fill_null(False)
            values = chunk.to_numpy(zero_copy_only=False)
        elif pa.types.is_floating(chunk.type) or chunk.null_count:
            # integers with nulls become float64 with NaN, as pandas converts them
            values = chunk.cast(pa.float64()).to_numpy(zero_copy_only=False)
            if self.dtype != np.float64:
                self._widen()
        else:
            values = chunk.to_numpy(zero_copy_only=False)
        if self.out is not None:
            self.out[start : start + len(values)] = values
        else:
            self.parts.append(values)

    def _widen(self) -> None:
        self.dtype = np.dtype(np.float64)
        if self.out is not None:
            self.out = self.out.astype(np.float64)
        self.parts = [p.astype(np.float64) for p in self.parts]

    def result(self):
        out = self.out if self.out is not None else np.concatenate(self.parts or [np.empty(0, self.dtype)])
        if self.null_rows:  # booleans with nulls: object True/False/None, as pandas holds them
            out = out.astype(object)
            out[np.concatenate(self.null_rows)] = None
        return out


class _Categories:
    """String or dictionary column → pd.Categorical, with one running dictionary grown as batches come.

    Strings: pending batches are dictionary-encoded in one pass together with the running dictionary (put first,
    so its codes stay 0..k-1), once they hold 4× as many rows as it has levels (or _FLUSH_ROWS, _FLUSH_BYTES): each
    string is hashed ~1.3 times, and at most a few batches of raw strings wait beside the level strings.
    Dictionary-typed batches: their dictionaries are unified into the running one (pyarrow's unify_dictionaries
    keeps its positions and appends new values) once they hold as many entries as it."""

    def __init__(self, n_rows: int | None, value_type, sort_levels: bool, ordered: bool):
        self.codes = None if n_rows is None else np.empty(n_rows, dtype=np.int32)
        self.parts: list[np.ndarray] = []
        self.value_type = value_type
        self.sort_levels = sort_levels  # strings (sorted levels) rather than a dictionary column (its own order)
        self.ordered = ordered
        self.levels = None  # running dictionary (Arrow array)
        self.pending: list[tuple[int, Any]] = []
        self.pending_levels = 0
        self.pending_rows = 0
        self.pending_bytes = 0

    def add(self, start: int, chunk) -> None:
        pa = _pyarrow()
        if pa.types.is_dictionary(chunk.type):
            target = pa.dictionary(pa.int32(), self.value_type)
            if chunk.type != target:
                chunk = chunk.cast(target)
            self.pending_levels += len(chunk.dictionary)
        elif chunk.type != self.value_type:
            chunk = chunk.cast(self.value_type)
        self.pending.append((start, chunk))
        self.pending_rows += len(chunk)
        self.pending_bytes += chunk.nbytes
        current = 0 if self.levels is None else len(self.levels)
        if self.sort_levels:
            due = self.pending_rows >= max(_LEVEL_RATIO * current, _FLUSH_ROWS) or self.pending_bytes >= _FLUSH_BYTES
        else:
            due = self.pending_levels >= max(current, _FLUSH_LEVELS) or self.pending_rows >= _FLUSH_ROWS
        if due:
            self._flush()

    def _flush(self) -> None:
        if not self.pending:
            return
        pa = _pyarrow()
        chunks = [c for _, c in self.pending]
        if self.sort_levels:
            head = [] if self.levels is None else [self.levels]
            coded = pa.compute.dictionary_encode(pa.chunked_array(head + chunks, type=self.value_type))
        else:
            target = pa.dictionary(pa.int32(), self.value_type)
            head = [] if self.levels is None else [pa.DictionaryArray.from_arrays(pa.array([], pa.int32()), self.levels)]
            coded = pa.chunked_array(head + chunks, type=target).unify_dictionaries()
        self.levels = coded.chunk(0).dictionary  # shared by every chunk
        for (start, _), chunk in zip(self.pending, coded.chunks[len(head):]):
            codes = chunk.indices.fill_null(-1).to_numpy(zero_copy_only=False)
            if self.codes is not None:
                self.codes[start : start + len(codes)] = codes
            else:
                self.parts.append(codes)
        self.pending, self.pending_levels, self.pending_rows, self.pending_bytes = [], 0, 0, 0

    def result(self) -> pd.Categorical:
        pa = _pyarrow()
        self._flush()
        codes = self.codes if self.codes is not None else np.concatenate(self.parts or [np.empty(0, np.int32)])
        levels = self.levels if self.levels is not None else pa.array([], self.value_type)
        if self.sort_levels:  # strings: sorted levels (every one met in a row), as factor() and factorize(sort=True)
            order = pa.compute.array_sort_indices(levels).to_numpy()  # byte order of UTF-8 = code-point order
            rank = np.full(len(levels) + 1, -1, dtype=np.int32)  # last slot: code -1 (null) stays -1
            rank[order] = np.arange(len(order), dtype=np.int32)
            np.take(rank, codes, out=codes)
            levels = levels.take(pa.array(order))
        categories = pd.Index(levels.to_pandas(), copy=False)
        dtype = pd.CategoricalDtype(categories, ordered=self.ordered)
        return pd.Categorical.from_codes(codes, dtype=dtype, validate=False)


def _column_reader(field, n_rows: int | None):
    pa = _pyarrow()
    t = field.type
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t):
        return _Categories(n_rows, pa.string(), sort_levels=True, ordered=False)
    if pa.types.is_dictionary(t):
        values = t.value_type
        if pa.types.is_large_string(values) or pa.types.is_string_view(values):
            values = pa.string()
        return _Categories(n_rows, values, sort_levels=False, ordered=t.ordered)
    if pa.types.is_floating(t):
        return _Values(n_rows, np.dtype(np.float64))
    if pa.types.is_integer(t) or pa.types.is_boolean(t):
        return _Values(n_rows, np.dtype(t.to_pandas_dtype()))
    return None  # other types: pyarrow's to_pandas of the whole column


# ---------------------------------------------------------------------------------------------------- readers
def read_frame(source: Any, columns: Iterable[str] | None = None, *, batch_rows: int = BATCH_ROWS,
               missing: str = "raise") -> pd.DataFrame:
    """The source's requested columns (all when None) as a pandas frame; see the module docstring.

    missing='raise' refuses a requested column the source lacks; 'ignore' leaves it out (the caller checks)."""
    pa = _pyarrow()
    if not isinstance(batch_rows, (int, np.integer)) or isinstance(batch_rows, bool) or batch_rows < 1:
        raise DataError(f"batch_rows must be a positive integer, got {batch_rows!r}")
    opened, fmt = _open(source)
    schema = opened.schema if fmt != "polars" else None
    all_names = list(opened.columns) if fmt == "polars" else list(schema.names)
    if columns is None:
        names = all_names
    else:
        wanted = list(dict.fromkeys(str(c) for c in columns))
        absent = [c for c in wanted if c not in all_names]
        if absent and missing == "raise":
            import difflib

            close = difflib.get_close_matches(absent[0], all_names, n=3)
            hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            raise DataError(f"the data has no column {absent[0]!r}{hint}")
        names = [c for c in all_names if c in wanted]  # the source's order, as pandas would show it
    if len(set(names)) != len(names):
        dup = next(c for c in names if names.count(c) > 1)
        raise DataError(f"the data has more than one column named {dup!r}")
    if fmt == "polars":
        opened = opened.select(names).to_arrow()
        fmt = None
        schema = opened.schema
    fields = [schema.field(c) for c in names]
    batches, n_rows = _batches(opened, fmt, names, int(batch_rows))
    readers = {f.name: _column_reader(f, n_rows) for f in fields}
    others: dict[str, list] = {name: [] for name, r in readers.items() if r is None}
    start = 0
    for batch in batches:
        for name, reader in readers.items():
            chunk = batch.column(name)
            if reader is None:
                others[name].append(chunk)
            else:
                reader.add(start, chunk)
        start += batch.num_rows
    if n_rows is not None and start != n_rows:
        raise DataError(f"the source announced {n_rows} rows but {start} were read; was it changed while reading?")
    pa.default_memory_pool().release_unused()  # hand Arrow's freed batches back: the fit allocates elsewhere
    out: dict[str, Any] = {}
    for f in fields:
        reader = readers[f.name]
        if reader is None:
            out[f.name] = pa.chunked_array(others.pop(f.name), type=f.type).to_pandas()
        else:
            out[f.name] = reader.result()
    frame = pd.DataFrame(out, index=pd.RangeIndex(start), columns=names, copy=False)
    # categoricals made from strings: their levels are the values present, which the design re-derives after
    # dropping rows with missing values (as formulaic does for string columns)
    frame.attrs["string_columns"] = [n for n, r in readers.items() if isinstance(r, _Categories) and r.sort_levels]
    return frame


@float64
def read_data(source: Any, columns: Iterable[str] | None = None, *, batch_rows: int = BATCH_ROWS) -> pd.DataFrame:
    """Load a parquet / Arrow IPC file or directory, an Arrow Table, RecordBatchReader or Dataset (or a polars
    DataFrame) into a pandas frame once, to fit many formulas from it.

    Only ``columns`` are read (all when None), ``batch_rows`` rows at a time. String columns become categoricals
    with sorted levels, built from Arrow dictionaries so each distinct string is held once; dictionary columns keep
    their order; numbers become float64 (integers stay integers unless they have nulls, which become NaN).

    >>> frame = jm.read_data("ratings.parquet", columns=["rating", "user", "item"])
    >>> fit = jm.lmer("rating ~ 1 + (1 | user) + (1 | item)", frame)
    """
    return read_frame(source, columns, batch_rows=batch_rows, missing="raise")
