"""Host-free tests of alignnoise_core.zoom: schedules, geometry vs A1111, frame synthesis, keyframe geometry."""

from __future__ import annotations

import math

import pytest
import torch

from alignnoise_core import resample as R
from alignnoise_core import zoom as Z

import zoom_reference


# --------------------------------------------------------------------------------------------------
# Synthetic "worlds": keyframes rendered from an analytic picture, so every frame has a ground truth
# --------------------------------------------------------------------------------------------------


def _grid(height, width, half_w, dtype=torch.float64):
    """World coordinates of the pixel centres of a frame showing [-half_w, half_w] horizontally."""
    half_h = half_w * height / width
    x = (torch.arange(width, dtype=dtype) + 0.5) / width * 2 * half_w - half_w
    y = (torch.arange(height, dtype=dtype) + 0.5) / height * 2 * half_h - half_h
    return torch.meshgrid(y, x, indexing="ij")


def smooth_world(v, u):
    """A smooth colour picture (periods >= ~1 world unit, i.e. >= 16 px in the outermost keyframe)."""
    r = 0.5 + 0.22 * torch.sin(2.1 * u + 0.3) * torch.cos(1.7 * v) + 0.1 * torch.sin(1.3 * (u + v))
    g = 0.5 + 0.2 * torch.cos(1.9 * u - 1.1 * v + 0.5)
    b = 0.45 + 0.25 * torch.sin(1.2 * v + 0.7) * torch.sin(1.4 * u)
    return torch.stack([r, g, b], dim=-1)


def ring_world(v, u, radius=0.7, width=0.05):
    r = torch.sqrt(u * u + v * v)
    ring = torch.exp(-0.5 * ((r - radius) / width) ** 2)
    return torch.stack([ring, ring, ring], dim=-1)


def render_world(fn, height, width, half_w):
    y, x = _grid(height, width, half_w)
    return fn(y, x).to(torch.float32)


def world_keyframes(fn, n, height, width, zoom):
    return torch.stack([render_world(fn, height, width, zoom ** i) for i in range(n)])


def expected_frame(fn, height, width, zoom, i, t, schedule="geometric"):
    # The frame at t shows the outer keyframe K_{i+1} (half-width zoom^(i+1)) at display scale s(t).
    s = Z.outer_scale(t, zoom, schedule)
    return render_world(fn, height, width, zoom ** (i + 1) / s)


# --------------------------------------------------------------------------------------------------
# Schedules and geometry
# --------------------------------------------------------------------------------------------------


A1111_ANCHORS = {0: (126, 4), 1: (122, 12), 14: (75, 75), 27: (12, 122), 28: (6, 125)}


def test_a1111_reference_formula_reproduces_the_documented_anchors():
    borders = zoom_reference.a1111_interpolation_borders(512, 128, 30)
    assert len(borders) == 29
    for j, anchor in A1111_ANCHORS.items():
        assert borders[j] == anchor


def test_float_geometry_matches_a1111_integer_geometry():
    # A1111 rounds the crop up (ceil) and places the re-paste consistently with the rounded crop. Our
    # float crop rounds to the same integers, and our paste-for-crop formula gives the same re-paste.
    w, mw, n = 512, 128, 30
    zoom = w / (w - 2 * mw)
    assert zoom == 2.0
    for j, (iw, iw2) in enumerate(zoom_reference.a1111_interpolation_borders(w, mw, n)):
        t = (j + 1) / n
        crop, paste = zoom_reference.frame_borders(w, zoom, t)
        assert math.ceil(crop - 1e-9) == iw
        assert math.ceil(zoom_reference.paste_border_for_crop(w, zoom, iw) - 1e-9) == iw2
        # Unrounded, the paste is exactly where the unrounded crop puts the inner keyframe.
        assert zoom_reference.paste_border_for_crop(w, zoom, crop) == pytest.approx(paste, abs=1e-9)
        assert abs(paste - iw2) < 2.5  # A1111's integer crop shifts its paste by up to ~2 px


def test_geometric_schedule_has_constant_log_zoom_and_linear_pulses_like_the_blog():
    geo = zoom_reference.log_zoom_steps(1.5, 16, "geometric")
    assert torch.allclose(geo, torch.full_like(geo, math.log(1.5) / 16), atol=1e-12)
    lin = zoom_reference.log_zoom_steps(1.5, 16, "linear")
    # The blog's (iamhatesz/fun-with-ml infinite_zoom) linear-in-size interpolation varies 0.0211 .. 0.0308 (ratio 1.46).
    assert float(lin.min()) == pytest.approx(0.0211, abs=5e-5)
    assert float(lin.max()) == pytest.approx(0.0308, abs=5e-5)
    assert float(lin.max() / lin.min()) == pytest.approx(1.46, abs=0.01)
    # Both schedules cover exactly one zoom step per segment.
    assert float(geo.sum()) == pytest.approx(math.log(1.5))
    assert float(lin.sum()) == pytest.approx(math.log(1.5))


def test_zoom_from_pad_is_the_blog_step():
    assert Z.zoom_from_pad(512, 128) == 1.5
    with pytest.raises(ValueError):
        Z.zoom_from_pad(512, 0)


# --------------------------------------------------------------------------------------------------
# Frame plan, exact keyframes, holds, loop, direction
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def random_keyframes():
    g = torch.Generator().manual_seed(0)
    return torch.rand(3, 48, 64, 3, generator=g)


def test_first_and_last_frames_are_the_keyframes_exactly(random_keyframes):
    kf = random_keyframes
    s = Z.ZoomSettings(zoom=2.0, frames_per_keyframe=5, feather=4)
    frames = Z.render_frames(kf, s)
    assert frames.shape == (2 * 5 + 1, 48, 64, 3)
    assert frames.dtype == torch.float32
    assert torch.equal(frames[0], kf[0])
    assert torch.equal(frames[-1], kf[-1])
    assert torch.equal(frames[5], kf[1])  # every keyframe appears exactly at its position
    assert Z.frame_count(3, 5) == frames.shape[0]


def test_zoom_in_is_zoom_out_backwards(random_keyframes):
    out = Z.render_frames(random_keyframes, Z.ZoomSettings(frames_per_keyframe=4))
    zin = Z.render_frames(random_keyframes, Z.ZoomSettings(frames_per_keyframe=4, direction="in"))
    assert torch.equal(zin, out.flip(0))
    assert torch.equal(zin[0], random_keyframes[-1]) and torch.equal(zin[-1], random_keyframes[0])


def test_holds_repeat_the_first_and_last_frames(random_keyframes):
    kf = random_keyframes
    base = Z.render_frames(kf, Z.ZoomSettings(frames_per_keyframe=3))
    held = Z.render_frames(kf, Z.ZoomSettings(frames_per_keyframe=3, start_hold=4, end_hold=2))
    assert held.shape[0] == base.shape[0] + 6 == Z.frame_count(3, 3, 4, 2)
    for f in range(5):
        assert torch.equal(held[f], kf[0])
    for f in range(1, 4):
        assert torch.equal(held[-f], kf[-1])
    assert torch.equal(held[4:-2], base)


def test_ping_pong_loops_seamlessly(random_keyframes):
    kf = random_keyframes
    s = Z.ZoomSettings(frames_per_keyframe=3, start_hold=1, end_hold=1)
    once = Z.render_frames(kf, s)
    pp = Z.render_frames(kf, Z.ZoomSettings(frames_per_keyframe=3, start_hold=1, end_hold=1, loop="ping-pong"))
    f = once.shape[0]
    assert pp.shape[0] == 2 * f - 2 == Z.frame_count(3, 3, 1, 1, "ping-pong")
    assert torch.equal(pp[:f], once)
    assert torch.equal(pp[f:], once.flip(0)[1:-1])
    # Looping: the frame after the last is the first, and the last is a neighbour of the first.
    assert torch.equal(pp[-1], once[1])


def test_frame_plan_rows():
    plan = Z.frame_plan(3, 2)
    assert plan.tolist() == [[0, 0], [0, 1], [1, 0], [1, 1], [2, 0]]
    assert Z.frame_plan(1, 30).tolist() == [[0, 0]]


@pytest.mark.parametrize("kwargs", [
    dict(),
    dict(direction="in", start_hold=2, end_hold=3),
    dict(loop="ping-pong", start_hold=1, schedule="linear", filter="bilinear"),
])
def test_frame_range_rendering_equals_the_slice_of_a_full_render(random_keyframes, kwargs):
    s = Z.ZoomSettings(zoom=1.7, frames_per_keyframe=4, feather=3, **kwargs)
    full = Z.render_frames(random_keyframes, s)
    total = full.shape[0]
    for start, count in [(0, 3), (3, 5), (total - 2, 10), (5, None)]:
        part = Z.render_frames(random_keyframes, s, frame_start=start, frame_count_=count)
        stop = total if count is None else start + count
        assert torch.equal(part, full[start:stop])
    assert torch.equal(Z.render_frames(random_keyframes, s, frame_start=-2), full[-2:])
    # Rendering in consecutive parts and concatenating gives the full video.
    parts = [Z.render_frames(random_keyframes, s, frame_start=a, frame_count_=4) for a in range(0, total, 4)]
    assert torch.equal(torch.cat(parts), full)


# --------------------------------------------------------------------------------------------------
# Frame content against the analytic world
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("schedule", ["geometric", "linear"])
def test_log_zoom_per_frame_measured_on_a_ring_target(schedule):
    h = w = 128
    n_frames = 10
    kf = world_keyframes(ring_world, 2, h, w, 2.0)
    frames = Z.render_frames(kf, Z.ZoomSettings(zoom=2.0, frames_per_keyframe=n_frames, schedule=schedule,
                                                feather=4))
    y, x = _grid(h, w, 1.0)
    rad = torch.sqrt(x * x + y * y).to(torch.float32)
    intensity = frames[..., 0]
    radius = (intensity * rad).sum(dim=(1, 2)) / intensity.sum(dim=(1, 2))
    measured = torch.log(radius[:-1] / radius[1:]).double()
    expected = zoom_reference.log_zoom_steps(2.0, n_frames, schedule)
    assert torch.allclose(measured, expected, rtol=0.005, atol=0)
    if schedule == "geometric":
        assert float(measured.max() / measured.min()) < 1.04  # constant log-zoom
    else:
        assert float(measured.max() / measured.min()) > 1.3  # the linear schedule pulses


@pytest.mark.parametrize("hw", [(64, 64), (48, 112), (96, 40)])
def test_frames_match_the_world_square_and_non_square(hw):
    h, w = hw
    kf = world_keyframes(smooth_world, 3, h, w, 1.8)
    n = 6
    frames = Z.render_frames(kf, Z.ZoomSettings(zoom=1.8, frames_per_keyframe=n, feather=6))
    worst = 0.0
    for f in range(frames.shape[0]):
        i, j = divmod(f, n)
        if i == 2:
            ref = kf[2]
        else:
            ref = expected_frame(smooth_world, h, w, 1.8, i, j / n)
        worst = max(worst, float((frames[f] - ref).abs().max()))
    assert worst < 1.5 / 255


def test_no_visible_seam_at_the_paste_edge():
    # Inner keyframe 0.08 brighter than the outer one (e.g. a colour drift of the model): the frame must
    # fade between them over the feather, never jump. Geometry is otherwise consistent.
    h = w = 128
    kf = world_keyframes(smooth_world, 2, h, w, 2.0)
    kf[0] = (kf[0] + 0.08).clamp(0, 1)
    t_idx, n = 5, 10

    def max_step(frames):
        f = frames[t_idx]
        return max(float((f[1:] - f[:-1]).abs().max()), float((f[:, 1:] - f[:, :-1]).abs().max()))

    smooth_step = max_step(Z.render_frames(world_keyframes(smooth_world, 2, h, w, 2.0),
                                           Z.ZoomSettings(frames_per_keyframe=n, feather=8)))
    hard = max_step(Z.render_frames(kf, Z.ZoomSettings(frames_per_keyframe=n, feather=0)))
    soft = max_step(Z.render_frames(kf, Z.ZoomSettings(frames_per_keyframe=n, feather=8)))
    assert hard > smooth_step + 0.05  # a hard paste shows the frame edge
    assert soft < smooth_step + 0.025  # the feather hides it: no step much above the picture's own


def test_consistent_keyframes_have_no_seam_at_all():
    # Keyframes made by the keyframe loop's own geometry (centre = shrunk previous keyframe).
    h, w = 64, 96
    k0 = render_world(smooth_world, h, w, 1.0)
    k1_world = render_world(smooth_world, h, w, 2.0)
    canvas, _ = Z.shrink_to_center(k0, 2.0)
    alpha = Z.paste_back_alpha(h, w, 2.0, overlap=4)
    k1 = Z.paste_back(k1_world, canvas, alpha)
    frames = Z.render_frames(torch.stack([k0, k1]), Z.ZoomSettings(frames_per_keyframe=8, feather=6))
    for j in range(1, 8):
        ref = expected_frame(smooth_world, h, w, 2.0, 0, j / 8)
        assert float((frames[j] - ref).abs().max()) < 4 / 255


@pytest.mark.parametrize("filt", ["bicubic", "bilinear"])
def test_flat_keyframes_keep_their_colour(filt):
    colour = torch.tensor([0.2, 0.55, 0.8])
    kf = colour.expand(3, 40, 72, 3).clone()
    frames = Z.render_frames(kf, Z.ZoomSettings(zoom=2.3, frames_per_keyframe=7, filter=filt, feather=5))
    assert float((frames.mean(dim=(0, 1, 2)) - colour).abs().max()) < 1 / 255
    assert float((frames - colour).abs().max()) < 1e-5  # not only the mean: every pixel


def test_mean_colour_of_textured_keyframes_does_not_drift():
    # Self-similar keyframes (the same random texture at every level) zoomed at 2x: resampling must not
    # shift the mean colour of frames (float pipeline, normalised antialiased weights).
    g = torch.Generator().manual_seed(1)
    tex = torch.rand(1, 3, 16, 16, generator=g)
    k = torch.nn.functional.interpolate(tex, size=(128, 128), mode="bicubic", align_corners=False).clamp(0, 1)
    k = k[0].permute(1, 2, 0)
    frames = Z.render_frames(torch.stack([k, k]), Z.ZoomSettings(frames_per_keyframe=6, repaste=False))
    assert float((frames.mean(dim=(1, 2)) - k.mean(dim=(0, 1))).abs().max()) < 0.03


def test_antialiased_downscale_does_not_alias():
    # A 1-px checkerboard shrunk by 2 must become flat grey, not a moire pattern.
    h = w = 64
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    checker = ((yy + xx) % 2).float()[..., None].expand(h, w, 3).contiguous()
    canvas, rect = Z.shrink_to_center(checker, 2.0)
    centre = canvas[20:44, 20:44]
    assert float((centre - 0.5).abs().max()) < 0.02


def test_resample_identity_and_rows_sum_to_one():
    g = torch.Generator().manual_seed(2)
    img = torch.rand(3, 20, 30, generator=g)
    same = R.render_crop(img, Z.Rect(0, 0, 30, 20), 20, 30)
    assert torch.allclose(same, img, atol=1e-6)
    wts, _ = R.resample_matrix(17, 0, 40, 3.3, 1.7, "bicubic", torch.float64)
    assert torch.allclose(wts.sum(dim=1), torch.ones(17, dtype=torch.float64))


def test_inputs_are_not_mutated_and_runs_are_deterministic(random_keyframes):
    kf = random_keyframes.clone()
    s = Z.ZoomSettings(frames_per_keyframe=3)
    a = Z.render_frames(kf, s)
    b = Z.render_frames(kf, s)
    assert torch.equal(kf, random_keyframes)
    assert torch.equal(a, b)


# --------------------------------------------------------------------------------------------------
# Keyframe loop geometry
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("hw", [(64, 64), (48, 80)])
def test_shrink_to_center_geometry(hw):
    h, w = hw
    img = render_world(smooth_world, h, w, 1.0)
    canvas, rect = Z.shrink_to_center(img, 2.0)
    assert rect == Z.Rect(w / 4, h / 4, w / 2, h / 2)
    assert canvas.shape == img.shape
    # The centre is the image at half size: the world seen at twice the width.
    ref = render_world(smooth_world, h, w, 2.0)
    inner = canvas[h // 4:3 * h // 4, w // 4:3 * w // 4]
    assert float((inner - ref[h // 4:3 * h // 4, w // 4:3 * w // 4]).abs().max()) < 3 / 255
    grey, _ = Z.shrink_to_center(img, 2.0, fill="grey")
    assert float((grey[0] - 0.5).abs().max()) == 0.0
    assert torch.equal(grey[h // 4:3 * h // 4, w // 4:3 * w // 4], inner)


def test_outpaint_mask_and_paste_back():
    h, w = 64, 96
    mask = Z.outpaint_mask(h, w, 2.0, overlap=4, blur=0)
    # Border (outside the shrunk image) and `overlap` px of it are generated; the rest is kept.
    assert float(mask[:16].min()) == 1.0 and float(mask[:, :24].min()) == 1.0
    assert float(mask[16:20, 24:72].min()) == 1.0
    assert float(mask[20:44, 28:68].max()) == 0.0
    blurred = Z.outpaint_mask(h, w, 2.0, overlap=4, blur=4)
    assert float(blurred[:16].min()) == 1.0 and float(blurred[22:42, 30:66].max()) == 0.0
    assert 0 < float(blurred[19, 48]) < 1
    alpha = Z.paste_back_alpha(h, w, 2.0, overlap=4)
    assert float(alpha[20:44, 28:68].min()) == 1.0
    assert float(alpha[:16].max()) == 0.0
    gen = torch.rand(h, w, 3)
    canvas = torch.rand(h, w, 3)
    pasted = Z.paste_back(gen, canvas, alpha)
    assert torch.equal(pasted[20:44, 28:68], canvas[20:44, 28:68])
    assert torch.equal(pasted[:16], gen[:16])


def test_keyframe_argument_errors():
    with pytest.raises(ValueError, match="multiples of 8"):
        Z.check_keyframe_args(60, 64, 2.0, 3)
    with pytest.raises(ValueError, match="> 1"):
        Z.check_keyframe_args(64, 64, 1.0, 3)
    with pytest.raises(ValueError, match="K"):
        Z.check_keyframe_args(64, 64, 2.0, 0)
    Z.check_keyframe_args(64, 96, 2.0, 1)


def test_interpolation_argument_errors(random_keyframes):
    with pytest.raises(ValueError, match="> 1"):
        Z.render_frames(random_keyframes, Z.ZoomSettings(zoom=1.0))
    with pytest.raises(ValueError, match="frames_per_keyframe"):
        Z.render_frames(random_keyframes, Z.ZoomSettings(frames_per_keyframe=0))
    with pytest.raises(ValueError, match="direction"):
        Z.render_frames(random_keyframes, Z.ZoomSettings(direction="sideways"))
    with pytest.raises(ValueError, match="frame_start"):
        Z.render_frames(random_keyframes, Z.ZoomSettings(frames_per_keyframe=2), frame_start=99)
    with pytest.raises(ValueError, match="at least one keyframe"):
        Z.render_frames(random_keyframes[:0], Z.ZoomSettings())


@pytest.mark.parametrize("step,origin,out_size,src", [(0.37, 10.2, 100, 64), (1.0, 0.0, 64, 64), (2.3, -3.1, 40, 96),
                                                      (1.7, 5.5, 33, 60), (0.5, 0.0, 128, 64)])
@pytest.mark.parametrize("kind", ["bicubic", "bilinear"])
def test_banded_weights_equal_the_dense_resampling_matrix(step, origin, out_size, src, kind):
    dense, j0 = R.resample_matrix(out_size, 3, src, origin, step, kind, torch.float64)
    full = torch.zeros(out_size, src, dtype=torch.float64)
    full[:, j0:j0 + dense.shape[1]] = dense
    bands, starts = R.banded_weights(out_size, 3, src, origin, step, kind, block=16, dtype=torch.float64)
    rebuilt = torch.zeros(bands.shape[0] * 16, src, dtype=torch.float64)
    for b, s in enumerate(starts.tolist()):
        rebuilt[b * 16:(b + 1) * 16, s:s + bands.shape[2]] = bands[b]
    assert torch.allclose(rebuilt[:out_size], full, atol=1e-12)


def test_workers_do_not_change_the_result_and_progress_is_in_order(random_keyframes):
    s = Z.ZoomSettings(frames_per_keyframe=7, feather=3)
    seen = []
    one = Z.render_frames(random_keyframes, s, workers=1)
    three = Z.render_frames(random_keyframes, s, workers=3, on_frame=seen.append)
    assert torch.equal(one, three)
    assert seen == list(range(one.shape[0]))


def test_parallel_rendering_under_inference_mode(random_keyframes):
    # ComfyUI runs nodes under inference_mode, which is thread-local: workers must inherit it.
    s = Z.ZoomSettings(frames_per_keyframe=5)
    with torch.inference_mode():
        kf = random_keyframes.clone()
        frames = Z.render_frames(kf, s, workers=2)
    assert frames.is_inference()
    assert torch.equal(frames, Z.render_frames(random_keyframes, s, workers=1))


def test_on_frame_can_interrupt(random_keyframes):
    def stop(f):
        if f == 5:
            raise InterruptedError("cancel")

    threads = torch.get_num_threads()
    with pytest.raises(InterruptedError):
        Z.render_frames(random_keyframes, Z.ZoomSettings(frames_per_keyframe=7), workers=2, on_frame=stop)
    assert torch.get_num_threads() == threads  # the single-threaded section restored the setting
