"""The Python runtime (``edgeseg.runtime``, ``edgeseg encode --bundle``): outputs equal torch's, ids equal
Meta's tokenizer's, hashes are checked on load, bad bundles are refused, and torch is never imported.

Oracles: the torch models the bundles were exported from (forward passes here), Meta's
``SimpleTokenizer`` (the ``meta_tokenizer`` fixture of conftest) and ``hashlib``.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import HARD_PROMPTS, calibration_prompts
from test_export import cli_exported_s0, s0_torch_model, tiny_exported_bundle

from edgeseg.cli import main
from edgeseg.errors import EdgesegError
from edgeseg.runtime import Runner, load, runner_class
from edgeseg.runtime.onnxruntime import OnnxRuntimeRunner

REPO = Path(__file__).resolve().parents[1]
PROMPTS = ["a dog", "wow!$ sign", "", "the leftmost child wearing blue vest", "a player in white " * 6,
           "caf\u00e9 au lait", HARD_PROMPTS[9], "UPPER lower MiXeD"]
TOL = 1e-4


def torch_forward(model, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    with torch.no_grad():
        memory, mask = model(torch.from_numpy(ids))
    return memory.numpy(), mask.numpy()


def meta_ids(meta_tokenizer, prompts, length) -> np.ndarray:
    return meta_tokenizer(list(prompts), context_length=length).numpy().astype(np.int64)


def flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x40
    path.write_bytes(bytes(data))


def edit_manifest(bundle: Path, **changes) -> None:
    data = json.loads((bundle / "manifest.json").read_text(encoding="utf-8"))
    data.update(changes)
    (bundle / "manifest.json").write_text(json.dumps(data), encoding="utf-8")


@pytest.fixture(scope="module")
def student(tmp_path_factory):
    return tiny_exported_bundle(tmp_path_factory)[0]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    """A tiny student's bundle (shared with test_export.py: copy it before changing anything)."""
    return tiny_exported_bundle(tmp_path_factory)[1]


@pytest.fixture
def tiny_copy(tiny, tmp_path) -> Path:
    out = tmp_path / "copy"
    shutil.copytree(tiny, out)
    return out


@pytest.fixture(scope="module")
def s0(tmp_path_factory) -> Path:
    rc, stderr, out = cli_exported_s0(tmp_path_factory)
    assert rc == 0, stderr
    return out


@pytest.fixture(scope="module")
def s0_torch():
    return s0_torch_model()


# ---- library -----------------------------------------------------------------------------------------
def test_load_as_context_manager(tiny):
    with load(tiny) as runner:
        assert isinstance(runner, Runner) and isinstance(runner, OnnxRuntimeRunner)
        assert runner.is_active and runner.context_length == 16
        assert runner.encode("a dog").memory.shape == (1, 16, 256)
    assert not runner.is_active
    with pytest.raises(EdgesegError, match="not active"):
        runner.encode(["a dog"])


def test_load_without_activation(tiny):
    runner = load(tiny, activate=False)
    assert not runner.is_active
    with pytest.raises(EdgesegError, match="not active"):
        runner.encode(["a dog"])
    assert runner.activate() is runner and runner.is_active
    assert runner.encode(["a dog"]).mask.shape == (1, 16)
    runner.deactivate()
    assert not runner.is_active


@pytest.mark.parametrize("call", ["infer", "self_check"])
def test_inactive_runner_refuses_infer_and_self_check(tiny, call):
    runner = load(tiny, activate=False)
    with pytest.raises(EdgesegError, match="not active"):
        if call == "infer":
            runner.infer(np.zeros((1, 16), dtype=np.int64))
        else:
            runner.self_check()


def test_encode_equals_torch_and_meta_ids(tiny, student, meta_tokenizer):
    prompts = PROMPTS + calibration_prompts()[::9000]
    seen = []
    with load(tiny, threads=1) as runner:
        result = runner.encode(prompts, batch_size=3, progress=seen.append)
    n = len(prompts)
    assert sum(seen) == n and seen[:2] == [3, 3]
    expected_ids = meta_ids(meta_tokenizer, prompts, 16)
    assert result.input_ids.dtype == np.int64 and np.array_equal(result.input_ids, expected_ids)
    assert result.truncated == sum(len(meta_tokenizer.encode(p)) + 2 > 16 for p in prompts) > 0
    memory, mask = torch_forward(student, expected_ids)
    assert result.memory.dtype == np.float32 and result.memory.shape == (n, 16, 256)
    assert result.mask.dtype == np.bool_ and np.array_equal(result.mask, expected_ids == 0)
    assert np.array_equal(result.mask, mask)
    assert float(np.abs(result.memory - memory).max()) <= TOL


def test_full_size_s0_bundle_equals_torch(s0, s0_torch, meta_tokenizer):
    prompts = calibration_prompts()[::3000] + HARD_PROMPTS
    with load(s0) as runner:
        assert Path(runner.tokenizer.vocab_path).resolve().parent == s0.resolve()  # the bundle's own vocab
        result = runner.encode(prompts)
    expected_ids = meta_ids(meta_tokenizer, prompts, 16)
    assert np.array_equal(result.input_ids, expected_ids)
    memory, mask = torch_forward(s0_torch, expected_ids)
    assert np.array_equal(result.mask, mask)
    assert float(np.abs(result.memory - memory).max()) <= TOL


@pytest.mark.parametrize("which", ["tiny", "s0"])
def test_self_check(request, which):
    bundle = request.getfixturevalue(which)
    with load(bundle) as runner:
        fidelity = runner.self_check()
    references = json.loads((bundle / "manifest.json").read_text())["reference"]["prompts"]
    assert fidelity["prompts"] == references
    assert fidelity["mean_cosine"] >= 0.999999 and fidelity["worst_cosine"] >= 0.99999
    assert fidelity["max_abs_diff"] <= TOL


@pytest.mark.parametrize("shape", [(16,), (2, 15), (2, 17), (1, 2, 16), (2, 32)])
def test_wrong_ids_shape_is_refused(tiny, shape):
    with load(tiny) as runner, pytest.raises(EdgesegError, match="input_ids"):
        runner.infer(np.ones(shape, dtype=np.int64))


@pytest.mark.parametrize("name", ["model.onnx", "model.onnx.data", "bpe_vocab.txt.gz", "reference.npz"])
def test_a_tampered_file_is_refused_on_load(tiny_copy, name):
    flip_byte(tiny_copy / name)
    with pytest.raises(EdgesegError, match="sha256") as info:
        load(tiny_copy)
    assert name in str(info.value)


def test_a_missing_model_is_refused_on_load(tiny_copy):
    (tiny_copy / "model.onnx").unlink()
    with pytest.raises(EdgesegError, match="model.onnx"):
        load(tiny_copy)


def test_an_unreadable_model_with_matching_hash_is_refused(tiny_copy):
    garbage = b"this is not an onnx model" * 10
    (tiny_copy / "model.onnx").write_bytes(garbage)
    files = json.loads((tiny_copy / "manifest.json").read_text())["files"]
    files["model.onnx"] = {"sha256": hashlib.sha256(garbage).hexdigest(), "bytes": len(garbage)}
    edit_manifest(tiny_copy, files=files)
    with pytest.raises(EdgesegError, match="cannot load"):
        load(tiny_copy)


def test_unknown_backend_is_refused(tiny_copy):
    edit_manifest(tiny_copy, backend="tensorrt-42")
    with pytest.raises(EdgesegError, match="tensorrt-42"):
        load(tiny_copy)
    with pytest.raises(EdgesegError, match="tensorrt-42"):
        runner_class("tensorrt-42")


# ---- CLI ---------------------------------------------------------------------------------------------
@pytest.fixture
def prompts_file(tmp_path) -> Path:
    path = tmp_path / "prompts.txt"
    path.write_text("\n".join(p for p in PROMPTS if p.strip()) + "\n", encoding="utf-8")
    return path


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("edgeseg: error:"), err
    return lines[0]


def test_cli_encode_bundle_equals_encode_encoder(s0, prompts_file, tmp_path, capsys):
    a, b = tmp_path / "bundle.npz", tmp_path / "torch.npz"
    assert main(["encode", "--bundle", str(s0), "--prompts", str(prompts_file), "--out", str(a)]) == 0
    assert main(["encode", "--encoder", "mobileclip-s0", "--seed", "0", "--prompts", str(prompts_file),
                 "--out", str(b)]) == 0
    capsys.readouterr()
    with np.load(a, allow_pickle=False) as fa, np.load(b, allow_pickle=False) as fb:
        got, expected = {k: fa[k] for k in fa.files}, {k: fb[k] for k in fb.files}
    assert sorted(got) == sorted(expected) == ["input_ids", "mask", "memory"]
    n = len([p for p in PROMPTS if p.strip()])
    assert got["memory"].shape == (n, 16, 256)
    for key in expected:
        assert got[key].dtype == expected[key].dtype and got[key].shape == expected[key].shape, key
    assert np.array_equal(got["input_ids"], expected["input_ids"])
    assert np.array_equal(got["mask"], expected["mask"])
    assert float(np.abs(got["memory"] - expected["memory"]).max()) <= TOL


@pytest.mark.parametrize("extra,match", [
    (["--encoder", "mobileclip-s0"], "exactly one"),
    (["--checkpoint", "x.pt"], "do not apply"),
    (["--context-length", "16"], "do not apply"),
])
def test_cli_bundle_option_conflicts(tiny, prompts_file, tmp_path, capsys, extra, match):
    out = tmp_path / "out.npz"
    assert main(["encode", "--bundle", str(tiny), *extra, "--prompts", str(prompts_file), "--out", str(out)]) == 2
    assert match in _one_error_line(capsys)
    assert not out.exists()


def _bad_bundle(kind: str, tiny: Path, tmp_path: Path) -> Path:
    path = tmp_path / "bad"
    if kind == "missing":
        return path
    if kind == "file":
        path.write_text("not a bundle")
        return path
    shutil.copytree(tiny, path)
    if kind == "no-manifest":
        (path / "manifest.json").unlink()
    elif kind == "tampered":
        flip_byte(path / "model.onnx")
    elif kind == "bad-json":
        (path / "manifest.json").write_text("{oops", encoding="utf-8")
    elif kind == "version":
        edit_manifest(path, format_version=99)
    elif kind == "backend":
        edit_manifest(path, backend="coreml")
    elif kind == "malformed-files":
        edit_manifest(path, files=["model.onnx"])
    return path


@pytest.mark.parametrize("kind,match", [
    ("missing", "does not exist"), ("file", "not a directory"), ("no-manifest", "manifest.json"),
    ("tampered", "sha256"), ("bad-json", "JSON"), ("version", "version"), ("backend", "coreml"),
    pytest.param("malformed-files", "manifest"),
])
def test_cli_bad_bundle(tiny, prompts_file, tmp_path, capsys, kind, match):
    bundle = _bad_bundle(kind, tiny, tmp_path)
    out = tmp_path / "out.npz"
    assert main(["encode", "--bundle", str(bundle), "--prompts", str(prompts_file), "--out", str(out)]) == 2
    line = _one_error_line(capsys)
    assert match in line
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.npz.tmp")]


def test_cli_bundle_path_never_imports_torch(s0, prompts_file, tmp_path):
    out = tmp_path / "o.npz"
    code = (
        "import sys; from edgeseg.cli import main; "
        f"rc = main(['encode', '--bundle', {str(s0)!r}, '--prompts', {str(prompts_file)!r}, '--out', {str(out)!r}]); "
        "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if m.startswith('torch'))[:5]; "
        "sys.exit(rc)"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    with np.load(out, allow_pickle=False) as data:
        assert data["memory"].shape == (len([p for p in PROMPTS if p.strip()]), 16, 256)


# -- the run side imports nothing from the build side ---------------------------------------------
PACKAGE = REPO / "edgeseg"
#: the run side: the runtime and the modules the deployment path is made of
RUN_SIDE = [*sorted((PACKAGE / "runtime").glob("*.py")), *(PACKAGE / f"{name}.py" for name in (
    "bank", "bundle", "bundlecheck", "outputs", "tokenizer", "fileio", "backends", "trtprobe", "tmpnames"))]
BUILD_SIDE = ("edgeseg.targets", "edgeseg.export", "edgeseg.quantize", "edgeseg.distill", "edgeseg.checkpoints",
              "edgeseg.encoders", "torch")


def package_of(path: Path) -> str:
    """The package a module file sits in (``edgeseg/runtime/base.py`` -> ``edgeseg.runtime``)."""
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts if path.name == "__init__.py" else parts[:-1])


def imported_modules(source: str, package: str) -> list[tuple[int, str]]:
    """Every module an ``import`` in ``source`` names, at module level or inside a function (``from a import b``
    names ``a`` and ``a.b``: ``b`` may be a submodule); relative imports resolved against ``package``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}".rstrip(".")
            found += [(node.lineno, base)] + [(node.lineno, f"{base}.{alias.name}") for alias in node.names]
    return found


def module_file(name: str) -> Path | None:
    """The source file of edgeseg module ``name`` in this tree, or None (not edgeseg, or not a module)."""
    if name != "edgeseg" and not name.startswith("edgeseg."):
        return None
    base = REPO.joinpath(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _is_build_side(name: str) -> bool:
    return any(name == b or name.startswith(b + ".") for b in BUILD_SIDE)


def test_imports_of_the_run_side_walk_every_form():
    """The walk itself: every import form, and the build-side test, on a hand-written file."""
    code = ("import numpy\nfrom edgeseg import targets\nfrom . import base\nfrom ..quantize import x\n"
            "def f():\n    import torch.nn as nn\n")
    names = {name for _, name in imported_modules(code, "edgeseg.runtime")}
    assert {"numpy", "edgeseg.targets", "edgeseg.runtime.base", "edgeseg.quantize", "edgeseg.quantize.x",
            "torch.nn"} <= names
    assert [n for n in sorted(names) if _is_build_side(n)] == ["edgeseg.quantize", "edgeseg.quantize.x",
                                                               "edgeseg.targets", "torch.nn"]
    assert not _is_build_side("edgeseg.targetsx") and package_of(PACKAGE / "runtime" / "base.py") == "edgeseg.runtime"
    assert module_file("edgeseg.runtime.base") == PACKAGE / "runtime" / "base.py" and module_file("numpy") is None


def test_the_run_side_imports_nothing_from_the_build_side():
    """Every run-side module, and every edgeseg module they import (transitively), imports neither torch
    nor the build side, at module level or inside a function."""
    todo, seen, offences = list(RUN_SIDE), set(), []
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for line, name in imported_modules(path.read_text(encoding="utf-8"), package_of(path)):
            if _is_build_side(name):
                offences.append(f"{path.relative_to(REPO)}:{line} imports {name}")
            elif (found := module_file(name)) is not None:
                todo.append(found)
    assert not offences, "\n".join(offences)
    assert PACKAGE / "errors.py" in seen and len(seen) > len(RUN_SIDE)  # the walk followed the imports
