"""The rules every reader of a bundle applies before it uses anything in it (standard library only).

This module is the one implementation of "is this bundle what its manifest says": edgeseg's own
loader (:mod:`edgeseg.bundle`, used by the runtime, the CLI, quantize and the targets) calls it, and
it is copied, with ``manifest.schema.json``, beside ``build_engine.py`` into Jetson bundles, where
neither edgeseg nor jsonschema may be installed. The C++ runtime (``engines/src/bundle.cpp``)
applies the same rules.

1. ``manifest.json`` is a regular file inside the bundle, at most :data:`MAX_MANIFEST_BYTES`, nested
   at most :data:`MAX_DEPTH` deep, strict JSON (no duplicate keys, no NaN/Infinity, UTF-8), and
   valid against ``manifest.schema.json`` (with ``jsonschema`` when it is installed, else with the
   small validator below, which reads the same schema); integers are never floats or booleans.
2. Every field that names a file (:data:`FILE_FIELDS`, :data:`DIR_FIELDS`) holds a plain relative
   path (no absolute path, no ``..``, no backslash or control character) and the file is listed
   under ``files``; no two listed names differ only by case or Unicode normalization.
3. :func:`verify_bundle` also checks every listed file: it resolves (through symlinks) to a regular
   file inside the bundle, with the listed size and sha256; every external-data file an ONNX model
   refers to is listed (so it was verified); every file inside a listed folder (a Core ML package)
   is listed.

Any violation raises :class:`BundleError` with one line naming the field or file.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import re
import stat
import unicodedata
from pathlib import Path

FORMAT = "edgeseg-bundle"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SCHEMA_FILE = "manifest.schema.json"
MAX_MANIFEST_BYTES = 1 << 20
MAX_DEPTH = 32
MAX_NAME = 4096

#: Fields that name a file of the bundle: (path, condition). ``*`` in a path matches every item of a
#: list or value of an object. The file must be listed under ``files`` whenever the field is set and
#: the condition field (if any) is true; add new file-bearing fields here (a prompt bank, ...).
FILE_FIELDS: tuple[tuple[tuple[str, ...], tuple[str, ...] | None], ...] = (
    (("model",), None),
    (("model_data",), None),
    (("tokenizer", "vocab"), None),
    (("reference", "file"), None),
    (("engine", "onnx"), None),
    (("engine", "file"), ("engine", "built")),  # model.engine exists once build_engine.py has built it
    (("bank", "file"), None),
    (("banks", "*", "file"), None),
)
#: Fields that name a folder of the bundle (every file inside it must be listed).
DIR_FIELDS: tuple[tuple[str, ...], ...] = (("coreml", "package"),)

_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")
_TOKENS = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]')


class BundleError(Exception):
    """A bundle that must not be used, with a one-line reason."""


def printable(text: object, limit: int = 300) -> str:
    """``text`` on one line: control, line-separator, bidi and lone-surrogate characters escaped."""
    text = str(text)
    if len(text) > limit:
        text = text[:limit] + f"...(+{len(text) - limit} chars)"
    return _UNPRINTABLE.sub(lambda m: ascii(m.group(0))[1:-1], text)


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


# -- strict, bounded JSON --------------------------------------------------------------------------
def _no_duplicates(pairs):
    seen = {}
    for key, value in pairs:
        if key in seen:
            raise ValueError(f"duplicate key {printable(repr(key))}")
        seen[key] = value
    return seen


def _finite(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise ValueError(f"number {printable(text, 40)} is out of range")
    return value


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


def parse_json(text: str, what: str, max_depth: int = MAX_DEPTH):
    """Strict JSON: nesting at most ``max_depth``, no duplicate keys, no NaN/Infinity/overflowing numbers."""
    depth = deepest = 0
    for token in _TOKENS.finditer(text):
        kind = token.group(0)
        if kind in "[{":
            depth += 1
            deepest = max(deepest, depth)
            if depth > max_depth:
                raise BundleError(f"{what} nests deeper than {max_depth} levels")
        elif kind in "]}":
            depth -= 1
    try:
        return json.loads(text, object_pairs_hook=_no_duplicates, parse_float=_finite,
                          parse_constant=_refuse_constant)
    except ValueError as exc:  # json.JSONDecodeError too
        raise BundleError(f"{what} is not valid JSON ({printable(exc, 120)})") from None


def _inside(root: str, path: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def read_bounded(path: str | os.PathLike, limit: int, shown: str) -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes (never a FIFO or device: nothing blocks)."""
    try:
        info = os.stat(path)
        if not stat.S_ISREG(info.st_mode):
            raise BundleError(f"{shown} is not a regular file")
        if info.st_size > limit:
            raise BundleError(f"{shown} is {info.st_size} bytes; the limit is {limit}")
        with open(path, "rb") as fh:
            data = fh.read(limit + 1)
    except OSError as exc:
        raise BundleError(f"cannot read {shown}: {exc.strerror}") from None
    if len(data) > limit:
        raise BundleError(f"{shown} is larger than {limit} bytes")
    return data


def read_json_file(root: str, name: str, shown: str, limit: int = MAX_MANIFEST_BYTES):
    """A JSON file of the bundle (``root`` is its real path; ``shown`` names it in messages), with the
    limits of :func:`parse_json`."""
    path = os.path.join(root, name)
    if not os.path.lexists(path):
        raise BundleError(f"{shown} does not exist: this is not an edgeseg bundle")
    real = os.path.realpath(path)
    if not _inside(root, real):
        raise BundleError(f"{shown} is a link that leaves the bundle")
    data = read_bounded(real, limit, shown)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise BundleError(f"{shown} is not valid JSON (not UTF-8 text)") from None
    return parse_json(text, shown)


# -- the schema -----------------------------------------------------------------------------------
def load_schema() -> dict:
    """``manifest.schema.json`` beside this file (in the package, or in a Jetson bundle)."""
    return json.loads(Path(__file__).with_name(SCHEMA_FILE).read_text(encoding="utf-8"))


_TYPES = {"object": dict, "array": list, "string": str, "boolean": bool, "null": type(None)}


def _is_type(value, name: str) -> bool:
    if name == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if name == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, _TYPES[name])


def _same(a, b) -> bool:
    return type(a) is type(b) and a == b if isinstance(a, bool) or isinstance(b, bool) else a == b


def _kind(value) -> str:
    for name in ("null", "boolean", "integer", "number", "string", "array", "object"):
        if _is_type(value, name):
            return name
    return type(value).__name__


def describe(keyword: str, rule, value) -> str:
    """One schema violation in words (both validators report through this)."""
    shown = printable(json.dumps(value) if not isinstance(value, (dict, list)) else _kind(value), 60)
    if keyword == "type":
        names = rule if isinstance(rule, list) else [rule]
        return f"must be {' or '.join(names)}, not {_kind(value)}"
    if keyword in ("const", "enum"):
        allowed = [rule] if keyword == "const" else rule
        return f"must be {' or '.join(json.dumps(a) for a in allowed)}, not {shown}"
    if keyword == "required":
        missing = [k for k in rule if k not in value]
        return f"lacks required field(s): {', '.join(missing)}"
    if keyword == "additionalProperties":
        return "has a field that is not allowed here"
    if keyword in ("minimum", "maximum"):
        return f"{shown} is out of range ({'at least' if keyword == 'minimum' else 'at most'} {rule})"
    if keyword in ("minItems", "maxItems", "minLength", "maxLength", "maxProperties"):
        return f"has the wrong size ({keyword} {rule})"
    return f"{shown} is malformed ({keyword})"


def _violation(schema: dict, value, root: dict, path: tuple):
    """The first violation of ``schema`` by ``value``: (path, keyword, rule, value), or None."""
    if "$ref" in schema:
        return _violation(root["$defs"][schema["$ref"].rsplit("/", 1)[-1]], value, root, path)
    kinds = schema.get("type")
    if kinds is not None and not any(_is_type(value, k) for k in (kinds if isinstance(kinds, list) else [kinds])):
        return path, "type", kinds, value
    if "const" in schema and not _same(value, schema["const"]):
        return path, "const", schema["const"], value
    if "enum" in schema and not any(_same(value, a) for a in schema["enum"]):
        return path, "enum", schema["enum"], value
    if _is_type(value, "number"):
        for keyword, bad in (("minimum", lambda r: value < r), ("maximum", lambda r: value > r)):
            if keyword in schema and bad(schema[keyword]):
                return path, keyword, schema[keyword], value
    if isinstance(value, str):
        for keyword, bad in (("minLength", lambda r: len(value) < r), ("maxLength", lambda r: len(value) > r),
                             ("pattern", lambda r: re.search(r, value) is None)):
            if keyword in schema and bad(schema[keyword]):
                return path, keyword, schema[keyword], value
    if isinstance(value, list):
        for keyword, bad in (("minItems", lambda r: len(value) < r), ("maxItems", lambda r: len(value) > r)):
            if keyword in schema and bad(schema[keyword]):
                return path, keyword, schema[keyword], value
        for index, item in enumerate(value if "items" in schema else ()):
            found = _violation(schema["items"], item, root, (*path, index))
            if found:
                return found
    if isinstance(value, dict):
        return _object_violation(schema, value, root, path)
    return None


def _object_violation(schema: dict, value: dict, root: dict, path: tuple):
    if "required" in schema and any(k not in value for k in schema["required"]):
        return path, "required", schema["required"], value
    if "maxProperties" in schema and len(value) > schema["maxProperties"]:
        return path, "maxProperties", schema["maxProperties"], value
    properties = schema.get("properties", {})
    for key, item in value.items():
        names = schema.get("propertyNames")
        found = _violation(names, key, root, (*path, key)) if names else None
        extra = schema.get("additionalProperties", True)
        if found is None and key in properties:
            found = _violation(properties[key], item, root, (*path, key))
        elif found is None and extra is False:
            found = (path, "additionalProperties", False, value)  # where jsonschema reports it: the object
        elif found is None and isinstance(extra, dict):
            found = _violation(extra, item, root, (*path, key))
        if found:
            return found
    return None


def _jsonschema_violation(schema: dict, manifest: dict):
    """The first violation found by ``jsonschema`` (integers must be ints, as in the built-in validator)."""
    import jsonschema

    base = jsonschema.Draft202012Validator
    checker = base.TYPE_CHECKER.redefine("integer", lambda _, value: _is_type(value, "integer"))
    validator = jsonschema.validators.extend(base, type_checker=checker)(schema)
    error = next(iter(validator.iter_errors(manifest)), None)
    if error is None:
        return None
    return tuple(error.absolute_path), str(error.validator), error.validator_value, error.instance


def schema_violation(manifest: dict, schema: dict | None = None, use_jsonschema: bool | None = None):
    """``(path, keyword, rule, value)`` of the first violation of the manifest schema, or None."""
    schema = schema or load_schema()
    if use_jsonschema is None:
        try:
            import jsonschema  # noqa: F401
            use_jsonschema = True
        except ImportError:
            use_jsonschema = False
    return _jsonschema_violation(schema, manifest) if use_jsonschema else _violation(schema, manifest, schema, ())


def dotted(path) -> str:
    return ".".join(str(p) for p in path) or "(top level)"


# -- names ----------------------------------------------------------------------------------------
def is_plain_name(name) -> bool:
    """A relative POSIX path without ``.``/``..``/empty parts, backslashes or control characters."""
    if not isinstance(name, str) or not name or len(name) > MAX_NAME or "\\" in name or _UNPRINTABLE.search(name):
        return False
    return all(part not in ("", ".", "..") and len(part.encode("utf-8", "surrogatepass")) <= 255
               for part in name.split("/"))


def field_values(manifest: dict, path: tuple[str, ...], where: tuple = ()):
    """``(path, value)`` of every value at ``path`` (``*`` matches every item)."""
    if not path:
        yield where, manifest
        return
    head, rest = path[0], path[1:]
    if head == "*":
        items = manifest.items() if isinstance(manifest, dict) else enumerate(manifest) \
            if isinstance(manifest, list) else ()
        for key, value in items:
            yield from field_values(value, rest, (*where, key))
    elif isinstance(manifest, dict) and head in manifest and manifest[head] is not None:
        yield from field_values(manifest[head], rest, (*where, head))


def _not_plain(where: str, field: str, name) -> BundleError:
    return BundleError(f"{where}: {field}: {printable(repr(name))} points outside the bundle or is not a plain "
                       "relative path")


def check_names(manifest: dict, where: str) -> None:
    """Rule 2 of the module docs."""
    files = manifest["files"]
    seen: dict[str, str] = {}
    for name in files:
        if not is_plain_name(name):
            raise _not_plain(where, "files", name)
        key = unicodedata.normalize("NFC", name).casefold()
        if key in seen:
            raise BundleError(f"{where}: files lists {printable(repr(seen[key]))} and {printable(repr(name))}, "
                              "one file on case-insensitive file systems")
        seen[key] = name
    for path, condition in FILE_FIELDS:
        needed = condition is None or any(v is True for _, v in field_values(manifest, condition))
        for at, name in field_values(manifest, path):
            if not is_plain_name(name):
                raise _not_plain(where, dotted(at), name)
            if needed and name not in files:
                raise BundleError(f"{where}: {dotted(at)} names {printable(name)}, which 'files' does not list "
                                  "(every file a bundle uses must be listed with its sha256)")
    for path in DIR_FIELDS:
        for at, name in field_values(manifest, path):
            if not is_plain_name(name):
                raise _not_plain(where, dotted(at), name)


def check_shapes(manifest: dict, where: str) -> None:
    """inputs/outputs agree with ``context_length``: ids [batch, L], memory [batch, L, D], mask [batch, L]."""
    length = manifest["context_length"]
    shapes = [entry["shape"] for entry in (*manifest["inputs"], *manifest["outputs"])]
    wanted = [2, 3, 2]
    for index, (shape, rank) in enumerate(zip(shapes, wanted)):
        field = "inputs[0]" if index == 0 else f"outputs[{index - 1}]"
        if len(shape) != rank or shape[1] != length or (rank == 3 and not isinstance(shape[2], int)):
            raise BundleError(f"{where}: {field}.shape {printable(json.dumps(shape), 80)} does not agree with "
                              f"context_length {length}")


def check_manifest(manifest, where: str, use_jsonschema: bool | None = None) -> dict:
    """Rules 1 (format, version, schema) and 2 for a parsed manifest; returns it."""
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BundleError(f"{where} is not an edgeseg bundle manifest")
    version = manifest.get("format_version")
    if type(version) is not int or version != FORMAT_VERSION:
        raise BundleError(f"{where} has bundle format version {printable(json.dumps(version), 40)}; "
                          f"this edgeseg reads {FORMAT_VERSION}")
    found = schema_violation(manifest, use_jsonschema=use_jsonschema)
    if found is not None:
        path, keyword, rule, value = found
        if keyword == "required" and not path:
            raise BundleError(f"{where} {describe(keyword, rule, value)}")
        raise BundleError(f"{where}: field {printable(dotted(path), 120)} {describe(keyword, rule, value)}")
    check_names(manifest, where)
    check_shapes(manifest, where)
    return manifest


def read_manifest(bundle: str | os.PathLike, use_jsonschema: bool | None = None) -> dict:
    """Rules 1 and 2: the parsed, schema-checked manifest of ``bundle``; no file is hashed."""
    if not os.path.isdir(bundle):
        raise BundleError(f"bundle {printable(bundle)} does not exist or is not a directory")
    shown = printable(os.path.join(str(bundle), MANIFEST))
    manifest = read_json_file(os.path.realpath(bundle), MANIFEST, shown)
    return check_manifest(manifest, shown, use_jsonschema)


# -- verification ---------------------------------------------------------------------------------
def _listed_file(root: str, name: str, bundle) -> tuple[str, os.stat_result]:
    real = os.path.realpath(os.path.join(root, name))
    if not _inside(root, real):
        raise BundleError(f"bundle {printable(bundle)}: {printable(name)} is a link that leaves the bundle")
    try:
        info = os.stat(real)
    except FileNotFoundError:
        raise BundleError(f"bundle {printable(bundle)} is incomplete: {printable(name)} is missing") from None
    except OSError as exc:
        raise BundleError(f"bundle {printable(bundle)}: cannot read {printable(name)} ({exc.strerror})") from None
    if not stat.S_ISREG(info.st_mode):
        raise BundleError(f"bundle {printable(bundle)}: {printable(name)} is not a regular file")
    return real, info


def verify_files(bundle: str | os.PathLike, manifest: dict) -> None:
    """Rule 3 for the listed files: inside the bundle, regular, the listed size and sha256."""
    root = os.path.realpath(bundle)
    for name, entry in manifest["files"].items():
        real, info = _listed_file(root, name, bundle)
        try:
            same = info.st_size == entry["bytes"] and sha256_file(real) == entry["sha256"]
        except OSError as exc:
            raise BundleError(f"bundle {printable(bundle)}: cannot read {printable(name)} ({exc.strerror})") from None
        if not same:
            raise BundleError(f"bundle {printable(bundle)} is corrupt or was modified: {printable(name)} does not "
                              "match its sha256")


def check_folders(bundle: str | os.PathLike, manifest: dict) -> None:
    """Rule 3 for :data:`DIR_FIELDS`: a real folder inside the bundle whose every file is listed."""
    root = os.path.realpath(bundle)
    for path in DIR_FIELDS:
        for at, name in field_values(manifest, path):
            real = os.path.realpath(os.path.join(root, name))
            if not _inside(root, real) or not os.path.isdir(real):
                raise BundleError(f"bundle {printable(bundle)}: {dotted(at)} {printable(name)} is not a folder "
                                  "inside the bundle")
            for folder, dirs, names in os.walk(real):
                for entry in [*names, *(d for d in dirs if os.path.islink(os.path.join(folder, d)))]:
                    rel = os.path.relpath(os.path.join(folder, entry), root).replace(os.sep, "/")
                    if rel not in manifest["files"]:
                        raise BundleError(f"bundle {printable(bundle)}: {printable(rel)} (inside {dotted(at)}) is "
                                          "not listed under files")


def verify_bundle(bundle: str | os.PathLike, use_jsonschema: bool | None = None) -> dict:
    """All three rules: returns the manifest of a bundle whose every used file is verified."""
    manifest = read_manifest(bundle, use_jsonschema)
    verify_files(bundle, manifest)
    check_folders(bundle, manifest)
    root = os.path.realpath(bundle)
    for name in manifest["files"]:
        if name.endswith(".onnx"):
            for location in onnx_external_data(os.path.join(root, name), name):
                if not is_plain_name(location) or location not in manifest["files"]:
                    raise BundleError(f"bundle {printable(bundle)}: {printable(name)} reads its weights from "
                                      f"{printable(repr(location))}, which 'files' does not list")
    return manifest


# -- ONNX external data (protobuf wire format, no onnx package) -------------------------------------
# field numbers from onnx.proto: where TensorProtos (and subgraphs holding more of them) live
_MODEL = {7: "graph", 25: "function", 20: "training"}
_TRAINING = {1: "graph", 2: "graph"}
_GRAPH = {1: "node", 5: "tensor", 15: "sparse"}
_FUNCTION = {7: "node"}
_NODE = {5: "attribute"}
_ATTRIBUTE = {5: "tensor", 6: "graph", 10: "tensor", 11: "graph", 22: "sparse", 23: "sparse"}
_SPARSE = {1: "tensor", 2: "tensor"}
_MESSAGES = {"model": _MODEL, "training": _TRAINING, "graph": _GRAPH, "function": _FUNCTION, "node": _NODE,
             "attribute": _ATTRIBUTE, "sparse": _SPARSE}


def _varint(data, pos: int, end: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= end or shift > 63:
            raise ValueError("truncated varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value, pos


def _skip_group(data, pos: int, end: int, field: int) -> int:
    """Position after the end-group tag of ``field`` (groups are obsolete, but parsers skip them)."""
    while True:
        key, pos = _varint(data, pos, end)
        if key & 7 == 4:
            if key >> 3 != field:
                raise ValueError("mismatched end group")
            return pos
        pos = _skip(data, pos, end, key)


def _skip(data, pos: int, end: int, key: int) -> int:
    wire = key & 7
    if wire == 0:
        return _varint(data, pos, end)[1]
    if wire == 2:
        size, pos = _varint(data, pos, end)
        stop = pos + size
    elif wire in (1, 5):
        stop = pos + (8 if wire == 1 else 4)
    elif wire == 3:
        return _skip_group(data, pos, end, key >> 3)
    else:
        raise ValueError(f"wire type {wire}")
    if stop > end:
        raise ValueError("truncated field")
    return stop


def _fields(data, pos: int, end: int):
    """``(field, wire type, start, stop)`` of every field of the message in ``data[pos:end]``."""
    while pos < end:
        key, pos = _varint(data, pos, end)
        stop = _skip(data, pos, end, key)
        if key & 7 == 2:
            pos = _varint(data, pos, end)[1]  # past the length: start of the payload
        yield key >> 3, key & 7, pos, stop
        pos = stop


def _tensor_locations(data, pos: int, end: int) -> list[str]:
    """Every external-data ``location`` of a TensorProto (a parser keeps the last one; all are checked)."""
    found = []
    for field, wire, start, stop in _fields(data, pos, end):
        if field == 13 and wire == 2:  # external_data: StringStringEntryProto {key = 1, value = 2}
            entry = {f: bytes(data[a:b]) for f, w, a, b in _fields(data, start, stop) if w == 2}
            if entry.get(1) == b"location":
                found.append(entry.get(2, b"").decode("utf-8", "surrogateescape"))
    return found


def _walk(data, kind: str, pos: int, end: int, depth: int, found: list[str]) -> None:
    if depth > 64:
        raise BundleError("its subgraphs nest more than 64 levels deep")
    children = _MESSAGES[kind]
    for field, wire, start, stop in _fields(data, pos, end):
        child = children.get(field)
        if child is None or wire != 2:
            continue
        if child == "tensor":
            found.extend(_tensor_locations(data, start, stop))
        else:
            _walk(data, child, start, stop, depth + 1, found)


def onnx_external_data(path: str | os.PathLike, name: str | None = None) -> list[str]:
    """The ``location`` of every tensor of an ONNX model stored as external data (sorted, unique).

    A file that is not a protobuf message at all gives ``[]``: no ONNX parser reads it (the backend
    refuses it), so it cannot make one read another file.
    """
    found: list[str] = []
    try:
        with open(path, "rb") as fh:
            if os.fstat(fh.fileno()).st_size == 0:
                return []
            with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as data:
                _walk(data, "model", 0, len(data), 0, found)
    except (ValueError, IndexError):
        return []
    except BundleError as exc:
        raise BundleError(f"{printable(name or path)} is refused: {exc}") from None
    except OSError as exc:
        raise BundleError(f"cannot read {printable(name or path)} ({exc.strerror})") from None
    return sorted(set(found))
