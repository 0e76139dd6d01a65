"""Bundles: the one contract between building and running an encoder.

A bundle is a directory holding a model file (ONNX here; TensorRT engines and Core ML packages in
later targets), the tokenizer vocabulary, reference inputs/outputs, and ``manifest.json`` which
says exactly what it is and lists every file with its sha256. A runtime (Python or C++) needs
nothing outside the bundle, and refuses a bundle whose files do not match their hashes.

Bundles are written into a temporary sibling directory and renamed into place, so a failed build
never leaves a half bundle. No torch here.

``manifest.json`` (format ``edgeseg-bundle``, version 1)::

    format, format_version, created, encoder, context_length, position_table, semantics
    ("efficientsam3" | "transformers"; absent in older bundles = efficientsam3), precision,
    target, backend, model (file name), inputs/outputs [{name, dtype, shape}], tokenizer {...,
    pad_id, mask},
    files {name: {sha256, bytes}}, source {checkpoint, checkpoint_sha256 | "random", seed},
    export {opset, max_abs_diff vs torch, ...}, calibration {...} | null, fidelity {...} | null,
    excluded_layers [...], reference {file, prompts}, tools {name: version}
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from edgeseg import __version__
from edgeseg.errors import EdgesegError
from edgeseg.fileio import atomic_path, check_output_folder, sha256_file

FORMAT = "edgeseg-bundle"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
REFERENCE = "reference.npz"
REQUIRED = ("format", "format_version", "encoder", "context_length", "precision", "target", "backend",
            "model", "inputs", "outputs", "tokenizer", "files")


def io_spec(context_length: int, output_dim: int = 256) -> dict[str, list[dict[str, Any]]]:
    """The encoder contract as manifest entries: dynamic batch, fixed context length."""
    return {
        "inputs": [{"name": "input_ids", "dtype": "int64", "shape": ["batch", context_length]}],
        "outputs": [
            {"name": "memory", "dtype": "float32", "shape": ["batch", context_length, output_dim]},
            {"name": "mask", "dtype": "bool", "shape": ["batch", context_length]},
        ],
    }


def tool_versions(*names: str) -> dict[str, str]:
    """Installed versions of the named distributions (absent ones are left out), plus Python's."""
    from importlib import metadata  # not at module level: ~3 MB of RSS that serving a bundle never needs

    found = {"edgeseg": __version__, "python": platform.python_version()}
    for name in names:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


def check_bundle_target(out: str | os.PathLike) -> Path:
    """Fail early unless ``out`` can become a bundle: absent, empty, or an existing bundle."""
    out = Path(out)
    check_output_folder(out)
    if out.exists() and not out.is_dir():
        raise EdgesegError(f"{out} exists and is not a directory: refusing to replace it with a bundle")
    if out.is_dir() and not (out / MANIFEST).is_file() and any(out.iterdir()):
        raise EdgesegError(f"{out} exists and is not a bundle: refusing to replace it")
    return out


@contextmanager
def bundle_writer(out: str | os.PathLike) -> Iterator[Path]:
    """A temporary directory to fill; renamed onto ``out`` when the block ends without error."""
    out = check_bundle_target(out)
    with atomic_path(out, directory=True) as tmp:
        yield tmp


MODEL_DATA_SUFFIX = ".data"
PAGE = 4096


def externalize_onnx(path: Path, threshold: int = 1024) -> str | None:
    """Move an ONNX model's weights into ``<name>.data`` beside it (ONNX external data).

    Every tensor of at least ``threshold`` bytes starts on a 4 KiB page, so ONNX Runtime can map
    the file instead of copying it: a process only pays (in RSS) for the pages it reads, which for
    the token-embedding table are the rows of the tokens it sees. The graph file stays small.
    Returns the data file's name, or None when the model already keeps its weights outside.
    """
    import onnx
    from google.protobuf.message import DecodeError
    from onnx.external_data_helper import set_external_data, uses_external_data

    try:
        graph = onnx.load(str(path), load_external_data=False).graph
    except DecodeError:  # not an ONNX protobuf (e.g. a test's placeholder): nothing to split
        return None
    if any(uses_external_data(t) for t in graph.initializer):
        return None
    model = onnx.load(str(path))
    name = path.name + MODEL_DATA_SUFFIX
    (path.parent / name).unlink(missing_ok=True)  # onnx appends to an existing data file
    offset = 0
    for tensor in model.graph.initializer:
        if tensor.HasField("raw_data") and len(tensor.raw_data) >= threshold:
            offset = -(-offset // PAGE) * PAGE
            set_external_data(tensor, name, offset=offset, length=len(tensor.raw_data))
            tensor.data_location = onnx.TensorProto.EXTERNAL
            offset += len(tensor.raw_data)
    onnx.save_model(model, str(path))
    os.chmod(path.parent / name, path.stat().st_mode & 0o777)  # onnx creates it owner-only
    return name


#: manifest fields that name a file of the bundle: each must be a relative name inside it, listed under files
FILE_FIELDS = (("model",), ("model_data",), ("tokenizer", "vocab"), ("reference", "file"), ("bank", "file"))


def named_files(manifest: dict[str, Any]) -> list[Any]:
    """The values of :data:`FILE_FIELDS` that the manifest sets."""
    names = []
    for path in FILE_FIELDS:
        value: Any = manifest
        for key in path:
            value = value.get(key) if isinstance(value, dict) else None
        if value is not None:
            names.append(value)
    return names


def model_files(manifest: dict[str, Any]) -> list[str]:
    """The model file and, for ONNX with external data, its weights file."""
    return [manifest["model"], *([manifest["model_data"]] if manifest.get("model_data") else [])]


def model_bytes(manifest: dict[str, Any]) -> int:
    return sum(manifest["files"][name]["bytes"] for name in model_files(manifest) if name in manifest["files"])


def finalize(directory: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """Hash every file in ``directory`` into the manifest and write ``manifest.json`` there.

    An ONNX model that still holds its weights inline is first split into graph + external data
    (:func:`externalize_onnx`); the manifest names the data file in ``model_data``.
    """
    model = directory / str(manifest.get("model", ""))
    if model.suffix == ".onnx" and model.is_file():
        data = externalize_onnx(model)
        if data is not None:
            manifest = {**manifest, "model_data": data}
    elif "model_data" in manifest:  # e.g. a TensorRT engine derived from an ONNX bundle
        manifest = {k: v for k, v in manifest.items() if k != "model_data"}
    files = {}
    for path in sorted(directory.rglob("*")):
        if path.is_file() and path.name != MANIFEST:
            rel = path.relative_to(directory).as_posix()
            files[rel] = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
    manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, "created": now(), **manifest, "files": files}
    missing = [k for k in REQUIRED if k not in manifest]
    if missing:
        raise ValueError(f"manifest lacks {missing}")
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return manifest


def read_manifest(bundle: str | os.PathLike) -> dict[str, Any]:
    """Parse and check ``manifest.json`` (format, version, required fields); no hashing."""
    bundle = Path(bundle)
    if not bundle.is_dir():
        raise EdgesegError(f"bundle {bundle} does not exist or is not a directory")
    path = bundle / MANIFEST
    if not path.is_file():
        raise EdgesegError(f"{bundle} is not an edgeseg bundle: it has no {MANIFEST}")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise EdgesegError(f"{path} is not valid JSON ({exc})") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise EdgesegError(f"{path} is not an edgeseg bundle manifest")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise EdgesegError(
            f"{bundle} has bundle format version {manifest.get('format_version')}; this edgeseg reads {FORMAT_VERSION}"
        )
    missing = [k for k in REQUIRED if k not in manifest]
    if missing:
        raise EdgesegError(f"{path} lacks required field(s): {', '.join(missing)}")
    files = manifest["files"]
    if not isinstance(files, dict) or not all(
            isinstance(k, str) and isinstance(v, dict) for k, v in files.items()):
        raise EdgesegError(f"{path} is malformed: 'files' must map file names to {{sha256, bytes}}")
    for name in [*files, *named_files(manifest)]:
        if not isinstance(name, str) or Path(name).is_absolute() or ".." in Path(name).parts:
            raise EdgesegError(f"{path} is malformed: file name {name!r} points outside the bundle")
    return manifest


def verify_bundle(bundle: str | os.PathLike) -> dict[str, Any]:
    """Read the manifest and check every listed file's size and sha256; return the manifest."""
    bundle = Path(bundle)
    manifest = read_manifest(bundle)
    for name, entry in manifest["files"].items():
        path = bundle / name
        if not path.is_file():
            raise EdgesegError(f"bundle {bundle} is incomplete: {name} is missing")
        if path.stat().st_size != entry.get("bytes") or sha256_file(path) != entry.get("sha256"):
            raise EdgesegError(f"bundle {bundle} is corrupt or was modified: {name} does not match its sha256")
    bank = manifest.get("bank")
    for name in [manifest["model"], *([bank.get("file")] if isinstance(bank, dict) else [])]:
        if name not in manifest["files"]:
            raise EdgesegError(f"bundle {bundle} names file {name} but does not list it")
    return manifest


STAMPS = ("files", "format", "format_version", "created")  # fields finalize() writes


def inherited(manifest: dict[str, Any]) -> dict[str, Any]:
    """A source bundle's manifest without the fields :func:`finalize` writes, to derive a new one."""
    return {k: v for k, v in manifest.items() if k not in STAMPS}


def copy_files(directory: Path, src: Path, manifest: dict[str, Any], include_model: bool = True) -> None:
    """Copy every file a source bundle lists (its model too unless ``include_model`` is False)."""
    for name in manifest["files"]:
        if include_model or name not in model_files(manifest):
            (directory / name).parent.mkdir(parents=True, exist_ok=True)
            copy_into(directory, src / name, name)


def copy_into(directory: Path, src: str | os.PathLike, name: str | None = None) -> str:
    """Copy a file into a bundle directory; return its name there."""
    name = name or Path(src).name
    shutil.copyfile(src, directory / name)
    return name


def save_reference(path: Path, prompts: Sequence[str], input_ids: np.ndarray, memory: np.ndarray,
                   mask: np.ndarray) -> None:
    """Reference prompts, ids and FP32 outputs so that any device can check itself.

    The memory rows of padding positions are stored as zeros: SAM3 never reads them and every
    check compares valid tokens only, and zeros compress (S0: ~63% of the rows, 0.49 -> 0.18 MB).
    """
    memory = np.where(np.asarray(mask, bool)[..., None], np.float32(0), memory.astype(np.float32))
    with open(path, "wb") as fh:
        np.savez_compressed(fh, prompts=np.array(list(prompts), dtype=str), input_ids=input_ids,
                            memory=memory, mask=mask)


def reference_entry(prompts: int) -> dict[str, Any]:
    """The manifest's ``reference`` record for a file written by :func:`save_reference`."""
    return {"file": REFERENCE, "prompts": prompts, "outputs": "torch fp32", "padding_rows": "zeros"}


def load_reference(bundle: str | os.PathLike, manifest: dict[str, Any] | None = None) -> dict[str, np.ndarray]:
    manifest = manifest or read_manifest(bundle)
    name = (manifest.get("reference") or {}).get("file")
    if not name:
        raise EdgesegError(f"bundle {bundle} carries no reference outputs")
    with np.load(Path(bundle) / name, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


def bundle_tokenizer(bundle: str | os.PathLike, manifest: dict[str, Any] | None = None):
    """The tokenizer a bundle ships (its vocabulary file; a pruned one keeps ``num_merges`` merges),
    padding with the manifest's ``pad_id`` (0 when absent).

    Imported here, not at module level: ftfy and regex cost ~9 MB of RSS, which a process that answers
    every prompt from a prompt bank by its exact text never needs.
    """
    from edgeseg.tokenizer import Tokenizer

    manifest = manifest or read_manifest(bundle)
    spec = manifest["tokenizer"]
    try:
        return Tokenizer(Path(bundle) / spec["vocab"], context_length=int(manifest["context_length"]),
                         num_merges=spec.get("num_merges"), pad_id=int(spec.get("pad_id", 0)))
    except (OSError, ValueError, EOFError) as exc:
        raise EdgesegError(f"bundle {bundle}: cannot read its tokenizer vocabulary {spec['vocab']} ({exc})") from exc
