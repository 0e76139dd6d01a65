"""Hostile input through the command line, as a user (or an attacker) would give it (issue 18).

Every case runs ``edgeseg ...`` in its own process and asserts the contract: exit 0 with the right
result, or exit 2 with exactly one stderr line and no traceback; the inputs byte-identical
afterwards; nothing left in the output's folder (no half-written output, no temporary). Cases:
tampered bundles (one per file the manifest names, and every way a manifest can point at an
unverified file), malformed manifests, outputs that are inputs or cannot be written, signals,
non-finite weights, a planted pickle, unbounded work, control characters in names.

A fresh interpreter spends seconds importing torch, so commands run in children forked from one
helper process that has imported torch (tests/forked_cli.py, as tests/test_cli.py does); the helper
also reports the child's pid at once, so that a test can signal a running command, and can cap the
size of the files a command writes (RLIMIT_FSIZE: a disk that fills up). Expected values come from the issue's
contract and from independent computations (hashes with hashlib, a reference BPE written here).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from forked_cli import ForkServer, Run
from safetensors.torch import save_file
from test_encoders_mobileclip import tiny_student

from edgeseg.bundle import finalize
from edgeseg.errors import EdgesegError
from edgeseg.export import export_bundle
from edgeseg.tokenizer import Tokenizer, default_vocab_path

TIMEOUT_S = 240
REF_PROMPTS = ["a dog", "wow!$ sign", "the leftmost child wearing blue vest", ""]
PROMPTS = "a dog\nred car on the left\n"
SOT, EOT = 49406, 49407
PROMPT_SETS = Path(__file__).resolve().parents[1] / "edgeseg" / "data" / "prompts"

@pytest.fixture(scope="module")
def cli(tmp_path_factory):
    runner = ForkServer(tmp_path_factory.mktemp("runs"), TIMEOUT_S)
    yield runner
    runner.close()


# -- the contract ---------------------------------------------------------------------------------
def snapshot(*paths: Path) -> dict[str, str]:
    """sha256 (or the link target, or the kind) of every path, recursively: to prove inputs are unchanged."""
    seen = {}
    for top in paths:
        for path in [top, *(sorted(top.rglob("*")) if top.is_dir() and not top.is_symlink() else [])]:
            if path.is_symlink():
                seen[str(path)] = "link:" + os.readlink(path)
            elif path.is_file():
                seen[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
            elif path.exists():
                seen[str(path)] = stat.filemode(path.lstat().st_mode)
    return seen


def refused(run: Run, needle: str) -> str:
    """Exit 2, one stderr line starting 'edgeseg: error:' that holds ``needle``, no traceback."""
    assert run.code == 2, run
    lines = run.stderr.splitlines()
    errors = [line for line in lines if line.startswith("edgeseg: error:")]
    assert len(errors) == 1 and "Traceback" not in run.stderr, run
    assert not [line for line in lines if not line.startswith("edgeseg: ")], run  # nothing but edgeseg's lines
    assert needle in errors[0], run
    return errors[0]


def succeeded(run: Run) -> Run:
    assert run.code == 0 and "Traceback" not in run.stderr, run
    return run


def nothing_left(folder: Path, *keep: str) -> None:
    assert sorted(p.name for p in folder.iterdir()) == sorted(keep), sorted(p.name for p in folder.iterdir())


# -- shared inputs ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    """A tiny FP32 ONNX bundle (an S0-shaped student of width 128, random/synthetic weights)."""
    out = tmp_path_factory.mktemp("bundle") / "fp32"
    export_bundle(tiny_student(["repmixer", "transformer"], seed=0), out, REF_PROMPTS,
                  {"checkpoint": None, "checkpoint_sha256": "random", "seed": 0})
    for path in out.iterdir():
        path.chmod(0o444)  # every test works on a copy: the original must never change
    return out


@pytest.fixture
def work(tmp_path) -> dict[str, Path]:
    """A prompts file in its own folder and an empty output folder."""
    (tmp_path / "in").mkdir()
    (tmp_path / "out").mkdir()
    prompts = tmp_path / "in" / "prompts.txt"
    prompts.write_text(PROMPTS, encoding="utf-8")
    return {"in": tmp_path / "in", "out": tmp_path / "out", "prompts": prompts, "tmp": tmp_path}


def copy_of(bundle: Path, target: Path) -> Path:
    """A copy whose big files are hard links (cheap) and whose manifest is its own: edit only via the helpers."""
    target.mkdir()
    for path in bundle.iterdir():
        if path.name == "manifest.json":
            shutil.copyfile(path, target / path.name)
        else:
            os.link(path, target / path.name)
    return target


def own(path: Path) -> Path:
    """Break the hard link to the module's bundle before changing a file."""
    data = path.read_bytes()
    path.unlink()
    path.write_bytes(data)
    return path


def flip(path: Path) -> None:
    data = bytearray(own(path).read_bytes())
    data[len(data) // 2] ^= 0x40  # same size: only the hash tells
    path.write_bytes(bytes(data))


def rehash(copy: Path, name: str) -> None:
    """Make the manifest agree with a changed file (an attacker who rewrites both)."""
    data = json.loads((copy / "manifest.json").read_text())
    body = (copy / name).read_bytes()
    data["files"][name] = {"sha256": hashlib.sha256(body).hexdigest(), "bytes": len(body)}
    (copy / "manifest.json").write_text(json.dumps(data))


def edit(copy: Path, change) -> None:
    data = json.loads((copy / "manifest.json").read_text())
    change(data)
    (copy / "manifest.json").write_text(json.dumps(data))


def raw(copy: Path, change) -> None:
    path = copy / "manifest.json"
    path.write_text(change(path.read_text()))


def _append(text: str, tail: str) -> str:
    return text.rstrip().rstrip("}") + ", " + tail + "}"


def _symlink_out(copy: Path, name: str) -> None:
    outside = copy.parent / f"outside-{name}"
    shutil.copyfile(copy / name, outside)  # same bytes, same hash: only the link tells
    (copy / name).unlink()
    (copy / name).symlink_to(outside)


def _fifo(copy: Path, name: str) -> None:
    (copy / name).unlink()
    os.mkfifo(copy / name)


def _external_data_unnamed(copy: Path) -> None:
    edit(copy, lambda m: (m["files"].pop("model.onnx.data"), m.pop("model_data")))
    flip(copy / "model.onnx.data")


def _vocab(copy: Path, where: str) -> None:
    outside = copy.parent / "outside.gz"
    shutil.copyfile(default_vocab_path(), outside)
    edit(copy, lambda m: m["tokenizer"].update(vocab=str(outside) if where == "absolute" else "../outside.gz"))


# case -> (tampering, what the one line must name)
TAMPERED = {
    # one changed file per file type the manifest names
    "model graph": (lambda c: flip(c / "model.onnx"), "model.onnx does not match its sha256"),
    "external weights": (lambda c: flip(c / "model.onnx.data"), "model.onnx.data does not match its sha256"),
    "vocabulary": (lambda c: flip(c / "bpe_vocab.txt.gz"), "bpe_vocab.txt.gz does not match its sha256"),
    "reference": (lambda c: flip(c / "reference.npz"), "reference.npz does not match its sha256"),
    "manifest": (lambda c: edit(c, lambda m: m.update(context_length="16")), "context_length"),
    # files that would escape verification
    "vocabulary absolute": (lambda c: _vocab(c, "absolute"), "tokenizer.vocab"),
    "vocabulary ../": (lambda c: _vocab(c, "parent"), "tokenizer.vocab"),
    "external weights unlisted": (lambda c: edit(c, lambda m: m["files"].pop("model.onnx.data")), "model_data"),
    "external weights unnamed": (_external_data_unnamed, "reads its weights from 'model.onnx.data'"),
    "symlink out": (lambda c: _symlink_out(c, "bpe_vocab.txt.gz"), "link that leaves the bundle"),
    "manifest symlink out": (lambda c: _symlink_out(c, "manifest.json"), "link that leaves the bundle"),
    "fifo": (lambda c: _fifo(c, "reference.npz"), "reference.npz is not a regular file"),
    "listed twice": (lambda c: raw(c, lambda t: _append(t, '"files": {}')), "duplicate key 'files'"),
    "case collision": (lambda c: edit(c, lambda m: m["files"].update({"Model.onnx": m["files"]["model.onnx"]})),
                       "case-insensitive"),
    "newline in a name": (lambda c: edit(c, lambda m: m["files"].update({"a\nb": m["files"]["model.onnx"]})),
                          "a\\nb"),
    "backslash name": (lambda c: edit(c, lambda m: m.update(model="sub\\model.onnx")), "model"),
    # malformed manifests
    "context string": (lambda c: edit(c, lambda m: m.update(context_length="16")), "context_length"),
    "context bool": (lambda c: edit(c, lambda m: m.update(context_length=True)), "context_length"),
    "context float": (lambda c: edit(c, lambda m: m.update(context_length=16.0)), "context_length"),
    "context negative": (lambda c: edit(c, lambda m: m.update(context_length=-16)), "context_length"),
    "context huge": (lambda c: edit(c, lambda m: m.update(context_length=10**12)), "context_length"),
    "context disagrees": (lambda c: edit(c, lambda m: m.update(context_length=8)), "context_length 8"),
    "tokenizer string": (lambda c: edit(c, lambda m: m.update(tokenizer="bpe_vocab.txt.gz")), "tokenizer"),
    "tokenizer null": (lambda c: edit(c, lambda m: m.update(tokenizer=None)), "tokenizer"),
    "vocab number": (lambda c: edit(c, lambda m: m["tokenizer"].update(vocab=3)), "tokenizer.vocab"),
    "sot id wrong": (lambda c: edit(c, lambda m: m["tokenizer"].update(sot_id=49405)), "sot_id"),
    "bytes negative": (lambda c: edit(c, lambda m: m["files"]["model.onnx"].update(bytes=-1)), "bytes"),
    "sha256 malformed": (lambda c: edit(c, lambda m: m["files"]["model.onnx"].update(sha256="XYZ")), "sha256"),
    "files list": (lambda c: edit(c, lambda m: m.update(files=[])), "files"),
    "outputs wrong": (lambda c: edit(c, lambda m: m.update(outputs=[{"name": "memory"}])), "outputs"),
    "version 2": (lambda c: edit(c, lambda m: m.update(format_version=2)), "version"),
    "not a manifest": (lambda c: edit(c, lambda m: m.update(format="other")), "not an edgeseg bundle manifest"),
    "nested 100k deep": (lambda c: raw(c, lambda t: _append(t, '"x": ' + "[" * 100_000 + "]" * 100_000)),
                         "nests deeper than 32 levels"),
    "NaN": (lambda c: raw(c, lambda t: _append(t, '"x": NaN')), "not valid JSON"),
    "overflow": (lambda c: raw(c, lambda t: _append(t, '"x": 1e999')), "not valid JSON"),
    "huge": (lambda c: raw(c, lambda t: _append(t, '"x": "' + " " * (2 << 20) + '"')), "the limit is"),
    "empty": (lambda c: raw(c, lambda t: ""), "not valid JSON"),
    "not utf-8": (lambda c: (c / "manifest.json").write_bytes(b"\xff\xfe{}"), "not valid JSON"),
    "missing": (lambda c: (c / "manifest.json").unlink(), "manifest.json"),
    # consistent hashes over broken files: the backend's refusal is one line too
    "truncated graph": (lambda c: (own(c / "model.onnx").write_bytes((c / "model.onnx").read_bytes()[:999]),
                                   rehash(c, "model.onnx")), "cannot load"),
    "truncated vocabulary": (lambda c: (own(c / "bpe_vocab.txt.gz").write_bytes(
        (c / "bpe_vocab.txt.gz").read_bytes()[:5000]), rehash(c, "bpe_vocab.txt.gz")), "tokenizer vocabulary"),
}


@pytest.mark.parametrize("case", sorted(TAMPERED))
def test_a_tampered_bundle_is_refused_in_one_line(cli, bundle, work, case):
    tamper, needle = TAMPERED[case]
    copy = copy_of(bundle, work["in"] / "b")
    tamper(copy)
    before = snapshot(work["in"], bundle)
    run = cli("encode", "--bundle", copy, "--prompts", work["prompts"], "--out", work["out"] / "m.npz")
    refused(run, needle)
    assert snapshot(work["in"], bundle) == before
    nothing_left(work["out"])


def test_the_untampered_copy_encodes(cli, bundle, work):
    copy = copy_of(bundle, work["in"] / "b")  # hard-linked files: a bundle reached through hard links
    run = succeeded(cli("encode", "--bundle", copy, "--prompts", work["prompts"], "--out", work["out"] / "m.npz"))
    with np.load(work["out"] / "m.npz") as data:
        assert data["memory"].shape == (2, 16, 256) and np.isfinite(data["memory"]).all()
        assert data["input_ids"][0, :4].tolist() == [SOT, 320, 1929, EOT]  # "a dog": CLIP ids 320, 1929
    assert "Traceback" not in run.stderr


def test_a_tampered_reference_is_refused_where_it_is_read(cli, bundle, work):
    copy = copy_of(bundle, work["in"] / "b")
    own(copy / "reference.npz").write_bytes(b"PK\x03\x04 not a zip")
    rehash(copy, "reference.npz")
    before = snapshot(work["in"])
    run = cli("build", "--target", "onnx", "--bundle", copy, "--precision", "fp32", "--out", work["out"] / "o")
    refused(run, "reference.npz is not a readable reference file")
    assert snapshot(work["in"]) == before
    nothing_left(work["out"])


def test_a_model_that_disagrees_with_the_manifest_is_refused(cli, bundle, work):
    copy = copy_of(bundle, work["in"] / "b")  # manifest consistent at context 8, the ONNX takes 16 tokens
    edit(copy, lambda m: (m.update(context_length=8), m["inputs"][0].update(shape=["batch", 8]),
                          m["outputs"][0].update(shape=["batch", 8, 256]), m["outputs"][1].update(shape=["batch", 8])))
    run = cli("encode", "--bundle", copy, "--prompts", work["prompts"], "--out", work["out"] / "m.npz")
    refused(run, "takes 16 tokens per prompt")
    nothing_left(work["out"])


def test_the_jetson_kit_applies_the_same_rules_without_edgeseg_or_jsonschema(cli, bundle, work):
    kit = work["in"] / "j"
    succeeded(cli("build", "--target", "jetson", "--bundle", bundle, "--precision", "fp32", "--max-batch", "2",
                  "--out", kit))
    code = ("import runpy, sys; sys.modules['jsonschema'] = None; sys.argv = ['build_engine.py', '--dry-run']\n"
            "runpy.run_path(sys.argv[0], run_name='__main__')")
    done = subprocess.run([sys.executable, "-c", code], cwd=kit, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    for tamper, needle in [(lambda: edit(kit, lambda m: m["files"].pop("model.onnx.data")), "model_data"),
                           (lambda: _vocab(kit, "parent"), "tokenizer.vocab")]:
        saved = (kit / "manifest.json").read_bytes()
        tamper()
        done = subprocess.run([sys.executable, "-c", code], cwd=kit, capture_output=True, text=True, timeout=120)
        assert done.returncode == 2 and done.stderr.count("\n") == 1 and needle in done.stderr, done.stderr
        assert done.stderr.startswith("build_engine: error:") and "Traceback" not in done.stderr
        (kit / "manifest.json").write_bytes(saved)


# -- outputs never destroy inputs --------------------------------------------------------------------
def test_out_equal_to_the_prompts_file_is_refused(cli, work):
    before = snapshot(work["in"])
    refused(cli("tokenize", "--prompts", work["prompts"], "--out", work["prompts"]), "is the input")
    link = work["out"] / "link.npz"
    os.link(work["prompts"], link)  # the same file under another name
    refused(cli("tokenize", "--prompts", work["prompts"], "--out", link), "is the input")
    link.unlink()
    (work["out"] / "sym.npz").symlink_to(work["prompts"])
    refused(cli("tokenize", "--prompts", work["prompts"], "--out", work["out"] / "sym.npz"), "is the input")
    (work["out"] / "sym.npz").unlink()
    assert snapshot(work["in"]) == before
    nothing_left(work["out"])


@pytest.fixture(scope="module")
def calibration(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("calibration")
    lines = (PROMPT_SETS / "calibration.txt").read_text().split("\n")
    (folder / "cal.txt").write_text("\n".join(lines[:40]) + "\n")
    (folder / "eval.txt").write_text("\n".join(lines[40:52]) + "\n")
    return {"cal": folder / "cal.txt", "eval": folder / "eval.txt"}


def quantize_args(src: Path, out: Path, calibration: dict[str, Path]) -> list:
    return ["quantize", src, "--out", out, "--calibration", calibration["cal"], "--eval-prompts", calibration["eval"],
            "--smooth-alpha", "0"]


@pytest.mark.parametrize("where", ["same", "inside", "holds", "symlink"])
def test_quantize_refuses_an_out_that_is_or_holds_its_input(cli, bundle, work, calibration, where):
    copy = copy_of(bundle, work["in"] / "b")
    out = {"same": copy, "inside": copy / "int8", "holds": work["in"], "symlink": work["out"] / "link"}[where]
    if where == "symlink":
        out.symlink_to(copy)
    before = snapshot(work["in"])
    refused(cli(*quantize_args(copy, out, calibration)), "--out")
    assert snapshot(work["in"]) == before
    nothing_left(work["out"], *(["link"] if where == "symlink" else []))


def test_quantize_through_hard_links_works(cli, bundle, work, calibration):
    copy = copy_of(bundle, work["in"] / "b")  # every big file has two links: onnx refuses such external data
    succeeded(cli(*quantize_args(copy, work["out"] / "int8", calibration)))
    assert json.loads((work["out"] / "int8" / "manifest.json").read_text())["precision"] == "int8"
    nothing_left(work["out"], "int8")


@pytest.mark.parametrize("out, needle", [
    ("", "empty or not a name"), (".", "empty or not a name"), ("folder", "existing folder"),
    ("/proc/edgeseg.npz", "cannot create files in /proc"), ("/dev/null", "not a regular file"),
    ("missing/x.npz", "does not exist"),
])
def test_outputs_that_cannot_be_written_are_one_line(cli, work, out, needle):
    (work["out"] / "folder").mkdir()
    refused(cli("tokenize", "--prompts", work["prompts"], "--out", out, cwd=work["out"]), needle)
    nothing_left(work["out"], "folder")
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)


def test_a_bundle_over_an_existing_file_and_a_file_over_a_folder_are_refused(cli, bundle, work, calibration):
    (work["out"] / "file.txt").write_text("keep")
    refused(cli(*quantize_args(bundle, work["out"] / "file.txt", calibration)), "is not a folder")
    assert (work["out"] / "file.txt").read_text() == "keep"
    nothing_left(work["out"], "file.txt")


@pytest.fixture
def read_only(tmp_path):
    """A read-only folder: a read-only tmpfs when we may mount one (root), else a mode-0500 folder."""
    folder = tmp_path / "ro"
    folder.mkdir()
    if os.geteuid() == 0:
        if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(folder)],
                          capture_output=True).returncode != 0:
            pytest.skip("root without mount: cannot make a read-only folder")
        yield folder
        subprocess.run(["umount", str(folder)], check=True)
    else:
        folder.chmod(0o500)
        yield folder
        folder.chmod(0o700)


def test_a_read_only_folder_is_one_line(cli, work, bundle, calibration, read_only):
    refused(cli("tokenize", "--prompts", work["prompts"], "--out", read_only / "ids.npz"), "cannot create files in")
    refused(cli(*quantize_args(bundle, read_only / "int8", calibration)), "cannot create files in")
    assert list(read_only.iterdir()) == []


def test_a_disk_that_fills_up_during_quantize_leaves_nothing(cli, bundle, work, calibration):
    run = cli(*quantize_args(bundle, work["out"] / "int8", calibration), fsize=4 << 20)  # 4 MiB per file
    refused(run, f"cannot write {work['out'] / 'int8'}")
    nothing_left(work["out"])


def _signal_when_started(out_folder: Path, signum: int, first: str):
    """Send ``signum`` once a temporary whose name starts with ``first`` appears in ``out_folder``."""
    def during(pid: int) -> None:
        deadline = time.monotonic() + TIMEOUT_S
        while not any(p.name.startswith(first) for p in out_folder.iterdir()):
            assert time.monotonic() < deadline, "the command never started writing"
            time.sleep(0.05)
        time.sleep(0.3)
        os.kill(pid, signum)
    return during


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_during_quantize_removes_the_unfinished_output(cli, bundle, work, calibration, signum):
    run = cli(*quantize_args(bundle, work["out"] / "int8", calibration),
              during=_signal_when_started(work["out"], signum, ".int8.tmp-"))
    refused(run, f"stopped by {signal.Signals(signum).name}")
    nothing_left(work["out"])


def test_sigterm_during_export_removes_the_unfinished_bundle(cli, work):
    run = cli("export", "--encoder", "mobileclip-s0", "--out", work["out"] / "s0",
              during=_signal_when_started(work["out"], signal.SIGTERM, ".s0.tmp-"))
    refused(run, "stopped by SIGTERM")
    nothing_left(work["out"])


def test_a_stop_that_a_library_swallows_still_leaves_no_output(tmp_path, monkeypatch):
    """A signal whose exception some library catches (a bare ``except BaseException``, a ``__del__``) must
    not let the command finish its output: the atomic write refuses, one line, exit 2."""
    from conftest import run_cli

    from edgeseg import fileio

    original = fileio.read_prompts

    def swallowing(path):
        prompts = original(path)
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1)  # the handler raises here
        except BaseException:  # noqa: BLE001 - what a careless library does
            pass
        return prompts

    (tmp_path / "p.txt").write_text("a dog\n", encoding="utf-8")
    monkeypatch.setattr(fileio, "read_prompts", swallowing)
    rc, err = run_cli(["tokenize", "--prompts", str(tmp_path / "p.txt"), "--out", str(tmp_path / "ids.npz")])
    errors = [line for line in err.splitlines() if line.startswith("edgeseg: error:")]
    assert rc == 2 and errors == ["edgeseg: error: stopped by SIGTERM; the unfinished output was removed"], err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.txt"]
    monkeypatch.undo()
    rc, err = run_cli(["tokenize", "--prompts", str(tmp_path / "p.txt"), "--out", str(tmp_path / "ids.npz")])
    assert rc == 0 and (tmp_path / "ids.npz").is_file(), err  # the next command starts afresh


def test_temporaries_a_killed_run_left_are_removed_by_the_next_run(cli, work):
    dead = subprocess.Popen(["true"])
    dead.wait()  # a pid that no process has any more
    stale = [work["out"] / f".ids.npz.tmp-{dead.pid}-abcd1234.npz", work["out"] / f".ids.npz.tmp-{dead.pid}-work-x"]
    stale[0].write_bytes(b"half")
    stale[1].mkdir()
    (stale[1] / "junk").write_bytes(b"x")
    mine = work["out"] / f".ids.npz.tmp-{os.getpid()}-live.npz"  # a live process's: left alone
    mine.write_bytes(b"live")
    unrelated = work["out"] / ".ids.npz.tmp-notours"
    unrelated.write_bytes(b"not our naming")
    succeeded(cli("tokenize", "--prompts", work["prompts"], "--out", work["out"] / "ids.npz"))
    nothing_left(work["out"], "ids.npz", mine.name, unrelated.name)


# -- numbers ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_weights_are_refused_at_load(cli, work, bad):
    state = tiny_student(["transformer"], seed=1).state_dict()
    name = sorted(k for k, v in state.items() if v.is_floating_point())[3]
    state[name] = state[name].clone()
    state[name].view(-1)[7] = bad
    path = work["in"] / "weights.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    before = snapshot(work["in"])
    for command in (["info", "--encoder", "mobileclip-s0", "--checkpoint", path, "--json"],
                    ["export", "--encoder", "mobileclip-s0", "--checkpoint", path, "--out", work["out"] / "b"]):
        line = refused(cli(*command), f"tensor {name} holds {'NaN' if bad != bad else 'Inf'}")
        assert "non-finite" in line
    assert snapshot(work["in"]) == before
    nothing_left(work["out"])


def test_a_non_finite_verification_figure_is_never_written(tmp_path):
    (tmp_path / "model.onnx").write_bytes(b"m")
    (tmp_path / "vocab.txt.gz").write_bytes(b"v")
    fields = {"encoder": "tiny", "context_length": 16, "precision": "fp32", "target": "onnx",
              "backend": "onnxruntime", "model": "model.onnx",
              "inputs": [{"name": "input_ids", "dtype": "int64", "shape": ["batch", 16]}],
              "outputs": [{"name": "memory", "dtype": "float32", "shape": ["batch", 16, 256]},
                          {"name": "mask", "dtype": "bool", "shape": ["batch", 16]}],
              "tokenizer": {"vocab": "vocab.txt.gz"}, "export": {"max_abs_diff": float("nan")}}
    with pytest.raises(EdgesegError, match="export.max_abs_diff is nan"):
        finalize(tmp_path, fields)
    assert not (tmp_path / "manifest.json").exists()


def test_a_planted_pickle_as_a_run_checkpoint_is_one_line_and_never_runs(cli, work):
    marker = work["tmp"] / "PWNED"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    run_dir = work["out"] / "run"
    run_dir.mkdir()
    torch.save({"format": Payload()}, run_dir / "checkpoint.pt")
    lines = (PROMPT_SETS / "distill.txt").read_text().split("\n")[:40]
    (work["in"] / "train.txt").write_text("\n".join(lines) + "\n")
    student = {"base": "mobileclip-s0", "name": "tiny-s0", "dim": 32, "heads": 2, "ffn_dim": 64,
               "blocks": ["transformer"]}
    teacher = {"base": "sam3", "name": "tiny-sam3", "width": 32, "layers": 1, "heads": 2}
    before = snapshot(run_dir / "checkpoint.pt")
    run = cli("distill", "--student", "tiny", "--student-config", json.dumps(student), "--teacher-config",
              json.dumps(teacher), "--prompts", work["in"] / "train.txt", "--eval-prompts", work["prompts"],
              "--steps", "2", "--batch-size", "4", "--out", run_dir)
    refused(run, "pickled objects")
    assert not marker.exists()
    assert snapshot(run_dir / "checkpoint.pt") == before


# -- bounded work ------------------------------------------------------------------------------------
def reference_bpe(tokenizer: Tokenizer, piece: str) -> list[int]:
    """CLIP's greedy BPE as its reference code states it (every occurrence of the lowest-rank pair, left to
    right, until none has a rank), on ids: the spec the priority-queue version must match exactly."""
    word = [*(tokenizer._char_ids[c] for c in piece[:-1]), tokenizer._end_ids[piece[-1]]]
    ranks = tokenizer._pair_ranks
    while len(word) > 1:
        pairs = [(ranks[a << 16 | b], (a, b)) for a, b in zip(word, word[1:]) if (a << 16 | b) in ranks]
        if not pairs:
            return word
        rank, (a, b) = min(pairs)
        merged, i = [], 0
        while i < len(word):
            if i + 1 < len(word) and (word[i], word[i + 1]) == (a, b):
                merged.append(512 + rank)
                i += 2
            else:
                merged.append(word[i])
                i += 1
        word = merged
    return word


def test_priority_queue_bpe_gives_the_reference_ids():
    tokenizer = Tokenizer(default_vocab_path())
    rng = random.Random(18)
    alphabets = ["aeinorst", "ab", "a", "xyzq", "ðŁĺĤ", "éàüß漢字"]
    words = ["".join(rng.choice(rng.choice(alphabets)) for _ in range(rng.randint(1, 60))) for _ in range(1500)]
    for word in words:
        for piece in tokenizer.pieces(word):
            assert tokenizer.merge_ids(piece) == reference_bpe(tokenizer, piece), piece


@pytest.mark.parametrize("line", ["word", "spaces"])
def test_a_10_mb_line_tokenizes_in_seconds(cli, work, line):
    letters = bytes(ord("a") + i % 26 for i in range(256))
    text = random.Random(0).randbytes(10_000_000).translate(letters).decode() if line == "word" \
        else "a dog " * 1_700_000
    work["prompts"].write_text(text + "\nred car\n", encoding="utf-8")
    start = time.monotonic()
    run = succeeded(cli("tokenize", "--prompts", work["prompts"], "--out", work["out"] / "ids.npz"))
    assert time.monotonic() - start < 60, "bounded work: seconds, not hours"
    assert "(1 truncated)" in run.stderr
    with np.load(work["out"] / "ids.npz") as data:
        ids = data["input_ids"]
    assert ids.shape == (2, 16) and ids[0, 0] == SOT and ids[0, 15] == EOT and (ids[0] != 0).all()
    assert ids[1, :4].tolist() == [SOT, 736, 1615, EOT]  # "red car": CLIP ids 736, 1615
    if line == "spaces":
        assert ids[0, 1:15].tolist() == [320, 1929] * 7  # "a dog" x 7


@pytest.mark.parametrize("args, needle", [
    (["tokenize", "--context-length", "1000000000000"], "--context-length"),
    (["tokenize", "--context-length", "1"], "--context-length"),
    (["encode", "--encoder", "mobileclip-s0", "--context-length", "1000000000000"], "--context-length"),
    (["encode", "--encoder", "mobileclip-s0", "--batch-size", "1000000000000"], "--batch-size"),
    (["encode", "--encoder", "mobileclip-s0", "--seed", "-1"], "--seed"),
    (["compare", "--batch-size", "0"], "--batch-size"),
])
def test_sizes_are_range_checked_before_anything_is_allocated(cli, work, args, needle):
    refused(cli(*args, "--prompts", work["prompts"], *(["--out", work["out"] / "x.npz"] if args[0] != "compare"
                                                        else [])), needle)
    nothing_left(work["out"])


def test_a_non_finite_option_is_refused(cli, bundle, work, calibration):
    refused(cli(*quantize_args(bundle, work["out"] / "q", calibration), "--min-mean-cosine", "nan"),
            "--min-mean-cosine")
    nothing_left(work["out"])


# -- one line, whatever the names ------------------------------------------------------------------
@pytest.mark.parametrize("name, shown", [("new\nline.txt", "new\\nline.txt"), ("tab\there.txt", "tab\\there.txt"),
                                         ("bidi\u202etxt.txt", "bidi\\u202etxt.txt"), ("del\x7f.txt", "del\\x7f.txt")])
def test_control_characters_in_names_stay_on_one_line(cli, work, name, shown):
    line = refused(cli("tokenize", "--prompts", work["in"] / name, "--out", work["out"] / "x.npz"), "does not exist")
    assert shown in line
    nothing_left(work["out"])


@pytest.mark.parametrize("kind", ["fifo", "directory", "device", "huge", "binary"])
def test_prompt_files_that_are_not_text_are_one_line(cli, work, kind):
    path = work["in"] / "p.txt"
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "directory":
        path.mkdir()
    elif kind == "device":
        path = Path("/dev/zero")
    elif kind == "huge":
        with open(path, "wb") as fh:
            fh.truncate((256 << 20) + 1)  # sparse
    else:
        path.write_bytes(bytes(range(256)))
    refused(cli("tokenize", "--prompts", path, "--out", work["out"] / "x.npz"), "prompts file")
    nothing_left(work["out"])


def test_the_cpp_runtime_bounds_work_the_same_way(tmp_path):
    """Long words and prompts: the C++ tokenizer gives Python's ids and lengths (same caps, same rule)."""
    from test_engines import CppRuntime, require_build, tokenizer_bundle

    require_build()
    letters = bytes(ord("a") + i % 26 for i in range(256))
    rng = random.Random(5)
    prompts = [rng.randbytes(40_000).translate(letters).decode(),  # one word beyond the 32 x 513-byte cap
               "a dog " * 400,  # more than 512 tokens
               "x" * 16_416 + " dog", "red car"]
    runtime = CppRuntime(tokenizer_bundle(tmp_path / "b", 512), tokenizer_only=True)
    try:
        ids, lengths = runtime.tokenize(prompts)
    finally:
        runtime.close()
    batch = Tokenizer(default_vocab_path(), 512)(prompts)
    assert np.array_equal(ids, batch.ids) and np.array_equal(lengths, batch.lengths)
    assert lengths.tolist()[1] == 512 + 1 + 2 and lengths.tolist()[3] == 4
