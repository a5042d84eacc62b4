"""Backpropagate through a frozen model whose weights autograd may not keep.

Gradients w.r.t. a latent (AlignNoise stage 1, Noise Map Guidance, ΠGDM, MCG) need every weight on
the gradient path to be saved for the backward pass. Inside ComfyUI that fails in two ways:

- weights loaded under ``torch.inference_mode()`` are inference tensors, which autograd refuses to
  save ("Inference tensors cannot be saved for backward");
- a host that streams weights (offloaded layers, dynamic VRAM) may hand a layer a *view of a cast
  buffer* that the next layer overwrites in place, so a saved weight would be stale by the time the
  backward runs (or trip autograd's version check).

:class:`FrozenConstants` fixes both at the one place every op passes through: a
``TorchFunctionMode`` that, for an op that records a gradient (an argument requires grad), replaces
each tensor argument that is a constant (no grad, no autograd history: weights, buffers, masks) by a
private copy. The copy is what autograd keeps. Activations on the gradient path are untouched, so
this costs what per-forward weight copies cost (ComfyUI's ``nodes_train.py`` gets the same effect
from identity weight wrappers, which a host may not install on every layer).
"""

from __future__ import annotations

import torch
from torch.overrides import TorchFunctionMode


def _is_constant(t) -> bool:
    return isinstance(t, torch.Tensor) and not t.requires_grad and t.grad_fn is None


def _copy(t):
    return t.clone() if _is_constant(t) else t


def _writes_in_place(func) -> bool:
    name = getattr(func, "__name__", "")
    return (name.endswith("_") and not name.endswith("__")) or name.startswith("__i") or name == "__setitem__"


def _records_gradient(args, kwargs) -> bool:
    for a in args:
        if isinstance(a, torch.Tensor) and a.requires_grad:
            return True
        if type(a) in (list, tuple) and any(isinstance(x, torch.Tensor) and x.requires_grad for x in a):
            return True
    return any(isinstance(v, torch.Tensor) and v.requires_grad for v in kwargs.values())


class FrozenConstants(TorchFunctionMode):
    """Copy constant tensor arguments of every gradient-recording op (see the module docstring).

    In-place ops (``add_``, ``__iadd__``, ``__setitem__``) and ``out=`` calls are left alone: they
    write into their argument.
    Use inside ``torch.inference_mode(False)`` and ``torch.enable_grad()``.
    """

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if torch.is_grad_enabled() and "out" not in kwargs and not _writes_in_place(func) and \
                _records_gradient(args, kwargs):
            args = tuple(type(a)(_copy(x) for x in a) if type(a) in (list, tuple) else _copy(a) for a in args)
            kwargs = {k: _copy(v) for k, v in kwargs.items()}
        return func(*args, **kwargs)
