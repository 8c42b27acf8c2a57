"""The host's CPU caches, read from the kernel: a network whose working set outgrows the
last-level cache streams its weights from DRAM on every inference, which changes what a
compiler can win ("Does Form Follow Function?" marks that crossing on its plots)."""

from __future__ import annotations

import os
from pathlib import Path

CACHE_DIR = Path("/sys/devices/system/cpu/cpu0/cache")
_UNITS = {"K": 1024, "M": 1024**2, "G": 1024**3}


def parse_size(text: str) -> int:
    """``"32768K"`` -> bytes (the kernel's sysfs notation)."""
    text = text.strip().upper()
    if text and text[-1] in _UNITS:
        return int(text[:-1]) * _UNITS[text[-1]]
    return int(text)


def cpu_caches(root: Path = CACHE_DIR) -> dict[int, int]:
    """Data/unified cache size in bytes per level as one core sees it, e.g. {1: 48K, 2: 1M,
    3: 32M}; empty when the kernel does not say (not Linux, some containers)."""
    sizes: dict[int, int] = {}
    for index in sorted(root.glob("index*")):
        try:
            if (index / "type").read_text().strip() == "Instruction":
                continue
            level = int((index / "level").read_text())
            sizes[level] = max(sizes.get(level, 0), parse_size((index / "size").read_text()))
        except (OSError, ValueError):
            continue
    return sizes


def last_level_cache_bytes(root: Path = CACHE_DIR) -> int:
    """The largest cache level's size in bytes (0 when unknown)."""
    sizes = cpu_caches(root)
    if sizes:
        return sizes[max(sizes)]
    for name in ("SC_LEVEL3_CACHE_SIZE", "SC_LEVEL2_CACHE_SIZE"):  # glibc's view, if any
        try:
            value = os.sysconf(name)
        except (ValueError, OSError):
            continue
        if value and value > 0:
            return int(value)
    return 0
