"""Bad input met by fit: one line naming the thing and the problem, a non-zero exit, nothing
lost. (prepare's own cases are in test_prepare.py; checkpoints' in test_checkpoints.py.)"""

from __future__ import annotations

import errno

import numpy as np
import pytest
import torch
from conftest import LOREM, save_weights_only, small_run_args, write_text_corpus


@pytest.fixture
def args(tmp_path):
    corpus = write_text_corpus(tmp_path / "corpus", LOREM)
    return small_run_args(corpus, tmp_path / "data", **{"trainer.max_steps": "4"})


def last_line(result) -> str:
    return result.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize("workers", [0, 2])
def test_token_id_outside_the_vocabulary_is_named(tmp_path, cli, args, workers):
    assert cli("fit", *args, "--trainer.max_steps=1").returncode == 0
    shard = tmp_path / "data/train_000000.bin"
    tokens = np.memmap(shard, dtype=np.uint16, mode="r+")
    tokens[:] = 4500  # every window then holds it; the vocabulary has 4096 ids
    tokens.flush()
    result = cli("fit", *args, f"--data.num_workers={workers}")
    assert result.returncode == 1
    line = last_line(result)
    assert line.startswith("error: train token ") and " is id 4500, outside the 4096-id " in line
    assert line.endswith(
        f"the token files are damaged; delete {tmp_path / 'data'} and prepare again"
    )


def test_uint32_tokens_read_as_uint16_are_refused(tmp_path, cli, args):
    assert cli("fit", *args, "--trainer.max_steps=1").returncode == 0
    shard = tmp_path / "data/train_000000.bin"
    ids = np.fromfile(shard, dtype=np.uint16)
    ids.astype(np.uint32).tofile(shard)  # the same ids, written 4 bytes each
    result = cli("fit", *args)
    assert result.returncode == 1
    assert last_line(result) == (  # prepare_data's check of a complete directory sees it first
        f"error: {shard} is missing or has the wrong size for meta.json: "
        f"delete {tmp_path / 'data'} and prepare again"
    )


def test_corrupt_meta_json_is_named(tmp_path, cli, args):
    assert cli("fit", *args, "--trainer.max_steps=1").returncode == 0
    meta = tmp_path / "data/meta.json"
    meta.write_text(meta.read_text()[:40])
    result = cli("fit", *args)
    assert result.returncode == 1
    assert last_line(result).startswith(f"error: {meta}: unreadable (")
    assert last_line(result).endswith(f"delete {tmp_path / 'data'} and prepare again")


def test_block_size_beyond_the_position_table_is_named(tmp_path, cli, args):
    """Fine-tuning imported weights (a 32-position table) at a longer context."""
    save_weights_only(tmp_path / "w.ckpt", d_model=32, block_size=32)
    result = cli("fit", *args, "--data.block_size=64", f"--ckpt_path={tmp_path / 'w.ckpt'}")
    assert result.returncode == 1
    assert last_line(result) == (
        f"error: checkpoint {tmp_path / 'w.ckpt'} holds another architecture: "
        "position.wpe.weight has shape (32, 32) in the checkpoint, (64, 32) in the model"
    )


def test_full_disk_during_a_checkpoint_keeps_the_previous_one(tmp_path, cli, args, monkeypatch):
    assert cli("fit", *args, "--checkpoint.every_n_train_steps=2").returncode == 0
    last = tmp_path / "checkpoints/tiny/version_0/checkpoints/last.ckpt"
    before = last.read_bytes()
    save = torch.save

    def no_space_halfway(obj, file, *a, **kw):  # the disk fills up during the write
        file.write(b"half a checkpoint")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", no_space_halfway)
    result = cli("fit", *args, "--trainer.max_steps=6", "--ckpt_path=last")
    monkeypatch.setattr(torch, "save", save)
    assert result.returncode == 1
    line = last_line(result)
    assert line.startswith("error: checkpoint checkpoints/tiny/version_0/checkpoints/")
    assert line.endswith(".ckpt: No space left on device")  # the checkpoint's name, no tmp file
    assert last.read_bytes() == before  # the last good checkpoint, untouched
    assert not [p for p in last.parent.iterdir() if p.name.endswith(".tmp")]
    assert torch.load(last, map_location="cpu", weights_only=True)["global_step"] == 4


def test_read_only_run_directory_is_named(tmp_path, cli, args, monkeypatch):
    import os

    real_makedirs = os.makedirs

    def read_only(path, *a, **kw):  # root ignores chmod: fake a read-only filesystem
        if "checkpoints" in str(path):
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real_makedirs(path, *a, **kw)

    monkeypatch.setattr(os, "makedirs", read_only)
    result = cli("fit", *args)
    assert result.returncode == 1
    line = last_line(result)
    assert line == f"error: {tmp_path / 'checkpoints/tiny'}: Read-only file system"


def test_checkpointing_or_logging_switched_off_runs(tmp_path, cli, args):
    no_ckpt = cli("fit", *args, "--trainer.enable_checkpointing=false")
    assert no_ckpt.returncode == 0, no_ckpt.stderr
    assert not list(tmp_path.glob("checkpoints/tiny/version_0/checkpoints/*"))
    no_logger = cli("fit", *args, "--trainer.logger=false")
    assert no_logger.returncode == 0, no_logger.stderr
    again = cli("fit", *args, "--trainer.logger=false")  # would overwrite the first's config
    assert again.returncode == 1
    assert last_line(again) == (
        "error: checkpoints/config.yaml exists from an earlier run: keep a logger (each run "
        "gets its own folder) or set trainer.default_root_dir"
    )


def test_lightning_misconfiguration_is_one_line(cli, args):
    result = cli("fit", *args, "--trainer.gradient_clip_algorithm=foo")
    assert result.returncode == 1, result.stderr
    assert last_line(result) == (
        "error: `gradient_clip_algorithm` foo is invalid. Allowed algorithms: ['value', 'norm']."
    )


def test_a_monitor_of_a_training_metric_survives_the_validation_before_training(cli, args):
    result = cli("fit", *args, "--checkpoint.monitor=train/loss", "--checkpoint.mode=min")
    assert result.returncode == 0, result.stderr[-2000:]


@pytest.mark.parametrize(
    ("arg", "message"),
    [
        ("--preemption.signals=[SIGFOO]", "error: preemption.signals: unknown signal 'SIGFOO'"),
        ("--checkpoint.keep_last=0", "error: checkpoint.keep_last must be at least 1, got 0"),
        (
            "--checkpoint.monitor=val/los",
            "error: checkpoint.monitor 'val/los' is not a metric validation logs (val/loss, "
            "val/ppl, val/bpb): use one of them",
        ),
        (
            "--checkpoint.monitor=train/los",
            "error: checkpoint.monitor 'train/los' is not a metric this run logs (lr-AdamW/pg1, "
            "lr-AdamW/pg2, lr-AdamW/pg3, train/grad_norm, train/loss, train/tokens, "
            "train/tokens_per_sec, val/bpb, val/loss, val/ppl): use one of them",
        ),
    ],
)
def test_bad_callback_options_are_one_line(tmp_path, cli, args, arg, message):
    result = cli("fit", *args, arg)
    assert result.returncode == 1 and last_line(result) == message
    if arg.startswith("--checkpoint.monitor=val/"):  # refused before training began
        assert not (tmp_path / "checkpoints").exists()


@pytest.mark.parametrize(
    ("options", "line"),
    [
        (["--data.batch_size=0"], "data.batch_size must be at least 1, got 0"),
        (["--data.num_workers=-1"], "data.num_workers must be at least 0, got -1"),
        (["--model.gpt.init_args.n_head=3"], "model.gpt d_model 32 does not divide by n_head 3"),
        (
            ["--model.gpt.init_args.attention.init_args.n_kv_head=3"],
            "model.gpt attention n_kv_head 3 does not divide n_head 2",
        ),
        (
            ["--model.gpt.init_args.n_layer=0"],
            "model.gpt.init_args.n_layer must be at least 1, got 0",
        ),
        (
            ["--model.gpt.init_args.d_model=0"],
            "model.gpt.init_args.d_model must be at least 1, got 0",
        ),
        (
            ["--model.gpt.init_args.vocab_multiple=0"],
            "model.gpt.init_args.vocab_multiple must be at least 1, got 0",
        ),
        (
            ["--trainer.accumulate_grad_batches=0"],
            "trainer.accumulate_grad_batches must be at least 1, got 0",
        ),
        (
            ["--trainer.gradient_clip_val=-1"],
            "trainer.gradient_clip_val must be at least 0, got -1",
        ),
        (
            ["--model.optimizer.init_args.lr=-1"],
            "model.optimizer.init_args.lr must be at least 0, got -1.0",
        ),
        (
            ["--model.optimizer.init_args.weight_decay=-1"],
            "model.optimizer.init_args.weight_decay must be at least 0, got -1.0",
        ),
        (
            ["--model.lr_scheduler.init_args.warmup_steps=-5"],
            "model.lr_scheduler.init_args.warmup_steps must be at least 0, got -5",
        ),
        (
            ["--model.lr_scheduler.init_args.min_lr=1.0"],
            "model.lr_scheduler.init_args.min_lr 1.0 is above the optimizer's lr 0.003: the "
            "schedule would raise the rate as it decays",
        ),
        (
            ["--model.optimizer.init_args.lr=.nan"],
            "model.optimizer.init_args.lr must be a finite number, got nan",
        ),
        (
            ["--trainer.gradient_clip_val=.nan"],
            "trainer.gradient_clip_val must be a finite number, got nan",
        ),
        (
            ["--model.max_consecutive_skips=-1"],
            "model.max_consecutive_skips must be at least 0, got -1",
        ),
        (
            ["--model.lr_scheduler.init_args.min_lr=.inf"],
            "model.lr_scheduler.init_args.min_lr must be a finite number, got inf",
        ),
        (
            ["--model.optimizer.init_args.betas=[0.9, 1.5]"],
            "model.optimizer.init_args.betas[1] must be in [0.0, 1.0), got 1.5",
        ),
        (
            ["--model.optimizer.init_args.eps=0"],
            "model.optimizer.init_args.eps must be above 0, got 0.0",
        ),
        (
            [
                "--model.optimizer=lit_gpt_scratch.train.optimizers.Muon",
                "--model.optimizer.init_args.ns_steps=-1",
            ],
            "model.optimizer.init_args.ns_steps must be at least 1, got -1",
        ),
        (["--trainer.val_check_interval=0"], "trainer.val_check_interval must be above 0, got 0"),
        (["--trainer.log_every_n_steps=0"], "trainer.log_every_n_steps must be at least 1, got 0"),
        (
            ["--trainer.max_steps=0"],
            "trainer.max_steps must be -1 (no limit) or at least 1, got 0",
        ),
        (["--throughput.every_n_steps=0"], "throughput.every_n_steps must be at least 1, got 0"),
        (["--throughput.peak_flops=-1"], "throughput.peak_flops must be above 0, got -1.0"),
        (["--samples.max_new_tokens=-1"], "samples.max_new_tokens must be at least 1, got -1"),
        (["--samples.temperature=.nan"], "samples.temperature must be a finite number, got nan"),
        (
            ["--trainer.max_steps=-1", "--trainer.max_time=00:00:00:20"],
            "model.lr_scheduler needs a length: the run sets no trainer.max_steps, so set "
            "trainer.max_steps or model.lr_scheduler.init_args.max_steps",
        ),
    ],
    ids=lambda value: value[0].split("=")[0].lstrip("-") if isinstance(value, list) else "",
)
def test_an_option_that_cannot_train_is_one_line_naming_it(tmp_path, cli, args, options, line):
    """Each of these gave a traceback, or (n_layer 0, d_model 0, a negative clip: gradient
    ascent, warmup -5, min_lr above lr, NaN rates, ns_steps -1) trained and exited 0."""
    result = cli("fit", *args, *options)
    assert result.returncode == 1
    assert last_line(result) == f"error: {line}"
    assert not (tmp_path / "checkpoints").exists()  # no empty run folder left behind


@pytest.mark.parametrize("name", ["../outside", "a/b", ".."])
def test_a_run_name_that_climbs_out_of_the_runs_folder_is_refused(tmp_path, cli, args, name):
    result = cli("fit", *args, f"--trainer.logger.init_args.name={name}")
    assert result.returncode == 1
    assert last_line(result) == (
        f"error: trainer.logger.init_args.name {name!r} is not a plain folder name: runs land "
        "in checkpoints/<name>/, so leave out '/' and '..'"
    )
    assert not (tmp_path / "outside").exists()


@pytest.mark.parametrize("subcommand", ["fit", "prepare", "generate"])
def test_a_config_that_is_not_utf8_text_is_named(tmp_path, cli, subcommand):
    """Before: jsonargparse's UnicodeDecodeError, 74 lines of traceback."""
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(b"trainer:\n  max_steps: \xff\xfe\n")
    result = cli(subcommand, "--config", str(bad))
    assert result.returncode == 1
    assert last_line(result) == (
        f"error: config {bad} is not UTF-8 text (byte 22: invalid start byte): save it as UTF-8"
    )


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "is empty: give it sections such as trainer: or data:"),
        ("# only a comment\n", "is empty: give it sections such as trainer: or data:"),
        ("- trainer\n- data\n",
         "holds a list, not a mapping of sections (trainer:, model:, data: ...)"),
        ("data:\n\tbatch_size: 2\n",
         "is not valid YAML: found character that cannot start any token at line 2, column 1"),
    ],
)  # fmt: skip
@pytest.mark.parametrize("subcommand", ["fit", "prepare", "generate"])
def test_a_config_that_is_not_a_mapping_of_sections_is_named(
    tmp_path, cli, subcommand, text, problem
):
    """Before: "Unexpected config: (see --help)" for an empty file, naming neither the file nor
    the problem, and a parse error at a line of "<unicode string>"."""
    config = tmp_path / "config.yaml"
    config.write_text(text)
    result = cli(subcommand, "--config", str(config))
    assert result.returncode == 1
    assert last_line(result) == f"error: config {config} {problem}"


@pytest.mark.parametrize("subcommand", ["fit", "prepare"])
def test_a_key_written_twice_in_a_config_is_refused_naming_both_lines(
    tmp_path, cli, args, subcommand
):
    """PyYAML keeps the later of two equal keys without a word."""
    config = tmp_path / "twice.yaml"
    config.write_text("data:\n  batch_size: 4\n  val_windows: 8\n  batch_size: 2\n")
    result = cli(subcommand, *args, f"--config={config}")
    assert result.returncode == 1
    assert last_line(result) == (  # jsonargparse names the file relative to the working folder
        "error: Problems parsing config: twice.yaml: key 'batch_size' is set twice, on lines 2 "
        "and 4: keep one (see --help)"
    )
    assert not (tmp_path / "data").exists() and not (tmp_path / "checkpoints").exists()


@pytest.mark.parametrize(
    ("name", "content", "problem"),
    [
        ("held out", "text", "the name must be letters, digits, _ and - only (it is part of the "
         "metric names val/<name>/loss and val/<name>/bpb)"),
        ("py/code", "text", "the name must be letters, digits, _ and - only (it is part of the "
         "metric names val/<name>/loss and val/<name>/bpb)"),
        ("python", None, "{path} does not exist or is not a file"),
        ("python", b"caf\xe9\n", "{path} is not UTF-8 text (byte 3)"),
        ("python", b"", "{path} holds no text"),
    ],
)  # fmt: skip
def test_a_bad_named_val_set_is_one_line_before_anything_is_written(
    tmp_path, cli, args, name, content, problem
):
    path = tmp_path / "held_out.txt"
    if content is not None:
        path.write_bytes(content.encode() if isinstance(content, str) else content)
    config = tmp_path / "val_sets.yaml"
    config.write_text(f"data:\n  val_sets:\n    {name}: {path}\n")
    result = cli("fit", *args, f"--config={config}")
    assert result.returncode == 1
    assert last_line(result) == f"error: data.val_sets.{name}: {problem.format(path=path)}"
    assert not (tmp_path / "data").exists() and not (tmp_path / "checkpoints").exists()


@pytest.mark.parametrize("where", ["command line", "short key", "config"])
def test_a_value_for_the_linked_model_block_size_is_refused(tmp_path, cli, args, where):
    """jsonargparse overwrites a linked key with its source's value without a word: the
    model would get data.block_size, not the context length the config names."""
    extra = {
        "command line": ["--model.gpt.init_args.block_size=16"],
        "short key": ["--model.gpt.block_size=16"],
        "config": [f"--config={tmp_path / 'block.yaml'}"],
    }[where]
    (tmp_path / "block.yaml").write_text("model:\n  gpt:\n    init_args:\n      block_size: 16\n")
    result = cli("fit", *args, *extra)
    given = f"in config {tmp_path / 'block.yaml'}" if where == "config" else "on the command line"
    assert result.returncode == 1
    assert last_line(result) == (
        f"error: model.gpt.init_args.block_size (given {given}) is set from data.block_size, "
        "to which it is linked: set data.block_size instead"
    )
    assert not (tmp_path / "data").exists() and not (tmp_path / "checkpoints").exists()
