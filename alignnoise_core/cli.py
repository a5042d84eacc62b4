"""Command line: ``python -m alignnoise_core {outpaint,zoom,make-tiny-model} ...``.

Argument parsing, validation of every input before the model is loaded, and exit codes
(0 ok, 1 runtime failure, 2 bad input, 130 interrupted). The work is done by
:mod:`alignnoise_core.pipeline`; files by :mod:`alignnoise_core.media`.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Optional, Sequence

from . import options as o
from . import padding

logger = logging.getLogger("alignnoise")

EPILOG_OUTPAINT = """examples:
  # widen a photo by 128 px on the left and right (downloads ~5 GB of SD2-inpainting on first use)
  python -m alignnoise_core outpaint photo.png --left 128 --right 128 --out wide.png
  # a local model directory, a 768x512 canvas with the photo on the left, 25 steps
  python -m alignnoise_core outpaint photo.png --model ./sd2-inpainting --width 768 --height 512 \\
      --anchor left --steps 25 --out wide.png
  # try it without any download: a random-weight model (the picture is noise, the path is real)
  python -m alignnoise_core make-tiny-model ./tiny-inpaint
  python -m alignnoise_core outpaint photo.png --model ./tiny-inpaint --all 64 --out test.png
"""

EPILOG_ZOOM = """examples:
  # 4 zoom-out steps of 2x each, 30 frames per step, H.264 video
  python -m alignnoise_core zoom photo.png --steps-out 4 --out zoom.mp4
  # animated WebP, 1.5x per step, zooming in; keep the keyframes as PNG
  python -m alignnoise_core zoom photo.png --steps-out 6 --zoom 1.5 --direction in \\
      --out zoom.webp --keyframes-dir keys/
  # PNG frames in a directory (a path ending in /)
  python -m alignnoise_core zoom photo.png --steps-out 3 --out frames/
"""


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Shows defaults, except empty ones (None/False) that would only add noise."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "%(default)" in text or action.default in (None, False, argparse.SUPPRESS) or not action.option_strings:
            return text
        if isinstance(action.default, str):
            return text + " (default: %(default)r)"
        return text + " (default: %(default)s)"


def _size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must look like 512x512 (WIDTHxHEIGHT), got {text!r}") from None
    return w, h


def _nonneg(text: str) -> int:
    v = int(text)
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {v}")
    return v


def _number(group, flag: str, spec: o.Number, kind=None) -> None:
    """A flag whose default, type and meaning come from :mod:`alignnoise_core.options`."""
    kind = kind or type(spec.default)
    group.add_argument(flag, type=kind, default=kind(spec.default), help=spec.meaning)


def _choice(group, flag: str, spec: o.Choice) -> None:
    group.add_argument(flag, default=spec.default, choices=list(spec.options), help=spec.meaning)


def _add_model_args(p: argparse.ArgumentParser) -> None:
    from .diffusers_models import DEFAULT_MODEL

    g = p.add_argument_group("model")
    g.add_argument("--model", default=DEFAULT_MODEL,
                   help="diffusers inpainting model: a Hugging Face id (downloaded once on first use; the default is "
                        "about 5 GB) or a local "
                        "pipeline directory (with model_index.json). Any SD1.x/SD2.x inpainting model works.")
    g.add_argument("--device", default="auto", help="auto (CUDA if present, else CPU), cpu, cuda, cuda:1, mps")
    g.add_argument("--dtype", default="auto", choices=["auto", "float16", "bfloat16", "float32"],
                   help="auto = float16 on CUDA, float32 on CPU")

    g = p.add_argument_group("sampling")
    g.add_argument("--steps", type=int, default=50, help="denoising steps per pass")
    g.add_argument("--scheduler", default="model", choices=["model", "pndm", "ddim", "euler", "euler_a", "dpm++",
                                                            "unipc"],
                   help="sampler; 'model' keeps the model's own (PNDM for SD2-inpainting, as the paper)")
    g.add_argument("--seed", type=int, default=2226, help="random seed (same seed = same picture)")
    g.add_argument("--prompt", default=" ", help="text prompt; the paper uses a single space")
    g.add_argument("--negative-prompt", default="", help="negative prompt (used only with --guidance > 1)")
    g.add_argument("--guidance", type=float, default=0.0,
                   help="classifier-free guidance scale; 0 or 1 = off (the paper's setting, one UNet call per step)")
    g.add_argument("--no-paste-back", dest="paste_back", action="store_false",
                   help="keep the model's regenerated source region instead of pasting the original pixels back")

    g = p.add_argument_group("AlignNoise stage 1: attention balance (optimises the initial noise)")
    g.add_argument("--no-attention-balance", dest="attention_balance", action="store_false",
                   help="skip stage 1")
    _number(g, "--balance-iterations", o.BALANCE_ITERATIONS)
    _number(g, "--balance-lr", o.BALANCE_LR)
    _number(g, "--balance-threshold", o.BALANCE_THRESHOLD)
    _number(g, "--balance-tau", o.BALANCE_TAU)
    g.add_argument("--gradient-checkpointing", action="store_true",
                   help="recompute UNet layers in the backward pass instead of storing them (less memory, slower)")

    g = p.add_argument_group("AlignNoise stage 2: frequency refinement (a second sampling pass)")
    g.add_argument("--no-frequency-refine", dest="frequency_refine", action="store_false",
                   help="skip stage 2 (one sampling pass)")
    _number(g, "--passes", o.PASSES)
    _choice(g, "--filter", o.FILTER)
    _number(g, "--cutoff", o.CUTOFF)
    _number(g, "--filter-order", o.FILTER_ORDER)
    g.add_argument("--fast-sampling", action="store_true",
                   help="coarse-to-fine: steps*k/passes steps in pass k (e.g. 25 then 50)")

    g = p.add_argument_group("output")
    g.add_argument("-q", "--quiet", action="store_true", help="no progress bars or info messages")
    g.add_argument("-v", "--verbose", action="store_true", help="debug messages, including diffusers'")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m alignnoise_core",
        description="AlignNoise outpainting (consistent borders: attention-balanced noise + frequency "
                    "refinement) and infinite zoom with a Stable Diffusion inpainting model (diffusers), "
                    "without ComfyUI.",
        formatter_class=_Formatter,
        epilog="Run 'python -m alignnoise_core outpaint --help' or '... zoom --help' for the options.",
    )
    sub = parser.add_subparsers(dest="command", metavar="{outpaint,zoom,make-tiny-model}")

    p = sub.add_parser("outpaint", help="extend an image beyond its borders",
                       usage="%(prog)s IMAGE [--left N --top N --right N --bottom N | --width W --height H] "
                             "[--out OUT.png] [options]",
                       description="Extend IMAGE beyond its borders with AlignNoise and save the result.",
                       formatter_class=_Formatter, epilog=EPILOG_OUTPAINT)
    p.add_argument("images", nargs="+", metavar="IMAGE",
                   help="input image(s) (PNG, JPEG, WebP ...); several images share one model load")
    p.add_argument("-o", "--out", help="output image (.png, .jpg, .webp), or a directory for several images; "
                                       "default: IMAGE_outpainted.png next to each input")
    g = p.add_argument_group("canvas (as the OutpaintPad node; rounded up to a multiple of 8)")
    g.add_argument("--left", type=_nonneg, default=0, help="pixels to add on the left")
    g.add_argument("--top", type=_nonneg, default=0, help="pixels to add on the top")
    g.add_argument("--right", type=_nonneg, default=0, help="pixels to add on the right")
    g.add_argument("--bottom", type=_nonneg, default=0, help="pixels to add on the bottom")
    g.add_argument("--all", type=_nonneg, default=0, help="pixels to add on every side (adds to the per-side pads)")
    g.add_argument("--width", type=_nonneg, default=0, help="target canvas width instead of pads (0 = image width)")
    g.add_argument("--height", type=_nonneg, default=0, help="target canvas height instead of pads (0 = image height)")
    g.add_argument("--anchor", default="center", choices=list(padding.ANCHORS),
                   help="where the image sits on a target canvas")
    g.add_argument("--fill", default="edge", choices=list(padding.FILL_MODES),
                   help="initial content of the new area (the inpainting model masks it out; kept for parity "
                        "with OutpaintPad)")
    g.add_argument("--color", default="#808080", help="colour for --fill color ('#RRGGBB' or 'R,G,B')")
    g.add_argument("--feathering", type=_nonneg, default=16,
                   help="px of the source next to the border that are regenerated and blended back softly")
    g.add_argument("--overlap", type=_nonneg, default=0, help="px of the source next to the border regenerated fully")
    g.add_argument("--save-mask", metavar="PATH", help="also save the mask (white = generated) as an image")
    _add_model_args(p)

    z = sub.add_parser("zoom", help="make an infinite zoom video from an image",
                       usage="%(prog)s IMAGE --steps-out K [--zoom 2] [--out zoom.mp4|.webp|.gif|DIR/] [options]",
                       description="Outpaint K zoomed-out keyframes from IMAGE (each shrinks the previous one into "
                                   "its centre and outpaints the border) and interpolate a smooth zoom video.",
                       formatter_class=_Formatter, epilog=EPILOG_ZOOM)
    z.add_argument("image", help="start image (the first frame when zooming out)")
    z.add_argument("--steps-out", type=int, required=True, metavar="K", help="number of zoom-out keyframes to outpaint")
    z.add_argument("-o", "--out", help="zoom.mp4 (H.264 via PyAV), .webp, .gif, or a directory ending in / for PNG "
                                       "frames; default: IMAGE_zoom.mp4")
    g = z.add_argument_group("zoom")
    _number(g, "--zoom", o.ZOOM_FACTOR)
    g.add_argument("--size", type=_size, metavar="WxH",
                   help="frame size; default: the image size rounded down to a multiple of 8")
    g.add_argument("--frames-per-step", type=int, default=30, help="video frames per keyframe step")
    g.add_argument("--fps", type=float, default=30.0, help="frames per second of the video")
    _choice(g, "--schedule", o.ZOOM_SCHEDULE)
    _choice(g, "--direction", o.ZOOM_DIRECTION)
    _number(g, "--overlap", o.ZOOM_OVERLAP, float)
    _number(g, "--mask-blur", o.ZOOM_MASK_BLUR, float)
    _number(g, "--feather", o.ZOOM_FEATHER)
    _choice(g, "--fill", o.ZOOM_FILL)
    g.add_argument("--start-hold", type=_nonneg, default=0, help="extra copies of the first frame")
    g.add_argument("--end-hold", type=_nonneg, default=0, help="extra copies of the last frame")
    _choice(g, "--loop", o.ZOOM_LOOP)
    g.add_argument("--keyframes-dir", metavar="DIR", help="also save the keyframes as PNG files in DIR")
    _add_model_args(z)

    t = sub.add_parser("make-tiny-model", help="write a random-weight inpainting pipeline (no download) for trying "
                                               "the CLI", formatter_class=_Formatter,
                       description="Write a small random-weight StableDiffusionInpaintPipeline directory. Its "
                                   "pictures are noise, but every step of the CLI runs on it, offline.")
    t.add_argument("directory", help="where to save it (created)")
    t.add_argument("--preset", default="tiny", choices=["tiny", "mid"], help="model size")
    t.add_argument("--scheduler", default="pndm", choices=["pndm", "ddim"], help="scheduler (SD2-inpainting uses PNDM)")
    t.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    t.add_argument("-q", "--quiet", action="store_true", help="no info messages")
    t.add_argument("-v", "--verbose", action="store_true", help="debug messages")
    return parser


# --------------------------------------------------------------------------------------------------


def _setup_logging(quiet: bool, verbose: bool) -> None:
    level = logging.WARNING if quiet else (logging.DEBUG if verbose else logging.INFO)
    for name in ("alignnoise", "alignnoise_core"):
        lg = logging.getLogger(name)
        lg.setLevel(level)
        # our own stderr handler unless the application/test runner configured logging already
        if not logging.getLogger().handlers and not any(getattr(h, "_alignnoise_cli", False) for h in lg.handlers):
            h = logging.StreamHandler()
            h.setFormatter(logging.Formatter("%(message)s"))
            h._alignnoise_cli = True  # type: ignore[attr-defined]
            lg.addHandler(h)


def _quiet_hf_libraries() -> None:
    """diffusers/transformers are chatty (missing torchvision, loading bars): errors only."""
    import diffusers
    import transformers

    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def _load_model(args):
    from . import diffusers_models as models

    models.resolve_device_dtype(args.device, args.dtype)
    if models.is_local_model(args.model):
        models.check_model_source(args.model)  # fast errors, before importing diffusers
    if not args.verbose:
        _quiet_hf_libraries()
    pipe = models.load_inpaint_pipeline(args.model, args.device, args.dtype)
    return models.set_scheduler(pipe, args.scheduler)


def _settings(args):
    from .pipeline import AlignNoiseSettings

    s = AlignNoiseSettings(
        steps=args.steps, seed=args.seed, prompt=args.prompt, negative_prompt=args.negative_prompt,
        guidance=args.guidance, attention_balance=args.attention_balance,
        balance_iterations=args.balance_iterations, balance_lr=args.balance_lr,
        balance_threshold=args.balance_threshold, balance_tau=args.balance_tau,
        gradient_checkpointing=args.gradient_checkpointing, frequency_refine=args.frequency_refine, passes=args.passes, filter_type=args.filter,
        cutoff=args.cutoff, order=args.filter_order, fast_sampling=args.fast_sampling,
        paste_back=args.paste_back,
    )
    s.validate()
    return s


def _default_out(image: str, suffix: str) -> str:
    p = Path(image)
    return str(p.with_name(p.stem + suffix))


def _outpaint_outputs(args) -> list[Path]:
    """One output path per input image (validated before any model work)."""
    from . import media

    if len(args.images) == 1:
        return [media.check_image_output(args.out or _default_out(args.images[0], "_outpainted.png"))]
    if args.save_mask:
        raise ValueError("--save-mask works with a single input image; run the images one by one to keep masks.")
    if args.out:
        d = Path(args.out)
        if d.suffix and not d.is_dir():
            raise ValueError(f"With {len(args.images)} input images, --out must be a directory (got {d}).")
        outs = [d / (Path(i).stem + "_outpainted.png") for i in args.images]
    else:
        outs = [Path(_default_out(i, "_outpainted.png")) for i in args.images]
    if len(set(outs)) != len(outs):
        raise ValueError("Two input images would write the same output file (same name); rename one of them.")
    return outs


def _run_outpaint(args) -> int:
    from . import media, pipeline

    settings = _settings(args)
    outs = _outpaint_outputs(args)
    if args.save_mask:
        media.check_image_output(args.save_mask)
    pads = dict(left=args.left + args.all, top=args.top + args.all, right=args.right + args.all,
                bottom=args.bottom + args.all)
    images = []
    for path in args.images:  # read every image and check its canvas before loading the model
        image = media.load_image(path)
        pipeline.outpaint_box(image.shape[0], image.shape[1], target_width=args.width, target_height=args.height,
                              anchor=args.anchor, **pads)
        images.append(image)
    pipe = _load_model(args)
    for image, out in zip(images, outs):
        res = pipeline.outpaint(pipe, image, target_width=args.width, target_height=args.height, anchor=args.anchor,
                                settings=settings, fill=args.fill, color=args.color, feathering=args.feathering,
                                overlap=args.overlap, progress=not args.quiet, **pads)
        media.save_image(res.image, out)
        if args.save_mask:
            media.save_image(res.mask[..., None].expand(-1, -1, 3), args.save_mask)
        r = res.result
        logger.info("Saved %s (%dx%d) in %.1f s: %d UNet calls, %d backward", out, res.image.shape[1],
                    res.image.shape[0], r.seconds["total"], r.unet_calls, r.backward_calls)
    return 0


def _run_zoom(args) -> int:
    from . import media, pipeline, zoom

    settings = _settings(args)
    out = args.out or _default_out(args.image, "_zoom.mp4")
    media.check_video_output(out)
    if args.fps <= 0:
        raise ValueError(f"--fps must be > 0, got {args.fps}.")
    image = media.load_image(args.image)
    w, h = args.size if args.size else (0, 0)
    ih, iw = image.shape[:2]
    image = pipeline.fit_to_multiple(image, w, h)
    fh, fw = image.shape[:2]
    if (fh, fw) != (ih, iw):
        logger.info("Resized the start image from %dx%d to %dx%d (frames must be multiples of 8; see --size)",
                    iw, ih, fw, fh)
    zoom.check_keyframe_args(fh, fw, args.zoom, args.steps_out)
    zoom.ZoomSettings(zoom=args.zoom, frames_per_keyframe=args.frames_per_step, schedule=args.schedule,
                      feather=args.feather, direction=args.direction, start_hold=args.start_hold,
                      end_hold=args.end_hold, loop=args.loop).validate(args.steps_out + 1)
    zoom.outpaint_mask(fh, fw, args.zoom, overlap=args.overlap, blur=args.mask_blur)  # overlap too large?
    pipe = _load_model(args)
    res = pipeline.zoom_video(pipe, image, args.steps_out, args.zoom, settings, args.frames_per_step, args.schedule,
                              args.direction, args.overlap, args.mask_blur, args.feather, args.fill, args.start_hold,
                              args.end_hold, args.loop, progress=not args.quiet)
    if args.keyframes_dir:
        media.write_video(res.keyframes, args.keyframes_dir if args.keyframes_dir.endswith("/") else
                          args.keyframes_dir + "/")
    media.write_video(res.frames, out, fps=args.fps)
    logger.info("Saved %s: %d frames of %dx%d from %d keyframes", out, res.frames.shape[0], fw, fh,
                res.keyframes.shape[0])
    return 0


def _run_make_tiny(args) -> int:
    from .tiny_pipeline import make_tiny_model

    if not args.verbose:
        _quiet_hf_libraries()
    d = make_tiny_model(args.directory, preset=args.preset, seed=args.seed, scheduler=args.scheduler)
    logger.info("Wrote a random-weight %s inpainting pipeline to %s (try: python -m alignnoise_core outpaint "
                "IMAGE --model %s --all 64 --steps 10)", args.preset, d, d)
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point; returns the exit code (0 ok, 1 failure, 2 bad input, 130 interrupted)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2)
        return int(exc.code or 0)
    if not args.command:
        parser.print_help(sys.stderr)
        return 2
    _setup_logging(args.quiet, args.verbose)
    run = {"outpaint": _run_outpaint, "zoom": _run_zoom, "make-tiny-model": _run_make_tiny}[args.command]
    try:
        return run(args)
    except (ValueError, FileNotFoundError) as exc:
        logger.error("error: %s", exc)
        return 2
    except KeyboardInterrupt:
        logger.error("interrupted")
        return 130
    except Exception as exc:  # noqa: BLE001 - a CLI reports every failure with a non-zero exit
        if args.verbose:
            logger.exception("error")
        else:
            logger.error("error: %s: %s (run with --verbose for the traceback)", type(exc).__name__, exc)
        return 1


if __name__ == "__main__":
    sys.exit(main())
