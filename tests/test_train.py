"""fit / validate / test / predict through the CLI: configs, logs, checkpoints, errors."""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path

import pytest
import torch
from conftest import LOREM, small_run_args, write_text_corpus
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lit_gpt_scratch.train.checkpoint_files import load_gpt

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))


@pytest.fixture
def run_dir(tmp_path, monkeypatch):
    """Runs land in tmp_path/checkpoints (the configs' relative save_dir)."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.stem)
def test_every_config_validates_with_print_config(config, cli):
    result = cli("fit", "--config", str(config), "--print_config")
    assert result.returncode == 0, result.stderr
    assert "class_path: lit_gpt_scratch.model.gpt.GPT" in result.stdout
    assert "block_size:" in result.stdout


OVERLAYS = sorted((ROOT / "configs" / "overlays").glob("*.yaml"))


@pytest.mark.parametrize("overlay", OVERLAYS, ids=lambda p: p.stem)
@pytest.mark.parametrize("base", ["tiny", "124m"])
def test_overlays_stack_on_configs(base, overlay, cli):
    result = cli(
        "fit",
        "--config",
        str(ROOT / f"configs/{base}.yaml"),
        "--config",
        str(overlay),
        "--print_config",
    )
    assert result.returncode == 0, result.stderr
    if overlay.stem == "rope":
        assert "class_path: lit_gpt_scratch.model.position.RotaryPosition" in result.stdout


def test_cpu_debug_overlay_runs_the_124m_config(run_dir, cli):
    corpus = write_text_corpus(run_dir / "c", LOREM * 4)
    configs = [
        "--config",
        str(ROOT / "configs/124m.yaml"),
        "--config",
        str(ROOT / "configs/overlays/cpu-debug.yaml"),
    ]
    result = cli(
        "fit",
        *configs,
        "--trainer.enable_progress_bar=false",
        f"--data.sources=[{corpus}]",
        f"--data.data_dir={run_dir / 'data'}",
        "--data.val_fraction=0.2",
    )
    assert result.returncode == 0, result.stderr
    assert (run_dir / "checkpoints" / "124m" / "version_0" / "checkpoints" / "last.ckpt").is_file()


def test_block_size_is_linked_from_data_to_model(monkeypatch):
    from lit_gpt_scratch.cli.lightning_cli import LitGPTCLI
    from lit_gpt_scratch.data.datamodule import TokenDataModule
    from lit_gpt_scratch.train.module import LitGPT

    monkeypatch.setattr("sys.argv", ["lit-gpt-scratch"])
    args = ["--config", str(ROOT / "configs/tiny.yaml"), "--data.block_size=64"]
    built = LitGPTCLI(
        LitGPT, TokenDataModule, args=args, run=False, auto_configure_optimizers=False
    )
    assert built.model.gpt.block_size == 64 and built.datamodule.hparams.block_size == 64


@pytest.mark.parametrize(
    ("arg", "message"),
    [
        ("--model.gpt.init_args.n_layr=2", "Option 'n_layr' is not accepted"),
        ("--trainer.max_step=2", "unrecognized arguments: --trainer.max_step=2"),  # no prefixes
        ("--data.batch_size=x", "Parser key \"data.batch_size\": Expected a <class 'int'>"),
    ],
)
def test_config_typo_is_one_line_naming_the_key(cli, arg, message):
    result = cli("fit", "--config", str(ROOT / "configs/tiny.yaml"), arg)
    assert result.returncode == 1
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
    assert message in result.stderr and result.stderr.rstrip().endswith("(see --help)")


@pytest.mark.skipif(torch.cuda.is_available(), reason="FSDP runs where there is a GPU")
def test_the_trainers_own_argument_checks_are_one_line(tmp_path):
    import sys

    args = ["fit", "--config", str(ROOT / "configs/tiny.yaml"), "--trainer.strategy=fsdp"]
    result = subprocess.run(
        [sys.executable, "-m", "lit_gpt_scratch", *args],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("error: The strategy `fsdp` requires a GPU accelerator")


def test_fit_logs_checkpoints_and_resumes(run_dir, cli):
    corpus = write_text_corpus(run_dir / "corpus", LOREM * 4)
    result = cli("fit", *small_run_args(corpus, run_dir / "data"))
    assert result.returncode == 0, result.stderr
    run = run_dir / "checkpoints" / "tiny" / "version_0"
    assert (run / "config.yaml").is_file()
    ckpts = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert "last.ckpt" in ckpts and any(n.startswith("step=") for n in ckpts)

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    for tag in (
        "train/loss",
        "val/loss",
        "val/ppl",
        "train/grad_norm",
        "train/tokens",
        "train/tokens_per_sec",
        "lr-AdamW/pg1",
    ):
        assert tag in scalars, tag
    assert [e.step for e in events.Scalars("val/loss")] == [0, 2, 5]  # 0: val_at_start
    assert "samples/text_summary" in events.Tags()["tensors"]

    # The checkpoint fit wrote serves generate and validate.
    loaded = load_gpt(run / "checkpoints" / "last.ckpt")
    assert loaded.gpt.block_size == 32 and loaded.tokenizer == "stdlib-4k"
    gen = cli(
        "generate",
        f"--ckpt_path={run / 'checkpoints' / 'last.ckpt'}",
        "--prompt=The",
        "--max_new_tokens=5",
        "--temperature=0",
    )
    assert gen.returncode == 0 and gen.stdout.strip()
    val = cli(
        "validate",
        *small_run_args(corpus, run_dir / "data"),
        f"--ckpt_path={run / 'checkpoints' / 'last.ckpt'}",
    )
    assert val.returncode == 0, val.stderr

    # --ckpt_path last finds that run (validate's run folder above has no checkpoint) and
    # continues it: same folder, the step count going on, the first config.yaml kept.
    first_config = (run / "config.yaml").read_text()
    more = cli("fit", *small_run_args(corpus, run_dir / "data", **{"trainer.max_steps": "9"}),
               "--ckpt_path=last")  # fmt: skip
    assert more.returncode == 0, more.stderr
    assert (run / "config.yaml").read_text() == first_config
    assert "max_steps: 9" in (run / "config-resumed-at-step-6.yaml").read_text()
    resumed = EventAccumulator(str(run), size_guidance={"scalars": 0})
    resumed.Reload()
    assert [e.step for e in resumed.Scalars("train/loss")] == list(range(9))
    assert [e.step for e in resumed.Scalars("val/loss")] == [0, 2, 5, 8]  # one step-0 point
    assert load_gpt(run / "checkpoints" / "last.ckpt").gpt is not None
    assert not any((p / "checkpoints").exists() for p in run.parent.iterdir() if p != run)


def test_resume_drops_the_logs_written_after_the_checkpoint(run_dir, cli):
    """A run that went on past its last checkpoint (then died) resumes from that checkpoint:
    TensorBoard shows each step once, the resumed values replacing the lost ones."""
    corpus = write_text_corpus(run_dir / "corpus", LOREM)
    # every validated step's file kept, step 3's among them
    options = {"trainer.max_steps": "8", "checkpoint.save_top_k": "-1"}
    args = small_run_args(corpus, run_dir / "data", **options)
    assert cli("fit", *args).returncode == 0
    run = run_dir / "checkpoints/tiny/version_0"
    ckpts = run / "checkpoints"
    step3 = next(ckpts.glob("step=3-*.ckpt"))
    (ckpts / "last.ckpt").unlink()
    step3.rename(ckpts / "last.ckpt")  # as if killed after step 8's logs, 3 being the last save
    result = cli("fit", *args, "--ckpt_path=last")
    assert result.returncode == 0, result.stderr
    events = EventAccumulator(str(run), size_guidance={"scalars": 0})
    events.Reload()
    assert [e.step for e in events.Scalars("train/loss")] == list(range(8))
    assert [e.step for e in events.Scalars("val/loss")] == [0, 2, 5]


def test_ckpt_path_last_with_no_run_starts_a_new_one(run_dir, cli, caplog):
    corpus = write_text_corpus(run_dir / "corpus", LOREM)
    result = cli("fit", *small_run_args(corpus, run_dir / "data"), "--ckpt_path=last")
    assert result.returncode == 0, result.stderr
    assert "--ckpt_path last: no checkpoint under checkpoints/tiny: a new run starts" in (
        caplog.text
    )
    assert (run_dir / "checkpoints/tiny/version_0/checkpoints/last.ckpt").is_file()


def test_model_smaller_than_the_data_vocabulary_is_refused(run_dir, cli):
    corpus = write_text_corpus(run_dir / "corpus", LOREM)
    args = small_run_args(corpus, run_dir / "data", **{"model.gpt.init_args.vocab_size": "1000"})
    result = cli("fit", *args)
    assert result.returncode == 1
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("error: ") and "4096" in line and "1000" in line


def test_imported_hf_checkpoint_starts_a_fine_tune(run_dir, cli):
    """import_hf writes a checkpoint that fit --ckpt_path accepts (weights, fresh optimizer)."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=1, n_head=2, n_embd=32, n_positions=32)
    transformers.GPT2LMHeadModel(config).save_pretrained(run_dir / "hf")
    assert (
        cli("import_hf", f"--hf_dir={run_dir / 'hf'}", f"--out={run_dir / 'gpt2.ckpt'}").returncode
        == 0
    )
    corpus = write_text_corpus(run_dir / "corpus", LOREM)
    gpt2_vocab = {"data.tokenizer": "gpt2", "model.gpt.init_args.vocab_size": "50257"}
    args = small_run_args(corpus, run_dir / "data", **gpt2_vocab)
    result = cli("fit", *args, f"--ckpt_path={run_dir / 'gpt2.ckpt'}")
    assert result.returncode == 0, result.stderr


def test_fast_dev_run(run_dir, cli):
    corpus = write_text_corpus(run_dir / "corpus", LOREM)
    result = cli("fit", *small_run_args(corpus, run_dir / "data"), "--trainer.fast_dev_run=true")
    assert result.returncode == 0, result.stderr
    meta = json.loads((run_dir / "data" / "meta.json").read_text())
    assert meta["tokenizer"] == "stdlib-4k"


def test_a_hundred_real_steps_lower_the_val_loss(run_dir, cli):
    corpus = write_text_corpus(run_dir / "corpus", LOREM * 4)
    overrides = {
        "trainer.max_steps": "100",
        "trainer.val_check_interval": "50",
        "samples.every_n_steps": "0",
        "checkpoint.every_n_train_steps": "0",
    }
    result = cli("fit", *small_run_args(corpus, run_dir / "data", **overrides))
    assert result.returncode == 0, result.stderr

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(
        str(run_dir / "checkpoints/tiny/version_0"), size_guidance={"scalars": 0}
    )
    events.Reload()
    val = [e.value for e in events.Scalars("val/loss")]
    assert len(val) == 3 and abs(val[0] - math.log(4096)) < 0.15  # untrained, at step 0
    assert val[2] < val[1] - 0.5 and val[1] < 8.0  # and far below it after 50 steps


@pytest.mark.parametrize("tokenizer", ["stdlib-4k", "bytes"])
def test_val_bpb_is_the_loss_per_byte_of_the_windows_scored(run_dir, cli, tokenizer):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from lit_gpt_scratch.data.windows import TokenStream, ValWindows, read_meta
    from lit_gpt_scratch.tokenizer.encodings import load_tokenizer

    corpus = write_text_corpus(run_dir / "corpus", LOREM)
    overrides = {
        "trainer.max_steps": "3",
        "data.tokenizer": tokenizer,
        "samples.every_n_steps": "0",
        "model.gpt.init_args.vocab_size": str(load_tokenizer(tokenizer).vocab_size),
    }
    result = cli("fit", *small_run_args(corpus, run_dir / "data", **overrides))
    assert result.returncode == 0, result.stderr
    events = EventAccumulator(str(run_dir / "checkpoints/tiny/version_0"))
    events.Reload()
    [_, loss], [_, bpb] = (events.Scalars(f"val/{m}") for m in ("loss", "bpb"))  # step 0, 3
    # The windows scored: val_windows 8 = limit_val_batches 2 x batch_size 4, all of them.
    meta = read_meta(run_dir / "data")
    stream = TokenStream(run_dir / "data", "val", meta["dtype"], meta["splits"]["val"])
    windows = ValWindows(stream, 33, 8)
    targets = torch.stack([windows[i][1:] for i in range(len(windows))])  # (8, 32)
    n_bytes = load_tokenizer(tokenizer).token_bytes()[targets.numpy()].sum()
    if tokenizer == "bytes":  # one byte a token, but end-of-text stands for none
        assert n_bytes == targets.numel() - int((targets == 256).sum())
    want = loss.value * targets.numel() / (math.log(2) * n_bytes)
    assert bpb.value == pytest.approx(want, rel=1e-5)


@pytest.mark.slow
def test_prepare_data_runs_once_under_two_ddp_processes(tmp_path):
    """Two real processes (DDP on gloo): rank 0 tokenizes, rank 1 never calls prepare."""
    import sys

    corpus = write_text_corpus(tmp_path / "corpus", LOREM)
    args = small_run_args(corpus, tmp_path / "data", **{"trainer.max_steps": "2"})
    ddp = ["--trainer.accelerator=cpu", "--trainer.devices=2", "--trainer.strategy=ddp"]
    result = subprocess.run(
        [sys.executable, "-m", "lit_gpt_scratch", "fit", *args, *ddp],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "GLOBAL_RANK: 1" in result.stderr  # the second process did run
    # A second prepare, whenever it ran, would print "prepared" again or "nothing to do".
    assert result.stderr.count("prepared ") == 1 and "nothing to do" not in result.stderr
