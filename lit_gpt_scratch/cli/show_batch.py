"""``show_batch``: the exact windows that optimizer step N of a config's run trained on, decoded.

The train sampler is a seeded permutation (``data/samplers.py``), so step N's windows follow
from the config alone: ``data.windows``, ``data.seed``, ``data.batch_size``, the number of
processes and the accumulation; a mixture's schedule of sources follows from its weights
(``data/mixture_sampler.py``), and each window is named with its source. Nothing is trained or
loaded but the token files.
"""

from __future__ import annotations

import sys

from lit_gpt_scratch.errors import UserError, check_at_least


def add_options(parser) -> None:
    parser.add_argument("--step", type=int, required=True, help="Optimizer step, from 0")
    parser.add_argument(
        "--rank", type=int | None, default=None, help="Only this process's windows (default: all)"
    )
    parser.add_argument(
        "--micro_batch",
        type=int | None,
        default=None,
        help="Only this micro-batch of an accumulated step (default: all)",
    )
    parser.add_argument(
        "--world_size",
        type=int | None,
        default=None,
        help="Processes of the run (default: trainer.devices x trainer.num_nodes)",
    )


def trainer_overrides(args: list[str]) -> tuple[dict, list[str]]:
    """``--trainer.KEY=VALUE`` (or ``--trainer.KEY VALUE``) options as a dict, and the other
    arguments. The parser reads the trainer: section as it is written in the configs, and a
    dotted override would replace all of it."""
    import yaml

    overrides, rest = {}, []
    args = list(args)
    while args:
        arg = args.pop(0)
        if not arg.startswith("--trainer."):
            rest.append(arg)
            continue
        key, has_value, value = arg[len("--trainer.") :].partition("=")
        if not has_value:
            if not args:
                raise UserError(f"{arg} has no value")
            value = args.pop(0)
        overrides[key] = yaml.safe_load(value)
    return overrides, rest


def world_size_of(trainer: dict, given: int | None) -> int:
    """The run's processes: ``--world_size``, else the config's devices x nodes."""
    if given is not None:
        check_at_least("--world_size", given, 1)
        return given
    devices, nodes = trainer.get("devices", 1), trainer.get("num_nodes", 1) or 1
    if isinstance(devices, (list, tuple)):
        devices = len(devices)
    if isinstance(devices, str) and devices.isdigit():
        devices = int(devices)
    if not isinstance(devices, int) or devices < 1:
        raise UserError(
            f"trainer.devices is {devices!r}: give --world_size, the number of processes the "
            "run had"
        )
    return devices * int(nodes)


def accumulation_of(config, trainer: dict, batch_size: int, world_size: int) -> int:
    """Micro-batches per optimizer step, as fit derives it (``global_batch_size`` first)."""
    global_batch = config.get("global_batch_size")
    if global_batch is not None:
        accumulate, rest = divmod(global_batch, batch_size * world_size)
        if rest or not accumulate:
            raise UserError(
                f"global_batch_size {global_batch} is not a multiple of data.batch_size "
                f"{batch_size} x {world_size} processes"
            )
        return accumulate
    return int(trainer.get("accumulate_grad_batches") or 1)


def show(
    config,
    trainer: dict,
    step: int,
    rank: int | None = None,
    micro_batch: int | None = None,
    world_size: int | None = None,
) -> None:
    """Print step ``step``'s windows of ``config``'s run, for ``trainer`` (its trainer: section
    with the overrides), each rank and micro-batch or the ones given."""
    from lit_gpt_scratch.data.datamodule import check_tokenizer
    from lit_gpt_scratch.data.mixture import read_mixture
    from lit_gpt_scratch.data.windows import read_meta
    from lit_gpt_scratch.tokenizer.encodings import load_tokenizer

    data = config.data
    check_at_least("--step", step, 0)
    world = world_size_of(trainer, world_size)
    accumulate = accumulation_of(config, trainer, data.batch_size, world)
    if rank is not None and not 0 <= rank < world:
        raise UserError(f"--rank {rank} is not one of the run's {world} ranks (0..{world - 1})")
    if micro_batch is not None and not 0 <= micro_batch < accumulate:
        raise UserError(
            f"--micro_batch {micro_batch} is not one of the step's {accumulate} "
            f"(0..{accumulate - 1})"
        )
    meta = read_meta(data.data_dir)
    check_tokenizer(meta, data.tokenizer, data.data_dir)
    mixture = read_mixture(data.sources)
    draws = _mixture_draws if mixture is not None else _corpus_draws
    tokenizer = load_tokenizer(data.tokenizer)
    window = data.block_size + 1
    ranks = range(world) if rank is None else [rank]
    micro_batches = range(accumulate) if micro_batch is None else [micro_batch]
    for r in ranks:
        batch_at = draws(data, meta, mixture, r, world)
        for m in micro_batches:
            for i, (source, stream, start) in enumerate(batch_at(step * accumulate + m)):
                where = f"step {step} · rank {r} · micro-batch {m} · window {i}"
                of = f" · source {source}" if source else ""
                print(f"=== {where}{of} · train tokens {start:,}..{start + window:,} ===")
                sys.stdout.write(tokenizer.decode(stream.read(start, window).tolist()))
                print()


def _corpus_draws(data, meta: dict, mixture, rank: int, world: int):
    """batch_at(n) -> [("", train stream, start), ...]: rank ``rank``'s windows of batch n."""
    from lit_gpt_scratch.data.train_windows import train_sampler
    from lit_gpt_scratch.data.windows import TokenStream

    splits, vocab = meta["splits"], meta["vocab_size"]
    stream = TokenStream(data.data_dir, "train", meta["dtype"], splits["train"], vocab_size=vocab)
    if data.get("format") == "chat":  # packed conversations, drawn as training draws them
        from lit_gpt_scratch.data.chat_windows import PackedSampler

        window = data.block_size + 1
        sampler = PackedSampler(
            len(stream) // window, window, data.batch_size, data.seed, rank, world, False
        )
    else:
        sampler = train_sampler(
            data.get("windows", "random"), data.data_dir, meta, len(stream), data.block_size + 1,
            data.batch_size, data.seed, rank, world,
        )  # fmt: skip

    def batch_at(n: int) -> list[tuple[str, object, int]]:
        return [("", stream, start) for start in sampler.batch_at(n).tolist()]

    return batch_at


def _mixture_draws(data, meta: dict, mixture, rank: int, world: int):
    """batch_at(n) -> [(source name, its train stream, start in it), ...], as training draws."""
    from lit_gpt_scratch.data.mixture_data import MixtureStreams
    from lit_gpt_scratch.data.train_windows import mixture_sampler

    streams = MixtureStreams(data.data_dir, meta, mixture)
    sampler = mixture_sampler(
        data.get("windows", "random"), data.data_dir, streams, [e.weight for e in mixture],
        data.block_size + 1, data.batch_size, data.seed, rank, world,
    )  # fmt: skip

    def batch_at(n: int) -> list[tuple[str, object, int]]:
        return [
            (streams.names[i], streams.train_parts[i], start) for i, start in sampler.draws_at(n)
        ]

    return batch_at
