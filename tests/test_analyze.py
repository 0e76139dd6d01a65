"""Tests of ``edgeseg analyze`` (prompt anatomy) and the statistics behind it.

Expected values are worked out by hand from the definitions in the issue, never taken from the
code under test. Token counts used (CLIP BPE, checked in ``test_token_counts_used_below``):
"a dog" -> 2 content tokens (n = 4), "2024" -> 4 single-digit tokens (n = 6), "" -> none (n = 2),
"dog" and "cat" -> 1 each. ids: "a</w>" 320, "dog</w>" 1929, "cat</w>" 2368, "2</w>" 273,
"0</w>" 271, "4</w>" 275 (the digits and "a</w>" are byte+</w> ids, below 512).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgeseg import analyze as an
from edgeseg.cli import main
from edgeseg.errors import EdgesegError
from edgeseg.tokenizer import get_tokenizer

A, DOG, CAT, TWO, ZERO, FOUR = 320, 1929, 2368, 273, 271, 275
SOT, EOT = 49406, 49407
REPO = Path(__file__).resolve().parents[1]


def stats_of(sources, contexts=(4, 8), max_truncation=0.01, coverage=0.999):
    return an.analyze_corpus(an.tokenize_corpus(sources), contexts, max_truncation, coverage)


def row(stats, context):
    return next(r for r in stats["contexts"] if r["context_length"] == context)


def test_token_counts_used_below():
    tok = get_tokenizer()
    assert tok.encode("a dog") == [A, DOG]
    assert tok.encode("2024") == [TWO, ZERO, TWO, FOUR]
    assert tok.encode("") == []
    assert tok.encode("dog cat") == [DOG, CAT]


# -- lengths ----------------------------------------------------------------------------------------
def test_length_statistics_by_hand():
    # n = 4, 6, 2, 4 -> sorted 2, 4, 4, 6
    result = stats_of({"tiny": ["a dog", "2024", "", "a dog"]})
    overall = result["lengths"]["overall"]
    assert overall["prompts"] == 4
    assert overall["unique_prompts"] == 3
    assert overall["mean_length"] == pytest.approx(4.0)
    assert overall["mean_content_tokens"] == pytest.approx(2.0)
    assert (overall["min_length"], overall["max_length"]) == (2, 6)
    assert overall["histogram"] == {"2": 1, "4": 2, "6": 1}
    # nearest rank: p25 -> rank 1 (2), p50 -> rank 2 (4), p75 -> rank 3 (4), p90 -> rank 3.6 -> 4th (6)
    p = overall["percentiles"]
    assert (p["p5"], p["p25"], p["p50"], p["p75"], p["p90"], p["p99"]) == (2, 2, 4, 4, 6, 6)

    at4 = row(overall, 4)  # valid 4, 4, 2, 4 = 14 of 16 slots; "2024" loses 2 of 16 tokens
    assert at4["density"] == pytest.approx(14 / 16)
    assert at4["padding"] == pytest.approx(2 / 16)
    assert at4["truncated"] == pytest.approx(0.25)
    assert at4["truncated_prompts"] == 1
    assert at4["tokens_lost"] == pytest.approx(2 / 16)
    at8 = row(overall, 8)  # valid 16 of 32 slots, nothing truncated
    assert at8["density"] == pytest.approx(0.5)
    assert at8["padding"] == pytest.approx(0.5)
    assert at8["truncated"] == 0 and at8["tokens_lost"] == 0
    # L = 4 and 5 cut "2024" (25% of prompts); 6 is the first that fits everything
    assert overall["recommended_context"] == 6
    assert result["recommendation"]["context_length"] == 6
    assert result["paper_comparison"]["mean_length"]["ours_with_sot_eot"] == pytest.approx(4.0)
    assert result["paper_comparison"]["mean_length"]["ours_without_sot_eot"] == pytest.approx(2.0)


def test_recommendation_threshold_is_strict_and_search_starts_at_4():
    hist = np.zeros(20, dtype=np.int64)
    hist[[3, 10]] = [3, 1]  # 25% of prompts have n = 10
    assert an.recommend_context(hist, 0.30) == 4  # 25% < 30% already at the first searched L
    assert an.recommend_context(hist, 0.25) == 10  # "fewer than": 25% is not fewer than 25%
    hist = np.zeros(100, dtype=np.int64)
    hist[[3, 90]] = [1, 1]
    assert an.recommend_context(hist, 0.01) is None  # nothing up to 77 fits n = 90


def test_duplicates_are_counted_not_re_tokenized_and_sources_are_weighted():
    corpus = an.tokenize_corpus({"x": ["a dog", "a dog", "a dog"], "y": ["a dog", "2024"]})
    assert corpus.texts == ["a dog", "2024"]
    assert corpus.lengths.tolist() == [4, 6]
    result = an.analyze_corpus(corpus, (4,), 0.01, 0.999)
    overall, x, y = result["lengths"]["overall"], *result["lengths"]["sources"].values()
    assert overall["prompts"] == 5 and overall["unique_prompts"] == 2
    assert overall["mean_length"] == pytest.approx((4 * 4 + 6) / 5)
    assert row(overall, 4)["truncated"] == pytest.approx(1 / 5)
    assert row(overall, 4)["tokens_lost"] == pytest.approx(2 / 22)
    assert (x["prompts"], x["unique_prompts"], x["mean_length"]) == (3, 1, 4.0)
    assert (y["prompts"], y["unique_prompts"], y["mean_length"]) == (2, 2, 5.0)
    assert row(y, 4)["density"] == pytest.approx(8 / 8)
    assert x["distinct_tokens"] == 2 and y["distinct_tokens"] == 5
    assert result["vocabulary"]["occurrences"] == 4 * 2 + 4


# -- vocabulary -------------------------------------------------------------------------------------
def test_coverage_counts_by_hand():
    result = stats_of({"v": ["dog dog dog dog dog dog dog dog dog cat"]})
    vocab = result["vocabulary"]
    assert vocab["occurrences"] == 10 and vocab["distinct_tokens"] == 2
    by_level = {r["coverage"]: r for r in vocab["coverage"]}
    assert by_level[0.9]["tokens"] == 1  # "dog" alone is 9 of 10 occurrences
    assert by_level[0.99]["tokens"] == 2
    assert by_level[0.999]["tokens"] == 2
    assert by_level[1.0]["tokens"] == 2
    assert by_level[0.9]["vocabulary_size"] == 512 + 1 + 2  # bytes + dog + SOT/EOT
    assert by_level[1.0]["vocabulary_size"] == 512 + 2 + 2
    assert result["recommendation"]["vocabulary_full"]["vocabulary_size"] == 516


def test_kept_ids_always_hold_bytes_and_specials():
    counts = np.zeros(49408, dtype=np.int64)
    counts[[DOG, CAT, A]] = [5, 1, 3]  # "a</w>" (320) is already a byte-level id
    ids = an.kept_ids(counts, 1.0)
    assert ids.tolist() == [*range(512), DOG, CAT, SOT, EOT]
    assert an.kept_ids(counts, 0.5).tolist() == [*range(512), DOG, SOT, EOT]  # dog: 5 of 9


def test_coverage_levels_are_not_fooled_by_rounding():
    counts = np.zeros(49408, dtype=np.int64)
    counts[1000:1010] = 1  # 10 equal ids: 70% needs exactly 7 (0.7 * 10 is 7.000000000000001 in floats)
    assert an.tokens_for_coverage(counts, 0.7) == 7
    assert an.tokens_for_coverage(counts, 0.71) == 8


# -- embedding statistics ---------------------------------------------------------------------------
def test_pca_dimensions_on_a_known_spectrum():
    rng = np.random.default_rng(1)
    variances = np.array([60, 25, 8, 4, 2.5, 0.5])  # sum 100; cumulative .60 .85 .93 .97 .995 1
    n = 400
    centred = rng.standard_normal((n, 6))
    centred -= centred.mean(0)
    basis, _ = np.linalg.qr(centred)  # orthonormal columns, each orthogonal to the ones vector
    rotation, _ = np.linalg.qr(rng.standard_normal((40, 40)))
    x = (basis * np.sqrt(variances)) @ rotation[:6] + 3.0  # embed in 40-D, shift the mean
    ratios = an.pca_explained_variance(x)
    np.testing.assert_allclose(ratios[:6], variances / 100, atol=1e-9)
    assert an.pca_dimensions(ratios, 0.90) == 3
    assert an.pca_dimensions(ratios, 0.95) == 4
    assert an.pca_dimensions(ratios, 0.99) == 5


def test_twonn_on_three_points_by_hand():
    # points 0, 1, 3 on a line: mu = 3/1, 2/1, 3/2. N = 3, fit keeps floor(2.7) = 2 smallest:
    # x = log 1.5, log 2; y = -log(1 - 1/3), -log(1 - 2/3) = log 1.5, log 3
    result = an.twonn(np.array([[0.0], [1.0], [3.0]]))
    x = np.log([1.5, 2.0])
    y = np.log([1.5, 3.0])
    assert result["dimension"] == pytest.approx((x * y).sum() / (x * x).sum())
    assert result["mle"] == pytest.approx(3 / math.log(1.5 * 2 * 3))
    assert result["points_in_fit"] == 2
    assert "Facco" in result["method"] and "TwoNN" in result["method"]


def test_twonn_on_a_5d_subspace_of_50d():
    rng = np.random.default_rng(0)
    basis, _ = np.linalg.qr(rng.standard_normal((50, 5)))
    x = rng.standard_normal((1500, 5)) @ basis.T + 1e-6 * rng.standard_normal((1500, 50))
    assert 4.0 <= an.twonn(x)["dimension"] <= 6.5


def test_twonn_on_a_circle_and_a_swiss_roll():
    rng = np.random.default_rng(0)
    angle = rng.uniform(0, 2 * np.pi, 800)
    circle = np.c_[np.cos(angle), np.sin(angle), np.zeros((800, 8))]
    assert 0.8 <= an.twonn(circle)["dimension"] <= 1.3
    t = 1.5 * np.pi * (1 + 2 * rng.uniform(size=1500))
    roll = np.c_[t * np.cos(t), 20 * rng.uniform(size=1500), t * np.sin(t)]
    assert 1.6 <= an.twonn(roll)["dimension"] <= 2.5


def test_twonn_drops_duplicate_points():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((200, 3))
    result = an.twonn(np.vstack([x, x[:5]]))
    assert result["duplicates_dropped"] == 10  # each of the 5 pairs has r1 = 0 twice
    assert result["points_used"] == 195


def test_sample_is_seeded_and_skips_prompts_that_tokenize_alike():
    prompts = [f"thing {i}" for i in range(50)] + ["Dog", "dog", "DOG  "]
    corpus = an.tokenize_corpus({"s": prompts})
    everything = an.sample_prompts(corpus, 1000, seed=0)
    assert len(everything) == 51  # the three dogs are one token sequence
    first = an.sample_prompts(corpus, 10, seed=3)
    assert first == an.sample_prompts(corpus, 10, seed=3)
    assert first != an.sample_prompts(corpus, 10, seed=4)
    assert len(set(first)) == 10


# -- inputs -----------------------------------------------------------------------------------------
def test_parse_contexts():
    assert an.parse_contexts("32, 8,16,8") == [8, 16, 32]
    for bad in ("0", "-4", "abc", "8,,16", "", "8.5", "78", "1"):
        with pytest.raises(EdgesegError):
            an.parse_contexts(bad)


# -- command line -----------------------------------------------------------------------------------
def run_cli(args, capsys):
    code = main(["analyze", *map(str, args)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_end_to_end_without_embedding(tmp_path):
    first, second = tmp_path / "animals.txt", tmp_path / "years.txt"
    first.write_text("a dog\na dog\n\nA  Dog\n", encoding="utf-8")  # blank line skipped; "A  Dog" tokenizes alike
    second.write_text("2024\n", encoding="utf-8")
    out = tmp_path / "analysis"
    proc = subprocess.run([sys.executable, "-m", "edgeseg.cli", "analyze", "--prompts", str(first), str(second),
                           "--contexts", "8,4", "--no-embedding", "--out", str(out)],
                          capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "analyzed 4 prompt(s)" in proc.stderr and " s" in proc.stderr
    assert sorted(p.name for p in out.iterdir()) == [
        "analysis.json", "contexts.png", "lengths.png", "report.md", "vocabulary.png", "vocabulary.txt"]
    for png in out.glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = json.loads((out / "analysis.json").read_text(encoding="utf-8"))
    assert [f["name"] for f in data["inputs"]["files"]] == ["animals", "years"]
    assert data["inputs"]["contexts"] == [4, 8]
    overall = data["lengths"]["overall"]  # n = 4, 4, 4, 6
    assert overall["prompts"] == 4 and overall["unique_prompts"] == 3
    assert overall["mean_length"] == pytest.approx(4.5)
    assert row(overall, 4)["density"] == pytest.approx(1.0)
    assert row(overall, 4)["truncated"] == pytest.approx(0.25)
    assert row(overall, 4)["tokens_lost"] == pytest.approx(2 / 18)
    assert row(overall, 8)["density"] == pytest.approx(18 / 32)
    assert data["lengths"]["sources"]["animals"]["mean_length"] == pytest.approx(4.0)
    assert data["recommendation"]["context_length"] == 6
    assert data["embedding"] == {"skipped": "--no-embedding"}
    assert data["timing_s"]["length_and_vocabulary"] > 0
    assert {r["context_length"] for r in data["paper_comparison"]["rows"]} == {8, 16, 32}
    lines = (out / "vocabulary.txt").read_text(encoding="utf-8").splitlines()
    ids = [int(line.split("\t")[0]) for line in lines]
    assert ids == [*range(512), DOG, SOT, EOT]  # a, 2, 0, 4 (+</w>) are byte-level ids already
    assert lines[512].split("\t")[1] == "dog</w>"
    report = (out / "report.md").read_text(encoding="utf-8")
    for needle in ("0.245", "75.5%", "7.9", "SOT", "4.50", "2.50", "not known", "Recommendation"):
        assert needle in report
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".analysis.tmp-")]


def test_cli_with_a_small_encoder(tmp_path, capsys):
    prompts = tmp_path / "p.txt"
    prompts.write_text("".join(f"object number {i} on a table\n" for i in range(60)), encoding="utf-8")
    out = tmp_path / "out"
    code, _, err = run_cli(["--prompts", prompts, "--encoder", "mobileclip-s0", "--sample", "32", "--seed", "1",
                            "--out", out], capsys)
    assert code == 0, err
    assert "RANDOM" in err
    assert (out / "embedding.png").read_bytes()[:4] == b"\x89PNG"
    data = json.loads((out / "analysis.json").read_text(encoding="utf-8"))
    emb = data["embedding"]
    assert emb["encoder"] == "mobileclip-s0" and emb["sample"] == 32 and emb["weights"] == "random"
    assert "RANDOM" in emb["label"]
    assert emb["context_length"] == 16 and emb["width"] == 256
    assert "Facco" in emb["twonn"]["method"]
    assert 0 < emb["twonn"]["dimension"] < 256
    assert len(emb["pca"]["explained_variance_ratio"]) == 32
    assert "RANDOM WEIGHTS" in (out / "report.md").read_text(encoding="utf-8")
    assert data["timing_s"]["embedding"] > 0


def _bad_inputs(tmp_path):
    good = tmp_path / "good.txt"
    good.write_text("a dog\n", encoding="utf-8")
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n", encoding="utf-8")
    binary = tmp_path / "latin1.txt"
    binary.write_bytes("caf\u00e9\n".encode("latin-1"))
    other = tmp_path / "sub"
    other.mkdir()
    (other / "good.txt").write_text("cat\n", encoding="utf-8")
    return {
        "missing": ["--prompts", tmp_path / "nope.txt"],
        "empty": ["--prompts", empty],
        "non-utf8": ["--prompts", good, binary],
        "contexts-zero": ["--prompts", good, "--contexts", "0"],
        "contexts-negative": ["--prompts", good, "--contexts=-8"],
        "contexts-garbage": ["--prompts", good, "--contexts", "8,sixteen"],
        "same-stem": ["--prompts", good, other / "good.txt"],
        "bad-sample": ["--prompts", good, "--sample", "2"],
        "bad-coverage": ["--prompts", good, "--coverage", "1.5", "--no-embedding"],
        "unknown-encoder": ["--prompts", good, "--encoder", "nonesuch"],
    }


@pytest.mark.parametrize("case", ["missing", "empty", "non-utf8", "contexts-zero", "contexts-negative",
                                  "contexts-garbage", "same-stem", "bad-sample", "bad-coverage", "unknown-encoder"])
def test_cli_bad_input_exits_2_with_one_line_and_no_output(tmp_path, capsys, case):
    args = _bad_inputs(tmp_path)[case]
    out = tmp_path / "out"
    code, stdout, err = run_cli([*args, "--out", out], capsys)
    assert code == 2
    assert stdout == ""
    assert len(err.strip().splitlines()) == 1 and err.startswith("edgeseg: error:"), err
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.tmp-")]


def test_cli_bad_input_in_a_real_process(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "edgeseg.cli", "analyze", "--prompts", str(tmp_path / "nope.txt"),
                           "--no-embedding", "--out", str(out)], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "does not exist" in proc.stderr
    assert not out.exists()
