"""model.head: classification: a GPT fine-tuned as a text classifier (train/classifier.py,
data/classification.py). The toy task, generated here from the stdlib: is a line a ``def``
or a ``class`` line?"""

from __future__ import annotations

import json
import re
import sysconfig
from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import LOREM, ROOT, small_run_args, write_text_corpus

from lit_gpt_scratch.data.classification import ClassificationDataModule, read_labelled
from lit_gpt_scratch.errors import UserError
from lit_gpt_scratch.model.gpt import GPT
from lit_gpt_scratch.tokenizer.encodings import load_tokenizer
from lit_gpt_scratch.train.classifier import LitClassifier

CONFIG = ROOT / "configs/classify-tiny.yaml"


def def_or_class_lines(n_per_class: int) -> list[dict]:
    """Balanced ``{text, label}`` records: stdlib lines starting ``def `` (0) or ``class `` (1),
    the keyword first so that the last token must look back to find it."""
    found: dict[int, list[str]] = {0: [], 1: []}
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("[a-h]*.py")):
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            match = re.match(r"(def|class) \w+", line)
            label = {"def": 0, "class": 1}.get(match.group(1)) if match else None
            if label is not None and len(found[label]) < n_per_class and len(line) < 60:
                found[label].append(line)
    return [{"text": t, "label": k} for k in (0, 1) for t in found[k]]


def write_jsonl(path: Path, records: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return str(path)


@pytest.fixture(scope="module")
def def_class_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("def_class")
    records = def_or_class_lines(150)
    train = [r for i, r in enumerate(records) if i % 5]
    val = [r for i, r in enumerate(records) if i % 5 == 0]
    return write_jsonl(folder / "train.jsonl", train), write_jsonl(folder / "val.jsonl", val)


def small_gpt(block_size: int = 32, n_layer: int = 2) -> GPT:
    torch.manual_seed(0)
    return GPT(vocab_size=4096, block_size=block_size, n_layer=n_layer, n_head=2, d_model=32)


def data_module(files, block_size: int = 32, batch_size: int = 16) -> ClassificationDataModule:
    train, val = files
    return ClassificationDataModule(
        train, val, tokenizer="stdlib-4k", block_size=block_size, batch_size=batch_size,
        n_classes=2, class_names=None,
    )  # fmt: skip


def fast_adamw(groups):
    return torch.optim.AdamW(groups, lr=3e-3)


def quiet_trainer(max_steps: int) -> L.Trainer:
    return L.Trainer(
        max_steps=max_steps, accelerator="cpu", devices=1, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        num_sanity_val_steps=0, check_val_every_n_epoch=None, val_check_interval=max_steps,
        use_distributed_sampler=False, inference_mode=False,  # validate, then fit the same metrics
    )  # fmt: skip


def test_accuracy_rises_above_chance_and_frozen_blocks_stay_bitwise(def_class_files):
    gpt = small_gpt(block_size=16)  # texts cut to 16 tokens: the keyword is still first
    model = LitClassifier(gpt, n_classes=2, trainable_blocks=1, optimizer=fast_adamw)
    trains = ("blocks.1.", "ln_f.")  # the last block and the final norm (and the head)
    frozen = {k: v.clone() for k, v in gpt.state_dict().items() if not k.startswith(trains)}
    trained = {k: v.clone() for k, v in gpt.state_dict().items() if k.startswith(trains)}
    head = model.head.weight.detach().clone()
    datamodule = data_module(def_class_files, block_size=16)
    trainer = quiet_trainer(max_steps=50)
    [before] = trainer.validate(model, datamodule=datamodule, verbose=False)
    trainer.fit(model, datamodule=datamodule)
    after = trainer.callback_metrics
    # balanced classes: chance is 0.5
    assert after["val/accuracy"] > 0.8 > before["val/accuracy"] - 0.2
    assert after["val/loss"] < before["val/loss"]
    state = gpt.state_dict()
    for name, tensor in frozen.items():
        assert torch.equal(state[name], tensor), name
    assert any(not torch.equal(state[k], v) for k, v in trained.items())
    assert not torch.equal(model.head.weight, head)
    # only what trains is in the optimizer
    [optimizer] = trainer.optimizers
    in_optimizer = {id(p) for g in optimizer.param_groups for p in g["params"]}
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert in_optimizer == trainable
    assert id(gpt.wte.weight) not in in_optimizer and id(model.head.weight) in in_optimizer


def test_pad_tokens_do_not_change_the_logits():
    model = LitClassifier(small_gpt(block_size=16), n_classes=3).eval()
    ids = torch.randint(0, 4096, (2, 16))
    lengths = torch.tensor([5, 11])
    other_pads = ids.clone()
    for row, n in enumerate(lengths):
        other_pads[row, n:] = torch.randint(0, 4096, (16 - int(n),))
    with torch.no_grad():
        logits = model(ids, lengths)
        assert torch.equal(logits, model(other_pads, lengths))  # same shapes: bitwise
        alone = model(ids[:1, :5], lengths[:1])  # no padding at all
    torch.testing.assert_close(logits[:1], alone, rtol=0, atol=1e-5)


def test_data_order_resumes_exactly_from_the_saved_position(def_class_files):
    first = data_module(def_class_files, batch_size=8)
    first.setup("fit")
    batches = iter(first.train_dataloader())
    for _ in range(3):
        next(batches)
        first.mark_batch_consumed()
    expected = next(batches)
    second = data_module(def_class_files, batch_size=8)
    second.setup("fit")
    second.load_state_dict(first.state_dict())
    resumed = next(iter(second.train_dataloader()))
    for a, b in zip(resumed, expected, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize(
    "line, message",
    [
        ("{not json", "is not valid JSON"),
        ('{"label": 1}', 'has no "text" string'),
        ('{"text": "x = 1"}', 'has no "label"'),
        ('{"text": "x = 1", "label": 2}', "label 2 is not in [0, model.n_classes 2)"),
        ('{"text": "x = 1", "label": true}', "label True is neither an int nor a class name"),
        ('{"text": "x = 1", "label": "enum"}', "label 'enum' is not one of data.class_names"),
        ('{"text": "", "label": 0}', "text is empty"),
    ],
)
def test_a_bad_record_is_one_line_naming_its_byte_offset(tmp_path, line, message):
    good = '{"text": "def f(): pass", "label": "def"}\n'
    path = write_jsonl(tmp_path / "bad.jsonl", [])
    Path(path).write_text(good + line + "\n", encoding="utf-8")
    tokenizer = load_tokenizer("stdlib-4k")
    with pytest.raises(UserError) as e:
        read_labelled(path, tokenizer.encode_ordinary, tokenizer.eot_id, 8, 2, ["def", "class"])
    assert str(e.value).startswith(f"{path}: record at byte {len(good)}")
    assert message in str(e.value) and "\n" not in str(e.value)


def test_the_classify_config_builds_the_tiny_model_its_checkpoints_start_from(cli):
    import yaml

    shown = {}
    for name in ("tiny", "classify-tiny"):
        result = cli("fit", f"--config={ROOT / 'configs' / name}.yaml", "--print_config")
        assert result.returncode == 0, result.stderr
        shown[name] = yaml.safe_load(result.stdout)
    assert shown["classify-tiny"]["model"]["gpt"] == shown["tiny"]["model"]["gpt"]
    assert shown["classify-tiny"]["data"]["tokenizer"] == shown["tiny"]["data"]["tokenizer"]


def test_bad_head_options_are_one_line(cli, tmp_path):
    result = cli("fit", "--config", str(CONFIG), "--model.head=regression", "--print_config")
    assert result.returncode == 1
    assert "model.head 'regression' is not a head" in result.stderr.strip().splitlines()[-1]
    refused = cli("prepare", "--config", str(CONFIG))
    assert refused.returncode == 1 and "nothing to prepare" in refused.stderr
    with pytest.raises(UserError, match=r"model.trainable_blocks must be in \[0, 2\]"):
        LitClassifier(small_gpt(), trainable_blocks=3)
    with pytest.raises(UserError, match="data.class_names lists 1 names, model.n_classes is 2"):
        ClassificationDataModule("a", "b", n_classes=2, class_names=["x"])


@pytest.mark.slow  # about 20 s on a shared 2-core machine
def test_a_pretraining_checkpoint_starts_the_classifier_and_its_run_resumes(cli, tmp_path):
    corpus = write_text_corpus(tmp_path / "corpus", LOREM)
    assert cli("fit", *small_run_args(corpus, tmp_path / "data")).returncode == 0
    base = tmp_path / "checkpoints/tiny/version_0/checkpoints/last.ckpt"
    records = def_or_class_lines(40)
    train = write_jsonl(tmp_path / "train.jsonl", [{**r, "label": ["def", "class"][r["label"]]}
                                                   for r in records])  # fmt: skip
    args = [
        "--config", str(CONFIG), f"--data.train_file={train}", f"--data.val_file={train}",
        "--data.class_names=[def, class]", "--model.n_classes=2", "--data.block_size=32",
        "--data.batch_size=4", "--model.gpt.init_args.n_layer=1",
        "--model.gpt.init_args.d_model=32", "--model.gpt.init_args.n_head=2",
        "--model.trainable_blocks=0", "--trainer.max_steps=4", "--trainer.val_check_interval=2",
        "--checkpoint.every_n_train_steps=2", "--trainer.enable_progress_bar=false",
        "--trainer.precision=32-true",
    ]  # fmt: skip
    started = cli("fit", *args, f"--ckpt_path={base}")
    assert started.returncode == 0, started.stderr
    assert f"starting from the weights in {base}" in started.stderr
    run = tmp_path / "checkpoints/classify-tiny/version_0/checkpoints"
    base_weights = torch.load(base, weights_only=True)["state_dict"]
    tuned = torch.load(run / "last.ckpt", weights_only=True)
    assert tuned["hyper_parameters"]["head"] == "classification"
    # trainable_blocks 0: only ln_f and the head train; the base's blocks arrive unchanged
    for name in ("gpt.wte.weight", "gpt.blocks.0.attn.c_attn.weight"):
        assert torch.equal(tuned["state_dict"][name], base_weights[name])
    assert not torch.equal(tuned["state_dict"]["gpt.ln_f.weight"], base_weights["gpt.ln_f.weight"])
    resumed = cli("fit", *args, "--trainer.max_steps=6", "--ckpt_path=last")
    assert resumed.returncode == 0, resumed.stderr
    again = torch.load(run / "last.ckpt", weights_only=True)
    assert again["global_step"] == 6
    position = again["ClassificationDataModule"]
    assert (position["epoch"], position["index"]) == divmod(6, len(records) // 4)
