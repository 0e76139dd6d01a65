"""The C++ runtime (``engines/``, built by ``make cpp`` into build/cpp) against the Python pipeline.

* Tokenizer parity: the C++ tokenizer (called through the C API with ctypes) gives the Python tokenizer's
  ids on every shipped prompt (edgeseg/data/prompts/, all splits) and on conftest's HARD_PROMPTS. ftfy (mojibake repair,
  NFC, quote uncurling) has no C++ equivalent: prompts that ftfy changes are listed and must match the
  Python tokenizer with ftfy switched off.
* ORT backend parity: C++ outputs equal ``edgeseg.runtime.load(dir).encode`` (max abs diff <= 1e-5) on an
  exported FP32 bundle (tiny and full-size mobileclip-s0, random/synthetic weights) and an INT8 bundle.
* ``edgeseg-encode``: its .npz/.npy equal the Python runtime's outputs; bad input is one stderr line, exit 2.

Oracles: the Python tokenizer/runtime (themselves checked against Meta's code and torch in
test_tokenizer.py / test_runtime.py). Without a C++ build these tests skip locally and fail under CI=true.
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import subprocess
import sys
import unicodedata
from pathlib import Path

import ftfy
import numpy as np
import pytest
from conftest import HARD_PROMPTS, calibration_prompts
from test_export import cli_exported_s0, tiny_exported_bundle

from edgeseg.runtime import load
from edgeseg.tokenizer import Tokenizer, default_vocab_path

REPO = Path(__file__).resolve().parents[1]
BUILD = Path(os.environ.get("EDGESEG_CPP_BUILD", REPO / "build" / "cpp"))
LIBRARY = BUILD / "engines" / "libedgeseg_runtime.so"
CLI = BUILD / "engines" / "edgeseg-encode"
TOL = 1e-5
LONG = 128  # context length for tokenizer parity: long enough that nothing is cut in the shipped prompt sets

PROMPTS = ["a dog", "wow!$ sign", "", "the leftmost child wearing blue vest", "a player in white " * 6,
           "caf\u00e9 au lait", HARD_PROMPTS[0], HARD_PROMPTS[7], HARD_PROMPTS[9], "UPPER lower MiXeD"]


def require_build() -> None:
    if LIBRARY.is_file() and CLI.is_file():
        return
    message = f"the C++ runtime is not built ({LIBRARY} missing): run `make cpp`"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


class Result(ctypes.Structure):
    _fields_ = [("batch", ctypes.c_size_t), ("context_length", ctypes.c_int64), ("dim", ctypes.c_int64),
                ("ids", ctypes.POINTER(ctypes.c_int64)), ("mask", ctypes.POINTER(ctypes.c_uint8)),
                ("memory", ctypes.POINTER(ctypes.c_float)), ("truncated", ctypes.c_size_t)]


class Options(ctypes.Structure):
    _fields_ = [("struct_size", ctypes.c_uint32), ("onnxruntime_library", ctypes.c_char_p),
                ("intra_op_threads", ctypes.c_int32), ("verify_hashes", ctypes.c_int32), ("device", ctypes.c_int32),
                ("tokenizer_only", ctypes.c_int32), ("bank_path", ctypes.c_char_p)]


class CppRuntime:
    """The C API through ctypes (the same calls an app makes)."""

    def __init__(self, bundle: Path, tokenizer_only: bool = False, bank: Path | None = None):
        lib = ctypes.CDLL(str(LIBRARY))
        lib.edgeseg_last_error.restype = ctypes.c_char_p
        lib.edgeseg_context_length.restype = ctypes.c_int64
        lib.edgeseg_encode_alloc.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_char_p), ctypes.c_size_t,
                                             ctypes.POINTER(ctypes.POINTER(Result))]
        lib.edgeseg_tokenize.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_char_p), ctypes.c_size_t,
                                         ctypes.POINTER(ctypes.c_int64), ctypes.POINTER(ctypes.c_int64)]
        lib.edgeseg_create.argtypes = [ctypes.c_char_p, ctypes.POINTER(Options), ctypes.POINTER(ctypes.c_void_p)]
        lib.edgeseg_destroy.argtypes = [ctypes.c_void_p]
        lib.edgeseg_context_length.argtypes = [ctypes.c_void_p]
        lib.edgeseg_result_free.argtypes = [ctypes.POINTER(Result)]
        self.lib = lib
        options = Options()
        lib.edgeseg_options_init(ctypes.byref(options))
        options.tokenizer_only = int(tokenizer_only)
        options.bank_path = str(bank).encode() if bank is not None else None
        self.handle = ctypes.c_void_p()
        if lib.edgeseg_create(str(bundle).encode(), ctypes.byref(options), ctypes.byref(self.handle)) != 0:
            raise RuntimeError(lib.edgeseg_last_error().decode())
        self.length = lib.edgeseg_context_length(self.handle)

    def close(self) -> None:
        self.lib.edgeseg_destroy(self.handle)

    @staticmethod
    def _prompts(prompts: list[str]):
        return (ctypes.c_char_p * len(prompts))(*[p.encode("utf-8") for p in prompts])

    def tokenize(self, prompts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        ids = np.zeros((len(prompts), self.length), np.int64)
        lengths = np.zeros(len(prompts), np.int64)
        status = self.lib.edgeseg_tokenize(self.handle, self._prompts(prompts), len(prompts),
                                           ids.ctypes.data_as(ctypes.POINTER(ctypes.c_int64)),
                                           lengths.ctypes.data_as(ctypes.POINTER(ctypes.c_int64)))
        if status != 0:
            raise RuntimeError(self.lib.edgeseg_last_error().decode())
        return ids, lengths

    def encode(self, prompts: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        out = ctypes.POINTER(Result)()
        if self.lib.edgeseg_encode_alloc(self.handle, self._prompts(prompts), len(prompts), ctypes.byref(out)) != 0:
            raise RuntimeError(self.lib.edgeseg_last_error().decode())
        r = out.contents
        b, length, d = r.batch, r.context_length, r.dim
        ids = np.ctypeslib.as_array(r.ids, (b, length)).copy()
        mask = np.ctypeslib.as_array(r.mask, (b, length)).astype(bool)
        memory = np.ctypeslib.as_array(r.memory, (b, length, d)).copy()
        self.lib.edgeseg_result_free(out)
        return ids, mask, memory


def tokenizer_bundle(directory: Path, context_length: int) -> Path:
    """A tokenizer-only bundle: the shipped vocabulary and a manifest (enough for tokenizer_only)."""
    from edgeseg.bundle import finalize

    directory.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(default_vocab_path(), directory / "vocab.txt.gz")
    (directory / "model.onnx").write_bytes(b"unused")
    finalize(directory, {
        "encoder": "tokenizer-only", "context_length": context_length, "precision": "fp32", "target": "onnx",
        "backend": "onnxruntime", "model": "model.onnx",
        "inputs": [{"name": "input_ids", "dtype": "int64", "shape": ["batch", context_length]}],
        "outputs": [{"name": "memory", "dtype": "float32", "shape": ["batch", context_length, 256]},
                    {"name": "mask", "dtype": "bool", "shape": ["batch", context_length]}],
        "tokenizer": {"vocab": "vocab.txt.gz", "sot_id": 49406, "eot_id": 49407, "pad_id": 0, "vocab_size": 49408,
                      "cleaning": "sam3-lower", "id_map": None},
    })
    return directory


@pytest.fixture(scope="module")
def cpp_tokenizer(tmp_path_factory):
    require_build()
    runtime = CppRuntime(tokenizer_bundle(tmp_path_factory.mktemp("cpp-tok") / "bundle", LONG), tokenizer_only=True)
    yield runtime
    runtime.close()


def python_ids(prompts: list[str], fix_text: bool = True) -> tuple[np.ndarray, np.ndarray]:
    tokenizer = Tokenizer(default_vocab_path(), LONG)
    if fix_text:
        batch = tokenizer(prompts)
    else:
        original = ftfy.fix_text
        ftfy.fix_text = lambda text, *a, **k: text
        try:
            batch = tokenizer(prompts)
        finally:
            ftfy.fix_text = original
    return batch.ids, batch.lengths


def check_parity(cpp_tokenizer, prompts: list[str], label: str, verbose: bool = True, report=print) -> None:
    """Compare C++ and Python ids; ``report`` prints the counts and the ftfy-changed prompts."""
    ids, lengths = cpp_tokenizer.tokenize(prompts)
    ref_ids, ref_lengths = python_ids(prompts)
    same = (ids == ref_ids).all(axis=1) & (lengths == ref_lengths)
    changed = [i for i, p in enumerate(prompts) if ftfy.fix_text(p) != p]
    report(f"\n{label}: C++ ids == Python ids on {int(same.sum())}/{len(prompts)} prompts; "
          f"ftfy changes {len(changed)} of them")
    differing = [i for i in np.flatnonzero(~same)]
    plain_diffs = [prompts[i] for i in differing if i not in set(changed)]
    assert not plain_diffs, f"C++ and Python tokenizers differ on prompts ftfy does not touch: {plain_diffs[:20]!r}"
    if changed:
        nofix_ids, nofix_lengths = python_ids([prompts[i] for i in changed], fix_text=False)
        for row, i in enumerate(changed):
            equal_ftfy = bool(same[i])
            if verbose:
                report(f"  ftfy changes {prompts[i]!r} -> {ftfy.fix_text(prompts[i])!r}: C++ "
                      f"{'matches' if equal_ftfy else 'differs from'} Python (with ftfy)")
            assert (ids[i] == nofix_ids[row]).all() and lengths[i] == nofix_lengths[row], (
                f"C++ ids differ from Python without ftfy on {prompts[i]!r}")
    if label.startswith("calibration"):
        assert (lengths < LONG).all(), "a calibration prompt was truncated: raise LONG"


def test_tokenizer_parity_on_every_calibration_prompt(cpp_tokenizer, capsys):
    with capsys.disabled():  # the count is part of the "done": show it even under -q
        check_parity(cpp_tokenizer, calibration_prompts(), "edgeseg/data/prompts/ (all splits)")


def test_tokenizer_parity_on_hard_prompts(cpp_tokenizer, capsys):
    with capsys.disabled():
        check_parity(cpp_tokenizer, list(HARD_PROMPTS), "HARD_PROMPTS")


def test_tokenizer_parity_on_synthetic_unicode(cpp_tokenizer):
    # One prompt per block of 64 code points from every plane in use, mixed with letters, digits, entities.
    rng = np.random.default_rng(0)
    prompts = []
    for start in list(range(0x20, 0x3400, 64)) + list(range(0xA000, 0x10000, 256)) + [0x1F300, 0x1F600, 0x20000]:
        # Code points Python's Unicode (14.0) assigns: the regex module and utf8proc (15.0) know newer
        # characters differently, which no tokenizer can reconcile.
        chars = [chr(c) for c in range(start, start + 64) if unicodedata.category(chr(c)) not in ("Cn", "Cs")]
        rng.shuffle(chars)
        prompts.append("A" + "".join(chars[:24]) + " &amp;x " + "".join(chars[24:48]) + " 12'S")
    check_parity(cpp_tokenizer, prompts, "synthetic Unicode blocks", verbose=False)


def test_truncation_matches_python(tmp_path):
    require_build()
    runtime = CppRuntime(tokenizer_bundle(tmp_path / "b16", 16), tokenizer_only=True)
    try:
        prompts = [*PROMPTS, "A Very Long Prompt " * 12]
        ids, lengths = runtime.tokenize(prompts)
    finally:
        runtime.close()
    batch = Tokenizer(default_vocab_path(), 16)(prompts)
    np.testing.assert_array_equal(ids, batch.ids)
    np.testing.assert_array_equal(lengths, batch.lengths)


# ---- ORT backend vs the Python runtime --------------------------------------------------------------------
def assert_same_outputs(bundle: Path, prompts: list[str]) -> float:
    require_build()
    runtime = CppRuntime(bundle)
    try:
        ids, mask, memory = runtime.encode(prompts)
    finally:
        runtime.close()
    with load(bundle) as runner:
        ref = runner.encode(prompts)
    np.testing.assert_array_equal(ids, ref.input_ids)
    np.testing.assert_array_equal(mask, ref.mask)
    diff = float(np.abs(memory - ref.memory).max())
    assert diff <= TOL, f"C++ vs Python runtime max abs diff {diff:.3g} > {TOL}"
    return diff


def test_ort_backend_matches_python_runtime_tiny(tmp_path_factory):
    bundle = tiny_exported_bundle(tmp_path_factory)[1]
    diff = assert_same_outputs(bundle, PROMPTS + calibration_prompts()[:64])
    print(f"\ntiny FP32 bundle (random/synthetic weights): C++ vs Python max abs diff {diff:.2e}")


def test_ort_backend_matches_python_runtime_int8(tmp_path_factory):
    from edgeseg.quantize import Gate, quantize_bundle

    require_build()
    src = tiny_exported_bundle(tmp_path_factory)[1]
    out = tmp_path_factory.mktemp("cpp-int8") / "int8"
    everything = calibration_prompts()
    manifest = quantize_bundle(src, out, everything[::800][:48], everything[5::900][:48], gate=Gate(0.0, 0.0))
    assert manifest["precision"] == "int8"
    diff = assert_same_outputs(out, PROMPTS + everything[:32])
    print(f"\ntiny INT8 bundle (random/synthetic weights): C++ vs Python max abs diff {diff:.2e}")


def transformers_bundles(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny S0-like student with transformers padding semantics (pad 49407, masked attention): its FP32
    bundle and a pruned-vocabulary INT8 one (the EOT the graph compares with and the pad id renumbered)."""
    from test_encoders_mobileclip import S0_BLOCKS, tiny_student

    from edgeseg.encoders.base import Padding
    from edgeseg.export import export_bundle
    from edgeseg.quantize import Gate, quantize_bundle

    root = tmp_path_factory.mktemp("cpp-transformers")
    student = tiny_student(S0_BLOCKS, seed=2)
    student.padding = Padding.of("transformers")
    export_bundle(student, root / "fp32", PROMPTS, {"checkpoint": None, "checkpoint_sha256": "random"})
    everything = calibration_prompts()
    quantize_bundle(root / "fp32", root / "pruned", everything[::800][:48], everything[5::900][:48],
                    gate=Gate(0.0, 0.0), prune_prompts=everything[::40], prune_name="test")
    return root / "fp32", root / "pruned"


def test_ort_backend_matches_python_runtime_transformers_semantics(tmp_path_factory):
    """The C++ tokenizer pads with the manifest's pad id (49407, or the pruned vocabulary's EOT) and the
    graph's in-graph mask ("after the first EOT") comes back as the Python runtime's."""
    require_build()
    for bundle in transformers_bundles(tmp_path_factory):
        manifest = json.loads((bundle / "manifest.json").read_text())
        assert manifest["semantics"] == "transformers"
        assert manifest["tokenizer"]["pad_id"] == manifest["tokenizer"]["eot_id"]
        diff = assert_same_outputs(bundle, PROMPTS + calibration_prompts()[:32])
        runtime = CppRuntime(bundle)
        try:
            ids, mask, _ = runtime.encode(["a dog", "wow!$ sign"])
        finally:
            runtime.close()
        assert (ids[mask] == manifest["tokenizer"]["pad_id"]).all() and (ids == 0).any() and not mask[ids == 0].any()
        print(f"\ntransformers-semantics {manifest['precision']} bundle (random/synthetic weights): C++ vs Python "
              f"max abs diff {diff:.2e}")


def test_ort_backend_matches_python_runtime_s0(tmp_path_factory):
    rc, stderr, bundle = cli_exported_s0(tmp_path_factory)
    assert rc == 0, stderr
    diff = assert_same_outputs(bundle, PROMPTS + calibration_prompts()[:32])
    print(f"\nmobileclip-s0 FP32 bundle (random/synthetic weights): C++ vs Python max abs diff {diff:.2e}")


# ---- edgeseg-encode -------------------------------------------------------------------------------------
def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(CLI), *args], capture_output=True, text=True, timeout=120)


def test_cli_npz_and_npy_equal_the_python_runtime(tmp_path_factory, tmp_path):
    require_build()
    bundle = tiny_exported_bundle(tmp_path_factory)[1]
    prompts = [p for p in PROMPTS if p.strip()]
    text = "\ufeff" + "\n".join(prompts[:3]) + "\r\n\n  \n" + "\n".join(prompts[3:]) + "\n"
    (tmp_path / "prompts.txt").write_text(text, encoding="utf-8")
    proc = run_cli(str(bundle), "--prompts", str(tmp_path / "prompts.txt"), "--out", str(tmp_path / "out.npz"),
                   "--batch-size", "3")
    assert proc.returncode == 0, proc.stderr
    with load(bundle) as runner:
        ref = runner.encode(prompts)
    with np.load(tmp_path / "out.npz", allow_pickle=False) as data:
        assert sorted(data.files) == ["input_ids", "mask", "memory"]
        assert data["input_ids"].dtype == np.int64 and data["mask"].dtype == bool
        assert data["memory"].dtype == np.float32
        np.testing.assert_array_equal(data["input_ids"], ref.input_ids)
        np.testing.assert_array_equal(data["mask"], ref.mask)
        assert float(np.abs(data["memory"] - ref.memory).max()) <= TOL
    proc = run_cli(str(bundle), "--prompts", str(tmp_path / "prompts.txt"), "--out", str(tmp_path / "out.npy"))
    assert proc.returncode == 0, proc.stderr
    memory = np.load(tmp_path / "out.npy", allow_pickle=False)
    assert memory.shape == ref.memory.shape and float(np.abs(memory - ref.memory).max()) <= TOL


@pytest.mark.parametrize("case, needle", [
    ("missing-bundle", "does not exist"), ("tampered", "does not match its sha256"),
    ("version", "format version 7"), ("no-prompts", "holds no prompts"), ("bad-out", "must end in .npz or .npy"),
    ("not-utf8", "not UTF-8"), ("no-folder", "does not exist or is not writable"),
])
def test_cli_bad_input_is_one_line_exit_2(tmp_path_factory, tmp_path, case, needle):
    require_build()
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_exported_bundle(tmp_path_factory)[1], bundle)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a dog\n", encoding="utf-8")
    out = tmp_path / "out.npz"
    if case == "missing-bundle":
        bundle = tmp_path / "nope"
    elif case == "tampered":
        data = bytearray((bundle / "model.onnx").read_bytes())
        data[len(data) // 2] ^= 0x40
        (bundle / "model.onnx").write_bytes(bytes(data))
    elif case == "version":
        manifest = json.loads((bundle / "manifest.json").read_text(encoding="utf-8"))
        manifest["format_version"] = 7
        (bundle / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    elif case == "no-prompts":
        prompts.write_text("\n  \n", encoding="utf-8")
    elif case == "bad-out":
        out = tmp_path / "out.txt"
    elif case == "not-utf8":
        prompts.write_bytes(b"a dog\ncaf\xe9\n")
    elif case == "no-folder":
        out = tmp_path / "missing" / "out.npz"
    proc = run_cli(str(bundle), "--prompts", str(prompts), "--out", str(out))
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], proc.stderr
    assert not out.exists() and not list(tmp_path.glob("out.npz.tmp*"))


def test_committed_html_entity_table_is_the_generator_output():
    """engines/src/html_entities.inc is data generated from Python's html module; it must not drift."""
    proc = subprocess.run([sys.executable, str(REPO / "engines" / "tools" / "gen_html_entities.py")],
                          capture_output=True, text=True, check=True)
    assert proc.stdout == (REPO / "engines" / "src" / "html_entities.inc").read_text(encoding="utf-8")
