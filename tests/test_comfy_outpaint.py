"""OutpaintPad inside real ComfyUI (COMFYUI_PATH): executor runs, and equivalence with core's
ImagePadForOutpaint where the semantics coincide (grey fill, quadratic feathering)."""

from __future__ import annotations

import pytest
import torch

import comfy_harness as ch

PAD_DEFAULTS = dict(size_mode="per_side", left=0, top=0, right=0, bottom=0, target_width=0, target_height=0,
                    anchor="center", multiple="1", fill="grey", color="#808080", seed=0, feathering=8,
                    feather_curve="quadratic", overlap=0, mask_mode="soft")


def _prompt(image_name: str, ours: dict | None = None, core: dict | None = None, extra: dict | None = None) -> dict:
    p = {"1": {"class_type": "LoadImage", "inputs": {"image": image_name}}}
    if ours is not None:
        p["2"] = {"class_type": "OutpaintPad", "inputs": {"image": ["1", 0], **PAD_DEFAULTS, **ours}}
        p["3"] = {"class_type": "PreviewImage", "inputs": {"images": ["2", 0]}}
    if core is not None:
        p["4"] = {"class_type": "ImagePadForOutpaint", "inputs": {"image": ["1", 0], **core}}
        p["5"] = {"class_type": "PreviewImage", "inputs": {"images": ["4", 0]}}
    p.update(extra or {})
    return p


@pytest.fixture
def image_name(comfy_env):
    return comfy_env.put_input_image(comfy_env.synthetic_image(1, 48, 64), "outpaint_src.png")


def test_schema_and_widget_order(comfy_env):
    info = comfy_env.node_info("OutpaintPad")
    assert info["input_order"]["required"] == ["image", *PAD_DEFAULTS.keys()]
    assert info["input_order"]["optional"] == ["mask"]
    assert info["output"] == ["IMAGE", "MASK", "INT", "INT", "INT", "INT"]
    assert info["output_name"] == ["image", "mask", "left", "top", "right", "bottom"]
    assert info["category"].startswith("alignnoise")


def test_executes_through_executor(comfy_env, image_name):
    res = comfy_env.run_prompt(_prompt(image_name, ours=dict(left=5, top=0, right=9, bottom=3, multiple="8",
                                                             fill="edge", feathering=6, overlap=2)))
    image, mask, left, top, right, bottom = res.outputs("2")
    src = res.outputs("1")[0]
    # 64 + 14 = 78 -> 80 (2 extra split over left/right), 48 + 3 = 51 -> 56 (5 extra to bottom)
    assert (left, top, right, bottom) == (6, 0, 10, 8)
    assert image.shape == (1, 56, 80, 3) and mask.shape == (1, 56, 80)
    assert torch.equal(image[:, :48, 6:70], src)
    assert torch.all(mask[:, :, :6] == 1) and torch.all(mask[:, 48:] == 1)
    assert torch.all(mask[:, :40, 6 + 8 : 70 - 8] == 0)  # beyond overlap + feathering (2 + 6)
    assert torch.equal(image[:, :48, 0], src[:, :, 0])  # per-pixel edge replicate


@pytest.mark.parametrize("pads", [dict(left=16, top=8), dict(left=24), dict(top=16, left=0)])
def test_matches_core_left_top_exactly(comfy_env, image_name, pads):
    core = dict(left=0, top=0, right=0, bottom=0, feathering=10) | pads
    res = comfy_env.run_prompt(_prompt(image_name, ours=dict(pads, feathering=10), core=core))
    ours_img, ours_mask = res.outputs("2")[:2]
    core_img, core_mask = res.outputs("4")
    assert torch.equal(ours_img, core_img)
    assert torch.equal(ours_mask, core_mask)  # bit-exact, quadratic ramp included


def test_matches_core_right_bottom_up_to_core_off_by_one(comfy_env, image_name):
    """Core counts right/bottom distances from 1, so its ramp there sits one pixel further out;
    ours is mirror-symmetric. Everything else coincides."""
    pads = dict(left=0, top=0, right=16, bottom=8)
    res = comfy_env.run_prompt(_prompt(image_name, ours=dict(pads, feathering=12), core=dict(pads, feathering=12)))
    ours_img, ours_mask = res.outputs("2")[:2]
    core_img, core_mask = res.outputs("4")
    assert torch.equal(ours_img, core_img)
    h, w = 48, 64
    assert torch.equal(ours_mask[:, h:], core_mask[:, h:]) and torch.equal(ours_mask[:, :, w:], core_mask[:, :, w:])
    o, c = ours_mask[0, :h, :w], core_mask[0, :h, :w]
    # right side only (rows away from the bottom ramp): core[c] == ours[c-1]
    assert torch.equal(c[: h - 12, 1:], o[: h - 12, :-1])
    # bottom side only (columns away from the right ramp): core[r] == ours[r-1]
    assert torch.equal(c[1:, : w - 12], o[:-1, : w - 12])
    assert o[0, w - 1] == 1.0 and c[0, w - 1] == pytest.approx((11 / 12) ** 2)


def test_core_skips_feathering_we_do_not(comfy_env, image_name):
    pads = dict(left=16, top=0, right=0, bottom=0)
    res = comfy_env.run_prompt(_prompt(image_name, ours=dict(pads, feathering=24), core=dict(pads, feathering=24)))
    core_mask = res.outputs("4")[1]
    ours_mask = res.outputs("2")[1]
    assert torch.all(core_mask[0, :, 16:] == 0)  # 2*24 >= 48 rows: core silently drops the feather
    assert torch.all(ours_mask[0, :, 16:16 + 23] > 0) and torch.all(ours_mask[0, :, 16 + 24:] == 0)


def test_batch_and_loadimage_placeholder_mask(comfy_env, image_name):
    extra = {"6": {"class_type": "RepeatImageBatch", "inputs": {"image": ["1", 0], "amount": 3}}}
    p = _prompt(image_name, ours=dict(left=8, bottom=8, fill="noise", seed=5, mask_mode="hard"), extra=extra)
    p["2"]["inputs"]["image"] = ["6", 0]
    p["2"]["inputs"]["mask"] = ["1", 1]  # LoadImage's 64x64 zero placeholder (PNG without alpha)
    res = comfy_env.run_prompt(p)
    image, mask = res.outputs("2")[:2]
    assert image.shape == (3, 56, 72, 3) and mask.shape == (3, 56, 72)
    assert set(mask.unique().tolist()) == {0.0, 1.0}
    src = res.outputs("1")[0]
    assert all(torch.equal(image[i, :48, 8:], src[0]) for i in range(3))


def test_target_mode_anchor(comfy_env, image_name):
    res = comfy_env.run_prompt(_prompt(image_name, ours=dict(size_mode="target", target_width=128, target_height=64,
                                                             anchor="left", multiple="64", fill="reflect")))
    image, mask, left, top, right, bottom = res.outputs("2")
    assert (left, top, right, bottom) == (0, 8, 64, 8)
    assert image.shape == (1, 64, 128, 3)


def test_bad_input_clear_error(comfy_env, image_name):
    with pytest.raises(ch.PromptError, match=r"Target canvas 32x32 .* smaller than the source image 64x48"):
        comfy_env.run_prompt(_prompt(image_name, ours=dict(size_mode="target", target_width=32, target_height=32)))
    with pytest.raises(ch.PromptError, match="color"):
        comfy_env.run_prompt(_prompt(image_name, ours=dict(left=8, fill="color", color="not-a-colour")))


def test_mask_size_mismatch_error_names_shapes(comfy_env, image_name):
    extra = {"7": {"class_type": "SolidMask", "inputs": {"value": 1.0, "width": 32, "height": 32}}}
    p = _prompt(image_name, ours=dict(left=8), extra=extra)
    p["2"]["inputs"]["mask"] = ["7", 0]
    with pytest.raises(ch.PromptError, match=r"\(32, 32\).*\(48, 64\).*\(1, 48, 64, 3\)"):
        comfy_env.run_prompt(p)


def test_pad_box_ints_drive_core_imagecrop(comfy_env, image_name):
    """The four INT outputs wire straight into core nodes: ImageCrop(x=left, y=top) cuts the original back out."""
    extra = {"8": {"class_type": "ImageCrop", "inputs": {"image": ["2", 0], "width": 64, "height": 48,
                                                         "x": ["2", 2], "y": ["2", 3]}},
             "9": {"class_type": "PreviewImage", "inputs": {"images": ["8", 0]}}}
    res = comfy_env.run_prompt(_prompt(image_name, ours=dict(size_mode="target", target_width=100, target_height=90,
                                                             anchor="bottom_right", multiple="8", fill="symmetric"),
                                       extra=extra))
    left, top = res.outputs("2")[2:4]
    assert (left, top) == (40, 48)  # canvas 104x96, source at the bottom right
    assert torch.equal(res.outputs("8")[0], res.outputs("1")[0])


def test_hard_mask_feeds_vae_encode_for_inpaint(comfy_env, image_name):
    """hard mode is what VAEEncodeForInpaint expects: its noise_mask is our mask unchanged (grow 0)."""
    ckpt = comfy_env.make_checkpoint("sd20", name="outpaint_vae_only.safetensors", with_clip=False)
    extra = {
        "6": {"class_type": "RepeatImageBatch", "inputs": {"image": ["1", 0], "amount": 2}},
        "10": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "11": {"class_type": "VAEEncodeForInpaint", "inputs": {"pixels": ["2", 0], "vae": ["10", 2],
                                                               "mask": ["2", 1], "grow_mask_by": 0}},
        "12": {"class_type": "SaveLatent", "inputs": {"samples": ["11", 0], "filename_prefix": "outpaint_test"}},
    }
    p = _prompt(image_name, ours=dict(left=16, top=8, feathering=6, overlap=2, mask_mode="hard", fill="edge",
                                      multiple="8"), extra=extra)
    p["2"]["inputs"]["image"] = ["6", 0]
    res = comfy_env.run_prompt(p)
    image, mask = res.outputs("2")[:2]
    latent = res.outputs("11")[0]
    assert image.shape == (2, 56, 80, 3) and mask.shape == (2, 56, 80)
    assert latent["samples"].shape[0] == 2 and latent["samples"].shape[-2:] == (7, 10)
    assert torch.equal(latent["noise_mask"][:, 0], mask)
