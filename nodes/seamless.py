"""SeamlessComposite: Poisson (gradient-domain) blending and colour matching of a pasted region."""

from __future__ import annotations

import logging

from comfy_api.latest import io

from alignnoise_core import seamless

log = logging.getLogger("alignnoise")


class SeamlessComposite(io.ComfyNode):
    """Paste ``source`` into ``destination`` where ``mask`` is set, removing the colour/brightness seam."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SeamlessComposite",
            display_name="Seamless Composite (Poisson blend / colour match)",
            category="alignnoise/outpaint",
            description="A drop-in for ImageCompositeMasked (same size, no offset) that hides the seam: "
                        "poisson keeps the source's detail but shifts its colours smoothly so they meet the "
                        "destination exactly at the mask edge (Pérez et al. 2003); known pixels stay bit-exact.",
            inputs=[
                io.Image.Input("destination", tooltip="The original image: kept exactly where the mask is 0 "
                                                      "(e.g. the padded original of an outpaint)."),
                io.Image.Input("source", tooltip="The new image of the same size, e.g. the VAE-decoded outpaint or "
                                                 "inpaint result. Batch 1 is used for every destination item."),
                io.Mask.Input("mask", tooltip="1 = take the source, 0 = keep the destination; soft values "
                                              "alpha-blend the corrected source (every pixel > 0 is corrected). "
                                              "Same size as the images."),
                io.Combo.Input("method", options=list(seamless.METHODS), default="poisson",
                               tooltip="poisson: source gradients, seam-free colours (Poisson image editing). "
                                       "mixed: keep the stronger of source and destination gradients (pastes "
                                       "onto texture). color_match: one colour offset per channel, matched at the "
                                       "seam. alpha: plain ImageCompositeMasked blend, no correction."),
                io.Int.Input("band", default=0, min=0, max=512,
                             tooltip="Known pixels within this many px of the mask that the solver may also change "
                                     "(moves the seam into the original). 0 = every known pixel returned "
                                     "bit-exact."),
                io.Boolean.Input("clamp", default=True,
                                 tooltip="Clip corrected pixels to 0..1 (a strong correction can overshoot on "
                                         "very dark or bright sources)."),
                io.Float.Input("tolerance", default=seamless.DEFAULT_TOL, min=1e-8, max=1e-2, step=1e-7, round=False,
                               tooltip="Solver stop: the largest residual of the Poisson equations, in 0..1 image "
                                       "units (1e-6 is far below one 8-bit level)."),
                io.Int.Input("max_iterations", default=seamless.DEFAULT_MAX_ITER, min=1, max=10000,
                             tooltip="Cap for the multigrid-CG solver used for masks that are not an outpaint "
                                     "border (those are solved directly). Typically 6-12 are needed."),
            ],
            outputs=[
                io.Image.Output(display_name="image", tooltip="The composite, same size and batch (float32)."),
                io.Mask.Output(display_name="changed", tooltip="1 where the result differs from the destination."),
            ],
        )

    @classmethod
    def execute(cls, destination, source, mask, method, band, clamp, tolerance, max_iterations) -> io.NodeOutput:
        image, changed, info = seamless.seamless_composite(destination, source, mask, method=method, band=band,
                                                           tol=tolerance, max_iter=max_iterations, clamp=clamp)
        log.info("SeamlessComposite: %s, solver %s, %s iteration(s), max residual %.2e%s", method, info["solver"],
                 info["iterations"], info["residual"], "".join("; " + n for n in info["notes"]))
        for note in info["notes"]:
            if "no boundary" in note:
                log.warning("SeamlessComposite: %s", note)
        return io.NodeOutput(image, changed)


NODES = [SeamlessComposite]
