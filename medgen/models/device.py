"""Where networks run: the default device, and how much memory a device has free."""

from __future__ import annotations

import os

import torch

__all__ = ["default_device", "free_memory"]


def default_device() -> torch.device:
    """The first GPU when there is one, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def free_memory(device: torch.device) -> int | None:
    """Bytes free on ``device``: a GPU's free memory, or the host's available memory (Linux); None if unknown."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None
