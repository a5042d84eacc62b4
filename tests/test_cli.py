"""The standalone path: ``python -m alignnoise_core`` on a tiny random diffusers inpainting pipeline.

No downloads: the pipeline (9-channel UNet, VAE, CLIP text model, byte-level tokenizer from generated
vocab/merges files) is built from local configs and saved to a temp dir. Runs are tiny (64 px source,
128 px canvas, 2 steps) and single-threaded (2 CPU threads fight badly on a loaded CI machine).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("transformers")
from PIL import Image  # noqa: E402

from alignnoise_core import cli, diffusers_models, media, pipeline, zoom  # noqa: E402
from alignnoise_core.tiny_pipeline import build_tiny_inpaint_pipeline, make_tiny_model  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FAST = ["--steps", "2", "--balance-iterations", "2", "-q"]


@pytest.fixture(scope="module", autouse=True)
def _offline():
    """No hub access (HF_HUB_OFFLINE=1, also patched into huggingface_hub's constants read at import),
    restored afterwards. (One torch thread for the whole suite comes from conftest.)"""
    import huggingface_hub.constants as hub_constants

    env, const = os.environ.get("HF_HUB_OFFLINE"), hub_constants.HF_HUB_OFFLINE
    os.environ["HF_HUB_OFFLINE"] = "1"
    hub_constants.HF_HUB_OFFLINE = True
    yield
    hub_constants.HF_HUB_OFFLINE = const
    if env is None:
        os.environ.pop("HF_HUB_OFFLINE", None)
    else:
        os.environ["HF_HUB_OFFLINE"] = env


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("tiny-inpaint"))


@pytest.fixture(scope="module")
def pipe(model_dir):
    return pipeline.load_inpaint_pipeline(str(model_dir), device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A 64x64 smooth colour pattern (uint8 array and its PNG path)."""
    y, x = np.mgrid[0:64, 0:64] / 63.0
    arr = np.stack([x, y, 0.5 + 0.4 * np.sin(6 * x) * np.cos(5 * y)], -1)
    arr = (arr * 255).round().astype(np.uint8)
    path = tmp_path_factory.mktemp("img") / "src.png"
    Image.fromarray(arr).save(path)
    return arr, path


def _env():
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    return env


def _run(args, tmp_path, name="out.png"):
    out = tmp_path / name
    rc = cli.main([*args, "--out", str(out)])
    return rc, out


def _read(path) -> np.ndarray:
    return np.array(Image.open(path).convert("RGB"))


# --------------------------------------------------------------------------------------------- outpaint


def test_outpaint_subprocess_end_to_end(model_dir, source, tmp_path):
    arr, src = source
    out, mask_path = tmp_path / "wide.png", tmp_path / "mask.png"
    proc = subprocess.run(
        [sys.executable, "-m", "alignnoise_core", "outpaint", str(src), "--model", str(model_dir), "--left", "32",
         "--right", "32", "--top", "24", "--bottom", "40", "--out", str(out), "--save-mask", str(mask_path), *FAST],
        env=_env(), capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    img = _read(out)
    assert img.shape == (64 + 24 + 40, 64 + 32 + 32, 3)
    mask = _read(mask_path)[..., 0]
    keep = mask == 0
    assert keep.sum() == 32 * 32 and keep[40:72, 48:80].all()  # 64 px source minus 16 px feathering per side
    # paste-back: every pixel the mask keeps is the source pixel, bit for bit
    canvas = np.zeros_like(img)
    canvas[24:88, 32:96] = arr
    assert np.array_equal(img[keep], canvas[keep])
    assert keep[24:88, 32:96].sum() == keep.sum()  # only source pixels are kept
    assert (mask[:24] == 255).all() and (mask[:, :32] == 255).all() and (mask[88:] == 255).all()
    assert img[:24].std() > 0  # the border was generated


def test_outpaint_target_size_anchor_and_determinism(model_dir, source, tmp_path):
    arr, src = source
    base = ["outpaint", str(src), "--model", str(model_dir), "--width", "120", "--height", "64", "--anchor", "left",
            "--feathering", "0", *FAST]
    rc1, o1 = _run(base, tmp_path, "a.png")
    rc2, o2 = _run(base, tmp_path, "b.png")
    rc3, o3 = _run([*base, "--seed", "7"], tmp_path, "c.png")
    assert rc1 == rc2 == rc3 == 0
    a, b, c = _read(o1), _read(o2), _read(o3)
    assert a.shape == (64, 120, 3)  # 120 is a multiple of 8; the image sits on the left
    assert np.array_equal(a[:, :64], arr)  # no feathering: the whole source is pasted back
    assert np.array_equal(a, b)  # same seed, same picture
    assert not np.array_equal(a[:, 64:], c[:, 64:])  # another seed, another border


def test_outpaint_several_images_one_model_load(model_dir, source, tmp_path, caplog):
    arr, src = source
    second = tmp_path / "second.png"
    Image.fromarray(arr[::-1].copy()).save(second)
    outdir = tmp_path / "outs"
    rc = cli.main(["outpaint", str(src), str(second), "--model", str(model_dir), "--all", "32", "--out",
                   str(outdir) + "/", "--no-attention-balance", "--no-frequency-refine", *FAST])
    assert rc == 0
    a, b = _read(outdir / "src_outpainted.png"), _read(outdir / "second_outpainted.png")
    assert a.shape == b.shape == (128, 128, 3)
    assert np.array_equal(a[48:80, 48:80], arr[16:48, 16:48])
    assert np.array_equal(b[48:80, 48:80], arr[::-1][16:48, 16:48])
    rc = cli.main(["outpaint", str(src), str(second), "--model", str(model_dir), "--all", "32", "--save-mask",
                   str(tmp_path / "m.png")])
    assert rc == 2 and "single input image" in caplog.text


def test_paste_back_switch(pipe, source):
    arr, _ = source
    img = torch.from_numpy(arr).float() / 255
    s = pipeline.AlignNoiseSettings(steps=2, balance_iterations=2)
    on = pipeline.outpaint(pipe, img, left=32, right=32, settings=s, feathering=0, progress=False)
    off = pipeline.outpaint(pipe, img, left=32, right=32, settings=dataclasses.replace(s, paste_back=False),
                            feathering=0, progress=False)
    assert torch.equal(on.image[:, 32:96], img)
    assert not torch.allclose(off.image[:, 32:96], img, atol=0.05)  # the model regenerates the source
    assert torch.equal(on.image[:, :32], off.image[:, :32])  # the generated border is the same


def test_gradient_checkpointing_same_image(pipe, source, monkeypatch):
    """--gradient-checkpointing reaches stage 1 and changes memory only, not the picture."""
    from alignnoise_core import diffusers_bridge

    arr, _ = source
    img = torch.from_numpy(arr).float() / 255
    flags, real = [], diffusers_bridge.optimize_unet_noise
    monkeypatch.setattr(diffusers_bridge, "optimize_unet_noise",
                        lambda *a, **kw: flags.append(kw["gradient_checkpointing"]) or real(*a, **kw))
    s = pipeline.AlignNoiseSettings(steps=2, balance_iterations=3, balance_threshold=0.0)
    off = pipeline.outpaint(pipe, img, left=32, settings=s, feathering=0, progress=False)
    on = pipeline.outpaint(pipe, img, left=32, settings=dataclasses.replace(s, gradient_checkpointing=True),
                           feathering=0, progress=False)
    assert flags == [False, True]
    assert torch.allclose(on.image, off.image, atol=1e-4)
    args = cli.build_parser().parse_args(["outpaint", "a.png", "--model", "m", "--left", "8",
                                          "--gradient-checkpointing"])
    assert cli._settings(args).gradient_checkpointing


@pytest.mark.parametrize("scheduler", ["pndm", "ddim"])
def test_plain_path_equals_diffusers_pipeline(pipe, source, scheduler):
    """Both stages off = diffusers' own StableDiffusionInpaintPipeline with the same noise."""
    arr, _ = source
    if scheduler == "ddim":
        pipe = build_tiny_inpaint_pipeline(scheduler="ddim")
    canvas = np.zeros((128, 128, 3), np.uint8)
    canvas[32:96, 32:96] = arr
    mask = np.full((128, 128), 255, np.uint8)
    mask[32:96, 32:96] = 0
    s = pipeline.AlignNoiseSettings(steps=3, seed=11, attention_balance=False, frequency_refine=False,
                                    paste_back=False)
    ours = pipeline.inpaint(pipe, torch.from_numpy(canvas).float() / 255, torch.from_numpy(mask).float() / 255, s,
                            progress=False)
    z = pipeline.initial_noise((1, 4, 16, 16), 11)
    ref = pipe(" ", image=Image.fromarray(canvas), mask_image=Image.fromarray(mask), num_inference_steps=3,
               guidance_scale=0.0, latents=z, generator=torch.Generator().manual_seed(11), output_type="np").images[0]
    assert np.abs(ours.image.numpy() - ref).max() < 1e-4
    assert ours.unet_calls == (4 if scheduler == "pndm" else 3)  # PNDM runs steps + 1 timesteps


def test_stage_switches_change_result_and_cost(pipe, source):
    arr, _ = source
    img = torch.from_numpy(arr).float() / 255
    base = pipeline.AlignNoiseSettings(steps=2, balance_iterations=2, balance_threshold=0.0)  # never converges
    runs = {}
    for name, kw in {
        "both": {},
        "no_balance": dict(attention_balance=False),
        "no_refine": dict(frequency_refine=False),
        "plain": dict(attention_balance=False, frequency_refine=False),
    }.items():
        runs[name] = pipeline.outpaint(pipe, img, top=32, bottom=32, settings=dataclasses.replace(base, **kw),
                                       progress=False)
    border = {k: v.image[:32] for k, v in runs.items()}
    names = list(border)
    for i in range(len(names)):
        for j in range(i + 1, len(names)):
            assert not torch.allclose(border[names[i]], border[names[j]], atol=1e-3), (names[i], names[j])
    # cost: PNDM with 2 steps runs 3 timesteps per pass; stage 1 ran 2 forwards + 2 backwards
    assert runs["plain"].result.unet_calls == 3
    assert runs["no_refine"].result.unet_calls == 3 + 2 and runs["no_refine"].result.backward_calls == 2
    assert runs["no_balance"].result.unet_calls == 6
    assert runs["both"].result.unet_calls == 2 + 6
    assert runs["both"].result.balance.forwards == 2
    # stage 2 keeps the first pass's noise in the source region: no NaN, same size
    assert torch.isfinite(runs["both"].image).all()


def test_fast_sampling_and_fresh_scheduler_per_pass(pipe, source):
    arr, _ = source
    img = torch.from_numpy(arr).float() / 255
    s = pipeline.AlignNoiseSettings(steps=4, attention_balance=False, fast_sampling=True)
    assert s.pass_steps() == [2, 4]
    res = pipeline.outpaint(pipe, img, left=32, right=32, settings=s, progress=False)
    assert res.result.unet_calls == 3 + 5  # fresh PNDM per pass: 2+1 then 4+1 timesteps
    # no sampler state leaks between passes or runs: the same call again gives the same picture
    again = pipeline.outpaint(pipe, img, left=32, right=32, settings=s, progress=False)
    assert torch.equal(res.image, again.image)


# ------------------------------------------------------------------------------------------------- zoom


def test_zoom_frames_dir_counts_and_ends(model_dir, source, tmp_path):
    arr, src = source
    frames_dir, keys_dir = tmp_path / "frames", tmp_path / "keys"
    rc = cli.main(["zoom", str(src), "--model", str(model_dir), "--steps-out", "2", "--frames-per-step", "3",
                   "--out", str(frames_dir) + "/", "--keyframes-dir", str(keys_dir), "--no-attention-balance",
                   "--overlap", "4", "--mask-blur", "0", *FAST])
    assert rc == 0
    frames = sorted(frames_dir.glob("frame_*.png"))
    keys = sorted(keys_dir.glob("frame_*.png"))
    assert len(keys) == 3 and len(frames) == zoom.frame_count(3, 3) == 7
    first, last = _read(frames[0]), _read(frames[-1])
    assert np.array_equal(first, arr)  # zoom out starts on the start image itself
    assert np.array_equal(last, _read(keys[-1]))  # and ends on the last keyframe
    # each keyframe's centre is the previous keyframe shrunk 2x, pasted back (up to uint8 rounding)
    k0 = torch.from_numpy(_read(keys[0])).float() / 255
    k1 = _read(keys[1]).astype(int)
    shrunk, _ = zoom.shrink_to_center(k0, 2.0)
    shrunk = media.to_uint8(shrunk).astype(int)
    assert np.abs(k1[20:44, 20:44] - shrunk[20:44, 20:44]).max() <= 1
    assert k1[:8].std() > 0  # the border was generated


def test_zoom_direction_in_mp4(model_dir, source, tmp_path):
    av = pytest.importorskip("av")
    _, src = source
    out = tmp_path / "zoom.mp4"
    rc = cli.main(["zoom", str(src), "--model", str(model_dir), "--steps-out", "1", "--frames-per-step", "4",
                   "--direction", "in", "--out", str(out), "--no-attention-balance", "--no-frequency-refine",
                   "--steps", "1", "-q"])
    assert rc == 0
    with av.open(str(out)) as c:
        decoded = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    assert len(decoded) == 5 and decoded[0].shape == (64, 64, 3)


@pytest.mark.parametrize("suffix", ["gif", "webp"])
def test_write_animated(tmp_path, suffix):
    frames = torch.rand(5, 16, 24, 3)
    p = media.write_video(frames, tmp_path / f"v.{suffix}", fps=10)
    with Image.open(p) as im:
        assert im.n_frames == 5 and im.size == (24, 16)


# ------------------------------------------------------------------------------------------- error paths


def test_missing_model_dir_subprocess(source, tmp_path):
    _, src = source
    proc = subprocess.run(
        [sys.executable, "-m", "alignnoise_core", "outpaint", str(src), "--model", str(tmp_path / "nope"), "--all",
         "32", "--out", str(tmp_path / "o.png")],
        env=_env(), capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 2
    assert "Model directory not found" in proc.stderr and "nope" in proc.stderr
    assert not (tmp_path / "o.png").exists()


def test_unknown_model_id_offline_subprocess(source, tmp_path):
    _, src = source
    proc = subprocess.run(
        [sys.executable, "-m", "alignnoise_core", "outpaint", str(src), "--model", "nobody/no-such-inpaint-model",
         "--all", "32", "--out", str(tmp_path / "o.png")],
        env=_env(), capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 1
    assert "Could not load model nobody/no-such-inpaint-model" in proc.stderr


def test_not_an_inpainting_pipeline(source, tmp_path, caplog):
    _, src = source
    d = tmp_path / "txt2img"
    d.mkdir()
    (d / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    rc = cli.main(["outpaint", str(src), "--model", str(d), "--all", "32", "--out", str(tmp_path / "o.png")])
    assert rc == 2
    assert "is a StableDiffusionPipeline, not an inpainting pipeline" in caplog.text


def test_inpaint_class_with_4_channel_unet(source, tmp_path, caplog):
    from diffusers import UNet2DConditionModel

    _, src = source
    p = build_tiny_inpaint_pipeline()
    cfg = dict(p.unet.config)
    cfg["in_channels"] = 4
    p.unet = UNet2DConditionModel.from_config(cfg)
    p.register_modules(unet=p.unet)
    p.save_pretrained(str(tmp_path / "four"))
    rc = cli.main(["outpaint", str(src), "--model", str(tmp_path / "four"), "--all", "32", "--out",
                   str(tmp_path / "o.png")])
    assert rc == 2
    assert "4-channel UNet, not an inpainting UNet" in caplog.text


@pytest.mark.parametrize(
    "args, message",
    [
        (["--width", "32"], "smaller than the source image"),
        ([], "Nothing to outpaint"),
        (["--all", "5000"], "cannot fit in memory"),
        (["--left", "32", "--width", "200"], "not both"),
        (["--all", "32", "--steps", "0"], "steps must be a positive integer"),
        (["--all", "32", "--passes", "0"], "passes must be a number in [1, 8]"),
        (["--all", "32", "--fill", "color", "--color", "nope"], "Cannot parse color"),
    ],
)
def test_impossible_sizes_and_settings(model_dir, source, tmp_path, caplog, args, message):
    _, src = source
    rc = cli.main(["outpaint", str(src), "--model", str(model_dir), *args, "--out", str(tmp_path / "o.png")])
    assert rc == 2
    assert message in caplog.text
    assert not (tmp_path / "o.png").exists()


def test_unreadable_and_missing_image(model_dir, tmp_path, caplog):
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    out = str(tmp_path / "o.png")
    assert cli.main(["outpaint", str(bad), "--model", str(model_dir), "--all", "32", "--out", out]) == 2
    assert "Cannot read" in caplog.text and "bad.png" in caplog.text
    assert cli.main(["outpaint", str(tmp_path / "missing.png"), "--model", str(model_dir), "--all", "32"]) == 2
    assert "Input image not found" in caplog.text


@pytest.mark.parametrize(
    "args, message",
    [
        (["--steps-out", "0"], "K = 0"),
        (["--steps-out", "2", "--zoom", "1.0"], "must be > 1"),
        (["--steps-out", "2", "--size", "100x64"], "multiple of 8"),
        (["--steps-out", "2", "--overlap", "40"], "overlap 40.0 px is larger"),
        (["--steps-out", "2", "--frames-per-step", "0"], "frames_per_keyframe must be >= 1"),
        (["--steps-out", "2", "--out", "zoom.avi"], "unknown video type"),
    ],
)
def test_zoom_errors(model_dir, source, tmp_path, caplog, args, message):
    _, src = source
    if "--out" not in args:
        args = [*args, "--out", str(tmp_path / "z.gif")]
    rc = cli.main(["zoom", str(src), "--model", str(model_dir), *args])
    assert rc == 2
    assert message in caplog.text


def test_bad_output_suffix_and_usage(source, tmp_path, caplog, capsys):
    _, src = source
    assert cli.main(["outpaint", str(src), "--all", "32", "--out", str(tmp_path / "o.txt")]) == 2
    assert "unknown image type" in caplog.text
    assert cli.main(["outpaint", str(src), "--bogus"]) == 2  # argparse usage error
    assert cli.main([]) == 2
    assert cli.main(["--help"]) == 0
    assert "outpaint" in capsys.readouterr().out
    assert cli.main(["outpaint", "--help"]) == 0
    text = "".join(capsys.readouterr().out.split())  # help lines wrap with the terminal width
    for opt in ("--no-attention-balance", "--no-frequency-refine", "--steps", "--seed", "--guidance", "--device",
                "--dtype", "--no-paste-back", "stabilityai/stable-diffusion-2-inpainting"):
        assert opt in text


def test_device_dtype_auto():
    dev, dt = diffusers_models.resolve_device_dtype("auto", "auto")
    if torch.cuda.is_available():
        assert dev.type == "cuda" and dt == torch.float16
    else:
        assert dev.type == "cpu" and dt == torch.float32
    with pytest.raises(ValueError, match="Unknown dtype"):
        diffusers_models.resolve_device_dtype("cpu", "int8")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            diffusers_models.resolve_device_dtype("cuda", "auto")


def test_make_tiny_model_command(tmp_path):
    d = tmp_path / "m"
    assert cli.main(["make-tiny-model", str(d), "-q"]) == 0
    index = json.loads((d / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionInpaintPipeline"
    assert json.loads((d / "unet" / "config.json").read_text())["in_channels"] == 9
    shutil.rmtree(d)


def test_readme_python_api(model_dir, source, tmp_path):
    """The README's Python example, on the tiny model and tiny settings."""
    from alignnoise_core.media import load_image, save_image, write_video
    from alignnoise_core.pipeline import (AlignNoiseSettings, fit_to_multiple, load_inpaint_pipeline, outpaint,
                                          zoom_video)

    arr, src = source
    pipe = load_inpaint_pipeline(str(model_dir))
    settings = AlignNoiseSettings(steps=2, seed=2226, balance_iterations=2)
    result = outpaint(pipe, load_image(src), left=32, right=32, settings=settings, progress=False)
    save_image(result.image, tmp_path / "wide.png")
    assert _read(tmp_path / "wide.png").shape == (64, 128, 3)
    assert result.result.balance is not None and result.result.balance.forwards >= 1
    start = fit_to_multiple(load_image(src))
    video = zoom_video(pipe, start, steps_out=1, zoom_factor=2.0, frames_per_step=2, settings=settings,
                       progress=False)
    write_video(video.frames, tmp_path / "zoom.gif", fps=10)
    assert video.keyframes.shape == (2, 64, 64, 3) and video.frames.shape == (3, 64, 64, 3)
    assert torch.equal(video.frames[0], load_image(src)) and torch.equal(video.frames[-1], video.keyframes[-1])


def test_guidance_and_prompt_change_the_result(pipe, source):
    arr, _ = source
    img = torch.from_numpy(arr).float() / 255
    s = pipeline.AlignNoiseSettings(steps=2, balance_iterations=1)
    a = pipeline.outpaint(pipe, img, left=32, settings=s, progress=False).image  # CFG batches, same UNet calls
    b = pipeline.outpaint(pipe, img, left=32, settings=dataclasses.replace(s, guidance=4.0, prompt="the an"),
                          progress=False)
    assert b.result.unet_calls == pipeline.outpaint(pipe, img, left=32, settings=s, progress=False).result.unet_calls
    assert not torch.allclose(a[:, :32], b.image[:, :32], atol=1e-3)
    assert torch.isfinite(b.image).all()


def test_load_image_modes_and_exif(tmp_path):
    rgba = Image.new("RGBA", (10, 6), (10, 20, 30, 0))
    rgba.save(tmp_path / "a.png")
    Image.new("L", (10, 6), 128).save(tmp_path / "g.png")
    Image.new("RGB", (10, 6), (200, 0, 0)).convert("P").save(tmp_path / "p.png")
    assert media.load_image(tmp_path / "a.png").shape == (6, 10, 3)
    assert torch.allclose(media.load_image(tmp_path / "g.png"), torch.full((6, 10, 3), 128 / 255))
    red = media.load_image(tmp_path / "p.png")[0, 0]
    assert red[0] > 0.7 and red[1] < 0.1  # palette decoded to RGB (quantised)
    im = Image.new("RGB", (10, 6), (0, 0, 0))
    exif = im.getexif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    im.save(tmp_path / "r.jpg", exif=exif)
    assert media.load_image(tmp_path / "r.jpg").shape == (10, 6, 3)
    with pytest.raises(ValueError, match="directory"):
        media.load_image(tmp_path)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # numpy 2 notes from inside diffusers' schedulers
@pytest.mark.parametrize("name", ["euler_a", "dpm++"])
def test_other_schedulers(model_dir, source, tmp_path, name):
    """Euler-type schedulers scale the start by init_noise_sigma; ancestral ones draw seeded noise per step."""
    arr, src = source
    args = ["outpaint", str(src), "--model", str(model_dir), "--all", "32", "--scheduler", name, *FAST]
    rc1, o1 = _run(args, tmp_path, "a.png")
    rc2, o2 = _run(args, tmp_path, "b.png")
    assert rc1 == rc2 == 0
    a, b = _read(o1), _read(o2)
    assert np.array_equal(a, b) and a.shape == (128, 128, 3)
    assert np.array_equal(a[48:80, 48:80], arr[16:48, 16:48])
    assert 10 < a[:32].mean() < 245  # a picture, not a blown-out or black border


def test_second_pass_starts_from_refined_noise(pipe, source, monkeypatch):
    """Pass 2 starts from refine(z0, ẑ): the source region is exactly the re-noised first pass
    (√ᾱ·z0 + √(1−ᾱ)·ẑ at t = 999), the outpainted region gets fresh high frequencies."""
    from alignnoise_core import frequency

    arr, _ = source
    starts, outs = [], []
    real = pipeline._sample

    def spy(pipe_, start, *args, **kwargs):
        starts.append(start.clone())
        out = real(pipe_, start, *args, **kwargs)
        outs.append(out[0].clone())
        return out

    monkeypatch.setattr(pipeline, "_sample", spy)
    img = torch.from_numpy(arr).float() / 255
    s = pipeline.AlignNoiseSettings(steps=2, attention_balance=False, seed=5)
    res = pipeline.outpaint(pipe, img, left=32, right=32, settings=s, feathering=0, progress=False)
    assert len(starts) == 2
    z = pipeline.initial_noise((1, 4, 8, 16), 5)
    assert torch.equal(starts[0], z)  # no stage 1: pass 1 starts from the seeded noise
    ac = float(pipe.scheduler.alphas_cumprod[-1])
    z_t = frequency.renoise(outs[0].float(), z, ((1 - ac) / ac) ** 0.5)
    src = torch.zeros(1, 1, 8, 16, dtype=torch.bool)
    src[..., 4:12] = True  # latent columns of the 64-px source (pads of 32 px = 4 latent px)
    assert torch.allclose(starts[1].masked_select(src), z_t.masked_select(src), atol=1e-6)
    assert not torch.allclose(starts[1].masked_select(~src), z_t.masked_select(~src), atol=1e-2)
    assert torch.isfinite(res.image).all()


def test_stage1_wiring(pipe, source, monkeypatch):
    """Stage 1 gets the 1-chunk mask/masked-image latents, the conditional prompt only (also with CFG), the
    full schedule's step count (also with fast sampling) and the CLI's constants; its noise starts pass 1."""
    from alignnoise_core import diffusers_bridge

    arr, _ = source
    seen, starts = {}, []
    real, real_sample = diffusers_bridge.optimize_pipeline_noise, pipeline._sample

    def spy(pipe_, latents, mask_latents, masked_image_latents, prompt_embeds, num_inference_steps=50, **kw):
        seen.update(latents=latents.clone(), mask=mask_latents, masked=masked_image_latents, emb=prompt_embeds,
                    steps=num_inference_steps, **kw)
        res = real(pipe_, latents, mask_latents, masked_image_latents, prompt_embeds, num_inference_steps, **kw)
        seen["result"] = res
        return res

    def spy_sample(pipe_, start, *args, **kwargs):
        starts.append(start.clone())
        return real_sample(pipe_, start, *args, **kwargs)

    monkeypatch.setattr(diffusers_bridge, "optimize_pipeline_noise", spy)
    monkeypatch.setattr(pipeline, "_sample", spy_sample)
    img = torch.from_numpy(arr).float() / 255
    s = pipeline.AlignNoiseSettings(steps=4, seed=3, guidance=3.0, fast_sampling=True, balance_iterations=2,
                                    balance_lr=0.05, balance_threshold=0.0, balance_tau=0.2)
    pipeline.outpaint(pipe, img, top=32, settings=s, feathering=0, progress=False)
    assert seen["steps"] == 4 and seen["iterations"] == 2 and seen["lr"] == 0.05 and seen["tau"] == 0.2
    assert seen["mask"].shape == (1, 1, 12, 8) and seen["masked"].shape == (1, 4, 12, 8)
    assert seen["emb"].shape[0] == 1  # the conditional embedding only, although CFG doubles the sampling batch
    assert torch.equal(seen["mask"][0, 0, :4], torch.ones(4, 8)) and not seen["mask"][0, 0, 4:].any()
    assert torch.equal(seen["latents"].cpu(), pipeline.initial_noise((1, 4, 12, 8), 3))
    assert torch.equal(starts[0], seen["result"].noise.float().cpu())  # pass 1 starts from the optimised noise
    assert not torch.equal(starts[0], seen["latents"].cpu())
