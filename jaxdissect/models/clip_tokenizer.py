"""CLIP's byte-pair-encoding tokenizer, read from the original's vocabulary file.

The vocabulary (`bpe_simple_vocab_16e6.txt.gz`: a header line, then one merge per line) is not
shipped with jaxdissect. `find_bpe_vocab` looks, in order, at the path given, at
$JAXDISSECT_CLIP_BPE, in the jaxdissect cache's downloads folder, and inside an installed pip
package that ships it (open_clip from open-clip-torch, or OpenAI's clip), without importing it.

Encoding follows the original: ftfy's fix_text when ftfy is installed, HTML unescaped twice,
whitespace collapsed, lower case; the text is split like the original's regular expression
(special tokens, English contractions, runs of letters, single digits, runs of other
non-space characters), each piece's UTF-8 bytes are mapped to printable characters and merged
by rank; the last symbol of a word carries '</w>'. `tokenize` adds <|startoftext|> and
<|endoftext|> and pads with zeros to the context length (77).
"""
from __future__ import annotations

import functools
import gzip
import html
import importlib.util
import os
import pathlib
import re
import unicodedata
from typing import Sequence

import numpy as np

from weight_conversion import cache

VOCAB_FILE = "bpe_simple_vocab_16e6.txt.gz"
ENV_VAR = "JAXDISSECT_CLIP_BPE"
PACKAGES = ("open_clip", "clip")  # pip packages that ship VOCAB_FILE inside their folder
NUM_MERGES = 49152 - 256 - 2  # the original keeps the first 48894 merges
SOT, EOT = "<|startoftext|>", "<|endoftext|>"
CONTRACTIONS = ("'s", "'t", "'re", "'ve", "'m", "'ll", "'d")


def bytes_to_unicode() -> dict[int, str]:
    """Byte -> a printable character: printable Latin-1 bytes map to themselves, the others to
    code points from 256 on (so BPE never sees whitespace or control characters)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = list(bs)
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def _package_candidates() -> list[pathlib.Path]:
    out = []
    for pkg in PACKAGES:
        try:
            spec = importlib.util.find_spec(pkg)
        except (ImportError, ValueError):
            spec = None
        for loc in (spec.submodule_search_locations or []) if spec else []:
            out.append(pathlib.Path(loc) / VOCAB_FILE)
    return out


def find_bpe_vocab(path: str | os.PathLike | None = None) -> pathlib.Path:
    """The BPE vocabulary file to use; FileNotFoundError says where it was looked for and how to get it."""
    if path is not None:
        p = pathlib.Path(path).expanduser()
        if not p.is_file():
            raise FileNotFoundError(f"CLIP BPE vocabulary {os.fspath(path)!r}: no such file")
        return p
    looked = []
    env = os.environ.get(ENV_VAR)
    if env:
        p = pathlib.Path(env).expanduser()
        if p.is_file():
            return p
        looked.append(f"${ENV_VAR}={env} (no such file)")
    candidates = [cache.downloads_dir() / VOCAB_FILE] + _package_candidates()
    for p in candidates:
        if p.is_file():
            return p
    looked += [str(p) for p in candidates]
    raise FileNotFoundError(
        f"CLIP's BPE vocabulary {VOCAB_FILE} was not found (looked at: {'; '.join(looked)}). It ships inside the "
        f"pip packages open-clip-torch and OpenAI's clip: `pip install open-clip-torch` (jaxdissect finds it there), "
        f"or put the file at {cache.downloads_dir() / VOCAB_FILE}, or point ${ENV_VAR} at it.")


def _is_letter(ch: str) -> bool:
    return unicodedata.category(ch).startswith("L")


def _is_number(ch: str) -> bool:
    return unicodedata.category(ch).startswith("N")


def split_words(text: str) -> list[str]:
    """The pieces the original's regular expression finds, in order (whitespace dropped)."""
    out, i, n = [], 0, len(text)
    while i < n:
        ch = text[i]
        if ch.isspace():
            i += 1
            continue
        special = next((s for s in (SOT, EOT) + CONTRACTIONS if text.startswith(s, i)), None)
        if special:
            out.append(special)
            i += len(special)
            continue
        j = i + 1
        if _is_letter(ch):
            while j < n and _is_letter(text[j]):
                j += 1
        elif not _is_number(ch):
            while j < n and not (text[j].isspace() or _is_letter(text[j]) or _is_number(text[j])):
                j += 1
        out.append(text[i:j])
        i = j
    return out


def clean(text: str) -> str:
    """ftfy (when installed), HTML unescaped twice, whitespace collapsed, lower case."""
    try:
        import ftfy  # optional, as in the original's basic_clean

        text = ftfy.fix_text(text)
    except ImportError:
        text = unicodedata.normalize("NFC", text)
    text = html.unescape(html.unescape(text)).strip()
    return re.sub(r"\s+", " ", text).strip().lower()


class ClipTokenizer:
    """CLIP's tokenizer over the merges of a vocabulary file; `tokenizer(texts, 77)` -> int32 ids."""

    def __init__(self, merges: Sequence[tuple[str, str]]):
        self.byte_encoder = bytes_to_unicode()
        symbols = list(self.byte_encoder.values())
        vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges] + [SOT, EOT]
        self.encoder = {tok: i for i, tok in enumerate(vocab)}
        self.decoder = {i: tok for tok, i in self.encoder.items()}
        self.byte_decoder = {c: b for b, c in self.byte_encoder.items()}
        self.ranks = {tuple(m): i for i, m in enumerate(merges)}
        self.sot, self.eot = self.encoder[SOT], self.encoder[EOT]
        self._bpe = functools.lru_cache(maxsize=100_000)(self._bpe_uncached)

    @staticmethod
    @functools.lru_cache(maxsize=4)
    def _read_merges(path: str) -> tuple[tuple[str, str], ...]:
        try:
            with gzip.open(path, "rt", encoding="utf-8") as f:
                lines = f.read().split("\n")
        except (OSError, EOFError, UnicodeDecodeError) as e:
            raise ValueError(f"CLIP BPE vocabulary {path!r} is not a gzip text file of merges ({e})") from None
        merges = []
        for k, line in enumerate(lines[1:NUM_MERGES + 1], 2):
            if not line.strip():
                continue
            parts = tuple(line.split())
            if len(parts) != 2:
                raise ValueError(f"CLIP BPE vocabulary {path!r}, line {k}: expected two symbols, got {line!r}")
            merges.append(parts)
        if not merges:
            raise ValueError(f"CLIP BPE vocabulary {path!r} holds no merges")
        return tuple(merges)

    @classmethod
    def load(cls, path: str | os.PathLike | None = None) -> "ClipTokenizer":
        return cls(cls._read_merges(str(find_bpe_vocab(path))))

    @property
    def vocab_size(self) -> int:
        return len(self.encoder)

    def _bpe_uncached(self, token: str) -> tuple[str, ...]:
        if token in (SOT, EOT):
            return (token,)
        word = tuple(token[:-1]) + (token[-1] + "</w>",)
        while len(word) > 1:
            pairs = {(a, b) for a, b in zip(word, word[1:])}
            best = min(pairs, key=lambda p: self.ranks.get(p, float("inf")))
            if best not in self.ranks:
                break
            merged, i = [], 0
            while i < len(word):
                if i < len(word) - 1 and (word[i], word[i + 1]) == best:
                    merged.append(word[i] + word[i + 1])
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = tuple(merged)
        return word

    def encode(self, text: str) -> list[int]:
        """Token ids of a text (no start/end tokens)."""
        ids = []
        for piece in split_words(clean(text)):
            if piece in (SOT, EOT):
                ids.append(self.encoder[piece])
                continue
            mapped = "".join(self.byte_encoder[b] for b in piece.encode("utf-8"))
            ids.extend(self.encoder[t] for t in self._bpe(mapped))
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        """Text of token ids (start/end tokens kept as written); a word end becomes a space."""
        text = "".join(self.decoder[int(i)] for i in ids)
        raw = bytearray(self.byte_decoder[c] for c in text)  # '<', '/', 'w', '>' are bytes too
        return raw.decode("utf-8", errors="replace").replace("</w>", " ").strip()

    def __call__(self, texts: Sequence[str] | str, context_length: int = 77, truncate: bool = False) -> np.ndarray:
        """(N, context_length) int32: <|startoftext|>, the text's tokens, <|endoftext|>, zeros.
        A text too long raises ValueError naming it, unless truncate=True (then it is cut and
        ends with <|endoftext|>)."""
        if isinstance(texts, str):
            texts = [texts]
        out = np.zeros((len(texts), context_length), np.int32)
        for i, text in enumerate(texts):
            ids = [self.sot] + self.encode(text) + [self.eot]
            if len(ids) > context_length:
                if not truncate:
                    raise ValueError(f"text {text[:60]!r} is {len(ids)} tokens long; CLIP reads at most {context_length}")
                ids = ids[:context_length]
                ids[-1] = self.eot
            out[i, :len(ids)] = ids
        return out
