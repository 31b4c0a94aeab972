"""Optimizers that LitGPT's param groups plug into (chosen in YAML as ``model.optimizer``).

Both take ``module.param_groups``: three groups tagged ``role`` matrix / embedding /
vector. AdamW treats them alike (the vectors without weight decay); Muon updates the
matrices its own way and the rest with AdamW.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.optim.adamw import adamw as functional_adamw

from lit_gpt_scratch.errors import UserError, check_above, check_at_least, check_in


class AdamW(torch.optim.AdamW):
    """``torch.optim.AdamW`` with GPT-2-style defaults and the fused kernel.

    ``fused=True`` (the default) updates every parameter in one kernel on CUDA and on CPU: on
    the 2-core CPU a 27M-parameter step takes 12 ms fused against 77 ms with ``foreach``
    (BENCHMARKS.md). It also lets the divergence guard skip a step on the device, without a
    host sync (``train/divergence.py``). ``fused=False`` uses the ``foreach`` implementation.
    """

    def __init__(
        self,
        params,
        lr: float = 6e-4,
        betas: tuple[float, float] = (0.9, 0.95),
        eps: float = 1e-8,
        weight_decay: float = 0.1,
        fused: bool = True,
    ):
        check_at_least("model.optimizer.init_args.lr", lr, 0)
        check_at_least("model.optimizer.init_args.weight_decay", weight_decay, 0)
        check_adam_options(betas, eps)
        super().__init__(
            params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, fused=fused
        )


def check_adam_options(betas: tuple[float, float], eps: float) -> None:
    for i, beta in enumerate(betas):
        check_in(f"model.optimizer.init_args.betas[{i}]", beta, 0.0, 1.0)
    check_above("model.optimizer.init_args.eps", eps, 0)


def skips_on_device(optimizer: torch.optim.Optimizer) -> bool:
    """Whether ``optimizer.step`` honours a ``found_inf`` tensor: when it is 1, the update is
    skipped on the device (weights, moments and step count untouched), so the host never
    has to read the flag. torch's fused Adam, AdamW, SGD and Adagrad do (the mechanism its
    GradScaler uses, and the attribute it checks), and so does ``Muon``."""
    return bool(
        getattr(optimizer, "_step_supports_amp_scaling", False)
        or getattr(optimizer, "honours_found_inf", False)
    )


def newton_schulz(x: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """``orthogonalize`` for a stack of same-shape matrices at once: (n, rows, cols) in, the
    same shape out, in bf16. Each iteration is one ``bmm`` and two ``baddbmm``: with
    ``A = X X^T``, ``B = b A + c A A``, then ``X = a X + B X``."""
    a, b, c = 3.4445, -4.7750, 2.0315
    x = x.bfloat16()
    tall = x.size(-2) > x.size(-1)
    if tall:  # iterate on the short side: X X^T is the smaller product
        x = x.mT
    x = x / (torch.linalg.vector_norm(x, dim=(-2, -1), keepdim=True) + 1e-7)  # into [0, 1]
    for _ in range(steps):
        gram = torch.bmm(x, x.mT)  # (n, short, short)
        poly = torch.baddbmm(gram, gram, gram, beta=b, alpha=c)
        x = torch.baddbmm(x, poly, x, beta=a)
    return x.mT if tall else x


def orthogonalize(g: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """The nearest semi-orthogonal matrix to ``g`` (its ``U V^T``), approximately: a quintic
    Newton-Schulz iteration in bf16, tuned to push every singular value to about 1 in a
    few steps rather than to converge exactly (Jordan et al., Muon). (rows, cols)."""
    return newton_schulz(g[None], steps)[0].to(g.dtype)


class Muon(torch.optim.Optimizer):
    """Muon for the blocks' weight matrices, AdamW for everything else (modded-nanogpt, nanochat).

    A matrix's update is its Nesterov momentum, orthogonalized (``orthogonalize``): every
    direction of the step gets the same size, however skewed the gradient. The embeddings,
    the head and the vectors (groups whose ``role`` is not ``matrix``) take AdamW steps with
    their own learning rate. A group's ``lr`` is what the schedule scales.

    A step costs a fixed number of kernels, whatever the depth: the matrices are stacked by
    shape, each stack takes one batched Newton-Schulz iteration (``newton_schulz``), and the
    elementwise work runs as ``torch._foreach_*`` ops over all matrices at once and as
    torch's fused AdamW kernel for the other groups. Under DDP each rank orthogonalizes only
    its share of every stack and an all-gather hands every rank the whole of it, so the
    ranks apply identical updates. A ``found_inf`` flag set on the optimizer (LitGPT's
    divergence guard) skips the step on the device: weights, buffers and step counts stay
    bitwise as they were, and the host never reads the flag. The state per parameter is
    ``momentum_buffer`` for a matrix; ``step``, ``exp_avg`` and ``exp_avg_sq`` for the rest.

    Args:
        params: ``module.param_groups`` (groups tagged with ``role``). The matrix
            group's parameters must be whole 2-D matrices (not FSDP's flat shards).
        lr: Muon's learning rate, for the matrices.
        momentum: Muon's momentum.
        adamw_lr: AdamW's learning rate, for every other group.
        betas, eps: AdamW's.
        weight_decay: Decoupled weight decay (scaled by each group's lr), for every group
            that does not set its own.
        ns_steps: Newton-Schulz iterations per matrix update.
        distribute: Under ``torch.distributed`` with more than one rank, split the
            orthogonalization across the ranks (each rank must hold the same weights and
            gradients, as under DDP). False: every rank does all of it.
        compile_newton_schulz: ``torch.compile`` the Newton-Schulz iteration. None: on CUDA.
    """

    def __init__(
        self,
        params,
        lr: float = 0.02,
        momentum: float = 0.95,
        adamw_lr: float = 3e-3,
        betas: tuple[float, float] = (0.9, 0.95),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        ns_steps: int = 5,
        distribute: bool = True,
        compile_newton_schulz: bool | None = None,
    ):
        for key, value in dict(lr=lr, adamw_lr=adamw_lr, weight_decay=weight_decay).items():
            check_at_least(f"model.optimizer.init_args.{key}", value, 0)
        check_in("model.optimizer.init_args.momentum", momentum, 0.0, 1.0)
        check_adam_options(betas, eps)
        check_at_least("model.optimizer.init_args.ns_steps", ns_steps, 1)
        groups = [dict(g) for g in params]
        if not all(isinstance(g, dict) and "role" in g for g in groups):
            raise ValueError("Muon needs param groups tagged with a role (module.param_groups)")
        for group in groups:
            if group["role"] != "matrix":
                group.setdefault("lr", adamw_lr)
        defaults = dict(lr=lr, momentum=momentum, betas=betas, eps=eps,
                        weight_decay=weight_decay, ns_steps=ns_steps)  # fmt: skip
        super().__init__(groups, defaults)
        self.distribute = distribute
        self.compile_newton_schulz = compile_newton_schulz
        self._newton_schulz = None  # chosen at the first step, once the device is known

    def __getstate__(self) -> dict:  # a copy keeps the options (torch's keeps only the state)
        options = {"distribute": self.distribute, "_newton_schulz": None,
                   "compile_newton_schulz": self.compile_newton_schulz}  # fmt: skip
        return {**super().__getstate__(), **options}

    def add_param_group(self, param_group: dict) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        for i, p in enumerate(group["params"] if group.get("role") == "matrix" else []):
            if p.dim() != 2:
                why = " (FSDP shards parameters)" if p.dim() == 1 else ""
                raise UserError(
                    f"model.optimizer Muon needs whole weight matrices, but parameter #{i} of "
                    f"the matrix group is {p.dim()}-D{why}: use AdamW under FSDP, or DDP"
                )

    # found_inf (a 0/1 device tensor, set by LitGPT's divergence guard) gates every change of
    # a step, so a flagged step leaves weights and state bitwise as they were, with no sync.
    # Not _step_supports_amp_scaling: a GradScaler would then expect Muon to unscale.
    honours_found_inf = True

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        found_inf = getattr(self, "found_inf", None)
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            if group["role"] == "matrix":
                self._muon(group, params, found_inf)
            else:
                self._adamw(group, params, found_inf)
        return loss

    def _muon(self, group: dict, params: list[torch.Tensor], found_inf) -> None:
        lr, mu, device = group["lr"], group["momentum"], params[0].device
        keep = torch.ones((), device=device)  # 0.0 on a flagged step: every change times 0
        if found_inf is not None:
            keep = 1.0 - found_inf.to(device, torch.float32)
        live = keep > 0
        stacks: dict[tuple, list[torch.Tensor]] = {}  # same-shape matrices go together
        for p in params:
            stacks.setdefault((p.shape, p.dtype), []).append(p)
        momentum_weight = (1 - mu) * keep
        updated, updates = [], []
        for (shape, dtype), mats in stacks.items():
            # a skipped step's gradient may be NaN, and 0 x NaN is NaN: zero it instead
            grads = torch.where(live, torch.stack([p.grad for p in mats]), 0.0)  # (n, rows, cols)
            buffers = [self._momentum_buffer(p) for p in mats]
            momentum = torch.stack(buffers).lerp_(grads, momentum_weight)
            torch._foreach_copy_(buffers, momentum.unbind(0))
            nesterov = grads.lerp_(momentum, mu)
            ortho = self._orthogonalize_stack(nesterov, group["ns_steps"])
            # the same RMS for any shape: tall matrices' updates are scaled up
            scale = math.sqrt(max(1.0, shape[0] / shape[1]))
            updates += ortho.to(dtype).mul_(keep * (lr * scale)).unbind(0)
            updated += mats
        if group["weight_decay"]:
            torch._foreach_mul_(updated, 1 - lr * group["weight_decay"] * keep)
        torch._foreach_sub_(updated, updates)

    def _momentum_buffer(self, p: torch.Tensor) -> torch.Tensor:
        state = self.state[p]
        if "momentum_buffer" not in state:
            state["momentum_buffer"] = torch.zeros_like(p)
        return state["momentum_buffer"]

    def _orthogonalize_stack(self, stack: torch.Tensor, steps: int) -> torch.Tensor:
        """``newton_schulz`` of a stack (n, rows, cols). Split across the ranks, each rank
        orthogonalizes ceil(n / world) matrices (the last shares padded with zeros, whose
        result is zero) and an all-gather puts them together, on every step in the same order."""
        if self._newton_schulz is None:
            compile = self.compile_newton_schulz
            if compile is None:
                compile = stack.device.type == "cuda"
            self._newton_schulz = torch.compile(newton_schulz) if compile else newton_schulz
        world = self._world_size()
        if world == 1:
            return self._newton_schulz(stack, steps)
        n, share = stack.size(0), -(-stack.size(0) // world)
        rank = dist.get_rank()
        mine = stack[rank * share : (rank + 1) * share]
        if mine.size(0) < share:
            mine = F.pad(mine, (0, 0, 0, 0, 0, share - mine.size(0)))
        mine = self._newton_schulz(mine, steps).contiguous()
        gathered = mine.new_empty((world * share, *mine.shape[1:]))
        if dist.get_backend() == "gloo":  # CPU: the list form, which gloo always supports
            dist.all_gather(list(gathered.chunk(world)), mine)
        else:  # all_gather_into_tensor, renamed all_gather_single in newer torch
            gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
            gather(gathered, mine)
        return gathered[:n]

    def _world_size(self) -> int:
        if self.distribute and dist.is_available() and dist.is_initialized():
            return dist.get_world_size()
        return 1

    def _adamw(self, group: dict, params: list[torch.Tensor], found_inf) -> None:
        steps, exp_avgs, exp_avg_sqs = [], [], []
        for p in params:
            state = self.state[p]
            if not state:
                state["step"] = torch.zeros((), device=p.device)
                state["exp_avg"] = torch.zeros_like(p)
                state["exp_avg_sq"] = torch.zeros_like(p)
            if state["step"].device != p.device:  # a checkpoint from another device
                state["step"] = state["step"].to(p.device, torch.float32)
            steps.append(state["step"])
            exp_avgs.append(state["exp_avg"])
            exp_avg_sqs.append(state["exp_avg_sq"])
        beta1, beta2 = group["betas"]
        if found_inf is not None:
            found_inf = found_inf.to(torch.float32)
        # torch's fused AdamW kernel: one kernel for the group, skipped on the device when
        # found_inf is 1 (the step counts are put back), so a NaN gradient never enters
        functional_adamw(
            params, [p.grad for p in params], exp_avgs, exp_avg_sqs, [], steps, fused=True,
            found_inf=found_inf, amsgrad=False, beta1=beta1, beta2=beta2, lr=group["lr"],
            weight_decay=group["weight_decay"], eps=group["eps"], maximize=False,
        )  # fmt: skip
