"""AttentionBalanceNoiseOptimize inside real ComfyUI (COMFYUI_PATH): the node under inference_mode on
the in-process tiny model and through the executor on generated checkpoints; both inpaint paths; the
model is left untouched; RandomNoise equality at 0 iterations; the NOISE drives SamplerCustomAdvanced."""

from __future__ import annotations

import pytest
import torch

import comfy_harness as ch
from autograd_memory import saved_bytes

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

NODE = "AttentionBalanceNoiseOptimize"


def _mask(b=1, h=128, w=128, border=32):
    m = torch.ones(b, h, w)
    m[:, border:h - border, border:w - border] = 0
    return m


def _sigmas(model, steps=4):
    import comfy.samplers

    return comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), "normal", steps).cpu()


def _setup(in_channels, b=1, seed=0):
    """Tiny SD1.5-type model + conds + latent (+ concat or noise_mask), all made under inference_mode."""
    import node_helpers

    model = ch.tiny_model(in_channels)
    with torch.inference_mode():
        g = torch.Generator().manual_seed(seed)
        pos = ch.fake_conditioning(seed=seed)
        neg = ch.fake_conditioning(seed=seed + 1)
        lat = torch.randn(b, 4, 16, 16, generator=g)
        mask = _mask(b)
        latent = {"samples": lat}
        if in_channels == 9:
            pos = node_helpers.conditioning_set_values(pos, {"concat_latent_image": lat, "concat_mask": mask[:, None]})
            neg = node_helpers.conditioning_set_values(neg, {"concat_latent_image": lat, "concat_mask": mask[:, None]})
        else:
            latent["noise_mask"] = mask[:, None]
        sigmas = _sigmas(model)
    return model, pos, neg, latent, mask, sigmas


def _run(model, pos, neg, latent, sigmas, seed=7, iterations=3, threshold=0.0, mask=None, cfg=1.0):
    with torch.inference_mode():
        return ch.node_class(NODE).execute(model, pos, neg, latent, sigmas, seed, cfg, iterations, 0.01, threshold,
                                           0.15, True, mask=mask)


def _sample(model, noise, latent, sigmas, pos, neg, cfg=1.0):
    import comfy.samplers

    with torch.inference_mode():
        guider = comfy.samplers.CFGGuider(model)
        guider.set_conds(pos, neg)
        guider.set_cfg(cfg)
        out = ch.node_class("SamplerCustomAdvanced").execute(noise, guider, comfy.samplers.sampler_object("euler"),
                                                             sigmas, latent)
        return out.result[0]["samples"].clone()


def _random_noise(seed):
    return ch.node_class("RandomNoise").execute(seed).result[0]


# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("in_channels", [9, 4], ids=["9ch_concat", "4ch_noise_mask"])
def test_node_optimises_under_inference_mode(comfy_env, in_channels):
    model, pos, neg, latent, mask, sigmas = _setup(in_channels)
    out = _run(model, pos, neg, latent, sigmas, iterations=4, threshold=0.0, mask=mask)
    noise, preview, report = out.args
    assert "1/32 px, 4x4 tokens, 4 self-attention layers" in report
    assert "UNet passes: 4 forward(s) with grad, 4 backward(s)" in report
    assert preview.shape == (1, 128, 2 * 128 + 4, 3) and 0 <= float(preview.min()) <= float(preview.max()) <= 1
    assert out.ui["text"][0] == report and out.ui["images"]
    with torch.inference_mode():
        z = noise.generate_noise(latent)
        rnd = _random_noise(7).generate_noise(latent)
    assert z.shape == rnd.shape and not torch.equal(z, rnd)
    assert (z - rnd).abs().max() < 0.2  # at most 4 Adam steps of lr 0.01 on mu and log-variance
    # same seed, same output
    again = _run(model, pos, neg, latent, sigmas, iterations=4, threshold=0.0, mask=mask)
    with torch.inference_mode():
        assert torch.equal(again.args[0].generate_noise(latent), z)


def test_loss_decreases_with_paper_defaults_and_report(comfy_env):
    from alignnoise_core.comfy_host import stage1

    model, pos, neg, latent, mask, sigmas = _setup(9, seed=3)
    with torch.inference_mode():
        run = stage1.attention_balance(model, pos, neg, latent, sigmas, 5, mask=mask, iterations=6, loss_threshold=0.0)
    losses = [l[0] for l in run.result.losses]
    assert len(losses) == 6 and min(losses[1:]) < losses[0]
    assert run.result.grid == (4, 4) and run.level == 2
    assert run.keys == [("input", 5, 0), ("middle", 0, 0), ("output", 0, 0), ("output", 1, 0)]


def test_early_stop_is_exact(comfy_env):
    from alignnoise_core.comfy_host import stage1

    model, pos, neg, latent, mask, sigmas = _setup(4, seed=4)
    with torch.inference_mode():
        a = stage1.attention_balance(model, pos, neg, latent, sigmas, 1, mask=mask, iterations=3, loss_threshold=0.0)
        b = stage1.attention_balance(model, pos, neg, latent, sigmas, 1, mask=mask, iterations=3, loss_threshold=0.0,
                                 early_stop=False)
    assert a.result.losses == b.result.losses
    assert torch.equal(a.noise, b.noise)


def test_zero_iterations_equals_random_noise_exactly(comfy_env):
    model, pos, neg, latent, mask, sigmas = _setup(9, b=2)
    latent = dict(latent, batch_index=[3, 5])
    out = _run(model, pos, neg, latent, sigmas, seed=123, iterations=0, mask=mask)
    with torch.inference_mode():
        ours = out.args[0].generate_noise(latent)
        ref = _random_noise(123).generate_noise(latent)
    assert torch.equal(ours, ref)
    assert out.args[0].seed == 123
    assert "iterations = 0" in out.args[2]


def test_empty_mask_returns_unoptimised_noise_and_says_so(comfy_env):
    model, pos, neg, latent, mask, sigmas = _setup(4)
    out = _run(model, pos, neg, latent, sigmas, mask=torch.zeros(1, 128, 128))
    with torch.inference_mode():
        assert torch.equal(out.args[0].generate_noise(latent), _random_noise(7).generate_noise(latent))
    assert "empty mask" in out.args[2]


def test_clear_errors_before_heavy_work(comfy_env):
    model, pos, neg, latent, mask, sigmas = _setup(4)
    with pytest.raises(ValueError, match="no source region"):
        _run(model, pos, neg, latent, sigmas, mask=torch.ones(1, 128, 128))
    plain = {"samples": latent["samples"]}
    with pytest.raises(ValueError, match="which region is outpainted"):
        _run(model, pos, neg, plain, sigmas)
    with pytest.raises(ValueError, match="sigmas"):
        _run(model, pos, neg, latent, torch.zeros(1), mask=mask)


def test_unsupported_model_family_is_named(comfy_env):
    import comfy.supported_models

    model, pos, neg, latent, mask, sigmas = _setup(4)
    model.model.model_config = comfy.supported_models.Flux(dict(model.model.model_config.unet_config))
    with pytest.raises(ValueError, match="Flux"):
        _run(model, pos, neg, latent, sigmas, mask=mask)


def _module_state(model):
    """Per module: its instance attributes (ComfyUI's own loaded flag aside) and weight/bias functions."""
    return {n: (sorted(k for k in vars(m) if k != "comfy_patched_weights"), list(getattr(m, "weight_function", [])),
                list(getattr(m, "bias_function", []))) for n, m in model.model.named_modules()}


@pytest.mark.parametrize("in_channels", [9, 4], ids=["9ch_concat", "4ch_noise_mask"])
def test_gradient_checkpointing_same_noise_less_memory_nothing_left(comfy_env, in_channels):
    model, pos, neg, latent, mask, sigmas = _setup(in_channels, seed=6)
    before = _sample(model, _random_noise(3), latent, sigmas, pos, neg)
    modules = _module_state(model)
    with torch.inference_mode():
        def run(gc):
            return ch.node_class(NODE).execute(model, pos, neg, latent, sigmas, 7, 1.0, 3, 0.01, 0.0, 0.15, True,
                                               mask=mask, gradient_checkpointing=gc)
        plain_bytes, plain = saved_bytes(lambda: run(False))
        ckpt_bytes, ckpt = saved_bytes(lambda: run(True))
        z_plain, z_ckpt = (o.args[0].generate_noise(latent) for o in (plain, ckpt))
    assert torch.allclose(z_ckpt, z_plain, atol=1e-6) and not torch.equal(z_plain, _random_noise(7).generate_noise(latent))
    assert plain.args[2] == ckpt.args[2]  # same losses, AS values and pass counts in the report
    assert ckpt_bytes < 0.6 * plain_bytes
    # the object patches and weight wrappers are gone right after the node (not only after the next
    # load): no instance attribute added to any module, no weight function left, sampling bit-identical
    assert _module_state(model) == modules
    assert torch.equal(_sample(model, _random_noise(3), latent, sigmas, pos, neg), before)


def assert_model_untouched(model, pos, neg, latent, mask, sigmas, run=_run):
    """Sampling before and after the node is bit-identical, and right after the node every module's
    attributes and weight/bias functions are as before; the NOISE holds only plain data."""
    options_before = repr(model.model_options)
    before = _sample(model, _random_noise(11), latent, sigmas, pos, neg)
    modules = _module_state(model)
    out = run(model, pos, neg, latent, sigmas, iterations=3, mask=mask)
    assert _module_state(model) == modules
    after = _sample(model, _random_noise(11), latent, sigmas, pos, neg)
    assert torch.equal(before, after)
    assert repr(model.model_options) == options_before
    assert all(not getattr(m, "weight_function", []) and not getattr(m, "bias_function", [])
               for m in model.model.modules())
    assert set(vars(out.args[0])) <= {"noise", "seed", "source"}  # a plain CPU tensor and an int
    assert not out.args[0].noise.requires_grad


@pytest.mark.parametrize("in_channels", [9, 4], ids=["9ch_concat", "4ch_noise_mask"])
def test_model_untouched_sampling_bit_identical(comfy_env, in_channels):
    assert_model_untouched(*_setup(in_channels, seed=2))


def test_noise_drives_sampler_and_starts_where_the_loss_looked(comfy_env):
    """The optimised NOISE through SamplerCustomAdvanced: finite result, different from RandomNoise's."""
    model, pos, neg, latent, mask, sigmas = _setup(4, seed=5)
    out = _run(model, pos, neg, latent, sigmas, iterations=2, mask=mask)
    ours = _sample(model, out.args[0], latent, sigmas, pos, neg)
    ref = _sample(model, _random_noise(7), latent, sigmas, pos, neg)
    assert torch.isfinite(ours).all() and not torch.equal(ours, ref)


def test_batch_items_optimised_separately(comfy_env):
    from alignnoise_core.comfy_host import stage1

    model, pos, neg, latent, mask, sigmas = _setup(4, b=2, seed=6)
    with torch.inference_mode():
        both = stage1.attention_balance(model, pos, neg, latent, sigmas, 9, mask=mask, iterations=2, loss_threshold=0.0)
    assert both.result.forwards == 2 and len(both.result.losses[0]) == 2
    for i in range(2):
        # item i alone; batch_index makes RandomNoise give it the same initial noise as in the batch
        single = {"samples": latent["samples"][i:i + 1], "noise_mask": latent["noise_mask"][i:i + 1],
                  "batch_index": [i]}
        with torch.inference_mode():
            r = stage1.attention_balance(model, pos, neg, single, sigmas, 9, mask=mask[i:i + 1], iterations=2,
                                     loss_threshold=0.0)
        assert abs(r.result.losses[0][0] - both.result.losses[0][i]) < 1e-4
        assert torch.allclose(r.noise[0], both.noise[i], atol=1e-4)


def test_cfg_above_one_uses_both_conds(comfy_env):
    from alignnoise_core.comfy_host import stage1

    model, pos, neg, latent, mask, sigmas = _setup(9, seed=7)
    with torch.inference_mode():
        one = stage1.attention_balance(model, pos, neg, latent, sigmas, 2, mask=mask, iterations=1, loss_threshold=0.0)
        two = stage1.attention_balance(model, pos, neg, latent, sigmas, 2, mask=mask, cfg=4.0, iterations=1,
                                   loss_threshold=0.0)
    assert one.result.losses[0] != two.result.losses[0]


def test_interrupt_is_honoured_within_one_iteration(comfy_env):
    import comfy.model_management as mm
    import comfy.utils

    model, pos, neg, latent, mask, sigmas = _setup(4)
    calls = []

    def hook(value, total, preview, node_id=None):
        calls.append(value)
        mm.interrupt_current_processing(True)

    comfy.utils.set_progress_bar_global_hook(hook)
    try:
        with pytest.raises(mm.InterruptProcessingException):
            _run(model, pos, neg, latent, sigmas, iterations=10, mask=mask)
    finally:
        comfy.utils.set_progress_bar_global_hook(None)
        mm.interrupt_current_processing(False)
    assert calls == [1]
    # the model is still clean and usable
    _sample(model, _random_noise(1), latent, sigmas, pos, neg)


# --------------------------------------------------------------------------------------------------
# Through the executor (inference_mode, caching, validation) on generated checkpoints
# --------------------------------------------------------------------------------------------------


def _checkpoint_prompt(ckpt, inpaint_model: bool, iterations=2):
    noise_mask = not inpaint_model  # 4-channel model: sample with noise_mask; 9-channel: concat only
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": " ", "clip": ["1", 1]}},
        "3": {"class_type": "LoadImage", "inputs": {"image": "stage1_src.png"}},
        "4": {"class_type": "ImagePadForOutpaint", "inputs": {"image": ["3", 0], "left": 32, "top": 0, "right": 32,
                                                               "bottom": 32, "feathering": 0}},
        "5": {"class_type": "InpaintModelConditioning", "inputs": {
            "positive": ["2", 0], "negative": ["2", 0], "vae": ["1", 2], "pixels": ["4", 0], "mask": ["4", 1],
            "noise_mask": noise_mask}},
        "6": {"class_type": "BasicScheduler", "inputs": {"model": ["1", 0], "scheduler": "normal", "steps": 3,
                                                          "denoise": 1.0}},
        "7": {"class_type": NODE, "inputs": {
            "model": ["1", 0], "positive": ["5", 0], "negative": ["5", 1], "latent_image": ["5", 2],
            "sigmas": ["6", 0], "noise_seed": 2226, "cfg": 1.0, "iterations": iterations, "lr": 0.01,
            "loss_threshold": 0.0, "tau": 0.15, "smooth": True, "mask": ["4", 1]}},
        "8": {"class_type": "CFGGuider", "inputs": {"model": ["1", 0], "positive": ["5", 0], "negative": ["5", 1],
                                                     "cfg": 1.0}},
        "9": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler"}},
        "10": {"class_type": "SamplerCustomAdvanced", "inputs": {
            "noise": ["7", 0], "guider": ["8", 0], "sampler": ["9", 0], "sigmas": ["6", 0], "latent_image": ["5", 2]}},
        "11": {"class_type": "VAEDecode", "inputs": {"samples": ["10", 0], "vae": ["1", 2]}},
        "12": {"class_type": "PreviewImage", "inputs": {"images": ["11", 0]}},
        "13": {"class_type": "PreviewImage", "inputs": {"images": ["7", 1]}},
    }


@pytest.mark.parametrize("kind", ["sd15_inpaint", "sd15"])
def test_executor_on_generated_checkpoint(comfy_env, kind):
    ckpt = comfy_env.make_checkpoint(kind)
    comfy_env.put_input_image(comfy_env.synthetic_image(1, 64, 64)[0], "stage1_src.png")
    result = comfy_env.run_prompt(_checkpoint_prompt(ckpt, inpaint_model=kind.endswith("inpaint")))
    noise, preview, report = result.outputs("7")
    assert "UNet passes: 2 forward(s) with grad, 2 backward(s)" in report, report
    # the generated checkpoints have 2 UNet levels only: the node falls back to the coarsest one and says so
    assert "no self-attention at the 1/32-pixel level" in report
    assert noise.noise.shape == (1, 4, 12, 16) and torch.isfinite(noise.noise).all()
    assert preview.shape == (1, 96, 2 * 128 + 4, 3)
    assert result.ui["7"]["text"][0] == report and result.ui["7"]["images"]
    decoded = result.outputs("11")[0]
    assert decoded.shape == (1, 96, 128, 3) and torch.isfinite(decoded).all()
    assert result.ui["12"]["images"] and result.ui["13"]["images"]


def _three_level_checkpoint(name="random_sd15_inpaint_3level.safetensors"):
    """An SD1.5-inpainting checkpoint with three UNet levels, so the real 1/32-pixel level exists
    (the harness's generated checkpoints have two). Random weights, TAESD VAE, random CLIP-L."""
    import safetensors.torch
    import comfy.ops
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel
    from comfy.taesd.taesd import TAESD

    path = ch._state["work"] / "checkpoints" / name
    if path.exists():
        return name
    cfg = dict(ch._UNET_BASE, model_channels=320, num_res_blocks=[1, 1, 1], channel_mult=[1, 1, 1],
               transformer_depth=[1, 1, 1], transformer_depth_output=[1] * 6, transformer_depth_middle=1,
               context_dim=768, use_linear_in_transformer=False, num_heads=8, in_channels=9,
               operations=comfy.ops.disable_weight_init)
    unet = UNetModel(**cfg)
    ch._init_params(unet, seed=3)
    sd = {f"model.diffusion_model.{k}": v.half() for k, v in unet.state_dict().items()}
    taesd = TAESD()
    ch._init_params(taesd, seed=1)
    sd.update({f"first_stage_model.{k}": v.half() for k, v in taesd.state_dict().items()})
    sd.update(ch._random_clip_l_state_dict())
    safetensors.torch.save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    return name


def test_executor_on_checkpoint_with_the_1_32_level(comfy_env):
    ckpt = _three_level_checkpoint()
    comfy_env.put_input_image(comfy_env.synthetic_image(1, 64, 64)[0], "stage1_src.png")
    result = comfy_env.run_prompt(_checkpoint_prompt(ckpt, inpaint_model=True))
    noise, preview, report = result.outputs("7")
    # 128x96 px -> latent 16x12 -> 1/32-pixel level 4x3 tokens: input 5, middle, output 0, 1
    assert "attention level 1/32 px, 3x4 tokens, 4 self-attention layers" in report, report
    assert "no self-attention at the 1/32-pixel level" not in report
    assert "UNet passes: 2 forward(s) with grad, 2 backward(s)" in report
    assert torch.isfinite(result.outputs("11")[0]).all()


class _TinyModelNode:
    """Test-only V1 node handing the executor the in-process tiny model and fake conditioning."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"in_channels": ("INT", {"default": 4})}}

    RETURN_TYPES = ("MODEL", "CONDITIONING")
    FUNCTION = "load"
    CATEGORY = "testing"

    def load(self, in_channels):
        return (ch.tiny_model(in_channels), ch.fake_conditioning())


def test_executor_on_in_process_tiny_model(comfy_env):
    nodes = comfy_env.init()["nodes"]
    nodes.NODE_CLASS_MAPPINGS["AlignNoiseTestTinyModel"] = _TinyModelNode
    try:
        prompt = {
            "1": {"class_type": "AlignNoiseTestTinyModel", "inputs": {"in_channels": 4}},
            "2": {"class_type": "EmptyLatentImage", "inputs": {"width": 128, "height": 96, "batch_size": 2}},
            "3": {"class_type": "SolidMask", "inputs": {"value": 1.0, "width": 128, "height": 96}},
            "4": {"class_type": "SolidMask", "inputs": {"value": 0.0, "width": 64, "height": 48}},
            "5": {"class_type": "MaskComposite", "inputs": {"destination": ["3", 0], "source": ["4", 0],
                                                            "x": 32, "y": 24, "operation": "multiply"}},
            "6": {"class_type": "SetLatentNoiseMask", "inputs": {"samples": ["2", 0], "mask": ["5", 0]}},
            "7": {"class_type": "BasicScheduler", "inputs": {"model": ["1", 0], "scheduler": "normal", "steps": 3,
                                                              "denoise": 1.0}},
            "8": {"class_type": NODE, "inputs": {
                "model": ["1", 0], "positive": ["1", 1], "negative": ["1", 1], "latent_image": ["6", 0],
                "sigmas": ["7", 0], "noise_seed": 3, "cfg": 1.0, "iterations": 3, "lr": 0.01,
                "loss_threshold": 0.0, "tau": 0.15, "smooth": True}},
            "9": {"class_type": "BasicGuider", "inputs": {"model": ["1", 0], "conditioning": ["1", 1]}},
            "10": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler"}},
            "11": {"class_type": "SamplerCustomAdvanced", "inputs": {
                "noise": ["8", 0], "guider": ["9", 0], "sampler": ["10", 0], "sigmas": ["7", 0],
                "latent_image": ["6", 0]}},
            "12": {"class_type": "PreviewImage", "inputs": {"images": ["8", 1]}},
            "13": {"class_type": "SaveLatent", "inputs": {"samples": ["11", 0], "filename_prefix": "stage1_test"}},
        }
        result = comfy_env.run_prompt(prompt)
    finally:
        del nodes.NODE_CLASS_MAPPINGS["AlignNoiseTestTinyModel"]
    noise, preview, report = result.outputs("8")
    assert "1/32 px, 3x4 tokens" in report, report
    assert report.count("item ") == 2 and "3 forward(s) with grad, 3 backward(s)" in report
    assert noise.noise.shape == (2, 4, 12, 16)
    samples = result.outputs("11")[0]["samples"]
    assert samples.shape == (2, 4, 12, 16) and torch.isfinite(samples).all()
    assert preview.shape == (2, 96, 260, 3)


def test_attention_levels_sdxl_layout(comfy_env):
    """SDXL's layout (3 levels, no attention at the latent level, deep 1/32 level incl. the middle
    block): the 1/32 level is input 7-8, middle 0 and output 0-2, every transformer block."""
    import types

    import comfy.ops
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel
    from alignnoise_core.comfy_host import stage1

    with torch.inference_mode():
        unet = UNetModel(image_size=32, in_channels=4, out_channels=4, model_channels=32, num_res_blocks=2,
                         channel_mult=[1, 1, 1], transformer_depth=[0, 0, 1, 1, 2, 2], context_dim=32, num_heads=2,
                         use_spatial_transformer=True,
                         transformer_depth_middle=2, transformer_depth_output=[0, 0, 0, 1, 1, 1, 2, 2, 2],
                         use_linear_in_transformer=True, operations=comfy.ops.disable_weight_init)
    fake = types.SimpleNamespace(model=types.SimpleNamespace(diffusion_model=unet))
    levels = stage1.attention_levels(fake)
    assert sorted(levels) == [1, 2]
    assert levels[2] == [("input", 7, 0), ("input", 7, 1), ("input", 8, 0), ("input", 8, 1), ("middle", 0, 0),
                         ("middle", 0, 1), ("output", 0, 0), ("output", 0, 1), ("output", 1, 0), ("output", 1, 1),
                         ("output", 2, 0), ("output", 2, 1)]
    assert levels[1] == [("input", 4, 0), ("input", 5, 0), ("output", 3, 0), ("output", 4, 0), ("output", 5, 0)]
