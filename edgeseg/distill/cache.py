"""Phase 1 of distillation: the teacher's memory for every prompt of a corpus, computed once.

Layout of a cache folder (``--cache DIR``)::

    DIR/teacher.json                 which teacher made every target here (name, checkpoint sha256 or
                                     "random:<seed>", context length); a different teacher is refused
    DIR/<corpus sha256[:16]>/        one sub-cache per corpus (training corpus, eval corpus, ...)
        manifest.json                format, teacher, context length, corpus sha256, count, shards
        keys.npy                     uint64 [N, 2]: sha256(normalize_prompt(p))[:16] of each row
        ids.npy                      int32 [N, L]: token ids at the student's context length
        prompts.txt                  the normalized prompts, one per line (row order)
        targets-00000.npy ...        float16 [n, L, 256] teacher memory, one file per shard

Every file is a plain ``.npy``, opened with ``numpy.load(mmap_mode="r")``: training reads rows
straight from the page cache. Targets are the teacher's memory at the *student's* context length
(16): the same token ids go through both models. The SAM3 teacher is causal, so its first 16
positions are those of its native 32-token run on the same (truncated) ids.

A shard file appears atomically (temporary name, then rename) when all its rows are done, so an
interrupted build resumes by computing only the missing shards. Under ``torchrun`` rank r builds
shards r, r + world, ...; rank 0 alone writes the manifest, keys and ids.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeseg.errors import EdgesegError

log = logging.getLogger(__name__)

FORMAT = "edgeseg-teacher-cache/1"
TEACHER_FILE = "teacher.json"
MANIFEST = "manifest.json"


# -- identities ---------------------------------------------------------------------------------
def prompt_key(normalized: str) -> bytes:
    """The 16-byte key of a normalized prompt: the first half of its sha256."""
    return hashlib.sha256(normalized.encode("utf-8")).digest()[:16]


def keys_array(normalized: Sequence[str]) -> np.ndarray:
    """Keys of normalized prompts as uint64 ``[N, 2]`` (big-endian halves of :func:`prompt_key`)."""
    raw = b"".join(prompt_key(p) for p in normalized)
    return np.frombuffer(raw, dtype=">u8").reshape(-1, 2).astype(np.uint64)


def corpus_sha256(normalized: Sequence[str]) -> str:
    """Identity of an ordered corpus of normalized prompts."""
    digest = hashlib.sha256()
    for p in normalized:
        digest.update(p.encode("utf-8"))
        digest.update(b"\n")
    return digest.hexdigest()


def teacher_identity(name: str, checkpoint_sha256: str | None, seed: int, config: dict | None = None) -> str:
    """``sha256:<hex>`` of the checkpoint file, or ``random:<seed>`` for seeded random weights.

    A test-only custom config adds ``;config=<sha256[:12]>`` so tiny teachers never collide with
    the real one.
    """
    ident = f"sha256:{checkpoint_sha256}" if checkpoint_sha256 else f"random:{seed}"
    if config is not None:
        blob = json.dumps(config, sort_keys=True).encode("utf-8")
        ident += f";config={hashlib.sha256(blob).hexdigest()[:12]}"
    return f"{name}/{ident}"


def _public(tmp: str) -> None:
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates private files


def _write_bytes_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    _public(tmp)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _save_npy_atomic(path: Path, array: np.ndarray) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", suffix=".npy", dir=path.parent)
    _public(tmp)
    try:
        with os.fdopen(fd, "wb") as fh:
            np.save(fh, array)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise EdgesegError(f"teacher cache file {path} is unreadable or corrupt ({exc})") from exc
    if not isinstance(data, dict):
        raise EdgesegError(f"teacher cache file {path} is corrupt (not a JSON object)")
    return data


def check_teacher(cache_dir: Path, teacher: str, context_length: int) -> bool:
    """Refuse a cache folder made by another teacher or at another context length.

    Returns True when ``teacher.json`` already exists (and matches). Reads only; writes nothing.
    """
    path = Path(cache_dir) / TEACHER_FILE
    if not path.exists():
        if Path(cache_dir).exists() and not Path(cache_dir).is_dir():
            raise EdgesegError(f"--cache {cache_dir} is not a folder")
        return False
    data = _read_json(path)
    if data.get("format") != FORMAT:
        raise EdgesegError(f"{cache_dir} is not an edgeseg teacher cache (format {data.get('format')!r})")
    if data.get("teacher") != teacher:
        raise EdgesegError(
            f"teacher cache {cache_dir} was made by another teacher ({data.get('teacher')}), not {teacher}; "
            "use another --cache folder or the same teacher checkpoint"
        )
    if int(data.get("context_length", -1)) != int(context_length):
        raise EdgesegError(
            f"teacher cache {cache_dir} holds targets at context length {data.get('context_length')}, "
            f"not {context_length}; use another --cache folder"
        )
    return True


@dataclass
class CachePlan:
    """Where a corpus's targets live in a cache folder and which shards are missing."""

    folder: Path
    count: int
    shard_size: int
    context_length: int

    @property
    def shards(self) -> list[tuple[int, int]]:
        return [(s, min(self.shard_size, self.count - s)) for s in range(0, self.count, self.shard_size)]

    def shard_path(self, index: int) -> Path:
        return self.folder / f"targets-{index:05d}.npy"

    def shard_done(self, index: int) -> bool:
        path = self.shard_path(index)
        if not path.is_file():
            return False
        start, count = self.shards[index]
        try:
            arr = np.load(path, mmap_mode="r")
        except (OSError, ValueError) as exc:
            log.warning("rebuilding unreadable shard %s (%s)", path, exc)
            return False
        return arr.shape == (count, self.context_length, 256) and arr.dtype == np.float16

    def missing(self) -> list[int]:
        return [i for i in range(len(self.shards)) if not self.shard_done(i)]


class TeacherCache:
    """A finished sub-cache: ids and fp16 targets by row, memory-mapped."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self.manifest = _read_json(self.folder / MANIFEST)
        if self.manifest.get("format") != FORMAT:
            raise EdgesegError(f"{self.folder} is not an edgeseg teacher cache")
        self.count = int(self.manifest["count"])
        self.context_length = int(self.manifest["context_length"])
        self.ids = np.load(self.folder / "ids.npy", mmap_mode="r")
        self.keys = np.load(self.folder / "keys.npy", mmap_mode="r")
        plan = CachePlan(self.folder, self.count, int(self.manifest["shard_size"]), self.context_length)
        missing = plan.missing()
        if missing:
            raise EdgesegError(f"teacher cache {self.folder} is incomplete: {len(missing)} shard(s) missing")
        self._shard_size = plan.shard_size
        self._shards = [np.load(plan.shard_path(i), mmap_mode="r") for i in range(len(plan.shards))]

    def __len__(self) -> int:
        return self.count

    def targets(self, rows: np.ndarray) -> np.ndarray:
        """Teacher memory of ``rows`` as float16 ``[len(rows), L, 256]`` (in that order)."""
        rows = np.asarray(rows, dtype=np.int64)
        out = np.empty((len(rows), self.context_length, 256), dtype=np.float16)
        shard, offset = np.divmod(rows, self._shard_size)
        for s in np.unique(shard):
            where = np.nonzero(shard == s)[0]
            out[where] = self._shards[int(s)][offset[where]]
        return out

    def rows_of(self, normalized: Sequence[str]) -> np.ndarray:
        """Rows holding these normalized prompts; a prompt not in the cache is an error."""
        index = {bytes(k.astype(">u8").tobytes()): i for i, k in enumerate(np.asarray(self.keys))}
        wanted = keys_array(normalized)
        rows = []
        for p, k in zip(normalized, wanted):
            row = index.get(bytes(k.astype(">u8").tobytes()))
            if row is None:
                raise EdgesegError(f"prompt {p!r} is not in teacher cache {self.folder}")
            rows.append(row)
        return np.asarray(rows, dtype=np.int64)


def build_cache(
    cache_dir: str | os.PathLike,
    normalized: Sequence[str],
    ids: np.ndarray,
    teacher: str,
    teacher_factory: Callable[[], Any],
    *,
    context_length: int,
    batch_size: int = 64,
    shard_size: int = 4096,
    rank: int = 0,
    world: int = 1,
    barrier: Callable[[], None] | None = None,
    device: str = "cpu",
    progress: bool = True,
    amp: bool = False,
) -> TeacherCache:
    """Compute (or resume) the teacher targets of an ordered corpus; return the finished cache.

    ``normalized`` are the corpus's normalized prompts (unique), ``ids`` their int ids ``[N, L]`` at
    ``context_length``. ``teacher_factory`` builds the teacher and is called only if some shard of
    this rank is missing. ``barrier`` synchronises ranks (``None`` for a single process).
    """
    cache_dir = Path(cache_dir)
    if len(normalized) == 0:
        raise EdgesegError("the corpus to cache holds no prompts")
    check_teacher(cache_dir, teacher, context_length)
    corpus = corpus_sha256(normalized)
    folder = cache_dir / corpus[:16]
    plan = CachePlan(folder, len(normalized), int(shard_size), int(context_length))
    manifest = {
        "format": FORMAT, "teacher": teacher, "context_length": int(context_length), "corpus_sha256": corpus,
        "count": len(normalized), "shard_size": int(shard_size), "dtype": "float16", "dim": 256,
        "key": "sha256(edgeseg.corpus.normalize_prompt(prompt))[:16], uint64 big-endian halves",
        "shards": [{"file": plan.shard_path(i).name, "start": s, "count": n} for i, (s, n) in enumerate(plan.shards)],
    }
    if rank == 0:
        _write_corpus(cache_dir, folder, manifest, normalized, ids)
    if barrier is not None:
        barrier()

    todo = [i for i in plan.missing() if i % world == rank]
    if todo:
        log.info("teacher cache %s: %d shard(s) done, rank %d builds %d (%d prompts)", folder,
                 len(plan.shards) - len(plan.missing()), rank, len(todo), sum(plan.shards[i][1] for i in todo))
        _build_shards(plan, todo, ids, teacher_factory(), batch_size=batch_size, rank=rank, device=device,
                      progress=progress, amp=amp)
    if barrier is not None:
        barrier()
    return TeacherCache(folder)


def _write_corpus(cache_dir: Path, folder: Path, manifest: dict[str, Any], normalized: Sequence[str],
                  ids: np.ndarray) -> None:
    """Rank 0: the cache's teacher file, and the corpus's keys, ids, prompts and manifest (or check them)."""
    folder.mkdir(parents=True, exist_ok=True)
    if not (cache_dir / TEACHER_FILE).exists():
        info = {"format": FORMAT, "teacher": manifest["teacher"], "context_length": manifest["context_length"]}
        _write_bytes_atomic(cache_dir / TEACHER_FILE, (json.dumps(info, indent=2) + "\n").encode())
    if (folder / MANIFEST).exists():
        old = _read_json(folder / MANIFEST)
        if {k: old.get(k) for k in manifest} != manifest:
            raise EdgesegError(f"teacher cache {folder} was written with other settings; use another --cache")
    else:
        _save_npy_atomic(folder / "keys.npy", keys_array(normalized))
        _save_npy_atomic(folder / "ids.npy", np.ascontiguousarray(ids, dtype=np.int32))
        _write_bytes_atomic(folder / "prompts.txt", ("\n".join(normalized) + "\n").encode("utf-8"))
        _write_bytes_atomic(folder / MANIFEST, (json.dumps(manifest, indent=2) + "\n").encode())


def _build_shards(plan: CachePlan, todo: Sequence[int], ids: np.ndarray, model: Any, *, batch_size: int, rank: int,
                  device: str, progress: bool, amp: bool) -> None:
    """Run the teacher on the prompts of shards ``todo`` and save each shard (fp16, atomic)."""
    import torch
    from tqdm import tqdm

    total = sum(plan.shards[i][1] for i in todo)
    started = time.perf_counter()
    with tqdm(total=total, unit="prompt", desc=f"teacher targets (rank {rank})", disable=not progress,
              position=rank, dynamic_ncols=True) as bar:
        for i in todo:
            start, count = plan.shards[i]
            out = np.empty((count, plan.context_length, 256), dtype=np.float16)
            for b in range(0, count, batch_size):
                chunk = torch.from_numpy(np.asarray(ids[start + b : start + min(count, b + batch_size)],
                                                    dtype=np.int64)).to(device)
                with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
                    memory, _ = model(chunk)
                out[b : b + chunk.shape[0]] = memory.float().cpu().numpy().astype(np.float16)
                bar.update(chunk.shape[0])
            _save_npy_atomic(plan.shard_path(i), out)
    elapsed = time.perf_counter() - started
    log.info("teacher cache: %d prompts in %.1f s (%.1f prompts/s)", total, elapsed, total / max(elapsed, 1e-9))
