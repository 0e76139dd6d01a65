"""Tokenizer: facts from the spec (shared/reference/encoders.md section 1) and parity with Meta's."""

from __future__ import annotations

import gzip
import random

import numpy as np
import pytest
from conftest import HARD_PROMPTS, calibration_prompts

from edgeseg.tokenizer import EOT_ID, SOT_ID, Tokenizer, byte_to_unicode, default_vocab_path, file_md5, get_tokenizer


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return get_tokenizer()


def test_vocabulary_file_is_shipped_unchanged():
    assert file_md5(default_vocab_path()) == "933b7abbbbde62c36f02f0e6ccde464f"


def test_byte_map_matches_spec():
    table = byte_to_unicode()
    assert len(set(table.values())) == 256
    assert table[ord("A")] == "A" and table[0] == "\u0100" and table[32] == "\u0120"
    assert table[127] == "\u0121" and table[160] == "\u0142" and table[173] == "\u0143"


def test_vocabulary_ids_match_spec(tok):
    assert tok.vocab_size == 49408
    assert tok.decoder[0] == "!" and tok.decoder[255] == "\u0143"
    assert tok.decoder[256] == "!</w>" and tok.decoder[512] == "in" and tok.decoder[49405] == "jekyll</w>"
    assert tok.decoder[SOT_ID] == "<start_of_text>" and tok.decoder[EOT_ID] == "<end_of_text>"


def test_known_ids(tok):
    ids = tok(["a dog"], 8).ids
    assert ids.dtype == np.int64 and ids.shape == (1, 8)
    assert ids[0].tolist() == [49406, 320, 1929, 49407, 0, 0, 0, 0]
    assert tok.encode("x<end_of_text>y") == [343, 49407, 344]
    assert tok(["", "   \t "], 4).ids.tolist() == [[49406, 49407, 0, 0]] * 2


def test_numbers_split_into_single_characters(tok):
    assert len(tok.encode("2024")) == 4


def test_real_token_zero_exists(tok):
    # "!" before "$" has no merge, so the bare "!" symbol (id 0) is produced: SAM3 masks it as padding.
    assert 0 in tok.encode("wow!$")


def test_truncation_keeps_eot_last(tok):
    batch = tok(["a dog", "one two three four five six seven eight nine"], 6)
    assert batch.ids[1, 0] == SOT_ID and batch.ids[1, -1] == EOT_ID
    assert batch.ids[1, 1:5].tolist() == tok.encode("one two three four five six seven eight nine")[:4]
    assert batch.truncated == 1
    assert batch.lengths.tolist() == [4, 11]
    assert batch.mask[0].tolist() == [False] * 4 + [True] * 2


def test_any_context_length(tok):
    for length in (2, 3, 16, 32, 77, 128):
        ids = tok(HARD_PROMPTS, length).ids
        assert ids.shape == (len(HARD_PROMPTS), length)
        assert (ids[:, 0] == SOT_ID).all() and ((ids == EOT_ID).sum(1) >= 1).all()


def test_rejects_context_below_two(tok):
    with pytest.raises(ValueError):
        tok(["a"], 1)


def test_no_file_reads_per_call(tok, monkeypatch):
    tok(["warm"], 16)

    def refuse(*args, **kwargs):
        raise AssertionError("the tokenizer read a file during a call")

    monkeypatch.setattr(gzip, "open", refuse)
    monkeypatch.setattr("builtins.open", refuse)
    assert get_tokenizer()(["a brand new word xyzzyq"], 16).ids.shape == (1, 16)


def test_tokenizing_keeps_no_string_tables():
    """The runtime's peak RSS counts the tokenizer: BPE runs on ids, token strings load on demand."""
    fresh = Tokenizer(context_length=16)
    fresh(["a dog on the left", "caf\u00e9 &amp; bar"])
    assert not {"encoder", "decoder", "merges"} & set(vars(fresh))
    assert fresh.merge("dogs") == ["dogs</w>"] and fresh.encoder["dogs</w>"] == fresh.bpe("dogs")[0]


@pytest.mark.parametrize("lines,why", [(["i n", "i n"], "repeats a token"), (["i n", "q zz"], "unknown token")])
def test_a_vocabulary_that_is_not_clip_bpe_is_refused(tmp_path, lines, why):
    path = tmp_path / "bad.txt.gz"
    with gzip.open(path, "wt", encoding="utf-8") as fh:
        fh.write("#version: 0.2\n" + "\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=why):
        Tokenizer(path, num_merges=2)


def _fuzz_strings(count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    ranges = [(0x20, 0x7E), (0xA0, 0x24F), (0x300, 0x36F), (0x370, 0x3FF), (0x400, 0x4FF), (0x590, 0x6FF),
              (0x900, 0x97F), (0x2000, 0x206F), (0x2100, 0x22FF), (0x3000, 0x30FF), (0x4E00, 0x4FFF),
              (0xAC00, 0xAD00), (0xFF00, 0xFFEF), (0x1F300, 0x1F6FF), (0x0, 0x1F)]
    out = []
    for _ in range(count):
        chars = []
        for _ in range(rng.randint(0, 24)):
            lo, hi = rng.choice(ranges)
            chars.append(chr(rng.randint(lo, hi)))
            if rng.random() < 0.25:
                chars.append(rng.choice([" ", "&amp;", "'s", "!", "<end_of_text>", "\u00c3\u00a9"]))
        out.append("".join(chars))
    return out


@pytest.mark.parity
@pytest.mark.parametrize("length,limit", [(32, None), (16, 5000)])
def test_parity_with_meta_on_real_prompts(tok, meta_tokenizer, length, limit):
    prompts = calibration_prompts(limit) + HARD_PROMPTS
    expected = meta_tokenizer(prompts, context_length=length).numpy()
    got = tok(prompts, length).ids
    bad = np.nonzero((expected != got).any(1))[0]
    assert bad.size == 0, f"{bad.size} prompts differ, e.g. {[prompts[i] for i in bad[:5]]}"


@pytest.mark.parity
@pytest.mark.parametrize("length", [77, 8])
def test_parity_with_meta_on_hard_and_random_text(tok, meta_tokenizer, length):
    prompts = HARD_PROMPTS + _fuzz_strings(3000, seed=length)
    expected = meta_tokenizer(prompts, context_length=length).numpy()
    got = tok(prompts, length).ids
    bad = np.nonzero((expected != got).any(1))[0]
    assert bad.size == 0, f"{bad.size} prompts differ, e.g. {[prompts[i] for i in bad[:5]]!r}"


@pytest.mark.parity
def test_encode_matches_meta_without_packing(tok, meta_tokenizer):
    for text in HARD_PROMPTS:
        assert tok.encode(text) == meta_tokenizer.encode(text), text
