"""Named validation sets (``data.val_sets``): windows that score every token of a text once,
split across ranks without duplicates; the figures ``evaluate --text`` prints for the same
checkpoint; and training, ``val/loss`` and resume exactly as without them."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import LOREM, small_run_args, write_text_corpus
from gloo_runs import fit as gloo_fit
from gloo_runs import fit_processes
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lit_gpt_scratch.data.val_sets import IGNORE, ValSetBatches
from lit_gpt_scratch.evaluate.scoring import rolling_windows
from lit_gpt_scratch.tokenizer.encodings import load_tokenizer

# Non-ASCII, so that bytes and characters differ; an odd number of 32-token windows, so that
# two ranks need a padding window.
PYTHON = "def double(x):\n    return x * 2  # é, ü, ß\n" * 31
PROSE = "The held-out essay says, in plain words, what the training text never did.\n" * 9
FP32 = {"trainer.precision": "32-true", "samples.every_n_steps": "0"}


# --- windows and their split across ranks ------------------------------------------------------


def scored(batches: ValSetBatches) -> list[tuple[int, int]]:
    """(input id, target id) of every scored position, in order."""
    pairs = []
    for inputs, targets, _ in batches:
        keep = targets != IGNORE  # (B, T)
        pairs += list(zip(inputs[keep].tolist(), targets[keep].tolist(), strict=True))
    return pairs


@pytest.mark.parametrize("world", [1, 2, 3, 7])
@pytest.mark.parametrize("batch_size", [1, 4])
def test_the_ranks_score_every_token_once_in_the_same_number_of_batches(world, batch_size):
    ids, eot, block = list(range(1, 40)), 0, 8  # distinct ids: a duplicate would show
    shards = [ValSetBatches(ids, 123, eot, block, batch_size, r, world) for r in range(world)]
    pairs = [pair for shard in shards for pair in scored(shard)]
    sequence = [eot, *ids]
    assert sorted(pairs) == list(zip(sequence[:-1], sequence[1:], strict=True))
    assert len({len(shard) for shard in shards}) == 1  # lockstep: a sharded model gathers
    assert sum(int(b.sum()) for shard in shards for *_, b in shard) == 123  # the file's bytes


def test_a_window_is_the_rolling_window_right_padded_with_ignored_targets():
    ids, eot, block = list(range(1, 21)), 0, 8
    [batch] = list(ValSetBatches(ids, 5, eot, block, batch_size=8))
    inputs, targets, n_bytes = batch
    windows = rolling_windows(ids, eot, block)
    assert inputs.shape == targets.shape == (len(windows), block)
    assert n_bytes.tolist() == [5, 0, 0]
    for row, window in enumerate(windows):
        read = len(window.tokens) - 1
        assert inputs[row, :read].tolist() == list(window.tokens[:-1])
        assert (inputs[row, read:] == 0).all()
        unscored = read - window.n_scored
        assert (targets[row, :unscored] == IGNORE).all() and (targets[row, read:] == IGNORE).all()
        assert targets[row, unscored:read].tolist() == list(window.tokens[-window.n_scored :])


def test_more_ranks_than_windows_leaves_some_ranks_only_padding():
    shards = [ValSetBatches([7, 8], 2, 0, 8, 4, rank, 3) for rank in range(3)]
    assert [len(scored(shard)) for shard in shards] == [2, 0, 0]
    assert [len(shard) for shard in shards] == [1, 1, 1]


# --- runs with and without named sets ------------------------------------------------------------


def scalars(run: Path) -> dict[str, list[tuple[int, float]]]:
    events = EventAccumulator(str(run), size_guidance={"scalars": 0})
    events.Reload()
    tags = events.Tags()["scalars"]
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in tags}


def run_folder(workdir: Path, version: int = 0) -> Path:
    return workdir / f"checkpoints/tiny/version_{version}"


def fit(workdir: Path, args: list[str], *extra: str) -> None:
    workdir.mkdir(parents=True, exist_ok=True)
    result = fit_processes(workdir, [*args, *extra])
    assert result.returncode == 0, result.stderr[-4000:]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The same 6-step fp32 run without and with two named sets, on one data_dir (prepare
    ignores val_sets: the second run verifies the directory the first prepared)."""
    root = tmp_path_factory.mktemp("val_sets")
    corpus = write_text_corpus(root / "corpus", LOREM)
    (root / "python.txt").write_text(PYTHON, encoding="utf-8")
    (root / "prose.txt").write_text(PROSE, encoding="utf-8")
    args = small_run_args(corpus, root / "data", **FP32)
    named = f"--data.val_sets={{python: {root / 'python.txt'}, prose: {root / 'prose.txt'}}}"
    fit(root / "plain", args)
    fit(root / "named", args, named)
    return root, args, named


def test_named_sets_are_logged_beside_val_loss_which_keeps_its_name_and_value(runs):
    root, _, _ = runs
    plain, named = scalars(run_folder(root / "plain")), scalars(run_folder(root / "named"))
    new = {f"val/{name}/{metric}" for name in ("python", "prose") for metric in ("loss", "bpb")}
    assert set(named) == set(plain) | new  # exactly these names, no /dataloader_idx_N
    for tag in ("val/loss", "val/ppl", "val/bpb"):
        assert named[tag] == plain[tag]
    steps = [step for step, _ in plain["val/loss"]]
    assert steps[0] == 0  # the sets are scored before the first step too (val_at_start)
    assert all([step for step, _ in named[tag]] == steps for tag in new)
    files = sorted(p.name for p in (run_folder(root / "named") / "checkpoints").iterdir())
    assert files == sorted(p.name for p in (run_folder(root / "plain") / "checkpoints").iterdir())
    assert any(name.startswith("step=6-val_loss=") for name in files)


def test_training_is_bitwise_the_same_with_named_sets(runs):
    root, _, _ = runs
    plain, named = run_folder(root / "plain"), run_folder(root / "named")
    assert scalars(named)["train/loss"] == scalars(plain)["train/loss"]
    a, b = (torch.load(r / "checkpoints/last.ckpt", weights_only=True) for r in (plain, named))
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
    assert a["state_dict"].keys() == b["state_dict"].keys()


def evaluate_text(cwd: Path, ckpt: Path, text: Path) -> dict:
    """What ``evaluate --text`` reports for the checkpoint, in fp32."""
    out = cwd / f"evaluate-{text.stem}-{len(list(cwd.glob('evaluate-*')))}.json"
    result = subprocess.run(
        [sys.executable, "-m", "lit_gpt_scratch", "evaluate", f"--ckpt_path={ckpt}",
         f"--text={text}", "--precision=32-true", "--progress=false", f"--out={out}"],
        cwd=cwd, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(out.read_text())["text"]


def assert_logged_as_evaluate_reports(run: Path, cwd: Path, names: dict[str, Path]) -> None:
    logged = scalars(run)
    for name, text in names.items():
        want = evaluate_text(cwd, run / "checkpoints/last.ckpt", text)
        assert want["bytes"] == len(text.read_text(encoding="utf-8").encode())
        (_, bpb), (_, loss) = logged[f"val/{name}/bpb"][-1], logged[f"val/{name}/loss"][-1]
        assert math.isclose(bpb, want["bpb"], rel_tol=1e-5), (name, bpb, want)
        assert math.isclose(loss, want["loss"], rel_tol=1e-5), (name, loss, want)


def test_a_named_set_bpb_is_the_figure_evaluate_text_prints(runs):
    root, _, _ = runs
    names = {"python": root / "python.txt", "prose": root / "prose.txt"}
    assert_logged_as_evaluate_reports(run_folder(root / "named"), root, names)


@pytest.mark.slow
def test_two_ranks_score_a_set_as_one_process_does(tmp_path):
    """2 gloo processes, a set of an odd number of windows (one rank scores a padding one)."""
    text = tmp_path / "python.txt"
    text.write_text(PYTHON, encoding="utf-8")
    ids = load_tokenizer("stdlib-4k").encode_ordinary(PYTHON).tolist()
    assert len(rolling_windows(ids, 0, 32)) % 2 == 1
    workdir = tmp_path / "ddp"
    gloo_fit(workdir, tmp_path / "data", f"--data.val_sets={{python: {text}}}", devices=2, batch=4)
    assert_logged_as_evaluate_reports(run_folder(workdir), tmp_path, {"python": text})


@pytest.mark.parametrize(("saved", "resumed"), [("plain", "named"), ("named", "plain")])
def test_a_resume_may_add_or_remove_named_sets_and_stays_exact(runs, saved, resumed):
    """The step-3 checkpoint of one run, resumed with the other's val_sets: steps 3-5 train
    bitwise as in the run never stopped."""
    root, args, named = runs
    ckpt = run_folder(root / saved) / "checkpoints/last-1.ckpt"
    assert torch.load(ckpt, weights_only=True)["global_step"] == 3
    workdir = root / f"resume-{saved}-as-{resumed}"
    fit(workdir, args, f"--ckpt_path={ckpt}", *([named] if resumed == "named" else []))
    whole = scalars(run_folder(root / resumed))
    got = scalars(run_folder(workdir))
    assert got["train/loss"] == [(s, v) for s, v in whole["train/loss"] if s >= 3]
    if resumed == "named":
        assert got["val/python/bpb"] == whole["val/python/bpb"][-1:]


def test_prepare_ignores_named_sets(tmp_path, cli):
    """prepare reads a training config's data: section, val_sets and all; the sets are files
    for validation, not part of the corpus (even one that does not exist yet)."""
    corpus = write_text_corpus(tmp_path / "corpus", LOREM)
    args = small_run_args(corpus, tmp_path / "data")
    missing = tmp_path / "not-written-yet.txt"
    assert cli("prepare", *args, f"--data.val_sets={{python: {missing}}}").returncode == 0
    meta = json.loads((tmp_path / "data/meta.json").read_text())
    assert "val_sets" not in meta["settings"]


def test_checkpoint_monitor_may_rank_by_a_named_set(tmp_path, cli):
    corpus = write_text_corpus(tmp_path / "corpus", LOREM)
    (tmp_path / "python.txt").write_text(PYTHON, encoding="utf-8")
    args = small_run_args(corpus, tmp_path / "data", **FP32, **{"trainer.max_steps": "3"})
    monitor = ["--checkpoint.monitor=val/python/bpb", "--checkpoint.filename=step={step}"]
    result = cli("fit", *args, f"--data.val_sets={{python: {tmp_path / 'python.txt'}}}", *monitor)
    assert result.returncode == 0, result.stderr[-3000:]
    ckpt = torch.load(run_folder(tmp_path) / "checkpoints/last.ckpt", weights_only=True)
    [state] = [v for k, v in ckpt["callbacks"].items() if "val/python/bpb" in k]
    assert Path(state["best_model_path"]).name == "step=3.ckpt"
