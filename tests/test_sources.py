"""Document sources: what counts as a document, in which order, and which inputs are refused."""

from __future__ import annotations

import json
import logging
import os
import sysconfig
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lit_gpt_scratch.data.sources import (
    JsonlRange,
    decode_utf8,
    hf_documents,
    parse_hf_source,
    plan_sources,
    stdlib_files,
)
from lit_gpt_scratch.errors import UserError


def documents(plan) -> list[str]:
    return [d.text for chunk in plan.chunks for d in chunk.documents()]


def test_stdlib_is_the_standard_library_sorted_without_site_packages():
    files = stdlib_files()
    root = Path(sysconfig.get_paths()["stdlib"])
    rel = [p.relative_to(root).as_posix() for p in files]
    assert rel == sorted(rel)
    assert "os.py" in rel and "json/__init__.py" in rel
    assert not any("site-packages" in r or "__pycache__" in r for r in rel)
    assert all(r.endswith(".py") for r in rel)
    assert len(files) > 500


def test_stdlib_plan_covers_every_file_in_order():
    plan = plan_sources(["stdlib"])
    paths = [p for chunk in plan.chunks for p in chunk.paths]
    assert paths == [str(p) for p in stdlib_files()]
    assert plan.total_bytes == sum(os.path.getsize(p) for p in paths) > 10_000_000


def test_bytes_decode_without_newline_translation_and_flag_invalid_utf8():
    assert decode_utf8(b"a\r\nb\rc\n").text == "a\r\nb\rc\n"
    doc = decode_utf8(b"ok \xff\xfe bad")
    assert doc.invalid_utf8 and doc.text == "ok \ufffd\ufffd bad"
    assert not decode_utf8("日本語 👩‍👩‍👧".encode()).invalid_utf8


def test_directory_is_recursive_sorted_and_skips_hidden_and_binary(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "2.txt").write_text("two")
    (tmp_path / "a.md").write_text("one")
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "HEAD").write_text("hidden")
    (tmp_path / ".env").write_text("hidden")
    (tmp_path / "c.bin").write_bytes(b"\x00\x01binary")
    plan = plan_sources([str(tmp_path)])
    assert documents(plan) == ["one", "two"]
    assert plan.skipped_binary == [str(tmp_path / "c.bin")]


def test_a_link_inside_a_source_to_a_file_it_holds_is_read_once(tmp_path, caplog):
    """Before: read as a second document, so a val document could land in train too."""
    (tmp_path / "a.txt").write_text("one")
    (tmp_path / "b.txt").write_text("two")
    (tmp_path / "c.txt").symlink_to(tmp_path / "a.txt")
    with caplog.at_level(logging.WARNING):
        plan = plan_sources([str(tmp_path)])
    assert documents(plan) == ["one", "two"]
    assert f"{tmp_path / 'c.txt'} is {tmp_path / 'a.txt'} again (a link): read once" in caplog.text


def test_glob_matches_files_and_directories(tmp_path):
    for name in ("x1.txt", "x2.txt", "y.txt"):
        (tmp_path / name).write_text(name)
    assert documents(plan_sources([str(tmp_path / "x*.txt")])) == ["x1.txt", "x2.txt"]
    assert documents(plan_sources([str(tmp_path / "**")])) == ["x1.txt", "x2.txt", "y.txt"]


def test_sources_keep_list_order_across_kinds(tmp_path):
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir/a.txt").write_text("file a")
    (tmp_path / "dir/r.jsonl").write_text('{"text": "rec 1"}\n{"text": "rec 2"}\n')
    (tmp_path / "dir/y.txt").write_text("file y")
    (tmp_path / "z.txt").write_text("file z")
    plan = plan_sources([str(tmp_path / "z.txt"), str(tmp_path / "dir")])
    assert documents(plan) == ["file z", "file a", "rec 1", "rec 2", "file y"]


@given(
    records=st.lists(st.text(max_size=30), min_size=1, max_size=30),
    chunk=st.integers(min_value=1, max_value=200),
    blank_every=st.integers(min_value=0, max_value=5),
)
@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
def test_jsonl_ranges_yield_every_record_once_in_order(tmp_path, records, chunk, blank_every):
    path = tmp_path / "r.jsonl"
    lines = []
    for i, text in enumerate(records):
        if blank_every and i % blank_every == 0:
            lines.append("")  # blank lines are not records
        lines.append(json.dumps({"text": text, "id": i}, ensure_ascii=i % 2 == 0))
    path.write_text("\n".join(lines) + ("\n" if len(records) % 2 else ""))
    plan = plan_sources([str(path)], chunk_bytes=chunk)
    assert all(isinstance(c, JsonlRange) for c in plan.chunks)
    assert documents(plan) == records


def test_jsonl_custom_field_and_errors_name_the_record(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text('{"body": "x"}\n{"body": "y", "text": "z"}\n')
    assert documents(plan_sources([str(path)], text_field="body")) == ["x", "y"]
    with pytest.raises(UserError, match=r"r\.jsonl: record at byte 0 has no field 'text'"):
        documents(plan_sources([str(path)]))
    path.write_text('{"text": "ok"}\n{"text": 3}\n')
    with pytest.raises(UserError, match=r"record at byte 15: field 'text' is int, not a string"):
        documents(plan_sources([str(path)]))
    path.write_text('{"text": "ok"}\n{oops\n')
    with pytest.raises(UserError, match=r"r\.jsonl: record at byte 15 is not valid JSON"):
        documents(plan_sources([str(path)]))


def test_jsonl_with_a_byte_order_mark_reads_as_without(tmp_path):
    """Windows tools start UTF-8 files with a BOM: it was refused as invalid JSON."""
    path = tmp_path / "r.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"text": "first"}\n{"text": "second"}\n')
    assert documents(plan_sources([str(path)])) == ["first", "second"]


def test_a_file_listed_twice_is_refused(tmp_path):
    """Listed twice, one file's documents went into train and val: the val loss measured
    text the model trained on."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.txt").write_text("alpha")
    with pytest.raises(UserError, match=f"^data.sources lists '{corpus}' twice: list each"):
        plan_sources([str(corpus), str(corpus)])
    inside = str(corpus / "a.txt")
    with pytest.raises(UserError, match=f"a.txt of '{inside}' is listed by '{corpus}' too"):
        plan_sources([str(corpus), inside])
    link = tmp_path / "link.txt"
    link.symlink_to(corpus / "a.txt")
    with pytest.raises(UserError, match="listed by"):  # the same file by another name
        plan_sources([inside, str(link)])


def test_jsonl_invalid_utf8_is_flagged_not_fatal(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_bytes(b'{"text": "caf\xe9"}\n')
    [doc] = [d for c in plan_sources([str(path)]).chunks for d in c.documents()]
    assert doc.invalid_utf8 and doc.text == "caf\ufffd"


def write_parquet(path: Path, texts, row_group_size=2, column="text"):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    pq.write_table(pa.table({column: texts}), path, row_group_size=row_group_size)


def test_parquet_one_row_one_document_across_row_groups(tmp_path):
    texts = [f"row {i} ✓" for i in range(7)]
    write_parquet(tmp_path / "d.parquet", texts)
    plan = plan_sources([str(tmp_path / "d.parquet")])
    assert len(list(plan.chunks)) == 4  # row groups of 2
    assert documents(plan) == texts


def test_a_null_in_a_parquet_column_is_an_empty_document_counted_as_one(tmp_path):
    """Before: dropped without a trace, while prepare counts every other empty document."""
    write_parquet(tmp_path / "d.parquet", ["a", None, "b"])
    assert documents(plan_sources([str(tmp_path / "d.parquet")])) == ["a", "", "b"]


def test_parquet_missing_column_is_named(tmp_path):
    write_parquet(tmp_path / "d.parquet", ["a"], column="content")
    with pytest.raises(UserError, match=r"d\.parquet: has no column 'text'"):
        documents(plan_sources([str(tmp_path / "d.parquet")]))


def test_hf_source_syntax():
    assert parse_hf_source("hf:org/ds?name=cfg&split=val") == (
        "org/ds",
        {"name": "cfg", "split": "val"},
    )
    with pytest.raises(UserError, match=r"hf:org/ds\?bogus=1: expected hf:<dataset>.*'bogus'"):
        parse_hf_source("hf:org/ds?bogus=1")


@pytest.mark.parametrize("fmt", ["parquet", "json"])
def test_hf_streaming_path_reads_local_data_files(tmp_path, fmt):
    # The same function that streams a hub dataset, given local data files: never the hub.
    pytest.importorskip("datasets")
    texts = ["first", "second ✓", "third"]
    if fmt == "parquet":
        write_parquet(tmp_path / "d.parquet", texts)
        files = str(tmp_path / "*.parquet")
    else:
        (tmp_path / "d.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
        files = str(tmp_path / "*.jsonl")
    source = f"hf:{fmt}?data_files={files}"
    assert list(hf_documents(source, "text")) == texts
    plan = plan_sources([source], chunk_bytes=8)
    assert plan.total_bytes is None
    assert documents(plan) == texts


@pytest.mark.parametrize(
    ("make", "source", "message"),
    [
        (None, "missing.txt", r"source .*missing\.txt: no such file or directory"),
        ("emptydir", "emptydir", r"source .*emptydir: the directory holds no text"),
        (None, "nothing*.txt", r"source .*nothing\*\.txt: the glob matches no file"),
        ("binary", "blob.bin", r"source .*blob\.bin: is a binary file"),
        ("unreadable", "secret.txt", r"source .*secret\.txt: cannot read it"),
    ],
)
def test_bad_sources_are_named(tmp_path, make, source, message):
    if make == "emptydir":
        (tmp_path / "emptydir").mkdir()
    elif make == "binary":
        (tmp_path / "blob.bin").write_bytes(b"PK\x00\x00")
    elif make == "unreadable":
        if os.geteuid() == 0:
            pytest.skip("root reads any file; see test_unreadable_file_is_named_even_as_root")
        (tmp_path / "secret.txt").write_text("x")
        os.chmod(tmp_path / "secret.txt", 0)
    with pytest.raises(UserError, match=message):
        plan_sources([str(tmp_path / source)])


def test_unreadable_file_is_named_even_as_root(tmp_path, monkeypatch):
    (tmp_path / "secret.txt").write_text("x")
    real_open = open

    def deny(path, *args, **kwargs):
        if str(path).endswith("secret.txt"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr("builtins.open", deny)
    with pytest.raises(UserError, match=r"secret\.txt: cannot read it \(Permission denied\)"):
        plan_sources([str(tmp_path / "secret.txt")])


def test_no_sources_is_an_error():
    with pytest.raises(UserError, match="data.sources is empty"):
        plan_sources([])


def test_streamed_and_local_sources_keep_list_order(tmp_path):
    pytest.importorskip("datasets")
    (tmp_path / "d.jsonl").write_text('{"text": "streamed"}\n')
    (tmp_path / "local.txt").write_text("local")
    (tmp_path / "other.txt").write_text("other")
    stream = f"hf:json?data_files={tmp_path / 'd.jsonl'}"
    plan = plan_sources([str(tmp_path / "local.txt"), stream, str(tmp_path / "other.txt")])
    assert documents(plan) == ["local", "streamed", "other"]
    assert documents(plan_sources([stream, str(tmp_path / "local.txt")])) == ["streamed", "local"]


def test_parquet_column_of_numbers_is_named_with_its_type(cli, tmp_path):
    write_parquet(tmp_path / "ints.parquet", list(range(20)))
    path = tmp_path / "ints.parquet"
    message = (
        f"{path}: column 'text' holds int64, not strings: set data.text_field to a text column"
    )
    with pytest.raises(UserError) as raised:
        plan_sources([str(path)])
    assert str(raised.value) == message
    for workers in ("0", "2"):
        result = cli(
            "prepare",
            f"--data.sources=['{path}']",
            f"--data.data_dir={tmp_path / 'out'}",
            f"--data.prepare_workers={workers}",
            "--progress=false",
        )
        assert (result.returncode, result.stderr) == (1, f"error: {message}\n")
        assert not (tmp_path / "out").exists()
