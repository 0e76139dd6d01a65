"""Prompt sets for calibration, distillation, evaluation and bundle self-checks, and the rules that split them.

The prompt sets ship inside the package, in ``edgeseg/data/prompts/`` (see its ``SOURCES.md``):
``calibration.txt`` (about 2,000 prompts for post-training quantization), ``distill.txt`` (the
training corpus for the student encoders), ``eval.txt`` (held out, about 10% of the pool: the
fidelity gates and every evaluation), ``reference.txt`` (held out, about 1% of the pool: the
prompts a bundle stores with its FP32 outputs for on-device self-checks), ``samples.txt`` (a couple
of dozen short prompts for demos) and ``manifest.json`` (counts per source and split, and the
sha256 of every file). They are built from the prompt lists in ``shared/prompts/`` with::

    python -m edgeseg.corpus build --source ../shared/prompts --out edgeseg/data/prompts

Identity. A prompt is identified by its *normalized* text, :func:`normalize_prompt`, which is SAM3's
own cleaning (``edgeseg.tokenizer.clean_text``: ftfy, HTML unescape twice, whitespace collapse,
lowercase). Two lines that normalize alike are the same prompt: "Red Car", " red   car " and
"RED car" are one prompt. De-duplication, splitting and overlap checks all work on normalized text.

Sources. Every ``*.txt`` file in the source folder is a list, one prompt per line (UTF-8); empty
lines are dropped. Lists are read in the fixed order :data:`SOURCE_ORDER` (smallest list first, by
its line count in the snapshot the sets were built from; the order is frozen here, not recomputed),
then any list not named there, by file name. A prompt's *source* is the first list that contains it,
and the text written out is the first occurrence's original line (surrounding whitespace trimmed).
Crediting the smallest list first keeps the small benchmark vocabularies (COCO, Pascal, ...) from
being swallowed by the large ones, which matters for stratification below.

Hash. ``d = sha256(SPLIT_SALT + normalized.encode("utf-8"))``. ``bucket = int.from_bytes(d[0:8],
"big") % 100`` and ``rank = int.from_bytes(d[8:16], "big")``. The salt keeps the buckets independent
of any other hash-based split made on the same texts upstream. Python's ``hash()`` is never used,
so nothing depends on ``PYTHONHASHSEED``.

Split rules.

1. ``eval`` iff ``bucket < EVAL_PERCENT`` (10). This depends on the normalized text alone, so adding
   or removing source lists never moves a prompt into or out of eval.
2. ``reference`` iff ``EVAL_PERCENT <= bucket < EVAL_PERCENT + REFERENCE_PERCENT`` (bucket 10):
   also a function of the text alone. Nothing is fitted on it (calibration, ranking, pruning,
   training) and no gate measures on it; bundles take their self-check prompts from it
   (:func:`reference_prompts`).
3. The other prompts are the train pool. Calibration takes :data:`CALIBRATION_SIZE` of them,
   stratified by source: each source first gets ``min(available, CALIBRATION_FLOOR)`` (the floor is
   lowered to ``size // number of sources`` if the floors would not fit), and the rest of the 2,000
   is shared out in proportion to each source's remaining train prompts (integer largest
   remainder, ties to the earlier source). Within a source, prompts are taken in ascending
   ``rank``, multi-word prompts first up to ``ceil(quota * MIN_MULTIWORD_PERCENT / 100)`` so that
   attribute phrases ("red car", "a player in white") are always represented, then the rest by rank.
4. Everything else in the train pool is ``distill``.

So a prompt's split is a pure function of its normalized text (for eval and reference) plus the
source lists (for calibration versus distill). :func:`split_of` answers it for one text against the
shipped files.

Each output file is sorted by normalized text (Python code-point order), written as UTF-8 with one
prompt per line and ``\\n`` line ends, atomically (temporary file, then ``os.replace``). The build is
byte-for-byte reproducible from the same source lists.

Default prompt sets of the commands (one place for these rules): :func:`calibration_set`,
:func:`gate_set` (evenly spaced eval prompts), :func:`reference_prompts` and :func:`pruning_corpus`.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from edgeseg.errors import EdgesegError
from edgeseg.tokenizer import clean_text

log = logging.getLogger(__name__)

SPLITS = ("calibration", "distill", "eval", "reference")
HELD_OUT = ("eval", "reference")  # decided by the hash alone; never fitted on
SAMPLES = "samples"
MANIFEST_NAME = "manifest.json"
FORMAT = "edgeseg-prompt-splits/2"
PROMPTS_PACKAGE_DIR = "data/prompts"  # inside the edgeseg package (package data)

SPLIT_SALT = b"edgeseg-split-v1:"
EVAL_PERCENT = 10
REFERENCE_PERCENT = 1
REFERENCE_COUNT = 32  # prompts a bundle stores with its FP32 outputs
GATE_LIMIT = 1000  # eval prompts a fidelity gate uses by default
CALIBRATION_SIZE = 2000
CALIBRATION_FLOOR = 20
MIN_MULTIWORD_PERCENT = 50

# Smallest list first (line counts of the shared/prompts snapshot); frozen so the build is stable.
SOURCE_ORDER = (
    "sam3_repo_examples",
    "odinw35_glip_caption_prompts",
    "pascal_voc_20",
    "pascal_context_59",
    "mapillary_vistas_66",
    "coco",
    "coco_panoptic_133",
    "ade20k_150",
    "coco_stuff_171",
    "odinw35",
    "objects365",
    "objects365_yoloworld_texts",
    "pascal_context_459",
    "openimages_boxable",
    "ade20k_847",
    "imagenet1k_simple_labels",
    "lvis_v1",
    "visual_genome_1600_objects",
    "lvis_v1_synonyms",
    "a2d_sentences_queries",
    "v3det",
    "openimages_v6_all_classes",
    "saco_veval_noun_phrases",
)

# Lists whose stated licence is non-commercial or copyleft (see data/prompts/SOURCES.md). The manifest
# counts, per split, the prompts found *only* in these lists.
RESTRICTED_SOURCES = {
    "saco_veval_noun_phrases": "CC-BY-NC-4.0",
    "pascal_voc_20": "CC-BY-NC-4.0",
    "pascal_context_59": "CC-BY-NC-4.0",
    "pascal_context_459": "CC-BY-NC-4.0",
    "a2d_sentences_queries": "CC-BY-NC-4.0",
    "objects365": "AGPL-3.0",
    "objects365_yoloworld_texts": "GPL-3.0",
}

# samples.txt: every prompt credited to sam3_repo_examples (file order), then the lowest-rank eval
# prompts of these sources with at most ``max_words`` words and ``max_chars`` characters.
_SAMPLE_PICKS = (
    # (sources, count, min_words, max_words, max_chars)
    (("coco", "lvis_v1"), 8, 1, 3, 24),
    (("saco_veval_noun_phrases",), 10, 2, 4, 32),
)


# --------------------------------------------------------------------------------------------------
# Identity and hashing


def normalize_prompt(text: str) -> str:
    """The identity of a prompt: SAM3's cleaning (ftfy, HTML unescape twice, whitespace, lowercase)."""
    return clean_text(text)


def _digest(normalized: str) -> bytes:
    return hashlib.sha256(SPLIT_SALT + normalized.encode("utf-8")).digest()


def _bucket(digest: bytes) -> int:
    return int.from_bytes(digest[0:8], "big") % 100


def _rank(digest: bytes) -> int:
    return int.from_bytes(digest[8:16], "big")


def hash_bucket(text: str) -> int:
    """The prompt's bucket in 0..99, from sha256 of its normalized text (see the module docs)."""
    return _bucket(_digest(normalize_prompt(text)))


def _held_out_split(bucket: int) -> str | None:
    if bucket < EVAL_PERCENT:
        return "eval"
    if bucket < EVAL_PERCENT + REFERENCE_PERCENT:
        return "reference"
    return None


def is_eval(text: str) -> bool:
    """True if the prompt belongs to the held-out eval split; depends on its normalized text only."""
    return hash_bucket(text) < EVAL_PERCENT


def is_held_out(text: str) -> bool:
    """True if the prompt is in a held-out split (eval or reference); depends on its normalized text only."""
    return _held_out_split(hash_bucket(text)) is not None


def is_multiword(normalized: str) -> bool:
    """True for a normalized prompt of two or more whitespace-separated words."""
    return len(normalized.split()) >= 2


def split_of(text: str, calibration: Collection[str] | None = None) -> str:
    """The split of one prompt: ``"eval"``, ``"reference"``, ``"calibration"`` or ``"distill"``.

    Eval and reference are decided by the hash of the normalized text. Otherwise the prompt is
    ``"calibration"`` if its normalized text is in ``calibration`` (normalized texts; by default the
    shipped ``calibration.txt``) and ``"distill"`` if not. A text from no source list therefore gets
    ``"eval"``, ``"reference"`` or ``"distill"``, consistently with how it would be split if it were added.
    """
    normalized = normalize_prompt(text)
    held_out = _held_out_split(_bucket(_digest(normalized)))
    if held_out is not None:
        return held_out
    members = _shipped_calibration() if calibration is None else calibration
    return "calibration" if normalized in members else "distill"


@functools.lru_cache(maxsize=1)
def _shipped_calibration() -> frozenset[str]:
    return frozenset(normalize_prompt(p) for p in load_split("calibration"))


# --------------------------------------------------------------------------------------------------
# Shipped files and overlap checks


def _prompts_path() -> Path:
    return Path(__file__).resolve().parent / PROMPTS_PACKAGE_DIR


def prompts_dir() -> Path:
    """The shipped prompt sets: ``edgeseg/data/prompts/`` (package data, also in an installed wheel)."""
    path = _prompts_path()
    if not path.is_dir():
        raise EdgesegError(
            f"prompt sets not found: {path} does not exist; this edgeseg installation is incomplete "
            "(reinstall it: pip install --force-reinstall edgeseg) or rebuild them with: "
            "python -m edgeseg.corpus build --source <prompt lists> --out <dir>"
        )
    return path


def split_path(name: str) -> Path:
    """The file of a shipped set (``calibration``, ``distill``, ``eval``, ``reference``, ``samples``)."""
    if name not in (*SPLITS, SAMPLES):
        raise EdgesegError(f"unknown prompt set {name!r}; choose one of: {', '.join((*SPLITS, SAMPLES))}")
    path = prompts_dir() / f"{name}.txt"
    if not path.is_file():
        raise EdgesegError(f"prompt set file missing: {path}")
    return path


def load_split(name: str) -> list[str]:
    """The prompts of a shipped set (``calibration``, ``distill``, ``eval``, ``reference``, ``samples``)."""
    return [line for line in split_path(name).read_text(encoding="utf-8").split("\n") if line.strip()]


@functools.lru_cache(maxsize=1)
def held_out_normalized() -> frozenset[str]:
    """Normalized texts of the shipped held-out splits (eval and reference)."""
    return frozenset(normalize_prompt(p) for name in HELD_OUT for p in load_split(name))


# --------------------------------------------------------------------------------------------------
# The default prompt sets of the commands


def evenly_spaced(prompts: Sequence[str], limit: int) -> list[str]:
    """At most ``limit`` prompts taken at an even stride from the start (a stable, order-only sample)."""
    if limit < 1:
        raise EdgesegError(f"a prompt limit must be at least 1, got {limit}")
    return list(prompts[:: max(1, len(prompts) // limit)][:limit])


def _named(path: str | os.PathLike | None, split: str) -> tuple[list[str], str]:
    from edgeseg.fileio import read_prompts

    if path is not None:
        return read_prompts(path), Path(path).name
    return load_split(split), f"edgeseg/{PROMPTS_PACKAGE_DIR}/{split}.txt"


def calibration_set(path: str | os.PathLike | None = None, limit: int | None = None) -> tuple[list[str], str]:
    """Calibration prompts and their name: ``path`` or the shipped calibration split, the first ``limit``.

    The same prompts also rank layers when a fidelity gate fails and fit the smoothing factors;
    never the eval split.
    """
    prompts, name = _named(path, "calibration")
    return (prompts[:limit] if limit else prompts), name


def gate_set(path: str | os.PathLike | None = None, limit: int = GATE_LIMIT) -> list[str]:
    """The fidelity gate's prompts: ``limit`` evenly spaced prompts of ``path`` or the shipped eval split."""
    return evenly_spaced(_named(path, "eval")[0], limit)


def reference_prompts(path: str | os.PathLike | None = None, count: int = REFERENCE_COUNT) -> list[str]:
    """A bundle's self-check prompts: all of ``path``, else ``count`` evenly spaced prompts of the reference split.

    The reference split is held out from every corpus anything is fitted on and from the gates, so a
    bundle's stored reference outputs measure nothing it was tuned for.
    """
    if path is not None:
        return _named(path, "reference")[0]
    return evenly_spaced(load_split("reference"), count)


TRAIN_CORPUS = "train"


def pruning_corpus(spec: str) -> tuple[list[str], str]:
    """The vocabulary-pruning corpus and its name: ``"train"`` (the calibration + distill splits) or a file.

    The eval split (the gate measures the pruned bundle on it) and the reference split are never
    part of it; :func:`edgeseg.quantize.quantize_bundle` adds only the bundle's own 32 reference
    prompts, so that its self-check keeps its segmentation.
    """
    if spec == TRAIN_CORPUS:
        return (load_split("calibration") + load_split("distill"),
                f"edgeseg/{PROMPTS_PACKAGE_DIR} train splits (calibration + distill)")
    from edgeseg.fileio import read_prompts

    return read_prompts(spec), Path(spec).name


def overlap(a: Iterable[str], b: Iterable[str]) -> set[str]:
    """Normalized texts that occur in both ``a`` and ``b`` (after :func:`normalize_prompt`)."""
    left = {normalize_prompt(t) for t in a}
    return {n for n in (normalize_prompt(t) for t in b) if n in left}


# --------------------------------------------------------------------------------------------------
# Building


@dataclass
class _Prompt:
    normalized: str
    original: str
    source: str
    bucket: int
    rank: int
    unrestricted: bool  # found in at least one list that is not in RESTRICTED_SOURCES
    split: str = ""

    @property
    def order_key(self) -> tuple[int, str]:
        return (self.rank, self.normalized)


@dataclass
class _SourceStats:
    name: str
    sha256: str
    lines: int
    unique: int
    credited: int = 0


def _ordered_sources(source_dir: Path) -> list[Path]:
    found = {p.stem: p for p in source_dir.glob("*.txt") if p.is_file()}
    missing = [name for name in SOURCE_ORDER if name not in found]
    if missing:
        log.warning("source lists missing from %s (skipped): %s", source_dir, ", ".join(missing))
    extra = sorted(name for name in found if name not in SOURCE_ORDER)
    if extra:
        log.warning("source lists not in SOURCE_ORDER (read last, by name): %s", ", ".join(extra))
    return [found[name] for name in (*SOURCE_ORDER, *extra) if name in found]


def _read_lines(path: Path) -> tuple[list[str], str]:
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise EdgesegError(f"{path} is not valid UTF-8: {exc}") from exc
    if text.startswith("\ufeff"):
        text = text[1:]
    lines = [line.strip() for line in text.split("\n")]
    return [line for line in lines if line], hashlib.sha256(data).hexdigest()


def _read_pool(source_dir: Path) -> tuple[dict[str, _Prompt], list[_SourceStats]]:
    if not source_dir.is_dir():
        raise EdgesegError(f"prompt source folder not found: {source_dir}")
    paths = _ordered_sources(source_dir)
    if not paths:
        raise EdgesegError(f"no *.txt prompt lists in {source_dir}")
    pool: dict[str, _Prompt] = {}
    stats: list[_SourceStats] = []
    for path in paths:
        name = path.stem
        lines, sha = _read_lines(path)
        restricted = name in RESTRICTED_SOURCES
        seen_here: set[str] = set()
        st = _SourceStats(name=name, sha256=sha, lines=len(lines), unique=0)
        for line in lines:
            normalized = normalize_prompt(line)
            if not normalized or normalized in seen_here:
                continue
            seen_here.add(normalized)
            prompt = pool.get(normalized)
            if prompt is None:
                digest = _digest(normalized)
                pool[normalized] = _Prompt(
                    normalized, line, name, _bucket(digest), _rank(digest), unrestricted=not restricted
                )
                st.credited += 1
            elif not restricted:
                prompt.unrestricted = True
        st.unique = len(seen_here)
        stats.append(st)
    return pool, stats


def _quotas(available: Sequence[int], total: int, floor: int) -> list[int]:
    """Proportional-with-floor allocation of ``total`` over sources (integer largest remainder)."""
    if sum(available) <= total:
        return list(available)
    floor = min(floor, total // max(1, len(available)))  # the floors alone never exceed the total
    base = [min(a, floor) for a in available]
    rest = total - sum(base)
    capacity = [a - b for a, b in zip(available, base)]
    whole = sum(capacity)  # > rest, because sum(available) > total
    shares = [rest * c // whole for c in capacity]
    remainders = [rest * c % whole for c in capacity]
    left = rest - sum(shares)
    for i in sorted(range(len(available)), key=lambda i: (-remainders[i], i))[:left]:
        shares[i] += 1
    return [b + s for b, s in zip(base, shares)]


def _assign(pool: dict[str, _Prompt], sources: Sequence[str], calibration_size: int) -> None:
    by_source: dict[str, list[_Prompt]] = {name: [] for name in sources}
    for prompt in pool.values():
        held_out = _held_out_split(prompt.bucket)
        if held_out is not None:
            prompt.split = held_out
        else:
            prompt.split = "distill"
            by_source[prompt.source].append(prompt)
    for prompts in by_source.values():
        prompts.sort(key=lambda p: p.order_key)
    quotas = _quotas([len(by_source[s]) for s in sources], calibration_size, CALIBRATION_FLOOR)
    for name, quota in zip(sources, quotas):
        candidates = by_source[name]
        want_multi = -(-quota * MIN_MULTIWORD_PERCENT // 100)
        chosen = [p for p in candidates if is_multiword(p.normalized)][:want_multi]
        picked = {id(p) for p in chosen}
        chosen += [p for p in candidates if id(p) not in picked][: quota - len(chosen)]
        for prompt in chosen:
            prompt.split = "calibration"


def _pick_samples(pool: dict[str, _Prompt]) -> list[str]:
    first = [p.original for p in pool.values() if p.source == "sam3_repo_examples"]
    out: list[str] = list(first)
    for sources, count, min_words, max_words, max_chars in _SAMPLE_PICKS:
        fits = [
            p
            for p in pool.values()
            if p.split == "eval"
            and p.source in sources
            and min_words <= len(p.normalized.split()) <= max_words
            and len(p.normalized) <= max_chars
        ]
        fits.sort(key=lambda p: p.order_key)
        out += sorted((p.original for p in fits[:count]), key=normalize_prompt)
    return out


def _encode_lines(lines: Iterable[str]) -> bytes:
    return "".join(f"{line}\n" for line in lines).encode("utf-8")


@functools.lru_cache(maxsize=1)
def _umask() -> int:
    current = os.umask(0o022)
    os.umask(current)
    return current


def _write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the file the usual mode
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def build_splits(
    source_dir: str | Path, out_dir: str | Path, calibration_size: int = CALIBRATION_SIZE
) -> dict:
    """Build the split files, ``samples.txt`` and ``manifest.json`` into ``out_dir`` (created if needed).

    Reads every ``*.txt`` list in ``source_dir`` (see the module docs for the order, de-duplication
    and split rules) and writes ``calibration.txt``, ``distill.txt``, ``eval.txt`` and
    ``reference.txt``. Returns the manifest.
    """
    source_dir, out_dir = Path(source_dir), Path(out_dir)
    pool, stats = _read_pool(source_dir)
    _assign(pool, [st.name for st in stats], calibration_size)

    per_split: dict[str, list[_Prompt]] = {name: [] for name in SPLITS}
    for prompt in pool.values():
        per_split[prompt.split].append(prompt)
    files: dict[str, bytes] = {}
    for name, prompts in per_split.items():
        prompts.sort(key=lambda p: p.normalized)
        files[f"{name}.txt"] = _encode_lines(p.original for p in prompts)
    files[f"{SAMPLES}.txt"] = _encode_lines(_pick_samples(pool))
    manifest = _manifest(pool, stats, per_split, files, calibration_size)
    files[MANIFEST_NAME] = (json.dumps(manifest, indent=2, ensure_ascii=False) + "\n").encode("utf-8")

    out_dir.mkdir(parents=True, exist_ok=True)
    for filename, data in files.items():
        _write_atomic(out_dir / filename, data)
    log.info(
        "wrote %s: %s of %d prompts from %d lists",
        out_dir,
        ", ".join(f"{name} {manifest['splits'][name]['count']}" for name in SPLITS),
        len(pool),
        len(stats),
    )
    if out_dir.resolve() == _prompts_path():
        _shipped_calibration.cache_clear()
        held_out_normalized.cache_clear()
    return manifest


def _manifest(pool: dict[str, _Prompt], stats: Sequence[_SourceStats], per_split: dict[str, list[_Prompt]],
              files: dict[str, bytes], calibration_size: int) -> dict:
    counts = {st.name: dict.fromkeys(SPLITS, 0) for st in stats}
    for prompt in pool.values():
        counts[prompt.source][prompt.split] += 1
    return {
        "format": FORMAT,
        "rebuild": f"python -m edgeseg.corpus build --source <shared/prompts> --out edgeseg/{PROMPTS_PACKAGE_DIR}",
        "method": {
            "normalize": "edgeseg.tokenizer.clean_text",
            "hash": "d = sha256(salt + normalized utf-8); bucket = int(d[0:8]) % 100; rank = int(d[8:16])",
            "byte_order": "big",
            "salt": SPLIT_SALT.decode("ascii"),
            "eval_buckets": f"0-{EVAL_PERCENT - 1} of 100",
            "reference_buckets": (f"{EVAL_PERCENT}-{EVAL_PERCENT + REFERENCE_PERCENT - 1} of 100"
                                  if REFERENCE_PERCENT > 1 else f"{EVAL_PERCENT} of 100"),
            "calibration_size": calibration_size,
            "calibration_floor": CALIBRATION_FLOOR,
            "min_multiword_percent": MIN_MULTIWORD_PERCENT,
        },
        "splits": {
            name: {
                "count": len(prompts),
                "multiword": sum(is_multiword(p.normalized) for p in prompts),
                "only_in_restricted_sources": sum(not p.unrestricted for p in prompts),
                "sha256": hashlib.sha256(files[f"{name}.txt"]).hexdigest(),
            }
            for name, prompts in per_split.items()
        },
        "samples": {
            "count": files[f"{SAMPLES}.txt"].count(b"\n"),
            "sha256": hashlib.sha256(files[f"{SAMPLES}.txt"]).hexdigest(),
        },
        "total": len(pool),
        "sources": [
            {
                "name": st.name,
                "file_sha256": st.sha256,
                "licence_restriction": RESTRICTED_SOURCES.get(st.name),
                "lines": st.lines,
                "unique": st.unique,
                "credited": st.credited,
                **counts[st.name],
            }
            for st in stats
        ],
    }


# --------------------------------------------------------------------------------------------------
# Command line


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m edgeseg.corpus", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build", help="build the prompt sets from a folder of prompt lists")
    build.add_argument("--source", required=True, type=Path, help="folder of *.txt prompt lists")
    build.add_argument("--out", required=True, type=Path, help="output folder (e.g. edgeseg/data/prompts)")
    build.add_argument("--calibration-size", type=int, default=CALIBRATION_SIZE)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        build_splits(args.source, args.out, calibration_size=args.calibration_size)
    except EdgesegError as exc:
        log.error("%s", exc)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
