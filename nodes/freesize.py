"""FreeSizeOutpaint: outpaint beyond the model's native size with native-size windows.

See web/docs/FreeSizeOutpaint.md.
"""

from __future__ import annotations

from comfy_api.latest import io

from alignnoise_core import freesize as fs
from alignnoise_core.comfy_host import freesize as host


class FreeSizeOutpaint(io.ComfyNode):
    """DDNM Mask-Shift windows (+ Hierarchical Restoration) or the blog's sequential sides, one node."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="FreeSizeOutpaint",
            display_name="Free-Size Outpaint (native-size windows)",
            category="alignnoise/outpaint",
            description="Outpaints a canvas of any size with windows of the model's native size; each window "
                        "sees the source and all finished windows as known (DDNM Mask-Shift, optional "
                        "hierarchical global pass, or the blog's left/top/right/bottom order).",
            is_experimental=True,
            inputs=[
                io.Model.Input("model", tooltip="The model: a 9-channel inpainting checkpoint (best) or a normal "
                                                "one (inpaints through the latent noise mask)."),
                io.Conditioning.Input("positive", tooltip="What the outpainted area should show (every window)."),
                io.Conditioning.Input("negative", tooltip="What to avoid (e.g. 'seam, border, frame, text')."),
                io.Vae.Input("vae", tooltip="The VAE of the model (encodes each window, decodes its result)."),
                io.Image.Input("image", tooltip="The padded canvas (e.g. OutpaintPad's image); width and height "
                                                "multiples of 8. One image."),
                io.Mask.Input("mask", tooltip="The outpaint mask of the canvas (1 = generate, e.g. OutpaintPad's "
                                              "mask). Pixels where it is 0 are returned exactly."),
                io.Sampler.Input("sampler", tooltip="SAMPLER of every window (KSamplerSelect, or an inpainting "
                                                    "sampler of this pack that reads the latent noise mask)."),
                io.Sigmas.Input("sigmas", tooltip="SIGMAS of every window (e.g. BasicScheduler). steps = "
                                                  "len(sigmas) - 1 per window."),
                io.Int.Input("noise_seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True,
                             tooltip="Seed of window 1; window k uses noise_seed + k - 1."),
                io.Float.Input("cfg", default=7.0, min=0.0, max=100.0, step=0.1, round=0.01,
                               tooltip="Classifier-free guidance scale."),
                io.Int.Input("window", default=0, min=0, max=8192, step=8,
                             tooltip="Window size (px, multiple of 8). 0 = the model's native size: SD1.x 512, "
                                     "SD2 768 (v) / 512 (base, inpainting), SDXL 1024. A canvas side shorter "
                                     "than this gets windows of its own length."),
                io.Float.Input("overlap", default=0.5, min=0.0, max=0.9, step=0.05,
                               tooltip="Overlap of neighbouring windows as a fraction of the window (DDNM: 0.5). "
                                       "The overlap with finished windows is kept as known context."),
                io.Combo.Input("order", options=list(fs.ORDERS), default="raster",
                               tooltip="raster: rows top to bottom, left to right (DDNM Mask-Shift). "
                                       "nearest_first: the window touching the most known pixels first. "
                                       "sides: left, top, right, bottom strips, one side after the other "
                                       "(infinite-zoom blog)."),
                io.Boolean.Input("hierarchical", default=False,
                                 tooltip="First outpaint the whole canvas shrunk to one window (global layout), then "
                                         "keep each window's low frequencies on that result (DDNM hierarchical "
                                         "restoration; one extra pass). Ignored when the canvas fits one window."),
                io.Combo.Input("blend", options=list(fs.BLENDS), default="alpha",
                               tooltip="How each window's result joins what is already there (SeamlessComposite's "
                                       "methods): alpha = a linear ramp over a quarter of the overlap (at most 32 "
                                       "px) into the finished pixels; poisson / mixed = gradient-domain blend "
                                       "matching the known pixels at the seam; color_match = constant colour "
                                       "offset. Known pixels stay exact."),
            ],
            outputs=[
                io.Image.Output("image", display_name="image", tooltip="The outpainted canvas [1,H,W,C]."),
                io.Mask.Output("mask", display_name="mask", tooltip="The outpaint mask it used (1 = generated)."),
                io.Image.Output("layout", display_name="layout",
                                tooltip="Preview of the windows in processing order (numbered, 1 = first)."),
                io.String.Output("report", display_name="report",
                                 tooltip="Windows, steps and the UNet evaluations counted during the run."),
            ],
        )

    @classmethod
    def execute(cls, model, positive, negative, vae, image, mask, sampler, sigmas, noise_seed, cfg, window=0,
                overlap=0.5, order="raster", hierarchical=False, blend="alpha") -> io.NodeOutput:
        r = host.free_size_outpaint(model, positive, negative, vae, image, mask, sampler, sigmas, noise_seed, cfg,
                                    window=window, overlap=overlap, order=order, hierarchical=hierarchical,
                                    blend=blend)
        return io.NodeOutput(r.image, r.mask, r.preview, r.report)

    outpaint = execute


NODES = [FreeSizeOutpaint]
