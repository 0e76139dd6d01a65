"""Tests for the prompt sets in edgeseg/data/prompts/ and for edgeseg.corpus.

The split rules are re-derived here from their documented specification (sha256 of the salted
normalized text), not read back from the code under test.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from edgeseg import corpus
from edgeseg.errors import EdgesegError
from edgeseg.tokenizer import clean_text

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "edgeseg" / "data" / "prompts"
SOURCE_DIR = REPO.parent / "shared" / "prompts"
SPLITS = ("calibration", "distill", "eval", "reference")
FILES = ("calibration.txt", "distill.txt", "eval.txt", "reference.txt", "samples.txt", "manifest.json")
SALT = b"edgeseg-split-v1:"

needs_sources = pytest.mark.skipif(
    not SOURCE_DIR.is_dir(), reason=f"source prompt lists not found at {SOURCE_DIR}"
)


def spec_bucket(text: str, *, normalized: bool = False) -> int:
    """The documented bucket: first 8 bytes (big-endian) of sha256(salt + normalized), mod 100."""
    norm = text if normalized else clean_text(text)
    digest = hashlib.sha256(SALT + norm.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % 100


@functools.cache
def norm(text: str) -> str:
    """clean_text, cached: the shipped files and the source lists share most of their lines."""
    return clean_text(text)


def read_lines(path: Path) -> list[str]:
    text = path.read_text(encoding="utf-8")
    assert text == "" or text.endswith("\n"), f"{path.name} does not end with a newline"
    return text.split("\n")[:-1]


@pytest.fixture(scope="module")
def shipped() -> dict[str, list[str]]:
    return {name: read_lines(SHIPPED / f"{name}.txt") for name in (*SPLITS, "samples")}


@pytest.fixture(scope="module")
def normalized(shipped) -> dict[str, list[str]]:
    return {name: [norm(line) for line in lines] for name, lines in shipped.items()}


@pytest.fixture(scope="module")
def sources(normalized) -> dict[str, set[str]]:
    if not SOURCE_DIR.is_dir():
        pytest.skip(f"source prompt lists not found at {SOURCE_DIR}")
    out = {}
    for path in sorted(SOURCE_DIR.glob("*.txt")):
        out[path.stem] = {norm(x) for x in path.read_text(encoding="utf-8").split("\n")} - {""}
    return out


# --------------------------------------------------------------------------------------------------
# The shipped files


def test_split_files_are_clean_and_sorted(shipped, normalized):
    for name in SPLITS:
        lines, norm = shipped[name], normalized[name]
        assert lines, f"{name}.txt is empty"
        assert all(line and line == line.strip() for line in lines), f"blank or padded line in {name}.txt"
        assert len(set(norm)) == len(norm), f"duplicate prompts (after normalization) in {name}.txt"
        assert all(norm), f"a line of {name}.txt normalizes to nothing"
        assert norm == sorted(norm), f"{name}.txt is not sorted by normalized text"


def test_splits_are_disjoint_after_normalization(normalized):
    sets = {name: set(normalized[name]) for name in SPLITS}
    for i, a in enumerate(SPLITS):
        for b in SPLITS[i + 1 :]:
            common = sets[a] & sets[b]
            assert not common, f"{a} and {b} share {len(common)} prompts, e.g. {sorted(common)[:3]}"


def spec_held_out(bucket: int) -> str | None:
    """The documented held-out splits: eval = buckets 0-9, reference = bucket 10."""
    return "eval" if bucket < 10 else "reference" if bucket == 10 else None


def test_eval_and_reference_are_hash_buckets(normalized):
    for name in SPLITS:
        expected = name if name in ("eval", "reference") else None
        wrong = [t for t in normalized[name] if spec_held_out(spec_bucket(t, normalized=True)) != expected]
        assert not wrong, f"{len(wrong)} prompts of {name}.txt are in the wrong hash bucket: {wrong[:3]}"
    pool = sum(len(normalized[name]) for name in SPLITS)
    share = len(normalized["eval"]) / pool
    assert 0.09 <= share <= 0.11, f"eval is {share:.3%} of the pool"
    share = len(normalized["reference"]) / pool
    assert 0.008 <= share <= 0.012, f"reference is {share:.3%} of the pool"


def test_calibration_size_and_multiword_share(normalized):
    cal = normalized["calibration"]
    assert 1800 <= len(cal) <= 2400
    words = [len(t.split()) for t in cal]
    assert sum(w >= 2 for w in words) / len(cal) >= 0.5, "under half the calibration prompts are multi-word"
    assert sum(w >= 3 for w in words) / len(cal) >= 0.10, "too few phrases of three or more words"


def test_manifest_matches_files(shipped):
    manifest = json.loads((SHIPPED / "manifest.json").read_text(encoding="utf-8"))
    for name in SPLITS:
        data = (SHIPPED / f"{name}.txt").read_bytes()
        assert manifest["splits"][name]["sha256"] == hashlib.sha256(data).hexdigest()
        assert manifest["splits"][name]["count"] == len(shipped[name])
        assert sum(src[name] for src in manifest["sources"]) == len(shipped[name])
    samples = (SHIPPED / "samples.txt").read_bytes()
    assert manifest["samples"]["sha256"] == hashlib.sha256(samples).hexdigest()
    assert manifest["total"] == sum(len(shipped[name]) for name in SPLITS)


def test_samples_are_short_known_prompts(shipped, normalized):
    samples = normalized["samples"]
    assert 20 <= len(samples) <= 30
    assert len(set(samples)) == len(samples)
    assert all(len(t.split()) <= 6 for t in samples)
    pool = set().union(*(normalized[name] for name in SPLITS))
    assert set(samples) <= pool


@needs_sources
def test_pool_is_exactly_the_source_lists(normalized, sources):
    pool = set().union(*(normalized[name] for name in SPLITS))
    expected = set().union(*sources.values())
    assert pool == expected, f"missing {len(expected - pool)}, unexpected {len(pool - expected)}"


@needs_sources
def test_every_source_is_represented_in_calibration(normalized, sources):
    cal = set(normalized["calibration"])
    missing = [name for name, prompts in sources.items() if not prompts & cal]
    assert not missing, f"sources with no calibration prompt: {missing}"
    # SAM3's own example prompts are credited first and fit in the per-source floor.
    examples = sources["sam3_repo_examples"]
    assert {t for t in examples if spec_bucket(t) >= 11} <= cal


@needs_sources
def test_rebuild_reproduces_shipped_files(tmp_path):
    out = tmp_path / "calibration"
    corpus.build_splits(SOURCE_DIR, out)
    assert sorted(p.name for p in out.iterdir()) == sorted(FILES), "unexpected or leftover files"
    for name in FILES:
        assert (out / name).read_bytes() == (SHIPPED / name).read_bytes(), f"{name} differs from the rebuild"


# --------------------------------------------------------------------------------------------------
# The library


def test_normalize_prompt_is_sam3_cleaning():
    assert corpus.normalize_prompt("  Red   Car ") == "red car"
    assert corpus.normalize_prompt("Tom &amp;amp; Jerry") == "tom & jerry"
    assert corpus.normalize_prompt("a\u00a0player\tin WHITE") == "a player in white"


def test_split_of_is_hash_based_and_normalization_invariant():
    variants = [
        ("Red Car", " red   car ", "RED\tcar", "red car"),
        ("Fish &amp; Chips", "fish & chips", "FISH &amp;amp; CHIPS"),
        ("A player in white", "a  player in White "),
        ("café table", "CAFÉ  TABLE"),
    ]
    for group in variants:
        buckets = {corpus.hash_bucket(v) for v in group}
        assert buckets == {spec_bucket(group[0])}, group
        splits = {corpus.split_of(v, calibration=()) for v in group}
        assert len(splits) == 1, group
        assert splits == {spec_held_out(spec_bucket(group[0])) or "distill"}
    # Enough distinct texts to see both outcomes of the eval bucket, matching the spec each time.
    texts = [f"test prompt {i}" for i in range(400)]
    got = [corpus.is_eval(t) for t in texts]
    assert got == [spec_bucket(t) < 10 for t in texts]
    assert 15 <= sum(got) <= 65
    held = [corpus.is_held_out(t) for t in texts]
    assert held == [spec_bucket(t) <= 10 for t in texts]
    assert [corpus.split_of(t, calibration=()) for t in texts].count("reference") == sum(
        spec_bucket(t) == 10 for t in texts) > 0


def test_split_of_uses_the_calibration_set():
    train = next(t for t in (f"thing {i}" for i in range(100)) if spec_bucket(t) >= 11)
    held = next(t for t in (f"thing {i}" for i in range(100)) if spec_bucket(t) < 10)
    assert corpus.split_of(train.upper(), calibration={train}) == "calibration"
    assert corpus.split_of(train, calibration=set()) == "distill"
    assert corpus.split_of(held, calibration={held}) == "eval"


def test_split_of_agrees_with_shipped_files(shipped):
    for name in SPLITS:
        for line in shipped[name][::97]:
            assert corpus.split_of(line) == name, (name, line)


def test_split_of_does_not_depend_on_python_hash_seed():
    texts = ["Red Car", "dog", "a player in white", "the leftmost child wearing blue vest", "café"]
    expected = [corpus.hash_bucket(t) for t in texts]
    code = (
        "import json, sys; from edgeseg import corpus; "
        f"print(json.dumps([corpus.hash_bucket(t) for t in {texts!r}])); "
        "print('torch' in sys.modules)"
    )
    for seed in ("1", "12345"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        res = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
        )
        buckets, torch_loaded = res.stdout.strip().split("\n")
        assert json.loads(buckets) == expected
        assert torch_loaded == "False", "edgeseg.corpus must not import torch"


def test_overlap():
    assert corpus.overlap(["Red Car", "dog"], [" red   car", "cat", "DOG&amp;"]) == {"red car"}


def test_shipped_splits_are_disjoint_from_the_held_out_ones(shipped):
    held_out = corpus.held_out_normalized()
    assert len(held_out) == len(shipped["eval"]) + len(shipped["reference"])
    assert not {norm(t) for t in shipped["calibration"] + shipped["distill"][::10]} & held_out


def test_load_split(shipped):
    assert corpus.prompts_dir() == SHIPPED
    assert corpus.load_split("calibration") == shipped["calibration"]
    assert corpus.load_split("reference") == shipped["reference"]
    assert corpus.load_split("samples") == shipped["samples"]
    with pytest.raises(EdgesegError, match="unknown prompt set"):
        corpus.load_split("train")


def test_build_on_small_lists(tmp_path):
    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    singles = [f"word{i:02d}" for i in range(40)]
    multis = [f"blue thing {i}" for i in range(8)]
    (src / "coco.txt").write_text("Dog\ncat\n\nRed Car\n", encoding="utf-8")
    (src / "zz_extra.txt").write_text(
        "\n".join(["dog", "  DOG ", "   ", "red  car", *singles, *multis]) + "\n", encoding="utf-8"
    )
    manifest = corpus.build_splits(src, out, calibration_size=12)
    assert not [p for p in out.iterdir() if p.name not in FILES], "temporary files left behind"

    files = {name: read_lines(out / f"{name}.txt") for name in SPLITS}
    everything = [line for name in SPLITS for line in files[name]]
    # First occurrence wins, blank lines are dropped, case variants are one prompt.
    assert sorted(everything) == sorted(["Dog", "cat", "Red Car", *singles, *multis])
    for name in SPLITS:
        expected = name if name in ("eval", "reference") else None
        assert all(spec_held_out(spec_bucket(t)) == expected for t in files[name])
    train = [t for t in everything if spec_bucket(t) >= 11]
    cal = files["calibration"]
    assert len(cal) == min(12, len(train))
    coco_train = {t for t in ("Dog", "cat", "Red Car") if spec_bucket(t) >= 11}
    assert coco_train <= set(cal), "the small list's prompts should fill its floor"
    extra_cal = [t for t in cal if t not in coco_train]
    extra_multi = [t for t in multis if spec_bucket(t) >= 11]
    want = min(len(extra_multi), math.ceil(len(extra_cal) / 2))
    assert sum(t in extra_multi for t in extra_cal) >= want, "multi-word prompts not given priority"
    assert [s["name"] for s in manifest["sources"]] == ["coco", "zz_extra"]
    assert manifest["sources"][1]["credited"] == len(singles) + len(multis)

    again = tmp_path / "again"
    corpus.build_splits(src, again, calibration_size=12)
    for name in FILES:
        assert (again / name).read_bytes() == (out / name).read_bytes()


def test_build_errors(tmp_path):
    with pytest.raises(EdgesegError, match="not found"):
        corpus.build_splits(tmp_path / "nope", tmp_path / "out")
    with pytest.raises(EdgesegError, match="no \\*.txt"):
        corpus.build_splits(tmp_path, tmp_path / "out")
    (tmp_path / "bad.txt").write_bytes(b"ok\n\xff\xfe\n")
    with pytest.raises(EdgesegError, match="not valid UTF-8"):
        corpus.build_splits(tmp_path, tmp_path / "out")
