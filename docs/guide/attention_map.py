"""Draw one attention head's pattern for a prompt, from a trained checkpoint, as a PNG.

    python docs/guide/attention_map.py \
        --ckpt_path checkpoints/tiny/version_0/checkpoints/last.ckpt \
        --prompt "    def __init__(self, name):" --layer 1 --head 0 --out attention-map.png

The checkpoint's GPT is rebuilt with ``MathAttention`` in place of its attention plug-in (the
same weights and options; it writes softmax(q kᵀ / √d + mask) · v out and keeps the weights),
run once on the prompt, and row t of the picture is how much token t takes from each earlier
token. It also prints, for each token, the token it attends to most.
"""

from __future__ import annotations

import argparse
import copy

import torch

from lit_gpt_scratch.model.build import build_gpt
from lit_gpt_scratch.tokenizer.encodings import load_tokenizer
from lit_gpt_scratch.train.checkpoint_files import load_gpt

MATH = "lit_gpt_scratch.model.attention.MathAttention"


def math_attention_twin(loaded):
    """The loaded GPT rebuilt with MathAttention (keep_weights on), holding the same weights."""
    spec = copy.deepcopy(loaded.spec)
    attention = spec["init_args"].get("attention") or {}
    spec["init_args"]["attention"] = {
        "class_path": MATH,
        "init_args": {**(attention.get("init_args") or {}), "keep_weights": True},
    }
    twin = build_gpt(spec)
    twin.load_state_dict(loaded.gpt.state_dict())
    return twin.eval()


def piece(tokenizer, i: int) -> str:
    """A token as a short visible label: spaces as ·, newlines as ↵."""
    text = tokenizer.encoding.decode_single_token_bytes(i).decode("utf-8", errors="replace")
    return text.replace(" ", "·").replace("\n", "↵").replace("\t", "⇥")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt_path", required=True, help="a .ckpt file written by fit")
    parser.add_argument("--prompt", required=True)
    parser.add_argument("--layer", type=int, default=0, help="block index, from 0")
    parser.add_argument("--head", type=int, default=0, help="query head index, from 0")
    parser.add_argument("--out", default="attention-map.png")
    args = parser.parse_args()

    loaded = load_gpt(args.ckpt_path)
    model = math_attention_twin(loaded)
    n_layer, n_head = len(model.blocks), model.blocks[0].attn.n_head
    if not (0 <= args.layer < n_layer and 0 <= args.head < n_head):
        parser.error(f"this model has layers 0..{n_layer - 1} and heads 0..{n_head - 1}")
    tokenizer = load_tokenizer(loaded.tokenizer)
    ids = tokenizer.encode_ordinary(args.prompt).tolist()[: model.block_size]
    with torch.no_grad():
        model(torch.tensor([ids]))
    weights = model.blocks[args.layer].attn.last_weights[0, args.head].float().numpy()  # (T, T)
    labels = [piece(tokenizer, i) for i in ids]

    for t, label in enumerate(labels):
        top = int(weights[t].argmax())
        print(f"{t:3} {label!r:14} -> {top:3} {labels[top]!r:14} {weights[t, top]:.2f}")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    size = min(9.0, 2.0 + 0.28 * len(ids))
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(weights, cmap="viridis", vmin=0.0, vmax=1.0)
    ax.set_xticks(range(len(ids)), labels, rotation=90, fontsize=8, family="monospace")
    ax.set_yticks(range(len(ids)), labels, fontsize=8, family="monospace")
    ax.set_xlabel("key (the token attended to)")
    ax.set_ylabel("query (the token attending)")
    ax.set_title(f"layer {args.layer}, head {args.head}", fontsize=10)
    fig.tight_layout()
    fig.savefig(args.out, dpi=90)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
