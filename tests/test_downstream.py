"""Downstream tasks during ``fit``: logged every N steps, equal to ``evaluate`` on the saved
checkpoint, and changing nothing the run computes, resumed or not."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
from conftest import LOREM, small_run_args, write_text_corpus
from gloo_runs import samples
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from test_resume import fit as fit_process
from test_resume import signal_at

TASKS = Path(__file__).parent / "data" / "tasks"
DOWNSTREAM = {
    "downstream.tasks": "[python_choice, python_cloze, winogrande]",
    "downstream.task_dir": str(TASKS),
    "downstream.every_n_steps": "2",
}
RUN = {
    "trainer.precision": "32-true",
    "trainer.max_steps": "6",
    "checkpoint.every_n_train_steps": "2",
    "samples.every_n_steps": "0",
}


def scalars(run: Path) -> dict[str, list[tuple[int, float]]]:
    events = EventAccumulator(str(run), size_guidance={"scalars": 0})
    events.Reload()
    tags = events.Tags()["scalars"]
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in tags}


def eval_scalars(run: Path) -> dict[str, list[tuple[int, float]]]:
    return {tag: v for tag, v in scalars(run).items() if tag.startswith("eval/")}


def assert_last_scores_are_evaluates(cli, ckpt: Path, logged: dict, tmp_path: Path) -> None:
    """The last score logged under each ``eval/<task>/<metric>`` is what ``evaluate`` reports
    for the checkpoint ``ckpt`` in one process."""
    out = tmp_path / "evaluated.json"
    tasks = "--tasks=python_choice,python_cloze,winogrande"
    result = cli("evaluate", f"--ckpt_path={ckpt}", tasks, f"--task_dir={TASKS}", f"--out={out}")
    assert result.returncode == 0, result.stderr
    results = json.loads(out.read_text())["tasks"]
    for tag, values in logged.items():
        _, task, metric = tag.split("/")
        assert values[-1][1] == pytest.approx(results[task][metric], rel=1e-5), tag


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_text_corpus(tmp_path_factory.mktemp("corpus"), LOREM)


def test_fit_logs_every_task_every_n_steps_and_trains_as_without_them(tmp_path, corpus, cli):
    args = small_run_args(corpus, tmp_path / "data", **RUN)
    assert cli("fit", *args).returncode == 0
    plain = scalars(tmp_path / "checkpoints/tiny/version_0")
    result = cli("fit", *args, *(f"--{k}={v}" for k, v in DOWNSTREAM.items()))
    assert result.returncode == 0, result.stderr
    run = tmp_path / "checkpoints/tiny/version_1"
    logged = eval_scalars(run)
    assert sorted(logged) == [
        "eval/python_choice/acc",
        "eval/python_choice/acc_norm",
        "eval/python_cloze/acc",
        "eval/python_cloze/ppl",
        "eval/winogrande/acc",
    ]
    assert all([s for s, _ in values] == [2, 4, 6] for values in logged.values())
    assert scalars(run)["train/loss"] == plain["train/loss"]  # bitwise: scoring changed nothing
    assert "downstream at step 6: python_choice/acc " in result.stderr

    # the figures at step 6 are those of `evaluate` on the checkpoint of step 6
    assert_last_scores_are_evaluates(cli, run / "checkpoints/last.ckpt", logged, tmp_path)


@pytest.mark.parametrize(
    "option, message",
    [
        ("--downstream.tasks=[hellaswg]", "unknown task 'hellaswg': the named tasks are"),
        ("--downstream.task_dir=/nowhere", "unknown task 'python_choice': the named tasks"),
        ("--downstream.tasks=[lambada, winogrande]", "task lambada: /nowhere/lambada.jsonl does"),
        ("--downstream.every_n_steps=-1", "downstream.every_n_steps must be at least 0, got -1"),
    ],
)
def test_a_bad_downstream_option_stops_fit_before_it_trains(tmp_path, corpus, cli, option, message):
    args = small_run_args(corpus, tmp_path / "data", **RUN)
    downstream = [f"--{k}={v}" for k, v in DOWNSTREAM.items()]
    if "lambada" in option:
        downstream.append("--downstream.task_dir=/nowhere")
    result = cli("fit", *args, *downstream, option)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and message in lines[-1], result.stderr[-2000:]
    assert not list(tmp_path.glob("checkpoints/tiny/version_*/checkpoints/*.ckpt"))


@pytest.mark.slow
def test_a_killed_and_resumed_run_logs_the_same_scores_and_samples(tmp_path, corpus):
    """Killed after step 5, resumed from the checkpoint of step 4: TensorBoard drops what the
    killed run logged from step 4 on, and the resumed run logs step 4's scores and sample
    again before it trains on."""
    args = small_run_args(corpus, tmp_path / "data", **{**RUN, "samples.every_n_steps": "2"})
    args += [f"--{k}={v}" for k, v in DOWNSTREAM.items()]
    whole = fit_process(tmp_path / "whole", args)
    assert whole.returncode == 0, whole.stderr[-3000:]
    killed = fit_process(tmp_path / "killed", args, signal_at(tmp_path, 5, "SIGKILL"))
    assert killed.returncode == -signal.SIGKILL
    resumed = fit_process(tmp_path / "killed", args, "--ckpt_path=last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a = scalars(tmp_path / "whole/checkpoints/tiny/version_0")
    b = scalars(tmp_path / "killed/checkpoints/tiny/version_0")
    assert a["train/loss"] == b["train/loss"]
    assert eval_scalars(tmp_path / "whole/checkpoints/tiny/version_0") == eval_scalars(
        tmp_path / "killed/checkpoints/tiny/version_0"
    )
    whole_samples = samples(tmp_path / "whole")
    assert sorted(whole_samples) == [2, 4, 6]
    assert samples(tmp_path / "killed") == whole_samples


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_ranks_share_the_items_and_log_what_evaluate_reports(tmp_path, cli, strategy):
    """Two gloo processes each score half the items and sum the counts: the scores logged at
    the last step are those of ``evaluate`` in one process on the checkpoint of that step
    (under FSDP every rank calls the sharded model the same number of times)."""
    from gloo_runs import DDP, FSDP
    from gloo_runs import fit as fit_ranks

    options = [f"--{k}={v}" for k, v in DOWNSTREAM.items()]
    if strategy == "fsdp":  # fp32 weights in the forward, to compare with evaluate's fp32
        options.append("--trainer.strategy.init_args.mixed_precision=null")
    ranks = FSDP if strategy == "fsdp" else DDP
    fit_ranks(tmp_path, tmp_path / "data", *options, devices=2, batch=4, strategy=ranks)
    run = tmp_path / "checkpoints/tiny/version_0"
    ckpt = run / "checkpoints/last.ckpt"
    if strategy == "fsdp":  # a sharded checkpoint: one file of it first
        one = tmp_path / "one.ckpt"
        assert cli("consolidate", f"--ckpt_path={ckpt}", f"--out={one}").returncode == 0
        ckpt = one
    logged = eval_scalars(run)
    assert len(logged) == 5 and all([s for s, _ in v] == [2, 4] for v in logged.values())
    assert_last_scores_are_evaluates(cli, ckpt, logged, tmp_path)
