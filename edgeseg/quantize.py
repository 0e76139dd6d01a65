"""FP32 ONNX bundle -> INT8 bundle, calibrated on prompts and gated on fidelity.

Recipe (``mode="static"``, the TensorRT-ready default):

* explicit Q/DQ (ONNX Runtime's QDQ quantizer): symmetric INT8, zero-point 0, per-channel weights,
  per-tensor activations calibrated on token ids of the calibration prompts (``minmax``,
  ``percentile`` or ``entropy``);
* only weight-bearing ops are quantized: every MatMul/Gemm with a constant weight (S0's 1x1
  convolutions are exported as MatMul). Attention's activation x activation MatMuls, LayerNorm,
  Softmax, GELU and the residual Adds stay in float: those are where INT8 transformers break;
* LayerNorm outputs with an outlier channel are first smoothed into the following MatMuls'
  weights (:mod:`edgeseg.smoothing`; ``smooth_alpha``), the float function unchanged;
* calibration runs in rounds of a few batches of equal size (bounded memory for every method);
* the token-embedding table is stored INT8 with one scale per row (symmetric), read in one of two
  forms (``embedding_form``): ``Gather(table_i8) -> Cast -> Mul(Gather(scales))`` gathers INT8
  rows (ONNX Runtime), ``DequantizeLinear(table_i8, scales, axis 0) -> Gather`` dequantizes the
  table first (TensorRT 10 takes INT8 only through Q/DQ); same table, same values;
* fidelity gate: INT8 vs the FP32 bundle on held-out prompts, per-prompt mean token cosine over
  valid tokens; mean >= 0.999 and worst prompt >= 0.99 by default. If the gate fails, a
  sensitivity pass ranks the quantized layers by the error each one adds on its own (its INT8
  output vs its FP32 output, given FP32 inputs) and returns the worst to float, 1, 2, 4, ... at a
  time, until the gate holds. The manifest lists the layers kept in float.

``mode="dynamic"`` quantizes the same weights per channel and activations at run time (for CPU
deployments; ONNX Runtime's MatMulInteger kernels), with the same INT8 embedding and gate.

Option ``prune_prompts``: vocabulary pruning (:mod:`edgeseg.vocab`). The embedding table keeps the
rows of the tokens a corpus needs, the bundle ships the pruned vocabulary and tokenizes with it.
The gate then compares the INT8 pruned bundle with the FP32 full-vocabulary bundle: eval prompts
whose segmentation is unchanged are compared token by token (the gate); prompts with a word the
corpus never had are segmented differently, so only their pooled embeddings can be compared; they
are counted and reported apart (``fidelity.resegmented``), not gated.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgeseg import smoothing
from edgeseg.bundle import (
    bundle_tokenizer,
    bundle_writer,
    copy_files,
    finalize,
    inherited,
    load_reference,
    model_files,
    onnx_for_reading,
    save_reference,
    tool_versions,
    verify_bundle,
)
from edgeseg.errors import EdgesegError
from edgeseg.fileio import work_dir
from edgeseg.outputs import cosine, pooled, token_fidelity
from edgeseg.runtime.onnxruntime import cpu_session
from edgeseg.tokenizer import VOCAB_SIZE
from edgeseg.vocab import PRUNED_VOCAB_FILENAME, PrunedVocabulary, md5_file, prune_vocabulary

log = logging.getLogger(__name__)

METHODS = ("minmax", "percentile", "entropy")
MODES = ("static", "dynamic")
MIN_CALIBRATION_PROMPTS = 32
MODEL_FILE = "model.onnx"
SMOOTH_ALPHA = 0.5
#: calibration prompts whose activation peaks set the smoothing factors (the first N; peaks settle
#: long before 2,000, and for the 353M teacher every prompt costs a forward pass)
SMOOTH_PROMPTS = 512


@dataclass(frozen=True)
class Gate:
    mean_cosine: float = 0.999
    worst_cosine: float = 0.99

    def passed(self, fidelity: dict[str, float]) -> bool:
        return fidelity["mean_cosine"] >= self.mean_cosine and fidelity["worst_cosine"] >= self.worst_cosine


# -- graph helpers ------------------------------------------------------------------------------
def weight_bearing_nodes(model: onnx.ModelProto) -> list[str]:
    """Names of MatMul/Gemm nodes whose second input is a constant (initializer) weight."""
    inits = {i.name for i in model.graph.initializer}
    return [n.name for n in model.graph.node if n.op_type in ("MatMul", "Gemm") and n.input[1] in inits]


def embedding_gathers(model: onnx.ModelProto, rows: int = VOCAB_SIZE) -> list[onnx.NodeProto]:
    """Gather nodes reading a 2-D float initializer with one row per vocabulary id."""
    inits = {i.name: i for i in model.graph.initializer}
    found = []
    for node in model.graph.node:
        table = inits.get(node.input[0]) if node.op_type == "Gather" else None
        if table is not None and len(table.dims) == 2 and table.dims[0] == rows and \
                table.data_type == TensorProto.FLOAT:
            found.append(node)
    return found


def prune_embedding_rows(model: onnx.ModelProto, old_ids: np.ndarray) -> int:
    """Keep the rows ``old_ids`` (new id -> original id) of each token-embedding table; returns bytes saved."""
    inits = {i.name: i for i in model.graph.initializer}
    saved = 0
    for node in embedding_gathers(model):
        init = inits[node.input[0]]
        table = numpy_helper.to_array(init)
        init.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(table[old_ids]), init.name))
        saved += table.nbytes - table[old_ids].nbytes
    return saved


def remap_id_constants(model: onnx.ModelProto, id_map: np.ndarray) -> int:
    """Renumber the token ids the graph compares ``input_ids`` with (the padding mask's ``Equal``: pad 0
    or EOT) through ``id_map`` (original id -> new id), so the mask stays right with a pruned vocabulary."""
    inputs = {i.name for i in model.graph.input}
    inits = {i.name: i for i in model.graph.initializer}
    consts = {n.output[0]: n for n in model.graph.node if n.op_type == "Constant"}
    changed = 0
    for node in model.graph.node:
        if node.op_type != "Equal" or not inputs & set(node.input):
            continue
        other = next(name for name in node.input if name not in inputs)
        holder = inits.get(other)
        if holder is None and other in consts:
            holder = next((a.t for a in consts[other].attribute if a.name == "value"), None)
        if holder is None:
            raise EdgesegError(f"the graph compares input_ids with {other!r}, which is not a constant")
        old = numpy_helper.to_array(holder)
        new = id_map[old.astype(np.int64)].astype(old.dtype)
        if (new < 0).any():
            raise EdgesegError(f"vocabulary pruning dropped the id(s) {old[new < 0].tolist()} the graph compares with")
        if np.array_equal(new, old):
            continue
        holder.CopyFrom(numpy_helper.from_array(new, holder.name))
        changed += 1
    return changed


#: how an INT8 token-embedding table is read (:func:`quantize_embedding_rows`); the table and row
#: scales are the same in both, so are the values the graph computes
EMBEDDING_FORMS = {
    "gather_cast_mul": "Gather(int8 table) -> Cast -> Mul(Gather(row scales)): gathers 1-byte rows "
                       "(ONNX Runtime; TensorRT 10 refuses INT8 outside Q/DQ)",
    "dequantize_gather": "DequantizeLinear(int8 table, per-row scale, axis 0) -> Gather: the Q/DQ form of TensorRT's "
                         "support matrix",
}
DEFAULT_EMBEDDING_FORM = "gather_cast_mul"


def quantize_embedding_rows(model: onnx.ModelProto, rows: int = VOCAB_SIZE, form: str = DEFAULT_EMBEDDING_FORM) -> int:
    """Store each token-embedding table as INT8 with a float scale per row; returns bytes saved.

    ``form`` (:data:`EMBEDDING_FORMS`) is how the graph reads it: ``gather_cast_mul`` gathers the
    INT8 rows and scales them (what ONNX Runtime runs fastest); ``dequantize_gather`` dequantizes
    the table (symmetric, zero point 0, one scale per row: ``axis=0``) and gathers float rows, the
    only INT8 form TensorRT 10 accepts. Both compute ``float(q) * scale`` in float32.
    """
    if form not in EMBEDDING_FORMS:
        raise EdgesegError(f"unknown embedding form {form!r}; choose one of {', '.join(EMBEDDING_FORMS)}")
    inits = {i.name: i for i in model.graph.initializer}
    saved = 0
    for node in embedding_gathers(model, rows):
        table = numpy_helper.to_array(inits[node.input[0]]).astype(np.float32)
        scale = np.abs(table).max(axis=1, keepdims=True) / 127.0
        scale[scale == 0] = 1.0
        q = np.clip(np.rint(table / scale), -127, 127).astype(np.int8)
        base, out, ids = node.input[0], node.output[0], node.input[1]
        scale = scale.astype(np.float32) if form == "gather_cast_mul" else scale.reshape(-1).astype(np.float32)
        model.graph.initializer.remove(inits[base])
        arrays = {base + "_int8": q, base + "_row_scale": scale}
        if form == "dequantize_gather":  # explicit zero point 0, one per row, like every other Q/DQ of the graph
            arrays[base + "_zero_point"] = np.zeros(len(q), np.int8)
        model.graph.initializer.extend(numpy_helper.from_array(a, n) for n, a in arrays.items())
        position = list(model.graph.node).index(node)
        model.graph.node.remove(node)
        for offset, new in enumerate(_embedding_nodes(form, node.name, base, ids, out)):
            model.graph.node.insert(position + offset, new)
        saved += table.nbytes - sum(a.nbytes for a in arrays.values())
    return saved


def _embedding_nodes(form: str, name: str, base: str, ids: str, out: str) -> list[onnx.NodeProto]:
    if form == "dequantize_gather":
        return [
            helper.make_node("DequantizeLinear", [base + "_int8", base + "_row_scale", base + "_zero_point"],
                             [base + "_dequantized"], name=name + "_dequantize", axis=0),
            helper.make_node("Gather", [base + "_dequantized", ids], [out], name=name, axis=0),
        ]
    return [
        helper.make_node("Gather", [base + "_int8", ids], [out + "_i8"], name=name + "_int8", axis=0),
        helper.make_node("Cast", [out + "_i8"], [out + "_f"], name=name + "_cast", to=TensorProto.FLOAT),
        helper.make_node("Gather", [base + "_row_scale", ids], [out + "_s"], name=name + "_scale", axis=0),
        helper.make_node("Mul", [out + "_f", out + "_s"], [out], name=name + "_dequant"),
    ]


# -- calibration --------------------------------------------------------------------------------
class _IdsReader:
    """ONNX Runtime CalibrationDataReader over equal-sized batches of token ids.

    ONNX Runtime's histogram calibrators (percentile, entropy) stack every batch's activations
    into one array, so every batch must have the same shape: a short last batch is topped up with
    prompts from the start of the set (a few prompts counted twice; min/max ranges are unchanged).
    """

    def __init__(self, ids: np.ndarray, batch: int):
        batch = max(1, min(batch, len(ids)))
        count = -(-len(ids) // batch)
        order = np.arange(count * batch) % len(ids)
        self._batches = [ids[order[i:i + batch]] for i in range(0, len(order), batch)]
        self._next, self._end = 0, len(self._batches)

    def __len__(self) -> int:
        return len(self._batches)

    def stride(self, most: int = 8) -> int:
        """Batches per collection round: the largest divisor of the batch count up to ``most``.

        ONNX Runtime collects calibration data in rounds of this many batches (its strided
        collection) and reduces each round before the next, so memory stays bounded by one round
        instead of every activation of every prompt (percentile over 2,000 prompts otherwise held
        ~21 GB for S0)."""
        return max(d for d in range(1, min(most, len(self._batches)) + 1) if len(self._batches) % d == 0)

    def set_range(self, start_index: int, end_index: int) -> None:
        self._next, self._end = start_index, min(end_index, len(self._batches))

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._next >= self._end:
            return None
        self._next += 1
        return {"input_ids": self._batches[self._next - 1]}

    def rewind(self) -> None:
        self._next, self._end = 0, len(self._batches)


class _DropPreprocessHint(logging.Filter):
    """ONNX Runtime's quantizer logs a pre-processing hint on every call; our graphs need none."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "pre-processing" not in record.getMessage()


def _quantize(fp32: Path, out: Path, mode: str, method: str, exclude: Sequence[str], cache: Path,
              calib_ids: np.ndarray | None, embedding_int8: bool, vocab_rows: int = VOCAB_SIZE,
              embedding_form: str = DEFAULT_EMBEDDING_FORM) -> None:
    model = onnx.load(str(fp32))
    targets = [n for n in weight_bearing_nodes(model) if n not in set(exclude)]
    hint = _DropPreprocessHint()
    logging.getLogger().addFilter(hint)
    try:
        _quantize_with_ort(fp32, out, mode, method, targets, cache, calib_ids)
    finally:
        logging.getLogger().removeFilter(hint)
    q = onnx.load(str(out))
    if embedding_int8:
        quantize_embedding_rows(q, vocab_rows, embedding_form)
    onnx.save(q, str(out))


def _quantize_with_ort(fp32: Path, out: Path, mode: str, method: str, targets: list[str], cache: Path,
                       calib_ids: np.ndarray | None) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_dynamic, quantize_static

    if mode == "static":
        calibrate = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
                     "entropy": CalibrationMethod.Entropy}[method]
        reader = _IdsReader(calib_ids, 32) if calib_ids is not None else None
        extra = {"ActivationSymmetric": True, "WeightSymmetric": True, "MatMulConstBOnly": True,
                 "OpTypesToExcludeOutputQuantization": ["MatMul", "Gemm"]}
        if reader is not None:
            extra["CalibStridedMinMax"] = reader.stride()  # despite the name: rounds for every method
        if method == "percentile":
            extra["CalibPercentile"] = 99.999
        with contextlib.redirect_stdout(io.StringIO()):  # its histogram collector prints on every round
            quantize_static(str(fp32), str(out), reader, quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                            nodes_to_quantize=targets or ["<none>"], calibrate_method=calibrate,
                            extra_options=extra, calibration_cache_path=str(cache))
    else:
        quantize_dynamic(str(fp32), str(out), per_channel=True, weight_type=QuantType.QInt8,
                         nodes_to_quantize=targets or ["<none>"], extra_options={"MatMulConstBOnly": True})


def _cosine_error(model: onnx.ModelProto, ids: np.ndarray, ref_memory: np.ndarray, ref_mask: np.ndarray,
                  threads: int | None, batch: int = 64) -> float:
    """1 - mean token cosine of ``model``'s memory on ``ids`` against the FP32 reference outputs."""
    session = cpu_session(model.SerializeToString(), threads)
    memory = np.concatenate([session.run(["memory"], {"input_ids": ids[start:start + batch]})[0]
                             for start in range(0, len(ids), batch)])
    return 1.0 - token_fidelity(memory, ref_memory, ref_mask)["mean_cosine"]


def _batches(path: Path, ids: np.ndarray, threads: int | None, extra_outputs: Sequence[str] = (),
             batch: int = 64) -> Iterator[list[np.ndarray]]:
    """Run the ONNX model at ``path`` on ``ids`` in batches; yields ``[memory, mask, *extra_outputs]`` per batch."""
    model_path = str(path)
    if extra_outputs:
        model = onnx.load(model_path)
        known = {o.name for o in model.graph.output}
        model.graph.output.extend(helper.make_tensor_value_info(n, TensorProto.FLOAT, None)
                                  for n in extra_outputs if n not in known)
        fd, model_path = tempfile.mkstemp(suffix=".onnx", dir=path.parent)
        os.close(fd)
        onnx.save(model, model_path)
    try:
        session = cpu_session(model_path, threads)
        names = ["memory", "mask", *extra_outputs]
        for start in range(0, len(ids), batch):
            yield session.run(names, {"input_ids": ids[start:start + batch]})
    finally:
        if extra_outputs:
            os.unlink(model_path)


def _run(path: Path, ids: np.ndarray, threads: int | None, extra_outputs: Sequence[str] = ()) -> list[np.ndarray]:
    results: list[list[np.ndarray]] = [[] for _ in range(2 + len(extra_outputs))]
    for values in _batches(path, ids, threads, extra_outputs):
        for slot, value in zip(results, values):
            slot.append(value)
    return [np.concatenate(r) for r in results]


def channel_absmax(path: Path, ids: np.ndarray, tensors: Sequence[str], threads: int | None = None,
                   batch: int = 32) -> dict[str, np.ndarray]:
    """Per-channel (last axis) max |value| of the named float tensors over ``ids``, reduced batch by batch."""
    result: dict[str, np.ndarray] = {}
    for values in _batches(path, ids, threads, tensors, batch):
        for name, value in zip(tensors, values[2:]):
            peak = np.abs(value.reshape(-1, value.shape[-1])).max(axis=0)
            result[name] = peak if name not in result else np.maximum(result[name], peak)
    return result


def smooth_for_int8(fp32: Path, out: Path, calib_ids: np.ndarray, alpha: float,
                    threads: int | None = None) -> dict[str, Any]:
    """Write ``fp32`` with its imbalanced LayerNorm -> MatMul pairs smoothed (:mod:`edgeseg.smoothing`) to ``out``.

    The factors come from the per-channel activation peaks of the first SMOOTH_PROMPTS calibration prompts. Returns the
    manifest record: alpha and the smoothed LayerNorms/MatMuls; ``out`` is written only when
    something was smoothed (``norms > 0``).
    """
    model = onnx.load(str(fp32))
    targets = smoothing.find_targets(model)
    calib_ids = calib_ids[:SMOOTH_PROMPTS]
    peaks = channel_absmax(fp32, calib_ids, [t.tensor for t in targets], threads) if targets else {}
    records = smoothing.smooth(model, targets, peaks, alpha)
    done = [r for r in records if r["smoothed"]]
    if done:
        onnx.save(model, str(out))
    return {"method": "smoothquant (LayerNorm -> MatMul, folded into LayerNorm scale/bias and weight rows)",
            "alpha": alpha, "min_spread": smoothing.MIN_SPREAD, "peaks_from_prompts": len(calib_ids),
            "candidates": len(records),
            "norms": len(done), "layers": sum(len(r["matmuls"]) for r in done),
            "max_spread": max((r["spread"] for r in records), default=None),
            "smoothed": [{k: r[k] for k in ("norm", "spread", "factor_min", "factor_max")} for r in done]}


# -- sensitivity --------------------------------------------------------------------------------
def layer_sensitivity(fp32: Path, qdq: Path, ids: np.ndarray, threads: int | None = None) -> list[tuple[str, float]]:
    """Rank the quantized layers of a static Q/DQ model by the relative error each adds on its own.

    For each quantized MatMul, the FP32 model's input activation is fake-quantized with the scale
    the Q/DQ model uses, multiplied by the Q/DQ model's dequantized weight, and compared with the
    FP32 product: ``||x_q W_q - x W|| / ||x W||`` over the given prompts. Largest first.
    """
    fmodel, qmodel = onnx.load(str(fp32)), onnx.load(str(qdq))
    f_nodes = {n.name: n for n in fmodel.graph.node}
    f_inits = {i.name: i for i in fmodel.graph.initializer}
    q_inits = {i.name: numpy_helper.to_array(i) for i in qmodel.graph.initializer}
    producer = {o: n for n in qmodel.graph.node for o in n.output}
    layers = []
    for node in qmodel.graph.node:
        if node.op_type not in ("MatMul", "Gemm") or node.name not in f_nodes:
            continue
        dq_a, dq_w = producer.get(node.input[0]), producer.get(node.input[1])
        if dq_a is None or dq_w is None or dq_a.op_type != "DequantizeLinear" or dq_w.op_type != "DequantizeLinear":
            continue
        a_scale = float(q_inits[dq_a.input[1]])
        w_int = q_inits[dq_w.input[0]].astype(np.float32)
        w_scale = q_inits[dq_w.input[1]]
        axis = next((a.i for a in dq_w.attribute if a.name == "axis"), 1)
        shape = [1] * w_int.ndim
        shape[axis] = -1
        layers.append((node.name, f_nodes[node.name].input[0], a_scale, w_int * w_scale.reshape(shape),
                       numpy_helper.to_array(f_inits[f_nodes[node.name].input[1]])))
    if not layers:
        return []
    activations = _run(fp32, ids, threads, extra_outputs=[layer[1] for layer in layers])[2:]
    scores = []
    for (name, _, a_scale, w_q, w), x in zip(layers, activations):
        x_q = np.clip(np.rint(x / a_scale), -127, 127) * a_scale  # symmetric INT8, zero-point 0
        exact = x @ w
        err = np.linalg.norm(x_q @ w_q - exact) / max(np.linalg.norm(exact), 1e-12)
        scores.append((name, float(err)))
    return sorted(scores, key=lambda item: -item[1])


def restore_gains(fp32: Path, qdq: Path, ids: np.ndarray, layers: Sequence[str],
                  threads: int | None = None) -> list[tuple[str, float]]:
    """End-to-end effect of returning each named layer of a Q/DQ model to float, alone.

    For each layer, a copy of the Q/DQ graph feeds that MatMul its FP32 input and FP32 weight;
    the gain is how much the token-cosine error (1 - mean cosine vs FP32 on ``ids``) drops.
    Largest gain first. This is the classic per-layer sensitivity analysis, made cheap by editing
    the graph instead of re-quantizing.
    """
    fmodel, qmodel = onnx.load(str(fp32)), onnx.load(str(qdq))
    f_nodes = {n.name: n for n in fmodel.graph.node}
    f_inits = {i.name: i for i in fmodel.graph.initializer}
    producer = {o: n for n in qmodel.graph.node for o in n.output}
    ref_memory, ref_mask = _run(fp32, ids, threads)

    def error(model: onnx.ModelProto) -> float:
        return _cosine_error(model, ids, ref_memory, ref_mask, threads)

    base = error(qmodel)
    gains = []
    for name in layers:
        index = next((i for i, n in enumerate(qmodel.graph.node) if n.name == name), None)
        dq_a = producer.get(qmodel.graph.node[index].input[0]) if index is not None else None
        if index is None or name not in f_nodes or dq_a is None or dq_a.op_type != "DequantizeLinear":
            continue
        variant = onnx.ModelProto()
        variant.CopyFrom(qmodel)
        node = variant.graph.node[index]
        node.input[0] = producer[dq_a.input[0]].input[0]  # the float tensor the QuantizeLinear reads
        weight = f_inits[f_nodes[name].input[1]]
        node.input[1] = weight.name + "_float"
        restored = onnx.TensorProto()
        restored.CopyFrom(weight)
        restored.name = weight.name + "_float"
        variant.graph.initializer.append(restored)
        gains.append((name, base - error(variant)))
    return sorted(gains, key=lambda item: -item[1])


def rank_layers(fp32: Path, qdq: Path, ids: np.ndarray, threads: int | None = None,
                max_restore_checks: int = 32) -> list[tuple[str, float]]:
    """Sensitivity ranking of a static Q/DQ model's layers, most harmful first.

    The local error of every layer (:func:`layer_sensitivity`) preselects ``max_restore_checks``
    candidates; those are ordered by their measured end-to-end gain (:func:`restore_gains`) and
    the rest follow by local error.
    """
    local = layer_sensitivity(fp32, qdq, ids, threads)
    head = [name for name, _ in local[:max_restore_checks]]
    measured = restore_gains(fp32, qdq, ids, head, threads)
    seen = {name for name, _ in measured}
    return measured + [(name, err) for name, err in local if name not in seen]


# -- the whole step -----------------------------------------------------------------------------
def ranking_prompts(calibration_prompts: Sequence[str], count: int) -> list[str]:
    """The prompts that rank layers when the gate fails: the first ``count`` calibration prompts.

    Without calibration prompts (dynamic mode needs none) the shipped calibration split is used:
    layers are never ranked on the eval prompts the gate measures.
    """
    from edgeseg.corpus import load_split

    return list(calibration_prompts[:count]) if len(calibration_prompts) else load_split("calibration")[:count]


def prompts_hash(prompts: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(prompts).encode("utf-8")).hexdigest()


def _finite_reference(fp32: Path, ids: np.ndarray, threads: int | None, src: Path) -> list[np.ndarray]:
    """The FP32 model's outputs on the gate's prompts: the reference every INT8 attempt is measured against."""
    reference = _run(fp32, ids, threads)
    if not np.isfinite(reference[0]).all():
        raise EdgesegError(f"{src} gives non-finite outputs (NaN or Inf) on the evaluation prompts: nothing to "
                           "quantize against")
    return reference


def quantize_bundle(
    src: str | os.PathLike,
    out: str | os.PathLike,
    calibration_prompts: Sequence[str],
    eval_prompts: Sequence[str],
    calibration_name: str = "calibration",
    method: str = "minmax",
    mode: str = "static",
    gate: Gate = Gate(),
    embedding_int8: bool = True,
    threads: int | None = None,
    sensitivity_prompts: int = 64,
    progress: Callable[[str], None] | None = None,
    prune_prompts: Sequence[str] | None = None,
    prune_name: str = "",
    smooth_alpha: float | None = SMOOTH_ALPHA,
    embedding_form: str = DEFAULT_EMBEDDING_FORM,
) -> dict[str, Any]:
    """Quantize the FP32 ONNX bundle ``src`` into an INT8 bundle at ``out``; returns its manifest.

    Static mode first smooths every LayerNorm -> MatMul pair (:mod:`edgeseg.smoothing`) with
    ``smooth_alpha`` (None or 0: off); dynamic mode needs no smoothing (its activation scales
    follow each batch) and ignores it. ``embedding_form`` is how the graph reads the INT8 embedding
    table (:data:`EMBEDDING_FORMS`: ``gather_cast_mul`` for ONNX Runtime, ``dequantize_gather`` for TensorRT).

    With ``prune_prompts`` the bundle's vocabulary is pruned to what those prompts need (plus the
    bundle's reference prompts, so its self-check still runs); see the module docs.
    """
    src = Path(src)
    manifest = _check_arguments(src, calibration_prompts, eval_prompts, method, mode, smooth_alpha, prune_prompts,
                                embedding_form)
    say = progress or (lambda message: log.info("%s", message))
    length = int(manifest["context_length"])
    tokenizer = bundle_tokenizer(src, manifest)
    eval_ids = tokenizer(list(eval_prompts), length).ids

    with bundle_writer(out) as tmp, work_dir(out) as work:
        fp32 = onnx_for_reading(src, manifest, work)
        cache = work / "calibration_cache.json"
        model_path = tmp / MODEL_FILE
        say(f"running FP32 reference on {len(eval_ids)} evaluation prompts")
        ref_memory, ref_mask = _finite_reference(fp32, eval_ids, threads, src)
        candidates = weight_bearing_nodes(onnx.load(str(fp32), load_external_data=False))
        pruned, fp32_work, cand_tokenizer = (None, fp32, tokenizer) if prune_prompts is None else \
            _prune_stage(src, manifest, fp32, tmp, work, prune_prompts, tokenizer, say)
        calib_ids = cand_tokenizer(list(calibration_prompts), length).ids if mode == "static" else None
        smoothed = None
        if mode == "static" and smooth_alpha:
            fp32_work, smoothed = _smooth_stage(fp32_work, work, calib_ids, smooth_alpha, threads, say)
        cand_ids = eval_ids if pruned is None else cand_tokenizer(list(eval_prompts), length).ids
        same = np.ones(len(eval_ids), bool) if pruned is None else (pruned.remap(eval_ids) == cand_ids).all(1)
        vocab_rows = VOCAB_SIZE if pruned is None else pruned.vocab_size

        def attempt(exclude: Sequence[str]) -> dict[str, Any]:
            _quantize(fp32_work, model_path, mode, method, exclude, cache, calib_ids, embedding_int8, vocab_rows,
                      embedding_form)
            memory, mask = _run(model_path, cand_ids, threads)
            return _gated_fidelity(memory, mask, ref_memory, ref_mask, same, pruned is not None)

        def rank() -> list[tuple[str, float]]:
            # rank on calibration prompts, never the gate's own eval prompts (dynamic mode may have none given)
            sens_ids = cand_tokenizer(ranking_prompts(calibration_prompts, sensitivity_prompts), length).ids
            if mode == "static":
                return rank_layers(fp32_work, model_path, sens_ids, threads)
            return rank_dynamic_layers(fp32_work, sens_ids, threads)  # dynamic scales follow each batch

        say(f"{mode} INT8 ({method}) of {len(candidates)} weight-bearing layers")
        fidelity, excluded, ranking = _fit_gate(attempt, rank, gate, say)
        new_manifest = inherited(manifest)
        if pruned is None:
            copy_files(tmp, src, manifest, include_model=False)
        else:
            _write_pruned_files(tmp, src, manifest, new_manifest, pruned, prune_prompts, prune_name)
        new_manifest.update(_int8_record(manifest, mode, method, embedding_int8, embedding_form, candidates,
                                         excluded, smoothed, calibration_name, calibration_prompts, fidelity, gate,
                                         ranking))
        result = finalize(tmp, new_manifest)
    return result


def _check_arguments(src: Path, calibration_prompts: Sequence[str], eval_prompts: Sequence[str], method: str,
                     mode: str, smooth_alpha: float | None, prune_prompts: Sequence[str] | None,
                     embedding_form: str) -> dict[str, Any]:
    """quantize_bundle's arguments, checked before any work (one :class:`EdgesegError` line each);
    returns the verified manifest of ``src``."""
    if smooth_alpha is not None and not 0.0 <= smooth_alpha < 1.0:
        raise EdgesegError(f"smoothing alpha must be in [0, 1) (0 turns smoothing off), got {smooth_alpha}")
    if method not in METHODS:
        raise EdgesegError(f"unknown calibration method {method!r}; choose one of {', '.join(METHODS)}")
    if mode not in MODES:
        raise EdgesegError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
    if embedding_form not in EMBEDDING_FORMS:
        raise EdgesegError(f"unknown embedding form {embedding_form!r}; choose one of {', '.join(EMBEDDING_FORMS)}")
    manifest = verify_bundle(src)
    if manifest["precision"] != "fp32" or manifest["backend"] != "onnxruntime":
        raise EdgesegError(f"{src} is a {manifest['precision']} {manifest['backend']} bundle; quantize needs an "
                           "FP32 ONNX bundle (edgeseg export)")
    if mode == "static" and len(calibration_prompts) < MIN_CALIBRATION_PROMPTS:
        raise EdgesegError(f"calibration needs at least {MIN_CALIBRATION_PROMPTS} prompts, "
                           f"got {len(calibration_prompts)}")
    if not eval_prompts:
        raise EdgesegError("the fidelity gate needs evaluation prompts")
    if prune_prompts is not None and not prune_prompts:
        raise EdgesegError("vocabulary pruning needs a non-empty prompt corpus")
    if prune_prompts is not None and (manifest["tokenizer"].get("vocab_size", VOCAB_SIZE) != VOCAB_SIZE):
        raise EdgesegError(f"{src} already has a pruned vocabulary; prune from a full-vocabulary FP32 bundle")
    return manifest


def _prune_stage(src: Path, manifest: dict[str, Any], fp32: Path, tmp: Path, work: Path,
                 prune_prompts: Sequence[str], tokenizer, say):
    """The pruned vocabulary (written into the bundle), the row-pruned FP32 graph and its tokenizer."""
    reference_prompts = [str(p) for p in load_reference(src, manifest)["prompts"]]
    pruned = prune_vocabulary([*prune_prompts, *reference_prompts], tokenizer)
    say(f"vocabulary pruned to {pruned.vocab_size:,} of {VOCAB_SIZE:,} ids from {len(prune_prompts):,} prompts")
    length = int(manifest["context_length"])
    pruned_tokenizer = pruned.tokenizer(pruned.write(tmp / PRUNED_VOCAB_FILENAME), length,
                                        pruned.new_id(tokenizer.pad_id))
    model = onnx.load(str(fp32))
    prune_embedding_rows(model, pruned.old_ids)
    remap_id_constants(model, pruned.id_map())  # the mask's pad / EOT ids follow the renumbering
    onnx.save(model, str(work / "fp32_pruned.onnx"))
    return pruned, work / "fp32_pruned.onnx", pruned_tokenizer


def _smooth_stage(fp32: Path, work: Path, calib_ids: np.ndarray, alpha: float, threads, say) -> tuple[Path, dict]:
    """Smooth the graph for INT8 (:func:`smooth_for_int8`); (graph to quantize, manifest record)."""
    smoothed = smooth_for_int8(fp32, work / "fp32_smoothed.onnx", calib_ids, alpha, threads)
    say(f"smoothing (alpha {alpha}): {smoothed['norms']} of {smoothed['candidates']} LayerNorm outputs have a "
        f"channel peak >= {smoothing.MIN_SPREAD:g}x the median; {smoothed['layers']} MatMul(s) smoothed")
    return (work / "fp32_smoothed.onnx" if smoothed["norms"] else fp32), smoothed


def _gated_fidelity(memory: np.ndarray, mask: np.ndarray, ref_memory: np.ndarray, ref_mask: np.ndarray,
                    same: np.ndarray, pruned: bool) -> dict[str, Any]:
    """Token fidelity on the prompts segmented as before (``same``); with a pruned vocabulary the others'
    pooled cosine is reported apart (``resegmented``)."""
    if not np.array_equal(mask[same], ref_mask[same]):
        raise EdgesegError("quantized model changed the padding mask")
    result: dict[str, Any] = token_fidelity(memory[same], ref_memory[same], ref_mask[same])
    if pruned:
        pooled_cos = cosine(pooled(memory[~same], mask[~same]), pooled(ref_memory[~same], ref_mask[~same]))
        result["resegmented"] = {
            "prompts": int((~same).sum()), "of": int(len(same)),
            "pooled_cosine_mean": float(pooled_cos.mean()) if len(pooled_cos) else None,
            "pooled_cosine_worst": float(pooled_cos.min()) if len(pooled_cos) else None,
            "note": "eval prompts with a word the pruning corpus lacks: segmented differently, compared "
                    "by masked mean-pooled memory, not gated"}
    return result


def _fit_gate(attempt, rank, gate: Gate, say) -> tuple[dict[str, Any], list[str], list[tuple[str, float]]]:
    """Quantize everything; while the gate fails, return the 1, 2, 4, ... most sensitive layers to float.

    Returns (fidelity, layers kept float, sensitivity ranking); raises when even all-float misses."""
    excluded: list[str] = []
    fidelity = attempt(excluded)
    say(f"fidelity vs FP32: mean cosine {fidelity['mean_cosine']:.5f}, worst {fidelity['worst_cosine']:.5f}")
    ranking: list[tuple[str, float]] = []
    if gate.passed(fidelity):
        return fidelity, excluded, ranking
    ranking = rank()
    count = 1
    while not gate.passed(fidelity) and count <= len(ranking):
        excluded = [name for name, _ in ranking[:count]]
        say(f"gate not met: keeping {count} most sensitive layer(s) in float")
        fidelity = attempt(excluded)
        say(f"fidelity vs FP32: mean cosine {fidelity['mean_cosine']:.5f}, worst {fidelity['worst_cosine']:.5f}")
        count = count * 2 if count * 2 <= len(ranking) or count == len(ranking) else len(ranking)
    if not gate.passed(fidelity):
        raise EdgesegError(
            f"the fidelity gate (mean >= {gate.mean_cosine}, worst >= {gate.worst_cosine}) cannot be met "
            f"even with every layer in float (mean {fidelity['mean_cosine']:.5f}, worst "
            f"{fidelity['worst_cosine']:.5f}); lower the gate or disable the INT8 embedding")
    return fidelity, excluded, ranking


def _int8_record(manifest: dict[str, Any], mode: str, method: str, embedding_int8: bool, embedding_form: str,
                 candidates: list[str], excluded: list[str], smoothed, calibration_name: str,
                 calibration_prompts: Sequence[str], fidelity: dict[str, Any], gate: Gate,
                 ranking: list[tuple[str, float]]) -> dict[str, Any]:
    """The manifest fields an INT8 bundle adds to its FP32 source's."""
    return {
        "precision": "int8",
        "quantization": {
            "mode": mode, "format": "qdq" if mode == "static" else "onnxruntime-dynamic",
            "weights": "int8 symmetric per-channel", "activations":
                "int8 symmetric per-tensor (calibrated)" if mode == "static" else "int8 per batch (dynamic)",
            "op_types": ["MatMul", "Gemm"], "float_ops": ["LayerNormalization", "Softmax", "Add", "Erf",
                                                        "activation x activation MatMul"],
            "embedding": "int8 per-row symmetric" if embedding_int8 else "float32",
            "embedding_form": embedding_form if embedding_int8 else None,
            "embedding_graph": EMBEDDING_FORMS[embedding_form] if embedding_int8 else "Gather(float32 table)",
            "quantized_layers": len(candidates) - len(excluded), "layers": len(candidates),
            "smoothing": smoothed,
        },
        "calibration": None if mode == "dynamic" else {
            "name": calibration_name, "sha256": prompts_hash(calibration_prompts),
            "count": len(calibration_prompts), "method": method,
        },
        "fidelity": {**fidelity, "vs": "fp32 bundle", "split": "eval", "gate": {
            "mean_cosine": gate.mean_cosine, "worst_cosine": gate.worst_cosine}, "passed": True},
        "excluded_layers": excluded,
        "sensitivity": [{"layer": n, "score": e} for n, e in ranking[:16]],
        "sensitivity_method": None if not ranking else (
            "restore-one gain in token-cosine error (top layers by local error)" if mode == "static"
            else "end-to-end damage of each layer alone under simulated dynamic INT8 (DynamicQuantizeLinear "
                 "activations, int8 per-channel weights) on calibration prompts (top layers by local error)"),
        "source_bundle": {"precision": manifest["precision"], "model_sha256": manifest["files"][
            manifest["model"]]["sha256"]},
        "tools": tool_versions("onnx", "onnxruntime", "numpy"),
    }


def dynamic_restore_damage(fp32: Path, ids: np.ndarray, layers: Sequence[str],
                           threads: int | None = None) -> list[tuple[str, float]]:
    """End-to-end damage of quantizing each named MatMul alone, as dynamic INT8 does, in a float graph.

    For each layer, a copy of the FP32 graph routes that MatMul's input through ONNX's own
    ``DynamicQuantizeLinear -> DequantizeLinear`` (per-call uint8, the exact activation rounding of
    ONNX Runtime's dynamic kernels) and gives it the per-channel int8-rounded weight; the damage is
    the token-cosine error (1 - mean cosine vs FP32 on ``ids``). Unlike the local error, this sees
    whether the layer's error reaches the output (MobileCLIP's RepMixer blocks, scaled by a small
    layer scale, barely do). Largest first.
    """
    fmodel = onnx.load(str(fp32))
    inits = {i.name: i for i in fmodel.graph.initializer}
    ref_memory, ref_mask = _run(fp32, ids, threads)
    damage = []
    for name in layers:
        index = next((i for i, n in enumerate(fmodel.graph.node) if n.name == name), None)
        if index is None or fmodel.graph.node[index].op_type != "MatMul" or \
                fmodel.graph.node[index].input[1] not in inits:
            continue
        variant = onnx.ModelProto()
        variant.CopyFrom(fmodel)
        node = variant.graph.node[index]
        weight = numpy_helper.to_array(inits[node.input[1]]).astype(np.float32)
        w_scale = np.maximum(np.abs(weight).max(axis=0, keepdims=True), 1e-12) / 127.0
        w_q = (np.clip(np.rint(weight / w_scale), -127, 127) * w_scale).astype(np.float32)
        tag = f"{name}_dynsim"
        variant.graph.initializer.append(numpy_helper.from_array(w_q, tag + "_w"))
        quant = helper.make_node("DynamicQuantizeLinear", [node.input[0]], [tag + "_q", tag + "_s", tag + "_z"],
                                 name=tag + "_quant")
        dequant = helper.make_node("DequantizeLinear", [tag + "_q", tag + "_s", tag + "_z"], [tag + "_x"],
                                   name=tag + "_dequant")
        node.input[0], node.input[1] = tag + "_x", tag + "_w"
        variant.graph.node.insert(index, dequant)
        variant.graph.node.insert(index, quant)
        damage.append((name, _cosine_error(variant, ids, ref_memory, ref_mask, threads)))
    return sorted(damage, key=lambda item: -item[1])


def rank_dynamic_layers(fp32: Path, ids: np.ndarray, threads: int | None = None,
                        max_checks: int = 32) -> list[tuple[str, float]]:
    """Dynamic-mode ranking, most harmful first: end-to-end damage of the ``max_checks`` layers with
    the largest local error (:func:`dynamic_layer_sensitivity`), then the rest by local error."""
    local = dynamic_layer_sensitivity(fp32, ids, threads)
    measured = dynamic_restore_damage(fp32, ids, [name for name, _ in local[:max_checks]], threads)
    seen = {name for name, _ in measured}
    return measured + [(name, err) for name, err in local if name not in seen]


def _write_pruned_files(tmp: Path, src: Path, manifest: dict[str, Any], new_manifest: dict[str, Any],
                        pruned: PrunedVocabulary, prune_prompts: Sequence[str], prune_name: str) -> None:
    """Files of a pruned bundle: the pruned vocabulary (already written), remapped reference ids, the rest."""
    vocab_name = manifest["tokenizer"]["vocab"]
    reference_name = (manifest.get("reference") or {}).get("file")
    skip = {*model_files(manifest), vocab_name, reference_name}
    copy_files(tmp, src, {"model": manifest["model"], "files": {n: v for n, v in manifest["files"].items()
                                                                 if n not in skip}}, include_model=False)
    if reference_name:
        ref = load_reference(src, manifest)
        ids = pruned.remap(ref["input_ids"])
        if (ids < 0).any():  # cannot happen: the reference prompts are part of the pruning corpus
            raise EdgesegError("vocabulary pruning dropped a token of the bundle's reference prompts")
        save_reference(tmp / reference_name, ref["prompts"], ids, ref["memory"], ref["mask"])
    new_manifest["tokenizer"] = {
        **manifest["tokenizer"], "vocab": PRUNED_VOCAB_FILENAME, "vocab_md5": md5_file(tmp / PRUNED_VOCAB_FILENAME),
        "sot_id": pruned.sot_id, "eot_id": pruned.eot_id,
        "pad_id": pruned.new_id(manifest["tokenizer"].get("pad_id", 0)), "vocab_size": pruned.vocab_size,
        "num_merges": pruned.num_merges,
        "pruned": {"corpus": prune_name, "sha256": prompts_hash(prune_prompts), "prompts": len(prune_prompts),
                   "original_vocab_size": VOCAB_SIZE,
                   "original_vocab_md5": manifest["tokenizer"].get("source_vocab_md5",
                                                                   manifest["tokenizer"].get("vocab_md5")),
                   "kept_ids": pruned.vocab_size,
                   "rule": "merges applied while tokenizing the corpus and the reference prompts, in rank order, "
                           "plus the 512 byte symbols and SOT/EOT"},
    }


def dynamic_layer_sensitivity(fp32: Path, ids: np.ndarray, threads: int | None = None,
                              batch: int = 64) -> list[tuple[str, float]]:
    """Rank weight-bearing layers for dynamic INT8 by the relative error each adds on its own.

    Simulates what ONNX Runtime's dynamic quantization does to one MatMul given its FP32 input:
    the activation is quantized per call (``DynamicQuantizeLinear``: asymmetric uint8 over the whole
    batch, range stretched to include 0), the weight per output channel (symmetric int8). The error
    is ``||x_q W_q - x W|| / ||x W||`` over ``ids`` in batches of ``batch`` (as the gate runs them).
    Activation outliers, the usual reason a layer must stay float, show up here; weights alone
    would miss them. Largest first.
    """
    model = onnx.load(str(fp32))
    inits = {i.name: i for i in model.graph.initializer}
    layers = []
    for node in model.graph.node:
        if node.op_type == "MatMul" and node.input[1] in inits:
            layers.append((node.name, node.input[0], numpy_helper.to_array(inits[node.input[1]]).astype(np.float32)))
        elif node.op_type == "Gemm" and node.input[1] in inits:
            weight = numpy_helper.to_array(inits[node.input[1]]).astype(np.float32)
            trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
            layers.append((node.name, node.input[0], weight.T if trans_b else weight))
    if not layers:
        return []
    activations = _run(fp32, ids, threads, extra_outputs=[layer[1] for layer in layers])[2:]
    scores = []
    for (name, _, weight), x in zip(layers, activations):
        w_scale = np.maximum(np.abs(weight).max(axis=0, keepdims=True), 1e-12) / 127.0
        w_q = np.clip(np.rint(weight / w_scale), -127, 127) * w_scale
        num = den = 0.0
        for start in range(0, len(x), batch):
            chunk = x[start:start + batch].astype(np.float32)
            lo, hi = min(float(chunk.min()), 0.0), max(float(chunk.max()), 0.0)
            scale = (hi - lo) / 255.0 or 1.0
            zero = np.clip(np.rint(-lo / scale), 0, 255)
            x_q = (np.clip(np.rint(chunk / scale) + zero, 0, 255) - zero) * scale
            exact = chunk @ weight
            num += float(np.square(x_q @ w_q - exact).sum())
            den += float(np.square(exact).sum())
        scores.append((name, float(np.sqrt(num / max(den, 1e-24)))))
    return sorted(scores, key=lambda item: -item[1])
