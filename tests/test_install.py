"""Install profiles (setup.py, README "Install profiles"), tried as a new user would.

* A non-editable install (``pip install --target``, from a copy of the source tree, run from a clean
  directory with nothing of the checkout on the path) exports and quantizes MobileCLIP-S0 on the
  shipped defaults: the prompt sets are package data.
* A fresh venv with ``pip install .`` only (no extras) installs no torch and runs that bundle
  (``edgeseg encode --bundle``, ``edgeseg.runtime.load``) without ever looking torch, onnx or any
  other build-side package up; a build command stops with the one-line "needs the build extra"
  message; ``--help`` of every command works.

pip reads its index from the machine's configuration (the local package mirror here). The venv and
the bundle are made once per module: about 2 minutes on 2 cores, most of it pip and S0's export.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
PIP_TIMEOUT_S = 600
RUN_TIMEOUT_S = 300
# top-level modules of the extras (edgeseg.errors.EXTRAS, restated here): a bundle run must not look any up
BUILD_SIDE = ("torch", "onnx", "polygraphy", "safetensors", "matplotlib", "sam3", "torchvision", "coremltools",
              "tensorrt", "transformers")
COMMANDS = ("info", "tokenize", "encode", "compare", "export", "quantize", "build", "analyze", "distill", "bench")
PROMPTS = ["a dog", "the leftmost child wearing blue vest", "Red Car", "caf\u00e9 table", "x"]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env["OMP_NUM_THREADS"] = "1"
    return env


def _run(cmd: list, cwd: Path, timeout: int = RUN_TIMEOUT_S, **env) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL, env={**_env(), **{k: str(v) for k, v in env.items()}})


def _ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, f"{' '.join(proc.args)} -> {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """What a fresh clone holds of the package: setup.py, README.md and edgeseg/ (no caches)."""
    out = tmp_path_factory.mktemp("clone") / "edgeseg-src"
    out.mkdir()
    for name in ("setup.py", "README.md"):
        shutil.copy2(REPO / name, out / name)
    shutil.copytree(REPO / "edgeseg", out / "edgeseg", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return out


@pytest.fixture(scope="module")
def installed(source, tmp_path_factory) -> Path:
    """A non-editable install of the package alone (dependencies from the test environment)."""
    target = tmp_path_factory.mktemp("site")
    _ok(_run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", target, source],
             cwd=target, timeout=PIP_TIMEOUT_S))
    return target


@pytest.fixture(scope="module")
def bundle(installed, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """S0 exported and quantized by the non-editable install, from a clean directory, on the shipped defaults."""
    work = tmp_path_factory.mktemp("clean-dir")
    cli = [sys.executable, "-m", "edgeseg.cli"]
    _ok(_run([*cli, "export", "--encoder", "mobileclip-s0", "--out", "s0-fp32"], cwd=work, PYTHONPATH=installed))
    # a gate that random weights pass at once: the fallback's layer ranking is tested elsewhere
    quantized = _ok(_run([*cli, "quantize", "s0-fp32", "--out", "s0-int8", "--calibration-limit", "32",
                          "--eval-limit", "16", "--min-mean-cosine", "0.99", "--min-worst-cosine", "0.95"],
                         cwd=work, PYTHONPATH=installed))
    return work / "s0-int8", quantized


@pytest.fixture(scope="module")
def venv(source, tmp_path_factory) -> Path:
    """``python -m venv v && v/bin/pip install .``: the device profile."""
    root = tmp_path_factory.mktemp("venv") / "v"
    base = getattr(sys, "_base_executable", sys.executable)
    _ok(_run([base, "-m", "venv", root], cwd=root.parent, timeout=PIP_TIMEOUT_S))
    _ok(_run([root / "bin" / "pip", "install", "-q", source], cwd=root.parent, timeout=PIP_TIMEOUT_S))
    return root


def test_non_editable_install_exports_and_quantizes_on_the_shipped_defaults(installed, bundle):
    path, quantized = bundle
    where = _ok(_run([sys.executable, "-c", "import edgeseg, edgeseg.corpus as c; print(edgeseg.__file__); "
                      "print(c.prompts_dir())"], cwd=path.parent, PYTHONPATH=installed)).stdout.split()
    assert Path(where[0]).is_relative_to(installed) and Path(where[1]) == installed / "edgeseg" / "data" / "prompts"
    assert sorted(p.name for p in Path(where[1]).iterdir()) == [
        "SOURCES.md", "calibration.txt", "distill.txt", "eval.txt", "manifest.json", "reference.txt", "samples.txt"]
    manifest = json.loads((path / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["precision"] == "int8" and manifest["calibration"]["count"] == 32
    assert manifest["calibration"]["name"] == "edgeseg/data/prompts/calibration.txt"
    assert manifest["fidelity"]["prompts"] == 16 and "INT8 (static)" in quantized.stderr


def test_plain_pip_install_has_no_build_toolchain(venv):
    listed = _ok(_run([venv / "bin" / "pip", "list", "--format", "json"], cwd=venv)).stdout
    names = {p["name"].lower() for p in json.loads(listed)}
    assert {"edgeseg", "numpy", "onnxruntime", "click", "ftfy", "regex", "tqdm", "jsonschema"} <= names
    assert not names & {"torch", "onnx", "polygraphy", "safetensors", "matplotlib", "torchvision", "sam3"}


# Runs the CLI and the Python runtime in one process and reports every module of the build side that
# was looked up (imported or tried), whether it failed or not.
_WATCHED = r"""
import importlib.abc, json, sys
WATCH, seen = set(sys.argv[1].split(",")), []
class Watch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in WATCH:
            seen.append(name)
        return None
sys.meta_path.insert(0, Watch())
from edgeseg.cli import main
code = main(sys.argv[2:])
import edgeseg.runtime
with edgeseg.runtime.load(sys.argv[sys.argv.index("--bundle") + 1]) as runner:
    memory = runner.encode(["a dog", "Red Car"]).memory
print(json.dumps({"code": code, "seen": seen, "shape": list(memory.shape)}))
"""


def test_bundle_runs_in_a_torch_free_venv(venv, bundle, tmp_path):
    path, _ = bundle
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n", encoding="utf-8")
    python = venv / "bin" / "python"
    report = _ok(_run([python, "-c", _WATCHED, ",".join(BUILD_SIDE), "encode", "--bundle", path, "--prompts", prompts,
                       "--out", tmp_path / "watched.npz"], cwd=tmp_path))
    result = json.loads(report.stdout.strip().splitlines()[-1])
    assert result == {"code": 0, "seen": [], "shape": [2, 16, 256]}, report.stderr

    _ok(_run([venv / "bin" / "edgeseg", "encode", "--bundle", path, "--prompts", prompts, "--out", tmp_path / "o.npz"],
             cwd=tmp_path))
    from edgeseg.runtime import load

    with load(path) as runner:  # the same bundle in the full test environment
        expected = runner.encode(PROMPTS)
    with np.load(tmp_path / "o.npz", allow_pickle=False) as got:
        assert np.array_equal(got["input_ids"], expected.input_ids) and np.array_equal(got["mask"], expected.mask)
        np.testing.assert_allclose(got["memory"], expected.memory, rtol=0, atol=1e-5)


def test_build_commands_name_the_missing_extra_and_help_works(venv, tmp_path):
    edgeseg = venv / "bin" / "edgeseg"
    for args, what in ((["export", "--encoder", "mobileclip-s0", "--out", "x"], "edgeseg export"),
                       (["quantize", "x", "--out", "y"], "edgeseg quantize"),
                       (["build", "--target", "jetson", "--encoder", "mobileclip-s0", "--out", "y"], "edgeseg build"),
                       (["distill", "--student", "mobileclip-s0", "--out", "r"], "edgeseg distill"),
                       (["info", "--encoder", "sam3"], "edgeseg info")):
        proc = _run([edgeseg, *args], cwd=tmp_path)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1, proc.stderr
        assert lines[0].startswith(f"edgeseg: error: {what}") and \
            "needs the build extra: pip install 'edgeseg[build]'" in lines[0], lines
    assert list(tmp_path.iterdir()) == []
    for command in ("", *COMMANDS, "distill splice"):
        proc = _ok(_run([edgeseg, *command.split(), "--help"], cwd=tmp_path))
        assert proc.stdout.startswith("Usage:") and proc.stderr == "", (command, proc.stderr)
