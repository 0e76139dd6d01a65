"""Prompt banks (``edgeseg.bank``, ``edgeseg.runtime.bank``, ``edgeseg bank``, ``encode --bank``, C++ reader).

Oracles: the bundle's own runner called without a bank on the same batch the build used (hits must be
bit-identical to it), the torch model the bundle was exported from, the ``safetensors`` package (an
independent reader of the file format), hand-computed edit distances, and the C++ runtime through ctypes
(Python and C++ must serve identical values from the same bank). Random/synthetic weights throughout.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import shutil
import struct
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from test_encoders_mobileclip import S0_BLOCKS, tiny_student
from test_export import REF_PROMPTS, SOURCE, tiny_exported_bundle

from edgeseg.bank import BANK_FILE, bundle_identity, edit_distance, open_bank
from edgeseg.bundle import finalize, inherited, read_manifest
from edgeseg.cli import main
from edgeseg.errors import EdgesegError
from edgeseg.export import export_bundle
from edgeseg.runtime import load
from edgeseg.runtime.bank import BankRunner, build_bank_only_bundle, build_from_bundle
from edgeseg.tokenizer import get_tokenizer

# "a dog" and "A Dog" tokenize alike (one entry, two texts); the long one is truncated at 16 tokens.
PROMPTS = ["a dog", "A Dog", "forklift", "pallet", "wow!$ sign", "a player in white " * 6, "traffic light"]
UNKNOWN = ["zebra crossing", "a red forklift"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    student, bundle, _ = tiny_exported_bundle(tmp_path_factory)
    return student, bundle


@pytest.fixture(scope="module")
def banks(tiny, tmp_path_factory):
    out = tmp_path_factory.mktemp("banks")
    bundle = tiny[1]
    build_from_bundle(bundle, PROMPTS, out / "f32.safetensors", dtype="float32")
    build_from_bundle(bundle, PROMPTS, out / "f16.safetensors", dtype="float16")
    build_bank_only_bundle(bundle, PROMPTS, out / "bankonly", dtype="float16")
    return {"float32": out / "f32.safetensors", "float16": out / "f16.safetensors", "bankonly": out / "bankonly"}


@pytest.fixture(scope="module")
def foreign(tmp_path_factory):
    """Another bundle (the same tiny model with seed-1 weights) and a bank built from it."""
    out = tmp_path_factory.mktemp("foreign")
    export_bundle(tiny_student(S0_BLOCKS, seed=1), out / "bundle", REF_PROMPTS, dict(SOURCE))
    build_from_bundle(out / "bundle", PROMPTS, out / "bank.safetensors")
    return out / "bundle", out / "bank.safetensors"


def entry_ids() -> np.ndarray:
    """The distinct id rows of PROMPTS in order of first appearance (the build's one batch)."""
    ids = get_tokenizer()(PROMPTS, 16).ids
    _, first = np.unique(ids, axis=0, return_index=True)
    return ids[np.sort(first)]


def rewrite_header(path: Path, out: Path, change) -> Path:
    """A copy of a bank whose JSON header ``change(header)`` edited, padded back to the original length."""
    data = path.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + length])
    change(header)
    text = json.dumps(header, separators=(",", ":")).encode()
    assert len(text) <= length
    out.write_bytes(data[:8] + text + b" " * (length - len(text)) + data[8 + length:])
    return out


# -- served values ---------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_hits_are_the_encoders_outputs_bit_for_bit(tiny, banks, dtype, monkeypatch):
    student, bundle = tiny
    ids = entry_ids()
    with load(bundle) as plain:
        recorded, recorded_mask = plain.infer(ids)  # what the build ran: one batch of every entry
    expected = recorded.astype(np.float16).astype(np.float32) if dtype == "float16" else recorded
    with load(bundle, bank=banks[dtype]) as runner:
        monkeypatch.setattr(runner, "_infer", lambda _: pytest.fail("a bank hit must not run the model"))
        served = runner.encode(PROMPTS)
        assert runner._tokenizer is None  # exact texts: not even tokenized
    rows = [0, 0, 1, 2, 3, 4, 5]
    np.testing.assert_array_equal(served.memory, expected[rows])
    np.testing.assert_array_equal(served.mask, recorded_mask[rows])
    np.testing.assert_array_equal(served.input_ids, ids[rows])
    assert served.memory.dtype == np.float32 and served.truncated == 1
    with torch.no_grad():
        reference = student(torch.from_numpy(ids))[0].numpy()
    np.testing.assert_allclose(served.memory, reference[rows], atol=1e-4 if dtype == "float32" else 2e-2)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_all_hit_answers_are_read_only_and_one_float32_hit_is_a_view_of_the_file(tiny, banks, dtype):
    """A hit must not be a way to change the bank (for itself or the next caller); a float32 one-prompt hit
    shares the mapped file's memory (no copy), and the SAM3 adapters still get writable tensors from it."""
    from edgeseg.integrations.meta_sam3 import to_meta

    with load(tiny[1], bank=banks[dtype]) as runner:
        one, batch = runner.encode("forklift"), runner.encode(["pallet", "a dog"])
        for array in (one.input_ids, one.mask, one.memory, batch.input_ids, batch.mask, batch.memory):
            assert not array.flags.writeable
            with pytest.raises(ValueError, match="read-only"):
                array[...] = 0
        assert np.shares_memory(one.memory, runner.bank.memory) == (dtype == "float32")
        again = runner.encode("forklift")
        np.testing.assert_array_equal(again.memory, one.memory)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # torch warns when it is handed memory it may not write
            mask, memory = to_meta(one)
        memory[0, 0, 0] = 123.0  # the adapter's tensor is its own
        assert again.memory[0, 0, 0] != 123.0 and memory.shape == (16, 1, one.memory.shape[-1])


def test_mixed_batches_keep_order(tiny, banks, monkeypatch):
    bundle = tiny[1]
    prompts = [UNKNOWN[0], "a dog", "A DOG  ", UNKNOWN[1], "pallet", UNKNOWN[0], "a player in white " * 7]
    with load(bundle) as plain:
        want = plain.encode(prompts)
    with load(bundle, bank=banks["float32"]) as runner:
        calls = []
        infer = runner._infer
        monkeypatch.setattr(runner, "_infer", lambda ids: calls.append(len(ids)) or infer(ids))
        got = runner.encode(prompts, batch_size=2)
    assert calls == [2, 1]  # only the three unknown prompts ran, in batches of 2
    np.testing.assert_array_equal(got.input_ids, want.input_ids)
    np.testing.assert_array_equal(got.mask, want.mask)
    np.testing.assert_allclose(got.memory, want.memory, atol=1e-5)
    bank = open_bank(banks["float32"])
    for row in (1, 2, 4, 6):  # by text, by ids ("A DOG  "), by text, by ids (another truncated text)
        np.testing.assert_array_equal(got.memory[row], bank.take(bank.find_ids(got.input_ids[row:row + 1]))[0][0])
    assert got.truncated == want.truncated == 1


def test_bank_only_bundle_serves_without_a_model(banks, tmp_path):
    with load(banks["bankonly"]) as runner:
        assert isinstance(runner, BankRunner) and runner.manifest["backend"] == "bank"
        got = runner.encode(PROMPTS)
        with pytest.raises(EdgesegError, match=r"'forklfit' is not in the bank .*closest known prompts: 'forklift'"):
            runner.encode(["a dog", "forklfit"])
    np.testing.assert_array_equal(got.memory, open_bank(banks["float16"]).take([0, 0, 1, 2, 3, 4, 5])[0])
    assert set(read_manifest(banks["bankonly"])["files"]) == {BANK_FILE, "bpe_vocab.txt.gz"}
    script = ("import sys; from edgeseg.runtime import load; r = load(sys.argv[1]); r.encode(['forklift', 'pallet']); "
              "print(sorted(m for m in ('onnxruntime', 'torch') if m in sys.modules), r._tokenizer is None)")
    out = subprocess.run([sys.executable, "-c", script, str(banks["bankonly"])], capture_output=True, text=True,
                         check=True).stdout
    assert out.split() == ["[]", "True"]


def test_edit_distance_and_closest_prompts(banks):
    assert edit_distance("kitten", "sitting") == 3
    assert edit_distance("", "abc") == edit_distance("abc", "") == 3
    assert edit_distance("pallet", "pallet") == 0
    bank = open_bank(banks["float32"])
    assert bank.closest("  PALLETS ", 1) == ["pallet"]
    assert bank.closest("forklfit", 2) == ["forklift", "pallet"]  # 2 and 6 edits: hand-counted


def test_the_safetensors_package_reads_a_bank(banks):
    from safetensors import safe_open
    from safetensors.numpy import load_file

    bank = open_bank(banks["float16"])
    arrays = load_file(str(banks["float16"]))
    np.testing.assert_array_equal(arrays["memory"], bank.memory)
    np.testing.assert_array_equal(arrays["input_ids"], bank.ids)
    assert bytes(arrays["text_bytes"]).decode().startswith("a dogA Dogforklift")
    with safe_open(str(banks["float16"]), framework="numpy") as fh:
        assert fh.metadata()["format"] == "edgeseg-bank" and fh.metadata()["dtype"] == "float16"


# -- stale and broken banks ------------------------------------------------------------------------
def test_a_bank_of_another_bundle_is_refused(tiny, banks, foreign, tmp_path):
    other = foreign[0]
    with pytest.raises(EdgesegError, match=r"built for another bundle: its model \(sha256\)"):
        load(other, bank=banks["float32"])
    with pytest.raises(EdgesegError, match=r"built for another bundle: its model \(sha256\)"):
        load(tiny[1], bank=foreign[1])
    short = tmp_path / "ctx8"
    export_bundle(tiny_student(S0_BLOCKS, context_length=8, seed=0), short, REF_PROMPTS, dict(SOURCE))
    with pytest.raises(EdgesegError, match=r"its context length is 16, bundle .*ctx8 has 8"):
        load(short, bank=banks["float32"])
    vocab = tmp_path / "vocab"  # the same model with another vocabulary file
    shutil.copytree(tiny[1], vocab)
    with gzip.open(vocab / "bpe_vocab.txt.gz", "rt", encoding="utf-8") as fh:
        text = fh.read()
    with gzip.open(vocab / "bpe_vocab.txt.gz", "wt", encoding="utf-8") as fh:
        fh.write(text.replace("\n", " (edited)\n", 1))
    finalize(vocab, inherited(read_manifest(vocab)))
    with pytest.raises(EdgesegError, match=r"its vocabulary \(sha256\)"):
        load(vocab, bank=banks["float32"])
    with pytest.raises(EdgesegError, match="built for another bundle: its model"):
        load(other, bank=banks["bankonly"] / BANK_FILE)


@pytest.mark.parametrize("case, needle", [
    ("cut-1", "truncated"), ("cut-7", "truncated or not a bank"), ("cut-header", "truncated or not a bank"),
    ("cut-data", "truncated"), ("trailing", "trailing bytes"), ("header-length", "truncated or not a bank"),
    ("not-json", "corrupted header"), ("entries", "lying header"), ("offsets", "lying header"),
    ("dtype", "corrupted header"), ("version", "bank format version 2"), ("data", "does not match data_sha256"),
    ("ids", "outside the vocabulary"),
])
def test_broken_banks_are_refused(banks, tmp_path, case, needle):
    src = banks["float32"]
    data = src.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    path = tmp_path / "bad.safetensors"
    edits = {
        "cut-1": lambda: data[:-1], "cut-7": lambda: data[:7], "cut-header": lambda: data[:8 + length // 2],
        "cut-data": lambda: data[:8 + length + 100], "trailing": lambda: data + b"\0",
        "header-length": lambda: struct.pack("<Q", len(data)) + data[8:],
        "not-json": lambda: data[:8] + b"{" * length + data[8 + length:],
        "data": lambda: data[:-50] + bytes([data[-50] ^ 1]) + data[-49:],
    }
    header_edits = {
        "entries": lambda h: h["__metadata__"].update(entries="5"),
        "offsets": lambda h: h["memory"].update(data_offsets=[h["memory"]["data_offsets"][0] + 8,
                                                              h["memory"]["data_offsets"][1]]),
        "dtype": lambda h: h["mask"].update(dtype="U8"),
        "version": lambda h: h["__metadata__"].update(format_version="2"),
    }
    if case in edits:
        path.write_bytes(edits[case]())
    elif case in header_edits:
        rewrite_header(src, path, header_edits[case])
    else:  # a token id past the vocabulary, with data_sha256 recomputed so that only the content check sees it
        start = 8 + length
        raw = bytearray(data)
        raw[start:start + 8] = struct.pack("<q", 10**6)
        path.write_bytes(bytes(raw))
        rewrite_header(path, path, lambda h: h["__metadata__"].update(
            data_sha256=hashlib.sha256(bytes(raw[start:])).hexdigest()))
    with pytest.raises(EdgesegError, match=needle):
        open_bank(path)


def test_a_forged_binding_is_caught_by_recomputing(tiny, banks, foreign, tmp_path):
    """A bank of another model whose header claims this bundle loads (the header is all it can check) but
    ``bank verify --bundle --recompute`` runs the bundle again and refuses it."""
    claim = bundle_identity(read_manifest(tiny[1]))["model_sha256"]
    assert open_bank(foreign[1]).header["model_sha256"] != claim
    forged = rewrite_header(foreign[1], tmp_path / "forged.safetensors",
                            lambda h: h["__metadata__"].update(model_sha256=claim))
    load(tiny[1], bank=forged).deactivate()
    assert main(["bank", "verify", str(banks["float32"]), "--bundle", str(tiny[1])]) == 0
    assert main(["bank", "verify", str(forged), "--bundle", str(tiny[1])]) == 2


# -- command line ----------------------------------------------------------------------------------
def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_cli_build_info_verify_encode(tiny, banks, tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS + UNKNOWN[:1]) + "\n", encoding="utf-8")
    bank = tmp_path / "cli.bank.safetensors"
    assert main(["bank", "build", "--bundle", str(tiny[1]), "--prompts", str(prompts), "--out", str(bank)]) == 0
    assert "bank of 8 prompt(s) (7 distinct token-id rows, float32" in capsys.readouterr().err
    assert main(["bank", "info", str(bank), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["prompts"] == 8 and info["entries"] == 7 and info["bytes"] == bank.stat().st_size
    assert {k: str(info[k]) for k in bundle_identity(read_manifest(tiny[1]))} == bundle_identity(
        read_manifest(tiny[1]))
    assert main(["bank", "verify", str(bank), "--bundle", str(tiny[1]), "--recompute", "3"]) == 0
    assert "recomputed 7 entries: 7 bit-identical" in capsys.readouterr().err  # the build's one batch
    for args in ([], ["--bank", str(bank)]):
        out = tmp_path / f"out{len(args)}.npz"
        assert main(["encode", "--bundle", str(tiny[1]), *args, "--prompts", str(prompts), "--out", str(out)]) == 0
    with np.load(tmp_path / "out0.npz") as a, np.load(tmp_path / "out2.npz") as b:
        np.testing.assert_array_equal(a["input_ids"], b["input_ids"])
        np.testing.assert_allclose(a["memory"], b["memory"], atol=1e-5)


@pytest.mark.parametrize("case, needle", [
    ("empty", "holds no prompts"), ("latin1", "not UTF-8"), ("bank-dir", "is a directory, not a bank file"),
    ("other-bundle", "built for another bundle"), ("corrupted", "corrupted header"),
    ("out-dir", "is a directory: give a bank file name"), ("bank-encoder", "--bank applies to --bundle"),
    ("unknown", "is not in the bank of bank-only bundle"),
])
def test_cli_bad_input_is_one_line_exit_2(tiny, banks, foreign, tmp_path, capsys, case, needle):
    good = tmp_path / "good.txt"
    good.write_text("a dog\n", encoding="utf-8")
    (tmp_path / "empty.txt").write_text("\n \n", encoding="utf-8")
    (tmp_path / "latin1.txt").write_bytes("caf\u00e9\n".encode("latin-1"))
    corrupted = tmp_path / "corrupted.safetensors"
    data = banks["float32"].read_bytes()
    corrupted.write_bytes(data[:8] + b"#" + data[9:])
    out = tmp_path / "out" / "result.npz"
    out.parent.mkdir()
    build = ["bank", "build", "--bundle", str(tiny[1]), "--out", str(out)]
    encode = ["encode", "--bundle", str(tiny[1]), "--prompts", str(good), "--out", str(out)]
    args = {
        "empty": build + ["--prompts", str(tmp_path / "empty.txt")],
        "latin1": build + ["--prompts", str(tmp_path / "latin1.txt")],
        "bank-dir": encode + ["--bank", str(banks["bankonly"])],
        "other-bundle": encode + ["--bank", str(foreign[1])],
        "corrupted": encode + ["--bank", str(corrupted)],
        "out-dir": ["bank", "build", "--bundle", str(tiny[1]), "--prompts", str(good), "--out", str(out.parent)],
        "bank-encoder": ["encode", "--encoder", "mobileclip-s0", "--bank", str(banks["float32"]), "--prompts",
                         str(good), "--out", str(out)],
        "unknown": ["encode", "--bundle", str(banks["bankonly"]), "--prompts", str(tmp_path / "unknown.txt"),
                    "--out", str(out)],
    }[case]
    (tmp_path / "unknown.txt").write_text("forklfit\n", encoding="utf-8")
    before = sorted(p.name for p in tmp_path.rglob("*"))
    assert main(args) == 2
    line = _one_line(capsys)
    assert line.startswith("edgeseg: error: ") and needle in line, line
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # nothing written, no temporary left


# -- the C++ runtime reads the same banks ----------------------------------------------------------
def test_python_and_cpp_serve_identical_values(tiny, banks, tmp_path):
    from test_engines import CLI, CppRuntime, require_build

    require_build()
    prompts = [*PROMPTS, "A DOG  ", UNKNOWN[0]]  # exact texts, one found by its ids, one the model runs
    for dtype in ("float32", "float16"):
        with load(tiny[1], bank=banks[dtype]) as runner:
            want = runner.encode(prompts)
        cpp = CppRuntime(tiny[1], bank=banks[dtype])
        ids, mask, memory = cpp.encode(prompts)
        cpp.close()
        np.testing.assert_array_equal(ids, want.input_ids)
        np.testing.assert_array_equal(mask, want.mask)
        np.testing.assert_array_equal(memory[:-1], want.memory[:-1])  # bank rows: bit for bit
        np.testing.assert_allclose(memory[-1], want.memory[-1], atol=1e-5)  # ONNX Runtime on both sides
    with load(banks["bankonly"]) as runner:
        want = runner.encode(prompts[:-1])
    cpp = CppRuntime(banks["bankonly"])
    np.testing.assert_array_equal(cpp.encode(prompts[:-1])[2], want.memory)
    with pytest.raises(RuntimeError) as error:
        cpp.encode(["forklfit"])
    cpp.close()
    close = ", ".join(f"'{t}'" for t in open_bank(banks["float16"]).closest("forklfit"))
    assert f"closest known prompts: {close}" in str(error.value)
    listed = tmp_path / "prompts.txt"
    listed.write_text("\n".join(prompts) + "\n", encoding="utf-8")
    subprocess.run([str(CLI), str(tiny[1]), "--bank", str(banks["float16"]), "--prompts", str(listed), "--out",
                    str(tmp_path / "cpp.npz")], check=True, capture_output=True)
    with load(tiny[1], bank=banks["float16"]) as runner:
        want = runner.encode(prompts)
    with np.load(tmp_path / "cpp.npz") as got:
        np.testing.assert_array_equal(got["memory"][:-1], want.memory[:-1])
        np.testing.assert_array_equal(got["input_ids"], want.input_ids)

