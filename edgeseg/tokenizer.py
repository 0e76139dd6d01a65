"""SAM3's tokenizer: CLIP byte-level BPE, id-for-id identical to Meta's ``SimpleTokenizer``.

The specification is ``shared/reference/encoders.md`` section 1. In short:

* cleaning: ``ftfy.fix_text`` -> ``html.unescape`` twice -> strip -> collapse Unicode whitespace
  -> strip -> ``str.lower()``;
* pre-tokenisation with the ``regex`` module (IGNORECASE): the special strings, English
  contractions, runs of letters, single number characters, runs of other non-space characters;
* each piece is UTF-8 encoded, bytes mapped to printable code points, ``</w>`` appended to the last
  symbol, then merged greedily by merge rank;
* packing: ``[SOT] + ids + [EOT]``, truncated to the context length with EOT forced last, padded
  with the pad id: 0 as SAM3 and efficientsam3 pad, or 49407 (``<|endoftext|>``, the same id as
  EOT) as transformers' CLIP tokenizer pads (the padding semantics, :mod:`edgeseg.encoders.base`).

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
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import ftfy
import numpy as np
import regex

SOT_ID = 49406
EOT_ID = 49407
PAD_ID = 0  # SAM3's and efficientsam3's padding id (also the real token "!")
TRANSFORMERS_PAD_ID = 49407  # CLIP's <|endoftext|>: transformers' tokenizer pads with the EOT id
#: padding semantics (see edgeseg.encoders.base.Padding) and how each reads padding from the ids
SEMANTICS = ("efficientsam3", "transformers")
MASK_RULES = {"efficientsam3": "input_ids == 0", "transformers": "positions after the first EOT"}
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


def base_tokens() -> list[str]:
    """Ids 0-511: the 256 byte symbols, then the same with ``</w>`` (end of word)."""
    symbols = list(byte_to_unicode().values())
    return symbols + [s + "</w>" for s in symbols]


def vocab_strings(merges: Iterable[tuple[str, str]]) -> list[str]:
    """Every token string in id order for these merges: base tokens, one per merge, SOT, EOT."""
    return [*base_tokens(), *("".join(m) for m in merges), *SPECIAL_TOKENS]


def clean_text(text: str) -> str:
    """SAM3's default ("lower") cleaning of one prompt, exactly as Meta's tokenizer does it."""
    text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text)).strip()
    text = _WHITESPACE.sub(" ", text).strip()
    return text.lower()


@dataclass(frozen=True)
class TokenizedBatch:
    """Token ids of a batch of prompts packed to one context length.

    ``ids`` is int64 ``[B, L]`` padded with ``pad_id``; ``lengths`` counts each prompt's tokens
    including SOT and EOT before truncation; ``truncated`` is how many prompts did not fit.
    """

    ids: np.ndarray
    lengths: np.ndarray
    context_length: int
    pad_id: int = PAD_ID

    @property
    def truncated(self) -> int:
        return int((self.lengths > self.context_length).sum())

    @property
    def mask(self) -> np.ndarray:
        """True at padding: ``ids == 0`` as SAM3 computes it when padding with 0 (a real token 0 counts
        too), else the positions after each prompt's tokens (transformers' ``attention_mask == 0``)."""
        if self.pad_id == PAD_ID:
            return self.ids == PAD_ID
        return np.arange(self.context_length)[None, :] >= np.minimum(self.lengths, self.context_length)[:, None]


class Tokenizer:
    """CLIP BPE tokenizer with SAM3's cleaning; ids identical to Meta's ``SimpleTokenizer``."""

    def __init__(self, vocab_path: str | Path | None = None, context_length: int = 32,
                 num_merges: int | None = None, pad_id: int = PAD_ID):
        if context_length < 2:
            raise ValueError(f"context_length must be at least 2 (SOT and EOT), got {context_length}")
        self.context_length = int(context_length)
        self.vocab_path = Path(vocab_path) if vocab_path is not None else default_vocab_path()
        # A pruned vocabulary (edgeseg.vocab) keeps fewer merges; ids stay "bytes, bytes</w>, one
        # per merge, SOT, EOT", so SOT/EOT move down and the pad id stays 0.
        self.num_merges = NUM_MERGES if num_merges is None else int(num_merges)
        self.byte_encoder = byte_to_unicode()
        self.byte_decoder = {c: b for b, c in self.byte_encoder.items()}
        # BPE runs on ids, not strings: a merge's product is the id 512 + its rank, and the merge
        # table maps a pair of ids (packed into one int) to that rank. This keeps the tokenizer at
        # ~6 MB of Python objects instead of ~20 MB of strings, tuples and two dicts (the runtime's
        # peak RSS counts it). The strings (encoder, decoder, merges) are built only on demand.
        self._char_ids = {c: i for i, c in enumerate(self.byte_encoder.values())}
        self._end_ids = {c: i + 256 for i, c in enumerate(self.byte_encoder.values())}
        self._pair_ranks = _pair_ranks(str(self.vocab_path), self.num_merges)
        self.vocab_size = 512 + self.num_merges + len(SPECIAL_TOKENS)
        self.sot_id = 512 + self.num_merges
        self.eot_id = self.sot_id + 1
        if not 0 <= int(pad_id) < self.vocab_size:
            raise ValueError(f"pad id {pad_id} is outside the vocabulary (0..{self.vocab_size - 1})")
        self.pad_id = int(pad_id)  # what packing fills with: 0 (SAM3) or the EOT id (transformers)
        # Word cache: byte-mapped piece -> ids. The special strings map to their own ids.
        self._cache: dict[str, tuple[int, ...]] = {SPECIAL_TOKENS[0]: (self.sot_id,),
                                                    SPECIAL_TOKENS[1]: (self.eot_id,)}
        self._pattern = regex.compile(
            "|".join(SPECIAL_TOKENS)
            + r"""|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
            regex.IGNORECASE,
        )

    @functools.cached_property
    def merges(self) -> tuple[tuple[str, str], ...]:
        """The merge pairs in rank order, as strings (read on first use: tokenizing never needs them)."""
        return _read_merges(str(self.vocab_path), self.num_merges)

    @functools.cached_property
    def decoder(self) -> dict[int, str]:
        """id -> token string (built on first use: the runtime never needs it)."""
        return dict(enumerate(vocab_strings(self.merges)))

    @functools.cached_property
    def encoder(self) -> dict[str, int]:
        """token string -> id (built on first use)."""
        return {tok: i for i, tok in self.decoder.items()}

    # -- single prompts ---------------------------------------------------------------------------
    def bpe(self, piece: str) -> tuple[int, ...]:
        """Ids of one byte-mapped pre-token (cached)."""
        cached = self._cache.get(piece)
        if cached is not None:
            return cached
        ids = tuple(self.merge_ids(piece))
        self._cache[piece] = ids
        return ids

    def merge_ids(self, piece: str, applied: list[int] | None = None) -> list[int]:
        """BPE ids of one byte-mapped pre-token; the ranks of the merges used go to ``applied``.

        Greedy, as CLIP's reference: repeatedly merge every occurrence (left to right, no overlap)
        of the adjacent pair with the lowest rank, until no adjacent pair has a rank.
        """
        word = [*(self._char_ids[c] for c in piece[:-1]), self._end_ids[piece[-1]]]
        ranks = self._pair_ranks
        while len(word) > 1:
            best_rank = None
            for first, second in zip(word, word[1:]):
                r = ranks.get(first << 16 | second)
                if r is not None and (best_rank is None or r < best_rank):
                    best_rank, pair = r, (first, second)
            if best_rank is None:
                break
            if applied is not None:
                applied.append(best_rank)
            first, second = pair
            merged = 512 + best_rank
            out: list[int] = []
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

    def merge(self, piece: str, applied: list[int] | None = None) -> list[str]:
        """BPE symbols (strings) of one byte-mapped pre-token; see :meth:`merge_ids`."""
        decoder = self.decoder
        return [decoder[i] for i in self.merge_ids(piece, applied)]

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
        pieces = [self.decoder[int(i)] for i in ids if int(i) not in (self.sot_id, self.eot_id, self.pad_id)]
        data = bytearray(self.byte_decoder[c] for c in "".join(pieces))  # "</w>" decodes to itself
        return data.decode("utf-8", errors="replace").replace("</w>", " ").replace("\x00", "").strip()

    # -- batches ----------------------------------------------------------------------------------
    def __call__(self, texts: str | Sequence[str], context_length: int | None = None,
                 pad_id: int | None = None) -> TokenizedBatch:
        """Tokenize and pack prompts into int64 ``[B, L]`` padded with ``pad_id`` (default: the
        tokenizer's); see :class:`TokenizedBatch`."""
        if isinstance(texts, str):
            texts = [texts]
        length = int(context_length or self.context_length)
        if length < 2:
            raise ValueError(f"context_length must be at least 2 (SOT and EOT), got {length}")
        pad = self.pad_id if pad_id is None else int(pad_id)
        ids = np.full((len(texts), length), pad, dtype=np.int64)
        lengths = np.zeros(len(texts), dtype=np.int64)
        for row, text in enumerate(texts):
            tokens = [self.sot_id, *self.encode(text), self.eot_id]
            lengths[row] = len(tokens)
            if len(tokens) > length:
                tokens = tokens[:length]
                tokens[-1] = self.eot_id
            ids[row, : len(tokens)] = tokens
        return TokenizedBatch(ids=ids, lengths=lengths, context_length=length, pad_id=pad)


def _merge_lines(path: str, num_merges: int) -> Iterator[tuple[str, str]]:
    """The first ``num_merges`` merge pairs after the header, read lazily (the file holds 262k)."""
    count = 0
    with gzip.open(path, "rt", encoding="utf-8", newline="\n") as fh:
        fh.readline()  # "#version: ..." header
        for line in fh:
            if count == num_merges:
                break
            pair = line.rstrip("\n").split()
            if len(pair) != 2:
                break
            count += 1
            yield pair[0], pair[1]
    if count != num_merges:
        raise ValueError(f"{path} is not a CLIP BPE vocabulary with {num_merges} merges "
                         f"({count} merge lines read)")


@functools.lru_cache(maxsize=4)
def _read_merges(path: str, num_merges: int = NUM_MERGES) -> tuple[tuple[str, str], ...]:
    """The merge pairs as strings (vocabulary pruning and tools; tokenizing uses :func:`_pair_ranks`)."""
    # interned: the halves are tokens of their own, so the vocabulary shares these strings
    return tuple((sys.intern(a), sys.intern(b)) for a, b in _merge_lines(path, num_merges))


def _pair_ranks(path: str, num_merges: int) -> dict[int, int]:
    """``(first_id << 16 | second_id) -> rank`` for every merge; the product of merge r is id 512 + r.

    Token strings are needed only while reading (to give each half its id) and are dropped before
    the table is built, so they do not stay interleaved with it in memory.
    """
    ids = {s: i for i, s in enumerate(base_tokens())}
    keys = np.empty(num_merges, dtype=np.int64)
    for rank, (first, second) in enumerate(_merge_lines(path, num_merges)):
        a, b = ids.get(first), ids.get(second)
        merged = first + second
        if a is None or b is None or merged in ids:
            raise ValueError(f"{path} is not a CLIP BPE vocabulary: merge {rank} ({first!r} {second!r}) "
                             + ("repeats a token" if merged in ids else "uses an unknown token"))
        keys[rank] = a << 16 | b
        ids[merged] = 512 + rank
    del ids
    return dict(zip(keys.tolist(), range(num_merges)))


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
