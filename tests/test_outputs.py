"""The gate metric (``token_fidelity``), ``pooled`` and ``cosine`` against hand-computed cases.

Every expected number below is worked out by hand in the comments, not produced by the code under
test; the on-device copy in the Jetson kit (standalone, numpy only) is checked against the same
cases and against ``edgeseg.outputs`` on random data.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from edgeseg.outputs import cosine, pooled, retrieval, token_fidelity
from edgeseg.targets.jetson_kit import build_engine as kit

# Two prompts, L = 3, width 2.
#   prompt 0: valid rows 0, 1 (row 2 padding)
#     row 0: cand (1, 0) vs ref (1, 0)   cos 1,        squared error mean 0,            |diff| max 0
#     row 1: cand (1, 1) vs ref (0, 1)   cos 1/sqrt 2, squared error mean (1 + 0)/2 = .5, |diff| max 1
#     -> per-prompt cosine (1 + 1/sqrt 2) / 2 = 0.8535533905932737, mse (0 + .5) / 2 = 0.25
#   prompt 1: valid row 0 only
#     row 0: cand (-2, 0) vs ref (2, 0)  cos -1,       squared error mean (16 + 0)/2 = 8, |diff| max 4
#   mean cosine (0.8535533905932737 - 1) / 2, worst -1, mse (0.25 + 8) / 2 = 4.125, max abs diff 4
REFERENCE = np.array([[[1, 0], [0, 1], [9, 9]], [[2, 0], [5, 5], [7, 7]]], np.float32)
CANDIDATE = np.array([[[1, 0], [1, 1], [0, 0]], [[-2, 0], [-5, 3], [1, 2]]], np.float32)
MASK = np.array([[False, False, True], [False, True, True]])
PROMPT0 = (1 + 1 / math.sqrt(2)) / 2


def test_token_fidelity_hand_case():
    got = token_fidelity(CANDIDATE, REFERENCE, MASK)
    assert got["mean_cosine"] == pytest.approx((PROMPT0 - 1) / 2, abs=1e-12)
    assert got["worst_cosine"] == pytest.approx(-1.0, abs=1e-12)
    assert got["mse"] == pytest.approx(4.125, abs=1e-12)
    assert got["max_abs_diff"] == pytest.approx(4.0, abs=1e-12)
    assert got["prompts"] == 2


def test_token_fidelity_ignores_padding_rows_whatever_they_hold():
    noisy = CANDIDATE.copy()
    noisy[MASK] = np.array([np.nan, np.inf], np.float32)  # garbage where SAM3 never reads
    got = token_fidelity(noisy, REFERENCE, MASK)
    assert got["mean_cosine"] == pytest.approx((PROMPT0 - 1) / 2, abs=1e-12)
    assert got["max_abs_diff"] == pytest.approx(4.0, abs=1e-12)


def test_token_fidelity_non_finite_valid_row_is_not_finite():
    bad = CANDIDATE.copy()
    bad[0, 0] = np.nan
    got = token_fidelity(bad, REFERENCE, MASK)
    assert not math.isfinite(got["mean_cosine"]) and not math.isfinite(got["max_abs_diff"])


def test_token_fidelity_identical_is_one_and_scale_invariant():
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(4, 5, 8)).astype(np.float32)
    mask = np.zeros((4, 5), bool)
    mask[:, 3:] = True
    same = token_fidelity(ref, ref, mask)
    assert same["mean_cosine"] == pytest.approx(1.0, abs=1e-12) and same["max_abs_diff"] == 0.0
    scaled = token_fidelity(3 * ref, ref, mask)  # cosine ignores scale, the diff does not
    assert scaled["worst_cosine"] == pytest.approx(1.0, abs=1e-9)
    assert scaled["max_abs_diff"] == pytest.approx(2 * np.abs(ref[~mask]).max(), rel=1e-6)


def test_pooled_and_cosine_hand_case():
    # prompt 0 pools rows (1,0),(0,1) -> (0.5, 0.5); prompt 1 pools (2,0) -> (2, 0)
    np.testing.assert_allclose(pooled(REFERENCE, MASK), [[0.5, 0.5], [2.0, 0.0]], atol=1e-12)
    # cos((0.5,0.5),(1,0)) = 0.5/(sqrt(.5)*1) = 1/sqrt 2; cos((2,0),(0,3)) = 0
    np.testing.assert_allclose(cosine(np.array([[0.5, 0.5], [2, 0]]), np.array([[1, 0], [0, 3]])),
                               [1 / math.sqrt(2), 0.0], atol=1e-12)
    assert cosine(np.zeros(3), np.ones(3)) == 0.0  # no division by zero


def test_jetson_kit_copy_agrees():
    got = kit.token_fidelity(CANDIDATE, REFERENCE, MASK)
    assert got["mean_cosine"] == pytest.approx((PROMPT0 - 1) / 2, abs=1e-12)
    assert got["worst_cosine"] == pytest.approx(-1.0, abs=1e-12)
    assert got["max_abs_diff"] == pytest.approx(4.0, abs=1e-12)
    rng = np.random.default_rng(1)
    cand, ref = rng.normal(size=(2, 6, 7, 16)).astype(np.float32)
    mask = rng.random((6, 7)) < 0.4
    mask[:, 0] = False
    ours, theirs = token_fidelity(cand, ref, mask), kit.token_fidelity(cand, ref, mask)
    for key in ("mean_cosine", "worst_cosine", "max_abs_diff", "prompts"):
        assert theirs[key] == pytest.approx(ours[key], abs=1e-12)


# Pooled retrieval, three prompts, width 2: references r0 = (1, 0), r1 = (0, 1), r2 = (1, 1).
#   A constant candidate c = (1, 0.1) for every prompt (a predictor that ignores its input):
#     cos(c, r0) = 1 / sqrt(1.01) = 0.995, cos(c, r1) = 0.1 / sqrt(1.01) = 0.0995,
#     cos(c, r2) = 1.1 / (sqrt(1.01) sqrt 2) = 0.774
#     rank of prompt 0: no other reference >= 0.995 -> 0; prompt 1: r0, r2 >= 0.0995 -> 2;
#     prompt 2: r0 >= 0.774 -> 1.  top-1 1/3 (= chance), top-5 1, mean rank 1.
#   All-zero candidates: every similarity is 0, a three-way tie, counted against each prompt -> rank 2.
#   Candidates 2 * r_i: own similarity 1, the others 0 or 1/sqrt 2 -> every rank 0, top-1 1.
REFS = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])


def test_retrieval_hand_cases():
    constant = retrieval(np.tile([1.0, 0.1], (3, 1)), REFS)
    assert constant == {"retrieval_top1": 1 / 3, "retrieval_top5": 1.0, "mean_rank": 1.0, "retrieval_chance": 1 / 3}
    zero = retrieval(np.zeros((3, 2)), REFS)
    assert zero["retrieval_top1"] == 0.0 and zero["mean_rank"] == 2.0
    exact = retrieval(2 * REFS, REFS)
    assert exact["retrieval_top1"] == 1.0 and exact["mean_rank"] == 0.0
    nan = retrieval(np.array([[np.nan, 0.0], [0.0, 1.0], [1.0, 1.0]]), REFS)
    assert nan["retrieval_top1"] == 2 / 3 and nan["mean_rank"] == 2 / 3  # a NaN row ranks last (2)
    assert retrieval(np.tile([1.0, 0.1], (3, 1)), REFS, chunk=2) == constant  # chunking changes nothing
    with pytest.raises(ValueError):
        retrieval(np.zeros((3, 2)), np.zeros((2, 2)))
