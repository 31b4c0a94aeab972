"""What a run prints: outside a terminal one plain line per logging step and per validation
(no bar redrawn at every micro-batch); Lightning's lines once each, without its advertisement,
its FLOPs-free summary or its deprecation warning."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
from conftest import LOREM, small_run_args, write_text_corpus
from test_resume import fit


@pytest.fixture(scope="module")
def run_output(tmp_path_factory):
    """A 6-step run, 2 micro-batches a step, logging every 2 steps and validating every 3,
    with its standard output a pipe (as under CI, SLURM or ``> train.log``)."""
    root = tmp_path_factory.mktemp("console")
    corpus = write_text_corpus(root / "corpus", LOREM)
    args = small_run_args(
        corpus,
        root / "data",
        **{
            "trainer.enable_progress_bar": "true",
            "trainer.enable_model_summary": "true",
            "trainer.log_every_n_steps": "2",
            "trainer.accumulate_grad_batches": "2",
            "trainer.val_check_interval": "6",  # batches: every 3 optimizer steps
        },
    )
    result = fit(root / "run", args)
    assert result.returncode == 0, result.stderr
    result.resumed = fit(root / "run", args, "--trainer.max_steps=8", "--ckpt_path=last")
    assert result.resumed.returncode == 0, result.resumed.stderr
    return result


def test_outside_a_terminal_progress_is_one_line_per_logging_step_and_validation(run_output):
    lines = run_output.stdout.splitlines()
    assert "\r" not in run_output.stdout and "it/s" not in run_output.stdout
    steps = [(int(m[1]), m[2]) for m in (re.match(r"step (\d+)/6  (\S+)", x) for x in lines) if m]
    assert steps == [
        (0, "val/loss"),  # val_at_start
        (2, "train/loss"),
        (3, "val/loss"),
        (4, "train/loss"),
        (6, "train/loss"),
        (6, "val/loss"),
    ], lines
    assert all(re.fullmatch(r"step \d/6(  \S+ [-\d.e+]+)+(  [\d.e+]+ steps/s  eta \d+:\d\d)?", x)
               for x in lines if x.startswith("step ")), lines  # fmt: skip


def test_lightning_lines_print_once_without_its_tip_flops_or_deprecation_warnings(run_output):
    err = run_output.stderr
    assert err.count("Seed set to") == 1, err
    assert "Tip:" not in err and "FLOPs" not in err and "LeafSpec" not in err, err
    assert "INFO:" not in err and "model summary" not in err, err
    assert "GPT: " in err  # the project's own summary is there instead
    # a resume continues its own run folder: Lightning's warning about it is no news
    assert "resuming from" in run_output.resumed.stderr
    assert "exists and is not empty" not in run_output.resumed.stderr


TERMINAL = """
import io, sys
from lit_gpt_scratch.cli.main import main

class Terminal(io.StringIO):
    def isatty(self):
        return True

real, sys.stdout = sys.stdout, Terminal()
code = main(sys.argv[1:])
shown, sys.stdout = sys.stdout.getvalue(), real
print(shown)
sys.exit(code)
"""


def test_in_a_terminal_the_bar_counts_optimizer_steps_not_micro_batches(tmp_path):
    # in a child process: this one's logging stays as the other tests expect it
    corpus = write_text_corpus(tmp_path / "corpus", LOREM)
    args = small_run_args(
        corpus,
        tmp_path / "data",
        **{"trainer.enable_progress_bar": "true", "trainer.accumulate_grad_batches": "3"},
    )
    result = subprocess.run([sys.executable, "-c", TERMINAL, "fit", *args], cwd=tmp_path,
                            capture_output=True, text=True, timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr
    shown = re.findall(r"train:\s+\d+%\S* (\d+)/(\d+) ", result.stdout)
    assert shown and {total for _, total in shown} == {"6"}, shown  # max_steps, not batches
    assert shown[-1][0] == "6" and max(int(n) for n, _ in shown) == 6
