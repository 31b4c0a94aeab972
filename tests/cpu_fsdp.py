"""Lightning's FSDPStrategy on CPU processes (gloo), for the multi-process tests.

Lightning refuses ``FSDPStrategy`` without a GPU, and hands torch's FSDP ``device_id=None`` on
a CPU, which torch refuses too. torch's FSDP itself runs on CPU with ``device_id=cpu``. This
subclass lifts only that: Lightning's check is on the exact class, and here the model is
wrapped with ``device_id=cpu`` before Lightning's own ``_setup_model`` sees it (which then
moves the metrics and applies activation checkpointing as on a GPU). Everything else is
Lightning's FSDPStrategy as ``fit`` runs it. Importable by class_path with tests/ on PYTHONPATH.
"""

from __future__ import annotations

import torch
from lightning.pytorch.strategies import FSDPStrategy
from torch.distributed.fsdp import FullyShardedDataParallel


class CPUFSDPStrategy(FSDPStrategy):
    def _setup_model(self, model: torch.nn.Module) -> torch.nn.Module:
        if self.root_device.type == "cpu" and not isinstance(model, FullyShardedDataParallel):
            model = FullyShardedDataParallel(
                module=model,
                cpu_offload=self.cpu_offload,
                mixed_precision=self.mixed_precision_config,
                sharding_strategy=self.sharding_strategy,
                device_id=torch.device("cpu"),
                **self.kwargs,
            )
            self.kwargs.pop("auto_wrap_policy", None)  # applied: Lightning would warn
        return super()._setup_model(model)
