"""LoRA (model.lora): adapters that start as the base, merge exactly, train alone while the base
stays bitwise frozen, and checkpoints that hold the adapters alone and resume exactly."""

from __future__ import annotations

import shutil
from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import LOREM, small_run_args, write_text_corpus
from test_resume import fit

from lit_gpt_scratch.errors import UserError
from lit_gpt_scratch.model.gpt import GPT
from lit_gpt_scratch.model.lora import LoRA, add_adapters, has_adapters, merge_adapters
from lit_gpt_scratch.model.mlp import SwiGLU
from lit_gpt_scratch.train.checkpoint_files import load_gpt
from lit_gpt_scratch.train.module import LitGPT
from lit_gpt_scratch.train.param_groups import param_groups

ALL_LINEAR = ["c_attn", "c_proj", "c_fc"]


def small_gpt(**options) -> GPT:
    torch.manual_seed(0)
    return GPT(vocab_size=97, block_size=24, n_layer=2, n_head=2, d_model=32, **options)


def trained_adapters(gpt: GPT) -> None:
    """Adapters as training leaves them: B no longer zero."""
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in gpt.named_parameters():
            if name.endswith("lora_B"):
                p.normal_(0, 0.05)


def test_new_adapters_compute_exactly_the_base_model():
    gpt = small_gpt()
    idx = torch.randint(0, 97, (2, 24))
    base, _ = gpt(idx)
    add_adapters(gpt, LoRA(r=4, targets=ALL_LINEAR))
    wrapped, _ = gpt(idx)
    assert torch.equal(base, wrapped)  # B starts at zero


@pytest.mark.parametrize("mlp", [None, SwiGLU], ids=["gelu", "swiglu"])
def test_merged_equals_unmerged_logits_within_1e5(mlp):
    gpt = small_gpt(**({"mlp": mlp} if mlp else {}))
    targets = ["c_attn", "c_proj", "gate", "up"] if mlp else ALL_LINEAR
    add_adapters(gpt, LoRA(r=4, alpha=8.0, dropout=0.1, targets=targets))
    trained_adapters(gpt)
    gpt.eval()  # dropout off, as generate and export run
    idx = torch.randint(0, 97, (2, 24))
    unmerged, _ = gpt(idx)
    merge_adapters(gpt)
    assert not has_adapters(gpt) and not any("lora" in k for k in gpt.state_dict())
    merged, _ = gpt(idx)
    assert (merged - unmerged).abs().max() < 1e-5
    assert (merged - small_gpt(**({"mlp": mlp} if mlp else {}))(idx)[0]).abs().max() > 1e-3


def test_adapted_model_stays_causal():
    gpt = small_gpt()
    add_adapters(gpt, LoRA(r=4, targets=ALL_LINEAR))
    trained_adapters(gpt)
    idx = torch.randint(0, 97, (2, 20))
    logits, _ = gpt(idx)
    changed = idx.clone()
    changed[:, 9] = (changed[:, 9] + 1) % 97
    new, _ = gpt(changed)
    assert torch.equal(new[:, :9], logits[:, :9])
    assert not torch.allclose(new[:, 9], logits[:, 9])


def test_targets_choose_the_layers_and_qualified_names_tell_the_two_c_proj_apart():
    gpt = small_gpt()
    add_adapters(gpt, LoRA(r=2, targets=["mlp.c_proj"]))
    trainable = {n for n, p in gpt.named_parameters() if p.requires_grad}
    assert trainable == {f"blocks.{i}.mlp.c_proj.lora_{m}" for i in (0, 1) for m in "AB"}


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"r": 0}, "model.lora.r must be at least 1, got 0"),
        ({"alpha": 0.0}, "model.lora.alpha must be above 0, got 0.0"),
        ({"dropout": 1.0}, "model.lora.dropout must be in [0.0, 1.0), got 1.0"),
        ({"targets": []}, "model.lora.targets is empty"),
        ({"targets": ["qkv"]}, "'qkv' names no linear layer of the blocks: one of attn.c_attn"),
    ],
)
def test_bad_options_are_one_line_errors_naming_the_key(options, message):
    with pytest.raises(UserError) as error:
        add_adapters(small_gpt(), LoRA(**options))
    assert message in str(error.value) and "\n" not in str(error.value)


def random_windows(n: int = 12) -> torch.utils.data.DataLoader:
    torch.manual_seed(2)
    return torch.utils.data.DataLoader(torch.randint(0, 97, (n, 25)), batch_size=4)


def test_only_the_adapters_train_and_the_frozen_weights_stay_bitwise_untouched():
    gpt = small_gpt()
    base = {k: v.clone() for k, v in gpt.state_dict().items()}
    module = LitGPT(gpt, lora=LoRA(r=4, dropout=0.1, targets=ALL_LINEAR), compile=False)
    trainer = L.Trainer(max_steps=3, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)  # fmt: skip
    trainer.fit(module, train_dataloaders=random_windows())
    [optimizer] = trainer.optimizers
    in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
    adapters = {id(p) for n, p in gpt.named_parameters() if "lora_" in n}
    assert in_optimizer == adapters and [g["role"] for g in optimizer.param_groups] == ["adapter"]
    after = gpt.state_dict()
    for name, value in base.items():  # weight decay does not reach them either
        assert torch.equal(after[name], value), name
    assert any(after[n].abs().sum() > 0 for n in after if n.endswith("lora_B"))  # it trained


def test_muon_steps_the_adapters_with_adamw():
    from lit_gpt_scratch.train.optimizers import Muon

    gpt = small_gpt()
    add_adapters(gpt, LoRA(r=4))
    optimizer = Muon(param_groups(gpt))
    loss = gpt(torch.randint(0, 97, (2, 24)), torch.randint(0, 97, (2, 24)))[1]
    loss.backward()
    optimizer.step()
    [group] = optimizer.param_groups
    assert group["role"] == "adapter" and group["lr"] == 3e-3  # Muon's adamw_lr
    assert all("exp_avg" in optimizer.state[p] for p in group["params"])


# --- through the command line: base run, LoRA fine-tune, resume, load ---------------------------

LORA = {"model.lora.r": "4", "model.lora.targets": "[c_attn,c_proj,c_fc]"}
RUN = "checkpoints/tiny/version_0/checkpoints"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A 6-step base run, and a 6-step LoRA fine-tune of its last checkpoint (saving at 3, 6)."""
    root = tmp_path_factory.mktemp("lora")
    corpus = write_text_corpus(root / "corpus", LOREM * 3)
    args = small_run_args(corpus, root / "data", **{"trainer.deterministic": "true"})
    base = fit(root / "base", args)
    assert base.returncode == 0, base.stderr[-3000:]
    base_ckpt = root / "base.ckpt"  # a fixed file: the base run's last.ckpt would move on
    shutil.copy(root / "base" / RUN / "last.ckpt", base_ckpt)
    tuned_args = small_run_args(corpus, root / "data", **LORA, **{"trainer.deterministic": "true"})
    tuned = fit(root / "tuned", tuned_args, f"--ckpt_path={base_ckpt}")
    assert tuned.returncode == 0, tuned.stderr[-3000:]
    return root, tuned_args, base_ckpt


def test_the_adapter_checkpoint_holds_the_adapters_alone_and_is_a_small_fraction(runs):
    root, _, base_ckpt = runs
    ckpt = torch.load(root / "tuned" / RUN / "last.ckpt", weights_only=True)
    assert ckpt["lora_adapters_only"] and ckpt["lora_base"]["path"] == str(base_ckpt.resolve())
    assert {k.rsplit(".", 1)[-1] for k in ckpt["state_dict"]} == {"lora_A", "lora_B"}
    assert ckpt["hyper_parameters"]["lora"]["r"] == 4
    # this 1-layer width-32 test model is mostly its 4,096-row embedding: the rank-4 adapters
    # with their AdamW moments are 3.1% of the base's training checkpoint (55 KB of 1.78 MB)
    ratio = (root / "tuned" / RUN / "last.ckpt").stat().st_size / base_ckpt.stat().st_size
    assert ratio < 0.05, ratio


def test_generate_and_export_read_the_adapters_merged_into_a_plain_model(runs, cli):
    root, _, base_ckpt = runs
    path = root / "tuned" / RUN / "last.ckpt"
    loaded = load_gpt(path)
    assert not has_adapters(loaded.gpt) and loaded.spec["init_args"]["n_layer"] == 1
    # the same logits as the base model with the adapters applied, unmerged
    reference = load_gpt(base_ckpt).gpt
    add_adapters(reference, LoRA(r=4, targets=ALL_LINEAR))
    adapters = torch.load(path, weights_only=True)["state_dict"]
    reference.load_state_dict({k[4:]: v for k, v in adapters.items()}, strict=False)
    idx = torch.randint(0, 4096, (2, 16))
    merged, unmerged = loaded.gpt(idx)[0], reference.eval()(idx)[0]
    assert (merged - unmerged).abs().max() < 1e-5
    assert (merged - load_gpt(base_ckpt).gpt(idx)[0]).abs().max() > 1e-4  # the adapters count
    exported = cli("export", "--ckpt_path", str(path), "--out_dir", str(root / "hf"))
    assert exported.returncode == 0, exported.stderr


def test_a_lora_run_resumes_exactly_from_its_own_checkpoint(runs):
    """Resumed from its step-3 checkpoint, the fine-tune ends with the same adapters and
    optimizer state, bitwise, as the run that went through."""
    root, args, _ = runs
    copy = root / "resumed"
    shutil.copytree(root / "tuned", copy)
    step3 = copy / RUN / "last-1.ckpt"
    assert torch.load(step3, weights_only=True)["global_step"] == 3
    resumed = fit(copy, args, f"--ckpt_path={step3}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a = torch.load(root / "tuned" / RUN / "last.ckpt", weights_only=True)
    b = torch.load(copy / RUN / "last.ckpt", weights_only=True)
    assert a["global_step"] == b["global_step"] == 6
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
    moments_a = a["optimizer_states"][0]["state"]
    moments_b = b["optimizer_states"][0]["state"]
    assert all(torch.equal(moments_a[i]["exp_avg"], moments_b[i]["exp_avg"]) for i in moments_a)


def test_a_changed_or_missing_base_is_a_one_line_error(runs, tmp_path):
    root, _, base_ckpt = runs
    tuned = root / "tuned" / RUN / "last.ckpt"
    moved = tmp_path / "base.ckpt"
    shutil.move(base_ckpt, moved)
    try:
        with pytest.raises(UserError, match="no longer exists: put it back there"):
            load_gpt(tuned)
        other = root / "base" / RUN / "last-1.ckpt"  # the base run's step 3: other weights
        shutil.copy(other, base_ckpt)
        with pytest.raises(UserError, match="whose weights have changed since"):
            load_gpt(tuned)
    finally:
        shutil.move(moved, base_ckpt)


def test_fit_refuses_lora_without_a_base_or_with_other_settings(runs, cli):
    root, args, _ = runs
    tuned = root / "tuned" / RUN / "last.ckpt"
    no_base = cli("fit", *args, "--trainer.max_steps=1")
    assert no_base.returncode == 1
    assert "model.lora fine-tunes a base model: give its checkpoint" in no_base.stderr
    other_rank = cli("fit", *args, "--model.lora.r=8", f"--ckpt_path={tuned}")
    assert "model.lora.r is 4 in the checkpoint, 8 in the config" in other_rank.stderr
    without = [a for a in args if not a.startswith("--model.lora")]
    plain = cli("fit", *without, f"--ckpt_path={tuned}")
    assert "model.lora is set in the checkpoint, null in the config" in plain.stderr


def test_save_full_keeps_every_weight_with_the_base_bitwise_as_it_was(runs, tmp_path):
    root, args, base_ckpt = runs
    full = fit(tmp_path, args, "--model.lora.save=full", "--trainer.max_steps=3",
               f"--ckpt_path={base_ckpt}")  # fmt: skip
    assert full.returncode == 0, full.stderr[-3000:]
    saved = torch.load(tmp_path / RUN / "last.ckpt", weights_only=True)["state_dict"]
    base = torch.load(base_ckpt, weights_only=True)["state_dict"]
    assert "lora_adapters_only" not in torch.load(tmp_path / RUN / "last.ckpt", weights_only=True)
    assert all(torch.equal(saved[k], v) for k, v in base.items())
    assert Path(tmp_path / RUN / "last.ckpt").stat().st_size < base_ckpt.stat().st_size


# --- several processes (gloo on CPU) ----------------------------------------------------------


@pytest.fixture(scope="module")
def gloo_base(tmp_path_factory):
    """A 4-step base run (gloo_runs' settings) and a copy of its last checkpoint."""
    from gloo_runs import fit as gloo_fit

    root = tmp_path_factory.mktemp("lora-gloo")
    gloo_fit(root / "base", root / "data")
    shutil.copy(root / "base" / RUN / "last.ckpt", root / "base.ckpt")
    return root


def lora_fit(root: Path, name: str, **options):
    from gloo_runs import fit as gloo_fit

    lora = [f"--{k}={v}" for k, v in LORA.items()]
    return gloo_fit(root / name, root / "data", *lora, f"--ckpt_path={root / 'base.ckpt'}",
                    **options)  # fmt: skip


def adapters(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / RUN / "last.ckpt", weights_only=True)["state_dict"]


@pytest.mark.slow
def test_lora_trains_under_ddp_as_on_one_process(gloo_base):
    """No unused-parameter error with the base frozen, and the same adapters as one process
    with the same global batch."""
    from gloo_runs import TOLERANCE

    lora_fit(gloo_base, "single")
    lora_fit(gloo_base, "ddp", devices=2, batch=4)
    want, got = adapters(gloo_base / "single"), adapters(gloo_base / "ddp")
    assert got.keys() == want.keys()
    for name, tensor in got.items():
        torch.testing.assert_close(tensor, want[name], atol=TOLERANCE, rtol=0)


@pytest.mark.slow
def test_lora_trains_under_fsdp_with_the_base_frozen_in_the_shards(gloo_base):
    from gloo_runs import FSDP

    from lit_gpt_scratch.train.checkpoint_files import load_sharded_gpt

    lora_fit(gloo_base, "fsdp", devices=2, batch=4, strategy=FSDP)
    merged = load_sharded_gpt(gloo_base / "fsdp" / RUN / "last.ckpt").gpt.state_dict()
    base = load_gpt(gloo_base / "base.ckpt").gpt.state_dict()
    assert torch.equal(merged["wte.weight"], base["wte.weight"])  # frozen, fp32 master weights
    assert torch.equal(merged["blocks.0.ln_1.weight"], base["blocks.0.ln_1.weight"])
    adapted = "blocks.0.attn.c_attn.weight"
    assert not torch.equal(merged[adapted], base[adapted])  # the adapters merged in
