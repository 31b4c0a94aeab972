"""Scores -> metrics, through sums that add up across ranks.

Each task keeps five sums over its items: the count, correct choices, correct length-normed
choices, and the negative log-likelihood of the right continuation and its square. Ranks
add their sums (one all-reduce), and every metric and standard error follows from them:

- ``acc`` / ``acc_norm``: the mean of 0/1 outcomes; stderr ``sqrt(p (1 - p) / (n - 1))``, the
  sample standard error lm-evaluation-harness reports.
- ``ppl``: ``exp(mean NLL)`` of the right continuations (the harness's perplexity); stderr by
  the delta method, ``ppl x stderr(NLL)``.
"""

from __future__ import annotations

import math

from lit_gpt_scratch.evaluate.scoring import Score
from lit_gpt_scratch.evaluate.tasks import CHOICE, Item, Task

N, ACC, ACC_NORM, NLL, NLL_SQUARED = range(5)
SUMS = 5


def pick(values: list[float]) -> int:
    """The index of the largest value, the first on a tie (as numpy's argmax)."""
    return max(range(len(values)), key=lambda i: (values[i], -i))


def item_sums(task: Task, item: Item, scores: list[Score]) -> list[float]:
    """One item's contribution to its task's sums."""
    lls = [s.loglikelihood for s in scores]
    if task.kind == CHOICE:
        correct = float(pick(lls) == item.answer)
        normed = [ll / length for ll, length in zip(lls, item.lengths, strict=True)]
        correct_norm = float(pick(normed) == item.answer)
    else:
        correct = correct_norm = float(scores[0].greedy)
    nll = -lls[item.answer]
    return [1.0, correct, correct_norm, nll, nll * nll]


def task_metrics(task: Task, sums: list[float]) -> dict:
    """The task's metrics (those ``task.metrics`` names), their standard errors, and ``n``."""
    n = int(sums[N])
    out: dict = {}
    for name in task.metrics:
        if name == "ppl":
            mean = sums[NLL] / n
            variance = (sums[NLL_SQUARED] - n * mean * mean) / (n - 1) if n > 1 else None
            ppl = math.exp(mean) if mean < 700 else math.inf
            out["ppl"] = ppl
            out["ppl_stderr"] = ppl * math.sqrt(max(variance, 0.0) / n) if n > 1 else None
        else:
            p = sums[ACC if name == "acc" else ACC_NORM] / n
            out[name] = p
            out[f"{name}_stderr"] = math.sqrt(p * (1 - p) / (n - 1)) if n > 1 else None
    out["n"] = n
    return out


def table(results: dict[str, dict]) -> str:
    """Results as an aligned text table: one row per task and metric."""
    rows = [("task", "metric", "value", "stderr", "n")]
    for name, metrics in results.items():
        for key, value in metrics.items():
            if key == "n" or key.endswith("_stderr"):
                continue
            stderr = metrics.get(f"{key}_stderr")
            rows.append(
                (
                    name,
                    key,
                    f"{value:.4f}" if isinstance(value, float) else str(value),
                    "-" if stderr is None else f"{stderr:.4f}",
                    str(metrics.get("n", "")),
                )
            )
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
