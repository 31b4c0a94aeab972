"""``show_batch`` decodes exactly the windows a step of a run trained on."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from conftest import LOREM, small_run_args, write_text_corpus

from lit_gpt_scratch.tokenizer.encodings import load_tokenizer

HEADER = re.compile(r"^=== step (\d+) · rank (\d+) · micro-batch (\d+) · window (\d+) · ", re.M)


def shown(stdout: str) -> dict[tuple[int, int, int, int], str]:
    """show_batch's output, by (step, rank, micro-batch, window): the decoded text."""
    parts = HEADER.split(stdout)[1:]
    out = {}
    for i in range(0, len(parts), 5):
        key = tuple(int(x) for x in parts[i : i + 4])
        out[key] = parts[i + 4].split(" ===\n", 1)[1].removesuffix("\n")
    return out


def recorded(out: Path, rank: int = 0) -> list[tuple[int, list[list[int]]]]:
    return [tuple(b) for b in json.loads(Path(f"{out}-rank{rank}.json").read_text())]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_text_corpus(tmp_path_factory.mktemp("corpus"), LOREM * 2)


@pytest.mark.parametrize("windows", ["random", "document_start"])
def test_show_batch_decodes_the_windows_fit_trained_on_with_accumulation(
    tmp_path, corpus, cli, windows
):
    """Four optimizer steps of two micro-batches each: every window show_batch prints for a
    step is the one the step's micro-batch held, in order."""
    args = small_run_args(corpus, tmp_path / "data", **{
        "trainer.max_steps": "4", "trainer.accumulate_grad_batches": "2",
        "samples.every_n_steps": "0", "data.batch_size": "4", "data.windows": windows})  # fmt: skip
    callbacks = tmp_path / "callbacks.yaml"
    out = tmp_path / "batches"
    callbacks.write_text(
        "trainer:\n  callbacks:\n    - class_path: ddp_probes.RecordBatches\n"
        f"      init_args: {{out: {out}}}\n"
    )
    assert cli("fit", *args, f"--config={callbacks}").returncode == 0
    trained = recorded(out)
    assert [step for step, _ in trained] == [0, 0, 1, 1, 2, 2, 3, 3]
    tok = load_tokenizer("stdlib-4k")
    for step in range(4):
        result = cli("show_batch", *args, f"--step={step}")
        assert result.returncode == 0, result.stderr
        windows = shown(result.stdout)
        assert len(windows) == 8  # 2 micro-batches x 4 windows
        for m in range(2):
            _, batch = trained[2 * step + m]
            for i, ids in enumerate(batch):
                assert windows[(step, 0, m, i)] == tok.decode(ids), (step, m, i)


def test_show_batch_filters_and_refuses_a_rank_the_run_did_not_have(tmp_path, corpus, cli):
    args = small_run_args(corpus, tmp_path / "data")
    assert cli("prepare", *args, "--progress=false").returncode == 0
    two = cli("show_batch", *args, "--step=3", "--world_size=2", "--rank=1", "--micro_batch=0")
    assert two.returncode == 0, two.stderr
    assert {key[1] for key in shown(two.stdout)} == {1}
    bad = cli("show_batch", *args, "--step=3", "--world_size=2", "--rank=2")
    assert bad.returncode == 1
    assert bad.stderr.strip().splitlines()[-1] == (
        "error: --rank 2 is not one of the run's 2 ranks (0..1)"
    )
    missing = cli("show_batch", *args, "--step=0", f"--data.data_dir={tmp_path / 'none'}")
    assert missing.returncode == 1 and "run prepare on" in missing.stderr


@pytest.mark.parametrize("rank, world", [(0, 1), (1, 3)])
def test_batch_at_is_the_batch_the_sampler_yields_that_far_in_across_epochs(rank, world):
    from itertools import islice

    from lit_gpt_scratch.data.windows import WindowSampler

    sampler = WindowSampler(2000, 33, 4, seed=7, rank=rank, world_size=world)
    assert sampler.batches_per_epoch < 20  # so the 40 batches below cross epoch ends
    yielded = list(islice(iter(sampler), 40))
    assert [sampler.batch_at(k).tolist() for k in range(40)] == yielded


@pytest.mark.slow
def test_with_two_processes_each_rank_shows_what_it_trained_on(tmp_path, cli):
    from gloo_runs import DDP, fit, probe

    out = tmp_path / "run" / "batches"
    fit(tmp_path / "run", tmp_path / "data", devices=2, batch=4, strategy=DDP,
        callbacks=probe("RecordBatches", out))  # fmt: skip
    args = small_run_args(tmp_path / "corpus", tmp_path / "data", **{"data.batch_size": "4"})
    tok = load_tokenizer("stdlib-4k")
    for step in range(4):
        result = cli("show_batch", *args, *DDP, f"--step={step}")
        assert result.returncode == 0, result.stderr
        windows = shown(result.stdout)
        for rank in (0, 1):
            _, batch = recorded(out, rank)[step]
            assert [windows[(step, rank, 0, i)] for i in range(4)] == [
                tok.decode(ids) for ids in batch
            ]
