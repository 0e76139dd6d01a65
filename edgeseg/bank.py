"""Prompt banks: a bundle's encoder outputs for a known vocabulary, stored once and looked up.

A robot or an app that segments a fixed list of things runs the text encoder for the same prompts
over and over. A bank runs the bundle once per distinct prompt and stores, per prompt, its token
ids, padding mask and memory; a hit then costs a lookup instead of a forward pass.

The file is **safetensors** (an 8-byte little-endian header length, a JSON header, raw arrays):
no pickle, memory-mappable from Python (numpy) and C++ (``engines/src/bank.cpp``), readable by the
``safetensors`` package. Arrays, in file order (every multi-byte array starts 8-byte aligned)::

    input_ids    I64  [E, L]   the distinct token-id rows (the key: Python and C++ agree on ids)
    text_offsets I64  [P + 1]  UTF-8 byte offsets of the P prompt texts in text_bytes
    text_entry   I64  [P]      which entry each text tokenizes to (several texts may share one)
    text_lengths I64  [P]      each text's token count with SOT/EOT before truncation
    memory       F16|F32 [E, L, D]  the encoder's output, every position (padding rows included)
    mask         BOOL [E, L]   the encoder's mask (True = padding)
    text_bytes   U8   [B]      the texts, concatenated (exact-text fast path: no tokenization)

``__metadata__`` (strings, as safetensors requires) records ``format`` (``edgeseg-bank``),
``format_version``, what binds the bank to its bundle (:data:`BINDING`: the model's sha256, the
vocabulary's sha256, context length, pad id, semantics, output width), ``dtype``, the bundle's
``precision`` and ``encoder``, the counts, ``data_sha256`` (of every byte after the header),
``producer`` (what computed the memory), ``build_batch``, ``created`` and ``tools``.

A bank whose binding differs from the bundle's is refused with one line; so is a truncated file or
a header that does not describe the file exactly (:func:`open_bank`). No torch here.
"""

from __future__ import annotations

import hashlib
import json
import logging
import mmap
import os
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgeseg.bundle import model_files, now, tool_versions
from edgeseg.errors import EdgesegError
from edgeseg.fileio import atomic_path, check_output_folder

log = logging.getLogger(__name__)

FORMAT = "edgeseg-bank"
FORMAT_VERSION = 1
BANK_FILE = "bank.safetensors"
BACKEND = "bank"  # the backend (and target) of a bank-only bundle
DEFAULT_SEMANTICS = "efficientsam3"
DTYPES = {"float16": np.float16, "float32": np.float32}
#: safetensors dtype codes used here
CODES = {"I64": np.dtype("<i8"), "F16": np.dtype("<f2"), "F32": np.dtype("<f4"), "BOOL": np.dtype("bool"),
         "U8": np.dtype("u1")}
#: (name, dtype code or None for the memory dtype) in file order
LAYOUT = (("input_ids", "I64"), ("text_offsets", "I64"), ("text_entry", "I64"), ("text_lengths", "I64"),
          ("memory", None), ("mask", "BOOL"), ("text_bytes", "U8"))
#: header fields that must equal the bundle's for the bank to be served with it
BINDING = ("context_length", "vocab_sha256", "model_sha256", "pad_id", "semantics", "output_dim")
REQUIRED = ("format", "format_version", *BINDING, "dtype", "precision", "encoder", "prompts", "entries",
            "vocab_size", "data_sha256")
MAX_HEADER = 1 << 24  # 16 MiB: a bank header holds a few small fields
ALIGN = 64  # the data section starts on a 64-byte boundary
FLOAT16_MAX = 65504.0


# -- what a bank is bound to -----------------------------------------------------------------------
def semantics_name(value: Any) -> str:
    """The manifest's ``semantics`` as one string (absent: efficientsam3, edgeseg's default)."""
    if value is None:
        return DEFAULT_SEMANTICS
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("name"), str):
        return value["name"]
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def model_identity(files: dict[str, dict[str, Any]], model: str, model_data: str | None = None) -> str:
    """sha256 of the ``sha256sum``-style listing (``<sha256>  <name>\\n``, names sorted) of a model's files.

    The model files are the model, its ONNX external data, and every file of a Core ML package
    (``x.mlpackage/...``); an ONNX graph alone does not identify its weights.
    """
    names = {model, *([model_data] if model_data else [])}
    head = model.split("/", 1)[0]
    if head.endswith(".mlpackage"):
        names |= {name for name in files if name.startswith(head + "/")}
    missing = sorted(n for n in names if n not in files)
    if missing:
        raise EdgesegError(f"the bundle's manifest does not list its model file(s) {', '.join(missing)}")
    listing = "".join(f"{files[name]['sha256']}  {name}\n" for name in sorted(names))
    return hashlib.sha256(listing.encode("utf-8")).hexdigest()


def bundle_identity(manifest: dict[str, Any]) -> dict[str, str]:
    """What a bank built from (or served with) this bundle must record (:data:`BINDING`), as strings."""
    tokenizer = manifest["tokenizer"]
    files = manifest["files"]
    if manifest.get("backend") == BACKEND:  # a bank-only bundle: bound to the model its bank came from
        model = str((manifest.get("bank") or {}).get("model_sha256"))
    else:
        model = model_identity(files, manifest["model"], *model_files(manifest)[1:])
    vocab = files.get(tokenizer["vocab"], {}).get("sha256")
    if not vocab:
        raise EdgesegError(f"the bundle's manifest does not list its vocabulary {tokenizer['vocab']}")
    return {"context_length": str(int(manifest["context_length"])), "vocab_sha256": vocab, "model_sha256": model,
            "pad_id": str(int(tokenizer.get("pad_id", 0))), "semantics": semantics_name(manifest.get("semantics")),
            "output_dim": str(int(manifest["outputs"][0]["shape"][-1]))}


# -- the header ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BankHeader:
    """The bank's ``__metadata__``, typed. ``metadata`` keeps every string as stored."""

    metadata: dict[str, str]
    context_length: int
    output_dim: int
    pad_id: int
    vocab_size: int
    prompts: int
    entries: int
    dtype: str

    def __getitem__(self, key: str) -> str:
        return self.metadata[key]

    @property
    def binding(self) -> dict[str, str]:
        return {key: self.metadata[key] for key in BINDING}

    def describe(self) -> dict[str, Any]:
        """Every field, with numbers as numbers and ``tools`` as an object (``edgeseg bank info``)."""
        out: dict[str, Any] = dict(self.metadata)
        for key in ("format_version", "context_length", "output_dim", "pad_id", "vocab_size", "prompts", "entries",
                    "build_batch"):
            if key in out and out[key].lstrip("-").isdigit():
                out[key] = int(out[key])
        if "tools" in out:
            try:
                out["tools"] = json.loads(out["tools"])
            except ValueError:
                pass
        return out


def _parse_header(metadata: Any, where: str) -> BankHeader:
    if not isinstance(metadata, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                 for k, v in metadata.items()):
        raise EdgesegError(f"{where} is not an edgeseg bank: its __metadata__ must map strings to strings")
    if metadata.get("format") != FORMAT:
        raise EdgesegError(f"{where} is not an edgeseg bank (format {metadata.get('format')!r})")
    if metadata.get("format_version") != str(FORMAT_VERSION):
        raise EdgesegError(f"{where} has bank format version {metadata.get('format_version')}; this edgeseg reads "
                           f"{FORMAT_VERSION}")
    missing = [key for key in REQUIRED if key not in metadata]
    if missing:
        raise EdgesegError(f"{where} is malformed: its header lacks {', '.join(missing)}")
    numbers = {}
    for key in ("context_length", "output_dim", "pad_id", "vocab_size", "prompts", "entries"):
        text = metadata[key]
        if not text.isascii() or not text.isdigit() or len(text) > 12:
            raise EdgesegError(f"{where} is malformed: header field {key} = {text!r} is not a count")
        numbers[key] = int(text)
    if metadata["dtype"] not in DTYPES:
        raise EdgesegError(f"{where} is malformed: dtype {metadata['dtype']!r} (expected float16 or float32)")
    if numbers["context_length"] < 2 or numbers["output_dim"] < 1 or numbers["entries"] > numbers["prompts"]:
        raise EdgesegError(f"{where} is malformed: context length, output width or counts out of range")
    return BankHeader(dict(metadata), dtype=metadata["dtype"], **numbers)


# -- reading ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Tensor:
    dtype: np.dtype
    shape: tuple[int, ...]
    begin: int
    end: int


def _read_header(path: Path) -> tuple[dict[str, Any], int, int]:
    """The parsed JSON header, where the data starts and the file size; refuses truncated files."""
    if path.is_dir():
        raise EdgesegError(f"bank {path} is a directory, not a bank file (a bank-only bundle? give {path}/"
                           f"{BANK_FILE}, or serve the folder as a bundle)")
    if not path.is_file():
        raise EdgesegError(f"bank {path} does not exist" if not path.exists() else f"bank {path} is not a file")
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise EdgesegError(f"bank {path} is truncated or not a bank ({size} bytes)")
        (length,) = struct.unpack("<Q", head)
        if length > MAX_HEADER or 8 + length > size:
            raise EdgesegError(f"bank {path} is truncated or not a bank: its header claims {length} bytes, the file "
                               f"has {size}")
        text = fh.read(length)
    try:
        header = json.loads(text.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise EdgesegError(f"bank {path} has a corrupted header (not JSON: {exc})") from exc
    if not isinstance(header, dict):
        raise EdgesegError(f"bank {path} has a corrupted header (not a JSON object)")
    return header, 8 + length, size


def _layout(header: dict[str, Any], memory_dtype: str, data_start: int, size: int, where: str) -> dict[str, Tensor]:
    """Every tensor's dtype, shape and byte range, checked to tile the data section exactly."""
    names = {name for name in header if name != "__metadata__"}
    expected = [name for name, _ in LAYOUT]
    if names != set(expected):
        raise EdgesegError(f"{where} has a corrupted header: tensors {sorted(names)}, expected {expected}")
    tensors, offset = {}, 0
    for name, code in LAYOUT:
        code = code or {"float16": "F16", "float32": "F32"}[memory_dtype]
        info = header[name]
        if not isinstance(info, dict) or info.get("dtype") != code:
            raise EdgesegError(f"{where} has a corrupted header: {name} must be {code}")
        shape, offsets = info.get("shape"), info.get("data_offsets")
        if (not isinstance(shape, list) or not all(type(d) is int and 0 <= d < 1 << 40 for d in shape)
                or not isinstance(offsets, list) or len(offsets) != 2 or not all(type(o) is int for o in offsets)):
            raise EdgesegError(f"{where} has a corrupted header: {name} has a bad shape or data_offsets")
        dtype = CODES[code]
        nbytes = int(np.prod(shape, dtype=object)) * dtype.itemsize
        begin, end = offsets
        if begin != offset or end - begin != nbytes:
            raise EdgesegError(f"{where} has a lying header: {name}'s bytes [{begin}, {end}) do not match its "
                               f"shape {shape} or follow the previous tensor")
        if (data_start + begin) % dtype.itemsize:
            raise EdgesegError(f"{where} is malformed: {name} is not aligned to {dtype.itemsize} bytes")
        tensors[name] = Tensor(dtype, tuple(shape), begin, end)
        offset = end
    if data_start + offset != size:
        raise EdgesegError(f"{where} is truncated or has trailing bytes: the header describes "
                           f"{data_start + offset} bytes, the file has {size}")
    return tensors


def _check_shapes(head: BankHeader, tensors: dict[str, Tensor], where: str) -> None:
    n, p, length, dim = head.entries, head.prompts, head.context_length, head.output_dim
    expected = {"input_ids": (n, length), "text_offsets": (p + 1,), "text_entry": (p,), "text_lengths": (p,),
                "memory": (n, length, dim), "mask": (n, length)}
    for name, shape in expected.items():
        if tensors[name].shape != shape:
            raise EdgesegError(f"{where} has a lying header: {name} is {list(tensors[name].shape)}, the header's "
                               f"counts say {list(shape)}")


def _check_contents(head: BankHeader, arrays: dict[str, np.ndarray], where: str) -> None:
    """What the header cannot say by itself: ids in the vocabulary, booleans, text offsets, references."""
    ids, entry, offsets = arrays["input_ids"], arrays["text_entry"], arrays["text_offsets"]
    if ids.size and (ids.min() < 0 or ids.max() >= head.vocab_size):
        raise EdgesegError(f"{where} is corrupt: token ids outside the vocabulary of {head.vocab_size}")
    if arrays["mask"].size and arrays["mask"].view(np.uint8).max() > 1:
        raise EdgesegError(f"{where} is corrupt: mask values other than 0/1")
    if offsets[0] != 0 or offsets[-1] != arrays["text_bytes"].size or (np.diff(offsets) < 0).any():
        raise EdgesegError(f"{where} is corrupt: text offsets do not index text_bytes")
    if entry.size and (entry.min() < 0 or entry.max() >= head.entries or np.unique(entry).size != head.entries):
        raise EdgesegError(f"{where} is corrupt: text_entry does not map every text to one of {head.entries} entries")
    if (arrays["text_lengths"] < 2).any():
        raise EdgesegError(f"{where} is corrupt: a text has fewer than 2 tokens (SOT, EOT)")


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance over code points (the C++ runtime ranks suggestions the same way)."""
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


class Bank:
    """An open bank: arrays memory-mapped read-only, plus lookup tables by exact text and by token ids."""

    def __init__(self, path: Path, header: BankHeader, arrays: dict[str, np.ndarray]):
        self.path = path
        self.header = header
        self.ids = arrays["input_ids"]
        self.memory = arrays["memory"]
        self.mask = arrays["mask"]
        self._float32 = self.memory.dtype == np.float32
        self.text_entry = arrays["text_entry"]
        self.text_lengths = arrays["text_lengths"]
        data, offsets = arrays["text_bytes"].tobytes(), arrays["text_offsets"].tolist()
        try:
            self.texts = [data[offsets[i]:offsets[i + 1]].decode("utf-8") for i in range(header.prompts)]
        except UnicodeDecodeError as exc:
            raise EdgesegError(f"bank {path} is corrupt: a prompt text is not UTF-8") from exc
        #: exact text -> entry (the fast path: no tokenization)
        self.text_index = dict(zip(self.texts, self.text_entry.tolist()))
        #: token-id row (little-endian int64 bytes) -> entry
        self.id_index = {row.tobytes(): i for i, row in enumerate(self.ids)}
        if len(self.text_index) != header.prompts or len(self.id_index) != header.entries:
            raise EdgesegError(f"bank {path} is corrupt: it repeats a prompt text or a token-id row")
        length = header.context_length
        self.truncated_texts = frozenset(t for t, n in zip(self.texts, self.text_lengths.tolist()) if n > length)

    @property
    def entries(self) -> int:
        return self.header.entries

    @property
    def size(self) -> int:
        return self.path.stat().st_size

    def find_texts(self, texts: Sequence[str]) -> list[int]:
        """Entry of each text by exact string (-1 where the text is not stored)."""
        get = self.text_index.get
        return [get(text, -1) for text in texts]

    def find_ids(self, ids: np.ndarray) -> np.ndarray:
        """Entry of each token-id row ``[n, L]`` (-1 where the row is not in the bank)."""
        rows = np.ascontiguousarray(ids, dtype="<i8")
        get = self.id_index.get
        return np.array([get(row.tobytes(), -1) for row in rows], dtype=np.int64)

    def take(self, entries: Sequence[int] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(memory float32 ``[n, L, D]``, mask bool ``[n, L]``) of some entries: the stored values, exactly."""
        return self.memory[entries].astype(np.float32, copy=False), self.mask[entries]

    def rows(self, entries: list[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(ids, mask, memory float32) of some entries, read-only.

        One entry of a float32 bank is three views of the mapped file (no copy); otherwise the rows are
        gathered (and float16 widened) into new arrays, also marked read-only so that every all-hit
        answer behaves alike. ``np.array(x)`` gives a writable copy.
        """
        if len(entries) == 1:
            first = entries[0]
            memory = self.memory[first:first + 1]
            if self._float32:  # the mapping is read-only, and so are its views
                return self.ids[first:first + 1], self.mask[first:first + 1], memory
            out = (self.ids[first:first + 1], self.mask[first:first + 1], memory.astype(np.float32))
        else:
            index = np.array(entries, dtype=np.intp)
            out = (self.ids[index], self.mask[index], self.memory[index].astype(np.float32, copy=False))
        for array in out:
            array.setflags(write=False)
        return out

    def closest(self, text: str, count: int = 3) -> list[str]:
        """The stored prompts nearest to ``text`` (edit distance on lower-cased text, then storage order)."""
        query = text.strip().lower()
        order = sorted(range(len(self.texts)), key=lambda i: (edit_distance(query, self.texts[i].lower()), i))
        return [self.texts[i] for i in order[:count]]

    def unknown_message(self, unknown: Sequence[str], where: str) -> str:
        """One line for prompts a bank-only runtime cannot answer, naming the closest known prompts."""
        first = unknown[0]
        more = f" (and {len(unknown) - 1} more unknown prompt(s))" if len(unknown) > 1 else ""
        close = ", ".join(repr(t) for t in self.closest(first))
        return (f"prompt {first!r} is not in the bank of {where} ({self.header.prompts:,} known prompts; no encoder "
                f"to run it){more}; closest known prompts: {close}")

    def check_binding(self, identity: dict[str, str], bundle: str | os.PathLike) -> None:
        """Refuse a bank built for another bundle (first differing field of :data:`BINDING`)."""
        what = {"context_length": "context length", "vocab_sha256": "vocabulary (sha256)",
                "model_sha256": "model (sha256)", "pad_id": "pad id", "semantics": "padding semantics",
                "output_dim": "output width"}
        for key in BINDING:
            have, want = self.header[key], identity[key]
            if have != want:
                short = (lambda s: s[:12]) if key.endswith("sha256") else (lambda s: s)
                raise EdgesegError(f"bank {self.path} was built for another bundle: its {what[key]} is {short(have)}, "
                                   f"bundle {bundle} has {short(want)}; rebuild it with edgeseg bank build")


def open_bank(path: str | os.PathLike, verify_data: bool = True) -> Bank:
    """Open and check a bank file: header against the file size, then the arrays, then (optionally) sha256.

    Every check runs before any array is used; a truncated file, a header that does not describe
    the file exactly, or data that does not match ``data_sha256`` is one :class:`EdgesegError`.
    """
    path = Path(path)
    header, data_start, size = _read_header(path)
    head = _parse_header(header.get("__metadata__"), f"bank {path}")
    tensors = _layout(header, head.dtype, data_start, size, f"bank {path}")
    _check_shapes(head, tensors, f"bank {path}")
    with open(path, "rb") as fh:
        mapped = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
    if verify_data and hashlib.sha256(memoryview(mapped)[data_start:]).hexdigest() != head["data_sha256"]:
        raise EdgesegError(f"bank {path} is corrupt or was modified: its data does not match data_sha256")
    arrays = {name: np.frombuffer(mapped, dtype=t.dtype, count=(t.end - t.begin) // t.dtype.itemsize,
                                  offset=data_start + t.begin).reshape(t.shape) if t.end > t.begin
              else np.empty(t.shape, t.dtype) for name, t in tensors.items()}
    _check_contents(head, arrays, f"bank {path}")
    return Bank(path, head, arrays)


# -- writing ---------------------------------------------------------------------------------------
@dataclass
class BankSource:
    """What computes a bank: the bundle's binding, its tokenizer and an ids -> (memory, mask) function."""

    identity: dict[str, str]
    tokenizer: Any  # edgeseg.tokenizer.Tokenizer (callable: texts, context_length -> TokenizedBatch)
    encode_ids: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]
    encoder: str
    precision: str
    producer: str
    tools: dict[str, str] = field(default_factory=dict)


def write_safetensors(out: Path, arrays: Sequence[tuple[str, np.ndarray]], metadata: dict[str, str]) -> None:
    """A safetensors file (data section 64-byte aligned), written to a temporary sibling and renamed."""
    codes = {np.dtype(v): k for k, v in CODES.items()}
    header: dict[str, Any] = {"__metadata__": metadata}
    offset = 0
    for name, array in arrays:
        header[name] = {"dtype": codes[array.dtype.newbyteorder("<") if array.dtype.itemsize > 1 else array.dtype],
                        "shape": list(array.shape), "data_offsets": [offset, offset + array.nbytes]}
        offset += array.nbytes
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-(8 + len(text)) % ALIGN)
    with atomic_path(out) as tmp, open(tmp, "wb") as fh:
        fh.write(struct.pack("<Q", len(text)))
        fh.write(text)
        for _, array in arrays:
            fh.write(np.ascontiguousarray(array).tobytes())


def _encode_entries(ids: np.ndarray, source: BankSource, dtype: str, batch_size: int, dim: int,
                    progress: Callable[[int], None] | None) -> tuple[np.ndarray, np.ndarray]:
    """Run the encoder on every distinct id row, in batches of ``batch_size`` in entry order."""
    memory = np.empty((len(ids), ids.shape[1], dim), dtype=DTYPES[dtype])
    mask = np.empty(ids.shape, dtype=bool)
    for start in range(0, len(ids), batch_size):
        out_memory, out_mask = source.encode_ids(ids[start:start + batch_size])
        rows = slice(start, start + len(out_memory))
        if out_memory.shape != memory[rows].shape or out_mask.shape != mask[rows].shape:
            raise EdgesegError(f"the encoder returned memory {list(out_memory.shape)}, expected "
                               f"{list(memory[rows].shape)}")
        if dtype == "float16" and np.abs(out_memory).max(initial=0) > FLOAT16_MAX:
            raise EdgesegError("the encoder's memory exceeds the float16 range: build the bank with --dtype float32")
        memory[rows] = out_memory
        mask[rows] = out_mask
        if progress is not None:
            progress(len(out_memory))
    return memory, mask


def build_bank(out: str | os.PathLike, prompts: Sequence[str], source: BankSource, dtype: str = "float16",
               batch_size: int = 8, progress: Callable[[int], None] | None = None) -> BankHeader:
    """Tokenize ``prompts``, run the encoder once per distinct id row and write the bank file ``out``.

    Entries are the distinct token-id rows in order of first appearance; every distinct text is
    kept (several may share an entry). ``progress`` receives the number of entries encoded.
    """
    out = Path(out)
    if dtype not in DTYPES:
        raise EdgesegError(f"--dtype {dtype!r}: choose float16 or float32")
    if out.is_dir():
        raise EdgesegError(f"{out} is a directory: give a bank file name (e.g. {out}/{BANK_FILE}), or --bank-only "
                           "to write a bank-only bundle folder")
    check_output_folder(out)
    texts = list(dict.fromkeys(prompts))
    if not texts:
        raise EdgesegError("no prompts to put in the bank")
    try:
        encoded = [t.encode("utf-8") for t in texts]
    except UnicodeEncodeError as exc:
        raise EdgesegError(f"a prompt is not valid Unicode text ({exc})") from exc
    length = int(source.identity["context_length"])
    tokens = source.tokenizer(texts, length)
    rows: dict[bytes, int] = {}
    text_entry = np.array([rows.setdefault(row.tobytes(), len(rows)) for row in tokens.ids], dtype=np.int64)
    first = np.unique(text_entry, return_index=True)[1]
    ids = np.ascontiguousarray(tokens.ids[first], dtype=np.int64)
    memory, mask = _encode_entries(ids, source, dtype, batch_size, int(source.identity["output_dim"]), progress)
    data = [("input_ids", ids), ("text_offsets", np.cumsum([0, *map(len, encoded)], dtype=np.int64)),
            ("text_entry", text_entry), ("text_lengths", tokens.lengths.astype(np.int64)), ("memory", memory),
            ("mask", mask), ("text_bytes", np.frombuffer(b"".join(encoded), dtype=np.uint8))]
    digest = hashlib.sha256()
    for _, array in data:
        digest.update(np.ascontiguousarray(array).tobytes())
    metadata = {"format": FORMAT, "format_version": str(FORMAT_VERSION), **source.identity, "dtype": dtype,
                "precision": source.precision, "encoder": source.encoder, "prompts": str(len(texts)),
                "entries": str(len(ids)), "vocab_size": str(int(source.tokenizer.vocab_size)),
                "data_sha256": digest.hexdigest(), "producer": source.producer, "build_batch": str(batch_size),
                "created": now(), "tools": json.dumps(source.tools or tool_versions("numpy"), sort_keys=True)}
    write_safetensors(out, data, metadata)
    log.info("bank %s: %d prompts, %d entries, %s", out, len(texts), len(ids), dtype)
    return _parse_header(metadata, f"bank {out}")


def bundle_bank(bundle: str | os.PathLike, manifest: dict[str, Any], bank: str | os.PathLike | None = None
                ) -> Bank | None:
    """The bank served with a bundle: the file ``bank`` if given (sha256-checked), else the one the bundle
    ships (manifest ``bank``, already verified with the bundle's files), else None. Refused unless bound
    to this bundle."""
    entry = manifest.get("bank")
    if bank is None and not entry:
        if manifest.get("backend") == BACKEND:
            raise EdgesegError(f"bundle {bundle} is bank-only but its manifest names no bank")
        return None
    if bank is None:
        name = entry.get("file") if isinstance(entry, dict) else None
        if not isinstance(name, str) or name not in manifest["files"]:
            raise EdgesegError(f"bundle {bundle}: its manifest's bank {name!r} is not one of its listed files")
        opened = open_bank(Path(bundle) / name, verify_data=False)
    else:
        opened = open_bank(bank)
    opened.check_binding(bundle_identity(manifest), bundle)
    return opened
