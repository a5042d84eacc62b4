"""FreeSizeOutpaint inside real ComfyUI (skipped without COMFYUI_PATH): the executor on generated
checkpoints, bit-for-bit equality with SamplerCustomAdvanced, the blog's four-pass order, UNet counts,
and bad input rejected before any model call."""

from __future__ import annotations

import math

import pytest
import torch

H, W = 64, 64
STEPS = 2
SEED = 11


def _pad(left=0, top=0, right=0, bottom=0, mask_mode="soft", feathering=8):
    return {"class_type": "OutpaintPad", "inputs": {
        "image": ["4", 0], "size_mode": "per_side", "left": left, "top": top, "right": right, "bottom": bottom,
        "target_width": 0, "target_height": 0, "anchor": "center", "multiple": "8", "fill": "blur",
        "color": "#808080", "seed": 0, "feathering": feathering, "feather_curve": "quadratic", "overlap": 0,
        "mask_mode": mask_mode}}


def _freesize(**overrides):
    inputs = {"model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0], "vae": ["1", 2], "image": ["5", 0],
              "mask": ["5", 1], "sampler": ["6", 0], "sigmas": ["7", 0], "noise_seed": SEED, "cfg": 4.0,
              "window": 0, "overlap": 0.5, "order": "raster", "hierarchical": False, "blend": "alpha"}
    inputs.update(overrides)
    return {"class_type": "FreeSizeOutpaint", "inputs": inputs}


def _base(comfy_env, kind, pad, **freesize):
    ckpt = comfy_env.make_checkpoint(kind)
    name = comfy_env.put_input_image(comfy_env.synthetic_image(1, H, W, seed=5), "freesize_src.png")
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": "a wide landscape"}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": "seam, border"}},
        "4": {"class_type": "LoadImage", "inputs": {"image": name}},
        "5": pad,
        "6": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler"}},
        "7": {"class_type": "BasicScheduler", "inputs": {"model": ["1", 0], "scheduler": "normal", "steps": STEPS,
                                                         "denoise": 1.0}},
        "8": _freesize(**freesize),
        "9": {"class_type": "PreviewImage", "inputs": {"images": ["8", 0]}},
    }


def _reference_nodes(kind, image_src, mask_src, first="20"):
    """VAEEncode/InpaintModelConditioning -> SamplerCustomAdvanced -> VAEDecode on the same inputs."""
    n = int(first)
    ids = [str(n + i) for i in range(6)]
    nodes = {ids[0]: {"class_type": "RandomNoise", "inputs": {"noise_seed": SEED}}}
    if kind.endswith("inpaint"):
        nodes[ids[1]] = {"class_type": "InpaintModelConditioning", "inputs": {
            "positive": ["2", 0], "negative": ["3", 0], "vae": ["1", 2], "pixels": image_src, "mask": mask_src,
            "noise_mask": True}}
        pos, neg, latent = [ids[1], 0], [ids[1], 1], [ids[1], 2]
    else:
        nodes[ids[1]] = {"class_type": "VAEEncode", "inputs": {"pixels": image_src, "vae": ["1", 2]}}
        nodes[ids[5]] = {"class_type": "SetLatentNoiseMask", "inputs": {"samples": [ids[1], 0], "mask": mask_src}}
        pos, neg, latent = ["2", 0], ["3", 0], [ids[5], 0]
    nodes[ids[2]] = {"class_type": "CFGGuider", "inputs": {"model": ["1", 0], "positive": pos, "negative": neg,
                                                           "cfg": 4.0}}
    nodes[ids[3]] = {"class_type": "SamplerCustomAdvanced", "inputs": {
        "noise": [ids[0], 0], "guider": [ids[2], 0], "sampler": ["6", 0], "sigmas": ["7", 0], "latent_image": latent}}
    nodes[ids[4]] = {"class_type": "VAEDecode", "inputs": {"samples": [ids[3], 0], "vae": ["1", 2]}}
    nodes[str(n + 6)] = {"class_type": "PreviewImage", "inputs": {"images": [ids[4], 0]}}
    return nodes, ids[4]


@pytest.mark.parametrize("kind", ["sd15", "sd15_inpaint"])
def test_canvas_in_one_window_is_samplercustomadvanced_bit_for_bit(comfy_env, kind):
    prompt = _base(comfy_env, kind, _pad(left=16, right=48))  # 128 x 64 < 512: one window
    ref, decode_id = _reference_nodes(kind, ["5", 0], ["5", 1])
    prompt.update(ref)
    result = comfy_env.run_prompt(prompt)
    canvas, mask = result.outputs("5")[0], result.outputs("5")[1]
    out, out_mask, layout, report = result.outputs("8")
    decoded = result.outputs(decode_id)[0]
    m = mask[0][..., None]
    assert out.shape == canvas.shape == (1, H, W + 64, 3)
    expected = canvas[0] * (1 - m) + decoded[0] * m
    diff = (out[0] - expected).abs()
    assert torch.equal(out[0], expected), (float(diff.max()), diff.amax(-1).nonzero()[:5], float(decoded.min()),
                                           float(decoded.max()))
    assert torch.equal(out[0][mask[0] == 0], canvas[0][mask[0] == 0])  # source pixels exactly
    assert torch.equal(out_mask, mask)
    assert layout.shape == (1, H, W + 64, 3)
    assert report.startswith("FreeSizeOutpaint: 1 window of <= 512 px (raster)") and f"UNet evaluations {STEPS} " in report


def test_raster_windows_count_unet_calls_and_keep_the_source(comfy_env):
    prompt = _base(comfy_env, "sd15", _pad(left=64, right=128), window=64)  # 256 x 64 canvas, 64 px windows
    prompt["10"] = _freesize(window=64, hierarchical=True)
    prompt["11"] = {"class_type": "PreviewImage", "inputs": {"images": ["10", 0]}}
    prompt["12"] = _freesize(window=64, order="nearest_first")
    prompt["13"] = {"class_type": "PreviewImage", "inputs": {"images": ["12", 0]}}
    result = comfy_env.run_prompt(prompt)
    canvas, mask = result.outputs("5")[0], result.outputs("5")[1]
    keep = mask[0] == 0
    lefts = {}
    for node, extra in (("8", 0), ("10", 1), ("12", 0)):
        out, _, layout, report = result.outputs(node)
        assert torch.equal(out[0][keep], canvas[0][keep])
        rows = report.splitlines()[1:]
        lefts[node] = [int(r.split("x=")[1].split()[0]) for r in rows]
        # stride 32: raster windows at 0, 32, 64 (source), ... 192; the ones with nothing to generate dropped
        assert f"UNet evaluations {(len(rows) + extra) * STEPS} " in report, report
        assert layout.shape == (1, H, W + 192, 3)
        assert (out[0][mask[0] == 1] - canvas[0][mask[0] == 1]).abs().amax() > 0
    assert lefts["8"] == sorted(lefts["8"])
    # nearest_first starts on the source itself (its soft, feathered edge is to be generated and the
    # window is almost all known), then grows outwards, alternating sides on ties.
    assert lefts["12"][:3] == [64, 32, 96] and lefts["12"] != lefts["8"]
    assert "hierarchical" in result.outputs("10")[3]
    assert not torch.equal(result.outputs("10")[0], result.outputs("8")[0])  # the constraint changes windows


def test_inpainting_sampler_plugs_in(comfy_env):
    """A SAMPLER of the pack's inpainting samplers (DDNM: one model call per step) reads each window's
    noise mask: every window runs it, the source stays exact, and the result differs from euler's.
    nearest_first: every window holds known pixels (the inpainting samplers refuse a window with none,
    which raster's first corner window is)."""
    prompt = _base(comfy_env, "sd15", _pad(left=64, right=64), window=64, order="nearest_first")
    prompt["14"] = {"class_type": "DDNMSampler", "inputs": {"eta": 0.85, "travel_length": 1, "travel_repeat": 1,
                                                            "sigma_y": 0.0}}
    prompt["10"] = _freesize(window=64, order="nearest_first", sampler=["14", 0])
    prompt["11"] = {"class_type": "PreviewImage", "inputs": {"images": ["10", 0]}}
    result = comfy_env.run_prompt(prompt)
    canvas, mask = result.outputs("5")[0], result.outputs("5")[1]
    euler, ddnm = result.outputs("8"), result.outputs("10")
    windows = len(ddnm[3].splitlines()) - 1
    assert windows >= 2 and f"UNet evaluations {windows * STEPS} " in ddnm[3], ddnm[3]
    assert torch.equal(ddnm[0][0][mask[0] == 0], canvas[0][mask[0] == 0])
    assert not torch.equal(ddnm[0], euler[0])


def test_sides_reproduces_the_blog_four_pass_order(comfy_env):
    # Blog geometry scaled to 64 px + 16 px per side: canvases 80x64, 80x80, 96x80, 96x96 (w x h).
    pad = _pad(left=16, top=16, right=16, bottom=16, mask_mode="hard", feathering=0)
    prompt = _base(comfy_env, "sd15", pad, window=128, order="sides")
    prompt["15"] = {"class_type": "ImageCrop", "inputs": {"image": ["5", 0], "width": 80, "height": 64, "x": 0,
                                                          "y": 16}}
    prompt["16"] = {"class_type": "CropMask", "inputs": {"mask": ["5", 1], "x": 0, "y": 16, "width": 80,
                                                         "height": 64}}
    ref, decode_id = _reference_nodes("sd15", ["15", 0], ["16", 0])
    prompt.update(ref)
    result = comfy_env.run_prompt(prompt)
    canvas, mask = result.outputs("5")[0], result.outputs("5")[1]
    out, _, _, report = result.outputs("8")
    rows = report.splitlines()[1:]
    assert [r.split(": ", 1)[1] for r in rows] == [
        "x=0 y=16 80x64 left (1024 px)", "x=0 y=0 80x80 top (1280 px)",
        "x=0 y=0 96x80 right (1280 px)", "x=0 y=0 96x96 bottom (1536 px)"]
    assert f"UNet evaluations {4 * STEPS} " in report
    # Pass 1 is SamplerCustomAdvanced on the 80x64 crop (seed = noise_seed); rows 12 px away from the
    # later passes' pending pixels are untouched by their feathered blend.
    ref_left = result.outputs(decode_id)[0][0]
    assert torch.equal(out[0][16 + 12:80 - 12, :16], ref_left[12:64 - 12, :16])
    # No off-by-one: the first column of the right strip (x = 64 + 16) is regenerated like the rest.
    assert bool((mask[0][:, 80] == 1).all())
    assert (out[0][:, 80] - canvas[0][:, 80]).abs().amax(-1).gt(0).float().mean() > 0.9
    assert torch.equal(out[0][mask[0] == 0], canvas[0][mask[0] == 0])


def test_bad_input_is_rejected_before_any_model_call(comfy_env, inference_mode):
    from alignnoise_core.comfy_host import freesize as host

    model = comfy_env.tiny_model()
    calls = []
    hook = model.model.diffusion_model.register_forward_hook(lambda *a: calls.append(1))
    cond = comfy_env.fake_conditioning()
    image = torch.rand(1, 64, 128, 3)
    mask = torch.ones(1, 64, 128)
    mask[:, :, :64] = 0
    sigmas = torch.tensor([14.6, 1.0, 0.0])
    cases = [
        (dict(window=100), "multiple of 8"),
        (dict(overlap=1.0), "overlap"),
        (dict(mask=torch.zeros(1, 64, 128)), "nothing to outpaint"),
        (dict(mask=torch.ones(1, 64, 120)), "'mask' is 120x64 but the image is 128x64"),
        (dict(image=torch.full((1, 64, 128, 3), math.nan)), "'image' contains"),
        (dict(image=torch.rand(2, 64, 128, 3)), "takes ONE canvas image"),
        (dict(image=torch.rand(1, 60, 128, 3), mask=torch.ones(1, 60, 128)), "multiples of 8"),
        (dict(order="spiral"), "order"),
        (dict(blend="magic"), "blend"),
    ]
    try:
        for overrides, match in cases:
            args = dict(image=image, mask=mask, window=64, overlap=0.5, order="raster", blend="alpha")
            args.update(overrides)
            with pytest.raises(ValueError, match=match):
                host.free_size_outpaint(model, cond, cond, None, args.pop("image"), args.pop("mask"), None,
                                        sigmas, 0, 4.0, **args)
    finally:
        hook.remove()
    assert not calls


def test_native_window_per_family(comfy_env, inference_mode):
    """Feature detection from the model config: class name and prediction type (a fresh tiny model
    relabelled as each family, as the config of a real SD2/SDXL/Flux file would report)."""
    import comfy.model_base

    from alignnoise_core.comfy_host import freesize as host

    def as_family(name, model_type=None):
        m = comfy_env.tiny_model()
        m.model.model_config.__class__ = type(name, (type(m.model.model_config),), {})
        if model_type is not None:
            m.model.model_type = model_type
        return host.native_window(m)[0]

    assert host.native_window(comfy_env.tiny_model())[0] == 512  # SD15
    assert as_family("SD20", comfy.model_base.ModelType.V_PREDICTION) == 768  # 768-v
    assert as_family("SD20", comfy.model_base.ModelType.EPS) == 512  # 512-base, 512-inpainting
    assert as_family("SDXL") == 1024
    assert as_family("SomeFutureModel") == 1024


def test_cancel_is_honoured_between_steps(comfy_env, inference_mode):
    """Cancel pressed during the first step of the first window: the node stops after that step."""
    import comfy.model_management
    import comfy.patcher_extension
    import comfy.samplers
    import comfy.sd
    import folder_paths

    from alignnoise_core.comfy_host import freesize as host

    name = comfy_env.make_checkpoint("sd15", name="freesize_nocli_sd15.safetensors", with_clip=False)
    model, _, vae = comfy.sd.load_checkpoint_guess_config(folder_paths.get_full_path("checkpoints", name),
                                                          output_vae=True, output_clip=False)[:3]
    calls = []

    def press_cancel(executor, *args, **kwargs):
        calls.append(1)
        comfy.model_management.interrupt_current_processing(True)
        return executor(*args, **kwargs)

    m = model.clone()
    m.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.APPLY_MODEL, "test_cancel", press_cancel)
    image = comfy_env.synthetic_image(1, 64, 192)
    mask = torch.ones(1, 64, 192)
    mask[:, :, :64] = 0
    sigmas = torch.tensor([14.6, 4.0, 1.0, 0.0])
    try:
        with pytest.raises(comfy.model_management.InterruptProcessingException):
            host.free_size_outpaint(m, comfy_env.fake_conditioning(), comfy_env.fake_conditioning(seed=1), vae, image,
                                    mask, comfy.samplers.sampler_object("euler"), sigmas, 0, 1.0, window=64)
    finally:
        comfy.model_management.interrupt_current_processing(False)
    assert len(calls) == 1  # of 4 windows x 3 steps
