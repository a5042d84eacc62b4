"""OutpaintPad: pad an image for outpainting (fill + feathered mask + pad box); see web/docs/OutpaintPad.md."""

from __future__ import annotations

from comfy_api.latest import io

from alignnoise_core import padding

MAX_PX = 16384


class OutpaintPad(io.ComfyNode):
    """Core ``ImagePadForOutpaint`` done right: per-side or target-size canvas rounded to a latent
    multiple, seven fills, feathered/overlapping soft or hard mask, incoming-mask merge, pad box out."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="OutpaintPad",
            display_name="Outpaint Pad (fill + feathered mask)",
            category="alignnoise/outpaint",
            description="Pads an image batch for outpainting: fills the new area, returns the inpaint mask "
                        "(1 = generate) feathered into the source, and the pad box per side.",
            inputs=[
                io.Image.Input("image", tooltip="Image batch to extend. RGB, or RGBA (the new area gets alpha 1)."),
                io.Combo.Input("size_mode", options=list(padding.SIZE_MODES), default="per_side",
                               tooltip="per_side: add left/top/right/bottom px. target: place the image in a "
                                       "target_width x target_height canvas at 'anchor' (left/top/right/bottom "
                                       "are then ignored)."),
                io.Int.Input("left", default=0, min=0, max=MAX_PX, step=1,
                             tooltip="per_side mode: pixels added on the left."),
                io.Int.Input("top", default=0, min=0, max=MAX_PX, step=1,
                             tooltip="per_side mode: pixels added on top."),
                io.Int.Input("right", default=0, min=0, max=MAX_PX, step=1,
                             tooltip="per_side mode: pixels added on the right."),
                io.Int.Input("bottom", default=0, min=0, max=MAX_PX, step=1,
                             tooltip="per_side mode: pixels added at the bottom."),
                io.Int.Input("target_width", default=0, min=0, max=MAX_PX, step=8,
                             tooltip="target mode: canvas width in px (0 = keep the image width). Must not be "
                                     "smaller than the image: outpainting never crops."),
                io.Int.Input("target_height", default=0, min=0, max=MAX_PX, step=8,
                             tooltip="target mode: canvas height in px (0 = keep the image height)."),
                io.Combo.Input("anchor", options=list(padding.ANCHORS), default="center",
                               tooltip="target mode: where the original image sits in the canvas "
                                       "(e.g. 'left' = extend to the right)."),
                io.Combo.Input("multiple", options=[str(m) for m in (8, 16, 32, 64, 1)], default="8",
                               tooltip="Round the canvas up to a multiple of this many px (8 for SD latents; 16/64 "
                                       "for some models; 1 = off). Only adds pixels, never crops. Not applied when "
                                       "all per-side pads are 0 (the image passes through unchanged)."),
                io.Combo.Input("fill", options=list(padding.FILL_MODES), default="blur",
                               tooltip="Pixels of the new area (inpainting models read them): edge = repeat border "
                                       "pixels; reflect/symmetric = mirror; color = 'color'; grey = 0.5 like core; "
                                       "blur = blurred edge colours (no streaks); noise = blur + seeded noise."),
                io.String.Input("color", default="#808080",
                                tooltip="fill=color only: '#RRGGBB', '#RGB', 'R,G,B' (0-255) or '0.5,0.5,0.5'."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True,
                             tooltip="fill=noise only: seed of the noise (same seed, same pixels on any device)."),
                io.Int.Input("feathering", default=40, min=0, max=MAX_PX, step=1,
                             tooltip="How far (px) the mask fades into the original image after 'overlap', so the "
                                     "seam is blended. 0 = hard edge. Never skipped for small images (core skips)."),
                io.Combo.Input("feather_curve", options=list(padding.FEATHER_CURVES), default="quadratic",
                               tooltip="Shape of the fade: quadratic (as core), linear, or smooth (smoothstep)."),
                io.Int.Input("overlap", default=0, min=0, max=MAX_PX, step=1,
                             tooltip="Pixels of the original image next to the pad that get mask 1 (fully "
                                     "regenerated) before the feather starts, so the seam itself is repainted."),
                io.Combo.Input("mask_mode", options=list(padding.MASK_MODES), default="soft",
                               tooltip="soft: feathered 0..1 mask for InpaintModelConditioning / differential "
                                       "diffusion. hard: binary (1 wherever soft > 0) for VAEEncodeForInpaint."),
                io.Mask.Input("mask", optional=True,
                              tooltip="Optional mask over the original image (1 = also regenerate) to extend; one "
                                      "mask may serve the whole batch. Padded with 1s, merged, feathering still "
                                      "applies."),
            ],
            outputs=[
                io.Image.Output("image", display_name="image", tooltip="Padded image batch [B,H,W,C]."),
                io.Mask.Output("mask", display_name="mask",
                               tooltip="Mask [B,H,W]: exactly 1 on new pixels, feathered into the original, "
                                       "exactly 0 beyond feathering + overlap."),
                io.Int.Output("left", display_name="left",
                              tooltip="Pixels actually added on the left (after rounding)."),
                io.Int.Output("top", display_name="top", tooltip="Pixels actually added on top (after rounding)."),
                io.Int.Output("right", display_name="right", tooltip="Pixels actually added on the right."),
                io.Int.Output("bottom", display_name="bottom", tooltip="Pixels actually added at the bottom."),
            ],
        )

    @classmethod
    def execute(
        cls,
        image,
        size_mode="per_side",
        left=0,
        top=0,
        right=0,
        bottom=0,
        target_width=0,
        target_height=0,
        anchor="center",
        multiple="8",
        fill="blur",
        color="#808080",
        seed=0,
        feathering=40,
        feather_curve="quadratic",
        overlap=0,
        mask_mode="soft",
        mask=None,
    ) -> io.NodeOutput:
        padding.validate_image(image)  # clear errors (shapes) before computing the box
        _, h, w, _ = image.shape
        if size_mode == "per_side":
            box = padding.pad_box_per_side(h, w, left, top, right, bottom, multiple=int(multiple))
        elif size_mode == "target":
            box = padding.pad_box_target(h, w, target_width, target_height, anchor=anchor, multiple=int(multiple))
        else:
            raise ValueError(f"Unknown size_mode {size_mode!r}; choose one of {list(padding.SIZE_MODES)}.")
        res = padding.outpaint_pad(image, box, mask=mask, fill=fill, color=color, seed=seed, feathering=feathering,
                                   feather_curve=feather_curve, overlap=overlap, mask_mode=mask_mode)
        return io.NodeOutput(res.image, res.mask, *box.as_tuple())


NODES = [OutpaintPad]
