"""Static check of an ONNX graph against TensorRT's own ONNX support matrix (standalone).

TensorRT's ONNX parser documents, per version, which operators it imports, for which tensor types,
and with which restrictions (onnx/onnx-tensorrt ``docs/operators.md``). ``trt_support.json`` next
to this file holds those matrices as data, with their source commits, and maps each TensorRT version
the kit targets to the matrix (or the combination of stored matrices) that describes it.

:func:`lint_file` / :func:`lint_model` load a graph, run ONNX shape/type inference and check:

* graph: the ``ai.onnx`` opset is inside the version's range; network inputs/outputs have a
  supported, non-quantized type (UINT8 only there);
* every node: default domain (anything else needs a plugin); the operator is in the matrix and
  supported; each typed operand (see ``reading.untyped_operands`` in the data) has a type the
  matrix lists for it; inputs the matrix says must be initializers / build-time constants are;
* quantized types (INT8, INT4, FP8, FP4): since TensorRT 10 only through quantization from a float
  type, so such a tensor must come from ``QuantizeLinear`` or a constant and be read only by
  ``DequantizeLinear``; Q/DQ zero points must be constant zeros, scales and outputs float.

Findings are ``error`` (the matrix rules it out) or ``note`` (the matrix is silent, or a written
restriction this lint does not check: only a TensorRT build on the device can tell). Passing the
lint means the graph is inside the documented support matrix, not that TensorRT builds it.

Needs Python 3.8+, numpy and the ``onnx`` package (imported when a graph is linted, so this module
imports without it: :func:`onnx_available`). Never imports torch, TensorRT or edgeseg; the same
file runs in ``edgeseg build`` and, copied into Jetson bundles, in ``build_engine.py``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

DATA = Path(__file__).with_name("trt_support.json")
QUANTIZE, DEQUANTIZE = "QuantizeLinear", "DequantizeLinear"
#: ONNX TensorProto element types -> the names the matrices use
ONNX_TYPES = {1: "FP32", 2: "UINT8", 3: "INT8", 4: "UINT16", 5: "INT16", 6: "INT32", 7: "INT64", 8: "STRING",
              9: "BOOL", 10: "FP16", 11: "DOUBLE", 12: "UINT32", 13: "UINT64", 14: "COMPLEX64", 15: "COMPLEX128",
              16: "BF16", 17: "FP8", 18: "FLOAT8E4M3FNUZ", 19: "FLOAT8E5M2", 20: "FLOAT8E5M2FNUZ", 21: "UINT4",
              22: "INT4", 23: "FP4"}
_CONSTANT_RULE = re.compile(r"must be (an initializer|a build-time constant|resolvable to a constant|"
                            r"a constant tensor)")
_UNSUPPORTED_RULE = re.compile(r"(attributes|inputs|outputs) are unsupported")


@dataclass(frozen=True)
class Finding:
    severity: str  # "error" | "note"
    node: str
    op: str
    message: str
    count: int = 0  # a note about every node of one operator: how many there are

    def line(self) -> str:
        if self.count:
            return f"{self.count} {self.op} node(s): {self.message}"
        where = f"node '{self.node}' ({self.op})" if self.op else "graph"
        return f"{where}: {self.message}"


@dataclass
class LintResult:
    version: str
    label: str
    sources: list
    findings: list = field(default_factory=list)
    nodes: int = 0
    combine: str = "exact"  # or "intersection" of several stored matrices (see trt_support.json)

    @property
    def errors(self) -> list:
        return [f for f in self.findings if f.severity == "error"]

    @property
    def notes(self) -> list:
        return [f for f in self.findings if f.severity == "note"]

    @property
    def passed(self) -> bool:
        return not self.errors

    def summary(self) -> str:
        """One line: the verdict, or the first error and how many more there are."""
        if self.passed:
            return (f"{self.label}: {self.nodes} nodes inside the support matrix ({len(self.notes)} note(s): "
                    "only a build on the device can tell)")
        more = f" (+{len(self.errors) - 1} more)" if len(self.errors) > 1 else ""
        return f"not accepted by {self.label}: {self.errors[0].line()}{more}"

    def record(self) -> dict:
        """The manifest's record of this lint."""
        return {"tensorrt_version": self.version, "label": self.label, "passed": self.passed,
                "nodes": self.nodes, "errors": [f.line() for f in self.errors],
                "notes": [f.line() for f in self.notes], "matrices": self.sources, "combine": self.combine}


# -- the data ----------------------------------------------------------------------------------
def onnx_available() -> bool:
    try:
        import onnx  # noqa: F401
    except ImportError:
        return False
    return True


def load_support(path=None) -> dict:
    with open(path or DATA, encoding="utf-8") as fh:
        support = json.load(fh)
    if support.get("format") != "edgeseg-trt-support":
        raise ValueError(f"{path or DATA} is not an edgeseg TensorRT support file")
    return support


def _version_key(text: str) -> tuple:
    return tuple(int(p) for p in re.findall(r"\d+", str(text))[:2]) or (0,)


def known_versions(support: dict) -> list:
    return sorted(support["tensorrt_versions"], key=_version_key)


def version_for(support: dict, tensorrt_version: str) -> str:
    """The kit's entry for a TensorRT release: the newest known version not newer than it
    (``10.13.3.9`` -> ``10.13``; ``10.15`` -> ``10.14``); the oldest entry for anything older."""
    wanted = _version_key(tensorrt_version)
    candidates = [v for v in known_versions(support) if _version_key(v) <= wanted]
    return candidates[-1] if candidates else known_versions(support)[0]


def matrix_for(support: dict, version: str) -> dict:
    """The matrix that describes ``version``: a stored one, or the intersection of several."""
    entry = support["tensorrt_versions"].get(version)
    if entry is None:
        raise ValueError(f"unknown TensorRT version {version!r}; the kit knows {', '.join(known_versions(support))}")
    parts = [support["matrices"][name] for name in entry["matrices"]]
    operators = {}
    for name in set().union(*(p["operators"] for p in parts)):
        entries = [p["operators"].get(name, {"supported": False}) for p in parts]
        supported = all(e["supported"] for e in entries)
        combined = {"supported": supported}
        if supported:
            combined["types"] = [t for t in entries[0]["types"] if all(t in e["types"] for e in entries)]
            combined["restrictions"] = [e["restrictions"] for e in entries if e.get("restrictions")]
        operators[name] = combined
    return {
        "version": version, "label": entry["label"], "name": f"TensorRT {version}",
        "opset": {"min": max(p["opset"]["min"] for p in parts), "max": min(p["opset"]["max"] for p in parts)},
        "data_types": [t for t in parts[0]["data_types"] if all(t in p["data_types"] for p in parts)],
        "quantized_types": sorted(set().union(*(p["quantized_types"] for p in parts))),
        "io_only_types": sorted(set().union(*(p["io_only_types"] for p in parts))),
        "operators": operators, "untyped": support["reading"]["untyped_operands"],
        "sources": [{"tensorrt": p["tensorrt"], "url": p["source"]["url"], "commit": p["source"]["commit"]}
                    for p in parts],
        "combine": entry["combine"],
    }


# -- the graph ---------------------------------------------------------------------------------
def _light_copy(model):
    """The graph without large initializer payloads (they become typed inputs), for shape inference."""
    import onnx

    light = onnx.ModelProto()
    light.ir_version = model.ir_version
    light.opset_import.extend(model.opset_import)
    graph = light.graph
    graph.node.extend(model.graph.node)
    graph.input.extend(model.graph.input)
    graph.output.extend(model.graph.output)
    graph.value_info.extend(model.graph.value_info)
    names = {i.name for i in model.graph.input}
    for init in model.graph.initializer:
        size = 1
        for d in init.dims:
            size *= d
        if size <= 64 and init.data_location != onnx.TensorProto.EXTERNAL:
            graph.initializer.append(init)
        elif init.name not in names:
            graph.input.append(onnx.helper.make_tensor_value_info(init.name, init.data_type, list(init.dims)))
    return light


def infer_types(model) -> dict:
    """Tensor name -> matrix type name after ONNX shape/type inference ("" where it stays unknown)."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(_light_copy(model), data_prop=True)
    types = {}
    for info in [*inferred.graph.input, *inferred.graph.output, *inferred.graph.value_info]:
        types[info.name] = ONNX_TYPES.get(info.type.tensor_type.elem_type, "")
    for init in model.graph.initializer:
        types[init.name] = ONNX_TYPES.get(init.data_type, "")
    return types


@dataclass
class _Graph:
    model: object
    types: dict
    base_dir: object
    initializers: dict
    producers: dict
    consumers: dict
    constants: set
    foldable: set
    opset: int

    def value(self, name: str):
        """The value of a constant input (initializer or Constant node), else None."""
        from onnx import numpy_helper

        if name in self.initializers:
            return numpy_helper.to_array(self.initializers[name], base_dir=str(self.base_dir or ""))
        node = self.producers.get(name)
        if node is not None and node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    return numpy_helper.to_array(attr.t)
        return None


def _index_graph(model, types: dict, base_dir) -> _Graph:
    initializers = {i.name: i for i in model.graph.initializer}
    producers, consumers = {}, {}
    for node in model.graph.node:
        for out in node.output:
            producers[out] = node
        for name in node.input:
            if name:
                consumers.setdefault(name, []).append(node)
    constants = set(initializers) | {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    foldable = set(constants)
    for node in model.graph.node:  # topological order: a value computed from constants alone folds
        if node.op_type not in ("RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike") and \
                node.input and all(not i or i in foldable for i in node.input):
            foldable.update(node.output)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    return _Graph(model, types, base_dir, initializers, producers, consumers, constants, foldable, opset)


# -- the checks --------------------------------------------------------------------------------
def _check_graph(g: _Graph, matrix: dict) -> list:
    found = []
    low, high = matrix["opset"]["min"], matrix["opset"]["max"]
    if not low <= g.opset <= high:
        found.append(Finding("error", "", "", f"ai.onnx opset {g.opset} is outside the {low}..{high} that "
                                              f"{matrix['name']} documents"))
    allowed = set(matrix["data_types"]) - set(matrix["quantized_types"])
    for kind, values in (("input", g.model.graph.input), ("output", g.model.graph.output)):
        for info in values:
            if info.name in g.initializers:
                continue
            t = g.types.get(info.name, "")
            if t not in allowed:
                found.append(Finding("error", "", "", f"network {kind} '{info.name}' is {t or 'of unknown type'}; "
                                                      f"{matrix['name']} takes {', '.join(sorted(allowed))}"))
    return found


def _untyped(matrix: dict, op: str) -> tuple:
    rule = matrix["untyped"].get(op, {})
    return set(rule.get("inputs", ())), set(rule.get("outputs", ()))


def _check_types(node, g: _Graph, matrix: dict, entry: dict) -> list:
    """Each typed operand of ``node`` against the types the matrix lists for its operator."""
    listed = entry.get("types") or []
    if not listed:
        return [Finding("note", node.name, node.op_type, "the matrix lists no types for this operator")]
    skip_in, skip_out = _untyped(matrix, node.op_type)
    found = []
    operands = [("input", i, n) for i, n in enumerate(node.input) if n and i not in skip_in] + \
               [("output", i, n) for i, n in enumerate(node.output) if n and i not in skip_out]
    for kind, index, name in operands:
        t = g.types.get(name, "")
        if not t:
            found.append(Finding("error", node.name, node.op_type, f"{kind} {index} '{name}' has a type ONNX "
                                                                   "inference cannot tell, so it cannot be checked"))
        elif t not in listed:
            found.append(Finding("error", node.name, node.op_type,
                                 f"{kind} {index} '{name}' is {t}; {matrix['name']} lists {node.op_type} for "
                                 f"{', '.join(listed)}"))
    return found


def _schema(node, opset: int) -> tuple:
    """(input names, attribute names) of the node's ONNX schema at the model's opset."""
    from onnx import defs

    try:
        schema = defs.get_schema(node.op_type, opset, "")
    except defs.SchemaError:  # not an ai.onnx operator at this opset: nothing to map (the op check reports it)
        return [], set()
    return [p.name for p in schema.inputs], set(schema.attributes)


def _check_restrictions(node, g: _Graph, entry: dict, unchecked: set) -> list:
    """Inputs the matrix says must be initializers / constants; other restrictions are listed as notes.

    A named attribute is constant by definition; a name that is neither an input nor an attribute
    of the operator (a typo in the matrix, or a rule about values) is left as a note."""
    found = []
    inputs, attributes = _schema(node, g.opset)
    for text in entry.get("restrictions") or []:
        for sentence in [s.strip() for s in re.split(r"(?<=[.])\s+", text) if s.strip()]:
            if "zero_point" in sentence or sentence.startswith("Only the first output"):
                continue  # checked by _check_qdq / _check_outputs
            unsupported = _UNSUPPORTED_RULE.search(sentence)
            if unsupported:
                found += _check_unsupported(node, inputs, unsupported.group(1), re.findall(r"`([^`]+)`", sentence))
                continue
            rule = _CONSTANT_RULE.search(sentence)
            names = re.findall(r"`([^`]+)`", sentence[:rule.start()]) if rule else []
            if not names or any(n not in inputs and n not in attributes for n in names):
                unchecked.add((node.op_type, sentence))
                continue
            allowed = g.constants if rule.group(1) == "an initializer" else g.foldable
            for name in (n for n in names if n in inputs):
                index = inputs.index(name)
                tensor = node.input[index] if index < len(node.input) else ""
                if tensor and tensor not in allowed:
                    found.append(Finding("error", node.name, node.op_type,
                                         f"input '{name}' ({tensor}) must be {rule.group(1)}; here it is computed "
                                         "in the graph"))
    return found


def _check_unsupported(node, inputs: list, kind: str, names: list) -> list:
    """'`a`, `b` attributes / inputs / outputs are unsupported': the node must not use them."""
    if kind == "attributes":
        used = [a.name for a in node.attribute if a.name in names]
    else:
        slots = node.input if kind == "inputs" else node.output
        positions = inputs if kind == "inputs" else []
        used = [n for n in names if n in positions and positions.index(n) < len(slots) and slots[positions.index(n)]]
    return [Finding("error", node.name, node.op_type, f"uses {kind[:-1]} '{n}', which is unsupported") for n in used]


def _check_outputs(node, entry: dict) -> list:
    texts = " ".join(entry.get("restrictions") or [])
    if "Only the first output" in texts and any(node.output[1:]):
        return [Finding("error", node.name, node.op_type, "only the first output is supported, and this node uses "
                                                           f"{sum(1 for o in node.output if o)}")]
    return []



def _check_qdq(node, g: _Graph, matrix: dict, silent: dict) -> list:
    """Q/DQ: constant zero points that are zero, float scales (and DQ outputs), quantized DQ inputs."""
    found = []
    floats = matrix["operators"].get(QUANTIZE, {}).get("types") or []
    zero_point = node.input[2] if len(node.input) > 2 else ""
    if zero_point:
        value = g.value(zero_point)
        if value is None:
            found.append(Finding("error", node.name, node.op_type, f"zero point '{zero_point}' must be a constant "
                                                                   "zero; here it is computed in the graph"))
        elif value.any():
            found.append(Finding("error", node.name, node.op_type, f"zero point '{zero_point}' is not zero "
                                                                   "(TensorRT quantizes symmetrically)"))
    checked = [("scale", node.input[1] if len(node.input) > 1 else "")]
    if node.op_type == DEQUANTIZE:
        checked.append(("output", node.output[0]))
    for what, name in checked:
        t = g.types.get(name, "")
        if name and t not in floats:
            found.append(Finding("error", node.name, node.op_type, f"{what} '{name}' is {t or 'of unknown type'}; "
                                                                   f"Q/DQ go between {', '.join(floats)} and a "
                                                                   "quantized type"))
    scale = g.value(node.input[1]) if len(node.input) > 1 else None
    if scale is None or scale.size > 1:
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        key = (node.op_type, "per-axis scales" if scale is not None else "scales computed in the graph",
               f"axis {axis}" if scale is not None else "")
        silent[key] = silent.get(key, 0) + 1
    return found


def _check_quantized_flow(g: _Graph, matrix: dict) -> list:
    """A quantized tensor comes from QuantizeLinear or a constant and is read only by DequantizeLinear."""
    found = []
    quantized = set(matrix["quantized_types"])
    for name, t in g.types.items():
        if t not in quantized:
            continue
        producer = g.producers.get(name)
        if producer is not None and producer.op_type not in (QUANTIZE, "Constant"):
            found.append(Finding("error", producer.name, producer.op_type,
                                 f"produces {t} tensor '{name}': {matrix['name']} handles {t} only as the output of "
                                 f"{QUANTIZE} (quantization from a float type)"))
        for consumer in g.consumers.get(name, []):
            if consumer.op_type != DEQUANTIZE and not (consumer.op_type == QUANTIZE and consumer.input[0] != name):
                found.append(Finding("error", consumer.name, consumer.op_type,
                                     f"reads {t} tensor '{name}': {matrix['name']} takes {t} only into "
                                     f"{DEQUANTIZE}"))
    return found


def _check_node(node, g: _Graph, matrix: dict, unchecked: set, silent: dict) -> list:
    if node.domain not in ("", "ai.onnx"):
        return [Finding("error", node.name, node.op_type, f"domain '{node.domain}' is not ai.onnx: TensorRT needs a "
                                                          "plugin for it")]
    entry = matrix["operators"].get(node.op_type)
    if entry is None:
        return [Finding("error", node.name, node.op_type, f"{node.op_type} is not in {matrix['name']}'s matrix")]
    if not entry["supported"]:
        return [Finding("error", node.name, node.op_type, f"{matrix['name']} does not support {node.op_type}")]
    if any(a.type in (5, 10) for a in node.attribute):  # GRAPH / GRAPHS
        silent[(node.op_type, "subgraphs", "not linted")] = silent.get((node.op_type, "subgraphs", "not linted"), 0) + 1
    found = _check_types(node, g, matrix, entry)
    found += _check_restrictions(node, g, entry, unchecked)
    found += _check_outputs(node, entry)
    if node.op_type in (QUANTIZE, DEQUANTIZE):
        found += _check_qdq(node, g, matrix, silent)
    return found


def lint_model(model, version: str | None = None, support: dict | None = None, base_dir=None,
               types: dict | None = None) -> LintResult:
    """Lint an ``onnx.ModelProto`` against one TensorRT version (default: the kit's default).

    External data may stay unloaded (``base_dir`` is where it lives: only small constants are
    read); ``types`` reuses an :func:`infer_types` result."""
    support = support or load_support()
    version = version or support["default_version"]
    matrix = matrix_for(support, version)
    g = _index_graph(model, types if types is not None else infer_types(model), base_dir)
    unchecked, silent = set(), {}
    findings = _check_graph(g, matrix)
    for node in model.graph.node:
        findings += _check_node(node, g, matrix, unchecked, silent)
    findings += _check_quantized_flow(g, matrix)
    for op, sentence in sorted(unchecked):
        count = sum(1 for n in model.graph.node if n.op_type == op)
        findings.append(Finding("note", "", op, f"restriction not checked statically: {sentence}", count))
    for (op, what, detail), count in sorted(silent.items()):
        findings.append(Finding("note", "", op, f"{what} ({detail}): the matrix states no rule" if detail
                                else f"{what}: the matrix states no rule", count))
    unique = list(dict.fromkeys(findings))
    return LintResult(version, matrix["label"], matrix["sources"], unique, len(model.graph.node), matrix["combine"])


def lint_versions(path, versions=None, support: dict | None = None) -> dict:
    """Lint the ONNX file at ``path`` against each of ``versions`` (default: every version the kit
    knows): ``{version: LintResult}``. External weights are not read, except for small constants."""
    import onnx

    support = support or load_support()
    path = Path(path)
    model = onnx.load(str(path), load_external_data=False)
    types = infer_types(model)
    return {v: lint_model(model, v, support, path.parent, types) for v in (versions or known_versions(support))}


def lint_file(path, version: str | None = None, support: dict | None = None) -> LintResult:
    """Lint the ONNX file at ``path`` against one TensorRT version (default: the kit's default)."""
    support = support or load_support()
    version = version or support["default_version"]
    return lint_versions(path, [version], support)[version]
