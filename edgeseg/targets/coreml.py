"""Core ML target: a torch encoder -> ``model.mlpackage`` (ML program) in a bundle.

The package:

* ML program, minimum deployment target iOS 17 / macOS 14 (spec version 8), FP16 compute
  (``--precision fp32`` computes in FP32 and cannot use the Neural Engine), meant to be loaded with
  ``computeUnits = .cpuAndNeuralEngine`` (recorded in the manifest; Core ML chooses at load time);
* input ``input_ids`` **int32** ``[batch, L]`` (Core ML has no int64 inputs; ids < 49,408 fit),
  batch enumerated as 1..max_batch (enumerated shapes, not ranges, so the Neural Engine can take them);
* outputs ``memory`` float32 ``[batch, L, 256]`` and ``mask`` **int32** ``[batch, L]``, 1 = padding
  (``input_ids == 0``, or after the first EOT under transformers semantics; computed in the program
  from the ids), 0 = a real token (Core ML has no bool outputs);
* ``--precision int8``: 8-bit weights (``linear_quantize_weights``: symmetric, per output channel,
  every weight of more than 2,048 elements, the token embedding included), FP16 activations;
  with ``w8a8`` also 8-bit activations (:func:`quantize_activations`, calibrated with :mod:`edgeseg.targets.mil`).

Conversion traces the inference copy of the encoder (:func:`edgeseg.export.inference_copy`, RepMixer
fused). torch and coremltools are imported only inside the functions that need them. On Linux
coremltools cannot run a model, so the package is checked by its spec (names, types, shapes,
deployment target, op counts, quantized weights, size), by an emulation of its stored weights
in torch and by evaluating its MIL program in float32 (:mod:`edgeseg.targets.mil`, gated); on macOS
it is also run and compared with the reference outputs.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import platform
import sys
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgeseg.backends import require_coremltools
from edgeseg.bundle import REFERENCE, bundle_writer, finalize, reference_entry, save_reference, tool_versions
from edgeseg.errors import EdgesegError
from edgeseg.outputs import token_fidelity
from edgeseg.tokenizer import MASK_RULES, get_tokenizer
from edgeseg.vocab import write_bundle_vocabulary

log = logging.getLogger(__name__)

PACKAGE = "model.mlpackage"
SPEC_VERSION_IOS17 = 8  # Core ML specification version of iOS 17 / macOS 14
#: smallest activation |max| quantized to 8 bits under --w8a8: its scale amax/127 is then a normal FP16 number
MIN_ACTIVATION_AMAX = 127 * 2.0 ** -14
WEIGHT_THRESHOLD = 2048  # weights with more elements are quantized (coremltools' default)
MAX_ENUMERATED_BATCH = 64
QUANTIZED_OPS = ("constexpr_affine_dequantize", "constexpr_blockwise_shift_scale")
#: Core ML (FP16 compute) vs the FP32 reference on macOS, per precision
PREDICT_GATES = {"fp32": (0.9999, 0.999), "fp16": (0.999, 0.99), "int8": (0.995, 0.98)}
#: the package's MIL program in float32 vs the FP32 reference (any OS): FP16/INT8 weights, W8A8 activations
EMULATION_GATES = {"fp32": (0.99999, 0.9999), "fp16": (0.9999, 0.999), "int8": (0.995, 0.98), "w8a8": (0.995, 0.98)}
EMULATION_PROMPTS = 200
W8A8_CALIBRATION = 512


def io_spec(context_length: int, output_dim: int = 256, mask_rule: str = "input_ids == 0") -> dict[str, Any]:
    """The Core ML contract as manifest entries (int32 ids in, int32 mask out)."""
    return {
        "inputs": [{"name": "input_ids", "dtype": "int32", "shape": ["batch", context_length]}],
        "outputs": [
            {"name": "memory", "dtype": "float32", "shape": ["batch", context_length, output_dim]},
            {"name": "mask", "dtype": "int32", "shape": ["batch", context_length],
             "values": f"1 = padding ({mask_rule}), 0 = token"},
        ],
    }


def batch_sizes(max_batch: int) -> list[int]:
    if not 1 <= max_batch <= MAX_ENUMERATED_BATCH:
        raise EdgesegError(f"--max-batch {max_batch}: Core ML packages enumerate batch sizes 1..N, N <= "
                           f"{MAX_ENUMERATED_BATCH}")
    return list(range(1, max_batch + 1))


def convert(model, precision: str, max_batch: int, w8a8: bool = False, calibration_ids: np.ndarray | None = None):
    """Trace the encoder's inference copy and convert it to an ML program (``ct.models.MLModel``).

    ``w8a8`` (with ``precision="int8"``) also quantizes activations, calibrated on ``calibration_ids``.
    """
    if w8a8 and precision != "int8":
        raise EdgesegError("--w8a8 quantizes activations on top of 8-bit weights: use it with --precision int8")
    if w8a8 and (calibration_ids is None or not len(calibration_ids)):
        raise EdgesegError("--w8a8 needs calibration prompts")
    if precision not in ("fp32", "fp16", "int8"):
        raise EdgesegError(f"unknown precision {precision!r} for Core ML")
    ct = require_coremltools()
    import torch

    from edgeseg.export import inference_copy

    class CoreMLWrapper(torch.nn.Module):
        """int32 ids in (cast to int64 inside); memory float32 and mask int32 (1 = padding) out."""

        def __init__(self, encoder):
            super().__init__()
            self.encoder = encoder

        def forward(self, input_ids):
            memory, mask = self.encoder(input_ids.long())
            return memory.float(), mask.to(torch.int32)

    length = model.context_length
    wrapper = CoreMLWrapper(inference_copy(model)).eval()
    example = torch.from_numpy(get_tokenizer()(["a dog"], length, model.pad_id).ids.astype(np.int32))
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(wrapper, example)
    shapes = ct.EnumeratedShapes(shapes=[[b, length] for b in batch_sizes(max_batch)], default=[1, length])
    chatter = io.StringIO()  # coremltools' progress bars; logged at debug level
    with warnings.catch_warnings(), contextlib.redirect_stderr(chatter):
        warnings.simplefilter("ignore")
        mlmodel = ct.convert(
            traced,
            inputs=[ct.TensorType(name="input_ids", shape=shapes, dtype=np.int32)],
            outputs=[ct.TensorType(name="memory", dtype=np.float32), ct.TensorType(name="mask", dtype=np.int32)],
            convert_to="mlprogram",
            minimum_deployment_target=ct.target.iOS17,
            compute_units=ct.ComputeUnit.CPU_AND_NE,
            compute_precision=ct.precision.FLOAT32 if precision == "fp32" else ct.precision.FLOAT16,
        )
        if w8a8:
            mlmodel, float_activations = quantize_activations(mlmodel, calibration_ids)
        if precision == "int8":
            from coremltools.optimize.coreml import OpLinearQuantizerConfig, OptimizationConfig, linear_quantize_weights

            config = OptimizationConfig(global_config=OpLinearQuantizerConfig(
                mode="linear_symmetric", dtype="int8", granularity="per_channel", weight_threshold=WEIGHT_THRESHOLD))
            mlmodel = linear_quantize_weights(mlmodel, config=config)
    log.debug("coremltools: %s", chatter.getvalue())
    mlmodel.short_description = f"edgeseg {model.name}: SAM3 text encoder (context {length})"
    rule = MASK_RULES[model.padding.semantics]
    mlmodel.input_description["input_ids"] = (f"int32 [batch, {length}] CLIP BPE token ids (SOT 49406, EOT 49407, "
                                              f"pad {model.pad_id})")
    mlmodel.output_description["memory"] = f"float32 [batch, {length}, {model.output_dim}] SAM3 text memory"
    mlmodel.output_description["mask"] = f"int32 [batch, {length}] padding mask: 1 = padding, 0 = token"
    mlmodel.user_defined_metadata.update({
        "edgeseg.encoder": model.name, "edgeseg.context_length": str(length), "edgeseg.precision": precision,
        "edgeseg.mask": f"1 = padding ({rule})", "edgeseg.semantics": model.padding.semantics,
        "edgeseg.pad_id": str(model.pad_id),
        "edgeseg.activations": "int8 before linear/conv inputs (W8A8), float16 elsewhere" if w8a8 else
        ("float32" if precision == "fp32" else "float16"),
    })
    if w8a8:
        mlmodel.user_defined_metadata["edgeseg.float_activation_ops"] = ",".join(float_activations)
    return mlmodel


def quantize_activations(mlmodel, calibration_ids: np.ndarray | None, batch: int = 16,
                         feeds: Sequence[dict[str, np.ndarray]] | None = None):
    """8-bit activations (W8A8's A8): symmetric int8 quantize/dequantize pairs before every ``linear`` and
    ``conv`` input, ranges = min/max over ``calibration_ids``.

    coremltools' ``linear_quantize_activations`` calibrates by running the model with Core ML (macOS
    only); here the same ranges come from :mod:`edgeseg.targets.mil` (the program evaluated in float32)
    and go through the same coremltools passes (prefix/suffix pairs, then redundant-pair elimination).
    Residual ``add`` inputs stay in float, as in the ONNX INT8 recipe. ``feeds`` (input dicts) replaces
    ``calibration_ids`` for programs that are not encoders. Returns (model, ops kept float).
    """
    from coremltools.converters.mil.frontend.milproto.load import load as load_milproto
    from coremltools.converters.mil.mil.passes.graph_pass import PassOption
    from coremltools.converters.mil.mil.passes.pass_registry import PASS_REGISTRY
    from coremltools.models import utils as model_utils
    from coremltools.optimize.coreml import OpLinearQuantizerConfig, OptimizationConfig

    from edgeseg.targets import mil

    program = mil.load_program(mlmodel)
    if feeds is None:  # an encoder: batches of token ids
        feeds = ({"input_ids": calibration_ids[i:i + batch].astype(np.int32)}
                 for i in range(0, len(calibration_ids), batch))
    ranges = mil.activation_ranges(program, feeds)
    floating = float_ops(program, ranges)
    config = OptimizationConfig(global_config=OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int8"),
                                op_type_configs={"add": None}, op_name_configs={name: None for name in floating})
    passes = []
    for name in ("compression::insert_prefix_quantize_dequantize_pair",
                 "compression::insert_suffix_quantize_dequantize_pair"):
        graph_pass = PASS_REGISTRY[name]
        graph_pass.set_options([PassOption("config", config), PassOption("activation_stats", ranges)])
        passes.append(graph_pass)
    passes.append(PASS_REGISTRY["common::dequantize_quantize_pair_elimination"])
    quantized = model_utils._apply_graph_pass(mlmodel, passes, spec_version=SPEC_VERSION_IOS17,
                                              pymil_load_func=load_milproto, skip_model_load=mlmodel.__proxy__ is None)
    return quantized, floating


def float_ops(program, ranges: dict[str, dict[str, float]]) -> list[str]:
    """``linear``/``conv`` ops whose input or output range is too small for an FP16 scale.

    The passes store each scale in FP16 (amax / 127); below ``MIN_ACTIVATION_AMAX`` it would be
    subnormal or zero (an all-zero range has no scale at all), so those ops keep float activations.
    """
    names = []
    for op in program.functions["main"].operations:
        if op.op_type not in ("linear", "conv"):
            continue
        tensors = [op.inputs["x"].name] + [v.name for v in op.outputs]
        tensors += [v.name for child in op.outputs[0].child_ops for v in child.outputs]  # conv -> activation
        amax = [max(abs(ranges[t]["rmin"]), abs(ranges[t]["rmax"])) for t in tensors if t in ranges]
        if amax and min(amax) < MIN_ACTIVATION_AMAX:
            names.append(op.name)
    return names


# -- checking a package without running it ------------------------------------------------------
def _dims(tensor_type) -> list[int | str]:
    dims = []
    for d in tensor_type.dimensions:
        dims.append(int(d.constant.size) if d.WhichOneof("dimension") == "constant" else "batch")
    return dims


def inspect_package(path: str | os.PathLike) -> dict[str, Any]:
    """Facts from a package's spec (works on any OS): I/O, deployment target, ops, quantized weights, size."""
    ct = require_coremltools()
    from coremltools.proto import FeatureTypes_pb2

    path = Path(path)
    spec = ct.utils.load_spec(str(path))

    def feature(desc) -> dict[str, Any]:
        array = desc.type.multiArrayType
        shapes = [list(s.shape) for s in array.enumeratedShapes.shapes] if array.HasField("enumeratedShapes") else []
        dtype = FeatureTypes_pb2.ArrayFeatureType.ArrayDataType.Name(array.dataType).lower()
        return {"name": desc.name, "dtype": dtype, "shape": list(array.shape), "enumerated": shapes}

    facts: dict[str, Any] = {
        "spec_version": int(spec.specificationVersion),
        "model_type": spec.WhichOneof("Type"),
        "inputs": [feature(d) for d in spec.description.input],
        "outputs": [feature(d) for d in spec.description.output],
    }
    if facts["model_type"] == "mlProgram":
        function = spec.mlProgram.functions["main"]
        block = function.block_specializations[function.opset]
        ops = Counter(op.type for op in block.operations)
        consts = {}
        for op in block.operations:
            if op.type == "const" and "val" in op.attributes:
                tensor = op.attributes["val"].immediateValue.tensor
                consts[op.outputs[0].name] = list(tensor.ints.values) or list(tensor.longInts.values)
        out_types = {o.name: o.type.tensorType for op in block.operations for o in op.outputs}
        quantized = [op for op in block.operations if op.type in QUANTIZED_OPS]
        reshape_batches = []
        for op in block.operations:
            if op.type == "reshape":
                target = consts.get(op.inputs["shape"].arguments[0].name) if "shape" in op.inputs else None
                reshape_batches.append(target[0] if target else None)
        facts.update({
            "opset": function.opset,
            "ops": dict(sorted(ops.items())),
            "quantized_weights": len(quantized),
            "quantized_elements": int(sum(np.prod([d.constant.size for d in op.outputs[0].type.tensorType.dimensions])
                                          for op in quantized)),
            "quantized_tensors": sorted(op.outputs[0].name for op in quantized),
            "output_shapes": {name: _dims(out_types[name]) for name in block.outputs if name in out_types},
            # A positive constant first dimension in a reshape would pin the batch size.
            "batch_pinned_reshapes": sum(1 for b in reshape_batches if isinstance(b, int) and b > 0),
        })
    files = [p for p in path.rglob("*") if p.is_file()]
    facts["bytes"] = sum(p.stat().st_size for p in files)
    facts["weights_bytes"] = sum(p.stat().st_size for p in files if "weights" in p.parts)
    return facts


def check_spec(facts: dict[str, Any], context_length: int, max_batch: int, precision: str,
               output_dim: int = 256, w8a8: bool = False) -> list[str]:
    """Problems with a package's spec against the contract; empty when it is right."""
    problems = []
    if facts.get("model_type") != "mlProgram":
        problems.append(f"not an ML program ({facts.get('model_type')})")
    if facts.get("spec_version", 0) < SPEC_VERSION_IOS17:
        problems.append(f"spec version {facts.get('spec_version')} is below iOS 17's ({SPEC_VERSION_IOS17})")
    inputs = {i["name"]: i for i in facts.get("inputs", [])}
    outputs = {o["name"]: o for o in facts.get("outputs", [])}
    if list(inputs) != ["input_ids"]:
        problems.append(f"inputs are {list(inputs)}, expected ['input_ids']")
    else:
        ids = inputs["input_ids"]
        if ids["dtype"] != "int32":
            problems.append(f"input_ids is {ids['dtype']}, expected int32")
        expected = [[b, context_length] for b in range(1, max_batch + 1)]
        if sorted(ids["enumerated"]) != expected:
            problems.append(f"input_ids shapes {ids['enumerated']} != batch 1..{max_batch} x {context_length}")
    if list(outputs) != ["memory", "mask"]:
        problems.append(f"outputs are {list(outputs)}, expected ['memory', 'mask']")
    else:
        if outputs["memory"]["dtype"] != "float32":
            problems.append(f"memory is {outputs['memory']['dtype']}, expected float32")
        if outputs["mask"]["dtype"] != "int32":
            problems.append(f"mask is {outputs['mask']['dtype']}, expected int32")
    shapes = facts.get("output_shapes", {})
    if shapes.get("memory") != ["batch", context_length, output_dim]:
        problems.append(f"memory shape {shapes.get('memory')} != [batch, {context_length}, {output_dim}]")
    if shapes.get("mask") != ["batch", context_length]:
        problems.append(f"mask shape {shapes.get('mask')} != [batch, {context_length}]")
    if facts.get("batch_pinned_reshapes"):
        problems.append(f"{facts['batch_pinned_reshapes']} reshape(s) pin the batch size")
    if precision == "int8" and not facts.get("quantized_weights"):
        problems.append("--precision int8 but no weight is stored as 8-bit")
    if precision != "int8" and facts.get("quantized_weights"):
        problems.append(f"{precision} package holds 8-bit weights")
    activation_quantizers = facts.get("ops", {}).get("quantize", 0)
    if w8a8 and not activation_quantizers:
        problems.append("--w8a8 but no activation is quantized")
    if not w8a8 and activation_quantizers:
        problems.append(f"{activation_quantizers} activation quantize op(s) in a package built without --w8a8")
    return problems


# -- numeric checks ------------------------------------------------------------------------------
def emulate_stored_weights(model, input_ids: np.ndarray, precision: str) -> tuple[np.ndarray, np.ndarray]:
    """Run the inference copy in torch with its weights as the package stores them, FP32 compute.

    int8: every weight of more than 2,048 elements quantized symmetric per output channel (axis 0)
    and dequantized, as ``linear_quantize_weights`` does; fp16: weights rounded to FP16; fp32: as is.
    This checks the effect of the stored weights only: FP16 arithmetic is not emulated.
    """
    import torch

    from edgeseg.export import inference_copy

    clone = inference_copy(model)
    with torch.no_grad():
        for param in clone.parameters():
            w = param.data
            if precision == "int8" and w.dim() >= 2 and w.numel() > WEIGHT_THRESHOLD:
                scale = w.abs().amax(dim=tuple(range(1, w.dim())), keepdim=True) / 127.0
                scale = torch.where(scale == 0, torch.ones_like(scale), scale)
                param.data = torch.clamp(torch.round(w / scale), -127, 127) * scale
            elif precision in ("int8", "fp16"):
                param.data = w.half().float()
        memory, mask = clone(torch.from_numpy(input_ids))
    return memory.numpy(), mask.numpy()


def emulate_program(package: str | os.PathLike, reference_model, prompts: Sequence[str], context_length: int,
                    gate: str) -> dict[str, Any]:
    """The package's MIL program evaluated in float32 vs ``reference_model`` (torch FP32) on up to
    ``EMULATION_PROMPTS`` evenly spaced ``prompts``; raises when the ``gate`` (a precision or "w8a8") is missed."""
    import torch

    from edgeseg.targets import mil

    prompts = list(prompts)[::max(1, len(prompts) // EMULATION_PROMPTS)][:EMULATION_PROMPTS]
    ids = get_tokenizer()(prompts, context_length, reference_model.pad_id).ids
    with torch.no_grad():
        ref_memory, ref_mask = reference_model(torch.from_numpy(ids))
    memory, mask = mil.evaluate_batches(mil.load_program(package), ids, 16)
    if not np.array_equal(mask, ref_mask.numpy()):
        raise EdgesegError("the Core ML program's padding mask differs from the encoder's")
    fidelity = token_fidelity(memory, ref_memory.float().numpy(), ref_mask.numpy())
    mean, worst = EMULATION_GATES[gate]
    fidelity.update({"vs": "torch fp32", "gate": {"mean_cosine": mean, "worst_cosine": worst},
                     "how": "the package's MIL program evaluated op by op with torch in float32 (stored weights, "
                            "quantize/dequantize steps; not Core ML's FP16 arithmetic)"})
    if fidelity["mean_cosine"] < mean or fidelity["worst_cosine"] < worst:
        raise EdgesegError(f"the Core ML program ({gate}) vs torch FP32: mean cosine {fidelity['mean_cosine']:.5f}, "
                           f"worst {fidelity['worst_cosine']:.5f} below the gate {mean} / {worst}")
    return fidelity


def predict(package: str | os.PathLike, input_ids: np.ndarray, max_batch: int,
            compute_units: str = "CPU_AND_NE") -> tuple[np.ndarray, np.ndarray]:
    """Run a package with Core ML (macOS only) in batches; returns memory float32 and mask bool."""
    if sys.platform != "darwin":
        raise EdgesegError("Core ML runs packages on macOS 14+ / iOS 17+ only; on this OS the spec is checked instead")
    ct = require_coremltools()
    mlmodel = ct.models.MLModel(str(package), compute_units=getattr(ct.ComputeUnit, compute_units))
    memories, masks = [], []
    for start in range(0, len(input_ids), max_batch):
        out = mlmodel.predict({"input_ids": input_ids[start:start + max_batch].astype(np.int32)})
        memories.append(np.asarray(out["memory"], dtype=np.float32))
        masks.append(np.asarray(out["mask"]) != 0)
    return np.concatenate(memories), np.concatenate(masks)


def ship_bank(directory: Path, fields: dict[str, Any], prompts: Sequence[str], dtype: str, max_batch: int,
              say: Callable[[str], None], rows: list[tuple[str, str]]) -> dict[str, Any]:
    """Write the prompt bank a Core ML bundle ships (``bank.safetensors``) and return its manifest entry
    (and a summary row in ``rows``).

    The memory is what the package computes: Core ML's own prediction on macOS; elsewhere the package's
    MIL program evaluated in float32 (:mod:`edgeseg.targets.mil`), which has the stored weights but not the
    device's FP16 arithmetic. The bank is bound to the package's files and the vocabulary (``fields`` is
    the manifest about to be written).
    """
    from edgeseg.bank import BANK_FILE, BankSource, build_bank, bundle_identity
    from edgeseg.bundle import bundle_tokenizer
    from edgeseg.fileio import sha256_file

    files = {path.relative_to(directory).as_posix(): {"sha256": sha256_file(path)}
             for path in sorted(directory.rglob("*")) if path.is_file()}
    package = directory / PACKAGE
    if sys.platform == "darwin":
        producer = "Core ML prediction (CPU_AND_NE)"

        def encode(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            return predict(package, ids, max_batch)
    else:
        from edgeseg.targets import mil

        producer = (f"the package's MIL program in float32 (edgeseg.targets.mil; Core ML cannot run on "
                    f"{platform.system()})")
        program = mil.load_program(package)

        def encode(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            return mil.evaluate_batches(program, ids, 16)
    source = BankSource(identity=bundle_identity({**fields, "files": files}),
                        tokenizer=bundle_tokenizer(directory, fields), encode_ids=encode,
                        encoder=str(fields["encoder"]), precision=str(fields["precision"]), producer=producer,
                        tools=tool_versions("numpy", "coremltools", "torch"))
    say(f"prompt bank: {len(prompts)} prompt(s) through the package ({dtype})")
    header = build_bank(directory / BANK_FILE, prompts, source, dtype)
    rows.append(("bank", f"{BANK_FILE}: {header.prompts} prompt(s), {header.entries} entries, {dtype}; {producer}"))
    return {"file": BANK_FILE, "dtype": dtype, "prompts": header.prompts, "entries": header.entries,
            "producer": producer}


# -- the bundle ----------------------------------------------------------------------------------
def _w8a8_calibration(model, calibration: Sequence[str] | None, say: Callable[[str], None]
                      ) -> tuple[list[str], np.ndarray]:
    """Up to ``W8A8_CALIBRATION`` evenly spaced calibration prompts and their ids."""
    if not calibration:
        raise EdgesegError("--w8a8 needs calibration prompts")
    calibration = list(calibration)[::max(1, len(calibration) // W8A8_CALIBRATION)][:W8A8_CALIBRATION]
    say(f"W8A8: calibrating activations on {len(calibration)} prompts (MIL emulation)")
    return calibration, get_tokenizer()(calibration, model.context_length, model.pad_id).ids


def _emulated_weights_fidelity(model, ref, precision: str) -> dict[str, Any]:
    """The stored-weight emulation (:func:`emulate_stored_weights`) vs the FP32 reference ``ref``."""
    memory, mask = emulate_stored_weights(model, ref.ids, precision)
    if not np.array_equal(mask, ref.mask):
        raise EdgesegError("Core ML weight emulation changed the padding mask")
    return {**token_fidelity(memory, ref.memory, ref.mask), "vs": "torch fp32",
            "how": "torch with the stored weights, float32 compute (FP16 arithmetic not emulated)"}


def _check_package(mlmodel, directory: Path, model, ref, precision: str, max_batch: int, w8a8: bool,
                   evaluation: Sequence[str], say: Callable[[str], None]
                   ) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any] | None]:
    """Save the package in ``directory`` and check it: its spec, its MIL program vs torch FP32 on
    ``evaluation`` and, on macOS, Core ML's prediction vs the FP32 reference ``ref``.

    Returns (the spec's facts, the MIL emulation's fidelity, the prediction's fidelity or None).
    """
    package = directory / PACKAGE
    mlmodel.save(str(package))
    facts = inspect_package(package)
    problems = check_spec(facts, model.context_length, max_batch, precision, model.output_dim, w8a8)
    if problems:
        raise EdgesegError(f"the Core ML package fails its spec check: {'; '.join(problems)}")
    say("evaluating the package's MIL program against torch FP32")
    program_fidelity = emulate_program(package, ref.model, evaluation, model.context_length,
                                       "w8a8" if w8a8 else precision)
    predicted = _predicted_fidelity(package, ref, precision, max_batch) if sys.platform == "darwin" else None
    return facts, program_fidelity, predicted


def _predicted_fidelity(package: Path, ref, precision: str, max_batch: int) -> dict[str, Any]:
    """Core ML's own prediction (macOS) vs the FP32 reference ``ref``; raises when the gate is missed."""
    memory, mask = predict(package, ref.ids, max_batch)
    if not np.array_equal(mask, ref.mask):
        raise EdgesegError("Core ML changed the padding mask on the reference prompts")
    predicted = token_fidelity(memory, ref.memory, ref.mask)
    mean, worst = PREDICT_GATES[precision]
    predicted.update({"gate": {"mean_cosine": mean, "worst_cosine": worst}, "compute_units": "CPU_AND_NE",
                      "passed": predicted["mean_cosine"] >= mean and predicted["worst_cosine"] >= worst})
    if not predicted["passed"]:
        raise EdgesegError(f"Core ML vs FP32 reference: mean cosine {predicted['mean_cosine']:.5f}, worst "
                           f"{predicted['worst_cosine']:.5f} below the gate {mean} / {worst}")
    return predicted


def _coreml_entry(facts: dict[str, Any], mlmodel, precision: str, max_batch: int, w8a8: bool,
                  float_activation_ops: list[str], predicted: dict[str, Any] | None) -> dict[str, Any]:
    """The manifest's ``coreml`` entry: how the package was made and checked."""
    return {
        "package": PACKAGE, "model_type": "mlProgram", "minimum_deployment_target": "iOS17 / macOS14",
        "spec_version": facts["spec_version"], "compute_units": "CPU_AND_NE",
        "compute_precision": "float32" if precision == "fp32" else "float16",
        "weights": {"int8": "int8 symmetric per-channel (linear_quantize_weights), embedding included",
                    "fp16": "float16", "fp32": "float32"}[precision],
        "activations": mlmodel.user_defined_metadata["edgeseg.activations"],
        "w8a8": w8a8,
        "float_activation_ops": float_activation_ops,
        "batch_sizes": batch_sizes(max_batch), "max_batch": max_batch,
        "ops": facts["ops"], "quantized_weights": facts["quantized_weights"],
        "quantized_elements": facts["quantized_elements"], "package_bytes": facts["bytes"],
        "weights_bytes": facts["weights_bytes"],
        "checked": "spec + MIL emulation + prediction" if predicted else
        f"spec + MIL emulation (Core ML cannot run on {platform.system()})",
    }


def _calibration_entry(calibration: list[str], name: str) -> dict[str, Any]:
    from edgeseg.quantize import prompts_hash

    return {"name": name, "count": len(calibration), "method": "minmax", "sha256": prompts_hash(calibration),
            "how": "activation min/max from the MIL program evaluated in float32"}


def _summary_rows(facts: dict[str, Any], emulated: dict[str, Any], program_fidelity: dict[str, Any],
                  predicted: dict[str, Any] | None, float_activation_ops: list[str],
                  w8a8: bool) -> list[tuple[str, str]]:
    size = facts["bytes"] / 1e6
    rows = [
        ("target", f"{PACKAGE}: ML program, iOS 17+/macOS 14+, int32 ids, {facts['quantized_weights']} "
                   f"8-bit weight tensor(s), {size:.1f} MB"),
        ("check", f"spec OK ({sum(facts['ops'].values())} ops); stored-weight emulation vs FP32: mean cos "
                  f"{emulated['mean_cosine']:.5f}, worst {emulated['worst_cosine']:.5f}"),
        ("emulate", f"MIL program in float32 vs torch FP32 ({program_fidelity['prompts']} prompts): mean cos "
                    f"{program_fidelity['mean_cosine']:.5f}, worst {program_fidelity['worst_cosine']:.5f}"
                    + (f"; W8A8: {facts['ops'].get('quantize', 0)} activation quantize ops, "
                       f"{len(float_activation_ops)} linear/conv kept float" if w8a8 else "")),
    ]
    if predicted:
        rows.append(("predict", f"Core ML ({predicted['compute_units']}) vs FP32: mean cos "
                                f"{predicted['mean_cosine']:.5f}, worst {predicted['worst_cosine']:.5f}"))
    else:
        rows.append(("predict", f"not run: Core ML predicts on macOS only (this is {platform.system()})"))
    return rows


def coreml_bundle(
    model,
    out: str | os.PathLike,
    precision: str,
    max_batch: int,
    reference_prompts: Sequence[str],
    source: dict[str, Any],
    w8a8: bool = False,
    extra: dict[str, Any] | None = None,
    progress: Callable[[str], None] | None = None,
    calibration: Sequence[str] | None = None,
    evaluation: Sequence[str] | None = None,
    calibration_name: str = "calibration",
    bank: Sequence[str] | None = None,
    bank_dtype: str = "float32",
) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    """Convert ``model`` and write a Core ML bundle at ``out``; returns (manifest, summary rows).

    ``bank``: prompts whose outputs the bundle ships in a prompt bank beside the package
    (:func:`ship_bank`), so that an app answers them without running the model.

    Every package's MIL program is also evaluated (:mod:`edgeseg.targets.mil`) on up to
    ``EMULATION_PROMPTS`` of ``evaluation`` (default: the reference prompts) against torch FP32 and
    must meet the precision's gate; ``w8a8`` calibrates activations on up to ``W8A8_CALIBRATION``
    of ``calibration``.
    """
    from edgeseg.export import fp32_reference

    say = progress or (lambda message: log.info("%s", message))
    require_coremltools()
    length = model.context_length
    ref = fp32_reference(model, reference_prompts)
    calibration_ids = None
    if w8a8:
        calibration, calibration_ids = _w8a8_calibration(model, calibration, say)
    say(f"converting {model.name} to a Core ML ML program ({precision}{' W8A8' if w8a8 else ''}, "
        f"batch 1..{max_batch})")
    mlmodel = convert(model, precision, max_batch, w8a8, calibration_ids)
    float_activation_ops = [n for n in mlmodel.user_defined_metadata.get("edgeseg.float_activation_ops", "").split(",")
                            if n]
    emulated = _emulated_weights_fidelity(model, ref, precision)
    rows: list[tuple[str, str]] = []
    with bundle_writer(out) as tmp:
        facts, program_fidelity, predicted = _check_package(mlmodel, tmp, model, ref, precision, max_batch, w8a8,
                                                            evaluation or reference_prompts, say)
        rule = MASK_RULES[model.padding.semantics]
        tokenizer = write_bundle_vocabulary(tmp, model.pad_id, rule)
        save_reference(tmp / REFERENCE, reference_prompts, ref.ids, ref.memory, ref.mask)
        fields = {
            "encoder": model.name,
            "context_length": length,
            "position_table": getattr(model, "position_table", None),
            "semantics": model.padding.semantics,
            "precision": precision,
            "target": "coreml",
            "backend": "coreml",
            # The package is a folder; its Manifest.json stands for it (the bundle lists files only).
            "model": f"{PACKAGE}/Manifest.json",
            **io_spec(length, model.output_dim, rule),
            "tokenizer": tokenizer,
            "source": source,
            "coreml": _coreml_entry(facts, mlmodel, precision, max_batch, w8a8, float_activation_ops, predicted),
            "fidelity": {"emulated_weights": emulated, "mil_emulation": program_fidelity, "coreml": predicted},
            "calibration": _calibration_entry(calibration, calibration_name) if w8a8 else None,
            "excluded_layers": float_activation_ops,
            "reference": reference_entry(len(reference_prompts)),
            "params": model.num_parameters(include_unused=False),
            **(extra or {}),
            "tools": tool_versions("torch", "coremltools", "numpy"),
        }
        if bank:
            fields["bank"] = ship_bank(tmp, fields, bank, bank_dtype, max_batch, say, rows)
        manifest = finalize(tmp, fields)
    rows += _summary_rows(facts, emulated, program_fidelity, predicted, float_activation_ops, w8a8)
    return manifest, rows
