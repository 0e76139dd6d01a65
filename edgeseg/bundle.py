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
import zipfile
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from edgeseg import __version__, bundlecheck
from edgeseg.bundlecheck import DIR_FIELDS, FILE_FIELDS, FORMAT, FORMAT_VERSION, MANIFEST, printable  # noqa: F401
from edgeseg.errors import EdgesegError
from edgeseg.fileio import atomic_path, check_output_target, sha256_file

REFERENCE = "reference.npz"


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
    out = check_output_target(out, directory=True)
    if out.is_dir() and not (out / MANIFEST).is_file() and any(out.iterdir()):
        raise EdgesegError(f"{printable(out)} exists and is not a bundle: refusing to replace it")
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


def model_files(manifest: dict[str, Any]) -> list[str]:
    """The model file and, for ONNX with external data, its weights file."""
    return [manifest["model"], *([manifest["model_data"]] if manifest.get("model_data") else [])]


def onnx_for_reading(src: Path, manifest: dict[str, Any], work: Path) -> Path:
    """The bundle's ONNX model as the ``onnx`` package can load it: in place, or copied into ``work``
    when a file of it has several hard links (``onnx`` refuses that external data as a possible attack)."""
    model = src / manifest["model"]
    names = [manifest["model"], *bundlecheck.onnx_external_data(model, manifest["model"])]
    if all((src / name).stat().st_nlink == 1 for name in names):
        return model
    for name in names:
        (work / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src / name, work / name)
    return work / manifest["model"]


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
    bad = _non_finite(manifest)
    if bad is not None:
        raise EdgesegError(f"refusing to write a bundle whose {bad[0]} is {bad[1]}: the verification figures are not "
                           "finite (the model produces NaN or Inf?)")
    try:
        bundlecheck.check_manifest(manifest, "the new manifest")
    except bundlecheck.BundleError as exc:  # a writer broke the contract: a bug, not a user error
        raise ValueError(f"finalize refuses to write a manifest the loader would refuse: {exc}") from exc
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    return manifest


def _non_finite(value: Any, path: str = "manifest") -> tuple[str, float] | None:
    """The first NaN/Inf float in a manifest (path, value), or None."""
    if isinstance(value, float) and not np.isfinite(value):
        return path, value
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, (list, tuple)) else ()
    for key, item in items:
        found = _non_finite(item, f"{path}.{key}" if isinstance(value, dict) else f"{path}[{key}]")
        if found:
            return found
    return None


def read_manifest(bundle: str | os.PathLike) -> dict[str, Any]:
    """Parse and check ``manifest.json`` (limits, schema, file names: :mod:`edgeseg.bundlecheck`); no hashing."""
    try:
        return bundlecheck.read_manifest(bundle)
    except bundlecheck.BundleError as exc:
        raise EdgesegError(str(exc)) from None


def verify_bundle(bundle: str | os.PathLike) -> dict[str, Any]:
    """:func:`read_manifest`, then every listed file's size and sha256 (and ONNX external data, package
    folders: :func:`edgeseg.bundlecheck.verify_bundle`); returns the manifest."""
    try:
        return bundlecheck.verify_bundle(bundle)
    except bundlecheck.BundleError as exc:
        raise EdgesegError(str(exc)) from None


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


#: what a bundle's reference.npz must hold: name -> (dtype kinds, rank); at most MAX_REFERENCE_BYTES in all
REFERENCE_ARRAYS = {"prompts": ("U", 1), "input_ids": ("i", 2), "memory": ("f", 3), "mask": ("b", 2)}
MAX_REFERENCE_BYTES = 256 << 20


def _npz_headers(path: Path) -> dict[str, tuple[np.dtype, tuple[int, ...]]]:
    """dtype and shape of every array in an .npz, read from the .npy headers (nothing is loaded)."""
    headers = {}
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            with archive.open(info) as fh:
                version = np.lib.format.read_magic(fh)
                read = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                    np.lib.format.read_array_header_2_0
                shape, _, dtype = read(fh)
            headers[info.filename.removesuffix(".npy")] = (dtype, shape)
    return headers


def load_reference(bundle: str | os.PathLike, manifest: dict[str, Any] | None = None) -> dict[str, np.ndarray]:
    """The reference prompts, ids, FP32 memory and mask of a bundle, checked against its manifest."""
    manifest = manifest or read_manifest(bundle)
    name = (manifest.get("reference") or {}).get("file")
    if not name:
        raise EdgesegError(f"bundle {printable(bundle)} carries no reference outputs")
    path = Path(bundle) / name
    try:
        headers = _npz_headers(path)
        _check_reference(headers, manifest)
        with np.load(path, allow_pickle=False) as data:
            reference = {k: data[k] for k in REFERENCE_ARRAYS}
    except EdgesegError as exc:
        raise EdgesegError(f"bundle {printable(bundle)}: {name} {exc}") from None
    except (OSError, ValueError, EOFError, KeyError, zlib.error, zipfile.BadZipFile) as exc:
        raise EdgesegError(f"bundle {printable(bundle)}: {name} is not a readable reference file "
                           f"({printable(exc, 120)})") from None
    if not np.isfinite(reference["memory"]).all():
        raise EdgesegError(f"bundle {printable(bundle)}: {name} holds non-finite reference outputs")
    return reference


def _check_reference(headers: dict[str, tuple[np.dtype, tuple[int, ...]]], manifest: dict[str, Any]) -> None:
    length, dim = manifest["context_length"], manifest["outputs"][0]["shape"][2]
    total = 0
    for key, (kinds, rank) in REFERENCE_ARRAYS.items():
        if key not in headers:
            raise EdgesegError(f"lacks the array {key!r}")
        dtype, shape = headers[key]
        if dtype.kind not in kinds or len(shape) != rank or dtype.hasobject:
            raise EdgesegError(f"holds {key} as {dtype} {list(shape)}, not a {rank}-d {kinds!r}-kind array")
        total += int(np.prod(shape, dtype=np.float64)) * dtype.itemsize
    count = headers["prompts"][1][0]
    wanted = {"input_ids": (count, length), "memory": (count, length, dim), "mask": (count, length)}
    for key, shape in wanted.items():
        if tuple(headers[key][1]) != shape:
            raise EdgesegError(f"holds {key} of shape {list(headers[key][1])}; the manifest says {list(shape)}")
    if total > MAX_REFERENCE_BYTES:
        raise EdgesegError(f"would take {total / 2**20:.0f} MiB in memory; the limit is "
                           f"{MAX_REFERENCE_BYTES >> 20} MiB")


def bundle_tokenizer(bundle: str | os.PathLike, manifest: dict[str, Any] | None = None):
    """The tokenizer a bundle ships (its vocabulary file; a pruned one keeps ``num_merges`` merges),
    padding with the manifest's ``pad_id`` (0 when absent).

    The ids the manifest records (``sot_id``, ``eot_id``, ``vocab_size``) must be the vocabulary's.
    Imported here, not at module level: ftfy and regex cost ~9 MB of RSS, which a process that answers
    every prompt from a prompt bank by its exact text never needs.
    """
    from edgeseg.tokenizer import Tokenizer

    manifest = manifest or read_manifest(bundle)
    spec = manifest["tokenizer"]
    try:
        tokenizer = Tokenizer(Path(bundle) / spec["vocab"], context_length=manifest["context_length"],
                              num_merges=spec.get("num_merges"), pad_id=int(spec.get("pad_id", 0)))
    except (OSError, ValueError, EOFError, zlib.error) as exc:
        raise EdgesegError(f"bundle {printable(bundle)}: cannot read its tokenizer vocabulary "
                           f"{printable(spec['vocab'])} ({printable(exc, 160)})") from None
    for key in ("sot_id", "eot_id", "vocab_size"):
        if key in spec and spec[key] != getattr(tokenizer, key):
            raise EdgesegError(f"bundle {printable(bundle)}: tokenizer.{key} is {spec[key]} but its vocabulary "
                               f"{printable(spec['vocab'])} gives {getattr(tokenizer, key)}")
    return tokenizer
