"""Host-free tests of free-size outpainting: window layout, orders, compositing, the DDNM low-pass
constraint, the preview, and seams on an exact Gaussian model."""

from __future__ import annotations

import math

import pytest
import torch

from alignnoise_core import freesize as fs
from alignnoise_core.inpaint.gaussian import GaussianLatentPrior


def _pad_mask(height, width, box):
    """1 = generate everywhere except the source box (y0, x0, y1, x1)."""
    m = torch.ones(height, width)
    y0, x0, y1, x1 = box
    m[y0:y1, x0:x1] = 0
    return m


# ---------------------------------------------------------------------------------------------- layout


def test_axis_positions_follow_ddnm_hq_demo():
    # 256 tiles with stride 128, the last tile aligned to the border.
    assert fs.axis_positions(1000, 256, 128) == [0, 128, 256, 384, 512, 640, 744]
    assert fs.axis_positions(1024, 256, 128) == [0, 128, 256, 384, 512, 640, 768]
    assert fs.axis_positions(256, 256, 128) == [0]
    assert fs.axis_positions(200, 256, 128) == [0]  # shorter than the window: one window of its length


@pytest.mark.parametrize("length,size,overlap", [(2048, 512, 0.5), (1000, 256, 0.5), (776, 128, 0.25),
                                                 (4096, 1024, 0.75), (520, 512, 0.5)])
def test_axis_positions_count_coverage_and_border(length, size, overlap):
    stride = fs.stride_of(size, overlap)
    pos = fs.axis_positions(length, size, stride)
    assert len(pos) == math.ceil((length - size) / stride) + 1
    assert pos[0] == 0 and pos[-1] == length - size
    assert all(0 < b - a <= stride for a, b in zip(pos, pos[1:]))  # never a gap, never a step back
    assert all(p % 8 == 0 for p in pos)


@pytest.mark.parametrize("order", fs.ORDERS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_plan_generates_every_masked_pixel_exactly_once(order, seed):
    g = torch.Generator().manual_seed(seed)
    h, w = 8 * int(torch.randint(12, 40, (1,), generator=g)), 8 * int(torch.randint(12, 80, (1,), generator=g))
    y0, x0 = 8 * int(torch.randint(0, h // 16, (1,), generator=g)), 8 * int(torch.randint(0, w // 16, (1,), generator=g))
    mask = _pad_mask(h, w, (y0, x0, y0 + h // 3, x0 + w // 3))
    mask[torch.rand(h, w, generator=g) < 0.01] = 0.5  # a few soft/isolated pixels
    plan = fs.plan_windows(mask, 128, 0.5, order)
    count = torch.zeros(h, w)
    done = mask <= 0
    for win in plan:
        ys, xs = win.slices
        assert win.height <= 128 and win.width <= 128
        assert 0 <= win.top and win.top + win.height <= h and 0 <= win.left and win.left + win.width <= w
        pending = ~done[ys, xs]
        assert int(pending.sum()) == win.pending > 0
        count[ys, xs] += pending.float()
        done[ys, xs] = True
    assert torch.equal(count, (mask > 0).float())
    assert [w.index for w in plan] == list(range(len(plan)))


def test_raster_order_and_counts():
    mask = _pad_mask(512, 2048, (0, 768, 512, 1280))  # a 512x512 source in a 4x-wide canvas
    plan = fs.plan_windows(mask, 512, 0.5, "raster")
    assert [(w.top, w.left) for w in plan] == sorted((w.top, w.left) for w in plan)
    # 7 raster windows (stride 256): 512 finds its left half done and its right half source, 768 is
    # all source; both are dropped.
    assert [w.left for w in plan] == [0, 256, 1024, 1280, 1536]
    assert [w.pending for w in plan] == [512 * 512] + [512 * 256] * 4
    assert plan[-1].left + plan[-1].width == 2048


def test_nearest_first_starts_next_to_the_source():
    mask = _pad_mask(128, 1024, (0, 768, 128, 896))
    plan = fs.plan_windows(mask, 128, 0.5, "nearest_first")
    first_known = [int((mask[w.slices] == 0).sum()) for w in plan[:1]]
    assert first_known[0] == 64 * 128  # half of the first window is source
    lefts = [w.left for w in plan]
    # The canvas grows outwards from the source: the distance of each window to it never shrinks on a side.
    left_side = [x for x in lefts if x < 768]
    assert left_side == sorted(left_side, reverse=True)
    # A panorama grows on both sides in turn (ties go to the window closer to the source).
    pano = _pad_mask(512, 2048, (0, 768, 512, 1280))
    assert [w.left for w in fs.plan_windows(pano, 512, 0.5, "nearest_first")] == [512, 1024, 256, 1280, 0, 1536]
    raster = fs.plan_windows(mask, 128, 0.5, "raster")
    assert raster[0].left == 0 and (mask[raster[0].slices] == 0).sum() == 0  # raster starts with no context


def test_sides_reproduces_the_blog_canvases_without_off_by_one():
    # Blog: W = 512, p = 128; sequential canvases 640x512, 640x640, 768x640, 768x768 (w x h).
    mask = _pad_mask(768, 768, (128, 128, 640, 640))
    plan = fs.plan_windows(mask, 768, 0.5, "sides")
    assert [(w.stage, w.width, w.height) for w in plan] == [
        ("left", 640, 512), ("top", 640, 640), ("right", 768, 640), ("bottom", 768, 768)]
    # Every strip is generated in full: the right pass covers columns 640..767 (128, not the blog's 127).
    assert [w.pending for w in plan] == [128 * 512, 128 * 640, 128 * 640, 128 * 768]
    assert [(w.top, w.left) for w in plan] == [(128, 0), (0, 0), (0, 0), (0, 0)]


def test_sides_with_small_windows_tiles_each_strip():
    mask = _pad_mask(256, 1024, (64, 384, 192, 640))
    plan = fs.plan_windows(mask, 128, 0.5, "sides")
    stages = [w.stage for w in plan]
    assert stages == sorted(stages, key=fs.SIDES.index)
    for win in plan:
        if win.stage == "left":  # only the rows of the source, only left of its right edge
            assert win.top >= 64 and win.top + win.height <= 192 and win.left + win.width <= 640


def test_fits_one_window_is_one_window():
    mask = _pad_mask(96, 128, (16, 16, 80, 112))
    for order in ("raster", "nearest_first"):
        plan = fs.plan_windows(mask, 128, 0.5, order)
        assert len(plan) == 1 and (plan[0].height, plan[0].width) == (96, 128)


@pytest.mark.parametrize("kwargs,match", [
    (dict(window=100), "multiple of 8"),
    (dict(window=0), "multiple of 8"),
    (dict(overlap=1.0), "overlap"),
    (dict(overlap=-0.1), "overlap"),
    (dict(order="spiral"), "order"),
])
def test_bad_layout_arguments(kwargs, match):
    args = dict(mask=_pad_mask(64, 256, (0, 0, 64, 64)), window=64, overlap=0.5, order="raster")
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        fs.plan_windows(**args)


def test_bad_masks():
    with pytest.raises(ValueError, match="nothing to outpaint"):
        fs.plan_windows(torch.zeros(64, 64), 64)
    with pytest.raises(ValueError, match="multiples of 8"):
        fs.plan_windows(torch.ones(60, 64), 64)


# ---------------------------------------------------------------------------------------------- compositing


def _random_runner(seed=0, log=None):
    g = torch.Generator().manual_seed(seed)

    def run(win, view, regenerate, guide):
        if log is not None:
            log.append((win, view.clone(), regenerate.clone()))
        return torch.rand(view.shape, generator=g)
    return run


@pytest.mark.parametrize("order", fs.ORDERS)
def test_source_pixels_are_returned_exactly(order):
    image = torch.rand(128, 512, 3)
    mask = _pad_mask(128, 512, (16, 192, 112, 320))
    mask[16:112, 184:192] = 0.5  # a soft edge
    plan = fs.plan_windows(mask, 128, 0.5, order)
    out = fs.outpaint_windows(image, mask, plan, _random_runner(), feather=8)
    keep = mask == 0
    assert torch.equal(out[keep], image[keep])
    assert (out[mask == 1] - image[mask == 1]).abs().amax(dim=-1).min() > 0  # everything else regenerated


def test_later_windows_see_finished_windows_as_known():
    image = torch.zeros(64, 256, 1)
    mask = _pad_mask(64, 256, (0, 0, 64, 64))
    log = []
    plan = fs.plan_windows(mask, 64, 0.5, "raster")
    fs.outpaint_windows(image, mask, plan, _random_runner(log=log), feather=0)
    (w1, _, r1), (w2, v2, r2) = log[0], log[1]
    assert (w1.left, w2.left) == (32, 64)
    assert torch.equal(r1[:, :32], torch.zeros(64, 32)) and bool((r1[:, 32:] == 1).all())
    # Window 2's left half is window 1's result: known (regenerate = 0) and not the initial fill.
    assert bool((r2[:, :32] == 0).all()) and bool((r2[:, 32:] == 1).all())
    assert v2[:, :32].abs().sum() > 0


def test_one_window_result_is_the_pass_itself():
    image = torch.rand(64, 96, 3)
    mask = _pad_mask(64, 96, (8, 8, 56, 88))
    plan = fs.plan_windows(mask, 128, 0.5, "raster")
    produced = {}

    def run(win, view, regenerate, guide):
        assert torch.equal(view, image) and torch.equal(regenerate, mask)
        produced["x"] = torch.rand(view.shape)
        return produced["x"]

    out = fs.outpaint_windows(image, mask, plan, run, feather=16)
    assert torch.equal(out[mask == 1], produced["x"][mask == 1])
    assert torch.equal(out[mask == 0], image[mask == 0])


@pytest.mark.parametrize("blend", fs.BLENDS)
def test_blends_keep_the_source_and_remove_a_colour_offset(blend):
    image = torch.full((64, 192, 3), 0.4)
    mask = _pad_mask(64, 192, (0, 64, 64, 128))
    plan = fs.plan_windows(mask, 128, 0.5, "raster")  # both windows hold source pixels
    assert len(plan) == 2
    out = fs.outpaint_windows(image, mask, plan, lambda w, v, r, g: torch.full_like(v, 0.7), feather=8, blend=blend)
    assert torch.equal(out[mask == 0], image[mask == 0])
    offset = (out[mask == 1] - 0.4).abs().max()
    if blend == "alpha":  # a plain paste keeps the window's colour shift
        assert torch.allclose(out[mask == 1], torch.full_like(out[mask == 1], 0.7))
    else:  # gradient-domain / colour-matched joins take the known pixels' colour
        assert offset < 1e-4, offset


def test_blend_weight_ramps_into_known_pixels():
    pending = torch.zeros(1, 12, dtype=torch.bool)
    pending[0, 6:] = True
    w = fs.blend_weight(pending, 3)
    assert torch.allclose(w[0], torch.tensor([0, 0, 0, 0.25, 0.5, 0.75, 1, 1, 1, 1, 1, 1]))
    assert torch.equal(fs.blend_weight(pending, 0), pending.float())


# ---------------------------------------------------------------------------------------------- hierarchical


def test_lowpass_constraint_takes_block_means_of_the_guide():
    g = torch.Generator().manual_seed(0)
    x0, guide = torch.randn(1, 4, 14, 20, generator=g), torch.randn(1, 4, 14, 20, generator=g)
    out = fs.lowpass_constraint(x0, guide, 4)
    pool = lambda t: torch.nn.functional.avg_pool2d(t[..., :12, :20], 4)  # noqa: E731 (full blocks)
    assert torch.allclose(pool(out), pool(guide), atol=1e-6)
    delta = (out - x0)[..., :12, :]
    assert torch.allclose(delta, pool(delta).repeat_interleave(4, -2).repeat_interleave(4, -1), atol=1e-6)
    mask = torch.zeros(1, 1, 14, 20)
    mask[..., 10:] = 1
    masked = fs.lowpass_constraint(x0, guide, 4, mask)
    assert torch.equal(masked[..., :10], x0[..., :10]) and torch.allclose(masked[..., 10:], out[..., 10:])
    assert torch.allclose(fs.lowpass_constraint(x0, guide, 1), guide, atol=1e-6)


def test_global_size_and_pool_factor():
    assert fs.global_size(512, 2048, 512) == (128, 512)
    assert fs.global_size(1024, 4096, 1024) == (256, 1024)
    assert fs.global_size(400, 600, 1024) == (400, 600)
    assert fs.pool_factor(512, 2048, 512) == 4 and fs.pool_factor(512, 768, 512) == 2


# ---------------------------------------------------------------------------------------------- preview


def test_text_bitmap_and_layout_preview():
    assert tuple(fs.text_bitmap("10").shape) == (5, 7)
    assert fs.text_bitmap("7")[:, 2].all() and not fs.text_bitmap("7")[1:, 0].any()
    mask = _pad_mask(128, 512, (0, 192, 128, 320))
    plan = fs.plan_windows(mask, 128, 0.5, "raster")
    img = torch.rand(128, 512, 3)
    prev = fs.draw_layout(plan, mask, img)
    assert prev.shape == (128, 512, 3) and float(prev.min()) >= 0 and float(prev.max()) <= 1
    for win in plan:  # each window's number is drawn in its colour at its centre
        color = fs._PALETTE[win.index % len(fs._PALETTE)]
        ys, xs = win.slices
        centre = prev[win.top + win.height // 2 - 16: win.top + win.height // 2 + 16,
                      win.left + win.width // 2 - 16: win.left + win.width // 2 + 16]
        assert (centre - color).abs().amax(-1).lt(1e-6).sum() > 10, win


# ---------------------------------------------------------------------------------------------- exact Gaussian model


def _gaussian_field(height, width, length=3.0):
    """Dense covariance of an H x W stationary Gaussian latent (the pack's exact test model,
    ``alignnoise_core.inpaint.gaussian``), cut from a torus twice the size so the canvas has no wrap-around."""
    prior = GaussianLatentPrior(channels=1, height=2 * height, width=2 * width, lengthscales=(length,),
                                variances=(1.0,), means=(0.0,))
    full = prior.covariance(0).view(2 * height, 2 * width, 2 * height, 2 * width)
    return full[:height, :width, :height, :width].reshape(height * width, height * width)


def _conditional_mean(cov, values, known):
    """E[x | x_known = values_known] for a zero-mean Gaussian with covariance ``cov`` (flattened)."""
    k, u = known.nonzero().flatten(), (~known).nonzero().flatten()
    out = values.clone()
    out[u] = cov[u][:, k] @ torch.linalg.solve(cov[k][:, k], values[k])
    return out


def _seam_errors(overlap, height=8, width=72, window=16, source=16, seed=0):
    """Outpaint the right of a Gaussian sample with windows whose sampler is the exact MMSE denoiser
    (conditional mean given the crop's known cells); compare with the exact conditional mean of the
    whole canvas given the source. Returns the mean |error| at seam columns and elsewhere."""
    cov = _gaussian_field(height, width)
    g = torch.Generator().manual_seed(seed)
    truth = torch.linalg.cholesky(cov) @ torch.randn(height * width, generator=g, dtype=torch.float64)
    mask = torch.ones(height, width)
    mask[:, :source] = 0
    reference = _conditional_mean(cov, truth, (mask == 0).flatten()).view(height, width)
    image = torch.where(mask == 0, truth.view(height, width), torch.zeros(())).float()[..., None]

    def mmse(win, view, regenerate, guide):
        ys, xs = win.slices
        sub = cov.view(height, width, height, width)[ys, xs][:, :, ys, xs].reshape(view[..., 0].numel(), -1)
        est = _conditional_mean(sub, view[..., 0].flatten().double(), (regenerate == 0).flatten())
        return est.view(view.shape).float()

    plan = fs.plan_windows(mask, window, overlap, "raster", align=1)
    out = fs.outpaint_windows(image, mask, plan, mmse, feather=0)[..., 0].double()
    err = (out - reference).abs()
    seams = {w.left + w.width - w.pending // height for w in plan}  # first generated column of each window
    seam_cols = sorted({c + d for c in seams for d in (-1, 0)} - set(range(source)))
    rest = [c for c in range(source, width) if c not in seam_cols]
    return float(err[:, seam_cols].mean()), float(err[:, rest].mean()), len(plan)


@pytest.mark.parametrize("seed", range(4))
def test_gaussian_seam_is_no_worse_than_inside_a_window(seed):
    seam, rest, windows = _seam_errors(overlap=0.5, seed=seed)
    assert windows == 7  # 8-cell steps over the 56 outpainted columns
    assert seam <= rest, (seam, rest)
    assert rest < 0.1  # chained windows stay close to the exact conditional mean of the whole canvas


def test_gaussian_seam_without_known_overlap_is_worse():
    """The control that makes the test above able to fail: with no overlap a window does not see the
    previous window's result, and the seam error jumps."""
    errors = [_seam_errors(overlap=0.0, seed=seed)[:2] for seed in range(4)]
    seam, rest = (sum(e[i] for e in errors) / len(errors) for i in (0, 1))
    assert seam > 1.5 * rest, errors
