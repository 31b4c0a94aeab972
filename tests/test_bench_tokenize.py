"""The tokenization benchmark runs end to end on a tiny corpus and checks its token counts."""

import tempfile

import pytest

from lit_gpt_scratch.bench import tokenize as bench


def test_bench_runs_and_token_check_passes(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where its own work dir goes
    assert bench.main(["--corpus_mb", "1", "--workers", "2", "--repeat", "1"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("machine: ")
    assert (
        "command: python -m lit_gpt_scratch.bench.tokenize --corpus_mb 1 --workers 2 --repeat 1"
        in out
    )
    assert "| raw tiktoken encode_ordinary_batch (threads=" in out
    assert "| prepare (workers=2) |" in out
    assert "prepare / raw = " in out
    assert "token check: " in out and out.rstrip().endswith(": OK")
    assert list(tmp_path.iterdir()) == []  # the temporary work dir was removed


@pytest.mark.slow
def test_bench_keeps_an_explicit_work_dir(tmp_path, capsys):
    assert (
        bench.main(
            ["--corpus_mb", "0.2", "--workers", "1", "--work_dir", str(tmp_path), "--repeat", "2"]
        )
        == 0
    )
    assert (tmp_path / "out" / "meta.json").is_file()
    copies = sorted(p.relative_to(tmp_path / "corpus").parts[0] for p in tmp_path.rglob("*.py"))
    assert copies and set(copies) == {"rep000"}
    # a second run on the same work dir starts over instead of finding prepare already done
    stale = [tmp_path / "corpus" / "stale.txt", tmp_path / "out" / "train_999999.bin"]
    for path in stale:
        path.write_text("stale")
    assert (
        bench.main(
            ["--corpus_mb", "0.2", "--workers", "1", "--work_dir", str(tmp_path), "--repeat", "2"]
        )
        == 0
    )
    assert not any(path.exists() for path in stale)
    assert (tmp_path / "out" / "meta.json").is_file()
    assert capsys.readouterr().out.count(": OK\n") == 2


def test_report_fails_on_a_token_mismatch(capsys):
    files = [("a.py", 10), ("b.py", 20)]
    raw = {"seconds": 1.0, "bytes": 30, "tokens": 12, "total_tokens": 12, "rss": 1e8}
    prep = {"seconds": 1.0, "bytes": 30, "tokens": 15, "documents": 2, "rss_main": 1e8}
    prep["rss_workers"] = 2e8
    assert not bench.report([], files, raw, prep, threads=2, workers=2)
    out = capsys.readouterr().out
    assert "13 != raw 12" in out and "MISMATCH" in out
    assert "| 200 (main 100, worker 200) |" in out
