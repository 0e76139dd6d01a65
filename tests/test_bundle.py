"""Bundles (``edgeseg.bundle``): manifest, sha256 verification, atomic writing, reference outputs.

Expected values are computed here independently of the code under test: file hashes with
``hashlib``, the required manifest fields from the contract (issue 4), permissions from the umask.
No torch and no model: small hand-made files stand in for a model.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest
from conftest import HARD_PROMPTS

from edgeseg.bundle import bundle_writer, finalize, load_reference, read_manifest, save_reference, verify_bundle
from edgeseg.errors import EdgesegError

# The contract's required manifest fields (written from the issue, not imported from edgeseg).
REQUIRED_FIELDS = ("format", "format_version", "encoder", "context_length", "precision", "target", "backend",
                   "model", "inputs", "outputs", "tokenizer", "files")
FILES = {
    "model.onnx": bytes(range(256)) * 40,
    "vocab.txt.gz": b"\x1f\x8b not really gzip",
    "reference.npz": b"PK\x03\x04" + b"\x00" * 100,
    "sub/extra.bin": b"nested file",
}


def _fields() -> dict:
    return {
        "encoder": "tiny", "context_length": 16, "precision": "fp32", "target": "onnx", "backend": "onnxruntime",
        "model": "model.onnx",
        "inputs": [{"name": "input_ids", "dtype": "int64", "shape": ["batch", 16]}],
        "outputs": [{"name": "memory", "dtype": "float32", "shape": ["batch", 16, 256]},
                    {"name": "mask", "dtype": "bool", "shape": ["batch", 16]}],
        "tokenizer": {"vocab": "vocab.txt.gz"}, "reference": {"file": "reference.npz"},
    }


def _fill(directory: Path, files: dict[str, bytes] = FILES) -> None:
    for name, data in files.items():
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


@pytest.fixture
def bundle(tmp_path) -> Path:
    directory = tmp_path / "b"
    directory.mkdir()
    _fill(directory)
    finalize(directory, _fields())
    return directory


def _siblings(path: Path) -> list[str]:
    return sorted(p.name for p in path.parent.iterdir() if p.name.startswith(f".{path.name}.tmp"))


def _rewrite_manifest(bundle: Path, **changes) -> None:
    data = json.loads((bundle / "manifest.json").read_text(encoding="utf-8"))
    for key, value in changes.items():
        if value is _DROP:
            del data[key]
        else:
            data[key] = value
    (bundle / "manifest.json").write_text(json.dumps(data), encoding="utf-8")


_DROP = object()


# ---- finalize / verify round trip ----------------------------------------------------------------
def test_finalize_hashes_every_file_and_round_trips(bundle):
    on_disk = json.loads((bundle / "manifest.json").read_text(encoding="utf-8"))
    expected_files = {name: {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
                      for name, data in FILES.items()}
    assert on_disk["files"] == expected_files  # manifest.json itself is not listed
    assert on_disk["format"] == "edgeseg-bundle" and on_disk["format_version"] == 1
    created = dt.datetime.fromisoformat(on_disk["created"])
    assert created.tzinfo is not None
    assert abs((dt.datetime.now(dt.timezone.utc) - created).total_seconds()) < 120
    for key, value in _fields().items():
        assert on_disk[key] == value
    assert verify_bundle(bundle) == on_disk
    assert read_manifest(bundle) == on_disk


def test_finalize_refuses_a_manifest_without_required_fields(tmp_path):
    _fill(tmp_path)
    fields = _fields()
    del fields["backend"]
    with pytest.raises((ValueError, EdgesegError), match="backend"):
        finalize(tmp_path, fields)
    assert not (tmp_path / "manifest.json").exists()


# ---- verification failures ----------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(FILES))
def test_a_flipped_byte_in_any_listed_file_is_refused(bundle, name):
    path = bundle / name
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01  # same size: only the hash can tell
    path.write_bytes(bytes(data))
    with pytest.raises(EdgesegError, match="sha256") as info:
        verify_bundle(bundle)
    assert name in str(info.value)


def test_a_grown_file_is_refused(bundle):
    with open(bundle / "vocab.txt.gz", "ab") as fh:
        fh.write(b"\x00")
    with pytest.raises(EdgesegError, match="vocab.txt.gz"):
        verify_bundle(bundle)


@pytest.mark.parametrize("name", ["model.onnx", "sub/extra.bin"])
def test_a_deleted_file_is_refused(bundle, name):
    (bundle / name).unlink()
    with pytest.raises(EdgesegError, match="missing") as info:
        verify_bundle(bundle)
    assert name in str(info.value)


def test_a_model_the_manifest_does_not_list_is_refused(bundle):
    (bundle / "other.onnx").write_bytes(b"x")
    _rewrite_manifest(bundle, model="other.onnx")
    with pytest.raises(EdgesegError, match="other.onnx"):
        verify_bundle(bundle)


@pytest.mark.parametrize("version", [2, 0, "1", None, _DROP])
def test_wrong_or_missing_format_version_is_refused(bundle, version):
    _rewrite_manifest(bundle, format_version=version)
    with pytest.raises(EdgesegError, match="version"):
        read_manifest(bundle)
    with pytest.raises(EdgesegError):
        verify_bundle(bundle)


@pytest.mark.parametrize("field", [f for f in REQUIRED_FIELDS if f not in ("format", "format_version")])
def test_a_missing_required_field_is_refused(bundle, field):
    _rewrite_manifest(bundle, **{field: _DROP})
    with pytest.raises(EdgesegError, match=field):
        verify_bundle(bundle)


@pytest.mark.parametrize("text", [b"{not json", b"", b"\xff\xfe\x00garbage", b"[1, 2]", b'"a string"', b"null",
                                  b'{"format": "something-else", "format_version": 1}'])
def test_invalid_manifest_json_is_refused(bundle, text):
    (bundle / "manifest.json").write_bytes(text)
    with pytest.raises(EdgesegError, match="manifest|JSON"):
        verify_bundle(bundle)


@pytest.mark.parametrize("files", [[], None, {"model.onnx": "0" * 64}])
def test_a_malformed_files_table_is_refused(bundle, files):
    _rewrite_manifest(bundle, files=files)
    with pytest.raises(EdgesegError):
        verify_bundle(bundle)


def test_a_directory_without_manifest_is_refused(tmp_path):
    _fill(tmp_path)
    with pytest.raises(EdgesegError, match="manifest.json"):
        verify_bundle(tmp_path)


@pytest.mark.parametrize("kind", ["missing", "file"])
def test_a_missing_path_or_a_file_is_refused(tmp_path, kind):
    path = tmp_path / "nothing"
    if kind == "file":
        path.write_text("{}")
    with pytest.raises(EdgesegError, match="not a directory|does not exist"):
        verify_bundle(path)


# ---- atomic writing ------------------------------------------------------------------------------
class _Boom(Exception):
    pass


@pytest.mark.parametrize("error", [_Boom, KeyboardInterrupt])
def test_an_exception_inside_the_writer_leaves_nothing(tmp_path, error):
    out = tmp_path / "out"
    seen = []
    with pytest.raises(error):
        with bundle_writer(out) as tmp:
            seen.append(tmp)
            assert tmp.parent == tmp_path and tmp != out
            _fill(tmp)
            finalize(tmp, _fields())
            raise error()
    assert not out.exists()
    assert not seen[0].exists()
    assert list(tmp_path.iterdir()) == []


def test_writer_renames_a_finished_bundle_into_place(tmp_path):
    out = tmp_path / "out"
    with bundle_writer(out) as tmp:
        assert not out.exists()  # nothing visible until the block ends
        _fill(tmp)
        finalize(tmp, _fields())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    verify_bundle(out)


def test_writer_refuses_a_non_empty_directory_that_is_not_a_bundle(tmp_path):
    out = tmp_path / "precious"
    out.mkdir()
    (out / "thesis.tex").write_text("do not delete")
    with pytest.raises(EdgesegError, match="not a bundle"):
        with bundle_writer(out) as tmp:
            _fill(tmp)
            finalize(tmp, _fields())
    assert sorted(p.name for p in out.iterdir()) == ["thesis.tex"]
    assert (out / "thesis.tex").read_text() == "do not delete"
    assert _siblings(out) == []


def test_writer_refuses_an_existing_regular_file(tmp_path):
    out = tmp_path / "file.txt"
    out.write_text("keep me")
    with pytest.raises(EdgesegError):
        with bundle_writer(out) as tmp:
            _fill(tmp)
            finalize(tmp, _fields())
    assert out.read_text() == "keep me"
    assert _siblings(out) == []


def test_writer_accepts_an_existing_empty_directory(tmp_path):
    out = tmp_path / "empty"
    out.mkdir()
    with bundle_writer(out) as tmp:
        _fill(tmp)
        finalize(tmp, _fields())
    verify_bundle(out)
    assert _siblings(out) == []


def test_writer_replaces_an_existing_bundle(bundle):
    (bundle / "stale.txt").write_text("left over from the old bundle")  # not listed, must go
    new_files = {"model.onnx": b"new model", "vocab.txt.gz": b"new vocab"}
    fields = {k: v for k, v in _fields().items() if k != "reference"}  # no reference.npz in the new one
    with bundle_writer(bundle) as tmp:
        _fill(tmp, new_files)
        finalize(tmp, fields)
    manifest = verify_bundle(bundle)
    assert sorted(manifest["files"]) == sorted(new_files)
    assert sorted(p.name for p in bundle.iterdir()) == sorted([*new_files, "manifest.json"])
    assert (bundle / "model.onnx").read_bytes() == b"new model"
    assert _siblings(bundle) == []


def test_a_failed_rewrite_keeps_the_old_bundle(bundle):
    before = {p.relative_to(bundle).as_posix(): p.read_bytes() for p in bundle.rglob("*") if p.is_file()}
    with pytest.raises(_Boom):
        with bundle_writer(bundle) as tmp:
            _fill(tmp, {"model.onnx": b"half written"})
            raise _Boom()
    after = {p.relative_to(bundle).as_posix(): p.read_bytes() for p in bundle.rglob("*") if p.is_file()}
    assert after == before
    verify_bundle(bundle)
    assert _siblings(bundle) == []


def test_writer_fails_early_when_the_parent_folder_is_missing(tmp_path):
    with pytest.raises(EdgesegError, match="does not exist"):
        with bundle_writer(tmp_path / "no" / "such" / "out"):
            pytest.fail("the block must not run")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o002])
def test_written_bundle_respects_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        out = tmp_path / "out"
        with bundle_writer(out) as tmp:
            _fill(tmp)
            finalize(tmp, _fields())
    finally:
        os.umask(old)
    assert stat.S_IMODE(out.stat().st_mode) == 0o777 & ~umask  # not mkdtemp's private 0700
    assert stat.S_IMODE((out / "manifest.json").stat().st_mode) == 0o666 & ~umask
    assert stat.S_IMODE((out / "model.onnx").stat().st_mode) == 0o666 & ~umask


# ---- reference outputs -----------------------------------------------------------------------------
def test_reference_round_trip_keeps_values_and_dtypes(tmp_path):
    prompts = ["a dog", *HARD_PROMPTS[:8], ""]
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 49408, size=(len(prompts), 16), dtype=np.int64)
    memory = rng.standard_normal((len(prompts), 16, 256))  # float64 in, float32 stored
    mask = ids == 0
    mask[:, 10:] = True
    save_reference(tmp_path / "reference.npz", prompts, ids, memory, mask)
    _fill(tmp_path, {"model.onnx": b"m", "vocab.txt.gz": b"v"})
    manifest = finalize(tmp_path, _fields())
    assert "reference.npz" in manifest["files"]
    ref = load_reference(tmp_path)
    assert sorted(ref) == ["input_ids", "mask", "memory", "prompts"]
    assert ref["prompts"].tolist() == prompts
    assert ref["input_ids"].dtype == np.int64 and np.array_equal(ref["input_ids"], ids)
    assert ref["mask"].dtype == np.bool_ and np.array_equal(ref["mask"], mask)
    assert ref["memory"].dtype == np.float32
    assert np.array_equal(ref["memory"][~mask], memory.astype(np.float32)[~mask])
    assert not ref["memory"][mask].any()  # padding rows are stored as zeros


def test_load_reference_refuses_a_bundle_without_one(bundle):
    _rewrite_manifest(bundle, reference=_DROP)
    with pytest.raises(EdgesegError, match="reference"):
        load_reference(bundle)


def test_externalized_onnx_weights_are_page_aligned_and_load(tmp_path):
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from edgeseg.bundle import PAGE, externalize_onnx

    rng = np.random.default_rng(0)
    weights = [rng.standard_normal(shape).astype(np.float32) for shape in [(7, 5), (5, 300), (300, 3)]]
    nodes = [helper.make_node("MatMul", ["x" if i == 0 else f"h{i}", f"w{i}"], [f"h{i + 1}" if i < 2 else "y"])
             for i in range(3)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 7])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])],
                              [numpy_helper.from_array(w, f"w{i}") for i, w in enumerate(weights)])
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    assert externalize_onnx(path, threshold=200) == "m.onnx.data"
    assert externalize_onnx(path) is None  # already external: left alone
    stored = onnx.load(str(path), load_external_data=False)
    offsets = {t.name: int({e.key: e.value for e in t.external_data}.get("offset", -1))
               for t in stored.graph.initializer if t.external_data}
    assert set(offsets) == {"w1", "w2"}  # w0 (140 bytes) is under the threshold: stays inline
    assert all(offset % PAGE == 0 for offset in offsets.values())
    x = rng.standard_normal((2, 7)).astype(np.float32)
    (y,) = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    np.testing.assert_allclose(y, x @ weights[0] @ weights[1] @ weights[2], rtol=1e-4, atol=1e-4)


# ---- the schema: jsonschema and the built-in validator (the Jetson kit without jsonschema) agree ----------
SCHEMA_CASES = {
    "valid": lambda m: None,
    "context string": lambda m: m.update(context_length="16"),
    "context bool": lambda m: m.update(context_length=True),
    "context float": lambda m: m.update(context_length=16.0),
    "context range": lambda m: m.update(context_length=513),
    "precision": lambda m: m.update(precision="int4"),
    "tokenizer null": lambda m: m.update(tokenizer=None),
    "vocab type": lambda m: m["tokenizer"].update(vocab=["a"]),
    "sot range": lambda m: m["tokenizer"].update(sot_id=70000),
    "files entry extra": lambda m: m["files"]["model.onnx"].update(extra=1),
    "files entry sha": lambda m: m["files"]["model.onnx"].update(sha256="0" * 63),
    "files entry bytes bool": lambda m: m["files"]["model.onnx"].update(bytes=False),
    "inputs empty": lambda m: m.update(inputs=[]),
    "shape item": lambda m: m["outputs"][0].update(shape=["batch", 16, -1]),
    "dtype": lambda m: m["outputs"][1].update(dtype="uint8"),
    "engine batch": lambda m: m.update(engine={"max_batch": 0}),
    "gate": lambda m: m.update(fidelity={"gate": {"mean_cosine": "high"}}),
    "required": lambda m: m.pop("backend"),
    "reference null": lambda m: m.update(reference=None),
}


@pytest.mark.parametrize("case", sorted(SCHEMA_CASES))
def test_both_validators_report_the_same_violation(bundle, case):
    from edgeseg.bundlecheck import schema_violation

    manifest = json.loads((bundle / "manifest.json").read_text(encoding="utf-8"))
    SCHEMA_CASES[case](manifest)
    with_jsonschema = schema_violation(manifest, use_jsonschema=True)
    built_in = schema_violation(manifest, use_jsonschema=False)
    if case in ("valid", "reference null"):
        assert with_jsonschema is None and built_in is None
    else:
        assert with_jsonschema is not None and built_in is not None
        assert with_jsonschema[:2] == built_in[:2]  # the same field and the same rule
