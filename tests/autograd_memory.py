"""What autograd keeps for the backward pass: a deterministic proxy of activation memory, shared by
the gradient-checkpointing tests and ``bench/bench_stage1_comfy.py``."""

from __future__ import annotations

import torch


def saved_bytes(fn):
    """Run ``fn()`` and return ``(bytes saved for backward outside checkpointed regions, fn's result)``.

    Non-reentrant checkpointing installs its own inner hooks, so tensors it recomputes later are not
    counted: with checkpointing on, only the layers' inputs and the uncheckpointed layers show up.
    """
    total = [0]

    def pack(t):
        total[0] += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return total[0], out
