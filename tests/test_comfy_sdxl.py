"""AttentionBalanceNoiseOptimize on a tiny in-process SDXL model built from ComfyUI's own classes
(COMFYUI_PATH): SDXL's layout puts the 1/32-pixel level (with the middle block) at level 2, its
conditioning needs a pooled output (``y``/ADM), and both the 9-channel inpaint model and the
4-channel ``noise_mask`` path must work; the input model stays untouched and the NOISE samples."""

from __future__ import annotations

import pytest
import torch

import comfy_harness as ch
from test_comfy_stage1 import _random_noise, _run as run_node, _sample, assert_model_untouched

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

NODE = "AttentionBalanceNoiseOptimize"
LATENT_HW = (16, 24)  # 128x192 px -> 1/32-pixel level 4x6 tokens
PIXEL_HW = (LATENT_HW[0] * 8, LATENT_HW[1] * 8)

# SDXL's block layout scaled down: 3 levels (channel_mult [1,2,4]), 2 res blocks per level, no attention
# at the latent level, depth 1 at 1/16 px, depth 2 at 1/32 px and in the middle (SDXL: 2 / 10 / 10).
# model_channels 32 with SDXL's num_head_channels 64 (from SDXL.unet_extra_config) -> 1 and 2 heads.
_SDXL_UNET = {
    "use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True, "legacy": False,
    "num_classes": "sequential", "adm_in_channels": 2816, "model_channels": 32, "num_res_blocks": [2, 2, 2],
    "channel_mult": [1, 2, 4], "transformer_depth": [0, 0, 1, 1, 2, 2], "transformer_depth_middle": 2,
    "transformer_depth_output": [0, 0, 0, 1, 1, 1, 2, 2, 2], "use_linear_in_transformer": True, "context_dim": 2048,
    "use_temporal_attention": False, "use_temporal_resblock": False,
}
# 1/32-pixel level of that layout: input 7-8, middle, output 0-2, two transformer blocks each
LEVEL2_KEYS = [("input", 7, 0), ("input", 7, 1), ("input", 8, 0), ("input", 8, 1), ("middle", 0, 0),
               ("middle", 0, 1), ("output", 0, 0), ("output", 0, 1), ("output", 1, 0), ("output", 1, 1),
               ("output", 2, 0), ("output", 2, 1)]

_models: dict = {}


def tiny_sdxl(in_channels: int = 4, seed: int = 0):
    """A tiny SDXL ModelPatcher built under inference_mode (inference-tensor weights, as when
    CheckpointLoaderSimple loads inside the executor). ``comfy.supported_models.SDXL.get_model`` calls
    ``set_inpaint()`` itself for in_channels > 4 (ComfyUI detects 9-channel SDXL inpaint checkpoints as
    SDXL), so the 9-channel variant is the real SDXL-inpainting code path."""
    import comfy.model_base
    import comfy.model_patcher
    import comfy.supported_models

    key = (in_channels, seed)
    if key not in _models:  # building is cheap-ish but shared; tests never mutate the BaseModel
        with torch.inference_mode():
            cfg = comfy.supported_models.SDXL(dict(_SDXL_UNET, in_channels=in_channels))
            cfg.set_inference_dtype(torch.float32, None)
            model = cfg.get_model({})
            ch._init_params(model, seed)
        assert type(model) is comfy.model_base.SDXL
        assert model.model_config.unet_config["num_head_channels"] == 64
        assert (len(model.concat_keys) > 0) == (in_channels == 9)
        _models[key] = model
    return comfy.model_patcher.ModelPatcher(_models[key], load_device=torch.device("cpu"),
                                            offload_device=torch.device("cpu"))


def sdxl_conditioning(seed: int = 0) -> list:
    """CONDITIONING as SDXL's CLIPTextEncode makes it: cross-attn (1,77,2048) + pooled_output (1,1280)
    (``model_base.SDXL.encode_adm`` reads ``pooled_output`` and the size entries)."""
    g = torch.Generator().manual_seed(seed)
    return [[torch.randn(1, 77, 2048, generator=g),
             {"pooled_output": torch.randn(1, 1280, generator=g), "width": PIXEL_HW[1], "height": PIXEL_HW[0]}]]


def _mask(b=1, border=32):
    h, w = PIXEL_HW
    m = torch.ones(b, h, w)
    m[:, border:h - border, border:w - border] = 0
    return m


def _setup(in_channels, seed=0):
    """Tiny SDXL + conds + latent (+ inpaint concat or noise_mask), all made under inference_mode."""
    import comfy.samplers
    import node_helpers

    model = tiny_sdxl(in_channels)
    with torch.inference_mode():
        g = torch.Generator().manual_seed(seed)
        pos = sdxl_conditioning(seed)
        neg = sdxl_conditioning(seed + 1)
        lat = torch.randn(1, 4, *LATENT_HW, generator=g)
        mask = _mask()
        latent = {"samples": lat}
        if in_channels == 9:
            extra = {"concat_latent_image": lat, "concat_mask": mask[:, None]}
            pos = node_helpers.conditioning_set_values(pos, extra)
            neg = node_helpers.conditioning_set_values(neg, extra)
        else:
            latent["noise_mask"] = mask[:, None]
        sigmas = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), "normal", 3).cpu()
    return model, pos, neg, latent, mask, sigmas


def _run(model, pos, neg, latent, sigmas, iterations=2, **kw):
    return run_node(model, pos, neg, latent, sigmas, iterations=iterations, **kw)


# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("in_channels", [9, 4], ids=["9ch_inpaint", "4ch_noise_mask"])
def test_node_uses_the_1_32_level_with_the_middle_block(comfy_env, in_channels):
    from alignnoise_core.comfy_host import common, stage1

    model, pos, neg, latent, mask, sigmas = _setup(in_channels)
    info = common.model_info(model)
    assert (info.family, info.config_name, info.is_inpaint) == ("SDXL", "SDXL", in_channels == 9)
    with torch.inference_mode():
        run = stage1.attention_balance(model, pos, neg, latent, sigmas, 3, mask=mask, iterations=2, loss_threshold=0.0)
    assert run.level == 2 and run.keys == LEVEL2_KEYS and run.notes == []
    assert run.result.grid == (4, 6) and run.result.forwards == 2 and run.result.backwards == 2
    assert all(torch.isfinite(torch.tensor(l)).all() for l in run.result.losses)

    out = _run(model, pos, neg, latent, sigmas, iterations=2, mask=mask)
    noise, preview, report = out.args
    assert "AlignNoise stage 1 on SDXL: attention level 1/32 px, 4x6 tokens, 12 self-attention layers" in report, report
    assert "no self-attention at the 1/32-pixel level" not in report
    assert "UNet passes: 2 forward(s) with grad, 2 backward(s)" in report
    assert preview.shape == (1, PIXEL_HW[0], 2 * PIXEL_HW[1] + 4, 3)
    with torch.inference_mode():
        z = noise.generate_noise(latent)
        rnd = _random_noise(7).generate_noise(latent)
    assert z.shape == rnd.shape == (1, 4, *LATENT_HW) and not torch.equal(z, rnd)


def test_loss_decreases_with_paper_defaults(comfy_env):
    from alignnoise_core.comfy_host import stage1
    from alignnoise_core.balance import MINMAX_EPS

    model, pos, neg, latent, mask, sigmas = _setup(9, seed=3)
    with torch.inference_mode():  # paper: lr 0.01, 10 iterations; threshold 0 forces all of them
        run = stage1.attention_balance(model, pos, neg, latent, sigmas, 5, mask=mask, iterations=10, lr=0.01,
                                   loss_threshold=0.0, tau=0.15)
    r = run.result
    losses = [l[0] for l in r.losses]
    assert len(losses) == 10 and r.forwards == 10 and r.backwards == 10
    assert losses[-1] < losses[0], losses
    # the noise actually returned (re-evaluated once after the last update) beats the initial noise too
    src, out = r.as_src_after[0], r.as_out_after[0]
    loss_after = out / (src + MINMAX_EPS) + max(0.0, 0.15 - out)
    assert loss_after < losses[0], (loss_after, losses)
    assert r.as_src_before[0] != src


def test_model_untouched_sampling_bit_identical(comfy_env):
    assert_model_untouched(*_setup(9, seed=2), run=_run)


def test_noise_drives_sampler_custom_advanced(comfy_env):
    model, pos, neg, latent, mask, sigmas = _setup(4, seed=5)
    out = _run(model, pos, neg, latent, sigmas, iterations=2, mask=mask, cfg=2.0)
    ours = _sample(model, out.args[0], latent, sigmas, pos, neg, cfg=2.0)
    ref = _sample(model, _random_noise(7), latent, sigmas, pos, neg, cfg=2.0)
    assert ours.shape == (1, 4, *LATENT_HW) and torch.isfinite(ours).all()
    assert not torch.equal(ours, ref)


def test_gradient_checkpointing_same_result(comfy_env):
    """SDXL's target level includes the middle block and output 0-2: checkpointing skips exactly those
    transformers and still reproduces the plain run."""
    from alignnoise_core.comfy_host import stage1

    model, pos, neg, latent, mask, sigmas = _setup(9, seed=4)
    with torch.inference_mode():
        runs = [stage1.attention_balance(model, pos, neg, latent, sigmas, 2, mask=mask, iterations=3, loss_threshold=0.0,
                                     gradient_checkpointing=gc) for gc in (False, True)]
    assert [l[0] for l in runs[1].result.losses] == pytest.approx([l[0] for l in runs[0].result.losses], abs=1e-6)
    assert torch.allclose(runs[1].noise, runs[0].noise, atol=1e-6)
