"""The model card of an export (its ``README.md``): what the model is, what it saw, how it scores.

Facts come from what is reachable, never guessed: the checkpoint (model spec, tokenizer, data
hyper-parameters, steps, the tokens counted by the throughput callback, the monitored score),
the prepared data's ``meta.json`` if its folder still exists, the run folder's TensorBoard
events (the last ``val/loss`` and ``val/bpb`` before the checkpoint's step) and an ``evaluate
--out`` results file when one is given. A fact that is not reachable says so.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from lit_gpt_scratch.errors import UserError

log = logging.getLogger(__name__)


def training_facts(ckpt: dict, ckpt_path: str | Path) -> dict:
    """What the checkpoint and the files beside it record about its training."""
    data = ckpt.get("datamodule_hyper_parameters") or {}
    facts = {
        "steps": ckpt.get("global_step"),
        "sources": data.get("sources"),
        "data_dir": data.get("data_dir"),
        "tokens_seen": _tokens_seen(ckpt),
        "meta": _meta(data.get("data_dir")),
        "run_dir": None,
        "val": {},
    }
    run_dir = Path(ckpt_path).resolve().parent.parent  # <run>/version_N/checkpoints/x.ckpt
    if list(run_dir.glob("events.out.tfevents.*")):
        facts["run_dir"] = run_dir
        facts["val"] = _last_val_metrics(run_dir, ckpt.get("global_step"))
    if "loss" not in facts["val"]:
        score = _monitored_val_loss(ckpt)
        if score is not None:
            facts["val"]["loss"] = score
    return facts


def _tokens_seen(ckpt: dict) -> int | None:
    for key, state in (ckpt.get("callbacks") or {}).items():
        if key.startswith("TokenThroughput") and isinstance(state, dict) and "tokens" in state:
            return int(state["tokens"])
    return None


def _monitored_val_loss(ckpt: dict) -> float | None:
    for state in (ckpt.get("callbacks") or {}).values():
        if isinstance(state, dict) and state.get("monitor") == "val/loss":
            score = state.get("current_score")
            if score is not None:
                return float(score)
    return None


def _meta(data_dir: str | None) -> dict | None:
    if not data_dir:
        return None
    try:
        return json.loads((Path(data_dir) / "meta.json").read_text())
    except (OSError, ValueError):
        return None


def _last_val_metrics(run_dir: Path, global_step: int | None) -> dict:
    """The last ``val/loss`` and ``val/bpb`` logged before ``global_step`` (later ones belong to
    later checkpoints of the same run)."""
    quiet = logging.getLogger("tensorboard")  # it logs each events file it walks past
    level = quiet.level
    quiet.setLevel(logging.WARNING)
    try:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
        events.Reload()
        tags = events.Tags().get("scalars", [])
    except Exception as e:  # unreadable events: the card says the metric is not recorded
        log.warning("model card: cannot read the events in %s (%s)", run_dir, e)
        return {}
    finally:
        quiet.setLevel(level)
    out = {}
    for name in ("loss", "bpb"):
        if f"val/{name}" in tags:
            scalars = events.Scalars(f"val/{name}")
            logged = [e for e in scalars if global_step is None or e.step < global_step]
            if logged:
                out[name] = float(logged[-1].value)
    return out


def read_eval_results(path: str) -> dict:
    """An ``evaluate --out`` file; UserError naming ``--eval_results`` if it is not one."""
    try:
        results = json.loads(Path(path).read_text())
    except OSError as e:
        raise UserError(f"--eval_results {path}: cannot read it ({e.strerror})") from None
    except ValueError:
        raise UserError(
            f"--eval_results {path}: not JSON (expected an evaluate --out file)"
        ) from None
    if not isinstance(results, dict) or not isinstance(results.get("tasks"), dict):
        raise UserError(f"--eval_results {path}: no 'tasks' (expected an evaluate --out file)")
    return results


def model_card(
    name: str, architecture: dict, tokenizer: dict, training: dict, command: str,
    eval_results: dict | None = None,
) -> str:  # fmt: skip
    """The card's Markdown."""
    a, t = architecture, tokenizer
    lines = [
        "---",
        "library_name: transformers",
        "pipeline_tag: text-generation",
        "tags: [lit-gpt-scratch]",
        "---",
        "",
        f"# {name}",
        "",
        f"A GPT trained from scratch with lit-gpt-scratch, exported as `{a['class']}`.",
        "",
        "## Architecture",
        "",
        f"- {a['parameters']:,} parameters (each counted once; a tied head adds none)",
        f"- {a['n_layer']} layers, d_model {a['d_model']}, {a['n_head']} heads"
        f" ({a['n_kv_head']} key/value heads), context {a['block_size']} tokens",
        f"- attention {a['attention']}, MLP {a['mlp']}, norm {a['norm']}, "
        f"position {a['position']}, {'tied' if a['tied'] else 'untied'} embeddings and head",
    ]
    lines += [f"- {note}" for note in a.get("notes", [])]
    lines += [
        "",
        "## Tokenizer",
        "",
        f"- `{t['spec']}`: {t['vocab_size']:,} ids, byte-level BPE; `<|endoftext|>` = {t['eot_id']}"
        " (also the bos, eos and pad token)",
        "- `tokenizer.json` encodes as the project's tiktoken encoding: text is ordinary text, a"
        " literal `<|endoftext|>` in it stays characters (`split_special_tokens`).",
        "",
        "## Training",
        "",
    ]
    lines += _training_lines(training)
    lines += ["", "## Evaluation", ""]
    lines += _evaluation_lines(training["val"], eval_results)
    lines += ["", "## How this export was made", "", "```", command, "```", ""]
    if training["run_dir"] is not None:
        config = training["run_dir"] / "config.yaml"
        if config.is_file():
            lines += [
                "The training run's full configuration is in",
                f"`{config}`; `python -m lit_gpt_scratch fit --config {config}` runs it again.",
                "",
            ]
    lines += [
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        f'tokenizer = AutoTokenizer.from_pretrained("{name}")',
        f'model = AutoModelForCausalLM.from_pretrained("{name}")',
        "```",
        "",
    ]
    return "\n".join(lines)


def _training_lines(training: dict) -> list[str]:
    lines = []
    sources = training["sources"]
    lines.append(f"- data sources: {', '.join(map(str, sources)) if sources else 'not recorded'}")
    meta = training["meta"]
    if meta and "tokens" in meta:
        counts = ", ".join(f"{split} {n:,}" for split, n in meta["tokens"].items())
        lines.append(f"- prepared tokens ({training['data_dir']}): {counts}")
    else:
        lines.append("- prepared data: its meta.json is not reachable from here")
    seen = training["tokens_seen"]
    seen = f"{seen:,}" if seen is not None else "not recorded"
    lines.append(f"- tokens seen in training: {seen}")
    if training["steps"] is not None:
        lines.append(f"- optimizer steps: {training['steps']:,}")
    return lines


def _evaluation_lines(val: dict, eval_results: dict | None) -> list[str]:
    lines = [
        f"- final val loss: {val['loss']:.4f} nats/token" if "loss" in val
        else "- final val loss: not recorded",
        f"- final val bits per byte: {val['bpb']:.4f}" if "bpb" in val
        else "- final val bits per byte: not recorded",
    ]  # fmt: skip
    if eval_results is None:
        return lines
    lines += ["", "`evaluate` scores:", "", "| task | metric | value | stderr | n |"]
    lines.append("|---|---|---|---|---|")
    for task, metrics in sorted(eval_results["tasks"].items()):
        for metric, value in metrics.items():
            if metric == "n" or metric.endswith("_stderr") or not isinstance(value, (int, float)):
                continue
            stderr = metrics.get(f"{metric}_stderr")
            stderr = f"{stderr:.4f}" if isinstance(stderr, (int, float)) else ""
            lines.append(f"| {task} | {metric} | {value:.4f} | {stderr} | {metrics.get('n', '')} |")
    text = eval_results.get("text")
    if isinstance(text, dict) and isinstance(text.get("bpb"), (int, float)):
        row = f"| text {text.get('path')} | bpb | {text['bpb']:.4f} | | {text.get('tokens', '')} |"
        lines.append(row)
    return lines
