"""Host-to-device copies that overlap with the GPU's work.

A batch cut from a CPU tensor is pinned (page-locked) and copied with
``non_blocking=True`` when it goes to a CUDA device, as a DataLoader with
``pin_memory=True`` would: the copy runs on the DMA engine while the host prepares the
next call. On a CPU device nothing is copied.
"""

from __future__ import annotations

import torch
from torch import Tensor


def to_device(t: Tensor, device: torch.device) -> Tensor:
    """``t`` on ``device``: pinned and asynchronous from host memory to CUDA."""
    if device.type == "cuda" and t.device.type == "cpu":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)
