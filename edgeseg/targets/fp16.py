"""FP32 ONNX -> FP16 ONNX for strongly typed TensorRT builds, with LayerNorm and Softmax kept FP32.

A strongly typed TensorRT network runs every tensor in the type the ONNX graph gives it, so the
precision plan has to be written into the graph. This converter:

* stores every float initializer and ``Constant`` as float16, and retargets ``Cast(to=FLOAT)``
  and float ``ConstantOfShape`` to float16, so MatMul/Gemm/Conv/Add/Mul/GELU run in FP16;
* keeps each ``LayerNormalization`` and ``Softmax`` (``KEEP_FP32``) in FP32: its float inputs are
  cast up (its own scale/bias initializers stay FP32) and its outputs cast back down;
* keeps the graph's interface: ``input_ids`` int64 in, ``memory`` float32 and ``mask`` bool out
  (a final Cast up to FP32);
* drops the no-op Casts this leaves behind (fp16 -> fp16 and the like).

No torch. ONNX Runtime runs the result on CPU too (it upcasts FP16 kernels it lacks), which checks
the graph and the FP16 rounding of weights and tensors between ops, not FP16 arithmetic.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

KEEP_FP32 = ("LayerNormalization", "Softmax")
FLOAT, HALF = TensorProto.FLOAT, TensorProto.FLOAT16
_FP16_MAX = float(np.finfo(np.float16).max)


def _to_half(array: np.ndarray) -> np.ndarray:
    """float32 -> float16, clipping finite values to the FP16 range (infinities stay infinite)."""
    finite = np.isfinite(array)
    out = array.copy()
    out[finite] = np.clip(array[finite], -_FP16_MAX, _FP16_MAX)
    return out.astype(np.float16)


def _half_tensor(tensor: TensorProto) -> TensorProto:
    converted = numpy_helper.from_array(_to_half(numpy_helper.to_array(tensor)), tensor.name)
    return converted


def _types(model: onnx.ModelProto) -> dict[str, int]:
    """Element type of every tensor of the graph (inputs, outputs, initializers, intermediates)."""
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    types = {}
    graph = inferred.graph
    for info in [*graph.input, *graph.output, *graph.value_info]:
        if info.type.HasField("tensor_type"):
            types[info.name] = info.type.tensor_type.elem_type
    for init in graph.initializer:
        types[init.name] = init.data_type
    for node in graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    types[node.output[0]] = attr.t.data_type
    return types


def _unique(name: str, taken: set[str]) -> str:
    candidate, i = name, 0
    while candidate in taken:
        i += 1
        candidate = f"{name}_{i}"
    taken.add(candidate)
    return candidate


def convert_fp16(model: onnx.ModelProto, keep_fp32: Iterable[str] = KEEP_FP32) -> onnx.ModelProto:
    """Return an FP16 copy of an FP32 model (see the module docstring); ``model`` is not changed."""
    keep = set(keep_fp32)
    types = _types(model)
    src = model.graph
    if any(t == FLOAT for t in (types.get(i.name) for i in src.input)):
        raise ValueError("convert_fp16 expects integer graph inputs (token ids)")
    taken = {n for node in src.node for n in [*node.input, *node.output]} | {i.name for i in src.initializer}
    taken |= {n.name for n in src.node}
    kept_nodes = [n for n in src.node if n.op_type in keep]
    fp32_readers = {i for n in kept_nodes for i in n.input if i}
    other_readers = {i for n in src.node if n.op_type not in keep for i in n.input if i}
    outputs = {o.name for o in src.output}

    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    del graph.value_info[:]
    del graph.initializer[:]
    del graph.node[:]

    # Initializers: FP16 unless only kept-FP32 ops read them (then FP32); both -> one copy of each.
    fp32_init_alias: dict[str, str] = {}
    for init in src.initializer:
        if init.data_type != FLOAT:
            graph.initializer.append(init)
            continue
        fp32_use, half_use = init.name in fp32_readers, init.name in other_readers or init.name in outputs
        if half_use or not fp32_use:
            graph.initializer.append(_half_tensor(init))
        if fp32_use:
            if half_use:
                copy = TensorProto()
                copy.CopyFrom(init)
                copy.name = _unique(init.name + "_fp32", taken)
                fp32_init_alias[init.name] = copy.name
                graph.initializer.append(copy)
            else:
                graph.initializer.append(init)
    fp32_inits = {i.name for i in graph.initializer if i.data_type == FLOAT}

    def cast(src_name: str, dst_name: str, to: int, tag: str) -> onnx.NodeProto:
        return helper.make_node("Cast", [src_name], [dst_name], name=_unique(f"{tag}_cast", taken), to=to)

    renamed_outputs: dict[str, str] = {}
    for node in src.node:
        new = onnx.NodeProto()
        new.CopyFrom(node)
        if node.op_type in keep:
            pre = []
            for idx, name in enumerate(node.input):
                if not name or types.get(name) != FLOAT:
                    continue
                if name in fp32_init_alias:
                    new.input[idx] = fp32_init_alias[name]
                elif name not in fp32_inits:
                    up = _unique(name + "_fp32", taken)
                    pre.append(cast(name, up, FLOAT, f"{node.name}_in{idx}"))
                    new.input[idx] = up
            post = []
            for idx, name in enumerate(node.output):
                if name and types.get(name) == FLOAT:
                    wide = _unique(name + "_fp32", taken)
                    new.output[idx] = wide
                    post.append(cast(wide, name, HALF, f"{node.name}_out{idx}"))
            graph.node.extend([*pre, new, *post])
            continue
        if node.op_type == "Constant":
            for attr in new.attribute:
                if attr.name == "value" and attr.t.data_type == FLOAT:
                    attr.t.CopyFrom(_half_tensor(attr.t))
        elif node.op_type == "Cast":
            for attr in new.attribute:
                if attr.name == "to" and attr.i == FLOAT:
                    attr.i = HALF
        elif node.op_type == "ConstantOfShape":
            for attr in new.attribute:
                if attr.name == "value" and attr.t.data_type == FLOAT:
                    attr.t.CopyFrom(_half_tensor(attr.t))
        elif any(attr.name in ("dtype", "to") for attr in node.attribute) and node.op_type not in ("Cast",):
            raise ValueError(f"convert_fp16 does not handle {node.op_type} with a dtype attribute ({node.name})")
        graph.node.append(new)

    # Float graph outputs stay FP32: the producer writes an FP16 tensor, a final Cast widens it.
    for output in graph.output:
        if output.type.tensor_type.elem_type != FLOAT:
            continue
        narrow = _unique(output.name + "_fp16", taken)
        renamed_outputs[output.name] = narrow
        for node in graph.node:
            for idx, name in enumerate(node.output):
                if name == output.name:
                    node.output[idx] = narrow
            for idx, name in enumerate(node.input):
                if name == output.name:
                    node.input[idx] = narrow
        graph.node.append(cast(narrow, output.name, FLOAT, output.name))
    _drop_noop_casts(out)
    onnx.checker.check_model(out)
    return onnx.shape_inference.infer_shapes(out, strict_mode=True)


def _drop_noop_casts(model: onnx.ModelProto) -> int:
    """Remove Casts whose input already has the target type, and collapse Cast -> Cast chains.

    Neither removal changes any tensor's type, so the types are inferred once.
    """
    types = _types(model)
    graph = model.graph
    outputs = {o.name for o in graph.output}
    producer = {o: n for n in graph.node for o in n.output}
    alias: dict[str, str] = {}
    keep = []
    for node in graph.node:
        for idx, name in enumerate(node.input):
            if name in alias:
                node.input[idx] = alias[name]
        if node.op_type == "Cast" and node.output[0] not in outputs:
            to = next(a.i for a in node.attribute if a.name == "to")
            up = producer.get(node.input[0])
            if types.get(node.input[0]) == to:
                alias[node.output[0]] = node.input[0]
                continue
            # Cast(x fp32 -> fp16) -> Cast(-> fp32): read x directly (drops a rounding, never adds one).
            if up is not None and up.op_type == "Cast" and to == FLOAT and types.get(up.input[0]) == FLOAT:
                alias[node.output[0]] = up.input[0]
                continue
        keep.append(node)
    # Casts left without readers (their only readers read through an alias now).
    readers = {i for n in keep for i in n.input} | outputs
    kept = [n for n in keep if n.op_type != "Cast" or n.output[0] in readers]
    removed = len(graph.node) - len(kept)
    del graph.node[:]
    graph.node.extend(kept)
    return removed


def precision_plan(model: onnx.ModelProto) -> dict[str, dict[str, int]]:
    """Count ops by the element type of their first float input: ``{op_type: {"float16": n, ...}}``."""
    types = _types(model)
    names = {FLOAT: "float32", HALF: "float16"}
    plan: dict[str, dict[str, int]] = {}
    for node in model.graph.node:
        kind = next((names[types[i]] for i in node.input if types.get(i) in names), None)
        if kind is None or node.op_type in ("Cast", "Constant", "Shape"):
            continue
        plan.setdefault(node.op_type, {}).setdefault(kind, 0)
        plan[node.op_type][kind] += 1
    return plan


# -- the bundle step -----------------------------------------------------------------------------
def fp16_bundle(src, out, eval_prompts, gate=None, threads=None, progress=None) -> dict:
    """FP32 ONNX bundle ``src`` -> FP16 ONNX bundle ``out``, gated on fidelity vs FP32 in ONNX Runtime."""
    import logging
    from pathlib import Path

    from edgeseg.bundle import (
        bundle_tokenizer,
        bundle_writer,
        copy_files,
        finalize,
        inherited,
        onnx_for_reading,
        tool_versions,
        verify_bundle,
    )
    from edgeseg.errors import EdgesegError
    from edgeseg.fileio import work_dir
    from edgeseg.outputs import token_fidelity
    from edgeseg.quantize import Gate

    gate = gate or Gate()
    say = progress or (lambda message: logging.getLogger(__name__).info("%s", message))
    src = Path(src)
    manifest = verify_bundle(src)
    if manifest["precision"] != "fp32" or manifest["backend"] != "onnxruntime":
        raise EdgesegError(f"{src} is a {manifest['precision']} {manifest['backend']} bundle; FP16 conversion needs "
                           "an FP32 ONNX bundle (edgeseg export)")
    if not eval_prompts:
        raise EdgesegError("the FP16 fidelity check needs evaluation prompts")
    length = int(manifest["context_length"])
    ids = bundle_tokenizer(src, manifest)(list(eval_prompts), length).ids
    with bundle_writer(out) as tmp, work_dir(out) as work:
        half = convert_fp16(onnx.load(str(onnx_for_reading(src, manifest, work))))
        onnx.save(half, str(tmp / manifest["model"]))
        say(f"FP16 ONNX (LayerNorm/Softmax in FP32): checking against FP32 on {len(ids)} evaluation prompts")
        ref_memory, ref_mask = _run(src / manifest["model"], ids, threads)
        memory, mask = _run(tmp / manifest["model"], ids, threads)
        if not np.array_equal(mask, ref_mask):
            raise EdgesegError("the FP16 model changed the padding mask")
        fidelity = token_fidelity(memory, ref_memory, ref_mask)
        if not gate.passed(fidelity):
            raise EdgesegError(f"FP16 misses the fidelity gate: mean cosine {fidelity['mean_cosine']:.5f} (>= "
                               f"{gate.mean_cosine}), worst {fidelity['worst_cosine']:.5f} (>= {gate.worst_cosine})")
        copy_files(tmp, src, manifest, include_model=False)
        new = inherited(manifest)
        new.update({
            "precision": "fp16",
            "fp16": {"converter": "edgeseg.targets.fp16", "fp32_ops": list(KEEP_FP32),
                     "interface": "input_ids int64, memory float32 (final Cast), mask bool",
                     "plan": precision_plan(half)},
            "fidelity": {**fidelity, "vs": "fp32 bundle", "split": "eval", "runtime": (
                "onnxruntime CPU (upcasts FP16 kernels it lacks: checks FP16 storage and rounding between ops)"),
                "gate": {"mean_cosine": gate.mean_cosine, "worst_cosine": gate.worst_cosine}, "passed": True},
            "source_bundle": {"precision": "fp32", "model_sha256": manifest["files"][manifest["model"]]["sha256"]},
            "tools": tool_versions("onnx", "onnxruntime", "numpy"),
        })
        return finalize(tmp, new)


def _run(path, ids: np.ndarray, threads: int | None = None, batch: int = 64) -> tuple[np.ndarray, np.ndarray]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    memories, masks = [], []
    for start in range(0, len(ids), batch):
        memory, mask = session.run(["memory", "mask"], {"input_ids": ids[start:start + batch]})
        memories.append(memory)
        masks.append(mask)
    return np.concatenate(memories), np.concatenate(masks)
