"""FSDP with real processes on CPU (gloo, 2 ranks), through the same ``fit`` and the same
``configs/overlays/fsdp.yaml`` the large configs use (tests/cpu_fsdp.py lifts only Lightning's
GPU check). Each parameter is a flat 1-D shard there, which the optimizer's param groups,
clipping, the divergence guard, text samples and checkpoint saves must all survive."""

from __future__ import annotations

import pytest
import torch
from conftest import ROOT
from gloo_runs import (
    FSDP,
    TOLERANCE,
    final_weights,
    fit,
    grad_norms,
    losses,
    probe,
    rank_records,
    record_losses,
    samples,
)

FP32 = "--trainer.strategy.init_args.mixed_precision=null"  # to compare with fp32 exactly


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """One process, batch 8, 4 steps, no FSDP: the reference every FSDP run is held to."""
    root = tmp_path_factory.mktemp("fsdp")
    callbacks = record_losses(root / "single/losses") + probe("RecordSetup", root / "single/setup")
    fit(root / "single", root / "data", callbacks=callbacks)
    return root


@pytest.mark.slow
def test_fsdp_trains_as_one_process_saves_shards_resumes_and_consolidates(single, cli):
    """Steps 0-1 under FSDP, then steps 2-3 resumed from its sharded last.ckpt: the same
    losses, gradient norms (the clipping norm: global, not a shard's) and final weights as
    one process with the same global batch; the same param groups by name and role although
    every tensor is a 1-D shard; a text sample at steps 2 and 4 (every rank generates through
    the sharded model); then consolidate gives a file that generate reads."""
    workdir = single / "fsdp"
    run = dict(devices=2, batch=4, strategy=FSDP)
    probes = record_losses(workdir / "first") + probe("RecordSetup", workdir / "setup")
    fit(workdir, single / "data", FP32, "--trainer.max_steps=2", "--samples.every_n_steps=2",
        callbacks=probes, **run)  # fmt: skip
    last = workdir / "checkpoints/tiny/version_0/checkpoints/last.ckpt"
    assert last.is_dir() and (last / "meta.pt").is_file()  # sharded: a directory of shards
    fit(workdir, single / "data", FP32, "--ckpt_path=last", "--samples.every_n_steps=2",
        callbacks=record_losses(workdir / "resumed"), **run)  # fmt: skip

    want = losses(single / "single/losses")
    got = {**losses(workdir / "first", ranks=2), **losses(workdir / "resumed", ranks=2)}
    assert sorted(got) == sorted(want) == [0, 1, 2, 3]
    for step in want:
        assert got[step] == pytest.approx(want[step], abs=TOLERANCE), step
    # A shard's norm alone would be ~30% off. 1e-4: one process's fp32 norm of the whole
    # 131k-element embedding is itself 1.9e-5 off its float64 value on this CPU; FSDP's, summed
    # from smaller shards, 0.8e-5 (per-parameter gradients agree to 2e-7).
    [want_norms] = grad_norms(single / "single/losses")
    for rank_norms in grad_norms(workdir / "first", 2) + grad_norms(workdir / "resumed", 2):
        for step, norm in rank_norms.items():
            assert norm == pytest.approx(want_norms[step], rel=1e-4), step

    [reference] = rank_records(single / "single/setup")
    for setup in rank_records(workdir / "setup", ranks=2):
        for got_group, want_group in zip(setup["groups"], reference["groups"], strict=True):
            assert got_group["role"] == want_group["role"]
            assert got_group["names"] == want_group["names"]  # 0 matrices before the fix
            assert got_group["weight_decay"] == want_group["weight_decay"]
            assert set(got_group["dims"]) == {1}  # FSDP's flat shards, yet the right groups
    assert [len(g["names"]) for g in reference["groups"]] == [4, 2, 10]  # 1 block, tied head

    assert sorted(samples(workdir)) == [2, 4]

    out = single / "consolidated.ckpt"
    result = cli("consolidate", f"--ckpt_path={last}", f"--out={out}")
    assert result.returncode == 0, result.stderr
    want_weights = final_weights(single / "single")
    got_weights = torch.load(out, weights_only=True)["state_dict"]
    assert got_weights.keys() == want_weights.keys()
    for name, tensor in got_weights.items():
        torch.testing.assert_close(tensor, want_weights[name], atol=TOLERANCE, rtol=0)
    generated = cli("generate", f"--ckpt_path={out}", "--prompt=The", "--max_new_tokens=8")
    assert generated.returncode == 0 and generated.stdout.strip(), generated.stderr


@pytest.mark.slow
def test_fsdp_ranks_decide_together_on_what_one_rank_sees(single):
    """Rank 1 alone gets a NaN in its shard of a gradient at step 0, and in its shard of a
    weight at the end of step 1, before the checkpoint saved after it. Both ranks skip step
    0, and both refuse the save with the same one line naming the parameter (before, rank 1
    raised and rank 0 hung in the collective save). The run uses the overlay's bf16 policy:
    weights in bf16 inside the forward, gradients reduced in fp32, RoPE's buffers in fp32."""
    workdir = single / "poison"
    rope = [
        "--model.gpt.init_args.position.class_path=lit_gpt_scratch.model.position.RotaryPosition",
        "--trainer.precision=bf16-mixed",
    ]
    probes = probe("PoisonOneRank", workdir / "skips", rank=1, grad_step=0, weight_step=1)
    probes += probe("RecordSetup", workdir / "setup")
    result = fit(workdir, single / "data", *rope, devices=2, batch=4, strategy=FSDP,
                 callbacks=probes, succeed=False)  # fmt: skip
    assert result.returncode == 1, result.stderr[-4000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 2 and errors[0] == errors[1], result.stderr[-4000:]
    assert errors[0].startswith("error: not saving the checkpoint of step 2: parameter ")
    assert "is not finite" in errors[0] and "Traceback" not in result.stderr
    for skips in rank_records(workdir / "skips", ranks=2):
        assert skips["0"] == 0 and skips["1"] == 1  # step 0 skipped (read after it), on both
    for setup in rank_records(workdir / "setup", ranks=2):
        assert setup["weight_dtype"] == "torch.bfloat16"
        assert setup["buffer_dtypes"] == {"cos": "torch.float32", "sin": "torch.float32"}
        assert setup["reduce_dtype"] == "torch.float32"


@pytest.mark.slow
def test_muon_refuses_fsdp_shards_in_one_line_on_every_rank(single):
    workdir = single / "muon"
    result = fit(workdir, single / "data", f"--config={ROOT / 'configs/overlays/muon.yaml'}",
                 devices=2, batch=4, strategy=FSDP, succeed=False)  # fmt: skip
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 2 and all("Muon needs whole weight matrices" in e for e in errors)
    assert "Traceback" not in result.stderr
