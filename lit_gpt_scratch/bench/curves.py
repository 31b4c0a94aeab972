"""Loss curves of finished runs against the tokens they trained on, from their TensorBoard logs:
a table of how many tokens each run needed to reach the first run's final val loss, and a PNG.

    python -m lit_gpt_scratch.bench.curves --runs gpt2=checkpoints/base/version_0 \
        modern=checkpoints/modern/version_0 --out docs/plots/modern-vs-gpt2.png

The first run is the reference. "Tokens to reach" interpolates linearly between validations.
The PNG needs matplotlib (the ``dev`` extra); the table does not.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass
class Curve:
    name: str
    tokens: np.ndarray  # (n,) tokens trained on at each validation
    loss: np.ndarray  # (n,) the metric there


def read_curve(name: str, run_dir: str | Path, metric: str = "val/loss") -> Curve:
    """``metric`` at each step it was logged, against ``train/tokens`` at those steps (linearly
    interpolated between the throughput logs, which start from zero tokens)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    events.Reload()
    tags = events.Tags().get("scalars", [])
    for tag in (metric, "train/tokens"):
        if tag not in tags:
            raise SystemExit(f"error: {run_dir} has no {tag!r} scalars (has {sorted(tags)})")
    values = events.Scalars(metric)
    # Lightning repeats a callback's last logged value at later logging steps: keep the
    # first step of each count, the one it was logged at.
    logged = events.Scalars("train/tokens")
    counted = [e for i, e in enumerate(logged) if i == 0 or e.value != logged[i - 1].value]
    # a scalar logged at step s (0-based) comes after s + 1 optimizer steps
    count_steps = np.array([0] + [e.step + 1 for e in counted], dtype=float)
    count_tokens = np.array([0] + [e.value for e in counted], dtype=float)
    steps = np.array([e.step + 1 for e in values], dtype=float)
    if values and values[0].step == 0 and validated_at_start(run_dir):
        steps[0] = 0  # the validation before the first step: after none
    slope = count_tokens[-1] / count_steps[-1]  # past the last count: tokens per step
    tokens = np.where(
        steps <= count_steps[-1],
        np.interp(steps, count_steps, count_tokens),
        count_tokens[-1] + (steps - count_steps[-1]) * slope,
    )
    return Curve(name, tokens, np.array([e.value for e in values], dtype=float))


def validated_at_start(run_dir: str | Path) -> bool:
    """Whether the run's first config (its ``config.yaml``) validates before the first step
    (``val_at_start``), logging that point at step 0, where it reads as after one step."""
    import yaml

    config = Path(run_dir) / "config.yaml"
    if not config.is_file():
        return False
    return bool((yaml.safe_load(config.read_text(encoding="utf-8")) or {}).get("val_at_start"))


def tokens_to_reach(curve: Curve, target: float) -> float | None:
    """The first point where ``curve`` falls to ``target``, interpolated; None if never."""
    below = np.nonzero(curve.loss <= target)[0]
    if len(below) == 0:
        return None
    i = below[0]
    if i == 0:
        return float(curve.tokens[0])
    t0, t1, l0, l1 = curve.tokens[i - 1], curve.tokens[i], curve.loss[i - 1], curve.loss[i]
    return float(t0 + (t1 - t0) * (l0 - target) / (l0 - l1))


def report(curves: list[Curve], metric: str) -> list[str]:
    reference = curves[0]
    target, budget = float(reference.loss[-1]), float(reference.tokens[-1])
    lines = [
        f"reference: {reference.name}, final {metric} {target:.4f} after {budget / 1e6:.2f}M "
        "tokens",
        "",
        f"| run | final {metric} | tokens to reach {target:.3f} | share of the reference's |",
        "|---|---:|---:|---:|",
    ]
    for curve in curves:
        reached = tokens_to_reach(curve, target)
        share = f"{reached / budget:.2f}x" if reached is not None else "not reached"
        at = f"{reached / 1e6:.2f}M" if reached is not None else "-"
        lines.append(f"| {curve.name} | {curve.loss[-1]:.4f} | {at} | {share} |")
    return lines


def plot(curves: list[Curve], metric: str, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for curve in curves:
        ax.plot(curve.tokens / 1e6, curve.loss, marker="o", markersize=3, label=curve.name)
    ax.axhline(curves[0].loss[-1], color="grey", linewidth=0.8, linestyle="--")
    ax.set_xlabel("training tokens (millions)")
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", nargs="+", required=True, help="NAME=RUN_DIR, reference first")
    parser.add_argument("--metric", default="val/loss")
    parser.add_argument("--out", type=Path, help="PNG to write (needs matplotlib)")
    args = parser.parse_args(argv)
    runs = [spec.split("=", 1) for spec in args.runs]
    if any(len(run) != 2 for run in runs):
        parser.error("--runs takes NAME=RUN_DIR pairs")
    curves = [read_curve(name, path, args.metric) for name, path in runs]
    argv = sys.argv[1:] if argv is None else argv
    print(f"command: python -m lit_gpt_scratch.bench.curves {' '.join(argv)}")
    print("\n".join(report(curves, args.metric)))
    if args.out:
        plot(curves, args.metric, args.out)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
