"""ZoomOutpaintKeyframes and ZoomInterpolate inside real ComfyUI (skipped without COMFYUI_PATH)."""

from __future__ import annotations

import pytest
import torch

from alignnoise_core import zoom as Z

H, W = 64, 96  # non-square on purpose; multiples of 8
K = 2
FPK = 5


def _keyframe_node(model_src, image_src, **overrides):
    inputs = {"image": image_src, "model": [model_src, 0], "positive": ["2", 0], "negative": ["3", 0],
              "vae": [model_src, 2], "zoom_steps": K, "zoom_factor": 2.0, "pad_px": 0, "seed": 7, "steps": 2,
              "cfg": 4.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0, "overlap": 4,
              "mask_blur": 4, "fill": "reflect", "alignnoise": "off", "balance_iterations": 1}
    inputs.update(overrides)
    return {"class_type": "ZoomOutpaintKeyframes", "inputs": inputs}


def _interp_node(src, **overrides):
    inputs = {"keyframes": src, "zoom_factor": 2.0, "pad_px": 0, "frames_per_keyframe": FPK, "direction": "out",
              "schedule": "geometric", "repaste": True, "feather": 4.0, "start_hold": 0, "end_hold": 0,
              "loop": "none", "filter": "bicubic", "frame_start": 0, "frame_count": 0}
    inputs.update(overrides)
    return {"class_type": "ZoomInterpolate", "inputs": inputs}


def _run_keyframes(comfy_env, kind, extra_nodes=None):
    ckpt = comfy_env.make_checkpoint(kind)
    image = comfy_env.put_input_image(comfy_env.synthetic_image(1, H, W, seed=3), "zoom_start.png")
    prompt = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": "nebula, stars"}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": "frame, border"}},
        "4": {"class_type": "LoadImage", "inputs": {"image": image}},
        "5": _keyframe_node("1", ["4", 0]),
        "6": _interp_node(["5", 0]),
        "7": {"class_type": "PreviewImage", "inputs": {"images": ["6", 0]}},
    }
    prompt.update(extra_nodes or {})
    return comfy_env.run_prompt(prompt)


@pytest.fixture(scope="module")
def sd15_run(comfy_env):
    return _run_keyframes(comfy_env, "sd15")


@pytest.fixture(scope="module")
def sd15_inpaint_run(comfy_env):
    extra = {
        "8": _keyframe_node("1", ["4", 0], zoom_steps=1, alignnoise="stages 1+2"),
        "9": {"class_type": "PreviewImage", "inputs": {"images": ["8", 0]}},
    }
    return _run_keyframes(comfy_env, "sd15_inpaint", extra)


@pytest.fixture(scope="module")
def comfy_env(request):
    import comfy_harness

    comfy_harness.require_comfyui()
    return comfy_harness


def _check_keyframes(run):
    start = run.outputs("4")[0]
    kf = run.outputs("5")[0]
    assert kf.shape == (K + 1, H, W, 3)
    assert kf.dtype == torch.float32
    assert torch.equal(kf[0], start[0])
    alpha = Z.paste_back_alpha(H, W, 2.0, overlap=4)
    keep = alpha == 1.0
    assert int(keep.sum()) == (H // 2 - 8) * (W // 2 - 8)
    for k in range(K):
        canvas, rect = Z.shrink_to_center(kf[k], 2.0)
        # The known centre is exactly the previous keyframe shrunk by the zoom factor.
        assert torch.equal(kf[k + 1][keep], canvas[keep])
        # The border was generated (not the reflect fill) and is a valid image.
        border = Z.outpaint_mask(H, W, 2.0, overlap=4, blur=0) == 1.0
        assert float((kf[k + 1][border] - canvas[border]).abs().mean()) > 0.01
        assert 0.0 <= float(kf[k + 1].min()) and float(kf[k + 1].max()) <= 1.0
    return kf


def _check_frames(run, kf):
    frames, count, total = run.outputs("6")
    assert count == total == K * FPK + 1
    assert frames.shape == (count, H, W, 3)
    assert torch.equal(frames[0], kf[0]) and torch.equal(frames[-1], kf[-1])
    assert torch.equal(frames, Z.render_frames(kf, Z.ZoomSettings(frames_per_keyframe=FPK, feather=4.0)))


def test_keyframes_4_channel_model_with_noise_mask(sd15_run):
    kf = _check_keyframes(sd15_run)
    _check_frames(sd15_run, kf)


def test_keyframes_9_channel_inpainting_model(sd15_inpaint_run):
    kf = _check_keyframes(sd15_inpaint_run)
    _check_frames(sd15_inpaint_run, kf)


def test_alignnoise_stages_option_runs_each_outpaint(sd15_inpaint_run):
    plain = sd15_inpaint_run.outputs("5")[0]
    aligned = sd15_inpaint_run.outputs("8")[0]
    assert aligned.shape == (2, H, W, 3)
    assert torch.equal(aligned[0], plain[0])
    keep = Z.paste_back_alpha(H, W, 2.0, overlap=4) == 1.0
    assert torch.equal(aligned[1][keep], plain[1][keep])  # same known centre
    assert not torch.equal(aligned[1], plain[1])  # different (optimised + refined) noise in the border


def test_inpaint_conditioning_equals_core_node(comfy_env):
    # Our 9-channel plumbing is InpaintModelConditioning(noise_mask=True), value for value.
    import comfy.sd
    import folder_paths
    import nodes

    from alignnoise_core.comfy_host import common

    ckpt = folder_paths.get_full_path("checkpoints", comfy_env.make_checkpoint("sd15_inpaint"))
    with torch.inference_mode():
        _, _, vae, _ = comfy.sd.load_checkpoint_guess_config(ckpt, output_vae=True, output_clip=False)
        canvas, _ = Z.shrink_to_center(comfy_env.synthetic_image(1, H, W)[0], 2.0)
        mask = Z.outpaint_mask(H, W, 2.0, overlap=4, blur=4)
        pos, neg = comfy_env.fake_conditioning(), comfy_env.fake_conditioning(seed=1)
        ours = common.inpaint_conditioning(pos, neg, vae, canvas[None], mask)
        core = nodes.InpaintModelConditioning().encode(pos, neg, canvas[None], vae, mask[None], noise_mask=True)
    for a, b in zip(ours[:2], core[:2]):
        assert torch.equal(a[0][1]["concat_latent_image"], b[0][1]["concat_latent_image"])
        assert torch.equal(a[0][1]["concat_mask"], b[0][1]["concat_mask"])
    assert torch.equal(ours[2]["samples"], core[2]["samples"])
    assert torch.equal(ours[2]["noise_mask"], core[2]["noise_mask"])


def test_interpolate_frame_range_and_options_through_executor(comfy_env):
    a = comfy_env.put_input_image(comfy_env.synthetic_image(1, 48, 80, seed=1), "zoom_a.png")
    b = comfy_env.put_input_image(comfy_env.synthetic_image(1, 48, 80, seed=2), "zoom_b.png")
    opts = dict(frames_per_keyframe=4, direction="in", start_hold=2, loop="ping-pong", pad_px=20)
    prompt = {
        "1": {"class_type": "LoadImage", "inputs": {"image": a}},
        "2": {"class_type": "LoadImage", "inputs": {"image": b}},
        "3": {"class_type": "ImageBatch", "inputs": {"image1": ["1", 0], "image2": ["2", 0]}},
        "4": _interp_node(["3", 0], **opts),
        "5": _interp_node(["3", 0], frame_start=3, frame_count=4, **opts),
        "6": {"class_type": "PreviewImage", "inputs": {"images": ["4", 0]}},
        "7": {"class_type": "PreviewImage", "inputs": {"images": ["5", 0]}},
    }
    run = comfy_env.run_prompt(prompt)
    keyframes = run.outputs("3")[0]
    full, count, total = run.outputs("4")
    part, part_count, part_total = run.outputs("5")
    assert total == part_total == count == Z.frame_count(2, 4, 2, 0, "ping-pong") == 2 * (4 + 1 + 2) - 2
    assert part_count == 4 and torch.equal(part, full[3:7])
    assert torch.equal(full[0], keyframes[1]) and torch.equal(full[2], keyframes[1])  # zoom in, held
    assert torch.equal(full[6], keyframes[0])  # the turning point of the ping-pong
    settings = Z.ZoomSettings(zoom=(80 + 40) / 80, frames_per_keyframe=4, feather=4.0, direction="in",
                              start_hold=2, loop="ping-pong")
    assert torch.equal(full, Z.render_frames(keyframes, settings))


def test_clear_errors(comfy_env):
    kf_node = comfy_env.node_class("ZoomOutpaintKeyframes")
    interp = comfy_env.node_class("ZoomInterpolate")
    good = torch.rand(1, 64, 64, 3)
    with torch.inference_mode():
        with pytest.raises(ValueError, match="multiples of 8"):
            kf_node.execute(torch.rand(1, 60, 64, 3), None, None, None, None, zoom_steps=2)
        with pytest.raises(ValueError, match="zoom factor must be > 1"):
            kf_node.execute(good, None, None, None, None, zoom_steps=2, zoom_factor=1.0)
        with pytest.raises(ValueError, match="K = 0"):
            kf_node.execute(good, None, None, None, None, zoom_steps=0)
        with pytest.raises(ValueError, match="zoom factor must be > 1"):
            interp.execute(torch.rand(2, 32, 32, 3), zoom_factor=0.5)
        with pytest.raises(ValueError, match="frame_start"):
            interp.execute(torch.rand(2, 32, 32, 3), frames_per_keyframe=2, frame_start=50)
