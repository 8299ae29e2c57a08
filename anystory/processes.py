"""Several processes on a machine without a GPU: what accelerate needs to be told to join them."""

from __future__ import annotations

import os

import torch


def cpu_processes() -> bool:
    """Several processes (`accelerate launch --multi_gpu`, torchrun) on a machine without a GPU:
    accelerate then needs `cpu=True` to join them on CPU (gloo); else each would run alone."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    xpu = getattr(torch, "xpu", None)
    return not torch.cuda.is_available() and not (xpu is not None and xpu.is_available())
