"""generate, import_hf and export through the command line, and the checkpoint loader."""

from __future__ import annotations

import subprocess

import pytest
import torch

from lit_gpt_scratch.cli.main import main
from lit_gpt_scratch.errors import UserError
from lit_gpt_scratch.model.build import build_gpt
from lit_gpt_scratch.tokenizer.encodings import load_tokenizer
from lit_gpt_scratch.train.checkpoint_files import load_gpt, save_gpt

transformers = pytest.importorskip("transformers")
GPT2 = load_tokenizer("gpt2")


@pytest.fixture
def cli(capsys):
    """Run the command line in this process: (exit code, stdout, stderr) as a CompletedProcess."""

    def run(*args: str) -> subprocess.CompletedProcess:
        code = main(list(args))
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess(args, code, out, err)

    return run


def tiny_spec(**extra) -> dict:
    args = {"vocab_size": 50, "block_size": 8, "n_layer": 1, "n_head": 2, "d_model": 8}
    return {"class_path": "lit_gpt_scratch.model.gpt.GPT", "init_args": {**args, **extra}}


def one_error_line(result) -> str:
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and len(lines) == 1, result.stderr
    return lines[0]


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    """A small randomly initialised GPT-2 with the real GPT-2 vocabulary, saved to disk."""
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=2, n_head=2, n_embd=32, n_positions=64)
    model = transformers.GPT2LMHeadModel(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.5 if p.dim() > 1 else 1.0)
    path = tmp_path_factory.mktemp("hf") / "gpt2-small-random"
    model.save_pretrained(path)
    return path


def test_import_generate_export_round_trip(hf_dir, tmp_path, cli):
    ckpt = tmp_path / "imported.ckpt"
    result = cli("import_hf", f"--hf_dir={hf_dir}", f"--out={ckpt}")
    assert result.returncode == 0, result.stderr
    assert "wrote" in result.stdout and ckpt.is_file()

    theirs = transformers.GPT2LMHeadModel.from_pretrained(hf_dir).eval()
    prompt = "def fibonacci(n):"
    ids = GPT2.encode_ordinary(prompt).tolist()
    want = theirs.generate(torch.tensor([ids]), max_new_tokens=12, do_sample=False, pad_token_id=0)[
        0, len(ids) :
    ].tolist()
    if 50256 in want:
        want = want[: want.index(50256)]
    result = cli(
        "generate",
        f"--ckpt_path={ckpt}",
        f"--prompt={prompt}",
        "--max_new_tokens=12",
        "--temperature=0",
        "--device=cpu",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == GPT2.decode(want) + "\n"

    out = tmp_path / "exported"
    result = cli("export", f"--ckpt_path={ckpt}", f"--out_dir={out}")
    assert result.returncode == 0, result.stderr
    again = transformers.GPT2LMHeadModel.from_pretrained(out).eval()
    idx = torch.randint(0, 50257, (2, 16))
    with torch.no_grad():
        assert torch.allclose(again(idx).logits, theirs(idx).logits, atol=1e-4)
    tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    assert tokenizer("hello world")["input_ids"] == [31373, 995]


def test_generate_samples_are_seeded_and_batched(tmp_path, cli):
    rope = {"class_path": "lit_gpt_scratch.model.position.RotaryPosition"}
    spec = tiny_spec(vocab_size=50257, block_size=32, d_model=16, init_std=0.5, position=rope)
    save_gpt(tmp_path / "m.ckpt", build_gpt(spec), spec)
    args = [
        f"--ckpt_path={tmp_path / 'm.ckpt'}",
        "--prompt=x = 1",
        "--max_new_tokens=8",
        "--num_samples=3",
        "--seed=5",
        "--temperature=1.0",
    ]
    first, second = cli("generate", *args), cli("generate", *args)
    assert first.returncode == 0, first.stderr
    assert first.stdout == second.stdout and first.stdout.count("---------------") == 2
    assert cli("generate", *args, "--use_cache=false").stdout == first.stdout


def test_compiled_model_keys_load(tmp_path):
    spec = tiny_spec()
    gpt = build_gpt(spec)
    state = {f"gpt._orig_mod.{k}": v for k, v in gpt.state_dict().items()}
    torch.save({"state_dict": state, "hyper_parameters": {"gpt": spec}}, tmp_path / "c.ckpt")
    loaded = load_gpt(tmp_path / "c.ckpt")
    assert torch.equal(loaded.gpt.wte.weight, gpt.wte.weight) and loaded.tokenizer == "gpt2"


def test_checkpoint_errors_are_one_line(hf_dir, tmp_path, cli):
    missing = cli("generate", f"--ckpt_path={tmp_path / 'nope.ckpt'}")
    assert "checkpoint" in one_error_line(missing) and "nope.ckpt does not exist" in missing.stderr
    ckpt = tmp_path / "m.ckpt"
    assert cli("import_hf", f"--hf_dir={hf_dir}", f"--out={ckpt}").returncode == 0
    again = cli("import_hf", f"--hf_dir={hf_dir}", f"--out={ckpt}")
    assert "exists" in one_error_line(again)
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(ckpt.read_bytes()[:5000])
    broken = cli("generate", f"--ckpt_path={truncated}")
    assert "truncated.ckpt is unreadable or truncated" in one_error_line(broken)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    busy = cli("export", f"--ckpt_path={ckpt}", f"--out_dir={tmp_path / 'full'}")
    assert "exists and is not empty" in one_error_line(busy)
    assert (tmp_path / "full" / "keep.txt").read_text() == "mine"
    bad_dir = cli("import_hf", f"--hf_dir={tmp_path}", f"--out={tmp_path / 'x.ckpt'}")
    assert "no config.json" in one_error_line(bad_dir)


def test_export_names_the_blocking_component(tmp_path, cli):
    spec = tiny_spec(vocab_size=257, mlp={"class_path": "lit_gpt_scratch.model.mlp.ReluSquaredMLP"})
    save_gpt(tmp_path / "r.ckpt", build_gpt(spec), spec, "bytes")
    result = cli("export", f"--ckpt_path={tmp_path / 'r.ckpt'}", f"--out_dir={tmp_path / 'o'}")
    assert "mlp ReluSquaredMLP has no Hugging Face equivalent" in one_error_line(result)
    assert not (tmp_path / "o").exists()


def test_export_below_a_file_is_one_line(tmp_path, cli):
    """Before: a FileExistsError traceback from the folder's mkdir."""
    spec = tiny_spec(vocab_size=257)
    save_gpt(tmp_path / "m.ckpt", build_gpt(spec), spec, "bytes")
    (tmp_path / "x").write_text("mine")
    out = tmp_path / "x" / "y"
    result = cli("export", f"--ckpt_path={tmp_path / 'm.ckpt'}", f"--out_dir={out}")
    assert result.returncode == 1
    assert one_error_line(result) == f"error: --out_dir {out}: a folder above it is a file"
    assert (tmp_path / "x").read_text() == "mine"


def test_export_onto_a_file_or_a_read_only_folder_names_out_dir(tmp_path, cli, mount_tmpfs):
    """Before: an empty file was "exists and is not empty", and a read-only disk named the
    hidden temporary folder."""
    spec = tiny_spec(vocab_size=257)
    save_gpt(tmp_path / "m.ckpt", build_gpt(spec), spec, "bytes")
    (tmp_path / "f").write_text("")
    result = cli("export", f"--ckpt_path={tmp_path / 'm.ckpt'}", f"--out_dir={tmp_path / 'f'}")
    assert (
        one_error_line(result)
        == f"error: --out_dir {tmp_path / 'f'} is a file: choose a new folder"
    )
    out = mount_tmpfs(tmp_path / "ro", "1m", "ro") / "hf"
    result = cli("export", f"--ckpt_path={tmp_path / 'm.ckpt'}", f"--out_dir={out}")
    assert one_error_line(result) == f"error: --out_dir {out}: Read-only file system"


def test_save_gpt_never_overwrites(tmp_path):
    spec = tiny_spec()
    save_gpt(tmp_path / "a.ckpt", build_gpt(spec), spec)
    with pytest.raises(UserError, match="a.ckpt exists"):
        save_gpt(tmp_path / "a.ckpt", build_gpt(spec), spec)


@pytest.mark.parametrize(
    ("option", "line"),
    [
        ("--top_p=0", "--top_p must be in (0, 1], got 0.0"),
        ("--temperature=.nan", "--temperature must be a finite number, got nan"),
        ("--top_k=0", "--top_k must be at least 1, got 0"),
        ("--max_new_tokens=-1", "--max_new_tokens must be at least 1, got -1"),
        ("--device=mps", "--device 'mps': only cpu and cuda are supported"),
        ("--device=gpu0", "--device 'gpu0' is not a device: cpu, cuda, cuda:N or auto"),
        # bytes the shell's locale cannot decode reach Python as lone surrogates
        ("--prompt=\udcff\udcfe", "--prompt is not valid UTF-8 text"),
    ],
)
def test_generate_refuses_bad_sampling_options_in_one_line(tmp_path, cli, option, line):
    spec = tiny_spec(vocab_size=257)
    save_gpt(tmp_path / "m.ckpt", build_gpt(spec), spec, "bytes")
    result = cli("generate", f"--ckpt_path={tmp_path / 'm.ckpt'}", option)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == f"error: {line}"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without CUDA")
def test_generate_on_cuda_without_a_gpu_is_one_line(tmp_path, cli):
    spec = tiny_spec(vocab_size=257)
    save_gpt(tmp_path / "m.ckpt", build_gpt(spec), spec, "bytes")
    result = cli("generate", f"--ckpt_path={tmp_path / 'm.ckpt'}", "--device=cuda")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        "error: --device cuda: this machine has no CUDA GPU (use cpu or auto)"
    )


def test_text_generation_never_samples_an_id_the_tokenizer_lacks():
    """A 4,096-id model with the 257-id bytes tokenizer (a legal config): its head favours
    id 4000, which the tokenizer cannot decode. Sampling stays among the tokenizer's ids."""
    from lit_gpt_scratch.model.generate import generate, generate_text
    from lit_gpt_scratch.tokenizer.encodings import load_tokenizer

    tokenizer = load_tokenizer("bytes")
    gpt = build_gpt(tiny_spec(vocab_size=4096, block_size=32))

    def favours_4000(idx, **options):  # (B, T) -> (B, T, 4096) logits, no loss
        logits = torch.zeros(*idx.shape, 4096)
        logits[..., 4000] = 10.0
        return logits, None

    for temperature in (0.0, 1.0):
        [ids] = generate(gpt, [[97, 98]], 16, temperature=temperature, seed=0,
                         forward=favours_4000, vocab_limit=tokenizer.vocab_size)  # fmt: skip
        assert len(ids) == 16 and max(ids) < tokenizer.vocab_size
        # and the text path passes its tokenizer's size: before, KeyError on id 4000
        [text] = generate_text(gpt, tokenizer, "ab", 16, temperature=temperature, seed=0,
                               forward=favours_4000)  # fmt: skip
        assert isinstance(text, str) and text


def test_import_hf_to_an_unwritable_out_is_one_line_naming_it(hf_dir, tmp_path, cli):
    (tmp_path / "a_file").write_text("not a folder")
    out = tmp_path / "a_file" / "m.ckpt"
    line = one_error_line(cli("import_hf", f"--hf_dir={hf_dir}", f"--out={out}"))
    assert line == f"error: --out {out}: {tmp_path / 'a_file'} is a file, not a folder"
    full = tmp_path / "read-only"
    full.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,ro", "tmpfs", str(full)])
    if mounted.returncode:
        pytest.skip("cannot mount a read-only tmpfs here")
    try:
        line = one_error_line(cli("import_hf", f"--hf_dir={hf_dir}", f"--out={full / 'm.ckpt'}"))
        assert line == f"error: --out {full / 'm.ckpt'}: Read-only file system"
    finally:
        subprocess.run(["umount", str(full)], check=True)


def test_generate_and_export_refuse_nan_weights_naming_the_parameter(tmp_path, cli):
    """Before, generate crashed in sampling (probability tensor contains inf or nan) and export
    wrote the weights out."""
    spec = tiny_spec(vocab_size=320)
    gpt = build_gpt(spec)
    with torch.no_grad():
        gpt.blocks[0].mlp.c_fc.weight[0, 1] = float("inf")
    save_gpt(tmp_path / "inf.ckpt", gpt, spec, "bytes")
    expected = (
        f"error: checkpoint {tmp_path / 'inf.ckpt'}: parameter blocks.0.mlp.c_fc.weight holds "
        "NaN or infinity (the file is damaged): use an older checkpoint"
    )
    assert one_error_line(cli("generate", f"--ckpt_path={tmp_path / 'inf.ckpt'}")) == expected
    export = cli("export", f"--ckpt_path={tmp_path / 'inf.ckpt'}", f"--out_dir={tmp_path / 'hf'}")
    assert one_error_line(export) == expected
    assert not (tmp_path / "hf").exists()
