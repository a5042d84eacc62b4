"""Words, tokens and the Prompt-to-Prompt token alignments between a source and a target prompt.

Host-free. Prompt-to-Prompt (Hertz et al., "Prompt-to-Prompt Image Editing with Cross Attention
Control", ICLR 2023) edits the target prompt's cross-attention maps by aligning its tokens with the
source prompt's:

- **replace** (word swap): both prompts have the same words except some swapped ones; a
  ``[T, T]`` matrix ``M`` maps source token maps to target tokens (``A_tgt = A_src @ M``); a swapped
  word whose token count differs spreads its source map evenly over the target word's tokens;
- **refine** (added words): a global sequence alignment of the two token sequences; every target
  token either copies the map of the source token it is aligned with or keeps its own (new word);
- **reweight**: a per-token scale (the paper's "equalizer") on the target's maps.

Token positions count the CLIP start token as position 0 (the layout of the 77-token context the
UNet attends to). The host supplies the tokenizer as ``encode_word(word) -> [token ids]`` (no
start/end tokens), so the mapping uses the model's own tokenizer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

CONTEXT_TOKENS = 77  # CLIP context: start token, up to 75 prompt tokens, end/padding
MATCH, MISMATCH, GAP = 1, -1, 0  # refinement alignment scores (the paper's global alignment)


@dataclass(frozen=True)
class PromptTokens:
    """A prompt split into whitespace words and the context positions of each word's tokens.

    Attributes:
        text: the prompt.
        words: its whitespace-separated words.
        ids: token ids of the whole prompt (no start/end token).
        spans: ``spans[i]`` = context positions (start token = 0) of ``words[i]``'s tokens.
    """

    text: str
    words: tuple[str, ...]
    ids: tuple[int, ...]
    spans: tuple[tuple[int, ...], ...]

    @property
    def length(self) -> int:
        """Number of prompt tokens (without start/end)."""
        return len(self.ids)

    def describe(self) -> str:
        """``word[positions]`` for every word, e.g. ``a[1] photo[2] of[3] a[4] tabby[5,6]``."""
        return " ".join(f"{w}[{','.join(str(p) for p in s)}]" for w, s in zip(self.words, self.spans))


def prompt_tokens(text: str, encode_word: Callable[[str], Sequence[int]], max_len: int = CONTEXT_TOKENS,
                  what: str = "prompt") -> PromptTokens:
    """Split ``text`` into words and locate each word's tokens in the context.

    CLIP's tokenizer never merges tokens across whitespace, so tokenizing word by word gives the
    prompt's tokens; the host checks this against the whole-prompt tokenization.

    Raises:
        ValueError: empty prompt, or more tokens than one context holds.
    """
    words = tuple(text.split())
    if not words:
        raise ValueError(f"The {what} is empty; Prompt-to-Prompt and MasaCtrl need a prompt with words.")
    ids: list[int] = []
    spans = []
    for w in words:
        toks = [int(t) for t in encode_word(w)]
        spans.append(tuple(range(1 + len(ids), 1 + len(ids) + len(toks))))
        ids += toks
    if len(ids) > max_len - 2:
        raise ValueError(f"The {what} has {len(ids)} tokens; attention control works on one {max_len}-token "
                         f"context (at most {max_len - 2} prompt tokens). Shorten it.")
    return PromptTokens(text=text, words=words, ids=tuple(ids), spans=tuple(spans))


def normalize_word(word: str) -> str:
    """Lower case, surrounding punctuation and a ComfyUI weight suffix removed: ``"(Dog:1.2)," -> "dog"``."""
    w = word.strip().lower().strip(".,;:!?\"'()[]{}")
    return w.split(":")[0].strip(".,;:!?\"'()[]{}")


def word_positions(pt: PromptTokens, word: str, what: str = "prompt") -> tuple[int, ...]:
    """Context positions of every occurrence of ``word`` (case and surrounding punctuation ignored).

    Raises:
        ValueError: the word is not in the prompt (the message lists its words).
    """
    key = normalize_word(word)
    pos = [p for w, s in zip(pt.words, pt.spans) if normalize_word(w) == key for p in s]
    if not key or not pos:
        raise ValueError(f"The word {word!r} is not in the {what} {pt.text!r}. Its words are: "
                         f"{', '.join(repr(w) for w in pt.words)}. Use one of them (spelled as in the prompt).")
    return tuple(pos)


def parse_words(text: str) -> list[str]:
    """Comma- or space-separated words of a node input (``"cat, dog"``); empty text gives ``[]``."""
    return [w for w in text.replace(",", " ").split() if w]


def swapped_words(src: PromptTokens, tgt: PromptTokens) -> list[int]:
    """Indices of the words that differ between two prompts of the same word count (word swap)."""
    if len(src.words) != len(tgt.words):
        raise ValueError(
            f"Prompt-to-Prompt 'replace' swaps words one for one, so both prompts need the same number of words: "
            f"the source prompt has {len(src.words)} ({src.text!r}), the target {len(tgt.words)} ({tgt.text!r}). "
            f"Use 'refine' for added or removed words.")
    return [i for i, (a, b) in enumerate(zip(src.words, tgt.words)) if a != b]


def replacement_mapper(src: PromptTokens, tgt: PromptTokens, max_len: int = CONTEXT_TOKENS) -> torch.Tensor:
    """The word-swap matrix ``M [max_len, max_len]``: target maps are ``A_src @ M``.

    Unchanged words (and the start, end and padding positions) map one to one, shifted by the
    token-count difference of the swaps before them; a swapped word maps its source tokens onto the
    target word's tokens, spread evenly (``1/len``) when the counts differ, as in Prompt-to-Prompt.
    """
    swaps = set(swapped_words(src, tgt))
    m = torch.zeros(max_len, max_len)
    m[0, 0] = 1.0  # start token
    for i, (ss, ts) in enumerate(zip(src.spans, tgt.spans)):
        if i in swaps and len(ss) != len(ts):
            for s in ss:
                m[s, list(ts)] = 1.0 / len(ts)
        else:
            for s, t in zip(ss, ts):
                m[s, t] = 1.0
    # End token and padding: aligned from the ends of the two prompts on.
    for s, t in zip(range(src.length + 1, max_len), range(tgt.length + 1, max_len)):
        m[s, t] = 1.0
    return m


def align_tokens(x: Sequence[int], y: Sequence[int]) -> list[int]:
    """Global alignment of two token sequences (match +1, mismatch -1, gap 0: a longest common
    subsequence); returns for every ``y`` position the aligned ``x`` position, or -1 if none.

    Ties prefer aligning earlier ``x`` tokens with earlier ``y`` tokens.
    """
    n, m = len(x), len(y)
    f = [[0] * (m + 1) for _ in range(n + 1)]
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            diag = f[i - 1][j - 1] + (MATCH if x[i - 1] == y[j - 1] else MISMATCH)
            f[i][j] = max(diag, f[i - 1][j] + GAP, f[i][j - 1] + GAP)
    out = [-1] * m
    i, j = n, m
    while i > 0 and j > 0:
        if f[i][j - 1] + GAP == f[i][j]:
            j -= 1
        elif f[i - 1][j] + GAP == f[i][j]:
            i -= 1
        else:  # with gap 0 > mismatch, an optimal diagonal step is always a match
            out[j - 1] = i - 1
            i, j = i - 1, j - 1
    return out


def refinement_mapper(src: PromptTokens, tgt: PromptTokens, max_len: int = CONTEXT_TOKENS):
    """Token alignment for added/removed words (Prompt-to-Prompt "refine").

    Aligns ``[start] + src.ids + [end]`` with the same for ``tgt``.

    Returns:
        ``(index, alpha)``: ``index [max_len]`` long, the source position whose map target position
        ``j`` copies; ``alpha [max_len]`` float, 1 where aligned, 0 for the target's new tokens (they
        keep their own maps). Padding after the end token maps one to one.
    """
    start, end = -1, -2  # placeholders that match only each other
    x = [start, *src.ids, end]
    y = [start, *tgt.ids, end]
    aligned = align_tokens(x, y)
    index = torch.arange(max_len)
    alpha = torch.ones(max_len)
    for j, i in enumerate(aligned):
        index[j] = max(i, 0)
        alpha[j] = 1.0 if i >= 0 else 0.0
    return index, alpha


def equalizer(tgt: PromptTokens, words: Sequence[str], scale: float, max_len: int = CONTEXT_TOKENS) -> torch.Tensor:
    """Per-token scale ``[max_len]`` for reweighting: ``scale`` at the given target words, 1 elsewhere."""
    eq = torch.ones(max_len)
    for w in words:
        eq[list(word_positions(tgt, w, "target prompt"))] = float(scale)
    return eq
