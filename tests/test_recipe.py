"""The modern recipe's plug-ins: Muon, zero-initialised projections, the logit soft-cap, the
warmup-stable-decay schedule, and the param groups they rely on."""

from __future__ import annotations

import pytest
import torch
from conftest import LOREM, last_checkpoint, small_run_args, write_text_corpus

from lit_gpt_scratch.errors import UserError
from lit_gpt_scratch.model.gpt import GPT
from lit_gpt_scratch.train.optimizers import Muon, orthogonalize
from lit_gpt_scratch.train.param_groups import param_groups
from lit_gpt_scratch.train.schedules import WarmupCosineLR, WarmupStableDecayLR


def small(**options) -> GPT:
    torch.manual_seed(0)
    return GPT(vocab_size=97, block_size=16, n_layer=2, n_head=2, d_model=32, **options)


def test_param_groups_split_block_matrices_embeddings_and_vectors():
    model = small(tie_embeddings=False)
    names = {id(p): n for n, p in model.named_parameters()}
    groups = {g["role"]: [names[id(p)] for p in g["params"]] for g in param_groups(model)}
    assert all(n.startswith("blocks.") and n.endswith("weight") for n in groups["matrix"])
    assert len(groups["matrix"]) == 2 * 4  # c_attn, attn c_proj, c_fc, mlp c_proj per block
    assert sorted(groups["embedding"]) == ["lm_head.weight", "position.wpe.weight", "wte.weight"]
    assert all(model.get_parameter(n).dim() == 1 for n in groups["vector"])
    assert param_groups(model)[2]["weight_decay"] == 0.0
    assert sum(map(len, groups.values())) == len(names)  # every parameter, once


def assert_near_orthogonal(update: torch.Tensor, g: torch.Tensor) -> None:
    """``update`` is about ``U V^T`` of ``g``: no singular value above ~1.2, most near 1
    (five Newton-Schulz steps leave the very smallest ones short), and the same direction."""
    u, _, vt = torch.linalg.svd(g, full_matrices=False)
    singular = torch.linalg.svdvals(update.float())
    assert singular.max() < 1.3 and singular.median() > 0.6, singular
    cosine = (update * (u @ vt)).sum() / (update.norm() * (u @ vt).norm())
    assert cosine > 0.9, cosine


@pytest.mark.parametrize("shape", [(64, 32), (32, 96), (48, 48)])
def test_orthogonalize_approximates_u_vt(shape):
    g = torch.randn(*shape, generator=torch.Generator().manual_seed(1))
    out = orthogonalize(g)
    assert out.shape == g.shape and out.dtype == g.dtype
    assert_near_orthogonal(out, g)


def random_grads(model: GPT, seed: int) -> None:
    """Full-rank random gradients, the same for every model built by ``small``."""
    g = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        p.grad = torch.randn(p.shape, generator=g)


def test_muon_steps_its_non_matrix_groups_exactly_as_adamw():
    model, twin = small(), small()
    muon = Muon(param_groups(model), adamw_lr=1e-2, weight_decay=0.1)
    adamw_groups = [g for g in param_groups(twin) if g["role"] != "matrix"]
    adamw = torch.optim.AdamW(adamw_groups, lr=1e-2, betas=(0.9, 0.95), weight_decay=0.1)
    for step in range(3):
        random_grads(model, step), random_grads(twin, step)
        muon.step(), adamw.step()
    for (name, p), q in zip(model.named_parameters(), twin.parameters(), strict=True):
        if not name.startswith("blocks.") or p.dim() == 1:
            torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=name)


def test_muon_moves_every_matrix_by_an_orthogonal_update():
    model = small()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = Muon(param_groups(model), lr=0.02)
    random_grads(model, 0)
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    opt.step()
    for name, p in model.named_parameters():
        if name.startswith("blocks.") and p.dim() == 2:
            scale = max(1.0, p.size(0) / p.size(1)) ** 0.5  # tall matrices step further
            assert_near_orthogonal((before[name] - p.detach()) / (0.02 * scale), grads[name])


def test_a_muon_step_flagged_found_inf_is_as_if_it_never_happened():
    skipped, plain = small(), small()
    opts = [Muon(param_groups(m), weight_decay=0.1) for m in (skipped, plain)]
    for seed in (0, 1):
        for model, opt in zip((skipped, plain), opts, strict=True):
            random_grads(model, seed)
            opt.step()
    for p in skipped.parameters():  # a diverged step: NaN gradients, the guard's flag set
        p.grad = torch.full_like(p, float("nan"))
    opts[0].found_inf = torch.tensor(1.0)
    opts[0].step()
    opts[0].found_inf = torch.tensor(0.0)
    for model, opt in zip((skipped, plain), opts, strict=True):
        random_grads(model, 2)
        opt.step()
    for p, q in zip(skipped.parameters(), plain.parameters(), strict=True):
        assert torch.equal(p, q)


def test_zero_init_projections_make_every_block_start_as_the_identity():
    model = small(zero_init_projections=True)
    projections = [p for n, p in model.named_parameters() if n.endswith("c_proj.weight")]
    assert len(projections) == 4 and all(torch.equal(p, torch.zeros_like(p)) for p in projections)
    idx = torch.randint(0, 97, (2, 16))
    x = model.position.embed(model.wte(idx), torch.arange(16))
    torch.testing.assert_close(model(idx)[0], model.lm_head(model.ln_f(x))[..., :97])


def test_logit_softcap_bounds_the_logits_in_every_loss_path():
    plain, capped = small(init_std=1.0), small(init_std=1.0, logit_softcap=5.0)
    idx = torch.randint(0, 97, (2, 16))
    raw, logits = plain(idx)[0], capped(idx)[0]
    assert raw.abs().max() > 5.0 and logits.abs().max() < 5.0
    torch.testing.assert_close(logits, 5.0 * torch.tanh(raw / 5.0))
    chunked = small(init_std=1.0, logit_softcap=5.0, loss_chunk_size=7)
    torch.testing.assert_close(chunked(idx, idx)[1], capped(idx, idx)[1])
    with pytest.raises(UserError, match="logit_softcap must be positive, got 0"):
        small(logit_softcap=0.0)


def test_warmup_stable_decay_holds_the_peak_then_decays_linearly():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    wsd = WarmupStableDecayLR(opt, warmup_steps=10, max_steps=100, decay_fraction=0.2, min_lr=0.1)
    lrs = [wsd.lr_at(step, 1.0) for step in range(101)]
    assert lrs[0] == pytest.approx(1 / 11) and lrs[9] == pytest.approx(10 / 11)
    assert set(lrs[10:81]) == {1.0}  # stable until 80% of the run
    assert lrs[90] == pytest.approx(0.55) and lrs[100] == pytest.approx(0.1)
    cosine = WarmupCosineLR(opt, warmup_steps=10, max_steps=100, min_lr=0.1)
    assert cosine.lr_at(50, 1.0) < 1.0  # cosine decays through the middle, WSD does not
    with pytest.raises(UserError, match="decay_fraction must be in"):
        WarmupStableDecayLR(opt, decay_fraction=0.0)


MUON = [
    "--model.optimizer.class_path=lit_gpt_scratch.train.optimizers.Muon",
    "--model.optimizer.init_args.lr=0.02",
    "--model.optimizer.init_args.adamw_lr=0.003",
]


def test_a_muon_run_resumes_to_the_same_weights(tmp_path, cli):
    corpus = write_text_corpus(tmp_path / "corpus", LOREM)
    every_2 = {"checkpoint.every_n_train_steps": "2", "trainer.val_check_interval": "2"}
    args = small_run_args(corpus, tmp_path / "data", **{"samples.every_n_steps": "0", **every_2})
    assert cli("fit", *args, *MUON, "--trainer.max_steps=4").returncode == 0
    whole = last_checkpoint(tmp_path)
    assert whole["global_step"] == 4
    assert cli("fit", *args, *MUON, "--trainer.max_steps=2").returncode == 0
    resumed = cli("fit", *args, *MUON, "--trainer.max_steps=4", "--ckpt_path=last")
    assert resumed.returncode == 0, resumed.stderr
    again = last_checkpoint(tmp_path, version=1)
    assert again["global_step"] == 4
    for key, value in whole["state_dict"].items():
        assert torch.equal(again["state_dict"][key], value), key


def test_export_refuses_a_soft_capped_head():
    pytest.importorskip("transformers")
    from lit_gpt_scratch.interop.hf import hf_from_gpt

    with pytest.raises(UserError, match="cannot export: gpt GPT with logit_softcap has no"):
        hf_from_gpt(small(logit_softcap=15.0))
