"""Checkpoints are never half-written, the last ones are kept, a damaged one is named and
skipped, and a checkpoint of another architecture is refused naming the parameter."""

from __future__ import annotations

import signal
import zipfile

import pytest
import torch
from conftest import LOREM, save_weights_only, small_run_args, write_text_corpus
from test_resume import fit, signal_at


def run_args(tmp_path, **overrides) -> list[str]:
    corpus = write_text_corpus(tmp_path / "corpus", LOREM)
    base = {
        "trainer.max_steps": "8",
        "checkpoint.every_n_train_steps": "2",
        "trainer.val_check_interval": "2",
        "samples.every_n_steps": "0",
    }
    return small_run_args(corpus, tmp_path / "data", **{**base, **overrides})


def step_of(path) -> int:
    return torch.load(path, map_location="cpu", weights_only=True)["global_step"]


def ckpt_dir(tmp_path, version: int = 0):
    return tmp_path / f"checkpoints/tiny/version_{version}/checkpoints"


@pytest.mark.parametrize("keep", [2, 3])
def test_the_last_checkpoints_are_kept(tmp_path, cli, keep):
    result = cli("fit", *run_args(tmp_path, **{"checkpoint.keep_last": str(keep)}))
    assert result.returncode == 0, result.stderr
    folder = ckpt_dir(tmp_path)
    names = ["last.ckpt", "last-1.ckpt", "last-2.ckpt"][:keep]
    assert sorted(p.name for p in folder.glob("last*")) == sorted(names)
    assert [step_of(folder / n) for n in names] == [8, 6, 4][:keep]
    assert not list(folder.glob("*.tmp"))


def flip_a_bit_in_the_largest_record(path) -> None:
    """One bit of the file's largest tensor (a weight or an optimizer moment) flipped: the
    zip stays valid and torch.load reads it, only the record's CRC-32 tells."""
    with zipfile.ZipFile(path) as archive:
        record = max(archive.infolist(), key=lambda info: info.file_size)
    data = bytearray(path.read_bytes())
    data[record.header_offset + 30 + len(record.filename) + record.file_size // 2] ^= 0x04
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    ("damage", "message"),
    [("truncated", "is unreadable or truncated"), ("a bit flipped", "fails its checksum")],
)
def test_damaged_last_is_named_set_aside_and_the_one_before_resumed(
    tmp_path, cli, caplog, damage, message
):
    """A flipped bit was resumed from without a word: the optimizer state or the weights
    slightly wrong from then on."""
    args = run_args(tmp_path)
    assert cli("fit", *args).returncode == 0
    folder = ckpt_dir(tmp_path)
    last = folder / "last.ckpt"
    if damage == "truncated":
        last.write_bytes(last.read_bytes()[: last.stat().st_size // 3])
    else:
        flip_a_bit_in_the_largest_record(last)
        torch.load(last, map_location="cpu", weights_only=True)  # loads without a word
    result = cli("fit", *args, "--trainer.max_steps=10", "--ckpt_path=last")
    assert result.returncode == 0, result.stderr
    relative = "checkpoints/tiny/version_0/checkpoints"  # as the config's save_dir names it
    assert f"checkpoint {relative}/last.ckpt" in caplog.text and message in caplog.text
    assert f"resuming from the older {relative}/last-1.ckpt instead" in caplog.text
    assert (folder / "last.ckpt.unreadable").is_file()  # kept for a look, out of the rotation
    assert step_of(folder / "last.ckpt") == 10 and step_of(folder / "last-1.ckpt") == 8


def test_no_readable_last_checkpoint_is_an_error(tmp_path, cli):
    args = run_args(tmp_path)
    assert cli("fit", *args).returncode == 0
    for path in ckpt_dir(tmp_path).glob("last*.ckpt"):
        path.write_bytes(b"not a checkpoint")
    result = cli("fit", *args, "--ckpt_path=last")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        "error: --ckpt_path last: no readable checkpoint in checkpoints/tiny/version_0/checkpoints"
    )


@pytest.mark.parametrize("command", ["fit", "validate"])
def test_explicit_damaged_checkpoint_is_one_line_naming_it(tmp_path, cli, command):
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"PK\x03\x04 truncated zip")
    result = cli(command, *run_args(tmp_path), f"--ckpt_path={bad}")
    assert result.returncode == 1
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith(f"error: checkpoint {bad} is unreadable or truncated")
    missing = cli(command, *run_args(tmp_path), f"--ckpt_path={tmp_path / 'nope.ckpt'}")
    assert missing.stderr.strip().splitlines()[-1] == (
        f"error: checkpoint {tmp_path / 'nope.ckpt'} does not exist"
    )


@pytest.mark.parametrize("command", ["fit", "validate"])
def test_checkpoint_of_another_model_names_the_setting(tmp_path, cli, command):
    args = run_args(tmp_path, **{"trainer.max_steps": "2"})
    assert cli("fit", *args).returncode == 0
    last = ckpt_dir(tmp_path) / "last.ckpt"
    result = cli(command, *args, "--model.gpt.init_args.n_head=4", f"--ckpt_path={last}")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: checkpoint {last} holds another model than the config: "
        "model.gpt.init_args.n_head is 2 in the checkpoint, 4 in the config"
    )
    rope = "--model.gpt.init_args.position=lit_gpt_scratch.model.position.RotaryPosition"
    result = cli(command, *args, rope, f"--ckpt_path={last}")
    assert (
        result.stderr.strip()
        .splitlines()[-1]
        .endswith(
            "model.gpt.init_args.position.class_path is "
            "'lit_gpt_scratch.model.position.LearnedPosition' in the checkpoint, "
            "'lit_gpt_scratch.model.position.RotaryPosition' in the config"
        )
    )


def test_weights_of_another_shape_name_the_tensor(tmp_path, cli):
    """A weights-only checkpoint (import_hf's) starts a fine-tune of the configured model:
    its tensors must fit it, and the first that does not is named."""
    args = run_args(tmp_path, **{"trainer.max_steps": "1"})
    save_weights_only(tmp_path / "w.ckpt", d_model=64, block_size=32)
    result = cli("fit", *args, f"--ckpt_path={tmp_path / 'w.ckpt'}")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: checkpoint {tmp_path / 'w.ckpt'} holds another architecture: wte.weight has "
        "shape (4096, 64) in the checkpoint, (4096, 32) in the model"
    )


@pytest.mark.slow
def test_kill_during_a_save_leaves_the_previous_checkpoint_whole(tmp_path):
    args = run_args(tmp_path)
    kill = tmp_path / "kill.yaml"
    kill.write_text(
        "trainer:\n  callbacks:\n    - class_path: kill_switch.KillDuringSaveAtStep\n"
        "      init_args: {step: 6}\n"
    )
    killed = fit(tmp_path, args, f"--config={kill}")
    assert killed.returncode == -signal.SIGKILL
    folder = ckpt_dir(tmp_path)
    assert step_of(folder / "last.ckpt") == 4  # the save at step 6 never replaced it
    resumed = fit(tmp_path, args, "--ckpt_path=last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert step_of(folder / "last.ckpt") == 8


@pytest.mark.slow
def test_signal_save_rotates_too(tmp_path):
    args = run_args(tmp_path)
    stopped = fit(tmp_path, args, signal_at(tmp_path, 5, "SIGTERM"))
    assert stopped.returncode == 128 + signal.SIGTERM
    folder = ckpt_dir(tmp_path)
    assert (step_of(folder / "last.ckpt"), step_of(folder / "last-1.ckpt")) == (5, 4)


def test_checkpoints_move_between_fp32_and_bf16_runs(tmp_path, cli):
    args = run_args(tmp_path, **{"trainer.max_steps": "2"})
    assert cli("fit", *args).returncode == 0
    for precision, steps in (("bf16-mixed", 4), ("32-true", 6)):
        more = cli(
            "fit", *args, f"--trainer.precision={precision}", f"--trainer.max_steps={steps}",
            "--ckpt_path=last",
        )  # fmt: skip
        assert more.returncode == 0, more.stderr
        ckpt = torch.load(ckpt_dir(tmp_path) / "last.ckpt", map_location="cpu", weights_only=True)
        assert ckpt["global_step"] == steps
        assert {v.dtype for v in ckpt["state_dict"].values()} == {torch.float32}
        assert {v.device.type for v in ckpt["state_dict"].values()} == {"cpu"}


def test_a_compiled_model_saves_plain_keys():
    from lit_gpt_scratch.model.gpt import GPT
    from lit_gpt_scratch.train.module import LitGPT

    module = LitGPT(GPT(vocab_size=64, block_size=8, n_layer=1, n_head=2, d_model=16), compile=True)
    module.configure_model()
    assert module._compiled
    assert not [k for k in module.state_dict() if "_orig_mod" in k]


def test_resume_with_another_batch_size_is_refused_unless_approximate(tmp_path, cli):
    args = run_args(tmp_path, **{"trainer.max_steps": "2"})
    assert cli("fit", *args).returncode == 0
    # 2 steps x 4 windows = 8 windows consumed: batches of 3 cannot continue at window 9
    more = [*args, "--trainer.max_steps=4", "--data.batch_size=3", "--ckpt_path=last"]
    refused = cli("fit", *more)
    assert refused.returncode == 1
    line = refused.stderr.strip().splitlines()[-1]
    assert line.startswith("error: ") and "batch_size 4" in line
    assert "data.allow_approximate_resume" in line
    accepted = cli("fit", *more, "--data.allow_approximate_resume=true")
    assert accepted.returncode == 0, accepted.stderr
    assert step_of(ckpt_dir(tmp_path) / "last.ckpt") == 4


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_checkpoints_move_between_cpu_and_gpu(tmp_path, cli):
    args = run_args(tmp_path, **{"trainer.max_steps": "2", "trainer.accelerator": "cpu"})
    assert cli("fit", *args).returncode == 0
    for accelerator, precision, steps in (("gpu", "bf16-mixed", 4), ("cpu", "32-true", 6)):
        more = cli(
            "fit", *args, f"--trainer.accelerator={accelerator}",
            f"--trainer.precision={precision}", f"--trainer.max_steps={steps}", "--ckpt_path=last",
        )  # fmt: skip
        assert more.returncode == 0, more.stderr
        assert step_of(ckpt_dir(tmp_path) / "last.ckpt") == steps


def test_memory_options_may_change_on_resume(tmp_path, cli):
    args = run_args(tmp_path, **{"trainer.max_steps": "2"})
    assert cli("fit", *args).returncode == 0
    lean = ["--model.gpt.init_args.loss_chunk_size=16",
            "--model.gpt.init_args.activation_checkpointing=true"]  # fmt: skip
    more = cli("fit", *args, *lean, "--trainer.max_steps=4", "--ckpt_path=last")
    assert more.returncode == 0, more.stderr
    assert step_of(ckpt_dir(tmp_path) / "last.ckpt") == 4
