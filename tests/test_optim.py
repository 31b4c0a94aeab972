"""Muon's batched step: the same updates as a per-matrix loop, a number of ops that does not
grow with depth, the orthogonalization split across DDP ranks, and flat shards refused."""

from __future__ import annotations

import copy
import functools
import math
import socket
import subprocess
import sys
from pathlib import Path

import muon_ranks
import pytest
import torch

from lit_gpt_scratch.bench.optimizer_ops import count_step_ops
from lit_gpt_scratch.errors import UserError
from lit_gpt_scratch.model.gpt import GPT
from lit_gpt_scratch.train.optimizers import Muon, newton_schulz, orthogonalize
from lit_gpt_scratch.train.param_groups import param_groups

TESTS = Path(__file__).resolve().parent
SHAPES = [(24, 16), (16, 40), (24, 16), (40, 16), (24, 16)]  # stacks of 3, 1 and 1, interleaved


def matrices() -> list[torch.nn.Parameter]:
    g = torch.Generator().manual_seed(0)
    return [torch.nn.Parameter(torch.randn(s, generator=g)) for s in SHAPES]


def reference_steps(weights, grads_per_step, lr, mu, weight_decay, ns_steps=5):
    """Muon one matrix at a time: momentum, Nesterov, orthogonalize, scale, weight decay."""
    weights = [w.detach().clone() for w in weights]
    buffers = [torch.zeros_like(w) for w in weights]
    for grads in grads_per_step:
        for w, g, buf in zip(weights, grads, buffers, strict=True):
            buf.lerp_(g, 1 - mu)
            update = orthogonalize(g.lerp(buf, mu), ns_steps)  # Nesterov
            scale = math.sqrt(max(1.0, w.size(0) / w.size(1)))
            w.mul_(1 - lr * weight_decay)
            w.sub_(lr * scale * update)
    return weights, buffers


def test_batched_muon_matches_a_per_matrix_loop():
    params = matrices()
    g = torch.Generator().manual_seed(1)
    grads = [[torch.randn(s, generator=g) for s in SHAPES] for _ in range(4)]
    lr, mu, decay = 0.02, 0.95, 0.1
    expected, buffers = reference_steps(params, grads, lr, mu, decay)
    opt = Muon([{"params": params, "role": "matrix"}], lr=lr, momentum=mu, weight_decay=decay)
    for step_grads in grads:
        for p, grad in zip(params, step_grads, strict=True):
            p.grad = grad
        opt.step()
    for p, w, buf in zip(params, expected, buffers, strict=True):
        torch.testing.assert_close(p.detach(), w, rtol=0, atol=1e-6)
        torch.testing.assert_close(opt.state[p]["momentum_buffer"], buf, rtol=1e-6, atol=1e-7)
        assert set(opt.state[p]) == {"momentum_buffer"}  # the state checkpoints hold


def test_newton_schulz_of_a_stack_is_that_of_each_matrix():
    x = torch.randn(3, 40, 16, generator=torch.Generator().manual_seed(2))
    stacked = newton_schulz(x)
    assert stacked.shape == x.shape and stacked.dtype == torch.bfloat16
    for i in range(3):
        torch.testing.assert_close(stacked[i].float(), orthogonalize(x[i]), rtol=0, atol=0)


def small(n_layer: int) -> GPT:
    torch.manual_seed(0)
    return GPT(vocab_size=97, block_size=16, n_layer=n_layer, n_head=2, d_model=32)


def test_a_muon_step_costs_the_same_ops_at_any_depth():
    counts = {}
    for n_layer in (2, 6):
        model = small(n_layer)
        counts[n_layer] = count_step_ops(Muon(param_groups(model)), model)
    assert counts[2].ops.total() == counts[6].ops.total() < 250, counts
    assert counts[2].matmuls == counts[6].matmuls == 4 * 3 * 5  # 4 shapes, 3 per NS step


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_under_ddp_the_ranks_split_the_orthogonalization_and_agree_bitwise(tmp_path):
    port, script = str(free_port()), str(TESTS / "muon_ranks.py")
    ranks = [
        subprocess.Popen([sys.executable, script, str(rank), "2", port, str(tmp_path)],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for rank in range(2)
    ]  # fmt: skip
    try:
        outputs = [rank.communicate(timeout=60)[0] for rank in ranks]
    finally:
        for rank in ranks:
            rank.kill()
    assert [rank.returncode for rank in ranks] == [0, 0], outputs
    got = [torch.load(tmp_path / f"rank{rank}.pt") for rank in range(2)]
    # per step, each rank's share of the stacks of 3, 1 and 2 matrices (padded to 4, 2, 2)
    assert got[0].pop("orthogonalized") == got[1].pop("orthogonalized") == [2, 1, 1] * 4
    alone = muon_ranks.train(distribute=False)
    for key, value in alone.items():
        assert torch.equal(got[0][key], value) and torch.equal(got[1][key], value), key


def test_muon_refuses_a_flat_shard_in_the_matrix_group():
    groups = [{"params": [*matrices(), torch.nn.Parameter(torch.zeros(8))], "role": "matrix"}]
    with pytest.raises(UserError) as error:
        Muon(groups)
    message = str(error.value)
    assert "\n" not in message
    assert message == (
        "model.optimizer Muon needs whole weight matrices, but parameter #5 of the matrix "
        "group is 1-D (FSDP shards parameters): use AdamW under FSDP, or DDP"
    )


def test_a_compiled_newton_schulz_gives_the_same_step(monkeypatch):
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="eager"))
    weights = {}
    for compile in (False, True):
        params = matrices()
        opt = Muon([{"params": params, "role": "matrix"}], compile_newton_schulz=compile)
        for p in params:
            p.grad = torch.ones_like(p)
        opt.step()
        weights[compile] = [p.detach() for p in params]
    assert counters["stats"]["unique_graphs"] >= 1
    for eager, compiled in zip(weights[False], weights[True], strict=True):
        assert torch.equal(eager, compiled)


def test_a_copied_muon_keeps_its_options_and_steps():
    params = matrices()
    opt = Muon([{"params": params, "role": "matrix"}], distribute=False)
    twin = copy.deepcopy(opt)
    assert twin.distribute is False and twin.compile_newton_schulz is None
    for p in twin.param_groups[0]["params"]:
        p.grad = torch.ones_like(p)
    twin.step()
