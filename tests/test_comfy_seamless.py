"""SeamlessComposite inside real ComfyUI (COMFYUI_PATH): schema, execution through the executor, exact
offset removal on an outpaint frame, and bit-equality of ``method=alpha`` with core ImageCompositeMasked."""

from __future__ import annotations

import pytest
import torch

import comfy_harness as ch

H, W = 48, 64
NODE_DEFAULTS = dict(method="poisson", band=0, clamp=True, tolerance=1e-6, max_iterations=100)


def _frame_mask_nodes(prompt: dict, feather: int = 0) -> list:
    """SolidMask(1) with a SolidMask(0) rectangle multiplied in: 1 on a 12/10 px border, 0 inside."""
    prompt["10"] = {"class_type": "SolidMask", "inputs": {"value": 1.0, "width": W, "height": H}}
    prompt["11"] = {"class_type": "SolidMask", "inputs": {"value": 0.0, "width": W - 24, "height": H - 20}}
    prompt["12"] = {"class_type": "MaskComposite", "inputs": {"destination": ["10", 0], "source": ["11", 0],
                                                              "x": 12, "y": 10, "operation": "multiply"}}
    if feather:
        prompt["13"] = {"class_type": "FeatherMask", "inputs": {"mask": ["12", 0], "left": feather, "top": feather,
                                                                "right": feather, "bottom": feather}}
        return ["13", 0]
    return ["12", 0]


@pytest.fixture
def images(comfy_env):
    dst = comfy_env.synthetic_image(1, H, W, seed=3)
    dst8 = (dst * 255).round().clamp(20, 230) / 255
    src8 = dst8 + torch.tensor([12.0, -9.0, 5.0]) / 255     # exact 8-bit offsets survive the PNG round trip
    return comfy_env.put_input_image(dst8, "seamless_dst.png"), comfy_env.put_input_image(src8, "seamless_src.png")


def _prompt(images, mask_feather=0, **node):
    p = {"1": {"class_type": "LoadImage", "inputs": {"image": images[0]}},
         "2": {"class_type": "LoadImage", "inputs": {"image": images[1]}}}
    mask = _frame_mask_nodes(p, mask_feather)
    p["3"] = {"class_type": "SeamlessComposite", "inputs": {"destination": ["1", 0], "source": ["2", 0], "mask": mask,
                                                            **NODE_DEFAULTS, **node}}
    p["4"] = {"class_type": "PreviewImage", "inputs": {"images": ["3", 0]}}
    return p, mask


def test_schema(comfy_env):
    info = comfy_env.node_info("SeamlessComposite")
    assert info["input_order"]["required"] == ["destination", "source", "mask", *NODE_DEFAULTS]
    assert info["output"] == ["IMAGE", "MASK"]
    assert info["output_name"] == ["image", "changed"]
    assert info["category"] == "alignnoise/outpaint"
    assert info["input"]["required"]["method"][1]["options"] == ["poisson", "mixed", "color_match", "alpha"]


def test_poisson_removes_a_constant_offset_on_an_outpaint_frame(comfy_env, images):
    prompt, mask_ref = _prompt(images)
    res = comfy_env.run_prompt(prompt)
    dst, src = res.outputs("1")[0], res.outputs("2")[0]
    mask = res.outputs(mask_ref[0])[0]
    image, changed = res.outputs("3")
    assert image.shape == dst.shape and image.dtype == torch.float32
    assert (src - dst).abs().max() > 0.03
    assert (image - dst).abs().max() <= 1e-5               # the source, shifted back to the destination's colours
    assert torch.equal(image[0][mask[0] == 0], dst[0][mask[0] == 0])
    assert bool((changed <= mask).all())


def test_alpha_equals_core_image_composite_masked(comfy_env, images):
    prompt, mask_ref = _prompt(images, mask_feather=6, method="alpha")
    prompt["5"] = {"class_type": "ImageCompositeMasked", "inputs": {"destination": ["1", 0], "source": ["2", 0],
                                                                    "x": 0, "y": 0, "resize_source": False,
                                                                    "mask": mask_ref}}
    prompt["6"] = {"class_type": "PreviewImage", "inputs": {"images": ["5", 0]}}
    res = comfy_env.run_prompt(prompt)
    mask = res.outputs(mask_ref[0])[0]
    assert ((mask > 0) & (mask < 1)).any()
    assert torch.equal(res.outputs("3")[0], res.outputs("5")[0])


def test_soft_mask_and_color_match_run(comfy_env, images):
    for method in ("poisson", "mixed", "color_match"):
        res = comfy_env.run_prompt(_prompt(images, mask_feather=6, method=method, band=2)[0])
        dst = res.outputs("1")[0]
        image = res.outputs("3")[0]
        assert image.shape == dst.shape and bool(torch.isfinite(image).all())
        assert (image - dst).abs().max() < 0.02, method     # offsets removed, up to the soft-blend rounding


def test_size_mismatch_is_a_clear_error(comfy_env, images):
    prompt, _ = _prompt(images)
    prompt["10"]["inputs"]["width"] = W + 8
    prompt["11"]["inputs"]["width"] = W - 16
    with pytest.raises(ch.PromptError, match="'mask' is 72x48 but the image is 64x48"):
        comfy_env.run_prompt(prompt)
