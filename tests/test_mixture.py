"""Weighted source mixtures: prepare apart, draw by weight (in windows, so tokens), resume
exactly, validate per source, refuse bad entries and changed weights in one line."""

from __future__ import annotations

import itertools
import json
import logging
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import LOREM, dir_bytes, read_split, write_text_corpus

from lit_gpt_scratch.cli.resume_checks import check_same_mixture
from lit_gpt_scratch.data.datamodule import TokenDataModule
from lit_gpt_scratch.data.mixture_sampler import schedule
from lit_gpt_scratch.errors import UserError
from lit_gpt_scratch.files import FolderLock

BLOCK = 8
PROSE = [f"Prose {i}: lorem ipsum dolor sit amet, consectetur adipiscing.\n" for i in range(12)]


@pytest.fixture
def code(tmp_path):
    return write_text_corpus(tmp_path / "code", LOREM)


@pytest.fixture
def prose(tmp_path):
    return write_text_corpus(tmp_path / "prose", PROSE)  # small: it runs through many epochs


def make(sources, data_dir, **kw) -> TokenDataModule:
    options = dict(
        val_fraction=0.2,
        block_size=BLOCK,
        shard_tokens=64,
        prepare_workers=0,
        batch_size=4,
        val_windows=5,
    )
    return TokenDataModule(sources, data_dir=str(data_dir), **{**options, **kw})


def mixture(code, prose, code_weight=3.0, prose_weight=1.0) -> list:
    return [
        {"path": str(code), "weight": code_weight},
        {"path": str(prose), "weight": prose_weight},
    ]


def ready(sources, data_dir, **kw) -> TokenDataModule:
    dm = make(sources, data_dir, **kw)
    dm.prepare_data()
    dm.setup("fit")
    return dm


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


# --- prepare -------------------------------------------------------------------------------------


def test_prepare_writes_each_source_apart_and_a_manifest_without_weights(code, prose, tmp_path):
    out = tmp_path / "data"
    make(mixture(code, prose), out).prepare_data()
    manifest = json.loads((out / "meta.json").read_text())
    assert [s["name"] for s in manifest["mixture"]] == ["code", "prose"]
    for name, corpus in (("code", code), ("prose", prose)):
        plain = tmp_path / f"plain-{name}"
        make([str(corpus)], plain).prepare_data()
        assert dir_bytes(out / name) == dir_bytes(plain)  # each source: prepare's own output
        [recorded] = [s for s in manifest["mixture"] if s["name"] == name]
        assert recorded["tokens"] == json.loads((plain / "meta.json").read_text())["tokens"]
    assert manifest["tokens"]["train"] == sum(s["tokens"]["train"] for s in manifest["mixture"])
    assert "weight" not in json.dumps(manifest)

    before = {k: p.stat().st_mtime_ns for k, p in ((str(p), p) for p in out.rglob("*"))}
    make(mixture(code, prose, 1.0, 5.0), out).prepare_data()  # a weight is not prepared data
    assert {str(p): p.stat().st_mtime_ns for p in out.rglob("*")} == before
    with pytest.raises(UserError, match=r"prepared with other settings \(sources was \[\{'name'"):
        make([{"path": str(code)}], out).prepare_data()
    with pytest.raises(UserError, match=r"prepared with other settings \(sources was"):
        make([str(code)], out).prepare_data()  # a plain list on a mixture's data_dir
    with pytest.raises(UserError, match=r"holds one corpus prepared from a plain list"):
        make(mixture(code, prose), tmp_path / "plain-code").prepare_data()


def test_a_prepare_stopped_between_sources_ends_as_an_uninterrupted_one(code, prose, tmp_path):
    whole, stopped = tmp_path / "whole", tmp_path / "stopped"
    make(mixture(code, prose), whole).prepare_data()
    make([str(code)], stopped / "code").prepare_data()  # what a kill during the second leaves
    make(mixture(code, prose), stopped).prepare_data()
    assert tree_bytes(stopped) == tree_bytes(whole)


def test_bad_input_in_a_later_source_takes_back_the_whole_mixture(code, tmp_path):
    blob = tmp_path / "blob.txt"
    blob.write_bytes(b"x" * 9000 + b"\0")  # binary past the probe: found while tokenizing
    with pytest.raises(UserError, match=r"blob.txt: is a binary file"):
        make([{"path": str(code)}, str(blob)], tmp_path / "data").prepare_data()
    assert not (tmp_path / "data").exists()


def test_a_source_too_small_for_a_window_is_named(code, tmp_path):
    small = tmp_path / "small.txt"
    small.write_text("tiny\n")
    sources = [{"path": str(code), "name": "code"}, {"path": str(small), "name": "small"}]
    with pytest.raises(UserError, match=r"^data.sources 'small': the corpus is smaller than one "):
        make(sources, tmp_path / "data").prepare_data()
    assert not (tmp_path / "data").exists()


def test_a_mixture_being_prepared_is_locked(code, prose, tmp_path):
    lock = FolderLock(tmp_path / "data", "test")
    lock.acquire()
    try:
        with pytest.raises(UserError, match=r"is in use by another process"):
            make(mixture(code, prose), tmp_path / "data").prepare_data()
    finally:
        lock.release()


# --- drawing by weight ---------------------------------------------------------------------------


@pytest.mark.parametrize("weights", [[3.0, 1.0], [1.0, 1.0], [0.5, 0.3, 0.2], [1e-3, 1.0]])
def test_the_schedule_keeps_every_source_within_one_window_of_its_share(weights):
    """The documented tolerance: after any n windows, each source has drawn n x its share of
    them to within one window (the bound is (k + 1) / 2 for k sources; these stay under 1)."""
    _, order = schedule(weights, 0, 6000)
    drawn = np.zeros(len(weights))
    share = np.array(weights) / sum(weights)
    for n, source in enumerate(order, 1):
        drawn[source] += 1
        assert np.abs(drawn - n * share).max() < 1, (n, drawn)
    pieces = [schedule(weights, start, 37)[1] for start in range(0, 6000, 37)]
    assert list(itertools.chain(*pieces))[:6000] == order  # any batch computed on its own


def test_windows_come_from_their_sources_by_weight_and_each_source_cycles_its_epochs(
    code, prose, tmp_path
):
    dm = ready(mixture(code, prose), tmp_path / "data")
    streams = {name: read_split(tmp_path / "data" / name, "train") for name in ("code", "prose")}
    names = dm.streams.names
    counts = Counter()
    prose_starts = []
    for k, batch in enumerate(itertools.islice(dm.train_dataloader(), 100)):
        draws = dm.sampler.draws_at(k)
        for row, (source, start) in zip(batch.tolist(), draws, strict=True):
            name = names[source]
            assert row == streams[name][start : start + BLOCK + 1].tolist()
            counts[name] += 1
            if name == "prose":
                prose_starts.append(start)
        n = 4 * (k + 1)
        assert abs(counts["code"] - 0.75 * n) < 1 and abs(counts["prose"] - 0.25 * n) < 1
    slots = dm.sampler.sources[1].num_slots
    assert len(prose_starts) > 3 * slots  # prose ran out of windows and started over, alone
    epochs = [prose_starts[i : i + slots] for i in range(0, 3 * slots, slots)]
    assert all(len(set(e)) == slots for e in epochs)  # each epoch: every slot once
    assert epochs[0] != epochs[1]  # a new permutation each epoch


def test_document_start_windows_in_a_mixture_begin_at_each_source_documents(code, prose, tmp_path):
    dm = ready(mixture(code, prose), tmp_path / "data", windows="document_start")
    eot = dm.meta["eot_id"]
    streams = {name: read_split(tmp_path / "data" / name, "train") for name in ("code", "prose")}
    # a document starts at a stream's first token and after each EOT
    starts = {n: {0, *(np.flatnonzero(t == eot) + 1).tolist()} for n, t in streams.items()}
    counts = Counter()
    for k, batch in enumerate(itertools.islice(dm.train_dataloader(), 40)):
        for row, (source, start) in zip(batch.tolist(), dm.sampler.draws_at(k), strict=True):
            name = dm.streams.names[source]
            assert row == streams[name][start : start + BLOCK + 1].tolist()
            # a long document also gives windows every BLOCK tokens after its start
            assert any(
                0 <= start - s < len(streams[name])
                and (start - s) % BLOCK == 0
                and not any(s < e <= start for e in starts[name])
                for s in starts[name]
            )
            counts[name] += 1
    assert counts["code"] == 120 and counts["prose"] == 40  # 3:1 of 160 windows
    state = dm.state_dict()
    assert state["mixture"]["windows"] == "document_start"
    random = ready(mixture(code, prose), tmp_path / "data")
    random.load_state_dict(state)
    with pytest.raises(UserError, match=r"data.windows"):
        random.train_dataloader()


def test_ranks_split_each_batch_as_one_process_draws_it(code, prose, tmp_path):
    from test_datamodule import fake_trainer

    one = ready(mixture(code, prose), tmp_path / "data")
    want = list(itertools.islice(one.train_dataloader(), 5))  # (4, T + 1) each
    two = ready(mixture(code, prose), tmp_path / "data", batch_size=2)
    per_rank = []
    for rank in range(2):
        two.trainer, two.sampler = fake_trainer(rank=rank, world_size=2), None
        per_rank.append(list(itertools.islice(two.train_dataloader(), 5)))
    for k in range(5):
        assert torch.equal(per_rank[0][k], want[k][0::2]) and torch.equal(
            per_rank[1][k], want[k][1::2]
        )


# --- resume --------------------------------------------------------------------------------------


def consumed_state(dm: TokenDataModule, batches: int) -> dict:
    loader = iter(dm.train_dataloader())
    for _ in range(batches):
        next(loader)
        dm.mark_batch_consumed()
    return dm.state_dict()


def test_a_saved_position_resumes_exactly_in_a_fresh_module_and_another_layout(
    code, prose, tmp_path
):
    sources, out = mixture(code, prose), tmp_path / "data"
    want = list(itertools.islice(ready(sources, out).train_dataloader(), 10))
    state = consumed_state(ready(sources, out, num_workers=2), 4)  # workers prefetch ahead
    mixture_state = state["mixture"]
    assert mixture_state["batches"] == 4 and mixture_state["drawn"] == {"code": 12, "prose": 4}
    assert mixture_state["weights"] == {"code": 3.0, "prose": 1.0}

    fresh = ready(sources, out)
    fresh.load_state_dict(state)  # before the loader exists, as Lightning restores
    got = list(itertools.islice(fresh.train_dataloader(), 6))
    assert all(torch.equal(a, b) for a, b in zip(got, want[4:], strict=True))
    wider = ready(sources, out, batch_size=8)  # 16 windows consumed: two batches of 8
    wider.load_state_dict(state)
    assert torch.equal(next(iter(wider.train_dataloader())), torch.cat(want[4:6]))
    odd = ready(sources, out, batch_size=3)
    odd.load_state_dict(state)
    with pytest.raises(UserError, match=r"is for world_size 1 and batch_size 4, this run has"):
        odd.train_dataloader()


def test_other_weights_on_resume_are_refused_unless_approximate(code, prose, tmp_path, caplog):
    out = tmp_path / "data"
    state = consumed_state(ready(mixture(code, prose), out), 5)
    changed = ready(mixture(code, prose, 1.0, 1.0), out)
    changed.load_state_dict(state)
    with pytest.raises(
        UserError,
        match=r"^data.sources: the checkpoint's mixture weights are \{code: 3, prose: 1\}, the "
        r"config's \{code: 1, prose: 1\}: .* set data.allow_approximate_resume: true",
    ):
        changed.train_dataloader()
    ckpt = {"TokenDataModule": state}
    with pytest.raises(UserError, match=r"^data.sources: .*\{code: 3, prose: 1\}.*\{code: 1"):
        check_same_mixture(ckpt, mixture(code, prose, 1.0, 1.0), allow=False)
    with pytest.raises(UserError, match=r"weights are \{code: 3, prose: 1\}, the config's none"):
        check_same_mixture(ckpt, [str(code), str(prose)], allow=False)
    check_same_mixture(ckpt, mixture(code, prose), allow=False)  # the same: accepted

    allowed = ready(mixture(code, prose, 1.0, 1.0), out, allow_approximate_resume=True)
    allowed.load_state_dict(state)
    with caplog.at_level(logging.WARNING):
        batch = next(iter(allowed.train_dataloader()))
    assert "approximate data resume: data.sources" in caplog.text
    drawn = state["mixture"]["drawn"]  # each source continues at its own next window
    assert allowed.sampler.origin == [drawn["code"], drawn["prose"]]
    assert batch.shape == (4, BLOCK + 1)
    whole = ready(mixture(code, prose), out)  # the run never stopped: its windows, by source
    whole.train_dataloader()
    code_next, prose_next = (
        whole.sampler._start(0, drawn["code"]),
        whole.sampler._start(1, drawn["prose"]),
    )
    assert allowed.sampler.draws_at(0)[:2] == [(0, code_next), (1, prose_next)]


def test_a_plain_corpus_checkpoint_does_not_resume_into_a_mixture(code, prose, tmp_path):
    plain = ready([str(code)], tmp_path / "plain")
    state = consumed_state(plain, 2)
    mixed = ready(mixture(code, prose), tmp_path / "data")
    mixed.load_state_dict(state)
    with pytest.raises(UserError, match=r"^data.sources: .* are none \(one corpus\), the config"):
        mixed.train_dataloader()


# --- validation per source -----------------------------------------------------------------------


def test_each_source_is_validated_alone_and_all_together(code, prose, tmp_path):
    dm = ready(mixture(code, prose), tmp_path / "data")
    sets = dm.val_set_batches()
    assert list(sets) == ["code", "prose"]
    token_bytes = dm.token_bytes()
    pooled = torch.cat(list(dm.val_dataloader()))  # (N, T + 1)
    windows = []
    for name in ("code", "prose"):
        val = read_split(tmp_path / "data" / name, "val").astype(np.int64)
        inputs, targets, n_bytes = (torch.cat(parts) for parts in zip(*sets[name], strict=True))
        assert torch.equal(inputs[0], torch.from_numpy(val[:BLOCK]))
        assert torch.equal(targets[:, :-1], inputs[:, 1:])
        assert torch.equal(n_bytes, token_bytes[targets].sum(dim=1))
        windows += [tuple(w) for w in torch.cat([inputs, targets[:, -1:]], 1).tolist()]
    assert sorted(windows) == sorted(tuple(w) for w in pooled.tolist())  # pooled: all of them
    assert pooled[0].tolist() != pooled[1].tolist()


# --- bad entries: one line naming the entry ------------------------------------------------------


@pytest.mark.parametrize(
    ("entries", "match"),
    [
        ([{"path": "CODE", "weight": 0}], r"\[0\].weight must be a finite number above 0, got 0$"),
        ([{"path": "CODE", "weight": -1.5}], r"\[0\].weight must be .* got -1.5$"),
        ([{"path": "CODE", "weight": float("nan")}], r"\[0\].weight .* got nan$"),
        (["CODE", {"path": "CODE", "weight": float("inf"), "name": "b"}], r"\[1\].weight .* inf$"),
        ([{"weight": 2.0}], r"\[0\]: path is missing"),
        ([{"path": "CODE", "wieght": 2}], r"\[0\]: unknown key 'wieght'"),
        ([{"path": "CODE"}, {"path": "PROSE", "name": "Code"}], r": .* are both named 'Code'"),
        ([{"path": "CODE", "name": "my code"}], r"\[0\].name 'my code': a name must be letters"),
        ([{"path": "CODE", "name": "a.b"}], r"\[0\].name 'a.b'"),
        ([{"path": "CODE/*.txt"}], r"\[0\]: cannot name source .*: write it as \{path"),
        (["[{path: CODE, wieght: 2}]"], r": .* is not a source: a mapping entry takes"),
    ],
)  # fmt: skip
def test_bad_entries_are_refused_in_one_line(code, prose, tmp_path, entries, match):
    def real(value):
        if isinstance(value, str):
            return value.replace("CODE", str(code)).replace("PROSE", str(prose))
        return {k: real(v) for k, v in value.items()} if isinstance(value, dict) else value

    with pytest.raises(UserError, match=r"^data.sources" + match):
        make([real(e) for e in entries], tmp_path / "data")
    assert not (tmp_path / "data").exists()


def test_a_missing_path_and_a_val_set_of_a_source_name_are_refused(code, tmp_path):
    with pytest.raises(UserError, match=r"^source .*nowhere: no such file or directory$"):
        make(
            [{"path": str(code)}, {"path": str(tmp_path / "nowhere")}], tmp_path / "d"
        ).prepare_data()
    assert not (tmp_path / "d").exists()
    text = tmp_path / "held_out.txt"
    text.write_text("some held-out text\n")
    with pytest.raises(
        UserError, match=r"^data.sources: source name 'code' is also a data.val_sets"
    ):
        make([{"path": str(code)}], tmp_path / "d", val_sets={"code": str(text)})


def test_the_command_line_takes_mappings_and_shows_them(code, prose, tmp_path, cli):
    listed = f"--data.sources=[{{path: {code}, weight: 3}}, {prose}]"
    shown = cli("prepare", listed, "--print_config")
    assert shown.returncode == 0, shown.stderr
    assert f"- path: {code}\n    weight: 3.0\n  - {prose}\n" in shown.stdout
    bad = cli(
        "prepare",
        f"--data.sources=[{{path: {code}, weight: 0}}]",
        f"--data.data_dir={tmp_path / 'd'}",
    )
    assert bad.returncode == 1
    assert bad.stderr.strip().splitlines()[-1] == (
        "error: data.sources[0].weight must be a finite number above 0, got 0.0"
    )


# --- end to end: fit, kill and resume, show_batch ---------------------------------------------


def mixture_run_args(root: Path, corpus: Path, **overrides) -> list[str]:
    """The small test run of conftest on a mixture: the corpus (3 in 4 windows) and prose."""
    from conftest import small_run_args

    prose = write_text_corpus(root / "prose", PROSE * 4)
    sources = f"[{{path: {corpus}, weight: 3, name: code}}, {{path: {prose}, name: prose}}]"
    return small_run_args(corpus, root / "data", **{"data.sources": sources, **overrides})


def test_a_killed_and_resumed_mixture_run_equals_an_uninterrupted_one(tmp_path):
    import signal

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from test_resume import final_weights, fit, losses, signal_at

    corpus = write_text_corpus(tmp_path / "corpus", LOREM * 3)
    overrides = {
        "trainer.max_steps": "10",
        "trainer.deterministic": "true",
        "checkpoint.every_n_train_steps": "4",
        "trainer.val_check_interval": "4",
    }
    args = mixture_run_args(tmp_path, corpus, **overrides)
    whole = fit(tmp_path / "whole", args)
    assert whole.returncode == 0, whole.stderr[-3000:]
    killed = fit(tmp_path / "killed", args, signal_at(tmp_path, 6, "SIGKILL"))
    assert killed.returncode == -signal.SIGKILL
    resumed = fit(tmp_path / "killed", args, "--ckpt_path=last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    run_whole = tmp_path / "whole/checkpoints/tiny/version_0"
    run_resumed = tmp_path / "killed/checkpoints/tiny/version_0"
    assert losses(run_whole) == losses(run_resumed)  # steps 0..9, bitwise
    assert [s for s, _ in losses(run_resumed)] == list(range(10))
    a, b = final_weights(run_whole), final_weights(run_resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)

    events = EventAccumulator(str(run_whole), size_guidance={"scalars": 0})
    events.Reload()
    tags = set(events.Tags()["scalars"])
    per_source = {f"val/{n}/{m}" for n in ("code", "prose") for m in ("loss", "bpb")}
    assert per_source | {"val/loss", "val/bpb"} <= tags
    steps = [e.step for e in events.Scalars("val/loss")]
    assert all([e.step for e in events.Scalars(tag)] == steps for tag in per_source)

    equal = f"--data.sources=[{{path: {corpus}, name: code}}, {{path: {tmp_path / 'prose'}}}]"
    reweighted = fit(
        tmp_path / "killed", [*args, "--trainer.max_steps=12"], "--ckpt_path=last", equal
    )
    assert reweighted.returncode == 1
    assert (
        reweighted.stderr.strip()
        .splitlines()[-1]
        .startswith(
            "error: data.sources: the checkpoint's mixture weights are {code: 3, prose: 1}, the "
            "config's {code: 1, prose: 1}"
        )
    )


def test_show_batch_decodes_a_mixture_step_naming_each_window_source(tmp_path, cli):
    import re

    from test_show_batch import recorded

    from lit_gpt_scratch.tokenizer.encodings import load_tokenizer

    corpus = write_text_corpus(tmp_path / "corpus", LOREM * 2)
    args = mixture_run_args(tmp_path, corpus, **{
        "trainer.max_steps": "3", "trainer.accumulate_grad_batches": "2",
        "samples.every_n_steps": "0"})  # fmt: skip
    callbacks = tmp_path / "callbacks.yaml"
    out = tmp_path / "batches"
    callbacks.write_text(
        "trainer:\n  callbacks:\n    - class_path: ddp_probes.RecordBatches\n"
        f"      init_args: {{out: {out}}}\n"
    )
    assert cli("fit", *args, f"--config={callbacks}").returncode == 0
    trained = recorded(out)
    tok = load_tokenizer("stdlib-4k")
    streams = {n: read_split(tmp_path / "data" / n, "train").tolist() for n in ("code", "prose")}
    header = re.compile(
        r"^=== step (\d+) · rank 0 · micro-batch (\d+) · window (\d+) · source (\w+) · "
        r"train tokens ([\d,]+)\.\.[\d,]+ ===\n",
        re.M,
    )
    seen = Counter()
    for step in range(3):
        result = cli("show_batch", *args, f"--step={step}")
        assert result.returncode == 0, result.stderr
        parts = header.split(result.stdout)[1:]
        assert len(parts) == 6 * 8  # 2 micro-batches x 4 windows, 6 fields each
        for i in range(0, len(parts), 6):
            s, m, w, source, start = parts[i : i + 5]
            _, batch = trained[2 * int(s) + int(m)]
            ids = batch[int(w)]
            assert parts[i + 5].removesuffix("\n") == tok.decode(ids)
            begin = int(start.replace(",", ""))
            assert streams[source][begin : begin + len(ids)] == ids  # from the named source
            seen[source] += 1
    assert seen == {"code": 18, "prose": 6}  # 3 in 4 windows


def test_resume_checks_read_a_mixture_checkpoint_data_windows():
    from lit_gpt_scratch.cli.resume_checks import check_same_windows

    ckpt = {"TokenDataModule": {"mixture": {"windows": "document_start"}}}
    check_same_windows(ckpt, "document_start", allow=False)
    with pytest.raises(UserError, match=r"^data.windows: random in the config"):
        check_same_windows(ckpt, "random", allow=False)
