"""The gradient recipe under the conditions of current ComfyUI (dynamic VRAM on NVIDIA), emulated on
the CPU: small modules without any weight wrapper (inference-tensor weights used directly), and
weights handed out as views of one cast buffer that the next layer overwrites. Stage 1 and NMG must
run and give the same result as on the plain model; a plain backward must fail there (so the
emulation really bites)."""

from __future__ import annotations

import pytest
import torch

import comfy_harness as ch
from test_comfy_stage1 import _setup

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


class SharedCastBuffer:
    """A weight wrapper that copies each weight into the start of one buffer and returns a view of
    it: the next layer's weight overwrites the previous one, as streamed/offloaded casts do."""

    def __init__(self):
        self.buffer = None
        self.calls = 0

    def __call__(self, w):
        self.calls += 1
        n = w.numel()
        if self.buffer is None or self.buffer.numel() < n or self.buffer.is_inference() != w.is_inference():
            self.buffer = torch.empty(max(n, 1 << 16), dtype=w.dtype, device=w.device)
        view = self.buffer[:n].view_as(w)
        view.copy_(w)
        return view


def streamed_model(model):
    """A clone whose linear/conv weights stream through one shared buffer; norm layers get no wrapper."""
    m = model.clone()
    cast = SharedCastBuffer()
    wrapped = 0
    for name, module in m.model.named_modules():
        if not hasattr(module, "weight_function") or "norm" in type(module).__name__.lower():
            continue
        if getattr(module, "weight", None) is not None:
            m.add_weight_wrapper(f"{name}.weight", cast)
            wrapped += 1
    assert wrapped > 20
    return m, cast


def test_emulation_breaks_a_plain_backward(comfy_env):
    """Without the pack's gradient session a backward through the streamed model is impossible."""
    from alignnoise_core.comfy_host import common

    model, pos, neg, latent, mask, sigmas = _setup(4)
    m, cast = streamed_model(model)
    errors = []

    def fn(ctx):
        with torch.inference_mode(False), torch.enable_grad():
            z = ctx.noise.detach().clone().requires_grad_(True)
            x = ctx.base_model.model_sampling.noise_scaling(ctx.sigmas[:1], z, ctx.latent_image.clone(), True)
            try:
                (out,) = ctx.calc_cond_batch(["positive"], x, ctx.sigmas[:1].clone())
                out.sum().backward()
            except RuntimeError as e:
                errors.append(str(e))
        return ctx.latent_image

    with torch.inference_mode():
        try:
            common.run_sampler(m, pos, neg, 1.0, latent["samples"], sigmas, fn, noise=torch.randn(1, 4, 16, 16))
        finally:
            common.release_model(m)
    assert errors and ("inplace operation" in errors[0] or "Inference tensors" in errors[0]), errors


@pytest.mark.parametrize("in_channels", [4, 9])
def test_stage1_same_noise_on_the_streamed_model(comfy_env, in_channels):
    from alignnoise_core.comfy_host import stage1

    model, pos, neg, latent, mask, sigmas = _setup(in_channels, seed=5)
    with torch.inference_mode():
        plain = stage1.attention_balance(model, pos, neg, latent, sigmas, 3, mask=mask, iterations=3,
                                         loss_threshold=0.0)
        m, cast = streamed_model(model)
        streamed = stage1.attention_balance(m, pos, neg, latent, sigmas, 3, mask=mask, iterations=3,
                                            loss_threshold=0.0)
    assert cast.calls > 0
    assert not torch.equal(plain.noise, ch.node_class("RandomNoise").execute(3).result[0].generate_noise(latent))
    torch.testing.assert_close(streamed.noise, plain.noise, rtol=1e-6, atol=1e-6)
    assert [l[0] for l in streamed.result.losses] == pytest.approx([l[0] for l in plain.result.losses], rel=1e-6)


def test_nmg_same_edit_on_the_streamed_model(comfy_env):
    import comfy.samplers

    from alignnoise_core.comfy_host import nmg as nmg_host

    model = ch.tiny_model(4, seed=3)
    src, null = ch.fake_conditioning(seed=1), ch.fake_conditioning(seed=2)
    with torch.inference_mode():
        x0 = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0))
        sigmas = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), "normal", 3).cpu()
        maps, inverted = nmg_host.nmg_invert(model, src, {"samples": x0}, sigmas)
        outs = []
        streamed, cast = streamed_model(model)
        for m in (model, streamed):
            guider = nmg_host.nmg_guider(m, src, null, maps, cfg=3.0)
            out = ch.node_class("SamplerCustomAdvanced").execute(
                ch.node_class("DisableNoise").execute().result[0], guider, comfy.samplers.sampler_object("euler"),
                sigmas, inverted)
            outs.append(out.result[0]["samples"].clone())
    assert cast.calls > 0
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-5, atol=1e-5)


def test_in_training_flag_is_set_only_inside_the_session(comfy_env):
    """Where ComfyUI has ``model_management.in_training`` it is on during the gradient block and
    restored after; where it has not, nothing is added to ComfyUI's module."""
    import comfy.model_management as mm

    from alignnoise_core.comfy_host import common

    had = hasattr(mm, "in_training")
    before = getattr(mm, "in_training", None)
    model = ch.tiny_model(4)
    seen = []
    with torch.inference_mode():
        with common.gradient_session(model.model):
            seen.append((torch.is_inference_mode_enabled(), torch.is_grad_enabled(), getattr(mm, "in_training", None)))
    assert seen[0][:2] == (False, True)
    assert hasattr(mm, "in_training") == had and getattr(mm, "in_training", None) == before
    if had:
        assert seen[0][2] is True
