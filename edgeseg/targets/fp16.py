"""FP32 ONNX -> FP16 ONNX for strongly typed TensorRT builds, with LayerNorm and Softmax kept FP32.

A strongly typed TensorRT network runs every tensor in the type the ONNX graph gives it, so the
precision plan has to be written into the graph. The conversion itself is onnxconverter-common's
``float16.convert_float_to_float16`` (what ``polygraphy convert --fp-to-fp16`` uses): initializers to
float16 (clipped to the FP16 range), ``KEEP_FP32`` ops (and the converter's own block list) left in
FP32 behind Casts, float graph inputs/outputs kept FP32 (``keep_io_types``). edgeseg adds only what it
lacks for these graphs:

* before: the exporter's no-op Casts (float -> float, from ``x.float()`` in the models) are dropped,
  because the converter leaves them casting to FP32 in the middle of the FP16 graph; and a float
  initializer read both by a kept-FP32 op and by another op gets a copy for the kept op (the converter
  keeps a shared initializer FP32 for every reader, which mistypes the others);
* after: a float graph output the converter turned FP16 (when a kept-FP32 op produces it) is made
  FP32 again; the model's own remaining ``Cast(to=FLOAT)`` (e.g. int64 positions -> float) are retargeted to
  float16, and the no-op Casts this leaves are dropped;
* a check that the result is valid and fully typed (``onnx.checker``, strict shape inference).

No torch. ONNX Runtime runs the result on CPU too (it upcasts FP16 kernels it lacks), which checks
the graph and the FP16 rounding of weights and tensors between ops, not FP16 arithmetic.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable

import numpy as np
import onnx
from onnx import TensorProto

KEEP_FP32 = ("LayerNormalization", "Softmax")
FLOAT, HALF = TensorProto.FLOAT, TensorProto.FLOAT16
_FP16_MAX = float(np.finfo(np.float16).max)
_FP16_TINY = float(2.0 ** -24)  # the smallest FP16 subnormal: smaller positive weights round up to it


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


def convert_fp16(model: onnx.ModelProto, keep_fp32: Iterable[str] = KEEP_FP32) -> onnx.ModelProto:
    """Return an FP16 copy of an FP32 model (see the module docstring); ``model`` is not changed."""
    from onnxconverter_common import float16

    types = _types(model)
    if any(types.get(i.name) == FLOAT for i in model.graph.input):
        raise ValueError("convert_fp16 expects integer graph inputs (token ids)")
    src = onnx.ModelProto()
    src.CopyFrom(model)
    _drop_noop_casts(src)
    _split_shared_initializers(src, set(keep_fp32))
    own_casts = {n.name for n in src.graph.node if n.op_type == "Cast"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the converter warns about every value it clips
        half = float16.convert_float_to_float16(
            src, keep_io_types=True, op_block_list=sorted(set(float16.DEFAULT_OP_BLOCK_LIST) | set(keep_fp32)),
            min_positive_val=_FP16_TINY, max_finite_val=_FP16_MAX)
    for node in half.graph.node:
        if node.op_type == "Cast" and node.name in own_casts:
            for attr in node.attribute:
                if attr.name == "to" and attr.i == FLOAT:
                    attr.i = HALF
    del half.graph.value_info[:]
    _keep_float_outputs(half, {o.name for o in model.graph.output if o.type.tensor_type.elem_type == FLOAT})
    _drop_noop_casts(half)
    onnx.checker.check_model(half)
    return onnx.shape_inference.infer_shapes(half, strict_mode=True)


def _keep_float_outputs(model: onnx.ModelProto, names: set[str]) -> None:
    """Graph outputs that were float32 stay float32: a final Cast up where the converter left FP16."""
    from onnx import helper

    graph = model.graph
    for output in graph.output:
        if output.name not in names or output.type.tensor_type.elem_type == FLOAT:
            continue
        narrow = output.name + "_fp16"
        for node in graph.node:
            node.output[:] = [narrow if o == output.name else o for o in node.output]
            node.input[:] = [narrow if i == output.name else i for i in node.input]
        graph.node.append(helper.make_node("Cast", [narrow], [output.name], name=output.name + "_cast_fp32", to=FLOAT))
        output.type.tensor_type.elem_type = FLOAT


def _split_shared_initializers(model: onnx.ModelProto, keep: set[str]) -> int:
    """Give kept-FP32 ops their own copy of float initializers that other ops read too; how many."""
    graph = model.graph
    floats = {i.name: i for i in graph.initializer if i.data_type == FLOAT}
    other = {name for n in graph.node if n.op_type not in keep for name in n.input}
    taken = {i.name for i in graph.initializer} | {o for n in graph.node for o in n.output}
    copies: dict[str, str] = {}
    for node in graph.node:
        if node.op_type not in keep:
            continue
        for idx, name in enumerate(node.input):
            if name in floats and name in other:
                if name not in copies:
                    copy = TensorProto()
                    copy.CopyFrom(floats[name])
                    copy.name = next(c for i in range(len(taken) + 1) if (c := f"{name}_fp32_{i}") not in taken)
                    taken.add(copy.name)
                    graph.initializer.append(copy)
                    copies[name] = copy.name
                node.input[idx] = copies[name]
    return len(copies)


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
            "fp16": {"converter": "onnxconverter-common float16 (+ edgeseg.targets.fp16 cast fixes)",
                     "fp32_ops": list(KEEP_FP32),
                     "interface": "input_ids int64, memory float32 (final Cast), mask bool",
                     "plan": precision_plan(half)},
            "fidelity": {**fidelity, "vs": "fp32 bundle", "split": "eval", "runtime": (
                "onnxruntime CPU (upcasts FP16 kernels it lacks: checks FP16 storage and rounding between ops)"),
                "gate": {"mean_cosine": gate.mean_cosine, "worst_cosine": gate.worst_cosine}, "passed": True},
            "source_bundle": {"precision": "fp32", "model_sha256": manifest["files"][manifest["model"]]["sha256"]},
            "tools": tool_versions("onnx", "onnxruntime", "numpy", "onnxconverter-common"),
        })
        return finalize(tmp, new)


def _run(path, ids: np.ndarray, threads: int | None = None, batch: int = 64) -> tuple[np.ndarray, np.ndarray]:
    from edgeseg.runtime.onnxruntime import cpu_session

    session = cpu_session(path, threads)
    memories, masks = [], []
    for start in range(0, len(ids), batch):
        memory, mask = session.run(["memory", "mask"], {"input_ids": ids[start:start + batch]})
        memories.append(memory)
        masks.append(mask)
    return np.concatenate(memories), np.concatenate(masks)
