"""prepare: shard contents, the val split, determinism, resume after a kill, refusals, bad input."""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import LOREM, dir_bytes, expected_splits, read_split, write_text_corpus
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_tokenizer import unicode_text, write_big_vocab

from lit_gpt_scratch.data import shards as shards_module
from lit_gpt_scratch.data.prepare import META, STATE, prepare
from lit_gpt_scratch.errors import UserError
from lit_gpt_scratch.tokenizer.encodings import load_tokenizer

GPT2 = load_tokenizer("gpt2")
SPECIAL_DOCS = [
    "line one\r\nline two\r\n\ttabbed   spaced\n",
    "a literal <|endoftext|> inside a document stays text",
    "日本語のテキスト, العربية, 👩‍👩‍👧 family, e\u0301 combining",
    "",  # an empty file: skipped, counted
]


def run(src, out, **kw):
    kw.setdefault("val_fraction", 0.1)
    kw.setdefault("block_size", 8)
    kw.setdefault("shard_tokens", 64)
    kw.setdefault("prepare_workers", 0)
    return prepare(
        [str(src)], tokenizer=kw.pop("tokenizer", "gpt2"), data_dir=str(out), progress=False, **kw
    )


@pytest.fixture
def corpus(tmp_path):
    return write_text_corpus(tmp_path / "corpus", SPECIAL_DOCS + LOREM + [b"bad \xff byte\n"])


def test_shards_hold_each_document_encoded_plus_eot(corpus, tmp_path):
    meta = run(corpus, tmp_path / "out")
    docs = [p.read_bytes().decode("utf-8", "replace") for p in sorted(corpus.iterdir())]
    want = expected_splits(GPT2.encoding.encode_ordinary, 50256, docs, val_every=10)
    for split in ("train", "val"):
        assert read_split(tmp_path / "out", split).tolist() == want[split]
    assert meta["dtype"] == "uint16" and meta["vocab_size"] == 50257 and meta["eot_id"] == 50256
    assert meta["documents"] == {"train": 57, "val": 7}
    assert meta["tokens"] == {s: len(want[s]) for s in want}
    assert all(s["tokens"] == 64 for s in meta["splits"]["train"][:-1])  # bounded shards
    assert meta["stats"]["invalid_utf8_documents"] == 1
    assert meta["stats"]["special_token_lookalike_documents"] == 1
    assert meta["stats"]["empty_documents_skipped"] == 1
    assert meta["format_version"] == 1 and meta["sources"] == [str(corpus)]
    listed = [*meta["splits"].values(), *meta["boundaries"].values()]
    assert sorted(os.listdir(tmp_path / "out")) == sorted(
        [META] + [s["file"] for split in listed for s in split]
    )


def test_raw_shards_are_little_endian_without_header(corpus, tmp_path):
    meta = run(corpus, tmp_path / "out", shard_tokens=10**9)
    raw = (tmp_path / "out" / "train_000000.bin").read_bytes()
    assert len(raw) == 2 * meta["tokens"]["train"]
    assert (
        np.frombuffer(raw, dtype="<u2").tolist() == read_split(tmp_path / "out", "train").tolist()
    )


def test_val_split_is_never_empty_with_two_documents(tmp_path):
    src = write_text_corpus(tmp_path / "c", ["first document here", "second one"])
    meta = run(src, tmp_path / "out", val_fraction=0.001, block_size=2, val_split="documents")
    assert meta["documents"] == {"train": 1, "val": 1}


def split_documents(ids: list[int], eot: int) -> list[list[int]]:
    """A split's token stream cut back into documents at each EOT (which ends every document)."""
    assert ids and ids[-1] == eot
    cuts = [i for i, t in enumerate(ids) if t == eot]
    return [ids[a + 1 : b] for a, b in zip([-1] + cuts[:-1], cuts, strict=True)]


# NUL makes a file binary (skipped by the directory scan), so documents here hold none.
@given(docs=st.lists(unicode_text.filter(lambda s: s and "\0" not in s), min_size=2, max_size=8))
@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
def test_any_unicode_round_trips_through_prepare(tmp_path_factory, docs):
    tmp = tmp_path_factory.mktemp("rt")
    src = write_text_corpus(tmp / "c", docs)
    run(src, tmp / "out", val_fraction=0.5, block_size=1, shard_tokens=7)
    for split, want in (("train", docs[::2]), ("val", docs[1::2])):
        got = split_documents(read_split(tmp / "out", split).tolist(), 50256)
        assert [GPT2.decode(d) for d in got] == want


def test_streamed_dataset_gives_the_same_tokens_as_the_local_file(tmp_path):
    pytest.importorskip("datasets")
    (tmp_path / "d.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in LOREM))
    run(tmp_path / "d.jsonl", tmp_path / "local")
    prepare(
        [f"hf:json?data_files={tmp_path / 'd.jsonl'}"],
        data_dir=str(tmp_path / "hub"),
        val_fraction=0.1,
        block_size=8,
        shard_tokens=64,
        prepare_workers=2,
        progress=False,
    )
    local, hub = dir_bytes(tmp_path / "local"), dir_bytes(tmp_path / "hub")
    assert local.keys() == hub.keys()
    assert all(local[f] == hub[f] for f in local if f.endswith(".bin"))


def test_same_output_for_two_runs_and_any_number_of_workers(corpus, tmp_path):
    run(corpus, tmp_path / "a")
    run(corpus, tmp_path / "b")
    run(corpus, tmp_path / "c", prepare_workers=2)
    assert dir_bytes(tmp_path / "a") == dir_bytes(tmp_path / "b") == dir_bytes(tmp_path / "c")


def test_rerun_on_a_complete_directory_is_a_no_op(corpus, tmp_path, caplog):
    run(corpus, tmp_path / "out")
    reference = dir_bytes(tmp_path / "out")
    (tmp_path / "out" / ".lock").write_text("123\n")  # a kill just after meta.json left it
    run(corpus, tmp_path / "out")
    assert dir_bytes(tmp_path / "out") == reference
    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "out").iterdir()}
    with caplog.at_level(logging.INFO):
        run(corpus, tmp_path / "out", prepare_workers=2)  # workers do not change the output
    assert "already prepared with these settings: nothing to do" in caplog.text
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "out").iterdir()} == before


def test_other_tokenizer_or_sources_are_refused_never_mixed(corpus, tmp_path):
    run(corpus, tmp_path / "out")
    before = dir_bytes(tmp_path / "out")
    write_big_vocab(tmp_path / "big.tiktoken")
    with pytest.raises(
        UserError,
        match=r"prepared with other settings \(tokenizer was 'gpt2'.*"
        r"use another --data.data_dir, or delete",
    ):
        run(corpus, tmp_path / "out", tokenizer=str(tmp_path / "big.tiktoken"))
    other = write_text_corpus(tmp_path / "other", ["x y z " * 20])
    with pytest.raises(UserError, match=r"other settings \(sources was"):
        run(other, tmp_path / "out")
    (corpus / "doc_00010.txt").write_text("edited after prepare")
    with pytest.raises(UserError, match=r"the source files changed"):
        run(corpus, tmp_path / "out")
    assert dir_bytes(tmp_path / "out") == before


def test_uint32_path_for_vocabularies_over_65536_ids(tmp_path):
    n = write_big_vocab(tmp_path / "big.tiktoken")
    tok = load_tokenizer(str(tmp_path / "big.tiktoken"))
    docs = ["hello world", "zebra quartz", "the quick brown fox", "jumps over"]
    src = write_text_corpus(tmp_path / "c", docs)
    meta = run(
        src,
        tmp_path / "out",
        tokenizer=str(tmp_path / "big.tiktoken"),
        val_fraction=0.5,
        block_size=4,
        shard_tokens=5,
    )
    assert meta["dtype"] == "uint32" and meta["vocab_size"] == n + 1 and meta["eot_id"] == n
    train = read_split(tmp_path / "out", "train")
    assert train.dtype == np.uint32 and train.max() >= 65536
    want = expected_splits(tok.encoding.encode_ordinary, n, docs, val_every=2)
    assert train.tolist() == want["train"]
    assert read_split(tmp_path / "out", "val").tolist() == want["val"]


# --- a kill at any point, then a rerun, gives the uninterrupted output ----------------------------


class Crash(BaseException):
    """Stands in for SIGKILL: nothing in prepare catches it."""


def crash_at(monkeypatch, n: int | None) -> list[int]:
    """Count every shard write and rename prepare makes; raise Crash before the n-th.

    fsync becomes a no-op: a crash here loses no written data (only power loss would), and
    real syncs would make hundreds of runs slow.
    """
    count = [0]

    def wrap(fn):
        def wrapped(*args, **kwargs):
            count[0] += 1
            if count[0] == n:
                raise Crash
            return fn(*args, **kwargs)

        return wrapped

    monkeypatch.setattr(shards_module.ShardWriter, "write", wrap(shards_module.ShardWriter.write))
    monkeypatch.setattr(os, "replace", wrap(os.replace))
    monkeypatch.setattr(os, "fsync", lambda fd: None)
    return count


@pytest.mark.parametrize(
    "val_split", ["auto", pytest.param("tail", marks=pytest.mark.slow)]
)  # auto: whole documents here
def test_kill_at_every_point_then_rerun_is_byte_identical(corpus, tmp_path, monkeypatch, val_split):
    run(corpus, tmp_path / "ref", val_split=val_split)
    reference = dir_bytes(tmp_path / "ref")
    rule = {"auto": "documents", "tail": "tail"}[val_split]
    assert json.loads(reference[META])["val_split"]["rule"] == rule
    with monkeypatch.context() as m:
        events = crash_at(m, None)
        run(corpus, tmp_path / "count", val_split=val_split)
    assert events[0] > 100
    for n in range(1, events[0] + 1):
        out = tmp_path / f"k{n}"
        with monkeypatch.context() as m:
            crash_at(m, n)
            with pytest.raises(Crash):
                run(corpus, out, val_split=val_split)
            assert not (out / META).exists()
            run(corpus, out, val_split=val_split)
        assert dir_bytes(out) == reference, f"crash before event {n}"


def test_a_state_temporary_left_by_a_kill_is_gone_after_the_rerun(corpus, tmp_path, monkeypatch):
    """kill -9 inside write_json leaves `.prepare_state.json.<pid>.tmp` (no finally runs); the
    rerun removes it, so the finished directory is byte-identical to an uninterrupted run's.
    (Seen in the SIGKILL trials: the temporary outlived the rerun.)"""
    run(corpus, tmp_path / "ref")
    out = tmp_path / "out"
    with monkeypatch.context() as m:
        crash_at(m, 40)
        with pytest.raises(Crash):
            run(corpus, out)
    (out / f".{STATE}.99999.tmp").write_text('{"half": ')  # what the killed write left
    run(corpus, out)
    assert dir_bytes(out) == dir_bytes(tmp_path / "ref")


SLOW_CORPUS = [
    f"{i} " + "lorem ipsum dolor sit amet, consectetur adipiscing elit\n" * (i % 40 + 5)
    for i in range(400)
]
# prepare through the CLI, in a child process, with small chunks and a checkpoint after each.
# Ctrl-C is made live as in a terminal: a job started in the background of a non-interactive
# shell (as CI may be) inherits SIGINT ignored, and Python then never raises KeyboardInterrupt.
PREPARE_SCRIPT = (
    "import signal, sys, lit_gpt_scratch.data.prepare as p, lit_gpt_scratch.data.sources as s;"
    "signal.signal(signal.SIGINT, signal.default_int_handler);"
    "p.CHECKPOINT_SECONDS = 0; s.CHUNK_BYTES = 4096;"
    "from lit_gpt_scratch.cli.main import main; sys.exit(main(sys.argv[1:]))"
)


def prepare_command(src: Path, out: Path, script: str = PREPARE_SCRIPT) -> list[str]:
    return [
        *(sys.executable, "-c", script, "prepare", f"--data.sources=['{src}']"),
        *("--data.val_fraction=0.05", "--data.block_size=16", "--data.shard_tokens=5000"),
        *("--data.prepare_workers=2", "--progress=false", f"--data.data_dir={out}"),
    ]


def start_and_wait_for_chunk(
    cmd: list[str], out: Path, chunk: int, stderr=subprocess.PIPE, cwd=None
) -> subprocess.Popen:
    """Start ``cmd`` in its own process group; return once its checkpoint passed ``chunk``."""
    proc = subprocess.Popen(cmd, start_new_session=True, stderr=stderr, text=True, cwd=cwd)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if json.loads((out / STATE).read_text())["next_chunk"] >= chunk:
                return proc
        except (OSError, ValueError):
            pass
        time.sleep(0.002)
    raise AssertionError("prepare finished before the signal: make the corpus larger")


@pytest.mark.slow
def test_sigkill_of_the_process_group_then_rerun_is_byte_identical(tmp_path):
    src = write_text_corpus(tmp_path / "c", SLOW_CORPUS)
    subprocess.run(prepare_command(src, tmp_path / "ref"), check=True)
    reference = dir_bytes(tmp_path / "ref")
    for after_chunk in (3, 20, 45):
        out = tmp_path / f"kill{after_chunk}"
        proc = start_and_wait_for_chunk(prepare_command(src, out), out, after_chunk)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        assert not (out / META).exists()
        subprocess.run(prepare_command(src, out), check=True)
        assert dir_bytes(out) == reference


@pytest.mark.slow
def test_ctrl_c_stops_cleanly_and_the_rerun_continues(tmp_path):
    src = write_text_corpus(tmp_path / "c", SLOW_CORPUS)
    subprocess.run(prepare_command(src, tmp_path / "ref"), check=True)
    out = tmp_path / "out"
    proc = start_and_wait_for_chunk(prepare_command(src, out), out, 10)
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert stderr.strip().splitlines()[-1] == "interrupted: run the same command again to continue"
    assert "Traceback" not in stderr
    assert (out / STATE).exists() and not (out / META).exists()
    resumed = subprocess.run(prepare_command(src, out), capture_output=True, text=True)
    assert resumed.returncode == 0 and "resuming" in resumed.stderr
    assert dir_bytes(out) == dir_bytes(tmp_path / "ref")


# Ctrl-C delivered inside ProcessPoolExecutor.submit, after it registered a work item and before
# it queued it (the 20th submit): a KeyboardInterrupt raised there leaves an item no worker ever
# gets, and the pool's shutdown waits for it forever. CTRL_C_TIMES Ctrl-Cs in a row.
CTRL_C_IN_SUBMIT = (
    """
import os, queue, signal, sys

real_put, submits = queue.Queue.put, []


def put(q, *args, **kwargs):
    if sys._getframe(1).f_code.co_name == "submit":
        submits.append(1)
        if len(submits) == 20:
            for _ in range(int(os.environ["CTRL_C_TIMES"])):
                os.kill(os.getpid(), signal.SIGINT)
    return real_put(q, *args, **kwargs)


queue.Queue.put = put
"""
    + PREPARE_SCRIPT
)


@pytest.mark.parametrize(
    ("times", "last_line"),
    [
        (1, "interrupted: run the same command again to continue"),
        pytest.param(
            2,
            "error: stopped at once by a second Ctrl-C: run the same command again to continue "
            "from the last checkpoint",
            marks=pytest.mark.slow,
        ),
    ],
)
def test_ctrl_c_inside_the_pools_submit_does_not_hang(tmp_path, times, last_line):
    src = write_text_corpus(tmp_path / "c", SLOW_CORPUS[:100])  # some 40 chunks
    out = tmp_path / "out"
    proc = subprocess.Popen(
        prepare_command(src, out, CTRL_C_IN_SUBMIT),
        start_new_session=True,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "CTRL_C_TIMES": str(times)},
    )
    try:
        # a hang waits forever: 90 s tells one apart from a slow start on a loaded machine
        _, stderr = proc.communicate(timeout=90)
    except subprocess.TimeoutExpired:
        raise AssertionError("prepare hung after a Ctrl-C inside the pool's submit") from None
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # anything left of it
        proc.wait()
    assert proc.returncode == 130
    # after a stop at once, multiprocessing's resource tracker may still warn of its semaphores
    assert last_line in stderr.strip().splitlines()[-3:]
    assert "Traceback" not in stderr
    assert (out / STATE).exists() and not (out / META).exists()
    resumed = subprocess.run(prepare_command(src, out), capture_output=True, text=True)
    assert resumed.returncode == 0 and "resuming" in resumed.stderr, resumed.stderr


def proc_stat(pid: int | str) -> list[str]:
    """/proc/PID/stat's fields after the command name: [state, ppid, ...]; [] if it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return []


def children(pid: int) -> list[int]:
    """The processes whose parent is ``pid``, read from /proc (psutil is not installed)."""
    pids = (int(e) for e in os.listdir("/proc") if e.isdigit())
    return [c for c in pids if proc_stat(c)[1:2] == [str(pid)]]


def running(pid: int) -> bool:
    """Alive and not a zombie (an orphan's zombie waits for whoever reaps it)."""
    return proc_stat(pid)[:1] not in ([], ["Z"])


def wait_until_gone(pids: list[int], seconds: float = 5.0) -> list[int]:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and any(running(p) for p in pids):
        time.sleep(0.05)
    return [p for p in pids if running(p)]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_sigkill_of_the_main_process_only_takes_the_workers_with_it(tmp_path):
    src = write_text_corpus(tmp_path / "c", SLOW_CORPUS)
    out = tmp_path / "out"
    # stderr to a file: orphaned workers would hold a pipe open, and reading it would hang
    with open(tmp_path / "stderr", "w") as stderr:
        proc = start_and_wait_for_chunk(prepare_command(src, out), out, 10, stderr)
    workers = children(proc.pid)
    assert len(workers) >= 2  # the two tokenizers (and multiprocessing's resource tracker)
    try:
        proc.kill()  # the main process only, not its group
        proc.wait()
        assert wait_until_gone(workers) == []
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)


DIE_WITH_PARENT = """
import ctypes, os, sys
from lit_gpt_scratch.data.tokenize import die_with_parent
die_with_parent(int(sys.argv[1]))
signal = ctypes.c_int()
ctypes.CDLL(None).prctl(2, ctypes.byref(signal), 0, 0, 0)  # PR_GET_PDEATHSIG
print(signal.value)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_worker_asks_for_sigkill_at_its_parents_death_and_exits_if_it_is_gone():
    def child(parent_pid: int) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-c", DIE_WITH_PARENT, str(parent_pid)]
        return subprocess.run(cmd, capture_output=True, text=True)

    alive = child(os.getpid())
    assert (alive.returncode, alive.stdout) == (0, f"{int(signal.SIGKILL)}\n")
    gone = child(os.getpid() + 1_000_000)  # as if its parent had already ended
    assert (gone.returncode, gone.stdout, gone.stderr) == (1, "", "")


@pytest.mark.slow
def test_sigterm_stops_like_ctrl_c_with_no_worker_left_and_the_rerun_continues(tmp_path):
    src = write_text_corpus(tmp_path / "c", SLOW_CORPUS)
    subprocess.run(prepare_command(src, tmp_path / "ref"), check=True)
    for target in ("main process", "process group"):
        out = tmp_path / target.replace(" ", "_")
        with open(tmp_path / "stderr", "w") as stderr:
            proc = start_and_wait_for_chunk(prepare_command(src, out), out, 10, stderr)
        workers = children(proc.pid)
        try:
            if target == "main process":
                os.kill(proc.pid, signal.SIGTERM)  # as `kill PID`, or a container's stop
            else:
                os.killpg(proc.pid, signal.SIGTERM)  # as systemd's stop of the whole group
            assert proc.wait(timeout=30) == 143
            assert wait_until_gone(workers) == []
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        lines = (tmp_path / "stderr").read_text().strip().splitlines()
        assert lines[-1] == "terminated: run the same command again to continue"
        assert not any("Traceback" in line for line in lines)
        assert (out / STATE).exists() and not (out / META).exists()
        resumed = subprocess.run(prepare_command(src, out), capture_output=True, text=True)
        assert resumed.returncode == 0 and "resuming" in resumed.stderr, resumed.stderr
        assert dir_bytes(out) == dir_bytes(tmp_path / "ref"), target


# The first prepare holds before its 12th chunk while $HOLD names a file that exists: the
# second process and fit's prepare_data meet it mid-run however slowly they start (importing
# Lightning alone took 9 s on a 2-core machine, longer than a whole slowed prepare).
HELD_SCRIPT = PREPARE_SCRIPT.replace(
    "from lit_gpt_scratch.cli.main",
    "import os, time; route = p._Run._route; routed = [];"
    "hold = lambda: len(routed) >= 12 and os.path.exists(os.environ['HOLD']);"
    "p._Run._route = lambda run, result: ("
    "[time.sleep(0.01) for _ in iter(hold, False)], routed.append(1), route(run, result))[2];"
    "from lit_gpt_scratch.cli.main",
)


@pytest.mark.slow
def test_two_prepares_into_one_data_dir_one_refuses_the_other_is_whole(tmp_path, monkeypatch):
    from lit_gpt_scratch.data import sources
    from lit_gpt_scratch.data.datamodule import TokenDataModule  # before the clock runs

    monkeypatch.setattr(sources, "CHUNK_BYTES", 4096)  # as the child processes have it

    src = write_text_corpus(tmp_path / "c", SLOW_CORPUS)
    subprocess.run(prepare_command(src, tmp_path / "ref"), check=True)
    out, hold = tmp_path / "out", tmp_path / "hold"
    hold.touch()
    monkeypatch.setenv("HOLD", str(hold))
    with open(tmp_path / "stderr", "w") as stderr:
        first = start_and_wait_for_chunk(prepare_command(src, out, HELD_SCRIPT), out, 10, stderr)
    try:
        second = subprocess.run(prepare_command(src, out), capture_output=True, text=True)
        assert (second.returncode, second.stderr) == (
            1,
            f"error: data_dir {out} is in use by another process ({out}/.lock is locked): "
            "wait for it to finish, or use another folder\n",
        )
        # fit's prepare_data on the directory refuses alike, rather than read it half-written
        data = TokenDataModule(
            [str(src)], data_dir=str(out), val_fraction=0.05, block_size=16, shard_tokens=5000
        )
        with pytest.raises(UserError, match=r"is in use by another process"):
            data.prepare_data()
        assert first.poll() is None  # it was still running all along
        hold.unlink()
        assert first.wait(timeout=60) == 0
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(first.pid, signal.SIGKILL)
    assert dir_bytes(out) == dir_bytes(tmp_path / "ref")  # no .lock left either
    data.prepare_data()
    data.setup("fit")


def test_a_failed_prepare_removes_its_lock_file_too(tmp_path):
    (tmp_path / "out").mkdir()  # an empty folder of the user's: kept, and left empty
    src = write_text_corpus(tmp_path / "c", ["tiny", "docs"])
    with pytest.raises(UserError, match=r"smaller than one training window"):
        run(src, tmp_path / "out")
    assert os.listdir(tmp_path / "out") == []


@pytest.fixture
def tmpfs(tmp_path):
    """mount(size) -> a fresh tmpfs of that size; remount(option) changes it (e.g. "ro").
    Skips where mounting is not permitted (tests run as root in the sandbox, not everywhere)."""
    mounted = []

    def mount(size: str) -> Path:
        path = tmp_path / f"mnt{len(mounted)}"
        path.mkdir()
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
        mounted.append(path)
        return path

    def remount(path: Path, option: str) -> None:
        subprocess.run(["mount", "-o", f"remount,{option}", str(path)], check=True)

    mount.remount = remount
    yield mount
    for path in mounted:
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_a_complete_data_dir_on_a_read_only_mount_is_used_as_it_is(corpus, tmpfs):
    from lit_gpt_scratch.data.datamodule import TokenDataModule

    out = tmpfs("4m") / "data"
    run(corpus, out)
    tmpfs.remount(out.parent, "ro")
    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.iterdir()}
    meta = run(corpus, out, prepare_workers=2)
    assert meta == json.loads((out / META).read_text())
    data = TokenDataModule(
        [str(corpus)], data_dir=str(out), val_fraction=0.1, block_size=8, shard_tokens=64
    )
    data.prepare_data()  # what fit runs first
    data.setup("fit")
    assert next(iter(data.val_dataloader())).shape == (data.hparams.batch_size, 9)
    assert {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.iterdir()} == before


BIG_CORPUS = [f"{i} " + "The quick brown fox jumps over the lazy dog. " * 20 for i in range(300)]


def test_out_of_space_names_the_file_and_a_fresh_prepare_leaves_nothing(tmp_path, tmpfs):
    src = write_text_corpus(tmp_path / "c", BIG_CORPUS)  # some 60,000 tokens: 120 kB
    disk = tmpfs("64k")
    with pytest.raises(UserError) as raised:
        run(src, disk / "out", shard_tokens=4096)
    assert re.fullmatch(
        rf"{disk}/out/((train|val)_\d{{6}}\.bin(\.tmp)?|prepare_state\.json): "
        r"No space left on device: free some "
        r"space \(or choose another data_dir\) and prepare again",
        str(raised.value),
    ), raised.value
    assert os.listdir(disk) == []


def test_out_of_space_on_a_resumed_prepare_goes_back_to_its_checkpoint(
    tmp_path, tmpfs, monkeypatch
):
    src = write_text_corpus(tmp_path / "c", BIG_CORPUS)
    run(src, tmp_path / "ref", shard_tokens=4096)
    disk = tmpfs("1m")
    out = disk / "out"
    with monkeypatch.context() as m:
        crash_at(m, 100)
        with pytest.raises(Crash):
            run(src, out, shard_tokens=4096)
    free = os.statvfs(disk)
    (disk / "filler").write_bytes(b"\0" * (free.f_bavail * free.f_frsize - 16384))
    with pytest.raises(UserError, match=r": No space left on device: .* run the same command "):
        run(src, out, shard_tokens=4096)
    state = json.loads((out / STATE).read_text())
    assert state["next_chunk"] > 0
    for split in ("train", "val"):  # every token past the checkpoint is gone, space given back
        files = [
            p for p in out.iterdir() if p.name.startswith(f"{split}_") and ".docs" not in p.name
        ]
        assert sum(p.stat().st_size for p in files) == 2 * state["tokens"][split]
    assert not (out / META).exists() and not list(out.glob(".*.json.*.tmp"))
    (disk / "filler").unlink()
    run(src, out, shard_tokens=4096)
    assert dir_bytes(out) == dir_bytes(tmp_path / "ref")


@pytest.mark.slow
def test_ctrl_c_during_fits_prepare_is_exit_130_with_the_progress_kept(tmp_path):
    """Lightning turned the KeyboardInterrupt of fit's prepare_data into exit code 1 (the
    bad-input code) with a line of its own."""
    src = write_text_corpus(tmp_path / "c", SLOW_CORPUS)
    out = tmp_path / "out"
    config = Path(__file__).resolve().parents[1] / "configs/tiny.yaml"
    cmd = prepare_command(src, out)
    at = cmd.index("prepare")
    cmd[at : at + 1] = ["fit", f"--config={config}"]  # the config first: the options win
    cmd.remove("--progress=false")
    proc = start_and_wait_for_chunk(cmd, out, 10, cwd=tmp_path)
    os.killpg(proc.pid, signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr[-3000:]
    assert stderr.strip().splitlines()[-1] == "interrupted: run the same command again to continue"
    assert "Traceback" not in stderr
    assert (out / STATE).exists() and not (out / META).exists()
    assert not (tmp_path / "checkpoints").exists()  # the run had not begun: no run folder


# --- bad input: a one-line error naming the problem, and nothing written -------------------------


def test_corpus_smaller_than_one_window_leaves_nothing(tmp_path):
    src = write_text_corpus(tmp_path / "c", ["tiny", "docs"])
    # auto holds out tails (2 documents, fewer than 10): a 1-token document's tail is all of it
    with pytest.raises(
        UserError,
        match=r"smaller than one training window: the train split has "
        r"0 tokens, block_size 8 needs 9",
    ):
        run(src, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_empty_corpus_is_an_error(tmp_path):
    src = write_text_corpus(tmp_path / "c", ["", ""])
    with pytest.raises(UserError, match=r"the corpus is empty"):
        run(src, tmp_path / "out")
    (tmp_path / "r.jsonl").write_text('{"text": ""}\n')
    with pytest.raises(UserError, match=r"the corpus is empty: .* hold only empty documents"):
        run(tmp_path / "r.jsonl", tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("workers", [0, 2])
def test_bad_record_mid_run_removes_partial_output(tmp_path, workers):
    good = "".join(json.dumps({"text": f"record {i} " * 20}) + "\n" for i in range(50))
    (tmp_path / "r.jsonl").write_text(good + '{"txt": "typo"}\n')
    with pytest.raises(UserError, match=r"r\.jsonl: record at byte \d+ has no field 'text'"):
        run(tmp_path / "r.jsonl", tmp_path / "out", prepare_workers=workers)
    assert not (tmp_path / "out").exists()


def test_data_dir_inside_a_source_folder_is_refused(corpus, tmp_path):
    """Before: the first prepare worked, every later one (and every fit) found the sources
    changed, its own shards and meta.json now among them."""
    out = corpus / "data"
    with pytest.raises(UserError) as e:
        run(corpus, out)
    assert str(e.value) == (
        f"data_dir {out} is inside source folder {corpus}: its token files would be read as "
        "documents; choose a data_dir outside the sources"
    )
    assert not out.exists()


def test_directory_with_foreign_files_is_refused(corpus, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match=r"holds files prepare did not write \(e\.g\. notes\.txt\)"):
        run(corpus, tmp_path / "out")
    assert os.listdir(tmp_path / "out") == ["notes.txt"]


def test_damaged_complete_directory_is_named(corpus, tmp_path):
    run(corpus, tmp_path / "out")
    (tmp_path / "out" / "train_000001.bin").unlink()
    with pytest.raises(UserError, match=r"train_000001\.bin is missing or has the wrong size"):
        run(corpus, tmp_path / "out")
    (tmp_path / "out" / META).write_text("{not json")
    with pytest.raises(UserError, match=r"meta\.json: unreadable"):
        run(corpus, tmp_path / "out")


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("val_fraction", 0.0, r"data.val_fraction must be in \(0, 0.5\], got 0.0"),
        ("val_fraction", 0.7, r"data.val_fraction must be in \(0, 0.5\], got 0.7"),
        ("block_size", 0, r"data.block_size must be at least 1"),
        ("shard_tokens", 0, r"data.shard_tokens must be at least 1"),
        ("prepare_workers", -1, r"data.prepare_workers must be 0 or more"),
    ],
)
def test_bad_options_are_named(corpus, tmp_path, option, value, message):
    with pytest.raises(UserError, match=message):
        run(corpus, tmp_path / "out", **{option: value})
    assert not (tmp_path / "out").exists()


def test_data_dir_that_is_a_file_is_refused_and_never_offered_for_deletion(corpus, tmp_path):
    from lit_gpt_scratch.data.windows import read_meta

    user_file = tmp_path / "zero.txt"
    user_file.write_bytes(b"the user's own file\n")
    for data_dir, what in (
        (user_file, "is"),
        (user_file / "sub", f"is inside {user_file}, which is"),
    ):
        message = f"data_dir {data_dir} {what} a file, not a folder: choose a folder for data_dir"
        for attempt in (functools.partial(run, corpus), read_meta):
            with pytest.raises(UserError) as raised:
                attempt(data_dir)
            assert str(raised.value) == message
    assert user_file.read_bytes() == b"the user's own file\n"
    assert sorted(os.listdir(tmp_path)) == ["corpus", "zero.txt"]


def test_nul_byte_past_the_probe_makes_the_file_binary_whatever_the_workers(tmp_path, caplog):
    late_nul = b"plain text " * 1818 + b"\0" + b" more text" * 50  # the NUL at byte 19998
    assert late_nul.index(b"\0") > 2 * 8192
    clean = write_text_corpus(tmp_path / "clean", LOREM)
    mixed = write_text_corpus(tmp_path / "mixed", LOREM[:30] + [late_nul] + LOREM[30:])
    run(clean, tmp_path / "ref")
    with caplog.at_level(logging.INFO):
        metas = [run(mixed, tmp_path / f"w{n}", prepare_workers=n) for n in (0, 2)]
    assert dir_bytes(tmp_path / "w0") == dir_bytes(tmp_path / "w2")
    shards = {k: v for k, v in dir_bytes(tmp_path / "ref").items() if k.endswith(".bin")}
    assert {k: v for k, v in dir_bytes(tmp_path / "w0").items() if k.endswith(".bin")} == shards
    assert [m["stats"]["binary_files_skipped"] for m in metas] == [1, 1]
    assert f"skipped binary file {mixed / 'doc_00030.txt'}" in caplog.text
    named = mixed / "doc_00030.txt"
    with pytest.raises(UserError) as raised:
        run(named, tmp_path / "named")
    assert str(raised.value) == f"source {named}: is a binary file (NUL bytes), not text"
    assert not (tmp_path / "named").exists()
