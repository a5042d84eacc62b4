"""FrozenConstants: gradients through weights autograd may not keep (inference tensors, reused buffers)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from alignnoise_core.autograd_safety import FrozenConstants


def _net_weights(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"conv": torch.randn(6, 3, 3, 3, generator=g) * 0.3, "gn_w": torch.rand(6, generator=g) + 0.5,
            "gn_b": torch.randn(6, generator=g), "lin": torch.randn(5, 6, generator=g) * 0.3,
            "ln_w": torch.rand(5, generator=g) + 0.5, "scale": torch.rand(5, generator=g) + 0.5}


def _forward(x, w, fetch=lambda *t: t):
    """``fetch(*params)`` hands out one layer's parameters (a host's weight cast)."""
    (conv,) = fetch(w["conv"])
    h = F.conv2d(x, conv, padding=1)
    h = F.group_norm(h, 2, *fetch(w["gn_w"], w["gn_b"]))
    h = F.silu(h).mean(dim=(2, 3))
    h = F.linear(h, *fetch(w["lin"]))
    h = F.layer_norm(h, (5,), *fetch(w["ln_w"]))
    (scale,) = fetch(w["scale"])
    return (h * scale).pow(2).sum()  # operator form (__mul__) too


def _reference_grad(x, w):
    xr = x.detach().clone().requires_grad_(True)
    _forward(xr, w).backward()
    return xr.grad


def test_inference_weights_fail_without_and_work_with_the_mode():
    w = _net_weights()
    x = torch.randn(2, 3, 8, 8)
    ref = _reference_grad(x, w)
    with torch.inference_mode():
        w_inf = {k: v.clone() for k, v in w.items()}
    assert all(v.is_inference() for v in w_inf.values())
    with torch.inference_mode(False), torch.enable_grad():
        xr = x.clone().requires_grad_(True)
        with pytest.raises(RuntimeError, match="Inference tensors cannot be saved"):
            _forward(xr, w_inf)
        with FrozenConstants():
            loss = _forward(xr, w_inf)
            loss.backward()
    torch.testing.assert_close(xr.grad, ref, rtol=1e-5, atol=1e-6)


def test_weights_streamed_through_one_reused_buffer():
    """A host that hands each layer a view of one cast buffer (overwritten by the next layer):
    without the mode autograd refuses (or would use stale weights), with it the gradient is exact."""
    w = _net_weights(1)
    x = torch.randn(1, 3, 8, 8)
    ref = _reference_grad(x, w)
    buf = torch.empty(sum(v.numel() for v in w.values()))

    def fetch(*params):  # every layer's parameters go to the start of the same buffer
        views, offset = [], 0
        for t in params:
            view = buf[offset:offset + t.numel()].view_as(t)
            view.copy_(t)
            views.append(view)
            offset += t.numel()
        return views

    xr = x.clone().requires_grad_(True)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        _forward(xr, w, fetch).backward()
    xr.grad = None
    with FrozenConstants():
        _forward(xr, w, fetch).backward()
    torch.testing.assert_close(xr.grad, ref, rtol=1e-5, atol=1e-6)


def test_in_place_ops_and_ops_without_gradient_are_untouched():
    a = torch.zeros(3)
    x = torch.ones(3, requires_grad=True)
    with FrozenConstants():
        a.add_(1.0)
        a[0] = 5.0
        a += 1.0
        y = a * 2  # no argument requires grad: nothing to keep
        z = (x * a).sum()
    assert a.tolist() == [6.0, 2.0, 2.0]
    assert y.tolist() == [12.0, 4.0, 4.0]
    z.backward()
    assert x.grad.tolist() == [6.0, 2.0, 2.0]
