"""Prompt banks on the run side: build a bank by running a bundle, bank-only bundles, and their runner.

``edgeseg bank build`` runs the bundle's own runner once per distinct prompt (in batches, entry
order) and stores what it returned (:func:`edgeseg.bank.build_bank`). A **bank-only bundle**
holds the tokenizer, the bank and a manifest (``backend: "bank"``, the bank as its model) and no
model: :class:`BankRunner` serves it with no ONNX Runtime session; an unknown prompt is an error
that names the closest known prompts. No torch here.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgeseg.bank import BACKEND, BANK_FILE, Bank, BankHeader, BankSource, build_bank, bundle_identity, open_bank
from edgeseg.bundle import bundle_writer, check_bundle_target, copy_into, finalize, inherited, tool_versions
from edgeseg.errors import EdgesegError
from edgeseg.runtime import load
from edgeseg.runtime.base import Runner

#: manifest fields a bank-only bundle keeps from its source bundle
KEPT = ("encoder", "context_length", "position_table", "precision", "inputs", "outputs", "tokenizer", "source",
        "semantics", "params")


class BankRunner(Runner):
    """Serves a bank-only bundle: every answer comes from its bank; there is no model."""

    has_model = False

    def _activate(self) -> None:
        if self.bank is None:  # pragma: no cover - load() always attaches the bundle's bank
            raise EdgesegError(f"bundle {self.bundle} is bank-only but has no bank")

    def _infer(self, input_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        found = self.bank.find_ids(input_ids)
        if (found < 0).any():
            row = int(np.flatnonzero(found < 0)[0])
            raise EdgesegError(f"token-id row {row} is not in the bank of bank-only bundle {self.bundle} "
                               f"({self.bank.header.prompts:,} known prompts; no encoder to run it)")
        return self.bank.take(found)


def runner_source(runner: Runner) -> BankSource:
    """What a bank built with ``runner`` records and how it computes each batch (``runner.infer``)."""
    manifest = runner.manifest
    if not runner.has_model:
        raise EdgesegError(f"bundle {runner.bundle} is bank-only: build a bank from a bundle with a model")
    session = getattr(runner, "session", None)
    providers = ",".join(session.get_providers()) if session is not None else manifest["backend"]
    return BankSource(identity=bundle_identity(manifest), tokenizer=runner.tokenizer, encode_ids=runner.infer,
                      encoder=str(manifest["encoder"]), precision=str(manifest["precision"]),
                      producer=f"edgeseg.runtime {manifest['backend']} ({providers}), {manifest['target']} bundle",
                      tools=tool_versions("numpy", "onnxruntime"))


def build_from_bundle(bundle: str | os.PathLike, prompts: Sequence[str], out: str | os.PathLike,
                      dtype: str = "float16", batch_size: int = 8, threads: int | None = None,
                      progress: Callable[[int], None] | None = None) -> BankHeader:
    """Run ``bundle`` on every distinct prompt and write the bank file ``out``."""
    with load(bundle, threads=threads) as runner:
        return build_bank(out, prompts, runner_source(runner), dtype, batch_size, progress)


def bank_only_manifest(source: dict[str, Any], header: BankHeader) -> dict[str, Any]:
    """A bank-only bundle's manifest: the source's contract and tokenizer, the bank as its model."""
    kept = {key: source[key] for key in KEPT if key in source}
    origin = {key: source.get(key) for key in ("encoder", "precision", "target", "backend")}
    return {**kept, "target": BACKEND, "backend": BACKEND, "model": BANK_FILE,
            "bank": {"file": BANK_FILE, "model_sha256": header["model_sha256"], "dtype": header.dtype,
                     "prompts": header.prompts, "entries": header.entries, "producer": header["producer"],
                     "source_bundle": origin},
            "tools": tool_versions("numpy", "onnxruntime")}


def build_bank_only_bundle(bundle: str | os.PathLike, prompts: Sequence[str], out: str | os.PathLike,
                           dtype: str = "float16", batch_size: int = 8, threads: int | None = None,
                           progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Write a bank-only bundle at ``out``: the bundle's tokenizer, a bank of ``prompts``, a manifest."""
    out = check_bundle_target(out)
    with load(bundle, threads=threads) as runner:
        source = runner_source(runner)
        with bundle_writer(out) as tmp:
            header = build_bank(tmp / BANK_FILE, prompts, source, dtype, batch_size, progress)
            vocab = runner.manifest["tokenizer"]["vocab"]
            (tmp / vocab).parent.mkdir(parents=True, exist_ok=True)
            copy_into(tmp, Path(bundle) / vocab, vocab)
            return finalize(tmp, bank_only_manifest(inherited(runner.manifest), header))


def recompute(bank: Bank, bundle: str | os.PathLike, count: int = 8, threads: int | None = None) -> dict[str, Any]:
    """Run ``bundle`` again on the bank's first ``count`` entries, in the batches the build used.

    Returns how many entries came out bit-identical at the stored dtype and the largest difference;
    raises when the mask differs or the memory is not the bundle's (beyond 1e-3, i.e. another model).
    """
    batch = max(1, int(bank.header.metadata.get("build_batch", "8") or 8))
    end = min(bank.entries, -(-max(1, count) // batch) * batch)
    identical, worst = 0, 0.0
    with load(bundle, threads=threads) as runner:
        if not runner.has_model:
            raise EdgesegError(f"bundle {bundle} is bank-only: recompute against a bundle with a model")
        for start in range(0, end, batch):
            memory, mask = runner.infer(bank.ids[start:start + batch])
            stored, stored_mask = bank.take(np.arange(start, min(start + batch, end)))
            if not np.array_equal(mask, stored_mask):
                raise EdgesegError(f"bank {bank.path}: bundle {bundle} gives another padding mask for entry >= {start}")
            got = memory.astype(bank.memory.dtype).astype(np.float32)
            identical += int(sum(np.array_equal(a, b) for a, b in zip(got, stored)))
            worst = max(worst, float(np.abs(got.astype(np.float64) - stored).max(initial=0.0)))
    if worst > 1e-3:
        raise EdgesegError(f"bank {bank.path} does not hold bundle {bundle}'s outputs (max abs diff {worst:.3g} on "
                           f"{end} entries): its header is wrong; rebuild it with edgeseg bank build")
    return {"entries": end, "bit_identical": identical, "max_abs_diff": worst, "batch": batch}


__all__ = ["BankRunner", "bank_only_manifest", "build_bank_only_bundle", "build_from_bundle", "open_bank",
           "recompute", "runner_source"]
