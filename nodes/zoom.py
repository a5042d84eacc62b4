"""Infinite zoom: ZoomOutpaintKeyframes (keyframe outpaint loop) and ZoomInterpolate (video frames).

See web/docs/ZoomInterpolate.md and web/docs/ZoomOutpaintKeyframes.md.
"""

from __future__ import annotations

import logging

from comfy_api.latest import io

from alignnoise_core import options, validation
from alignnoise_core import zoom as zoom_core
from alignnoise_core.comfy_host import common
from alignnoise_core.comfy_host import zoom as zoom_host
from ._widgets import choice, number

log = logging.getLogger("alignnoise")

MAX_FRAMES = 100000


def _zoom_factor(width: int, zoom_factor: float, pad_px: int) -> float:
    return zoom_core.zoom_from_pad(width, pad_px) if pad_px > 0 else float(zoom_factor)


class ZoomInterpolate(io.ComfyNode):
    """Frames of an infinite-zoom video from keyframes, each the previous one zoomed out by a fixed factor."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ZoomInterpolate",
            display_name="Zoom Interpolate (infinite zoom frames)",
            category="alignnoise/zoom",
            description="Turns infinite-zoom keyframes into smooth video frames: constant zoom speed, exact "
                        "keyframes, the sharper keyframe re-pasted into the centre with a feathered edge.",
            inputs=[
                io.Image.Input("keyframes", tooltip="Keyframes, all the same size; each one is the previous one "
                                                    "zoomed out by zoom_factor (e.g. from ZoomOutpaintKeyframes)."),
                number("zoom_factor", options.ZOOM_FACTOR, tooltip="Zoom between consecutive keyframes (> 1). 2 = the previous keyframe fills the "
                                       "centre half (A1111 infinite zoom's default). Ignored when pad_px > 0."),
                io.Int.Input("pad_px", default=0, min=0, max=8192,
                             tooltip="Alternative to zoom_factor: the keyframes were made by padding this many px per "
                                     "side and resizing back (blog method): zoom = (width + 2 pad) / width. 0 = off."),
                io.Int.Input("frames_per_keyframe", default=30, min=1, max=MAX_FRAMES,
                             tooltip="Frames from one keyframe to the next (= fps x seconds per keyframe). "
                                     "Video length = (keyframes - 1) x this + 1 frames, plus holds."),
                choice("direction", options.ZOOM_DIRECTION, tooltip="out: start at the first keyframe and zoom out. in: the same video backwards "
                                       "(start at the last keyframe and zoom in)."),
                choice("schedule", options.ZOOM_SCHEDULE, tooltip="geometric: the same zoom per frame (constant speed, as A1111). linear: "
                                       "linear in image size (blog method; the speed pulses within each keyframe "
                                       "step)."),
                io.Boolean.Input("repaste", default=True,
                                 tooltip="Paste the sharper previous keyframe into the centre of each frame (A1111) "
                                         "instead of only upscaling the next keyframe's centre (blurry)."),
                number("feather", options.ZOOM_FEATHER, tooltip="Soft edge (px) of the re-pasted keyframe, so no frame line is visible. "
                                       "0 = hard (antialiased) edge."),
                io.Int.Input("start_hold", default=0, min=0, max=MAX_FRAMES,
                             tooltip="Extra copies of the first frame (a pause before the zoom starts)."),
                io.Int.Input("end_hold", default=0, min=0, max=MAX_FRAMES,
                             tooltip="Extra copies of the last frame (a pause at the end)."),
                choice("loop", options.ZOOM_LOOP, tooltip="ping-pong: append the video backwards (without repeating its ends) so it loops "
                                       "seamlessly."),
                io.Combo.Input("filter", options=list(zoom_core.FILTERS), default="bicubic",
                               tooltip="Resampling filter (antialiased, float): bicubic is sharper, bilinear softer."),
                io.Int.Input("frame_start", default=0, min=-MAX_FRAMES, max=MAX_FRAMES,
                             tooltip="Render only part of the video, starting at this frame (negative = from the end). "
                                     "Long zooms at high resolution need a lot of RAM: render them in parts."),
                io.Int.Input("frame_count", default=0, min=0, max=MAX_FRAMES,
                             tooltip="Number of frames to render from frame_start (0 = to the end). Parts are exactly "
                                     "the slices of the full video."),
            ],
            outputs=[
                io.Image.Output("frames", display_name="frames",
                                tooltip="Video frames [F,H,W,C] for CreateVideo -> SaveVideo, SaveAnimatedWEBP or VHS "
                                        "Video Combine."),
                io.Int.Output("frame_count", display_name="frame_count", tooltip="Number of frames in 'frames'."),
                io.Int.Output("total_frames", display_name="total_frames",
                              tooltip="Number of frames of the whole video (all parts)."),
            ],
        )

    @classmethod
    def execute(cls, keyframes, zoom_factor=2.0, pad_px=0, frames_per_keyframe=30, direction="out",
                schedule="geometric", repaste=True, feather=8.0, start_hold=0, end_hold=0, loop="none",
                filter="bicubic", frame_start=0, frame_count=0) -> io.NodeOutput:
        validation.require_image(keyframes, "keyframes")
        settings = zoom_core.ZoomSettings(
            zoom=_zoom_factor(keyframes.shape[2], zoom_factor, pad_px), frames_per_keyframe=frames_per_keyframe,
            schedule=schedule, repaste=repaste, feather=feather, filter=filter, direction=direction,
            start_hold=start_hold, end_hold=end_hold, loop=loop)
        settings.validate(keyframes.shape[0])
        total = zoom_core.frame_count(keyframes.shape[0], frames_per_keyframe, start_hold, end_hold, loop)
        start = frame_start + total if frame_start < 0 else frame_start
        if not 0 <= start < total:
            raise ValueError(f"frame_start {frame_start} is outside the video's {total} frames (0..{total - 1}).")
        n = total - start if frame_count <= 0 else min(frame_count, total - start)
        gib = n * keyframes[0].numel() * 4 / 2**30
        log.info("ZoomInterpolate: %d of %d frames (%.2f GiB)", n, total, gib)
        progress = common.Progress(n)
        frames = zoom_core.render_frames(keyframes, settings, frame_start=start, frame_count_=n,
                                         on_frame=lambda f: progress.update(1))
        return io.NodeOutput(frames, frames.shape[0], total)



class ZoomOutpaintKeyframes(io.ComfyNode):
    """The keyframe loop of an infinite zoom: shrink, outpaint the border, paste the known centre back."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ZoomOutpaintKeyframes",
            display_name="Zoom Outpaint Keyframes (infinite zoom)",
            category="alignnoise/zoom",
            description="Makes K zoomed-out keyframes from a start image: each step shrinks the previous one into the "
                        "centre, outpaints the border and pastes the known centre back (no colour drift).",
            inputs=[
                io.Image.Input("image", tooltip="The start image (one image; width and height multiples of 8). It is "
                                                "the first keyframe, and all keyframes have its size."),
                io.Model.Input("model", tooltip="An SD model: a 9-channel inpainting checkpoint (best) or a normal "
                                                "4-channel one (inpaints through the latent noise mask)."),
                io.Conditioning.Input("positive", tooltip="What the outpainted border should show."),
                io.Conditioning.Input("negative", tooltip="What to avoid (e.g. 'frame, border, text')."),
                io.Vae.Input("vae", tooltip="The VAE of the model."),
                io.Int.Input("zoom_steps", default=4, min=0, max=1000,
                             tooltip="K: number of zoom-out steps. Output = K + 1 keyframes (the start image first)."),
                number("zoom_factor", options.ZOOM_FACTOR, tooltip="Zoom per step (> 1). 2 = shrink the previous keyframe to half and outpaint "
                                       "the border (A1111). Ignored when pad_px > 0. Use the same value in "
                                       "ZoomInterpolate."),
                io.Int.Input("pad_px", default=0, min=0, max=8192,
                             tooltip="Alternative to zoom_factor: outpaint this many px per side of the previous "
                                     "keyframe and scale back (zoom = (width + 2 pad) / width). 0 = off."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True,
                             tooltip="Seed of the first step; step k uses seed + k."),
                io.Int.Input("steps", default=20, min=1, max=10000, tooltip="Sampling steps per outpaint."),
                io.Float.Input("cfg", default=7.0, min=0.0, max=100.0, step=0.1, round=0.01,
                               tooltip="Classifier-free guidance scale."),
                io.Combo.Input("sampler_name", options=common.sampler_names(), default="euler",
                               tooltip="Sampler of each outpaint."),
                io.Combo.Input("scheduler", options=common.scheduler_names(), default="normal",
                               tooltip="Scheduler of each outpaint."),
                io.Float.Input("denoise", default=1.0, min=0.01, max=1.0, step=0.01,
                               tooltip="1 = generate the border from scratch (recommended); lower keeps some of the "
                                       "border fill."),
                number("overlap", options.ZOOM_OVERLAP, tooltip="px of the shrunk previous keyframe that are regenerated too and then "
                                     "blended back, so the border joins it seamlessly. The rest of the centre is "
                                     "kept exactly."),
                number("mask_blur", options.ZOOM_MASK_BLUR, tooltip="Softness (px) of the inner edge of the inpaint mask (up to 2 x overlap)."),
                choice("fill", options.ZOOM_FILL, tooltip="Initial content of the border: reflect (mirrored picture, good for "
                                       "4-channel models) or grey (0.5)."),
                choice("alignnoise", options.ZOOM_ALIGNNOISE, tooltip="AlignNoise for every outpaint: stage 1 optimises the initial noise (attention "
                                       "balance, slower), stage 2 samples twice with frequency-refined noise."),
                number("balance_iterations", options.BALANCE_ITERATIONS, tooltip="AlignNoise stage 1 only: noise optimisation iterations per outpaint."),
            ],
            outputs=[
                io.Image.Output("keyframes", display_name="keyframes",
                                tooltip="K + 1 keyframes [K+1,H,W,C]: the start image, then each step zoomed out. "
                                        "Feed them to ZoomInterpolate with the same zoom factor."),
            ],
            is_experimental=True,
        )

    @classmethod
    def execute(cls, image, model, positive, negative, vae, zoom_steps=4, zoom_factor=2.0, pad_px=0, seed=0,
                steps=20, cfg=7.0, sampler_name="euler", scheduler="normal", denoise=1.0, overlap=8, mask_blur=8,
                fill="reflect", alignnoise="off", balance_iterations=10) -> io.NodeOutput:
        validation.require_image(image, "image")
        zoom = _zoom_factor(image.shape[2], zoom_factor, pad_px)
        zoom_core.check_keyframe_args(image.shape[1], image.shape[2], zoom, zoom_steps)
        keyframes = zoom_host.zoom_outpaint_keyframes(
            model, positive, negative, vae, image, zoom_steps, zoom, seed, steps, cfg, sampler_name, scheduler,
            denoise=denoise, overlap=overlap, mask_blur=mask_blur, fill=fill, alignnoise=alignnoise,
            balance_iterations=balance_iterations)
        return io.NodeOutput(keyframes)



NODES = [ZoomOutpaintKeyframes, ZoomInterpolate]
