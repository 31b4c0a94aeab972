"""Scoring requests with a GPT, the metrics, sharding, and the ``evaluate`` command."""

from __future__ import annotations

import json
import logging
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import save_weights_only

from lit_gpt_scratch.errors import UserError
from lit_gpt_scratch.evaluate.metrics import item_sums, pick, task_metrics
from lit_gpt_scratch.evaluate.runner import encode_task, item_scores, run_tasks
from lit_gpt_scratch.evaluate.scoring import (
    Encoded,
    Score,
    encode_request,
    gpt_forward,
    rolling_windows,
    score,
)
from lit_gpt_scratch.evaluate.tasks import Item, Task, load_task
from lit_gpt_scratch.model.build import build_gpt
from lit_gpt_scratch.tokenizer.encodings import load_tokenizer

TASKS = Path(__file__).parent / "data" / "tasks"
TOK = load_tokenizer("stdlib-4k")
ALL_TASKS = "hellaswag,arc_easy,arc_challenge,piqa,winogrande,lambada,python_choice,python_cloze"


def small_gpt(block_size: int = 64, **extra):
    spec = {
        "class_path": "lit_gpt_scratch.model.gpt.GPT",
        "init_args": {"vocab_size": 4096, "block_size": block_size, "n_layer": 2, "n_head": 2,
                      "d_model": 32, **extra},
    }  # fmt: skip
    torch.manual_seed(0)
    gpt = build_gpt(spec).eval()
    with torch.no_grad():
        for p in gpt.parameters():
            p.normal_(0.0, 0.3 if p.dim() > 1 else 1.0)
    return gpt


def reference_loglikelihood(gpt, tokens: list[int], n_scored: int) -> float:
    """Log-likelihood of the last ``n_scored`` ids, from one unpadded forward pass."""
    idx = torch.tensor([tokens[:-1]])
    with torch.no_grad():
        logits = gpt(idx)[0][0]
    logprobs = F.log_softmax(logits.float(), dim=-1)
    targets = torch.tensor(tokens[1:])
    return float(logprobs[torch.arange(len(targets)), targets][-n_scored:].sum())


def test_a_request_is_tokenized_as_the_harness_does():
    request = encode_request(TOK, "def f(x): ", "return x", block_size=64)
    context = TOK.encode_ordinary("def f(x):").tolist()
    whole = TOK.encode_ordinary("def f(x): return x").tolist()
    assert list(request.tokens) == whole and request.n_scored == len(whole) - len(context)
    empty = encode_request(TOK, "", "import os", block_size=64)
    assert list(empty.tokens) == [TOK.eot_id, *TOK.encode_ordinary("import os").tolist()]


def test_a_batch_of_ragged_requests_scores_each_as_if_alone():
    gpt = small_gpt()
    requests = [
        encode_request(TOK, "def square(x):\n    return", " x * x", 64),
        encode_request(TOK, "import", " os", 64),
        encode_request(TOK, "for i in range(10):", " print(i) # a longer continuation", 64),
    ]
    batched = score(gpt_forward(gpt), requests, "cpu")
    for request, got in zip(requests, batched, strict=True):
        expected = reference_loglikelihood(gpt, list(request.tokens), request.n_scored)
        assert got.loglikelihood == pytest.approx(expected, abs=1e-5)
        alone = score(gpt_forward(gpt), [request], "cpu")[0]
        assert alone.loglikelihood == pytest.approx(got.loglikelihood, abs=1e-5)


def test_greedy_is_true_exactly_when_every_scored_id_is_the_argmax():
    gpt = small_gpt()
    prompt = TOK.encode_ordinary("class A:").tolist()
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(3):
            ids.append(int(gpt(torch.tensor([ids]))[0][0, -1].argmax()))
    greedy = Encoded(tuple(ids), 3)
    wrong = Encoded(tuple(ids[:-1] + [(ids[-1] + 1) % 4096]), 3)
    a, b = score(gpt_forward(gpt), [greedy, wrong], "cpu")
    assert a.greedy and not b.greedy


def test_a_long_context_is_cut_from_the_left_and_said_once(caplog):
    gpt = small_gpt(block_size=16)
    long_context = "x = 1\n" * 40
    task = Task("t", "choice", ("acc",), tuple(
        Item(((long_context, " y"), (long_context, " z")), 0, (1, 1), f"t line {n}")
        for n in range(3)), "t")  # fmt: skip
    with caplog.at_level(logging.WARNING):
        encoded = encode_task(task, TOK, 16)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [
        "task t: 3 of 3 items are longer than the model's block_size 16: their contexts are "
        "truncated from the left"
    ]
    request = encoded.items[0][0]
    whole = TOK.encode_ordinary(long_context + " y").tolist()
    assert request.truncated and list(request.tokens) == whole[-17:]
    got = score(gpt_forward(gpt), [request], "cpu")[0].loglikelihood
    assert got == pytest.approx(reference_loglikelihood(gpt, whole[-17:], request.n_scored))


def test_a_continuation_longer_than_the_model_reads_is_a_one_line_error():
    task = Task(
        "t",
        "cloze",
        ("acc",),
        (Item((("a", " " + "word " * 40),), 0, (1,), "t.jsonl line 4"),),
        "t",
    )
    with pytest.raises(
        UserError,
        match=r"^task t: t.jsonl line 4: the continuation alone is \d+ tokens; the model reads 16$",
    ):
        encode_task(task, TOK, 16)  # fmt: skip


@pytest.mark.parametrize("n_ids", [1, 5, 16, 17, 40, 48])
def test_rolling_windows_score_every_id_once_with_the_most_context_that_fits(n_ids):
    ids = list(range(100, 100 + n_ids))
    windows = rolling_windows(ids, eot_id=0, block_size=16)
    scored = [t for w in windows for t in w.tokens[-w.n_scored :]]
    assert scored == ids
    assert all(len(w.tokens) <= 17 for w in windows)
    assert windows[0].tokens[0] == 0  # the first id is read after <|endoftext|>
    if n_ids > 16:  # the last window reads a full context, not only its new ids
        assert len(windows[-1].tokens) == 17


def test_acc_and_acc_norm_pick_by_sum_and_by_sum_per_character():
    task = Task("t", "choice", ("acc", "acc_norm"), (), "t")
    item = Item(((" ", " a"), (" ", " bbbbbbbbbb")), 1, (1, 10), "t line 1")
    # the long choice is less likely in total, more likely per character
    sums = item_sums(task, item, [Score(-2.0, False), Score(-5.0, False)])
    assert sums[:3] == [1.0, 0.0, 1.0]
    assert pick([1.0, 3.0, 3.0]) == 1  # the first on a tie, as numpy's argmax


def test_standard_errors_are_the_harnesss_sample_standard_errors():
    outcomes = [1, 0, 0, 1, 1, 0, 1, 1]
    nlls = [0.5, 2.0, 1.5, 0.25, 3.0, 1.0, 0.75, 2.5]
    sums = [8.0, sum(outcomes), 3.0, sum(nlls), sum(x * x for x in nlls)]
    task = Task("t", "cloze", ("acc", "ppl"), (), "t")
    metrics = task_metrics(task, sums)
    p = 5 / 8
    assert metrics["acc"] == p
    assert metrics["acc_stderr"] == pytest.approx(
        torch.tensor(outcomes, dtype=torch.float64).std().item() / math.sqrt(8)
    )
    assert metrics["acc_stderr"] == pytest.approx(math.sqrt(p * (1 - p) / 7))
    mean = sum(nlls) / 8
    assert metrics["ppl"] == pytest.approx(math.exp(mean))
    sem = torch.tensor(nlls, dtype=torch.float64).std().item() / math.sqrt(8)
    assert metrics["ppl_stderr"] == pytest.approx(math.exp(mean) * sem)
    assert metrics["n"] == 8


def encoded_tasks(gpt, names=("hellaswag", "lambada", "python_choice")):
    tasks = [load_task(n, str(TASKS / f"{n}.jsonl")) for n in names]
    return [encode_task(t, TOK, gpt.block_size) for t in tasks]


def test_two_ranks_with_summed_counts_report_what_one_process_does():
    gpt = small_gpt()
    tasks = encoded_tasks(gpt)
    alone = run_tasks(gpt_forward(gpt), tasks, "cpu", batch_size=2)
    calls = {0: 0, 1: 0}
    shares = {}

    def forward_of(rank):
        def forward(idx):
            calls[rank] += 1
            return gpt(idx)[0]

        return forward

    def keep(rank):
        def reduce(sums):
            shares[rank] = sums.clone()
            return sums if rank == 1 else sums + shares[1]

        return reduce

    run_tasks(forward_of(1), tasks, "cpu", 2, rank=1, world_size=2, reduce=keep(1), lockstep=True)
    together = run_tasks(
        forward_of(0), tasks, "cpu", 2, rank=0, world_size=2, reduce=keep(0), lockstep=True
    )
    assert together.keys() == alone.keys()
    for name in alone:
        for key, value in alone[name].items():
            assert together[name][key] == pytest.approx(value, abs=1e-9), (name, key)
    assert calls[0] == calls[1]  # lockstep: a sharded model is called together on every rank


def test_scores_do_not_depend_on_the_batch_size():
    gpt = small_gpt()
    [task] = encoded_tasks(gpt, ("hellaswag",))
    one = item_scores(gpt_forward(gpt), list(task.items), "cpu", batch_size=1)
    three = item_scores(gpt_forward(gpt), list(task.items), "cpu", batch_size=3)
    for by_one, by_three in zip(one, three, strict=True):
        for a, b in zip(by_one, by_three, strict=True):
            assert abs(a.loglikelihood - b.loglikelihood) < 1e-5


# --- the command ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return save_weights_only(tmp_path_factory.mktemp("evaluate") / "w.ckpt", block_size=64)


def one_error_line(result) -> str:
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and len(lines) == 1, result.stderr
    return lines[0]


def test_evaluate_prints_a_table_and_writes_every_task_and_the_text_bpb(ckpt, cli, tmp_path):
    out = tmp_path / "results" / "r.json"
    text = TASKS / "lambada.jsonl"
    options = [f"--tasks={ALL_TASKS}", f"--task_dir={TASKS}", f"--text={text}", f"--out={out}"]
    result = cli("evaluate", f"--ckpt_path={ckpt}", *options, "--progress=false")
    assert result.returncode == 0, result.stderr
    results = json.loads(out.read_text())
    assert results["checkpoint"] == str(ckpt) and results["precision"] == "32-true"
    assert list(results["tasks"]) == ALL_TASKS.split(",")
    assert set(results["tasks"]["hellaswag"]) == {
        "acc",
        "acc_stderr",
        "acc_norm",
        "acc_norm_stderr",
        "n",
    }
    assert set(results["tasks"]["winogrande"]) == {"acc", "acc_stderr", "n"}
    assert set(results["tasks"]["lambada"]) == {"acc", "acc_stderr", "ppl", "ppl_stderr", "n"}
    assert results["tasks"]["arc_challenge"]["n"] == 2
    assert results["text"]["bytes"] == len(text.read_bytes())
    assert 0 < results["text"]["bpb"] < 20
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["task", "metric", "value", "stderr", "n"]
    row = next(line for line in lines if line.startswith("hellaswag") and " acc_norm " in line)
    assert any(line.startswith("--text ") and " bpb " in line for line in lines)
    assert row.split()[2] == f"{results['tasks']['hellaswag']['acc_norm']:.4f}"
    assert lines[-1] == f"wrote {out}"


def test_evaluate_limits_items_and_takes_a_precision(ckpt, cli, tmp_path):
    out = tmp_path / "r.json"
    options = ["--tasks=hellaswag,lambada", f"--task_dir={TASKS}", "--limit=2"]
    result = cli(
        "evaluate", f"--ckpt_path={ckpt}", *options, "--precision=bf16-mixed", f"--out={out}"
    )
    assert result.returncode == 0, result.stderr
    results = json.loads(out.read_text())
    assert results["precision"] == "bf16-mixed" and results["limit"] == 2
    assert [t["n"] for t in results["tasks"].values()] == [2, 2]


def test_a_bf16_checkpoint_is_scored_in_bf16_by_default(tmp_path, cli):
    from lit_gpt_scratch.train.checkpoint_files import load_gpt, save_gpt

    loaded = load_gpt(save_weights_only(tmp_path / "w.ckpt", block_size=64))
    save_gpt(tmp_path / "bf16.ckpt", loaded.gpt.to(torch.bfloat16), loaded.spec, "stdlib-4k")
    out = tmp_path / "r.json"
    result = cli("evaluate", f"--ckpt_path={tmp_path / 'bf16.ckpt'}", "--tasks=python_cloze",
                 f"--task_dir={TASKS}", f"--out={out}")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert json.loads(out.read_text())["precision"] == "bf16-true"


LAMBADA = ["--tasks=lambada", f"--task_dir={TASKS}"]


@pytest.mark.parametrize(
    "args, expected",
    [
        (
            ["--tasks=hellaswag", "--task_dir=nowhere"],
            "task hellaswag: nowhere/hellaswag.jsonl does not exist (the published file: ",
        ),
        (["--tasks=hellaswg", f"--task_dir={TASKS}"], "unknown task 'hellaswg': the named tasks"),
        ([], "nothing to evaluate: give --tasks, --text, or both"),
        ([*LAMBADA, "--precision=fp8"], "--precision 'fp8' is not one of 64-true, 32-true"),
        ([*LAMBADA, "--batch_size=0"], "--batch_size must be at least 1, got 0"),
        (["--text=missing.txt"], "--text missing.txt does not exist"),
        ([*LAMBADA, "--device=cuda:0"], "--device cuda:0: this machine has no CUDA GPU"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(ckpt, cli, tmp_path, args, expected):
    if "cuda" in " ".join(args) and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    out = tmp_path / "r.json"
    line = one_error_line(cli("evaluate", f"--ckpt_path={ckpt}", *args, f"--out={out}"))
    assert line.startswith(f"error: {expected}"), line
    assert not out.exists()


def test_an_existing_results_file_is_kept(ckpt, cli, tmp_path):
    out = tmp_path / "r.json"
    out.write_text("earlier results\n")
    line = one_error_line(cli("evaluate", f"--ckpt_path={ckpt}", "--tasks=lambada",
                              f"--task_dir={TASKS}", f"--out={out}"))  # fmt: skip
    assert line == f"error: --out {out} exists: choose another path or delete it first"
    assert out.read_text() == "earlier results\n"


def test_a_line_of_bad_json_stops_evaluate_with_its_line_number(ckpt, cli, tmp_path):
    bad = tmp_path / "mine.jsonl"
    bad.write_text('{"context": "a", "continuation": "b"}\n{"context": \n')
    line = one_error_line(cli("evaluate", f"--ckpt_path={ckpt}", f"--tasks=mine={bad}"))
    assert line.startswith("error: task mine: mine.jsonl line 2 is not JSON (")


@pytest.mark.slow
def test_two_cpu_processes_report_what_one_does(ckpt, tmp_path):
    """``--devices 2``: two gloo processes score half the items each and add their counts."""
    outputs = {}
    for devices in (1, 2):
        out = tmp_path / f"r{devices}.json"
        command = [sys.executable, "-m", "lit_gpt_scratch", "evaluate", f"--ckpt_path={ckpt}",
                   f"--tasks={ALL_TASKS}", f"--task_dir={TASKS}", "--device=cpu",
                   f"--text={TASKS / 'lambada.jsonl'}", f"--devices={devices}", f"--out={out}",
                   "--progress=false"]  # fmt: skip
        done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        outputs[devices] = json.loads(out.read_text())
    one, two = outputs[1], outputs[2]
    for name, metrics in one["tasks"].items():
        for key, value in metrics.items():
            assert two["tasks"][name][key] == pytest.approx(value, abs=1e-6), (name, key)
    assert two["text"]["bpb"] == pytest.approx(one["text"]["bpb"], abs=1e-6)


def test_text_bits_per_byte_count_the_files_bytes_with_crlf_kept(ckpt, cli, tmp_path):
    text = tmp_path / "crlf.txt"
    text.write_bytes(b"def f():\r\n    return 1\r\n" * 20)
    out = tmp_path / "r.json"
    assert cli("evaluate", f"--ckpt_path={ckpt}", f"--text={text}", f"--out={out}").returncode == 0
    assert json.loads(out.read_text())["text"]["bytes"] == text.stat().st_size
