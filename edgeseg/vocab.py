"""Vocabulary pruning: keep only the BPE merges a prompt corpus needs (a bundle size option).

The CLIP vocabulary has 49,408 ids: 256 byte symbols, the same 256 ending a word (``</w>``), one
token per merge (48,894) and SOT/EOT. SAM3 prompts use a small part of it, but the token-embedding
table stores a row for every id (59% of MobileCLIP-S0's parameters).

Pruning keeps every merge that the tokenizer *applies* while tokenizing the corpus (not only the
final tokens: the intermediate merges of a word are needed to reach them), in the original rank
order, plus all 512 byte symbols and SOT/EOT. Because BPE always applies the lowest-ranked merge
present, and every merge the original tokenizer applied on a corpus word is kept, the pruned
tokenizer segments every corpus word exactly as before: only the ids change (a monotone renumbering,
pad stays 0). A word outside the corpus is segmented with the kept merges only, into shorter
pieces that always exist (the byte symbols at worst), so no prompt ever fails to tokenize; its
embedding then differs from the full vocabulary's, which is why the quantizer reports those
prompts apart.

The pruned vocabulary is written in the original file format (a header line, then one merge per
line), so the same tokenizer reads it given ``num_merges``; the bundle manifest records that count,
the new SOT/EOT ids and the row map.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgeseg.tokenizer import (
    EOT_ID,
    NUM_MERGES,
    PAD_ID,
    SOT_ID,
    SPECIAL_TOKENS,
    VOCAB_FILENAME,
    VOCAB_MD5,
    VOCAB_SIZE,
    Tokenizer,
    vocab_strings,
)

log = logging.getLogger(__name__)

PRUNED_VOCAB_FILENAME = "bpe_pruned_vocab.txt.gz"
BUNDLE_VOCAB_FILENAME = "bpe_vocab.txt.gz"


def write_merges(path: str | os.PathLike, merges: Sequence[tuple[str, str]], header: str) -> Path:
    """A merges file in the CLIP vocabulary format (header line, one merge per line), deterministic gzip."""
    path = Path(path)
    text = f"#version: {header}\n" + "".join(f"{a} {b}\n" for a, b in merges)
    with open(path, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as fh:
        fh.write(text.encode("utf-8"))
    return path


def md5_file(path: str | os.PathLike) -> str:
    return hashlib.md5(Path(path).read_bytes(), usedforsecurity=False).hexdigest()


def write_bundle_vocabulary(directory: str | os.PathLike, pad_id: int = PAD_ID, mask: str = "input_ids == 0") -> dict:
    """Write the vocabulary a bundle ships and return the manifest's ``tokenizer`` section.

    CLIP's file holds 262,145 lines but SAM3's tokenizer reads only the header and the first
    48,894 merges; the bundle ships exactly those (~1 MB less), which Meta's ``SimpleTokenizer``,
    edgeseg's tokenizer and the C++ runtime all read identically. The manifest keeps the md5 of
    the original file it was cut from. ``pad_id`` is what prompts are padded with (0, or 49407
    under transformers semantics) and ``mask`` how the model's graph reads padding from the ids.
    """
    name = BUNDLE_VOCAB_FILENAME
    path = write_merges(Path(directory) / name, Tokenizer(context_length=2).merges,
                        f"CLIP BPE, first {NUM_MERGES} merges of {VOCAB_FILENAME} (the ones SAM3's tokenizer uses)")
    return {"vocab": name, "vocab_md5": md5_file(path), "source_vocab": VOCAB_FILENAME, "source_vocab_md5": VOCAB_MD5,
            "sot_id": SOT_ID, "eot_id": EOT_ID, "pad_id": int(pad_id), "vocab_size": VOCAB_SIZE,
            "num_merges": NUM_MERGES, "cleaning": "sam3-lower", "mask": mask, "id_map": None}
BYTE_SYMBOLS = 512  # 256 byte symbols + the same 256 with "</w>"


@dataclass(frozen=True)
class PrunedVocabulary:
    """Kept merges (original rank order) and, per new id, the original id it came from."""

    merges: tuple[tuple[str, str], ...]
    old_ids: np.ndarray  # int64 [vocab_size]: new id -> original id
    original_vocab_size: int = VOCAB_SIZE

    @property
    def num_merges(self) -> int:
        return len(self.merges)

    @property
    def vocab_size(self) -> int:
        return int(len(self.old_ids))

    @property
    def sot_id(self) -> int:
        return self.vocab_size - 2

    @property
    def eot_id(self) -> int:
        return self.vocab_size - 1

    def id_map(self) -> np.ndarray:
        """int64 ``[original_vocab_size]``: original id -> new id, -1 where the token was dropped."""
        mapping = np.full(self.original_vocab_size, -1, dtype=np.int64)
        mapping[self.old_ids] = np.arange(self.vocab_size, dtype=np.int64)
        return mapping

    def remap(self, ids: np.ndarray) -> np.ndarray:
        """Original ids -> new ids (-1 for dropped tokens)."""
        return self.id_map()[np.asarray(ids, dtype=np.int64)]

    def write(self, path: str | os.PathLike) -> Path:
        """Write the kept merges in the CLIP vocabulary format (deterministic gzip)."""
        return write_merges(path, self.merges,
                            f"edgeseg pruned CLIP BPE, {self.num_merges} of {NUM_MERGES} merges kept")

    def tokenizer(self, path: str | os.PathLike, context_length: int, pad_id: int = PAD_ID) -> Tokenizer:
        """The tokenizer of a written pruned vocabulary (``pad_id`` in the new ids)."""
        return Tokenizer(path, context_length=context_length, num_merges=self.num_merges, pad_id=pad_id)

    def new_id(self, original: int) -> int:
        """The new id of an original id (the pad id 0 or EOT stay in every pruned vocabulary)."""
        new = int(self.id_map()[int(original)])
        if new < 0:
            raise ValueError(f"token id {original} is not in the pruned vocabulary")
        return new


def applied_merges(prompts: Iterable[str], tokenizer: Tokenizer) -> set[int]:
    """Ranks of every merge the tokenizer applies while tokenizing ``prompts``."""
    pieces: set[str] = set()
    for prompt in prompts:
        pieces.update(tokenizer.pieces(prompt))
    used: list[int] = []
    for piece in pieces:
        if piece not in SPECIAL_TOKENS:
            tokenizer.merge(piece, applied=used)
    return set(used)


def prune_vocabulary(prompts: Sequence[str], tokenizer: Tokenizer | None = None) -> PrunedVocabulary:
    """Keep the merges ``prompts`` need; see the module docs."""
    tokenizer = tokenizer or Tokenizer(context_length=2)
    if tokenizer.vocab_size != VOCAB_SIZE:
        raise ValueError("prune from the full CLIP vocabulary (49,408 ids)")
    kept = sorted(applied_merges(prompts, tokenizer))
    merges = tuple(tokenizer.merges[r] for r in kept)
    old_ids = np.array([tokenizer.encoder[s] for s in vocab_strings(merges)], dtype=np.int64)
    log.info("vocabulary pruned to %d of %d ids (%d merges) from %d prompts", len(old_ids), VOCAB_SIZE,
             len(merges), len(prompts))
    return PrunedVocabulary(merges=merges, old_ids=old_ids)

