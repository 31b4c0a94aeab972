"""The GPU suite: its whole smoke run on the CPU, and its handling of steps that fail, time
out or no longer fit the budget."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lit_gpt_scratch.bench import suite
from lit_gpt_scratch.bench.suite import Step, pytest_table, run_step

ROOT = Path(__file__).resolve().parents[1]


def sections(report: str) -> dict[str, str]:
    """``### N. title`` -> the section's text."""
    parts = re.split(r"^### (\d+)\. .*$", report, flags=re.MULTILINE)
    return {number: text for number, text in zip(parts[1::2], parts[2::2], strict=True)}


@pytest.mark.slow
def test_the_smoke_run_reports_every_step_with_a_table(tmp_path):
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    argv = ["--smoke", "--data_dir", str(tmp_path / "data"), "--out", str(tmp_path / "r.md")]
    result = subprocess.run(
        [sys.executable, "-m", "lit_gpt_scratch.bench.suite", *argv],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    report = (tmp_path / "r.md").read_text()
    assert report in result.stdout
    assert report.startswith("## Smoke run of the GPU suite on the CPU")
    found = sections(report)
    assert sorted(found) == [str(n) for n in range(1, len(suite.TITLES) + 1)]
    for number, text in found.items():
        assert " (ok, " in text and "|---" in text, (number, text)
    assert not any(f"**{status}**" in report for status in ("failed", "timed out", "skipped"))
    assert "| tiny | 1.4M | bf16-mixed | on | " in found["1"]  # the compiled row
    assert "| between logging steps |" in found["6"]


def test_a_failing_step_is_reported_with_its_output():
    outcome = run_step(Step("x", "x", ["lit_gpt_scratch.bench.no_such_bench"], 60, 1), 60)
    assert outcome.status == "failed"
    assert "exit code 1" in outcome.text and "No module named" in outcome.text


def test_a_step_past_its_limit_is_killed_and_reported():
    sleep = ["timeit", "-n", "1", "-r", "1", "import time; time.sleep(60)"]
    outcome = run_step(Step("x", "x", sleep, 60, 1), 1.0)
    assert outcome.status == "timed out" and outcome.seconds < 30


def test_a_step_that_no_longer_fits_the_budget_is_skipped(capsys):
    assert suite.main(["--smoke", "--budget_s", "1", "--only", "generate", "syncs"]) == 0
    report = capsys.readouterr().out
    found = sections(report)
    assert sorted(found) == ["4", "6"]
    assert all("**skipped**: 1 s of the budget left" in text for text in found.values())


def test_without_cuda_the_suite_asks_for_smoke(capsys):
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    with pytest.raises(SystemExit):
        suite.main([])
    assert "--smoke runs the same steps on the CPU" in capsys.readouterr().err


def test_pytests_summary_becomes_a_table():
    out = (
        "s.s\nSKIPPED [1] tests/t.py:3: needs a CUDA GPU\n2 passed, 1 skipped, 9 deselected in 3s\n"
    )
    table = pytest_table(out)
    assert "| 2 | 0 | 0 | 1 | 9 |" in table and "- SKIPPED [1] tests/t.py:3" in table
