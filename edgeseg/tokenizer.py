"""SAM3's tokenizer: CLIP byte-level BPE, id-for-id identical to Meta's ``SimpleTokenizer``.

The specification is ``shared/reference/encoders.md`` section 1. In short:

* cleaning: ``ftfy.fix_text`` -> ``html.unescape`` twice -> strip -> collapse Unicode whitespace
  -> strip -> ``str.lower()``;
* pre-tokenisation with the ``regex`` module (IGNORECASE): the special strings, English
  contractions, runs of letters, single number characters, runs of other non-space characters;
* each piece is UTF-8 encoded, bytes mapped to printable code points, ``</w>`` appended to the last
  symbol, then merged greedily by merge rank;
* packing: ``[SOT] + ids + [EOT]``, truncated to the context length with EOT forced last, padded
  with id 0.

This module needs neither torch nor any model: the deployment path uses it as is. Ids come back as
numpy int64 arrays. One :class:`Tokenizer` per process is enough (see :func:`get_tokenizer`); it
reads the vocabulary once and caches the BPE of every word it has seen.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import html
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import ftfy
import numpy as np
import regex

SOT_ID = 49406
EOT_ID = 49407
PAD_ID = 0
VOCAB_SIZE = 49408
NUM_MERGES = 49152 - 256 - 2  # 48,894 merge lines are used, after the header line
VOCAB_FILENAME = "bpe_simple_vocab_16e6.txt.gz"
VOCAB_MD5 = "933b7abbbbde62c36f02f0e6ccde464f"
SPECIAL_TOKENS = ("<start_of_text>", "<end_of_text>")

_WHITESPACE = regex.compile(r"\s+")


def default_vocab_path() -> Path:
    """The vocabulary file shipped inside the package."""
    return Path(str(resources.files("edgeseg") / "assets" / VOCAB_FILENAME))


def byte_to_unicode() -> dict[int, str]:
    """CLIP's reversible map from the 256 byte values to printable characters.

    Printable Latin-1 bytes (33-126, 161-172, 174-255) map to themselves; the 68 others, in byte
    order, map to U+0100 onwards. The dict's insertion order is the id order of ids 0-255.
    """
    keep = [*range(33, 127), *range(161, 173), *range(174, 256)]
    table = {b: chr(b) for b in keep}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def clean_text(text: str) -> str:
    """SAM3's default ("lower") cleaning of one prompt, exactly as Meta's tokenizer does it."""
    text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text)).strip()
    text = _WHITESPACE.sub(" ", text).strip()
    return text.lower()


@dataclass(frozen=True)
class TokenizedBatch:
    """Token ids of a batch of prompts packed to one context length.

    ``ids`` is int64 ``[B, L]`` padded with 0; ``lengths`` counts each prompt's tokens including
    SOT and EOT before truncation; ``truncated`` is how many prompts did not fit.
    """

    ids: np.ndarray
    lengths: np.ndarray
    context_length: int

    @property
    def truncated(self) -> int:
        return int((self.lengths > self.context_length).sum())

    @property
    def mask(self) -> np.ndarray:
        """True where the id is padding (``ids == 0``), as SAM3 computes it; see the module docs."""
        return self.ids == PAD_ID


class Tokenizer:
    """CLIP BPE tokenizer with SAM3's cleaning; ids identical to Meta's ``SimpleTokenizer``."""

    def __init__(self, vocab_path: str | Path | None = None, context_length: int = 32,
                 num_merges: int | None = None):
        if context_length < 2:
            raise ValueError(f"context_length must be at least 2 (SOT and EOT), got {context_length}")
        self.context_length = int(context_length)
        self.vocab_path = Path(vocab_path) if vocab_path is not None else default_vocab_path()
        # A pruned vocabulary (edgeseg.vocab) keeps fewer merges; ids stay "bytes, bytes</w>, one
        # per merge, SOT, EOT", so SOT/EOT move down and the pad id stays 0.
        self.num_merges = NUM_MERGES if num_merges is None else int(num_merges)
        merges = _read_merges(str(self.vocab_path), self.num_merges)
        self.merges = merges
        self.byte_encoder = byte_to_unicode()
        self.byte_decoder = {c: b for b, c in self.byte_encoder.items()}
        symbols = list(self.byte_encoder.values())
        vocab = [sys.intern(s) for s in symbols + [s + "</w>" for s in symbols]]
        vocab += [sys.intern("".join(m)) for m in merges]
        vocab += list(SPECIAL_TOKENS)
        self.encoder: dict[str, int] = {tok: i for i, tok in enumerate(vocab)}
        self.ranks: dict[tuple[str, str], int] = {m: r for r, m in enumerate(merges)}
        self.vocab_size = len(vocab)
        self.sot_id = self.encoder[SPECIAL_TOKENS[0]]
        self.eot_id = self.encoder[SPECIAL_TOKENS[1]]
        # Word cache: byte-mapped piece -> ids. The special strings map to their own ids.
        self._cache: dict[str, tuple[int, ...]] = {t: (self.encoder[t],) for t in SPECIAL_TOKENS}
        self._pattern = regex.compile(
            "|".join(SPECIAL_TOKENS)
            + r"""|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
            regex.IGNORECASE,
        )

    @functools.cached_property
    def decoder(self) -> dict[int, str]:
        """id -> token string (built on first use: the runtime never needs it)."""
        return {i: tok for tok, i in self.encoder.items()}

    # -- single prompts ---------------------------------------------------------------------------
    def bpe(self, piece: str) -> tuple[int, ...]:
        """Ids of one byte-mapped pre-token (cached)."""
        cached = self._cache.get(piece)
        if cached is not None:
            return cached
        ids = tuple(self.encoder[s] for s in self.merge(piece))
        self._cache[piece] = ids
        return ids

    def merge(self, piece: str, applied: list[int] | None = None) -> list[str]:
        """BPE symbols of one byte-mapped pre-token; the ranks of the merges used go to ``applied``."""
        word = [*piece[:-1], piece[-1] + "</w>"]
        ranks = self.ranks
        while len(word) > 1:
            best_rank, best = None, None
            for pair in zip(word, word[1:]):
                r = ranks.get(pair)
                if r is not None and (best_rank is None or r < best_rank):
                    best_rank, best = r, pair
            if best is None:
                break
            if applied is not None:
                applied.append(best_rank)
            first, second = best
            merged = first + second
            out: list[str] = []
            i, n = 0, len(word)
            while i < n:
                if i < n - 1 and word[i] == first and word[i + 1] == second:
                    out.append(merged)
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            word = out
        return word

    def pieces(self, text: str) -> list[str]:
        """The byte-mapped pre-tokens of one prompt, after SAM3's cleaning."""
        byte_encoder = self.byte_encoder
        return ["".join(byte_encoder[b] for b in piece.encode("utf-8"))
                for piece in self._pattern.findall(clean_text(text))]

    def encode(self, text: str) -> list[int]:
        """Content ids of one prompt (no SOT/EOT, no truncation)."""
        ids: list[int] = []
        for piece in self.pieces(text):
            ids.extend(self.bpe(piece))
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        """Best-effort text of some ids (special and padding ids are dropped)."""
        pieces = [self.decoder[int(i)] for i in ids if int(i) not in (self.sot_id, self.eot_id, PAD_ID)]
        data = bytearray(self.byte_decoder[c] for c in "".join(pieces))  # "</w>" decodes to itself
        return data.decode("utf-8", errors="replace").replace("</w>", " ").replace("\x00", "").strip()

    # -- batches ----------------------------------------------------------------------------------
    def __call__(self, texts: str | Sequence[str], context_length: int | None = None) -> TokenizedBatch:
        """Tokenize and pack prompts into int64 ``[B, L]``; see :class:`TokenizedBatch`."""
        if isinstance(texts, str):
            texts = [texts]
        length = int(context_length or self.context_length)
        if length < 2:
            raise ValueError(f"context_length must be at least 2 (SOT and EOT), got {length}")
        ids = np.zeros((len(texts), length), dtype=np.int64)
        lengths = np.zeros(len(texts), dtype=np.int64)
        for row, text in enumerate(texts):
            tokens = [self.sot_id, *self.encode(text), self.eot_id]
            lengths[row] = len(tokens)
            if len(tokens) > length:
                tokens = tokens[:length]
                tokens[-1] = self.eot_id
            ids[row, : len(tokens)] = tokens
        return TokenizedBatch(ids=ids, lengths=lengths, context_length=length)


@functools.lru_cache(maxsize=4)
def _read_merges(path: str, num_merges: int = NUM_MERGES) -> tuple[tuple[str, str], ...]:
    """The first ``num_merges`` merge lines after the header, read lazily (the file holds 262k)."""
    merges: list[tuple[str, str]] = []
    with gzip.open(path, "rt", encoding="utf-8", newline="\n") as fh:
        fh.readline()  # "#version: ..." header
        for line in fh:
            if len(merges) == num_merges:
                break
            pair = line.rstrip("\n").split()
            if len(pair) != 2:
                break
            # interned: the halves are tokens of their own, so the vocabulary shares these strings
            merges.append((sys.intern(pair[0]), sys.intern(pair[1])))
    if len(merges) != num_merges:
        raise ValueError(f"{path} is not a CLIP BPE vocabulary with {num_merges} merges "
                         f"({len(merges)} merge lines read)")
    return tuple(merges)


@functools.cache
def get_tokenizer(vocab_path: str | None = None) -> Tokenizer:
    """The process-wide tokenizer for a vocabulary file (the shipped one by default)."""
    return Tokenizer(vocab_path)


def file_md5(path: str | Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
