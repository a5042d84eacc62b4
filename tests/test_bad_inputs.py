"""Bad inputs, host-free: the README table equals the catalogue (tests/bad_inputs.py), and the rows
that need no ComfyUI run here: the CLI, and the core checks OutpaintPad/ZoomInterpolate/FreeSizeOutpaint call."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from alignnoise_core import cli, freesize, padding, validation, zoom
from alignnoise_core.tiny_pipeline import make_tiny_model
from bad_inputs import CASES, MESSAGES

ROOT = Path(__file__).resolve().parents[1]


def _readme_rows() -> list:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Bad input", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| ") and not line.startswith("| where")]
    return [tuple(c.strip() for c in row.strip("|").split(" | ")) for row in rows if not set(row) <= set("|- ")]


def test_readme_table_is_the_catalogue():
    rows = _readme_rows()
    assert len(rows) >= 25
    expected = [(where, bad, f"`{msg}`") for _, where, bad, msg in CASES]
    assert rows == expected


def _pad(image, mask=None, target=(0, 0)):
    box = padding.pad_box_target(image.shape[1], image.shape[2], *target) if any(target) else \
        padding.pad_box_per_side(image.shape[1], image.shape[2], 8, 0, 0, 0)
    padding.validate_image(image)
    return padding.outpaint_pad(image, box, mask=mask)


def _nan(shape):
    x = torch.rand(shape)
    x.view(-1)[0] = float("nan")
    return x


CORE_CASES = {
    "pad_nan": lambda: _pad(_nan((1, 16, 16, 3))),
    "pad_rank": lambda: _pad(torch.rand(16, 16, 3)),
    "pad_grey": lambda: _pad(torch.rand(1, 16, 16, 1)),
    "pad_mask_size": lambda: _pad(torch.rand(1, 16, 16, 3), mask=torch.ones(1, 8, 8)),
    "pad_mask_batch": lambda: _pad(torch.rand(2, 16, 16, 3), mask=torch.ones(3, 16, 16)),
    "pad_mask_nan": lambda: _pad(torch.rand(1, 16, 16, 3), mask=_nan((1, 16, 16))),
    "pad_target": lambda: _pad(torch.rand(1, 16, 16, 3), target=(8, 8)),
    "freesize_empty": lambda: freesize.plan_windows(torch.zeros(64, 128), 64),
    "freesize_window": lambda: freesize.plan_windows(torch.ones(64, 128), 100),
    "freesize_overlap": lambda: freesize.plan_windows(torch.ones(64, 128), 64, overlap=1.0),
    "freesize_canvas": lambda: freesize.plan_windows(torch.ones(60, 128), 64),
    "interp_empty": lambda: validation.require_image(torch.rand(0, 16, 16, 3), "keyframes"),
    "interp_nan": lambda: validation.require_image(_nan((2, 16, 16, 3)), "keyframes"),
    "interp_zoom": lambda: zoom.ZoomSettings(zoom=1.0).validate(2),
}


@pytest.mark.parametrize("case", sorted(CORE_CASES))
def test_core_check_refuses(case):
    with pytest.raises(ValueError, match=re.escape(MESSAGES[case])):
        CORE_CASES[case]()


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory):
    from diffusers import StableDiffusionInpaintPipeline, UNet2DConditionModel

    root = tmp_path_factory.mktemp("bad-cli")
    model = make_tiny_model(root / "tiny")
    pipe = StableDiffusionInpaintPipeline.from_pretrained(str(model))
    cfg = dict(pipe.unet.config)
    cfg["in_channels"] = 4
    pipe.unet = UNet2DConditionModel.from_config(cfg)
    pipe.register_modules(unet=pipe.unet)
    pipe.save_pretrained(str(root / "four"))
    y, x = np.mgrid[0:64, 0:64] / 63.0
    Image.fromarray((np.stack([x, y, x * y], -1) * 255).astype(np.uint8)).save(root / "src.png")
    return root


CLI_CASES = {
    "cli_missing": lambda d: ["outpaint", str(d / "nope.png"), "--model", str(d / "tiny"), "--all", "32"],
    "cli_not_inpaint": lambda d: ["outpaint", str(d / "src.png"), "--model", str(d / "four"), "--all", "32"],
    "cli_passes": lambda d: ["outpaint", str(d / "src.png"), "--model", str(d / "tiny"), "--all", "32",
                             "--passes", "0"],
    "cli_nothing": lambda d: ["outpaint", str(d / "src.png"), "--model", str(d / "tiny")],
    "cli_lr": lambda d: ["outpaint", str(d / "src.png"), "--model", str(d / "tiny"), "--all", "32",
                         "--balance-lr", "5"],
}


@pytest.mark.parametrize("case", sorted(CLI_CASES))
def test_cli_refuses_with_exit_code_2(case, tiny_dirs, caplog, tmp_path):
    rc = cli.main(CLI_CASES[case](tiny_dirs) + ["--out", str(tmp_path / "o.png"), "-q"])
    assert rc == 2
    assert MESSAGES[case] in caplog.text
    assert not (tmp_path / "o.png").exists()


def test_every_case_has_a_runner():
    import test_comfy_bad_inputs

    runners = set(CORE_CASES) | set(CLI_CASES) | set(test_comfy_bad_inputs.NODE_CASES)
    assert runners == {c[0] for c in CASES}
