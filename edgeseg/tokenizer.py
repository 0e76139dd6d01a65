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

Bounded work, without changing the ids of any prompt that fits a context of at most
:data:`MAX_CONTEXT_LENGTH` (Meta's tokenizer takes hours on a 10 MB word): BPE runs on a priority
queue (O(n log n) per word); a prompt is tokenized only until it has more than
:data:`MAX_CONTEXT_LENGTH` content tokens (``lengths`` counts at most that many + 3); only the first
``max_word_bytes`` bytes of a word are merged, where ``max_word_bytes`` = the longest token (32 bytes in
CLIP's vocabulary) x (:data:`MAX_CONTEXT_LENGTH` + 1), so such a word alone has more tokens than any
context holds.

This module needs neither torch nor any model: the deployment path uses it as is. Ids come back as
numpy int64 arrays. One :class:`Tokenizer` per process is enough (see :func:`get_tokenizer`); it
reads the vocabulary once and caches the BPE of every word it has seen.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import heapq
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
MAX_MERGES = (1 << 16) - 512 - 2  # ids (512 + merges + SOT/EOT) are packed as 16-bit pairs
VOCAB_FILENAME = "bpe_simple_vocab_16e6.txt.gz"
VOCAB_MD5 = "933b7abbbbde62c36f02f0e6ccde464f"
MAX_VOCAB_LINE = 4096  # a merge line is "a b" with tokens of a few dozen characters
MAX_TOKEN_BYTES = 256  # CLIP's longest token has 32 bytes; longer ones would loosen the bounded-work cap
SPECIAL_TOKENS = ("<start_of_text>", "<end_of_text>")
#: the longest context edgeseg packs prompts to (CLIP's table has 77 rows; SAM3 uses 32, the students 16)
MAX_CONTEXT_LENGTH = 512
#: words kept in a tokenizer's cache (beyond it the cache starts over: a long-running process stays bounded)
CACHE_WORDS = 200_000

_WHITESPACE = regex.compile(r"\s{2,}|[^\S ]")  # a whitespace run that is not one space


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
        self.context_length = check_context_length(context_length)
        self.vocab_path = Path(vocab_path) if vocab_path is not None else default_vocab_path()
        # A pruned vocabulary (edgeseg.vocab) keeps fewer merges; ids stay "bytes, bytes</w>, one
        # per merge, SOT, EOT", so SOT/EOT move down and the pad id stays 0.
        self.num_merges = NUM_MERGES if num_merges is None else int(num_merges)
        if not 0 <= self.num_merges <= MAX_MERGES:
            raise ValueError(f"num_merges must be 0..{MAX_MERGES} (ids are 16-bit), got {self.num_merges}")
        self.byte_encoder = byte_to_unicode()
        self.byte_decoder = {c: b for b, c in self.byte_encoder.items()}
        # BPE runs on ids, not strings: a merge's product is the id 512 + its rank, and the merge
        # table maps a pair of ids (packed into one int) to that rank. This keeps the tokenizer at
        # ~6 MB of Python objects instead of ~20 MB of strings, tuples and two dicts (the runtime's
        # peak RSS counts it). The strings (encoder, decoder, merges) are built only on demand.
        self._char_ids = {c: i for i, c in enumerate(self.byte_encoder.values())}
        self._end_ids = {c: i + 256 for i, c in enumerate(self.byte_encoder.values())}
        self._pair_ranks, longest = _pair_ranks(str(self.vocab_path), self.num_merges)
        self.max_word_bytes = max(longest, 1) * (MAX_CONTEXT_LENGTH + 1)
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
        if len(self._cache) >= CACHE_WORDS:
            self._cache = {token: self._cache[token] for token in SPECIAL_TOKENS}
        self._cache[piece] = ids
        return ids

    def merge_ids(self, piece: str, applied: list[int] | None = None) -> list[int]:
        """BPE ids of one byte-mapped pre-token; the ranks of the merges used go to ``applied``.

        Greedy, as CLIP's reference: repeatedly merge every occurrence (left to right, no overlap)
        of the adjacent pair with the lowest rank, until no adjacent pair has a rank. Done with a
        priority queue of (rank, position) over a linked list of symbols: O(n log n) instead of the
        reference's O(n x merges). Popping in (rank, position) order merges the occurrences of the
        lowest-rank pair left to right, skipping overlapping ones (their left symbol is gone); a
        merge's product only forms pairs of higher rank (a merge line may use only earlier tokens,
        which :func:`_pair_ranks` checks), so each rank is one round of the reference.
        """
        word = [*(self._char_ids[c] for c in piece[:-1]), self._end_ids[piece[-1]]]
        n = len(word)
        ranks = self._pair_ranks
        heap = [(r, i) for i in range(n - 1) if (r := ranks.get(word[i] << 16 | word[i + 1])) is not None]
        heapq.heapify(heap)
        following, preceding = [*range(1, n), -1], [*range(-1, n - 1)]
        last = -1
        while heap:
            rank, i = heapq.heappop(heap)
            j = following[i]
            if word[i] < 0 or j < 0 or ranks.get(word[i] << 16 | word[j]) != rank:
                continue  # stale: a symbol of this pair was merged away since it was pushed
            if applied is not None and rank != last:
                applied.append(rank)
            last = rank
            word[i], word[j] = 512 + rank, -1
            k = following[i] = following[j]
            if k >= 0:
                preceding[k] = i
                if (r := ranks.get(word[i] << 16 | word[k])) is not None:
                    heapq.heappush(heap, (r, i))
            h = preceding[i]
            if h >= 0 and (r := ranks.get(word[h] << 16 | word[i])) is not None:
                heapq.heappush(heap, (r, h))
        return [w for w in word if w >= 0]

    def merge(self, piece: str, applied: list[int] | None = None) -> list[str]:
        """BPE symbols (strings) of one byte-mapped pre-token; see :meth:`merge_ids`."""
        decoder = self.decoder
        return [decoder[i] for i in self.merge_ids(piece, applied)]

    def _pieces(self, text: str) -> Iterator[str]:
        byte_encoder, cap = self.byte_encoder, self.max_word_bytes
        for match in self._pattern.finditer(clean_text(text)):
            data = match.group(0).encode("utf-8")[:cap]  # see the module docs: bounded work
            yield "".join(byte_encoder[b] for b in data)

    def pieces(self, text: str) -> list[str]:
        """The byte-mapped pre-tokens of one prompt, after SAM3's cleaning."""
        return list(self._pieces(text))

    def encode(self, text: str) -> list[int]:
        """Content ids of one prompt (no SOT/EOT, no truncation), at most ``MAX_CONTEXT_LENGTH + 1`` of them."""
        ids: list[int] = []
        for piece in self._pieces(text):
            ids.extend(self.bpe(piece))
            if len(ids) > MAX_CONTEXT_LENGTH:
                del ids[MAX_CONTEXT_LENGTH + 1:]
                break
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
        length = check_context_length(context_length or self.context_length)
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
        fh.readline(MAX_VOCAB_LINE)  # "#version: ..." header
        while count < num_merges:
            line = fh.readline(MAX_VOCAB_LINE)
            pair = line.rstrip("\n").split()
            if len(pair) != 2 or len(line) == MAX_VOCAB_LINE:
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


def _pair_ranks(path: str, num_merges: int) -> tuple[dict[int, int], int]:
    """``(first_id << 16 | second_id) -> rank`` for every merge (the product of merge r is id 512 + r),
    and the length in bytes of the longest token.

    Token strings are needed only while reading (to give each half its id) and are dropped before
    the table is built, so they do not stay interleaved with it in memory.
    """
    ids = {s: i for i, s in enumerate(base_tokens())}
    keys = np.empty(num_merges, dtype=np.int64)
    longest = 1
    for rank, (first, second) in enumerate(_merge_lines(path, num_merges)):
        a, b = ids.get(first), ids.get(second)
        merged = first + second
        if a is None or b is None or merged in ids:
            raise ValueError(f"{path} is not a CLIP BPE vocabulary: merge {rank} ({first!r} {second!r}) "
                             + ("repeats a token" if merged in ids else "uses an unknown token"))
        keys[rank] = a << 16 | b
        ids[merged] = 512 + rank
        longest = max(longest, len(merged.removesuffix("</w>")))  # one character per byte
    if longest > MAX_TOKEN_BYTES:
        raise ValueError(f"{path} is not a CLIP BPE vocabulary: a token of {longest} bytes (at most {MAX_TOKEN_BYTES})")
    del ids
    return dict(zip(keys.tolist(), range(num_merges))), longest


def check_context_length(length) -> int:
    """``length`` as an int in 2..MAX_CONTEXT_LENGTH (SOT and EOT need 2), else ValueError."""
    if isinstance(length, bool) or not isinstance(length, (int, np.integer)) or \
            not 2 <= length <= MAX_CONTEXT_LENGTH:
        raise ValueError(f"context length must be an integer in 2..{MAX_CONTEXT_LENGTH} (SOT and EOT need 2), "
                         f"got {length!r}")
    return int(length)


@functools.cache
def get_tokenizer(vocab_path: str | None = None, pad_id: int = PAD_ID) -> Tokenizer:
    """The process-wide tokenizer for a vocabulary file (the shipped one by default) and pad id."""
    return Tokenizer(vocab_path, pad_id=pad_id)


def file_md5(path: str | Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
