"""Everything a GPU can tell and a CPU cannot, in one command, within a wall-clock budget, as one
markdown report ready for BENCHMARKS.md (device, versions, each step's command and table).

The steps, in priority order, each in its own process (a fresh Dynamo cache, nothing shared)
with a time limit from what is left of ``--budget_s``; a step that no longer fits is skipped,
and a failed or timed-out one is reported as such, and the suite goes on:

1. ``train``: 124m tokens/s and MFU, eager against compiled, bf16-mixed, through fit's
   Lightning path (``bench.train``);
2. ``overhead``: Lightning against the bare loop, 124m, bf16-mixed, compiled (``bench.overhead``);
3. ``data``: the data path alone and its share of a step, 124m (``bench.data``);
4. ``generate``: generation tokens/s with and without the KV cache, 124m (``bench.generate``);
5. ``gpu_tests``: the ``gpu``-marked tests (``pytest -m gpu``): passed, failed, skipped;
6. ``syncs``: host-device synchronisations per step of a short fit of 124m, counted by
   ``torch.cuda.set_sync_debug_mode("warn")`` (``bench.syncs``).

The training steps shrink 124m's global batch of 512 windows to ``--global_batch_size`` (128:
8 micro-batches of 16 per optimizer step) so that they fit the budget. ``--smoke`` runs the
same steps on the CPU with the tiny config and tiny shapes (a cheap compile backend, a few
steps): it checks the suite, and its figures mean nothing.

    python -m lit_gpt_scratch.bench.suite                    # on a GPU machine, ~6 minutes
    python -m lit_gpt_scratch.bench.suite --smoke            # anywhere, under 2 minutes
    python -m lit_gpt_scratch.bench.suite --only syncs --out report.md

Exit code 0 when no step failed or timed out (skipped steps are listed in the report), else 1.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import re
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

TAIL_LINES = 25  # of a failed step's output, in the report


@dataclass
class Step:
    name: str
    title: str
    argv: list[str]  # after ``python -m``
    cap_s: float  # the longest it may run
    min_s: float  # skipped when less than this is left of the budget


@dataclass
class Outcome:
    status: str  # ok, failed, timed out, skipped
    seconds: float
    text: str  # the report's body for this step


# Each step's title, in priority order, and (the longest it may run, the least it needs to
# start) in seconds on a GPU.
TITLES = {
    "train": "Training tokens/s and MFU of {model}: eager and compiled, bf16-mixed, through "
    "fit's Lightning path",
    "overhead": "Lightning against the bare loop: {model}, bf16-mixed, compiled",
    "data": "The data path alone and its share of a step: {model}",
    "generate": "Generation tokens/s with and without the KV cache: {model}",
    "gpu_tests": "The gpu-marked tests",
    "syncs": "Host-device synchronisations per step of a short fit of {model}",
}
LIMITS = {"train": (240, 90), "overhead": (150, 60), "data": (60, 20), "generate": (60, 15),
          "gpu_tests": (120, 30), "syncs": (120, 45)}  # fmt: skip


def plan(smoke: bool, data_dir: str | None, global_batch: int) -> list[Step]:
    """The steps, in priority order: 124m on the GPU or (``smoke``) tiny on the CPU."""
    if smoke:  # a step or two per window and a compile backend with no code generation
        config, device = "configs/tiny.yaml", "cpu"
        timing = ["--batch_size", "1", "--global_batch_size", "2", "--warmup", "1",
                  "--window", "2", "--workers", "0"]  # fmt: skip
        extra = {
            "train": ["--windows", "1", "--compile_backend", "eager"],
            "overhead": ["--windows", "1", "--rounds", "1", "--compile_backend", "eager"],
            "data": ["--windows", "1", "--batches", "20"],
            "generate": ["--new_tokens", "8", "--repeat", "1"],
            "syncs": ["--batch_size", "1", "--global_batch_size", "2", "--steps", "6",
                      "--log_every", "3"],
        }  # fmt: skip
    else:  # the config's micro-batches and loader workers
        config, device = "configs/124m.yaml", "cuda"
        timing = ["--global_batch_size", str(global_batch), "--warmup", "5", "--window", "5"]
        extra = {
            "train": ["--windows", "3"],
            "overhead": ["--windows", "2", "--rounds", "2"],
            "data": ["--windows", "2", "--batches", "200"],
            "syncs": ["--global_batch_size", "32", "--steps", "12", "--log_every", "4"],
        }
    timed = ["--configs", config, "--device", device, *timing]
    timed += ["--data_dir", data_dir] if data_dir else []
    bench = "lit_gpt_scratch.bench."
    argv = {
        "train": [bench + "train", *timed, "--precision", "bf16-mixed", "--compile", "off", "on"],
        "overhead": [bench + "overhead", *timed, "--precision", "bf16-mixed", "--compile", "on"],
        "data": [bench + "data", *timed],
        "generate": [bench + "generate", "--configs", config, "--device", device],
        "gpu_tests": ["pytest", "-m", "gpu", "-q", "tests"],
        "syncs": [bench + "syncs", "--config", config, "--device", device],
    }
    model = Path(config).stem
    return [
        Step(name, title.format(model=model), [*argv[name], *extra.get(name, [])],
             LIMITS[name][0], 5.0 if smoke else LIMITS[name][1])
        for name, title in TITLES.items()
    ]  # fmt: skip


def run_step(step: Step, limit: float) -> Outcome:
    """Run ``step`` in its own process group, killed (workers included) after ``limit`` s."""
    start = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-m", *step.argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group: a timeout ends its workers too
    )
    try:
        out, err = process.communicate(timeout=limit)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        out, err = process.communicate()
        seconds = time.perf_counter() - start
        why = f"**timed out** after {seconds:.0f} s (its limit: {limit:.0f} s)"
        return Outcome("timed out", seconds, f"{why}\n\n{tail(out, err)}")
    seconds = time.perf_counter() - start
    body = pytest_table(out) if step.name == "gpu_tests" else bench_report(out)
    if process.returncode or body is None:
        why = f"exit code {process.returncode}" if process.returncode else "no table in its output"
        failed = f"**failed** ({why}) after {seconds:.0f} s"
        return Outcome("failed", seconds, f"{failed}\n\n{body or tail(out, err)}")
    return Outcome("ok", seconds, body)


def bench_report(out: str) -> str | None:
    """A benchmark's note, table and what follows, from its stdout (Lightning may print before
    it); the device and command lines are left out: the report gives them once."""
    lines = out.splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith("device: ")]
    if not starts or not any(line.startswith("|---") for line in lines[starts[-1] :]):
        return None
    kept = [line for line in lines[starts[-1] + 1 :] if not line.startswith("command: ")]
    return "\n".join(kept).strip()


def pytest_table(out: str) -> str | None:
    """pytest's counts from its last line (``3 passed, 2 skipped, 331 deselected in 9.1s``)."""
    lines = [line for line in out.splitlines() if line.strip()]
    if not lines:
        return None
    counts = dict.fromkeys(("passed", "failed", "error", "skipped", "deselected"), 0)
    for n, kind in re.findall(r"(\d+) (passed|failed|errors?|skipped|deselected)", lines[-1]):
        counts[kind.rstrip("s") if kind.startswith("error") else kind] += int(n)
    reasons = [line for line in lines if line.startswith(("SKIPPED", "FAILED", "ERROR"))]
    table = ["| " + " | ".join(counts) + " |", "|" + "---:|" * len(counts),
             "| " + " | ".join(str(v) for v in counts.values()) + " |"]  # fmt: skip
    listed = "\n".join(f"- {line}" for line in reasons)
    return "\n".join(table) + (f"\n\n{listed}" if listed else "")


def tail(out: str, err: str) -> str:
    lines = (out + "\n" + err).strip().splitlines()[-TAIL_LINES:]
    return "```text\n" + "\n".join(lines) + "\n```"


def header(argv: list[str], smoke: bool, budget: float) -> list[str]:
    """The report's heading (the device's, as BENCHMARKS.md keeps rows per device), the
    versions, the commit and the suite's command."""
    import lightning
    import torch

    from lit_gpt_scratch.bench.tokenize import cpu_model

    if smoke:
        title = "Smoke run of the GPU suite on the CPU (tiny shapes: not figures)"
        device = f"{cpu_model()} ({os.cpu_count()} cores)"
    else:
        title = torch.cuda.get_device_name()
        device = f"{title}, CUDA {torch.version.cuda}"
    commit = subprocess.run(
        ["git", "describe", "--always", "--dirty", "--abbrev=7"],
        capture_output=True, text=True, check=False,
    ).stdout.strip()  # fmt: skip
    command = f"python -m lit_gpt_scratch.bench.suite {shlex.join(argv)}".strip()
    return [
        f"## {title}",
        "",
        f"device: {device} · Python {platform.python_version()} · torch {torch.__version__} "
        f"· lightning {lightning.__version__} · commit {commit or 'unknown'} "
        f"· {datetime.date.today().isoformat()}",
        f"command: `{command}`",
        f"budget: {budget:.0f} s of wall-clock time for the whole suite",
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget_s", type=float, default=540.0, help="for the whole suite")
    parser.add_argument("--smoke", action="store_true", help="on the CPU, tiny shapes")
    parser.add_argument("--only", nargs="+", help="these steps only (train, overhead, ...)")
    parser.add_argument("--global_batch_size", type=int, default=128, help="124m's, shrunk")
    parser.add_argument("--data_dir", help="synthetic tokens (default: the benchmarks')")
    parser.add_argument("--out", help="also write the report to this file")
    args = parser.parse_args(argv)
    argv = sys.argv[1:] if argv is None else argv
    if not args.smoke:
        import torch

        if not torch.cuda.is_available():
            parser.error("no CUDA device: --smoke runs the same steps on the CPU")
    start = time.perf_counter()
    steps = plan(args.smoke, args.data_dir, args.global_batch_size)
    unknown = set(args.only or []) - {s.name for s in steps}
    if unknown:
        parser.error(f"unknown steps {sorted(unknown)}: choose from {[s.name for s in steps]}")
    chosen = [(n, s) for n, s in enumerate(steps, 1) if not args.only or s.name in args.only]
    sections, outcomes = [], []
    for number, step in chosen:
        left = args.budget_s - (time.perf_counter() - start)
        command = "python -m " + shlex.join(step.argv)
        if left < step.min_s:
            why = f"{max(left, 0):.0f} s of the budget left, it needs at least {step.min_s:.0f} s"
            outcome = Outcome("skipped", 0.0, f"**skipped**: {why}")
        else:
            limit = min(step.cap_s, left)
            print(f"[suite] {number}. {command} (limit {limit:.0f} s)", file=sys.stderr)
            outcome = run_step(step, limit)
        print(f"[suite] {number}. {step.name}: {outcome.status}", file=sys.stderr)
        outcomes.append(outcome)
        took = "" if outcome.status == "skipped" else f", {outcome.seconds:.0f} s"
        sections += ["", f"### {number}. {step.title}", "",
                     f"`{command}` ({outcome.status}{took})", "", outcome.text]  # fmt: skip
    total = time.perf_counter() - start
    summary = ", ".join(f"{s.name} {o.status}" for (_, s), o in zip(chosen, outcomes, strict=True))
    report = [*header(argv, args.smoke, args.budget_s), f"took: {total:.0f} s; {summary}"]
    report += sections
    text = "\n".join(report) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    return 1 if any(o.status in ("failed", "timed out") for o in outcomes) else 0


if __name__ == "__main__":
    sys.exit(main())
