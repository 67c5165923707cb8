"""Read a data owner's table from wherever it lives: files, URLs and SQL databases, with pandas and pyarrow.

:func:`read_frame` takes one source string, the value of ``--data`` everywhere a table is accepted:

* a file by its suffix: ``.csv``/``.txt`` (delimiter sniffed unless given), ``.tsv``/``.tab``, ``.json`` (records or
  columns), ``.jsonl``/``.ndjson`` (JSON Lines), ``.parquet``/``.pq``, ``.feather``, ``.xlsx``/``.xls`` (when
  openpyxl is installed); a ``.gz``/``.bz2``/``.zip``/``.xz`` compressed text file by the suffix before it;
* ``file://`` and ``http(s)://`` URLs (fetched with a timeout, read by the same suffix rules or the
  ``Content-Type``);
* a SQLAlchemy URL (``sqlite:///x.db``, ``postgresql+psycopg2://user@host/db``...) with ``table`` or ``query``.

Readers are pandas' and pyarrow's; nothing here parses text by hand. Every failure is a
:class:`uaap.errors.DataError` naming the source (passwords redacted), what was expected and what to do.
"""

from __future__ import annotations

import importlib.util
import io
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from uaap.errors import DataError

if TYPE_CHECKING:
    import pandas as pd

TEXT = {".csv": None, ".txt": None, ".tsv": "\t", ".tab": "\t"}  # suffix -> delimiter (None: sniffed)
JSON = (".json",)
JSONL = (".jsonl", ".ndjson")
PARQUET = (".parquet", ".pq")
FEATHER = (".feather",)
EXCEL = (".xlsx", ".xls")
COMPRESSED = {".gz": "gzip", ".bz2": "bz2", ".zip": "zip", ".xz": "xz", ".zst": "zstd"}  # suffix -> pandas
SUFFIXES = (*TEXT, *JSON, *JSONL, *PARQUET, *FEATHER, *EXCEL)
CONTENT_TYPES = {
    "text/csv": ".csv",
    "text/tab-separated-values": ".tsv",
    "application/json": ".json",
    "application/x-ndjson": ".jsonl",
    "application/jsonl": ".jsonl",
    "application/vnd.apache.parquet": ".parquet",
}
SQL_SCHEMES = ("sqlite", "postgresql", "postgres", "mysql", "mariadb", "mssql", "oracle", "duckdb")


@dataclass(frozen=True)
class ReadOptions:
    """How to read text tables and which table or query to read from a database."""

    table: str = ""
    query: str = ""
    sep: str | None = None
    encoding: str = "utf-8"
    decimal: str = "."
    timeout: float = 30.0


def is_sql(source: str) -> bool:
    """Whether ``source`` is a SQLAlchemy database URL (``dialect[+driver]://...``)."""
    scheme = source.split("://", 1)[0].lower() if "://" in source else ""
    return scheme.split("+", 1)[0] in SQL_SCHEMES


def shown(source: str) -> str:
    """``source`` as it may be printed: a database or URL password replaced by ``***``."""
    if "://" not in source:
        return source
    parts = urllib.parse.urlsplit(source)
    if parts.password is None:
        return source
    netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def read_frame(source: str | Path, options: ReadOptions | None = None) -> pd.DataFrame:
    """The table behind ``source`` as a DataFrame with at least one row and one column."""
    opts = options or ReadOptions()
    text = str(source)
    if is_sql(text):
        frame = _read_sql(text, opts)
    elif text.startswith(("http://", "https://")):
        frame = _read_url(text, opts)
    else:
        local = urllib.parse.unquote(urllib.parse.urlsplit(text).path) if text.startswith("file://") else text
        frame = _read_file(Path(local), opts)
    if frame.shape[1] == 0:
        raise DataError(f"{shown(text)} has no columns; check the delimiter (--data-sep) or the file's format")
    if frame.shape[0] == 0:
        raise DataError(f"{shown(text)} has a header but no rows; give a table with data")
    return frame


def _suffix(name: str) -> tuple[str, str | None]:
    """The table suffix of ``name`` and its compression (``.csv.gz`` -> ``.csv``, ``gzip``)."""
    path = Path(name.lower())
    if path.suffix in COMPRESSED and len(path.suffixes) >= 2:
        return path.suffixes[-2], COMPRESSED[path.suffix]
    return path.suffix, None


def _read_file(path: Path, opts: ReadOptions) -> pd.DataFrame:
    if not path.is_file():
        raise DataError(f"data file {str(path)!r} does not exist; pass an existing file, a URL or a database URL")
    if path.stat().st_size == 0:
        raise DataError(f"data file {str(path)!r} is empty; give a table with a header and rows")
    suffix, compression = _suffix(path.name)
    with open(path, "rb") as fh:
        return _parse(fh.read(), suffix, compression, str(path), opts)


def _read_url(url: str, opts: ReadOptions) -> pd.DataFrame:
    request = urllib.request.Request(url, headers={"User-Agent": "uaap"})
    try:
        with urllib.request.urlopen(request, timeout=opts.timeout) as answer:  # noqa: S310 - http(s) only, checked above
            payload = answer.read()
            content_type = answer.headers.get_content_type()
    except urllib.error.HTTPError as exc:
        raise DataError(f"{shown(url)} answered HTTP {exc.code} ({exc.reason}); check the address") from exc
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise DataError(
            f"{shown(url)} could not be fetched within {opts.timeout:g}s ({reason}); check the address and the network"
        ) from exc
    suffix, compression = _suffix(urllib.parse.urlsplit(url).path)
    if suffix not in SUFFIXES:
        suffix = CONTENT_TYPES.get(content_type, suffix)
    return _parse(payload, suffix, compression, shown(url), opts)


def _parse(payload: bytes, suffix: str, compression: str | None, name: str, opts: ReadOptions) -> pd.DataFrame:
    import pandas as pd

    if suffix not in SUFFIXES:
        raise DataError(
            f"{name} has suffix {suffix or '(none)'!r}; expected one of {', '.join(SUFFIXES)} "
            "(or a database URL such as sqlite:///file.db with --data-table)"
        )
    buffer = io.BytesIO(payload)
    try:
        if suffix in TEXT:
            sep = opts.sep or TEXT[suffix] or (_sniff(payload, opts.encoding) if compression is None else None)
            return pd.read_csv(
                buffer,
                sep=sep,
                engine="python" if sep is None else "c",  # the python engine sniffs a compressed file's delimiter
                encoding=opts.encoding,
                decimal=opts.decimal,
                compression=compression,
            )
        if suffix in JSON:
            return pd.read_json(buffer, encoding=opts.encoding, compression=compression)
        if suffix in JSONL:
            return pd.read_json(buffer, lines=True, encoding=opts.encoding, compression=compression)
        if suffix in PARQUET:
            return pd.read_parquet(buffer)
        if suffix in FEATHER:
            return pd.read_feather(buffer)
        return _read_excel(buffer, name)
    except DataError:
        raise
    except UnicodeDecodeError as exc:
        raise DataError(
            f"{name} is not {opts.encoding} text ({exc.reason}); pass its encoding (--data-encoding)"
        ) from exc
    except pd.errors.EmptyDataError as exc:
        raise DataError(f"{name} holds no table ({exc}); give a table with a header and rows") from exc
    except (ValueError, pd.errors.ParserError, OSError) as exc:
        raise DataError(f"{name} could not be read as {suffix} ({str(exc)[:200]}); check its format") from exc


def _sniff(payload: bytes, encoding: str, size: int = 65536) -> str:
    """The delimiter of a text table, from its first ``size`` bytes (pandas' own sniffing runs the python parser
    over the whole file: 24 s against 3 s for a million rows here)."""
    import csv

    text = payload[:size].decode(encoding, errors="ignore")
    sample = text[: text.rfind("\n")] if "\n" in text[:-1] else text  # whole lines only
    try:
        return csv.Sniffer().sniff(sample, delimiters=",;\t|").delimiter
    except csv.Error:
        return ","


def _read_excel(buffer: io.BytesIO, name: str) -> pd.DataFrame:
    import pandas as pd

    if importlib.util.find_spec("openpyxl") is None:  # pandas' reader for .xlsx, not a dependency of UAAP
        raise DataError(f"{name} is an Excel file; install openpyxl to read it, or export it as CSV")
    return pd.read_excel(buffer)


def _read_sql(url: str, opts: ReadOptions) -> pd.DataFrame:
    import pandas as pd
    import sqlalchemy as sa

    if bool(opts.table) == bool(opts.query):
        raise DataError(f"{shown(url)} is a database: give exactly one of --data-table NAME or --data-query SQL")
    try:
        engine = sa.create_engine(url)
    except (sa.exc.ArgumentError, ImportError) as exc:
        raise DataError(f"{shown(url)} is not a usable database URL ({exc}); e.g. sqlite:///path/to/file.db") from exc
    try:
        with engine.connect() as conn:
            if opts.table:
                names = sa.inspect(conn).get_table_names()
                if opts.table not in names:
                    listing = ", ".join(names[:20]) or "none"
                    raise DataError(f"table {opts.table!r} is not in {shown(url)}; its tables are: {listing}")
                return pd.read_sql_table(opts.table, conn)
            return pd.read_sql_query(sa.text(opts.query), conn)
    except DataError:
        raise
    except (sa.exc.SQLAlchemyError, pd.errors.DatabaseError) as exc:
        cause = exc.__cause__ if isinstance(exc, pd.errors.DatabaseError) and exc.__cause__ else exc
        detail = str(getattr(cause, "orig", cause)).splitlines()[0][:200]
        raise DataError(f"could not read from {shown(url)} ({detail}); check the URL, the table or the query") from exc
    finally:
        engine.dispose()
