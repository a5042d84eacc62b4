"""Widgets built from the pack's single list of defaults and ranges (``alignnoise_core.options``)."""

from __future__ import annotations

from comfy_api.latest import io

from alignnoise_core.options import Choice, Number


def number(name: str, spec: Number, tooltip: str, **kwargs):
    """An INT or FLOAT widget with the spec's default, range and step."""
    if isinstance(spec.default, int):
        return io.Int.Input(name, default=spec.default, min=spec.min, max=spec.max, step=spec.step, tooltip=tooltip,
                            **kwargs)
    return io.Float.Input(name, default=spec.default, min=spec.min, max=spec.max, step=spec.step, tooltip=tooltip,
                          **kwargs)


def choice(name: str, spec: Choice, tooltip: str, **kwargs):
    return io.Combo.Input(name, options=list(spec.options), default=spec.default, tooltip=tooltip, **kwargs)
