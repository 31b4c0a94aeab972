"""Sharded (FSDP) checkpoints: consolidated into one file that generate and export read,
refused with a hint where one file is needed, rotated as directories.

Lightning's FSDP needs GPUs, so the sharded directory is written here the way its
FSDPStrategy.save_checkpoint writes one (torch.distributed.checkpoint files of
{"model": ..., "optimizer_0": ...} plus the rest of the dict in meta.pt), from a real
training checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp
from conftest import LOREM, small_run_args, write_text_corpus

from lit_gpt_scratch.train.checkpoints import older_last, rotate_last


def shard_like_fsdp(ckpt_file: Path, directory: Path) -> Path:
    ckpt = torch.load(ckpt_file, map_location="cpu", weights_only=True)
    converted = {"model": ckpt.pop("state_dict")}
    converted.update({f"optimizer_{i}": s for i, s in enumerate(ckpt.pop("optimizer_states"))})
    dcp.save(converted, checkpoint_id=str(directory), no_dist=True)
    torch.save(ckpt, directory / "meta.pt")
    return directory


@pytest.fixture
def trained(tmp_path, cli) -> Path:
    corpus = write_text_corpus(tmp_path / "corpus", LOREM)
    args = small_run_args(corpus, tmp_path / "data", **{"trainer.max_steps": "3"})
    assert cli("fit", *args).returncode == 0
    return tmp_path / "checkpoints/tiny/version_0/checkpoints/last.ckpt"


def greedy(cli, ckpt: Path) -> str:
    result = cli("generate", f"--ckpt_path={ckpt}", "--prompt=The", "--temperature=0",
                 "--max_new_tokens=12")  # fmt: skip
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_consolidate_gives_the_same_model_as_the_unsharded_checkpoint(tmp_path, cli, trained):
    sharded = shard_like_fsdp(trained, tmp_path / "sharded.ckpt")
    out = tmp_path / "one.ckpt"
    result = cli("consolidate", f"--ckpt_path={sharded}", f"--out={out}")
    assert result.returncode == 0, result.stderr
    assert f"wrote {out}" in result.stdout
    assert greedy(cli, out) == greedy(cli, trained)
    want = torch.load(trained, weights_only=True)["state_dict"]
    got = torch.load(out, weights_only=True)["state_dict"]
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
    exported = cli("export", f"--ckpt_path={out}", f"--out_dir={tmp_path / 'hf'}")
    assert exported.returncode == 0, exported.stderr


def test_a_sharded_checkpoint_where_one_file_is_needed_says_how_to_consolidate(
    tmp_path, cli, trained
):
    sharded = shard_like_fsdp(trained, tmp_path / "sharded.ckpt")
    result = cli("generate", f"--ckpt_path={sharded}")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: checkpoint {sharded} is sharded (FSDP): make one file of it first with "
        f"python -m lit_gpt_scratch consolidate --ckpt_path {sharded} --out FILE"
    )


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p.write_text("x"), "is not a sharded checkpoint directory"),
        (lambda p: p.mkdir(), "is a directory but not a sharded checkpoint (no meta.pt"),
    ],
)
def test_consolidate_refuses_what_is_not_a_sharded_checkpoint(tmp_path, cli, make, message):
    target = tmp_path / "thing"
    make(target)
    result = cli("consolidate", f"--ckpt_path={target}", f"--out={tmp_path / 'o.ckpt'}")
    assert result.returncode == 1
    assert message in result.stderr.strip().splitlines()[-1]


def test_sharded_last_checkpoints_rotate_as_directories(tmp_path):
    last = tmp_path / "last.ckpt"
    for generation in range(3):  # three saves, keeping last and last-1
        rotate_last(last, keep_older=1)
        last.mkdir()
        (last / "meta.pt").write_text(str(generation))
    assert (last / "meta.pt").read_text() == "2"
    assert (older_last(last, 1) / "meta.pt").read_text() == "1"
    assert not older_last(last, 2).exists()


def test_a_sharded_checkpoint_resumes_only_under_fsdp(tmp_path, cli, trained):
    sharded = shard_like_fsdp(trained, tmp_path / "sharded.ckpt")
    args = small_run_args(tmp_path / "corpus", tmp_path / "data", **{"trainer.max_steps": "4"})
    result = cli("fit", *args, f"--ckpt_path={sharded}")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: checkpoint {sharded} is sharded (FSDP): resume it with the FSDP strategy, or "
        f"make one file of its weights (python -m lit_gpt_scratch consolidate --ckpt_path "
        f"{sharded} --out FILE) to start from"
    )


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="Lightning's FSDP needs a CUDA GPU")
def test_fsdp_overlay_trains_saves_shards_resumes_and_consolidates(tmp_path, cli):
    root = Path(__file__).resolve().parents[1]
    corpus = write_text_corpus(tmp_path / "corpus", LOREM)
    args = [
        *small_run_args(corpus, tmp_path / "data", **{"trainer.max_steps": "3"}),
        f"--config={root / 'configs/overlays/fsdp.yaml'}",
        "--trainer.accelerator=gpu",
        "--trainer.devices=1",
        "--trainer.precision=bf16-mixed",
        "--model.compile=false",
    ]
    assert cli("fit", *args).returncode == 0
    last = tmp_path / "checkpoints/tiny/version_0/checkpoints/last.ckpt"
    assert last.is_dir() and (last / "meta.pt").is_file()
    resumed = cli("fit", *args, "--trainer.max_steps=6", "--ckpt_path=last")
    assert resumed.returncode == 0, resumed.stderr
    assert torch.load(last / "meta.pt", weights_only=True)["global_step"] == 6
    out = tmp_path / "one.ckpt"
    assert cli("consolidate", f"--ckpt_path={last}", f"--out={out}").returncode == 0
    assert greedy(cli, out)
