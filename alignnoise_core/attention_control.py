"""Attention control for two-branch editing: Prompt-to-Prompt and MasaCtrl (host-free torch).

The UNet batch holds a *source* branch (it reconstructs the photo) and an *edit* branch (target
prompt). Per CFG chunk of ``2 * pairs`` rows, rows ``[0, pairs)`` are the source items and rows
``[pairs, 2 * pairs)`` their edits. A host calls :meth:`AttentionController.attend` instead of the
attention of every transformer layer (self and cross); the controller computes the normal attention
with the host's own function and then overwrites the edit rows:

- **Prompt-to-Prompt** (Hertz et al., ICLR 2023), conditional chunk only, as the paper's code:
  cross-attention probabilities of the edit rows are replaced by the source rows' (mapped through a
  word-swap matrix, a refinement alignment, and/or re-weighted per token) during the first
  ``cross_replace_steps`` of the steps; self-attention probabilities of the edit rows are the source
  rows' during the first ``self_replace_steps`` of the steps, on layers with at most 32x32 tokens;
  an optional **local blend** confines the edit to where the chosen words' cross-attention is strong.
- **MasaCtrl** (Cao et al., ICCV 2023), both chunks: from step ``S`` and layer ``L`` on, the edit
  rows' self-attention queries attend to the source rows' keys and values.

Memory: the controllers keep no attention between calls except, for Prompt-to-Prompt with a local
blend or a preview, a running sum of the chosen words' maps at the 1/4-latent level
(``words x pairs x h/4 x w/4`` floats); the source maps an edit row needs are in the same batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F

from .attention import explicit_attention

SELF_REPLACE_MAX_TOKENS = 32 * 32  # the paper's code swaps self-attention only on layers this small
DEFAULT_CROSS_REPLACE_STEPS = 0.8
DEFAULT_SELF_REPLACE_STEPS = 0.6  # paper notebooks: 0.7 object/colour swap, 0.5 context, 0.6 global
DEFAULT_BLEND_THRESHOLD = 0.3
DEFAULT_MASACTRL_STEP = 4
DEFAULT_MASACTRL_LAYER = 10
P2P_METHODS = ("replace", "refine", "reweight")

AttentionFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, int], torch.Tensor]  # (q, k, v, heads) -> out
Probe = Callable[[str, "AttentionCall", torch.Tensor], None]


@dataclass(frozen=True)
class AttentionCall:
    """What the controller knows about one attention call.

    Attributes:
        kind: ``"self"`` or ``"cross"``.
        layer: index of the transformer layer in the UNet's execution order (0-based).
        grid: token grid ``(h, w)`` of the layer.
        chunks: one flag per CFG chunk of the batch, True for the conditional (prompt) chunk.
        step: reverse step index (0 = the noisiest).
    """

    kind: str
    layer: int
    grid: tuple[int, int]
    chunks: tuple[bool, ...]
    step: int


def pair_rows(chunk: int, pairs: int) -> tuple[slice, slice]:
    """Source and edit rows of CFG chunk ``chunk`` (each chunk holds ``2 * pairs`` rows)."""
    base = chunk * 2 * pairs
    return slice(base, base + pairs), slice(base + pairs, base + 2 * pairs)


def steps_from_fraction(fraction: float, total: int) -> int:
    """Number of leading steps a fraction covers, ``int(fraction * total)`` as the paper's code."""
    return int(float(fraction) * int(total))


def apply_probs(probs: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    """``probs [B, heads, N, M] @ v [B, M, heads*d]`` -> ``[B, N, heads*d]`` in v's dtype."""
    b, m, inner = v.shape
    vh = v.float().reshape(b, m, heads, inner // heads).transpose(1, 2)
    return (probs @ vh).transpose(1, 2).reshape(b, probs.shape[2], inner).to(v.dtype)


# --------------------------------------------------------------------------------------------------
# Prompt-to-Prompt cross-attention edits on probabilities [B, heads, N, T]
# --------------------------------------------------------------------------------------------------


def replace_cross(p_src: torch.Tensor, mapper: torch.Tensor) -> torch.Tensor:
    """Word swap: the edit's map of target token ``t`` is ``sum_s p_src[..., s] * M[s, t]``."""
    return torch.einsum("bhns,st->bhnt", p_src, mapper.to(p_src))


def refine_cross(p_src: torch.Tensor, p_tgt: torch.Tensor, index: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """Refinement: aligned target tokens copy their source token's map, new tokens keep their own."""
    a = alpha.to(p_src)
    return p_src[..., index.to(p_src.device)] * a + p_tgt * (1.0 - a)


def reweight_cross(p: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Re-weighting: multiply each token's map by its scale (the paper's "equalizer")."""
    return p * scale.to(p)


@dataclass(frozen=True)
class CrossEdit:
    """A Prompt-to-Prompt cross-attention edit.

    Attributes:
        method: ``"replace"`` (``mapper`` [T, T]), ``"refine"`` (``index``/``alpha`` [T]) or
            ``"reweight"`` (the source maps themselves, prompts of equal token layout).
        mapper, index, alpha: see :mod:`.prompt_alignment`.
        scale: optional per-token re-weighting [T] applied after the mapping.
    """

    method: str
    mapper: Optional[torch.Tensor] = None
    index: Optional[torch.Tensor] = None
    alpha: Optional[torch.Tensor] = None
    scale: Optional[torch.Tensor] = None

    def __call__(self, p_src: torch.Tensor, p_tgt: torch.Tensor) -> torch.Tensor:
        if self.method == "replace":
            out = replace_cross(p_src, self.mapper)
        elif self.method == "refine":
            out = refine_cross(p_src, p_tgt, self.index, self.alpha)
        elif self.method == "reweight":
            out = p_src
        else:
            raise ValueError(f"Unknown Prompt-to-Prompt method {self.method!r}; use one of {P2P_METHODS}.")
        return out if self.scale is None else reweight_cross(out, self.scale)


# --------------------------------------------------------------------------------------------------
# Word maps and the local blend
# --------------------------------------------------------------------------------------------------


@dataclass
class WordMaps:
    """Running sum of chosen words' cross-attention maps at one token grid (the only stored attention).

    Attributes:
        grid: the token grid recorded (P2P: 16x16 at 512 px, i.e. 1/4 of the latent).
        entries: ``(label, branch, positions)``; branch 0 = source rows, 1 = edit rows.
        pairs: source/edit pairs in the batch.
        sums: ``[len(entries), pairs, h, w]``, summed over tokens of the entry, averaged over heads,
            summed over recorded layers and steps.
        calls: how many layer calls were summed.
    """

    grid: tuple[int, int]
    entries: list[tuple[str, int, tuple[int, ...]]]
    pairs: int
    sums: Optional[torch.Tensor] = None
    calls: int = 0

    def record(self, probs: torch.Tensor) -> None:
        """Add one layer's conditional-chunk probabilities ``[2 * pairs, heads, N, T]``."""
        if not self.entries:
            return
        p = probs.float().mean(dim=1)  # [2P, N, T]
        maps = []
        for _, branch, pos in self.entries:
            rows = p[branch * self.pairs:(branch + 1) * self.pairs]
            maps.append(rows[..., list(pos)].sum(-1).reshape(self.pairs, *self.grid))
        add = torch.stack(maps).detach().cpu()
        self.sums = add if self.sums is None else self.sums + add
        self.calls += 1

    def mean(self) -> Optional[torch.Tensor]:
        return None if self.sums is None else self.sums / max(self.calls, 1)

    def nbytes(self) -> int:
        h, w = self.grid
        return 4 * len(self.entries) * self.pairs * h * w


def word_mask(maps: torch.Tensor, size: tuple[int, int], threshold: float, pool: int = 1) -> torch.Tensor:
    """Binary mask from word maps ``[B, h, w]``: max-pool ``(2*pool+1)``, nearest upsampling to ``size``,
    normalise by each map's maximum, keep ``> threshold`` (Prompt-to-Prompt's LocalBlend). ``[B, 1, H, W]``."""
    m = F.max_pool2d(maps.float().unsqueeze(1), 2 * pool + 1, 1, padding=pool)
    m = F.interpolate(m, size=tuple(size), mode="nearest")
    m = m / m.amax(dim=(2, 3), keepdim=True).clamp_min(1e-12)
    return (m > float(threshold)).float()


def blend_mask(src_map: torch.Tensor, tgt_map: torch.Tensor, size: tuple[int, int], threshold: float) -> torch.Tensor:
    """The local-blend mask: union of the source word's and the target word's masks, ``[B, 1, H, W]``."""
    return torch.clamp(word_mask(src_map, size, threshold) + word_mask(tgt_map, size, threshold), max=1.0)


def local_blend(x_src: torch.Tensor, x_tgt: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Keep the source latent outside the mask: ``x_src + mask * (x_tgt - x_src)``."""
    return x_src + mask.to(x_tgt) * (x_tgt - x_src)


# --------------------------------------------------------------------------------------------------
# Controllers
# --------------------------------------------------------------------------------------------------


@dataclass
class AttentionController:
    """No control: every row attends normally (the base class of the controllers).

    Attributes:
        pairs: source/edit pairs per CFG chunk.
        total_steps: number of reverse steps (for the step schedules).
        maps: the :class:`WordMaps` to record (previews, local blend) or None.
        probe: optional ``probe(event, call, tensor)`` hook (tests, debugging).
    """

    pairs: int = 1
    total_steps: int = 1
    maps: Optional[WordMaps] = None
    probe: Optional[Probe] = None
    step: int = 0  # set by the sampling loop before each Step-B model call

    def attend(self, q, k, v, heads: int, call: AttentionCall, attention: AttentionFn) -> torch.Tensor:
        out = attention(q, k, v, heads)
        expected = 2 * self.pairs * len(call.chunks)
        if q.shape[0] != expected:
            raise ValueError(f"Attention control expected {expected} batch rows ({len(call.chunks)} CFG chunks of "
                             f"{2 * self.pairs}), got {q.shape[0]}.")
        return self.edit(out.clone(), q, k, v, heads, call, attention)

    def edit(self, out, q, k, v, heads, call, attention):
        if call.kind == "cross" and self.records(call):
            for c, is_cond in enumerate(call.chunks):
                if is_cond:
                    rows = slice(c * 2 * self.pairs, (c + 1) * 2 * self.pairs)
                    self.maps.record(explicit_attention(q[rows], k[rows], v[rows], heads)[1])
        return out

    def records(self, call: AttentionCall) -> bool:
        return bool(self.maps is not None and self.maps.entries and tuple(call.grid) == tuple(self.maps.grid))

    def after_step(self, x_src: torch.Tensor, x_tgt: torch.Tensor, step: int) -> torch.Tensor:
        """Post-step hook on the edit latents (local blend); returns the new edit latents."""
        return x_tgt

    def describe(self) -> str:
        return "none"

    def stored_bytes(self) -> int:
        return 0 if self.maps is None else self.maps.nbytes()

    def _probe(self, event, call, tensor):
        if self.probe is not None:
            self.probe(event, call, tensor.detach())


@dataclass
class PromptToPrompt(AttentionController):
    """Prompt-to-Prompt attention control of the edit rows.

    Attributes:
        cross: the :class:`CrossEdit`.
        cross_replace_steps: fraction of the steps (from the first) with cross-attention injection.
        self_replace_steps: fraction of the steps with self-attention injection.
        blend: ``(source entry index, target entry index)`` into ``maps.entries`` for the local
            blend, or None.
        threshold: local-blend threshold on the normalised maps.
    """

    cross: Optional[CrossEdit] = None
    cross_replace_steps: float = DEFAULT_CROSS_REPLACE_STEPS
    self_replace_steps: float = DEFAULT_SELF_REPLACE_STEPS
    blend: Optional[tuple[int, int]] = None
    threshold: float = DEFAULT_BLEND_THRESHOLD
    last_mask: Optional[torch.Tensor] = field(default=None, repr=False)

    def cross_active(self, step: int) -> bool:
        return step < steps_from_fraction(self.cross_replace_steps, self.total_steps)

    def self_active(self, step: int, tokens: int) -> bool:
        return tokens <= SELF_REPLACE_MAX_TOKENS and step < steps_from_fraction(self.self_replace_steps,
                                                                                 self.total_steps)

    def edit(self, out, q, k, v, heads, call, attention):
        record = self.records(call)
        for c, is_cond in enumerate(call.chunks):
            if not is_cond:
                continue  # the paper's code edits the conditional half only
            src, tgt = pair_rows(c, self.pairs)
            if call.kind == "self":
                if self.self_active(call.step, q.shape[1]):
                    out[tgt] = attention(q[src], k[src], v[tgt], heads)  # edit rows use the source's probs
                    self._probe("self_injected_source_keys", call, k[src])
                continue
            active = self.cross_active(call.step)
            if not (active or record):
                continue
            rows = slice(src.start, tgt.stop)
            _, probs = explicit_attention(q[rows], k[rows], v[rows], heads)
            p_src, p_tgt = probs[:self.pairs], probs[self.pairs:]
            if active:
                p_tgt = self.cross(p_src, p_tgt)
                out[tgt] = apply_probs(p_tgt, v[tgt], heads)
                self._probe("cross_source", call, p_src)
                self._probe("cross_injected", call, p_tgt)
            if record:
                self.maps.record(torch.cat([p_src, p_tgt]))  # the maps the rows used (the paper's store)
        return out

    def after_step(self, x_src, x_tgt, step):
        if self.blend is None or self.maps is None or self.maps.sums is None:
            return x_tgt
        s, t = self.blend
        self.last_mask = blend_mask(self.maps.sums[s], self.maps.sums[t], tuple(x_tgt.shape[-2:]),
                                    self.threshold).to(x_tgt.device)
        return local_blend(x_src, x_tgt, self.last_mask)

    def describe(self) -> str:
        blend = "" if self.blend is None else f", local blend (threshold {self.threshold:g})"
        scale = "" if self.cross is None or self.cross.scale is None else " + reweight"
        return (f"Prompt-to-Prompt {self.cross.method if self.cross else '?'}{scale}: cross-attention injected in "
                f"steps [0, {steps_from_fraction(self.cross_replace_steps, self.total_steps)}), self-attention in "
                f"[0, {steps_from_fraction(self.self_replace_steps, self.total_steps)}) on layers with <= "
                f"{SELF_REPLACE_MAX_TOKENS} tokens{blend}")


@dataclass
class MasaCtrl(AttentionController):
    """MasaCtrl mutual self-attention: from step ``start_step`` and layer ``start_layer`` on, the edit
    rows' self-attention queries attend to the source rows' keys and values (both CFG chunks)."""

    start_step: int = DEFAULT_MASACTRL_STEP
    start_layer: int = DEFAULT_MASACTRL_LAYER

    def active(self, call: AttentionCall) -> bool:
        return call.kind == "self" and call.step >= self.start_step and call.layer >= self.start_layer

    def edit(self, out, q, k, v, heads, call, attention):
        if not self.active(call):
            return super().edit(out, q, k, v, heads, call, attention)  # (records cross maps)
        for c, is_cond in enumerate(call.chunks):
            src, tgt = pair_rows(c, self.pairs)
            out[tgt] = attention(q[tgt], k[src], v[src], heads)
            chunk = "cond" if is_cond else "uncond"
            self._probe(f"self_injected_source_keys[{chunk}]", call, k[src])
            self._probe(f"self_injected_source_values[{chunk}]", call, v[src])
        return out

    def describe(self) -> str:
        return (f"MasaCtrl: mutual self-attention from step {self.start_step} of {self.total_steps} and layer "
                f"{self.start_layer} on")


def validate_fraction(name: str, value: float) -> float:
    v = float(value)
    if not 0.0 <= v <= 1.0:
        raise ValueError(f"{name} must be a fraction of the steps in [0, 1], got {value}.")
    return v


def word_entries(labels: Sequence[tuple[str, int, tuple[int, ...]]]) -> list[tuple[str, int, tuple[int, ...]]]:
    """De-duplicate ``(label, branch, positions)`` entries, keeping the first occurrence's order."""
    seen, out = set(), []
    for e in labels:
        key = (e[1], e[2])
        if key not in seen:
            seen.add(key)
            out.append(e)
    return out
