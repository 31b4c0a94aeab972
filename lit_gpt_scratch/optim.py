"""Optimizers that LitGPT's param groups plug into (chosen in YAML as ``model.optimizer``).

Both take ``lit_module.param_groups``: three groups tagged ``role`` matrix / embedding /
vector. AdamW treats them alike (the vectors without weight decay); Muon updates the
matrices its own way and the rest with AdamW.
"""

from __future__ import annotations

import math

import torch


class AdamW(torch.optim.AdamW):
    """``torch.optim.AdamW`` with GPT-2-style defaults and the fused kernel.

    ``fused=True`` (the default) updates every parameter in one kernel on CUDA and on CPU: on
    the 2-core CPU a 27M-parameter step takes 12 ms fused against 77 ms with ``foreach``
    (BENCHMARKS.md). It also lets the divergence guard skip a step on the device, without a
    host sync (``LitGPT.nonfinite``). ``fused=False`` uses the ``foreach`` implementation.
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
        super().__init__(
            params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, fused=fused
        )


def skips_on_device(optimizer: torch.optim.Optimizer) -> bool:
    """Whether ``optimizer.step`` honours a ``found_inf`` tensor: when it is 1, the update is
    skipped on the device (weights, moments and step count untouched), so the host never
    has to read the flag. torch's fused Adam, AdamW, SGD and Adagrad do (the mechanism its
    GradScaler uses, and the attribute it checks), and so does ``Muon``."""
    return bool(
        getattr(optimizer, "_step_supports_amp_scaling", False)
        or getattr(optimizer, "honours_found_inf", False)
    )


def orthogonalize(g: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """The nearest semi-orthogonal matrix to ``g`` (its ``U V^T``), approximately: a quintic
    Newton-Schulz iteration in bf16, tuned to push every singular value to about 1 in a
    few steps rather than to converge exactly (Jordan et al., Muon). (rows, cols)."""
    a, b, c = 3.4445, -4.7750, 2.0315
    x = g.bfloat16()
    tall = x.size(0) > x.size(1)
    if tall:  # iterate on the short side: X X^T is the smaller product
        x = x.T
    x = x / (x.norm() + 1e-7)  # singular values into [0, 1]
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return (x.T if tall else x).to(g.dtype)


class Muon(torch.optim.Optimizer):
    """Muon for the blocks' weight matrices, AdamW for everything else (modded-nanogpt, nanochat).

    A matrix's update is its Nesterov momentum, orthogonalized (``orthogonalize``): every
    direction of the step gets the same size, however skewed the gradient. The embeddings,
    the head and the vectors (groups whose ``role`` is not ``matrix``) take AdamW steps with
    their own learning rate. A group's ``lr`` is what the schedule scales.

    Args:
        params: ``lit_module.param_groups`` (groups tagged with ``role``).
        lr: Muon's learning rate, for the matrices.
        momentum: Muon's momentum.
        adamw_lr: AdamW's learning rate, for every other group.
        betas, eps: AdamW's.
        weight_decay: Decoupled weight decay (scaled by each group's lr), for every group
            that does not set its own.
        ns_steps: Newton-Schulz iterations per matrix update.
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
    ):
        groups = [dict(g) for g in params]
        if not all(isinstance(g, dict) and "role" in g for g in groups):
            raise ValueError("Muon needs param groups tagged with a role (lit_module.param_groups)")
        for group in groups:
            if group["role"] != "matrix":
                group.setdefault("lr", adamw_lr)
        defaults = dict(lr=lr, momentum=momentum, betas=betas, eps=eps,
                        weight_decay=weight_decay, ns_steps=ns_steps)  # fmt: skip
        super().__init__(groups, defaults)

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
            keep = torch.ones((), device=params[0].device)
            if found_inf is not None:
                keep = 1.0 - found_inf.to(params[0].device, torch.float32)
            if group["role"] == "matrix":
                self._muon(group, params, keep)
            else:
                self._adamw(group, params, keep)
        return loss

    @staticmethod
    def _finite_grad(p: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        # a skipped step's gradient may be NaN, and 0 x NaN is NaN: zero it instead
        return torch.where(keep > 0, p.grad, 0.0)

    def _muon(self, group: dict, params: list[torch.Tensor], keep: torch.Tensor) -> None:
        lr, mu = group["lr"], group["momentum"]
        for p in params:
            grad = self._finite_grad(p, keep)
            buf = self.state[p].setdefault("momentum_buffer", torch.zeros_like(p))
            buf.lerp_(grad, (1 - mu) * keep)
            update = orthogonalize(grad.lerp(buf, mu), group["ns_steps"])  # Nesterov
            # the same RMS for any shape: tall matrices' updates are scaled up
            scale = math.sqrt(max(1.0, p.size(0) / p.size(1)))
            p.mul_(1 - lr * group["weight_decay"] * keep)
            p.sub_(update * (lr * scale * keep))

    def _adamw(self, group: dict, params: list[torch.Tensor], keep: torch.Tensor) -> None:
        lr, (beta1, beta2), eps = group["lr"], group["betas"], group["eps"]
        for p in params:
            grad = self._finite_grad(p, keep)
            state = self.state[p]
            if not state:
                state["step"] = torch.zeros((), device=p.device)
                state["exp_avg"] = torch.zeros_like(p)
                state["exp_avg_sq"] = torch.zeros_like(p)
            state["step"] += keep
            m, v = state["exp_avg"], state["exp_avg_sq"]
            t = state["step"].clamp(min=1)  # a skipped first step: no division by zero
            m.lerp_(grad, (1 - beta1) * keep)
            v.lerp_(grad * grad, (1 - beta2) * keep)
            denom = (v / (1 - beta2**t)).sqrt_().add_(eps)
            p.mul_(1 - lr * group["weight_decay"] * keep)
            p.sub_(m / denom * (lr * keep / (1 - beta1**t)))
