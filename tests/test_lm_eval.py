"""lm-evaluation-harness on the project's GPT: the adapter, its parity with ``evaluate`` and
with Hugging Face transformers on the exported model, and a whole harness run offline."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

lm_eval = pytest.importorskip("lm_eval")
pytest.importorskip("transformers")

from lm_eval.api.instance import Instance  # noqa: E402

from lit_gpt_scratch.cli.main import main  # noqa: E402
from lit_gpt_scratch.evaluate.lm_eval_model import LitGPTScratchLM  # noqa: E402
from lit_gpt_scratch.evaluate.metrics import pick  # noqa: E402
from lit_gpt_scratch.evaluate.runner import encode_task, item_scores  # noqa: E402
from lit_gpt_scratch.evaluate.scoring import gpt_forward  # noqa: E402
from lit_gpt_scratch.evaluate.tasks import load_task  # noqa: E402
from lit_gpt_scratch.model.build import build_gpt  # noqa: E402
from lit_gpt_scratch.tokenizer.encodings import load_tokenizer  # noqa: E402
from lit_gpt_scratch.train.checkpoint_files import load_gpt, save_gpt  # noqa: E402

TASKS = Path(__file__).parent / "data" / "tasks"
PARITY_TASKS = ("hellaswag", "arc_easy", "piqa", "winogrande", "lambada", "python_cloze")
MODERN = {
    "attention": {
        "class_path": "lit_gpt_scratch.model.attention.CausalSelfAttention",
        "init_args": {"n_kv_head": 1, "qk_norm": True},
    },
    "mlp": {"class_path": "lit_gpt_scratch.model.mlp.SwiGLU"},
    "norm": {"class_path": "lit_gpt_scratch.model.norm.RMSNorm"},
    "position": {"class_path": "lit_gpt_scratch.model.position.RotaryPosition"},
    "tie_embeddings": False,
}


def gpt2_checkpoint(path: Path, **extra) -> Path:
    """A small random GPT on GPT-2's vocabulary, weights spread enough that choices differ."""
    spec = {
        "class_path": "lit_gpt_scratch.model.gpt.GPT",
        "init_args": {"vocab_size": 50257, "block_size": 64, "n_layer": 2, "n_head": 2,
                      "d_model": 32, **extra},
    }  # fmt: skip
    torch.manual_seed(0)
    gpt = build_gpt(spec)
    with torch.no_grad():
        for p in gpt.parameters():
            p.normal_(0.0, 0.3 if p.dim() > 1 else 1.0)
    save_gpt(path, gpt, spec, "gpt2")
    return path


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return gpt2_checkpoint(tmp_path_factory.mktemp("lm_eval") / "gpt2-layout.ckpt")


def requests_of(task) -> list[tuple[int, tuple[str, str]]]:
    return [(i, request) for i, item in enumerate(task.items) for request in item.requests]


def instances(requests) -> list[Instance]:
    return [
        Instance("loglikelihood", {}, request, n, ("parity", i, 1))
        for n, (i, request) in enumerate(requests)
    ]


def evaluate_loglikelihoods(ckpt: Path, task) -> list[float]:
    loaded = load_gpt(ckpt)
    encoded = encode_task(task, load_tokenizer("gpt2"), loaded.gpt.block_size)
    scores = item_scores(gpt_forward(loaded.gpt), list(encoded.items), "cpu", batch_size=2)
    return [s.loglikelihood for item in scores for s in item]


def decisions(task, lls: list[float]) -> list[int]:
    """Each item's pick by acc and by acc_norm, from the flat per-request log-likelihoods."""
    picks, start = [], 0
    for item in task.items:
        mine = lls[start : start + len(item.requests)]
        start += len(item.requests)
        picks.append(pick(mine))
        picks.append(pick([ll / n for ll, n in zip(mine, item.lengths, strict=True)]))
    return picks


@pytest.mark.parametrize("name", PARITY_TASKS)
def test_evaluate_the_adapter_and_transformers_agree_on_every_loglikelihood(
    checkpoint, tmp_path, name
):
    from lm_eval.models.huggingface import HFLM

    task = load_task(name, str(TASKS / f"{name}.jsonl"))
    requests = requests_of(task)
    ours = evaluate_loglikelihoods(checkpoint, task)

    adapter = LitGPTScratchLM(ckpt_path=str(checkpoint), device="cpu", batch_size=3)
    through_adapter = [ll for ll, _ in adapter.loglikelihood(instances(requests))]

    export_dir = tmp_path / "hf"
    assert main(["export", f"--ckpt_path={checkpoint}", f"--out_dir={export_dir}"]) == 0
    hf = HFLM(pretrained=str(export_dir), device="cpu", batch_size=2, dtype="float32")
    through_transformers = [ll for ll, _ in hf.loglikelihood(instances(requests))]

    assert len(ours) == len(requests) > 0
    assert max(abs(a - b) for a, b in zip(ours, through_adapter, strict=True)) < 1e-4
    assert max(abs(a - b) for a, b in zip(ours, through_transformers, strict=True)) < 1e-4
    assert decisions(task, ours) == decisions(task, through_transformers)
    assert decisions(task, ours) == decisions(task, through_adapter)


def test_the_adapter_runs_a_modern_recipe_checkpoint(tmp_path):
    ckpt = gpt2_checkpoint(tmp_path / "modern.ckpt", **MODERN)
    task = load_task("hellaswag", str(TASKS / "hellaswag.jsonl"))
    requests = requests_of(task)
    adapter = LitGPTScratchLM(ckpt_path=str(ckpt), device="cpu")
    through_adapter = [ll for ll, _ in adapter.loglikelihood(instances(requests))]
    ours = evaluate_loglikelihoods(ckpt, task)
    assert max(abs(a - b) for a, b in zip(ours, through_adapter, strict=True)) < 1e-4


def test_rolling_loglikelihood_is_the_bits_per_byte_of_evaluate_text(checkpoint, tmp_path):
    text = (TASKS / "lambada.jsonl").read_text()
    document = tmp_path / "doc.txt"
    document.write_text(text)
    adapter = LitGPTScratchLM(ckpt_path=str(checkpoint), device="cpu")
    [total] = adapter.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, (text,), 0)])
    out = tmp_path / "r.json"
    argv = ["evaluate", f"--ckpt_path={checkpoint}", f"--text={document}", f"--out={out}"]
    assert main(argv) == 0
    bpb = json.loads(out.read_text())["text"]["bpb"]
    assert abs(-total / torch.log(torch.tensor(2.0)).item() / len(text.encode()) - bpb) < 1e-6


def test_generate_until_stops_at_the_first_stop_string(checkpoint):
    adapter = LitGPTScratchLM(ckpt_path=str(checkpoint), device="cpu")
    args = ("def main():", {"until": ["\n"], "max_gen_toks": 20, "do_sample": False})
    free_args = ("def main():", {"max_gen_toks": 20})
    [free] = adapter.generate_until([Instance("generate_until", {}, free_args, 0)])
    [cut] = adapter.generate_until([Instance("generate_until", {}, args, 0)])
    assert "\n" not in cut
    loaded = load_gpt(checkpoint)
    ids = load_tokenizer("gpt2").encode_ordinary("def main():").tolist()
    from lit_gpt_scratch.model.generate import generate

    [greedy] = generate(loaded.gpt, [ids], 20, temperature=0.0, stop_id=50256)
    expected = load_tokenizer("gpt2").decode(greedy)
    assert free == expected
    assert cut == expected.split("\n")[0]


def test_a_whole_harness_run_of_a_local_task_through_the_subcommand(checkpoint, tmp_path):
    """``lm_eval --model lit_gpt_scratch`` end to end, offline: a task of the harness's own
    YAML form, reading this project's multiple-choice file, and its results file."""
    task_dir = tmp_path / "harness_tasks"
    task_dir.mkdir()
    data = TASKS / "python_choice.jsonl"
    (task_dir / "python_choice.yaml").write_text(
        "task: project_python_choice\n"
        "dataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    validation: {data}\n"
        "output_type: multiple_choice\n"
        "validation_split: validation\n"
        'doc_to_text: "{{context}}"\n'
        "doc_to_choice: choices\n"
        "doc_to_target: answer\n"
        "metric_list:\n  - metric: acc\n  - metric: acc_norm\n"
    )
    out = tmp_path / "harness_out"
    code = main([
        "lm_eval", "--model", "lit_gpt_scratch",
        "--model_args", f"ckpt_path={checkpoint}", "--device", "cpu",
        "--tasks", "project_python_choice", "--include_path", str(task_dir),
        "--output_path", str(out),
    ])  # fmt: skip
    assert code == 0
    [results_file] = out.rglob("results*.json")
    harness = json.loads(results_file.read_text())["results"]["project_python_choice"]

    ours_file = tmp_path / "ours.json"
    argv = ["evaluate", f"--ckpt_path={checkpoint}", f"--tasks=python_choice={data}",
            f"--out={ours_file}", "--progress=false"]  # fmt: skip
    assert main(argv) == 0
    ours = json.loads(ours_file.read_text())["tasks"]["python_choice"]
    assert harness["acc,none"] == pytest.approx(ours["acc"])
    assert harness["acc_norm,none"] == pytest.approx(ours["acc_norm"])
    assert harness["acc_stderr,none"] == pytest.approx(ours["acc_stderr"])
