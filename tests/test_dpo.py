"""model.objective: dpo: preference fine-tuning against a frozen reference (train/dpo.py,
data/preference.py). The toy task: replies that name a colour are chosen, replies that name
a number rejected; the held-out pairs ask other questions."""

from __future__ import annotations

import json
import math
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.nn.functional as F

from lit_gpt_scratch.data.chat_template import ChatTemplate
from lit_gpt_scratch.data.preference import PreferenceDataModule, read_pairs
from lit_gpt_scratch.errors import UserError
from lit_gpt_scratch.model.gpt import GPT
from lit_gpt_scratch.model.lora import LoRA
from lit_gpt_scratch.tokenizer.encodings import load_tokenizer
from lit_gpt_scratch.train.dpo import LitDPO, dpo_loss, reply_logprobs

TOKENIZER = "stdlib-4k+chat"
COLOURS = ["red", "green", "blue", "yellow", "purple", "orange", "black", "white"]
NUMBERS = ["one", "two", "three", "four", "five", "six", "seven", "eight"]
TOPICS = ["the sky", "a leaf", "the sea", "a lemon", "a plum", "a carrot", "coal", "snow",
          "a rose", "grass", "ink", "milk"]  # fmt: skip


def toy_pairs(questions: list[str]) -> list[dict]:
    return [
        {"prompt": f"What colour is {q}?", "chosen": f"It is {COLOURS[i % 8]}.",
         "rejected": f"It is {NUMBERS[(i * 3) % 8]}."}
        for i, q in enumerate(questions)
    ]  # fmt: skip


def write_jsonl(path: Path, records: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return str(path)


@pytest.fixture(scope="module")
def toy_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("preferences")
    train = toy_pairs([f"{t} number {k}" for k in range(4) for t in TOPICS[:8]])  # 32 pairs
    val = toy_pairs(TOPICS[8:])  # other questions
    return write_jsonl(folder / "train.jsonl", train), write_jsonl(folder / "val.jsonl", val)


def small_gpt(block_size: int = 24, **options) -> GPT:
    torch.manual_seed(0)
    return GPT(vocab_size=4100, block_size=block_size, n_layer=2, n_head=2, d_model=32, **options)


def data_module(files, batch_size: int = 8, block_size: int = 24) -> PreferenceDataModule:
    train, val = files
    return PreferenceDataModule(
        train, val, tokenizer=TOKENIZER, block_size=block_size, batch_size=batch_size
    )


def fast_adamw(groups):
    return torch.optim.AdamW(groups, lr=3e-3)


def quiet_trainer(max_steps: int, **options) -> L.Trainer:
    settings = dict(
        max_steps=max_steps, accelerator="cpu", devices=1, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        num_sanity_val_steps=0, check_val_every_n_epoch=None, val_check_interval=max_steps,
        use_distributed_sampler=False, inference_mode=False,
    )  # fmt: skip
    return L.Trainer(**{**settings, **options})


def test_the_margin_rises_on_held_out_pairs_and_the_reference_stays_bitwise_frozen(toy_files):
    model = LitDPO(small_gpt(), beta=0.5, optimizer=fast_adamw)
    datamodule = data_module(toy_files)
    trainer = quiet_trainer(max_steps=30)
    [before] = trainer.validate(model, datamodule=datamodule, verbose=False)
    reference = {k: v.clone() for k, v in model.reference.state_dict().items()}
    start = {k: v.clone() for k, v in model.gpt.state_dict().items()}
    assert all(torch.equal(reference[k], v) for k, v in start.items())  # the start's weights
    # before training the policy is the reference: every reward is exactly 0
    assert before["val/margin"] == 0 and before["val/loss"] == pytest.approx(math.log(2))
    trainer.fit(model, datamodule=datamodule)
    after = trainer.callback_metrics
    assert after["val/margin"] > 0.5 and after["val/accuracy"] == 1.0
    assert after["val/loss"] < before["val/loss"] - 0.2
    for name, tensor in model.reference.state_dict().items():
        assert torch.equal(tensor, reference[name]), name
    assert any(not torch.equal(v, start[k]) for k, v in model.gpt.state_dict().items())
    assert not model.reference.training  # eval mode, whatever fit set the policy to
    assert all(not p.requires_grad and p.grad is None for p in model.reference.parameters())
    [optimizer] = trainer.optimizers
    in_optimizer = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert in_optimizer == {id(p) for p in model.gpt.parameters()}


def test_the_loss_is_the_hand_computed_dpo_loss_on_a_tiny_case():
    tok = load_tokenizer(TOKENIZER)
    template = ChatTemplate(tok)
    gpt, reference = small_gpt(), small_gpt()
    with torch.no_grad():
        for p in gpt.parameters():
            p.add_(0.05 * torch.randn_like(p))
    pair = {"prompt": "Hi", "chosen": "Hello there", "rejected": "Go"}
    rows = []
    for reply in ("chosen", "rejected"):
        ids, mask = template.render(
            [
                {"role": "user", "content": pair["prompt"]},
                {"role": "assistant", "content": pair[reply]},
            ]
        )
        padded = torch.full((2, 25), tok.eot_id)
        padded[1] = 0
        padded[0, : len(ids)], padded[1, : len(ids)] = torch.tensor(ids), torch.tensor(mask)
        rows.append(padded)
    batch = torch.stack(rows).unsqueeze(0)  # (1, 2, 2, 25)

    def by_hand(model: GPT, reply: str) -> float:
        """Sum over the reply and its <|end|> of log p(token | everything before it)."""
        ids, mask = template.render(
            [
                {"role": "user", "content": pair["prompt"]},
                {"role": "assistant", "content": pair[reply]},
            ]
        )
        total = 0.0
        for t in range(1, len(ids)):
            if mask[t]:
                logits, _ = model(torch.tensor([ids[:t]]))
                total += F.log_softmax(logits[0, -1].double(), -1)[ids[t]].item()
        return total

    with torch.no_grad():
        policy, ref = reply_logprobs(gpt, batch), reply_logprobs(reference, batch)
    beta = 0.3
    w = by_hand(gpt, "chosen") - by_hand(reference, "chosen")
    lose = by_hand(gpt, "rejected") - by_hand(reference, "rejected")
    expected = -math.log(1 / (1 + math.exp(-beta * (w - lose))))
    loss, stats = dpo_loss(policy, ref, beta)
    assert loss.item() == pytest.approx(expected, abs=1e-4)
    assert stats["margin"].item() == pytest.approx(beta * (w - lose), abs=1e-4)
    # "Hello there" + <|end|>: the prompt, the role tokens and the padding are not summed
    assert policy[0, 0].item() == pytest.approx(by_hand(gpt, "chosen"), abs=1e-4)


def test_with_lora_the_reference_is_the_base_model_and_no_copy_is_kept(toy_files):
    model = LitDPO(small_gpt(), beta=0.5, optimizer=fast_adamw, lora=LoRA(r=4))
    base = {k: v.clone() for k, v in model.gpt.state_dict().items() if "lora_" not in k}
    trainer = quiet_trainer(max_steps=10)
    datamodule = data_module(toy_files)
    trainer.fit(model, datamodule=datamodule)
    assert model.reference is None
    batch = next(iter(datamodule.val_dataloader()))
    plain = small_gpt()  # the same init: the base weights
    with torch.no_grad():
        reference = model.reference_logprobs(batch)
        assert torch.equal(reference, reply_logprobs(plain, batch))
        assert not torch.equal(reference, reply_logprobs(model.gpt, batch))  # adapters back on
    for name, tensor in base.items():
        assert torch.equal(model.gpt.state_dict()[name], tensor), name


def test_the_pair_order_resumes_exactly_from_the_saved_position(toy_files):
    first = data_module(toy_files, batch_size=4)
    first.setup("fit")
    batches = iter(first.train_dataloader())
    for _ in range(10):  # across an epoch's end (8 batches an epoch)
        next(batches)
        first.mark_batch_consumed()
    expected = next(batches)
    second = data_module(toy_files, batch_size=4)
    second.setup("fit")
    second.load_state_dict(first.state_dict())
    assert torch.equal(next(iter(second.train_dataloader())), expected)


def test_a_fit_resumed_from_its_checkpoint_continues_bitwise(toy_files, tmp_path):
    def fit(max_steps: int, ckpt_path=None) -> LitDPO:
        model = LitDPO(small_gpt(), beta=0.5, optimizer=fast_adamw)
        trainer = quiet_trainer(max_steps, enable_checkpointing=True, default_root_dir=tmp_path)
        datamodule = data_module(toy_files, batch_size=4)
        # weights_only=False: outside the command line the hyperparameters hold the GPT itself
        trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=False)
        if ckpt_path is None:
            trainer.save_checkpoint(tmp_path / f"step{max_steps}.ckpt")
        return model

    straight = fit(12)
    fit(5)
    ckpt = torch.load(tmp_path / "step5.ckpt", weights_only=False)
    assert any(k.startswith("reference.") for k in ckpt["state_dict"])
    resumed = fit(12, ckpt_path=tmp_path / "step5.ckpt")
    for name, tensor in straight.state_dict().items():
        assert torch.equal(resumed.state_dict()[name], tensor), name


def test_a_long_pair_is_cut_at_its_reply_and_counted(tmp_path):
    template = ChatTemplate(load_tokenizer(TOKENIZER))
    long = {"prompt": "Why?", "chosen": "because " * 40, "rejected": "no"}
    path = write_jsonl(tmp_path / "long.jsonl", [long, toy_pairs(["snow"])[0]])
    pairs, cut, skipped = read_pairs(path, template, block_size=24)
    assert (len(pairs), cut, skipped) == (2, 1, 0)
    assert pairs[0].shape == (2, 2, 25) and pairs[0][0, 1, -1] == 1  # a reply token to the end
    too_long = write_jsonl(tmp_path / "prompt.jsonl", [{**long, "prompt": "why " * 40}])
    with pytest.raises(UserError, match="holds no preference pairs .1 skipped"):
        read_pairs(too_long, template, block_size=24)


@pytest.mark.parametrize(
    "line, message",
    [
        ("{not json", "is not valid JSON"),
        ("[1, 2]", "is not a JSON object"),
        ('{"chosen": "a", "rejected": "b"}', 'has no "prompt" string'),
        ('{"prompt": "q", "chosen": "a"}', 'has no "rejected" string'),
        ('{"prompt": "q", "chosen": " ", "rejected": "b"}', '"chosen" is empty'),
        ('{"prompt": "q", "chosen": "a", "rejected": "a"}', "are the same reply"),
    ],
)
def test_a_bad_record_is_one_line_naming_its_byte_offset(tmp_path, line, message):
    good = json.dumps(toy_pairs(["snow"])[0]) + "\n"
    path = tmp_path / "bad.jsonl"
    path.write_text(good + line + "\n", encoding="utf-8")
    template = ChatTemplate(load_tokenizer(TOKENIZER))
    with pytest.raises(UserError) as e:
        read_pairs(str(path), template, block_size=16)
    assert str(e.value).startswith(f"{path}: record at byte {len(good)}")
    assert message in str(e.value) and "\n" not in str(e.value)


def test_bad_options_are_one_line(toy_files):
    with pytest.raises(UserError, match="model.beta must be above 0"):
        LitDPO(small_gpt(), beta=0)
    plain = PreferenceDataModule(*toy_files, tokenizer="stdlib-4k", block_size=24)
    with pytest.raises(UserError, match=r"has no <.system.> token: use 'stdlib-4k\+chat'"):
        plain.setup("fit")


def test_the_dpo_config_builds_the_sft_model_its_checkpoints_start_from(cli):
    import yaml

    configs = Path(__file__).parent.parent / "configs"
    shown = {}
    for name in ("sft-tiny", "dpo-tiny"):
        result = cli("fit", f"--config={configs / name}.yaml", "--print_config")
        assert result.returncode == 0, result.stderr
        shown[name] = yaml.safe_load(result.stdout)
    assert shown["dpo-tiny"]["model"]["gpt"] == shown["sft-tiny"]["model"]["gpt"]
    assert shown["dpo-tiny"]["data"]["tokenizer"] == shown["sft-tiny"]["data"]["tokenizer"]
    bad = cli("fit", f"--config={configs}/dpo-tiny.yaml", "--model.objective=ppo", "--print_config")
    assert bad.returncode == 1
    assert "model.objective 'ppo' is not an objective" in bad.stderr.strip().splitlines()[-1]
    refused = cli("prepare", "--config", str(configs / "dpo-tiny.yaml"))
    assert refused.returncode == 1 and "nothing to prepare" in refused.stderr


def test_preference_set_writes_true_and_wrong_docstring_lines(tmp_path, cli):
    result = cli("preference_set", "--out", str(tmp_path / "prefs"), "--max_pairs", "30")
    assert result.returncode == 0, result.stderr
    records = [
        json.loads(line)
        for split in ("train", "val")
        for line in (tmp_path / "prefs" / f"{split}.jsonl").read_text().splitlines()
    ]
    assert len(records) == 30
    chosen = [r["chosen"] for r in records]
    assert sorted(r["rejected"] for r in records) == sorted(chosen)  # every one a real line
    assert all(r["chosen"] != r["rejected"] and r["prompt"].startswith("What does `")
               for r in records)  # fmt: skip


@pytest.mark.slow  # about 20 s on a shared 2-core machine
def test_fit_starts_from_a_chat_model_and_its_run_resumes(cli, tmp_path, toy_files):
    import yaml

    from lit_gpt_scratch.model.build import build_gpt
    from lit_gpt_scratch.train.checkpoint_files import load_gpt, save_gpt

    config = Path(__file__).parent.parent / "configs/dpo-tiny.yaml"
    train, val = toy_files
    args = [
        "--config", str(config), f"--data.train_file={train}", f"--data.val_file={val}",
        "--data.block_size=24", "--data.batch_size=4", "--model.gpt.init_args.n_layer=1",
        "--model.gpt.init_args.d_model=32", "--model.gpt.init_args.n_head=2",
        "--trainer.max_steps=4", "--trainer.val_check_interval=2",
        "--checkpoint.every_n_train_steps=2", "--trainer.enable_progress_bar=false",
        "--trainer.precision=32-true", "--model.optimizer.init_args.lr=1e-3",
    ]  # fmt: skip
    shown = cli("fit", *args, "--print_config")
    spec = yaml.safe_load(shown.stdout)["model"]["gpt"]
    spec["init_args"]["block_size"] = 24  # linked to data.block_size: --print_config omits it
    start = tmp_path / "chat.ckpt"
    save_gpt(start, build_gpt(spec), spec, "stdlib-4k+chat")
    started = cli("fit", *args, f"--ckpt_path={start}")
    assert started.returncode == 0, started.stderr
    assert f"starting from the weights in {start}" in started.stderr
    run = tmp_path / "checkpoints/dpo-tiny/version_0/checkpoints"
    tuned = torch.load(run / "last.ckpt", weights_only=True)
    assert tuned["hyper_parameters"]["objective"] == "dpo"
    base = torch.load(start, weights_only=True)["state_dict"]
    for name, tensor in base.items():  # the reference is the start, bit for bit
        assert torch.equal(tuned["state_dict"]["reference." + name.removeprefix("gpt.")], tensor)
    resumed = cli("fit", *args, "--trainer.max_steps=6", "--ckpt_path=last")
    assert resumed.returncode == 0, resumed.stderr
    again = torch.load(run / "last.ckpt", weights_only=True)
    assert again["global_step"] == 6
    assert (again["PreferenceDataModule"]["epoch"], again["PreferenceDataModule"]["index"]) == (
        0,
        6,
    )
    for name, tensor in base.items():
        assert torch.equal(again["state_dict"]["reference." + name.removeprefix("gpt.")], tensor)
    loaded = load_gpt(run / "last.ckpt")  # generate, chat and export read the policy alone
    policy = {
        k.removeprefix("gpt."): v for k, v in again["state_dict"].items() if k.startswith("gpt.")
    }
    assert all(torch.equal(loaded.gpt.state_dict()[k], v) for k, v in policy.items())
