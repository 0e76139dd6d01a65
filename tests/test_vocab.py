"""Vocabulary pruning: corpus words keep their segmentation, other words still tokenize, bundles shrink."""

from __future__ import annotations

import json
import random

import numpy as np
import onnx
import pytest
from conftest import HARD_PROMPTS, calibration_prompts
from onnx import numpy_helper
from test_quantize import _run, _tiny_bundle

from edgeseg.bundle import bundle_tokenizer, verify_bundle
from edgeseg.errors import EdgesegError
from edgeseg.quantize import Gate, quantize_bundle
from edgeseg.runtime import load
from edgeseg.tokenizer import VOCAB_SIZE, Tokenizer
from edgeseg.vocab import prune_vocabulary


@pytest.fixture(scope="module")
def full():
    return Tokenizer(context_length=77)


@pytest.fixture(scope="module")
def corpus():
    return calibration_prompts()[::20]  # ~4,100 real prompts from every split


@pytest.fixture(scope="module")
def pruned(full, corpus, tmp_path_factory):
    vocab = prune_vocabulary(corpus, full)
    path = vocab.write(tmp_path_factory.mktemp("vocab") / "pruned.txt.gz")
    return vocab, vocab.tokenizer(path, 77)


def test_corpus_prompts_keep_their_segmentation(full, corpus, pruned):
    vocab, small = pruned
    assert 512 + 2 < vocab.vocab_size < VOCAB_SIZE
    original, new = full(corpus).ids, small(corpus).ids
    # The pruned ids are a renumbering of the full tokenizer's ids (checked by strings, not by the map).
    for a, b in zip(original[:500], new[:500]):
        assert [full.decoder[int(i)] for i in a if i] == [small.decoder[int(i)] for i in b if i]
    assert np.array_equal(vocab.remap(original), new)
    assert small.sot_id == vocab.vocab_size - 2 and small.eot_id == vocab.vocab_size - 1


def test_embedding_rows_follow_the_tokens(full, pruned):
    vocab, small = pruned
    # new id i must carry the row of the full-vocabulary token with the same string
    for new_id in [0, 255, 256, 511, 512, vocab.vocab_size // 2, vocab.vocab_size - 3, small.sot_id, small.eot_id]:
        assert full.decoder[int(vocab.old_ids[new_id])] == small.decoder[new_id]
    assert (np.diff(vocab.old_ids) > 0).all()  # monotone: ranks kept in order


def test_unseen_words_still_tokenize_to_the_same_text(full, corpus, pruned):
    vocab, small = pruned
    rng = random.Random(0)
    alphabet = "abcdefghijklmnopqrstuvwxyz\u00e9\u00fc\u732b\U0001f436 0123456789-'"
    weird = ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 30))) for _ in range(300)]
    for text in weird + HARD_PROMPTS + ["zyzzyva quokka xylophonist", "antidisestablishmentarianism"]:
        ids = small.encode(text)
        assert all(0 <= i < vocab.vocab_size for i in ids)  # SOT/EOT only where the text spells them
        # the same bytes, whatever the segmentation (decode() would drop id 0, "!", SAM3's pad id)
        assert "".join(small.decoder[i] for i in ids) == "".join(full.decoder[i] for i in full.encode(text))
    changed = sum(not np.array_equal(vocab.remap(full(t).ids), small(t).ids) for t in weird)
    assert changed > 0  # the corpus does not cover random strings: they are segmented differently


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    _, fp32 = _tiny_bundle(tmp_path_factory, ["repmixer", "transformer"], "prune-src")
    everything = calibration_prompts()
    calib, evaluation = everything[::400][:64], everything[7::300][:64]
    corpus = everything[::40]
    plain_dir = tmp_path_factory.mktemp("plain") / "b"
    plain = quantize_bundle(fp32, plain_dir, calib, evaluation, gate=Gate(0.99, 0.9))
    out = tmp_path_factory.mktemp("pruned") / "b"
    small = quantize_bundle(fp32, out, calib, evaluation, gate=Gate(0.99, 0.9), prune_prompts=corpus,
                            prune_name="test corpus")
    return fp32, (plain_dir, plain), out, small, corpus


def test_pruned_int8_bundle_matches_the_unpruned_one_on_corpus_prompts(bundles, tmp_path):
    fp32, (plain_dir, plain), out, manifest, corpus = bundles
    assert verify_bundle(out)["tokenizer"]["vocab_size"] == manifest["tokenizer"]["vocab_size"] < VOCAB_SIZE
    assert manifest["tokenizer"]["pruned"]["prompts"] == len(corpus)
    assert "bpe_vocab.txt.gz" not in manifest["files"]
    size = sum(f["bytes"] for f in manifest["files"].values())
    assert size < sum(f["bytes"] for f in plain["files"].values())
    model = onnx.load(str(out / "model.onnx"))
    tables = [numpy_helper.to_array(i) for i in model.graph.initializer if i.name.endswith("_int8")]
    assert tables and all(t.shape[0] == manifest["tokenizer"]["vocab_size"] for t in tables)
    # Same prompts through both bundles' own tokenizers: the pruned graph computes the same thing.
    prompts = corpus[:40]
    ids_plain = bundle_tokenizer(plain_dir)(prompts).ids
    ids_small = bundle_tokenizer(out)(prompts).ids
    assert not np.array_equal(ids_plain, ids_small)  # renumbered ...
    mem_plain, mask_plain = _run(plain_dir / "model.onnx", ids_plain)
    mem_small, mask_small = _run(out / "model.onnx", ids_small)
    assert np.array_equal(mask_plain, mask_small)
    np.testing.assert_allclose(mem_small, mem_plain, atol=1e-5)  # ... but the same outputs


def test_pruned_bundle_runs_and_self_checks(bundles):
    _, _, out, manifest, _ = bundles
    with load(out) as runner:
        check = runner.self_check()
        encoded = runner.encode(["a dog", "qwxzv glorp"])
    assert check["mean_cosine"] > 0.99
    assert encoded.input_ids.max() < manifest["tokenizer"]["vocab_size"]
    fidelity = manifest["fidelity"]
    assert fidelity["passed"] and fidelity["prompts"] + fidelity["resegmented"]["prompts"] == 64


def test_pruning_refuses_an_empty_corpus(bundles, tmp_path):
    fp32 = bundles[0]
    everything = calibration_prompts()
    with pytest.raises(EdgesegError, match="non-empty"):
        quantize_bundle(fp32, tmp_path / "x", everything[:64], everything[:8], prune_prompts=[])
    assert not (tmp_path / "x").exists()


def test_cli_prune_vocab_reports_resegmented_prompts(bundles, tmp_path):
    from click.testing import CliRunner

    from edgeseg.cli import cli

    fp32 = bundles[0]
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(calibration_prompts()[::50]), encoding="utf-8")
    evaluation = tmp_path / "eval.txt"
    evaluation.write_text("a dog\na red car\nthe zyzzyva quokka\n", encoding="utf-8")
    result = CliRunner().invoke(cli, ["quantize", str(fp32), "--out", str(tmp_path / "q"), "--prune-vocab",
                                      str(corpus), "--eval-prompts", str(evaluation), "--calibration-limit", "64",
                                      "--min-mean-cosine", "0.99", "--min-worst-cosine", "0.9"])
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "q" / "manifest.json").read_text())
    assert manifest["tokenizer"]["pruned"]["corpus"] == "corpus.txt"
    assert manifest["fidelity"]["resegmented"]["prompts"] >= 1  # "zyzzyva" is not in the corpus


def test_bundle_vocabulary_reads_the_same_in_metas_tokenizer(tmp_path):
    from conftest import import_sam3

    from edgeseg.tokenizer import default_vocab_path
    from edgeseg.vocab import write_bundle_vocabulary

    simple_tokenizer, _ = import_sam3()
    section = write_bundle_vocabulary(tmp_path)
    prompts = calibration_prompts()[::97] + HARD_PROMPTS
    full = simple_tokenizer(bpe_path=str(default_vocab_path()))(prompts, context_length=32).numpy()
    cut = simple_tokenizer(bpe_path=str(tmp_path / section["vocab"]))(prompts, context_length=32).numpy()
    assert np.array_equal(full, cut)
    assert np.array_equal(Tokenizer(tmp_path / section["vocab"], 32, section["num_merges"])(prompts).ids, full)
