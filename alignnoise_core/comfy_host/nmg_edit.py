"""ComfyUI glue of NMGEdit: the two-branch Noise Map Guidance edit with Prompt-to-Prompt or MasaCtrl.

Math in ``nmg_edit.py`` (the loop), ``attention_control.py`` (the controllers) and
``prompt_alignment.py`` (words -> tokens, P2P alignments). Here: the prompts are encoded and mapped
to token positions with the CLIP's own tokenizer, every transformer layer's attn1/attn2 gets a
replace patch on a model clone (keyed per block; a patch already there is chained), the patches run
the controller only during Step B (Step A: the differentiable attention backend, in the pack's
:func:`~.common.gradient_session`), and the loop runs as a custom sampler through ``CFGGuider.sample``
(model loading, conds, hooks and wrappers as for any sampler).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Optional

import comfy.ldm.modules.attention as comfy_attention
import comfy.samplers
import torch
import torch.nn.functional as F

from .. import attention_control as ac
from .. import nmg, nmg_maps
from .. import nmg_edit as edit_loop
from .. import prompt_alignment as pa
from ..attention import target_grid
from .common import (Progress, SamplerContext, gradient_session, intermediate_device, release_model, run_sampler,
                     transformer_layers, use_differentiable_attention)
from .nmg import _nmg_check_model, _nmg_latent_space

log = logging.getLogger("alignnoise")

METHODS = ("p2p_replace", "p2p_refine", "p2p_reweight", "masactrl", "none")
BLEND_LEVEL = 2  # Prompt-to-Prompt's maps: 16x16 at a 64x64 latent, two downsamples below the latent


@dataclass(frozen=True)
class EditSettings:
    """The controller settings of one NMGEdit node (validated by :func:`build_controller`)."""

    method: str = "p2p_replace"
    cross_replace_steps: float = ac.DEFAULT_CROSS_REPLACE_STEPS
    self_replace_steps: float = ac.DEFAULT_SELF_REPLACE_STEPS
    blend_source_word: str = ""
    blend_target_word: str = ""
    blend_threshold: float = ac.DEFAULT_BLEND_THRESHOLD
    reweight_words: str = ""
    reweight_scale: float = 2.0
    masactrl_step: int = ac.DEFAULT_MASACTRL_STEP
    masactrl_layer: int = ac.DEFAULT_MASACTRL_LAYER


# --------------------------------------------------------------------------------------------------
# Tokens
# --------------------------------------------------------------------------------------------------


def _token_ids(clip, text: str) -> list[list]:
    tokens = clip.tokenize(text)
    key = "l" if "l" in tokens else next(iter(tokens))  # SDXL: clip_l and clip_g share the vocabulary
    return [[t[0] for t in chunk] for chunk in tokens[key]]


def _as_id(t) -> int:
    return int(t) if isinstance(t, int) or (torch.is_tensor(t) and t.numel() == 1) else -1  # -1: an embedding


def prompt_tokens(clip, text: str, what: str) -> pa.PromptTokens:
    """Words and token positions of ``text`` with the CLIP's own tokenizer (checked against the whole
    prompt's tokenization)."""
    empty = _token_ids(clip, "")[0]
    start, end = _as_id(empty[0]), _as_id(empty[1])

    def inner(chunk):
        ids = [_as_id(t) for t in chunk]
        body = ids[1:] if ids and ids[0] == start else ids
        return body[:body.index(end)] if end in body else body

    def encode_word(word):
        chunks = _token_ids(clip, word)
        return [i for c in chunks for i in inner(c)]

    whole = _token_ids(clip, text)
    if len(whole) > 1:
        raise ValueError(f"The {what} is longer than one 77-token CLIP context; attention control needs one "
                         f"context per prompt. Shorten it.")
    pt = pa.prompt_tokens(text, encode_word, what=what)
    if list(pt.ids) != inner(whole[0]):
        raise ValueError(f"The {what} {text!r} cannot be mapped word by word to its tokens (weighting a group of "
                         f"words like '(big dog:1.2)', embeddings or escapes?). Use plain words (a single weighted word "
                         f"'(dog:1.2)' is fine).")
    return pt


def encode(clip, text: str) -> tuple[torch.Tensor, dict]:
    """CLIPTextEncode's conditioning tensor and options (pooled output ...) of ``text``."""
    cond = clip.encode_from_tokens_scheduled(clip.tokenize(text))
    return cond[0][0], dict(cond[0][1])


def pair_conditioning(src: tuple, tgt: tuple, pairs: int) -> list:
    """One CONDITIONING whose batch is ``pairs`` source rows then ``pairs`` target rows (per-row prompts)."""
    (cs, os_), (ct, ot) = src, tgt
    if cs.shape[1:] != ct.shape[1:]:
        raise ValueError(f"Source and target conditioning differ in shape ({tuple(cs.shape)} vs {tuple(ct.shape)}).")
    opts = dict(os_)
    if os_.get("pooled_output") is not None and ot.get("pooled_output") is not None:
        opts["pooled_output"] = torch.cat([os_["pooled_output"]] * pairs + [ot["pooled_output"]] * pairs)
    return [[torch.cat([cs] * pairs + [ct] * pairs), opts]]


# --------------------------------------------------------------------------------------------------
# Controller from the node's settings
# --------------------------------------------------------------------------------------------------


def _entry(label: str, branch: int, positions) -> tuple[str, int, tuple[int, ...]]:
    return (label, branch, tuple(positions))


def build_controller(settings: EditSettings, src: pa.PromptTokens, tgt: pa.PromptTokens, pairs: int, steps: int,
                     grid: tuple[int, int]) -> tuple[ac.AttentionController, list[str]]:
    """The controller for ``settings`` and the report lines (word -> token mapping, schedules).

    Raises:
        ValueError: unknown method, a fraction outside [0, 1], a word that is not in its prompt,
            prompts that the method cannot align.
    """
    s = settings
    if s.method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {s.method!r}.")
    lines = [f"source tokens: {src.describe()}", f"target tokens: {tgt.describe()}"]
    entries = []
    # Words whose maps are previewed: the words that differ between the prompts ...
    src_words = {pa.normalize_word(w) for w in src.words}
    tgt_words = {pa.normalize_word(w) for w in tgt.words}
    for w in dict.fromkeys(w for w in src.words if pa.normalize_word(w) not in tgt_words):
        entries.append(_entry(f"source '{w}'", 0, pa.word_positions(src, w)))
    for w in dict.fromkeys(w for w in tgt.words if pa.normalize_word(w) not in src_words):
        entries.append(_entry(f"target '{w}'", 1, pa.word_positions(tgt, w)))
    blend = None
    if s.method.startswith("p2p"):
        cross_steps = ac.validate_fraction("cross_replace_steps", s.cross_replace_steps)
        self_steps = ac.validate_fraction("self_replace_steps", s.self_replace_steps)
        rw = pa.parse_words(s.reweight_words)
        scale = pa.equalizer(tgt, rw, s.reweight_scale) if rw else None
        for w in rw:  # ... the re-weighted words ...
            entries.append(_entry(f"reweight '{w}'", 1, pa.word_positions(tgt, w, "target prompt")))
        if rw:
            lines.append("reweight: " + ", ".join(f"{w}{list(pa.word_positions(tgt, w))}" for w in rw)
                         + f" x{s.reweight_scale:g}")
        if s.method == "p2p_replace":
            cross = ac.CrossEdit("replace", mapper=pa.replacement_mapper(src, tgt), scale=scale)
            swaps = pa.swapped_words(src, tgt)
            lines.append("word swaps: " + (", ".join(f"{src.words[i]}{list(src.spans[i])} -> {tgt.words[i]}"
                                                     f"{list(tgt.spans[i])}" for i in swaps) or "none"))
        elif s.method == "p2p_refine":
            index, alpha = pa.refinement_mapper(src, tgt)
            cross = ac.CrossEdit("refine", index=index, alpha=alpha, scale=scale)
            new = [j for j in range(1, tgt.length + 1) if alpha[j] == 0]
            lines.append(f"refine: target tokens without a source match (keep their own maps): {new or 'none'}")
        else:
            if src.length != tgt.length:
                raise ValueError(f"p2p_reweight alone uses the source prompt's maps token by token, so both prompts "
                                 f"need the same token layout (source {src.length} tokens, target {tgt.length}). "
                                 f"Use p2p_refine (or p2p_replace) with reweight_words instead.")
            if not rw:
                raise ValueError("p2p_reweight needs reweight_words (the target words whose attention to scale).")
            cross = ac.CrossEdit("reweight", scale=scale)
        bs, bt = s.blend_source_word.strip(), s.blend_target_word.strip()
        if bool(bs) != bool(bt):
            raise ValueError("Local blend needs both blend_source_word (a word of the source prompt) and "
                             "blend_target_word (a word of the target prompt); leave both empty for no blend.")
        if bs:  # ... and the local-blend words
            if not 0.0 < float(s.blend_threshold) < 1.0:
                raise ValueError(f"blend_threshold must be in (0, 1), got {s.blend_threshold}.")
            entries.append(_entry(f"blend source '{bs}'", 0, pa.word_positions(src, bs, "source prompt")))
            entries.append(_entry(f"blend target '{bt}'", 1, pa.word_positions(tgt, bt, "target prompt")))
        entries = ac.word_entries(entries)
        if bs:
            keys = [(e[1], e[2]) for e in entries]
            blend = (keys.index((0, pa.word_positions(src, bs))), keys.index((1, pa.word_positions(tgt, bt))))
        ctl = ac.PromptToPrompt(pairs=pairs, total_steps=steps, cross=cross, cross_replace_steps=cross_steps,
                                self_replace_steps=self_steps, blend=blend, threshold=float(s.blend_threshold))
    elif s.method == "masactrl":
        if int(s.masactrl_step) < 0 or int(s.masactrl_layer) < 0:
            raise ValueError("masactrl_step and masactrl_layer must be >= 0.")
        ctl = ac.MasaCtrl(pairs=pairs, total_steps=steps, start_step=int(s.masactrl_step),
                          start_layer=int(s.masactrl_layer))
        entries = ac.word_entries(entries)
    else:
        ctl = ac.AttentionController(pairs=pairs, total_steps=steps)
        entries = ac.word_entries(entries)
    ctl.maps = ac.WordMaps(grid=tuple(grid), entries=entries, pairs=pairs) if entries else None
    lines.append(ctl.describe())
    return ctl, lines


# --------------------------------------------------------------------------------------------------
# Patches
# --------------------------------------------------------------------------------------------------


def _existing_patch(m, kind: str, key):
    found = m.model_options.get("transformer_options", {}).get("patches_replace", {}).get(kind, {})
    return found.get(key) or found.get(key[:2])


def _patch(kind: str, layer: int, previous, controller: ac.AttentionController, state: dict):
    label = "self" if kind == "attn1" else "cross"

    def patch(q, k, v, extra_options):
        heads, prec = extra_options["n_heads"], extra_options.get("attn_precision")
        if previous is not None:
            def attention(q_, k_, v_, h):
                return previous(q_, k_, v_, extra_options)
        elif state["step_b"]:
            def attention(q_, k_, v_, h):
                return comfy_attention.optimized_attention(q_, k_, v_, h, attn_precision=prec,
                                                           transformer_options=extra_options)
        else:  # Step A: no control, and the backend with a backward pass (as the pack's gradient recipe)
            return comfy_attention.attention_pytorch(q, k, v, heads, attn_precision=prec)
        if not state["step_b"]:
            return attention(q, k, v, heads)
        shape = extra_options.get("activations_shape")
        grid = tuple(int(d) for d in shape[-2:]) if shape is not None else (q.shape[1], 1)
        chunks = tuple(c == 0 for c in extra_options.get("cond_or_uncond", [0]))
        call = ac.AttentionCall(label, layer, grid, chunks, controller.step)
        return controller.attend(q, k, v, heads, call, attention)

    return patch


# --------------------------------------------------------------------------------------------------
# The edit
# --------------------------------------------------------------------------------------------------


@dataclass
class EditRun:
    """What NMGEdit returns."""

    edited: dict
    reconstruction: dict
    preview: torch.Tensor
    report: str
    controller: ac.AttentionController


def _preview(ctl: ac.AttentionController, latent_hw, factor: int = 8) -> tuple[torch.Tensor, list[str]]:
    h, w = int(latent_hw[0]) * factor, int(latent_hw[1]) * factor
    frames, names = [], []
    mean = None if ctl.maps is None else ctl.maps.mean()
    if mean is not None:
        for e, (label, _, _) in enumerate(ctl.maps.entries):
            for b in range(ctl.pairs):
                m = mean[e, b][None, None].float()
                m = F.interpolate(m, size=(h, w), mode="bilinear", align_corners=False)[0, 0]
                frames.append(m / m.max().clamp_min(1e-12))
                names.append(label + (f" (image {b})" if ctl.pairs > 1 else ""))
    mask = getattr(ctl, "last_mask", None)
    if mask is not None:
        for b in range(ctl.pairs):
            frames.append(F.interpolate(mask[b:b + 1].float().cpu(), size=(h, w), mode="nearest")[0, 0])
            names.append("local-blend mask" + (f" (image {b})" if ctl.pairs > 1 else ""))
    if not frames:
        frames, names = [torch.zeros(h, w)], ["(no words to show)"]
    img = torch.stack(frames).clamp(0, 1).unsqueeze(-1).expand(-1, -1, -1, 3).contiguous()
    return img.to(intermediate_device()), names


def nmg_edit(model, clip, negative, maps, source_prompt: str, target_prompt: str, settings: EditSettings,
             cfg: float = nmg.DEFAULT_TEXT_SCALE, grad_scale: float = nmg.DEFAULT_GRAD_SCALE,
             noise_map_scale: float = nmg.DEFAULT_NOISE_MAP_SCALE, loss: str = "l1", guide_edit_branch: bool = False,
             probe: Optional[Callable] = None) -> EditRun:
    """Run the two-branch NMG edit of ``maps`` (from NMGInvert) with ``settings``' attention control.

    Everything is validated (words, prompts, settings, the maps' model family) before the model is
    cloned. The clone (with the attention patches) is released afterwards, and
    Step A's gradient runs in :func:`~.common.gradient_session`: the input MODEL samples bit-identically.
    """
    if not isinstance(maps, nmg_maps.NoiseMaps):
        raise ValueError(f"noise_maps must come from NMGInvert, got {type(maps).__name__}.")
    nmg.validate_params(grad_scale, noise_map_scale, cfg, loss, 0.0, 1.0)
    if clip is None:
        raise ValueError("NMGEdit needs the CLIP of the checkpoint (to encode the prompts and map words to tokens).")
    _nmg_check_model(model, "NMGEdit")
    space = _nmg_latent_space(model)
    if maps.meta.get("latent_space", space) != space:
        raise ValueError(f"These noise maps were inverted with a {maps.meta.get('family')} model; NMGEdit got a "
                         f"model with {space} latents. Use the same model for NMGInvert and NMGEdit.")
    pairs, steps = int(maps.shape[0]), maps.steps
    layers = transformer_layers(model, "NMGEdit")
    levels = {lvl for _, lvl in layers}
    level = BLEND_LEVEL if BLEND_LEVEL in levels else max(levels)
    grid = target_grid(maps.shape[-2:], level)
    src_t = prompt_tokens(clip, source_prompt, "source prompt")
    tgt_t = prompt_tokens(clip, target_prompt, "target prompt")
    ctl, lines = build_controller(settings, src_t, tgt_t, pairs, steps, grid)
    ctl.probe = probe
    positive = pair_conditioning(encode(clip, source_prompt), encode(clip, target_prompt), pairs)
    lines.append(f"{len(layers)} transformer layers (MasaCtrl's layer index counts them in execution order); "
                 f"word maps recorded at the {grid[0]}x{grid[1]} level; stored attention: {ctl.stored_bytes()} bytes")
    if settings.method == "masactrl" and int(settings.masactrl_layer) >= len(layers):
        lines.append(f"warning: masactrl_layer {settings.masactrl_layer} >= the {len(layers)} layers of this UNet: "
                     f"no layer is controlled")
        log.warning("NMGEdit: %s", lines[-1])
    if level != BLEND_LEVEL:
        lines.append(f"note: this UNet has no attention two levels below the latent; maps from level {level}")
    lines.append("edit branch: " + ("Step A + Step B (guide_edit_branch)" if guide_edit_branch
                                    else "Step B only (the paper's editing path)"))

    state = {"step_b": False}
    m = model.clone()
    for layer, (key, _) in enumerate(layers):
        for kind, setter in (("attn1", m.set_model_attn1_replace), ("attn2", m.set_model_attn2_replace)):
            setter(_patch(kind, layer, _existing_patch(m, kind, key), ctl, state), key[0], key[1], key[2])
    progress = Progress(steps)

    def fn(ctx: SamplerContext):
        base, neg, pos = ctx.base_model, ctx.conds.get("negative"), ctx.conds.get("positive")
        mo_grad = use_differentiable_attention(ctx.model_options)
        seed = ctx.extra_args.get("seed")

        def sig(xv, s):
            return torch.full((xv.shape[0],), float(s), device=xv.device, dtype=torch.float32)

        def eps_uncond(xv, s):
            with gradient_session(base):  # gradients w.r.t. the latent only
                (den,) = comfy.samplers.calc_cond_batch(base, [neg], xv, sig(xv, s), mo_grad)
            if xv.requires_grad and den.grad_fn is None:
                raise ValueError(nmg._NOT_DIFFERENTIABLE)
            return (xv - den.float()) / float(s)

        def eps_pair(xv, s):
            state["step_b"] = True
            try:
                den = comfy.samplers.sampling_function(base, xv, sig(xv, s), neg, pos, float(cfg), ctx.model_options,
                                                       seed)
            finally:
                state["step_b"] = False
            return (xv - den.float()) / float(s)

        x0 = maps.latents[0].to(ctx.latent_image.device, torch.float32)
        res = edit_loop.nmg_edit_sample(maps, eps_uncond, eps_pair, ctl, guide_edit_branch, grad_scale,
                                       noise_map_scale, loss, x_start=x0, callback=lambda i, n: progress.update(1))
        return torch.cat([res.edited, res.reconstruction])

    try:
        blank = torch.zeros((2 * pairs, *maps.shape[1:]))
        out = run_sampler(m, positive, negative, float(cfg), blank, maps.sigmas, fn)
    finally:
        release_model(m)  # unload the clone: nothing of this run stays loaded
    out = out.to(intermediate_device())
    preview, names = _preview(ctl, maps.shape[-2:])
    lines.append("preview frames: " + "; ".join(f"{i}: {n}" for i, n in enumerate(names)))
    report = "\n".join(lines)
    log.info("NMGEdit:\n%s", report)
    return EditRun(edited={"samples": out[:pairs]}, reconstruction={"samples": out[pairs:]}, preview=preview,
                   report=report, controller=ctl)
