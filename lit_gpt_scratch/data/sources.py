"""Document sources: turn `data.sources` entries into an ordered list of small, picklable chunks.

A source entry is one of:

- ``stdlib``: the ``.py`` files of the running Python's standard library, sorted by path,
  one file one document (site-packages excluded). The embedded default corpus.
- a file, a directory (recursive, hidden entries skipped) or a glob. ``.jsonl``: one record one
  document (field ``text_field``); ``.parquet``: one row one document (column ``text_field``);
  anything else: one file one document. Binary files met while scanning (a NUL byte anywhere:
  the first 8 KiB are probed when listing, the rest is checked by the worker that reads the
  file) are skipped and counted; a binary file named explicitly is an error.
- ``hf:<dataset id>[?name=<config>&split=<split>&data_files=<glob>]``: a Hugging Face dataset in
  streaming mode (needs the ``hf`` extra and a network, or local data files).

Planning (this module, main process) only lists files and reads sizes. Reading the documents
happens in ``Chunk.documents()``, inside the worker that tokenizes the chunk, so the main
process never holds the corpus.
"""

from __future__ import annotations

import glob
import hashlib
import itertools
import json
import logging
import os
import sysconfig
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs

from lit_gpt_scratch.errors import UserError, one_line

log = logging.getLogger(__name__)

CHUNK_BYTES = 1 << 20  # text handed to one worker at a time: small chunks balance the tail
BINARY_PROBE_BYTES = 8192
GLOB_CHARS = "*?["
HF_PREFIX = "hf:"


@dataclass(frozen=True)
class Document:
    text: str
    invalid_utf8: bool = False  # the source bytes were not valid UTF-8 (replaced with U+FFFD)
    binary_file: str = ""  # a file found binary past the probe: skipped, its path reported


def decode_utf8(raw: bytes) -> Document:
    """Bytes to text, newlines untouched; invalid sequences become U+FFFD and are flagged."""
    try:
        return Document(raw.decode("utf-8"))
    except UnicodeDecodeError:
        return Document(raw.decode("utf-8", errors="replace"), invalid_utf8=True)


def replace_surrogates(text: str) -> str:
    """Lone surrogates (e.g. from a JSON "\\ud800" escape) cannot be UTF-8: they become U+FFFD,
    as invalid bytes do."""
    return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


# --- chunks: units of work, each small to pickle and read inside a worker -------------------------


@dataclass(frozen=True)
class TextFiles:
    """Whole files, one document each."""

    paths: tuple[str, ...]
    nbytes: int
    named: tuple[str, ...] = ()  # those named by a source themselves: binary is an error

    def documents(self) -> Iterator[Document]:
        for path in self.paths:
            raw = _read_bytes(path)
            # Planning probes only the head; a NUL further on makes the file binary all the same
            # (decided per file, so the same whatever the number of workers).
            if b"\0" in raw:
                if path in self.named:
                    raise UserError(f"source {path}: is a binary file (NUL bytes), not text")
                yield Document("", binary_file=path)
                continue
            yield decode_utf8(raw)


UTF8_BOM = b"\xef\xbb\xbf"


@dataclass(frozen=True)
class JsonlRange:
    """The records of a .jsonl file whose line starts in [start, end)."""

    path: str
    start: int
    end: int
    text_field: str

    @property
    def nbytes(self) -> int:
        return self.end - self.start

    def documents(self) -> Iterator[Document]:
        try:
            with open(self.path, "rb") as f:
                offset = self.start
                if offset > 0:  # the line that straddles `start` belongs to the previous range
                    f.seek(offset - 1)
                    offset += len(f.readline()) - 1
                while offset < self.end:
                    line = f.readline()
                    if not line:
                        break
                    yield from self._record(line, offset)
                    offset += len(line)
        except OSError as e:
            raise UserError(f"{self.path}: cannot read it ({e.strerror})") from None

    def _record(self, line: bytes, offset: int) -> Iterator[Document]:
        if not line.strip():
            return
        where = f"{self.path}: record at byte {offset}"
        if offset == 0 and line.startswith(UTF8_BOM):  # as Windows tools write them
            line = line[len(UTF8_BOM) :]
        doc = decode_utf8(line)
        try:
            record = json.loads(doc.text)
        except json.JSONDecodeError as e:
            raise UserError(f"{where} is not valid JSON ({e.msg})") from None
        yield Document(_text_field(record, self.text_field, where), doc.invalid_utf8)


@dataclass(frozen=True)
class ParquetRowGroup:
    """The rows of one row group of a .parquet file."""

    path: str
    row_group: int
    text_field: str
    nbytes: int

    def documents(self) -> Iterator[Document]:
        pq = _import_pyarrow_parquet(self.path)
        parquet = pq.ParquetFile(self.path)
        if self.text_field not in parquet.schema_arrow.names:
            raise UserError(f"{self.path}: has no column {self.text_field!r}")
        batches = parquet.iter_batches(row_groups=[self.row_group], columns=[self.text_field])
        for batch in batches:
            for text in batch.column(0).to_pylist():
                yield Document(text or "")  # a null: an empty document, counted as one


@dataclass(frozen=True)
class Records:
    """Texts already read (from a streaming dataset) in the main process."""

    texts: tuple[str, ...]
    nbytes: int

    def documents(self) -> Iterator[Document]:
        return (Document(t) for t in self.texts)


Chunk = TextFiles | JsonlRange | ParquetRowGroup | Records


@dataclass
class Plan:
    """The chunks of all sources, in order, and what planning learned about them."""

    chunks: Iterable[Chunk]
    total_bytes: int | None  # None when a streaming source has no known size
    manifest: str  # digest of every file's path, size and mtime: a changed corpus changes it
    chunk_bytes: int  # chunk indices (where a resumed run continues) depend on it
    skipped_binary: list[str] = field(default_factory=list)


def normalize_source(source: str) -> str:
    """How meta.json records a source: a path made absolute, a keyword or dataset as given."""
    if source == "stdlib" or source.startswith(HF_PREFIX):
        return source
    return os.path.abspath(os.path.expanduser(source))


def refuse_data_dir_in_sources(data_dir: Path, sources: list[str]) -> None:
    """A data_dir inside a source folder: its own shards and meta.json would be read as
    documents by the next prepare (which then finds the sources changed)."""
    for source in sources:
        if source.startswith(HF_PREFIX) or not os.path.isdir(source):
            continue
        if Path(data_dir).resolve().is_relative_to(Path(source).resolve()):
            raise UserError(
                f"data_dir {data_dir} is inside source folder {source}: its token files would "
                "be read as documents; choose a data_dir outside the sources"
            )


def plan_sources(sources: list[str], text_field: str = "text", chunk_bytes: int = 0) -> Plan:
    """List every source's documents as chunks, checking paths up front (UserError if bad)."""
    chunk_bytes = chunk_bytes or CHUNK_BYTES
    if not sources:
        raise UserError("data.sources is empty: name at least one source (e.g. stdlib)")
    skipped: list[str] = []
    manifest = hashlib.sha256()
    parts: list[list[Chunk] | Iterator[Chunk]] = []  # in source order; streams stay lazy
    listed_by: dict[str, tuple[str, str]] = {}  # resolved file -> the source and path first
    twice = next((s for i, s in enumerate(sources) if s in sources[:i]), None)
    if twice is not None:
        raise UserError(f"data.sources lists {twice!r} twice: list each source once")
    for source in sources:
        if source.startswith(HF_PREFIX):
            manifest.update(f"stream\0{source}\n".encode())
            parts.append(_hf_chunks(source, text_field, chunk_bytes))
            continue
        files = _resolve_local(source, skipped)  # (kind, path), kind in text/jsonl/parquet
        named = _is_named_file(source)
        unique = []
        for kind, path in files:  # the same file twice would put its documents in train and val
            real = os.path.realpath(path)
            first, first_path = listed_by.setdefault(real, (source, path))
            if first != source:
                raise UserError(
                    f"data.sources: {path} of {source!r} is listed by {first!r} too: its "
                    "documents would be read twice, into train and val; list each file once"
                )
            if first_path != path:  # a link inside one source to a file it holds already
                log.warning("data.sources: %s is %s again (a link): read once", path, first_path)
                continue
            unique.append((kind, path))
        files = unique
        for kind, path in files:
            st = os.stat(path)
            manifest.update(f"{kind}\0{path}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        parts.append(list(_file_chunks(files, text_field, chunk_bytes, named)))
    if all(isinstance(p, list) for p in parts):
        chunks = [c for p in parts for c in p]
        return Plan(
            chunks, sum(c.nbytes for c in chunks), manifest.hexdigest(), chunk_bytes, skipped
        )
    return Plan(
        itertools.chain.from_iterable(parts), None, manifest.hexdigest(), chunk_bytes, skipped
    )


def stdlib_files() -> list[Path]:
    """The running Python's standard library ``.py`` files, sorted by path."""
    root = Path(sysconfig.get_paths()["stdlib"])
    skip = {"site-packages", "dist-packages", "__pycache__"}
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in skip)
        found.extend(Path(dirpath, f) for f in filenames if f.endswith(".py"))
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def _resolve_local(source: str, skipped: list[str]) -> list[tuple[str, str]]:
    if source == "stdlib":
        return _classify([str(p) for p in stdlib_files()], skipped, named=False)
    if any(c in source for c in GLOB_CHARS):
        matches = sorted(glob.glob(os.path.expanduser(source), recursive=True))
        if not matches:
            raise UserError(f"source {source}: the glob matches no file")
        paths = [p for m in matches for p in (_walk(m) if os.path.isdir(m) else [m])]
        unique = list(dict.fromkeys(os.path.abspath(p) for p in paths))  # "**" also matches dirs
        found = _classify(unique, skipped, named=False)
        if not found:
            raise UserError(f"source {source}: the glob matches no text, .jsonl or .parquet file")
        return found
    path = os.path.expanduser(source)
    if os.path.isdir(path):
        found = _classify(_walk(path), skipped, named=False)
        if not found:
            raise UserError(
                f"source {source}: the directory holds no text, .jsonl or .parquet file"
            )
        return found
    if os.path.exists(path):
        return _classify([path], skipped, named=True)
    raise UserError(f"source {source}: no such file or directory")


def _is_named_file(source: str) -> bool:
    """A source that is one file itself (not stdlib, a glob or a directory)."""
    if source == "stdlib" or any(c in source for c in GLOB_CHARS):
        return False
    return not os.path.isdir(os.path.expanduser(source))


def _walk(root: str) -> list[str]:
    """Every regular file under ``root``, sorted, skipping hidden files and folders."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found.extend(os.path.join(dirpath, f) for f in filenames if not f.startswith("."))
    return sorted(found)


def _classify(paths: list[str], skipped: list[str], named: bool) -> list[tuple[str, str]]:
    out = []
    for path in paths:
        if not os.path.isfile(path):
            raise UserError(f"source {path}: not a regular file")
        if path.endswith(".jsonl"):
            kind = "jsonl"
        elif path.endswith(".parquet"):
            kind = "parquet"
        else:
            kind = "text"
        head = _read_bytes(path, BINARY_PROBE_BYTES)  # also proves the file is readable
        if kind == "text" and b"\0" in head:
            if named:
                raise UserError(f"source {path}: is a binary file (NUL bytes), not text")
            skipped.append(path)
            continue
        out.append((kind, os.path.abspath(path)))
    return out


def _read_bytes(path: str, limit: int = -1) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(limit)
    except OSError as e:
        raise UserError(f"source {path}: cannot read it ({e.strerror})") from None


def _file_chunks(
    files: list[tuple[str, str]], text_field: str, chunk_bytes: int, named: bool = False
) -> Iterator[Chunk]:
    batch: list[str] = []
    batch_bytes = 0

    def text_files() -> TextFiles:
        return TextFiles(tuple(batch), batch_bytes, tuple(batch) if named else ())

    for kind, path in files:
        size = os.path.getsize(path)
        if kind == "text":
            if batch and batch_bytes + size > chunk_bytes:
                yield text_files()
                batch, batch_bytes = [], 0
            batch.append(path)
            batch_bytes += size
            continue
        if batch:  # keep document order: flush pending text files before this file's records
            yield text_files()
            batch, batch_bytes = [], 0
        if kind == "jsonl":
            for start in range(0, size, chunk_bytes):
                yield JsonlRange(path, start, min(start + chunk_bytes, size), text_field)
        else:
            yield from _parquet_chunks(path, text_field)
    if batch:
        yield text_files()


def _parquet_chunks(path: str, text_field: str) -> Iterator[ParquetRowGroup]:
    pq = _import_pyarrow_parquet(path)
    try:
        parquet = pq.ParquetFile(path)
    except Exception as e:
        raise UserError(f"source {path}: not a readable parquet file ({e})") from None
    _check_text_column(path, parquet.schema_arrow, text_field)
    meta = parquet.metadata
    for i in range(meta.num_row_groups):
        yield ParquetRowGroup(path, i, text_field, meta.row_group(i).total_byte_size)


def _check_text_column(path: str, schema, text_field: str) -> None:
    """Up front, in the main process: a column of numbers would fail in the tokenizer, inside
    a worker, as a traceback."""
    import pyarrow as pa

    if text_field not in schema.names:
        raise UserError(f"{path}: has no column {text_field!r}")
    kind = schema.field(text_field).type
    if pa.types.is_dictionary(kind):  # dictionary-encoded strings read back as strings
        kind = kind.value_type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind) or _is_string_view(kind)):
        raise UserError(
            f"{path}: column {text_field!r} holds {schema.field(text_field).type}, not strings: "
            "set data.text_field to a text column"
        )


def _is_string_view(kind) -> bool:
    import pyarrow as pa

    return hasattr(pa.types, "is_string_view") and pa.types.is_string_view(kind)


def _import_pyarrow_parquet(path: str):
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise UserError(
            f"source {path}: reading .parquet needs pyarrow: pip install 'lit-gpt-scratch[hf]'"
        ) from None
    return pq


def _text_field(record, text_field: str, where: str) -> str:
    if not isinstance(record, dict) or text_field not in record:
        raise UserError(f"{where} has no field {text_field!r}")
    text = record[text_field]
    if not isinstance(text, str):
        raise UserError(f"{where}: field {text_field!r} is {type(text).__name__}, not a string")
    return text


# --- Hugging Face datasets, streamed -------------------------------------------------------------


def parse_hf_source(source: str) -> tuple[str, dict[str, str]]:
    """``hf:ID?name=N&split=S&data_files=G`` -> (ID, {"name": N, "split": S, "data_files": G})."""
    dataset, _, query = source[len(HF_PREFIX) :].partition("?")
    options = {k: v[-1] for k, v in parse_qs(query, keep_blank_values=False).items()}
    unknown = set(options) - {"name", "split", "data_files"}
    if not dataset or unknown:
        raise UserError(
            f"source {source}: expected hf:<dataset>[?name=..&split=..&data_files=..]"
            + (f", got unknown option {sorted(unknown)[0]!r}" if unknown else "")
        )
    return dataset, options


def open_hf_stream(source: str, where: str, default_split: str = "train"):
    """(dataset id, its records streamed) of an ``hf:`` spec; each UserError starts with
    ``where`` (what the spec is to the user: a source, a task)."""
    dataset_id, options = parse_hf_source(source)
    try:
        import datasets
    except ImportError:
        raise UserError(
            f"{where}: needs the 'datasets' package: pip install 'lit-gpt-scratch[hf]'"
        ) from None
    try:
        stream = datasets.load_dataset(
            dataset_id,
            name=options.get("name"),
            split=options.get("split", default_split),
            data_files=options.get("data_files"),
            streaming=True,
        )
    except Exception as e:
        raise UserError(f"{where}: cannot open the dataset ({one_line(e)})") from None
    return dataset_id, stream


def hf_documents(source: str, text_field: str) -> Iterator[str]:
    """The texts of a Hugging Face dataset, streamed record by record."""
    _, stream = open_hf_stream(source, f"source {source}")
    for n, record in enumerate(stream):
        yield _text_field(record, text_field, f"source {source}: record {n}")


def _hf_chunks(source: str, text_field: str, chunk_bytes: int) -> Iterator[Records]:
    texts: list[str] = []
    size = 0
    for text in hf_documents(source, text_field):
        texts.append(text)
        size += len(text)
        if size >= chunk_bytes:
            yield Records(tuple(texts), size)
            texts, size = [], 0
    if texts:
        yield Records(tuple(texts), size)
