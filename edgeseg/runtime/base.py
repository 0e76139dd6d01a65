"""The runner interface shared by every backend."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgeseg.bank import Bank
from edgeseg.bundle import bundle_tokenizer, load_reference
from edgeseg.errors import EdgesegError
from edgeseg.outputs import Encoded, token_fidelity

if TYPE_CHECKING:  # the tokenizer (ftfy, regex) is imported only when a prompt needs tokenizing
    from edgeseg.tokenizer import Tokenizer

#: prompts per model call in ``Runner.encode`` (and ``edgeseg encode --bundle``)
DEFAULT_BATCH = 8


class Runner:
    """Encodes prompts with one bundle. Subclasses implement ``_activate`` and ``infer``.

    With a prompt bank (``bank``, :mod:`edgeseg.bank`), :meth:`encode` answers the prompts the bank
    knows from it (by exact text, else by token ids) and runs the model for the others only.
    """

    #: False for a runner without a model (a bank-only bundle): a prompt missing from its bank is an error
    has_model = True

    def __init__(self, bundle: Path, manifest: dict[str, Any], threads: int | None = None, bank: Bank | None = None):
        self.bundle = Path(bundle)
        self.manifest = manifest
        self.threads = threads
        self.context_length = int(manifest["context_length"])
        #: a causal model exported with a dynamic sequence axis also takes ids of 1..context_length tokens
        self.dynamic_length = bool(manifest.get("dynamic_length"))
        self.output_dim = int(manifest["outputs"][0]["shape"][-1])
        self.is_active = False
        self.bank = bank
        self._tokenizer: Tokenizer | None = None

    # -- lifecycle ------------------------------------------------------------------------------
    def activate(self) -> Runner:
        if not self.is_active:
            self._activate()
            self.is_active = True
        return self

    def deactivate(self) -> None:
        if self.is_active:
            self._deactivate()
            self.is_active = False

    def __enter__(self) -> Runner:
        return self.activate()

    def __exit__(self, *exc: object) -> None:
        self.deactivate()

    def _activate(self) -> None:  # pragma: no cover - per backend
        raise NotImplementedError

    def _deactivate(self) -> None:
        pass

    # -- inference ------------------------------------------------------------------------------
    @property
    def tokenizer(self) -> Tokenizer:
        if self._tokenizer is None:
            self._tokenizer = bundle_tokenizer(self.bundle, self.manifest)
        return self._tokenizer

    def infer(self, input_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``input_ids`` int64 [B, L] -> (memory float32 [B, L, 256], mask bool [B, L])."""
        if not self.is_active:
            raise EdgesegError("runner is not active: call activate() or use it as a context manager")
        ids = np.asarray(input_ids)
        if not np.issubdtype(ids.dtype, np.integer):
            raise EdgesegError(f"input_ids must be integer token ids, got {ids.dtype}")
        if ids.ndim != 2 or not (ids.shape[1] == self.context_length
                                 or self.dynamic_length and 1 <= ids.shape[1] <= self.context_length):
            raise EdgesegError(f"input_ids must be [batch, {'1..' if self.dynamic_length else ''}"
                               f"{self.context_length}], got {list(ids.shape)}")
        return self._infer(np.ascontiguousarray(ids, dtype=np.int64))

    def _infer(self, input_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:  # pragma: no cover
        raise NotImplementedError

    def encode(self, prompts: Sequence[str] | str, batch_size: int = DEFAULT_BATCH, progress=None) -> Encoded:
        """Tokenize with the bundle's vocabulary and run the model in batches of ``batch_size``.

        Small batches keep the backend's working memory (ONNX Runtime's arena grows with the
        largest batch it has seen) low; on CPU, 8 prompts x 16 tokens already fill the kernels
        (S0 INT8, 100 prompts: batch 8 vs 16 took the same time within 4% and peaked 5 MB lower).
        """
        if not self.is_active:
            raise EdgesegError("runner is not active: call activate() or use it as a context manager")
        if isinstance(prompts, str):
            prompts = [prompts]
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise EdgesegError(f"batch_size must be a positive integer, got {batch_size!r}")
        if self.bank is not None:
            return self._encode_banked(list(prompts), batch_size, progress)
        tokens = self.tokenizer(list(prompts), self.context_length)
        if not len(tokens.ids):
            empty = np.zeros((0, self.context_length, self.output_dim), np.float32)
            return Encoded(tokens.ids, np.zeros((0, self.context_length), bool), empty, 0)
        memories, masks = [], []
        for start in range(0, len(tokens.ids), batch_size):
            memory, mask = self.infer(tokens.ids[start:start + batch_size])
            memories.append(memory)
            masks.append(mask)
            if progress is not None:
                progress(len(memory))
        return Encoded(tokens.ids, np.concatenate(masks), np.concatenate(memories), tokens.truncated)

    # -- prompt banks ---------------------------------------------------------------------------
    def _encode_banked(self, prompts: list[str], batch_size: int, progress=None) -> Encoded:
        """The bank's rows where it knows a prompt; the fast path needs no tokenizer at all."""
        bank = self.bank
        if len(prompts) == 1 and not bank.truncated_texts:  # the common call: one prompt, no tokenizer
            entry = bank.text_index.get(prompts[0], -1)
            if entry >= 0:
                if progress is not None:
                    progress(1)
                return Encoded(*bank.rows([entry]))
        found = bank.find_texts(prompts)
        if found and -1 not in found:  # every prompt stored by its exact text
            ids, mask, memory = bank.rows(found)
            truncated = sum(p in bank.truncated_texts for p in prompts) if bank.truncated_texts else 0
            if progress is not None:
                progress(len(prompts))
            return Encoded(ids, mask, memory, truncated)
        return self._encode_mixed(prompts, np.array(found, dtype=np.int64), batch_size, progress)

    def _encode_mixed(self, prompts: list[str], found: np.ndarray, batch_size: int, progress=None) -> Encoded:
        """Prompts not stored by text are tokenized and looked up by ids; the rest run the model, in order."""
        bank, length = self.bank, self.context_length
        ids = np.zeros((len(prompts), length), dtype=np.int64)
        known, rest = np.flatnonzero(found >= 0), np.flatnonzero(found < 0)
        ids[known] = bank.ids[found[known]]
        tokens = self.tokenizer([prompts[i] for i in rest], length)
        ids[rest] = tokens.ids
        found[rest] = bank.find_ids(tokens.ids)
        truncated = tokens.truncated + sum(prompts[i] in bank.truncated_texts for i in known)
        hit, miss = np.flatnonzero(found >= 0), np.flatnonzero(found < 0)
        if miss.size and not self.has_model:
            raise EdgesegError(bank.unknown_message([prompts[i] for i in miss], f"bank-only bundle {self.bundle}"))
        memory = np.empty((len(prompts), length, bank.header.output_dim), dtype=np.float32)
        mask = np.empty((len(prompts), length), dtype=bool)
        memory[hit], mask[hit] = bank.take(found[hit])
        if progress is not None and hit.size:
            progress(int(hit.size))
        for start in range(0, miss.size, batch_size):
            rows = miss[start:start + batch_size]
            memory[rows], mask[rows] = self.infer(ids[rows])
            if progress is not None:
                progress(len(rows))
        return Encoded(ids, mask, memory, truncated)

    def self_check(self) -> dict[str, float]:
        """Run the bundle's reference ids and compare with the FP32 reference outputs."""
        ref = load_reference(self.bundle, self.manifest)
        memory, mask = self.infer(ref["input_ids"])
        if not np.array_equal(mask, ref["mask"]):
            raise EdgesegError(f"bundle {self.bundle} fails its self-check: the padding mask differs")
        return token_fidelity(memory, ref["memory"], ref["mask"])
