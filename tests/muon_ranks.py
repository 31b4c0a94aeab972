"""Muon on one rank of a gloo group, for tests/test_optim.py:

    python tests/muon_ranks.py RANK WORLD PORT OUT

Every rank takes the same steps on the same weights and gradients (as under DDP) and saves
its weights and state to ``OUT/rank{RANK}.pt``, with the number of matrices it orthogonalized
itself. ``train`` also runs in a plain process.
"""

from __future__ import annotations

import os
import sys

import torch

from lit_gpt_scratch.train import optimizers as optim
from lit_gpt_scratch.train.optimizers import Muon

# three stacks: an odd one (padded on 2 ranks), one of a single matrix (one rank's share is
# all padding), and a tall one
SHAPES = [(24, 16)] * 3 + [(16, 40)] + [(40, 16)] * 2
FLAGGED_STEP = 2  # NaN gradients, the guard's flag set: the ranks still gather


def train(distribute: bool, steps: int = 4) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    matrices = [torch.nn.Parameter(torch.randn(s, generator=g)) for s in SHAPES]
    vectors = [torch.nn.Parameter(torch.randn(16, generator=g))]
    groups = [{"params": matrices, "role": "matrix"}, {"params": vectors, "role": "vector"}]
    opt = Muon(groups, weight_decay=0.1, distribute=distribute)
    for step in range(steps):
        g = torch.Generator().manual_seed(100 + step)
        for p in matrices + vectors:
            p.grad = torch.randn(p.shape, generator=g)
            if step == FLAGGED_STEP:
                p.grad.fill_(float("nan"))
        opt.found_inf = torch.tensor(float(step == FLAGGED_STEP))
        opt.step()
    out = {f"weight{i}": p.detach() for i, p in enumerate(matrices + vectors)}
    for i, p in enumerate(matrices + vectors):
        out |= {f"{key}{i}": value for key, value in opt.state[p].items()}
    return out


if __name__ == "__main__":
    rank, world, port, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    orthogonalized = []

    def counting(x, steps):
        orthogonalized.append(x.size(0))
        return newton_schulz(x, steps)

    newton_schulz, optim.newton_schulz = optim.newton_schulz, counting
    result = train(distribute=True)
    torch.save({**result, "orthogonalized": orthogonalized}, f"{out}/rank{rank}.pt")
    torch.distributed.destroy_process_group()
