"""Process memory readings shared by the benches (Linux /proc; peak = VmHWM after a reset)."""

import re
from pathlib import Path


def status_bytes(key: str) -> int:
    """A /proc/self/status field (``VmRSS``, ``VmHWM``) in bytes."""
    return int(re.search(key + r":\s+(\d+)", Path("/proc/self/status").read_text()).group(1)) * 1024


def reset_peak() -> None:
    """Reset VmHWM to the current RSS (writing 5 to clear_refs), where the kernel allows it."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass
