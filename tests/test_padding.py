"""Host-free tests of alignnoise_core.padding (the OutpaintPad math)."""

import numpy as np
import pytest
import torch

from alignnoise_core import padding as P
from alignnoise_core.padding import PadBox


def _img(b=2, h=24, w=20, c=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, h, w, c, generator=g)


def _src(out, box, h, w):
    return out[:, box.top : box.top + h, box.left : box.left + w]


def _devices():
    devs = ["cpu"]
    if torch.cuda.is_available():
        devs.append("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        devs.append("mps")
    return devs


# ------------------------------------------------------------------------------------------- geometry


def test_per_side_exact_when_already_multiple():
    assert P.pad_box_per_side(64, 48, left=16, top=8, right=0, bottom=24, multiple=8) == PadBox(16, 8, 0, 24)


@pytest.mark.parametrize("multiple", [1, 8, 16, 32, 64])
@pytest.mark.parametrize("hw", [(1, 1), (37, 53), (64, 64), (100, 7)])
@pytest.mark.parametrize("pads", [(3, 0, 0, 0), (0, 5, 0, 9), (1, 2, 3, 4), (0, 0, 17, 0)])
def test_per_side_rounding_never_crops(multiple, hw, pads):
    h, w = hw
    box = P.pad_box_per_side(h, w, *pads, multiple=multiple)
    ch, cw = box.canvas_size(h, w)
    assert ch % multiple == 0 and cw % multiple == 0
    # Every requested pad is honoured (rounding only adds), and it adds less than one multiple per axis.
    assert all(got >= want for got, want in zip(box.as_tuple(), pads))
    assert 0 <= cw - (w + pads[0] + pads[2]) < multiple
    assert 0 <= ch - (h + pads[1] + pads[3]) < multiple


def test_per_side_rounding_goes_to_padded_sides():
    # 500 + 64 = 564 -> 568: the 4 extra px go to the only padded side on x (left); y unpadded -> bottom.
    assert P.pad_box_per_side(500, 500, left=64, multiple=8) == PadBox(68, 0, 0, 4)
    # both sides padded: split evenly (odd remainder to right/bottom)
    assert P.pad_box_per_side(64, 61, left=8, right=8, multiple=8) == PadBox(9, 0, 10, 0)


def test_per_side_zero_pads_never_round():
    assert P.pad_box_per_side(501, 333, 0, 0, 0, 0, multiple=64).is_zero


@pytest.mark.parametrize(
    "anchor, expected",
    [
        ("center", PadBox(16, 8, 16, 8)),
        ("top_left", PadBox(0, 0, 32, 16)),
        ("top", PadBox(16, 0, 16, 16)),
        ("top_right", PadBox(32, 0, 0, 16)),
        ("left", PadBox(0, 8, 32, 8)),
        ("right", PadBox(32, 8, 0, 8)),
        ("bottom_left", PadBox(0, 16, 32, 0)),
        ("bottom", PadBox(16, 16, 16, 0)),
        ("bottom_right", PadBox(32, 16, 0, 0)),
    ],
)
def test_target_anchors(anchor, expected):
    assert P.pad_box_target(48, 64, target_width=96, target_height=64, anchor=anchor) == expected


def test_target_rounding_and_zero_axis():
    box = P.pad_box_target(50, 70, target_width=100, target_height=0, anchor="center", multiple=64)
    assert box.canvas_size(50, 70) == (64, 128)  # 0 keeps the source height (50 -> rounded to 64)
    assert box == PadBox(29, 7, 29, 7)
    assert P.pad_box_target(64, 64, 64, 64, multiple=8).is_zero


def test_target_smaller_than_source_errors_with_sizes():
    with pytest.raises(ValueError, match=r"100x50.*smaller than the source image 120x40"):
        P.pad_box_target(40, 120, target_width=100, target_height=50)


@pytest.mark.parametrize("bad", [dict(left=-1), dict(bottom=-8), dict(top=2.5)])
def test_negative_or_fractional_pads_error(bad):
    with pytest.raises(ValueError, match="non-negative"):
        P.pad_box_per_side(16, 16, **bad)


def test_bad_multiple_and_anchor():
    with pytest.raises(ValueError, match="multiple"):
        P.pad_box_per_side(16, 16, left=8, multiple=0)
    with pytest.raises(ValueError, match="anchor"):
        P.pad_box_target(16, 16, 32, 32, anchor="middle")


# ----------------------------------------------------------------------------------------------- fills


@pytest.mark.parametrize("fill", P.FILL_MODES)
@pytest.mark.parametrize("box", [PadBox(5, 0, 0, 0), PadBox(0, 3, 7, 11), PadBox(40, 30, 50, 60)])
def test_source_preserved_exactly(fill, box):
    x = _img(2, 24, 20)
    r = P.outpaint_pad(x, box, fill=fill, color="#123456", seed=3, feathering=6)
    assert r.image.shape == (2, 24 + box.top + box.bottom, 20 + box.left + box.right, 3)
    assert torch.equal(_src(r.image, box, 24, 20), x)
    assert r.box == box


def test_edge_is_per_pixel_replicate_not_averaged():
    x = _img(1, 16, 12)
    box = PadBox(4, 3, 5, 2)
    out = P.fill_canvas(x, box, "edge")
    for col in range(box.left):  # left pad: every column equals the source's first column, row by row
        assert torch.equal(out[0, box.top : box.top + 16, col], x[0, :, 0])
    for col in range(box.left + 12, out.shape[2]):
        assert torch.equal(out[0, box.top : box.top + 16, col], x[0, :, -1])
    assert torch.equal(out[0, 0, 0], x[0, 0, 0])  # corner replicates the corner pixel
    assert torch.equal(out[0, -1, -1], x[0, -1, -1])
    assert x[0, :, 0].std() > 0.1  # so "not averaged" is meaningful


@pytest.mark.parametrize("fill, np_mode", [("edge", "edge"), ("reflect", "reflect"), ("symmetric", "symmetric")])
@pytest.mark.parametrize("box", [PadBox(3, 2, 1, 4), PadBox(30, 25, 41, 19)])  # second: pads > source
def test_spatial_fills_match_numpy(fill, np_mode, box):
    x = _img(2, 9, 7)
    out = P.fill_canvas(x, box, fill)
    ref = np.pad(x.numpy(), ((0, 0), (box.top, box.bottom), (box.left, box.right), (0, 0)), mode=np_mode)
    np.testing.assert_array_equal(out.numpy(), ref)


def test_reflect_single_pixel_axis():
    x = _img(1, 1, 5)
    out = P.fill_canvas(x, PadBox(2, 3, 2, 3), "reflect")
    assert torch.equal(out[0, 0], out[0, 3])  # a 1-pixel axis can only repeat itself


@pytest.mark.parametrize(
    "color, rgb",
    [("#ff8000", (1.0, 128 / 255, 0.0)), ("#0f0", (0.0, 1.0, 0.0)), ("10, 20, 30", (10 / 255, 20 / 255, 30 / 255)),
     ("0.25,0.5,0.75", (0.25, 0.5, 0.75)), ((0.1, 0.2, 0.3), (0.1, 0.2, 0.3))],
)
def test_color_fill(color, rgb):
    x = _img(1, 8, 8)
    out = P.fill_canvas(x, PadBox(4, 0, 0, 0), "color", color=color)
    assert torch.allclose(out[0, :, :4], torch.tensor(rgb).expand(8, 4, 3), atol=1e-7)


@pytest.mark.parametrize("bad", ["#12345", "red-ish", "300,0,0", "1,2", "#ggg000"])
def test_bad_color_errors_early(bad):
    with pytest.raises(ValueError, match="color"):
        P.outpaint_pad(_img(1, 8, 8), PadBox(8, 0, 0, 0), fill="color", color=bad)


def test_grey_is_exactly_half():
    out = P.fill_canvas(_img(1, 8, 8), PadBox(0, 8, 0, 8), "grey")
    assert torch.all(out[:, :8] == 0.5) and torch.all(out[:, -8:] == 0.5)


def test_blur_fill_smooth_and_colour_faithful():
    x = torch.zeros(1, 32, 32, 3)
    x[:, :16, :, 0] = 1.0  # top half red, bottom half black
    box = PadBox(32, 0, 0, 0)
    edge = P.fill_canvas(x, box, "edge")
    blur = P.fill_canvas(x, box, "blur")
    pad_e, pad_b = edge[0, :, :32, 0], blur[0, :, :32, 0]
    # blur removes the hard step the edge extension carries into the pad
    assert (pad_b.diff(dim=0).abs().max()) < 0.5 * pad_e.diff(dim=0).abs().max()
    assert pad_b[0].min() > 0.6 and pad_b[-1].max() < 0.4  # still red on top, dark at the bottom
    assert blur.min() >= 0 and blur.max() <= 1
    const = torch.full((1, 16, 16, 3), 0.3)
    assert torch.allclose(P.fill_canvas(const, PadBox(8, 8, 8, 8), "blur"), torch.full((1, 32, 32, 3), 0.3), atol=1e-5)


def test_blur_radius_parameter_small_radius_path():
    x = _img(1, 12, 12)
    a = P.fill_canvas(x, PadBox(6, 0, 0, 0), "blur", blur_radius=2)  # direct (no downsample) path
    b = P.fill_canvas(x, PadBox(6, 0, 0, 0), "blur", blur_radius=0)  # radius 0 == edge extension
    assert torch.equal(b, P.fill_canvas(x, PadBox(6, 0, 0, 0), "edge"))
    assert not torch.equal(a, b)


def test_noise_fill_seeded():
    x = _img(2, 16, 16)
    box = PadBox(16, 16, 16, 16)
    a = P.fill_canvas(x, box, "noise", seed=7)
    b = P.fill_canvas(x, box, "noise", seed=7)
    c = P.fill_canvas(x, box, "noise", seed=8)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.min() >= 0 and a.max() <= 1
    resid = a - P.fill_canvas(x, box, "blur")
    assert resid[:, :16].std() > 0.1  # real noise in the pads, around the blurred extension
    const = torch.full((1, 8, 8, 3), 0.4)  # zero source std -> no noise
    assert torch.allclose(P.fill_canvas(const, PadBox(4, 4, 4, 4), "noise"), torch.full((1, 16, 16, 3), 0.4), atol=1e-5)


def test_unknown_fill():
    with pytest.raises(ValueError, match="fill"):
        P.outpaint_pad(_img(), PadBox(8, 0, 0, 0), fill="smear")


# ------------------------------------------------------------------------------------------------ mask


def _ramp_ref(d, F, O, curve):
    if d < O:
        return 1.0
    if F == 0 or d >= O + F:
        return 0.0
    t = (O + F - d) / F
    return {"quadratic": t * t, "linear": t, "smooth": t * t * (3 - 2 * t)}[curve]


@pytest.mark.parametrize("curve", P.FEATHER_CURVES)
@pytest.mark.parametrize("F, O", [(0, 0), (5, 0), (0, 3), (4, 2), (9, 6)])
def test_mask_values_left_pad(curve, F, O):
    h, w = 12, 30
    box = PadBox(8, 0, 0, 0)
    r = P.outpaint_pad(_img(1, h, w), box, feathering=F, overlap=O, feather_curve=curve)
    m = r.mask[0]
    assert r.mask.shape == (1, h, w + 8)
    assert torch.all(m[:, :8] == 1.0)  # pads exactly 1
    for j in range(w):
        want = _ramp_ref(j, F, O, curve)
        assert torch.all(m[:, 8 + j] == torch.tensor(want, dtype=torch.float32)), (j, m[0, 8 + j], want)
    assert torch.all(m[:, 8 + O + F :] == 0.0)  # exactly 0 beyond feather + overlap


@pytest.mark.parametrize("curve", P.FEATHER_CURVES)
def test_mask_symmetric_and_only_padded_sides(curve):
    h, w, F = 40, 40, 6
    box = PadBox(8, 0, 8, 16)  # top not padded -> no feather there
    m = P.outpaint_pad(_img(1, h, w), box, feathering=F, feather_curve=curve).mask[0]
    src = m[: h, 8 : 8 + w]
    assert torch.equal(src, src.flip(1))  # left/right mirror-symmetric
    assert torch.all(src[:h - F, F : w - F] == 0)  # untouched interior incl. the unpadded top rows
    assert torch.all(src[h - 1, F:-F] == 1.0)  # bottom edge row (d=0) fully regenerated
    assert torch.all(m[h:] == 1.0)
    # corner: nearest padded side wins (max of the per-side ramps)
    assert src[h - 1, 0] == 1.0 and src[h - 3, 1] == src[h // 2, 1] > 0  # d = 1 from the left wins


def test_feathering_larger_than_image_is_not_skipped():
    # core skips feathering silently when 2*feathering >= H or W; we ramp over the whole source
    m = P.outpaint_pad(_img(1, 10, 10), PadBox(8, 0, 0, 0), feathering=40).mask[0, :, 8:]
    assert torch.all(m > 0) and torch.all(m[:, :-1] > m[:, 1:])


def test_hard_mask_is_binary_and_covers_band():
    r = P.outpaint_pad(_img(1, 16, 32), PadBox(8, 0, 0, 0), feathering=5, overlap=2, mask_mode="hard")
    m = r.mask[0]
    assert set(m.unique().tolist()) == {0.0, 1.0}
    assert torch.all(m[:, : 8 + 7] == 1) and torch.all(m[:, 8 + 7 :] == 0)


def test_unknown_curve_and_mask_mode_and_negative_feather():
    x, box = _img(), PadBox(8, 0, 0, 0)
    with pytest.raises(ValueError, match="feather_curve"):
        P.outpaint_pad(x, box, feather_curve="cubic")
    with pytest.raises(ValueError, match="mask_mode"):
        P.outpaint_pad(x, box, mask_mode="fuzzy")
    with pytest.raises(ValueError, match="feathering"):
        P.outpaint_pad(x, box, feathering=-1)
    with pytest.raises(ValueError, match="overlap"):
        P.outpaint_pad(x, box, overlap=-2)


# ------------------------------------------------------------------------------------- incoming masks


def test_zero_pads_identity():
    x = _img(3, 17, 23)
    r = P.outpaint_pad(x, PadBox(0, 0, 0, 0), fill="noise", feathering=10, overlap=4)
    assert r.image is x
    assert r.mask.shape == (3, 17, 23) and torch.all(r.mask == 0)
    m = torch.rand(17, 23)
    r = P.outpaint_pad(x, PadBox(0, 0, 0, 0), mask=m, feathering=10)
    assert torch.equal(r.mask, m.expand(3, 17, 23))


def test_incoming_mask_padded_merged_and_still_feathered():
    x = _img(2, 16, 24)
    box = PadBox(8, 0, 0, 8)
    inc = torch.zeros(1, 16, 24)
    inc[:, 4:8, 12:18] = 0.7  # an interior region to regenerate too
    r = P.outpaint_pad(x, box, mask=inc, feathering=4)
    no = P.outpaint_pad(x, box, feathering=4)
    assert r.mask.shape == (2, 24, 32)
    assert torch.all(r.mask[:, 16:] == 1) and torch.all(r.mask[:, :, :8] == 1)
    src = r.mask[:, :16, 8:]
    assert torch.all(src[:, 4:8, 12:18] == 0.7)
    # feathering still applies with a mask connected (KJNodes #64): near the left seam == no-mask ramp
    assert torch.equal(src[:, :, :4], no.mask[:, :16, 8:12])
    assert torch.equal(r.mask, torch.maximum(no.mask, r.mask))


def test_incoming_mask_per_image_and_2d():
    x = _img(2, 8, 8)
    per = torch.stack([torch.zeros(8, 8), torch.ones(8, 8)])
    r = P.outpaint_pad(x, PadBox(8, 0, 0, 0), mask=per, feathering=0)
    assert torch.all(r.mask[0, :, 8:] == 0) and torch.all(r.mask[1] == 1)
    r2 = P.outpaint_pad(x, PadBox(8, 0, 0, 0), mask=torch.ones(8, 8), feathering=0)
    assert torch.all(r2.mask == 1)


def test_hard_mode_binarises_incoming_mask():
    inc = torch.zeros(1, 8, 8)
    inc[0, 2, 2] = 0.01
    r = P.outpaint_pad(_img(1, 8, 8), PadBox(0, 0, 8, 0), mask=inc, feathering=0, mask_mode="hard")
    assert r.mask[0, 2, 2] == 1 and r.mask[0, 3, 3] == 0


def test_mask_size_mismatch_names_both_shapes():
    with pytest.raises(ValueError, match=r"\(10, 12\).*\(1, 10, 12\).*\(16, 20\).*\(2, 16, 20, 3\)"):
        P.outpaint_pad(_img(2, 16, 20), PadBox(8, 0, 0, 0), mask=torch.full((1, 10, 12), 0.5))


def test_all_zero_placeholder_mask_of_other_size_is_ignored():
    # LoadImage gives a 64x64 zero mask for images without alpha; wiring it must not fail.
    x = _img(1, 16, 20)
    r = P.outpaint_pad(x, PadBox(8, 0, 0, 0), mask=torch.zeros(1, 64, 64), feathering=3)
    assert torch.equal(r.mask, P.outpaint_pad(x, PadBox(8, 0, 0, 0), feathering=3).mask)


def test_mask_batch_mismatch_names_both_shapes():
    with pytest.raises(ValueError, match=r"batch 3.*\(3, 16, 20\).*batch 2.*\(2, 16, 20, 3\)"):
        P.outpaint_pad(_img(2, 16, 20), PadBox(8, 0, 0, 0), mask=torch.zeros(3, 16, 20))


def test_mask_bad_rank():
    with pytest.raises(ValueError, match="'mask' must be a MASK"):
        P.outpaint_pad(_img(1, 4, 4), PadBox(8, 0, 0, 0), mask=torch.zeros(4))


# ------------------------------------------------------------------------------------ images and batches


@pytest.mark.parametrize(
    "bad, msg",
    [
        (torch.zeros(0, 8, 8, 3), "empty"),
        (torch.zeros(1, 8, 8, 1), "C=1"),
        (torch.zeros(1, 8, 8, 2), "C=2"),
        (torch.zeros(8, 8, 3), r"\[B,H,W,C\]"),
        (torch.zeros(1, 0, 8, 3), "zero height"),
        (torch.zeros(1, 8, 8, 3, dtype=torch.uint8), "floating"),
    ],
)
def test_bad_images(bad, msg):
    with pytest.raises(ValueError, match=msg):
        P.outpaint_pad(bad, PadBox(8, 0, 0, 0))


def test_rgba_alpha_policy():
    x = _img(1, 8, 8, c=4)
    x[..., 3] = 0.25
    for fill in P.FILL_MODES:
        out = P.outpaint_pad(x, PadBox(4, 4, 4, 4), fill=fill, color="#ff0000").image
        assert out.shape[-1] == 4
        assert torch.all(out[0, 4:12, 4:12, 3] == 0.25)  # source alpha kept
        pad_alpha = torch.cat([out[0, :4, :, 3].flatten(), out[0, -4:, :, 3].flatten(), out[0, :, :4, 3].flatten()])
        assert torch.all(pad_alpha == 1.0)  # new area opaque in every fill mode
    out = P.outpaint_pad(x, PadBox(4, 0, 0, 0), fill="color", color="#ff0000").image
    assert torch.equal(out[0, 0, 0], torch.tensor([1.0, 0.0, 0.0, 1.0]))


@pytest.mark.parametrize("hw", [(1, 1), (1, 50), (50, 1), (7, 131), (129, 5)])
def test_any_aspect(hw):
    h, w = hw
    x = _img(1, h, w)
    box = P.pad_box_per_side(h, w, 3, 5, 7, 2, multiple=8)
    for fill in P.FILL_MODES:
        r = P.outpaint_pad(x, box, fill=fill, feathering=3, overlap=1)
        ch, cw = box.canvas_size(h, w)
        assert r.image.shape == (1, ch, cw, 3) and r.mask.shape == (1, ch, cw)
        assert torch.equal(_src(r.image, box, h, w), x)
        assert torch.isfinite(r.image).all() and torch.isfinite(r.mask).all()


@pytest.mark.parametrize("fill", P.FILL_MODES)
def test_batch_equals_per_image(fill):
    x = _img(3, 12, 10)
    box = PadBox(6, 2, 0, 8)
    r = P.outpaint_pad(x, box, fill=fill, feathering=3)
    for i in range(3):
        ri = P.outpaint_pad(x[i : i + 1], box, fill=fill, feathering=3)
        if fill != "noise":  # noise draws one seeded tensor for the whole batch
            assert torch.allclose(r.image[i : i + 1], ri.image, atol=1e-6)
        assert torch.equal(r.mask[i : i + 1], ri.mask)
    assert r.mask.shape[0] == 3


def test_inputs_not_mutated_and_inference_mode():
    with torch.inference_mode():
        x = _img(2, 12, 12, c=4)
        m = torch.rand(2, 12, 12)
        x0, m0 = x.clone(), m.clone()
        for fill in P.FILL_MODES:
            P.outpaint_pad(x, PadBox(4, 4, 4, 4), mask=m, fill=fill, feathering=3)
        assert torch.equal(x, x0) and torch.equal(m, m0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.float64])
def test_dtype_preserved(dtype):
    x = _img(1, 16, 16).to(dtype)
    for fill in P.FILL_MODES:
        r = P.outpaint_pad(x, PadBox(8, 0, 8, 0), fill=fill, feathering=4)
        assert r.image.dtype == dtype and r.mask.dtype == dtype
        assert torch.equal(_src(r.image, PadBox(8, 0, 8, 0), 16, 16), x)


@pytest.mark.parametrize("device", _devices() + ["meta"])
def test_device_preserved(device):
    # "meta" exercises every op without data: anything silently created on the CPU would fail here.
    x = _img(2, 16, 16).to(device)
    m = torch.rand(1, 16, 16).to(device)
    for fill in P.FILL_MODES:
        r = P.outpaint_pad(x, PadBox(8, 4, 0, 12), mask=m, fill=fill, feathering=4, overlap=2)
        assert r.image.device == x.device and r.mask.device == x.device
        assert r.image.shape == (2, 32, 24, 3) and r.mask.shape == (2, 32, 24)


def test_noise_same_on_every_device():
    x = _img(1, 8, 8)
    ref = P.fill_canvas(x, PadBox(4, 4, 4, 4), "noise", seed=11)
    for device in _devices():
        got = P.fill_canvas(x.to(device), PadBox(4, 4, 4, 4), "noise", seed=11).cpu()
        assert torch.allclose(got, ref, atol=1e-5)
