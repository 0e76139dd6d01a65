"""``edgeseg export``, ``quantize`` and ``build``: from an encoder to deployable bundles."""

from __future__ import annotations

from pathlib import Path

import click

from edgeseg.cli.common import (
    BATCH_RANGE,
    CHECKPOINT_HELP,
    CONTEXT_HELP,
    CONTEXT_RANGE,
    COSINE_RANGE,
    ENCODER_HELP,
    POSITION_HELP,
    SEED_RANGE,
    THREADS_RANGE,
    _load,
    _note,
    _source,
    cli,
    semantics_option,
)
from edgeseg.errors import EdgesegError, require_extra


@cli.command()
@click.option("--encoder", required=True, help=ENCODER_HELP)
@click.option("--checkpoint", type=click.Path(path_type=Path), default=None, help=CHECKPOINT_HELP)
@click.option("--context-length", type=CONTEXT_RANGE, default=None, help=CONTEXT_HELP)
@click.option("--position-table", type=click.Choice(["interpolate", "slice"]), default=None,
              help=POSITION_HELP)
@click.option("--opset", type=click.IntRange(min=17), default=17, show_default=True, help="ONNX opset (>= 17).")
@click.option("--reference-prompts", type=click.Path(path_type=Path), default=None,
              help="Prompts whose ids and FP32 outputs are stored in the bundle for self-checks "
                   "(default: 32 prompts of the held-out reference split, which no gate and no fitted corpus uses).")
@click.option("--seed", type=SEED_RANGE, default=0, show_default=True, help="Seed of the random weights.")
@click.option("--dynamic-length", is_flag=True,
              help="Dynamic sequence axis (causal SAM3 teacher only): ids of 1..L tokens, exact on valid positions.")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Bundle directory to write.")
@semantics_option
def export(encoder: str, checkpoint: Path | None, context_length: int | None, position_table: str | None, opset: int,
           reference_prompts: Path | None, seed: int, dynamic_length: bool, out: Path,
           semantics: str | None) -> None:
    """Export an encoder to an FP32 ONNX bundle, verified against torch with ONNX Runtime.

    The graph takes input_ids int64 [batch, L] (dynamic batch, fixed L) and returns memory float32
    [batch, L, 256] and mask bool [batch, L]. S0's RepMixer BatchNorms are folded first; unused
    weights are not in the graph. The bundle holds model.onnx, the tokenizer vocabulary, reference
    inputs/outputs and manifest.json (sha256 of every file); it is written atomically.
    """
    require_extra("edgeseg export", "build", "torch", "onnx")
    from edgeseg.bundle import check_bundle_target
    from edgeseg.corpus import reference_prompts as reference_set
    from edgeseg.export import export_bundle

    check_bundle_target(out)
    prompts = reference_set(reference_prompts)
    if dynamic_length:
        from edgeseg.encoders import get_config
        from edgeseg.export import check_dynamic_length

        check_dynamic_length(encoder, get_config(encoder))
    model = _load(encoder, checkpoint, context_length, position_table, "cpu", seed, semantics)
    manifest = export_bundle(model, out, prompts, _source(checkpoint, seed, model), opset=opset,
                             dynamic_length=dynamic_length)
    _note(f"exported {encoder} (context {manifest['context_length']}, FP32, {manifest['semantics']} padding: pad id "
          f"{manifest['tokenizer']['pad_id']}) -> {out}; ONNX Runtime vs torch max abs diff "
          f"{manifest['export']['max_abs_diff']:.2e}")


@cli.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--out", required=True, type=click.Path(path_type=Path), help="INT8 bundle directory to write.")
@click.option("--calibration", "calibration_file", type=click.Path(path_type=Path), default=None,
              help="Calibration prompts, one per line (default: the shipped calibration split, 2,000 prompts). "
                   "They also rank layers when the gate fails (never the eval prompts).")
@click.option("--calibration-limit", type=click.IntRange(min=1), default=None,
              help="Use only the first N calibration prompts (faster, e.g. for the 353M-parameter teacher).")
@click.option("--method", type=click.Choice(["minmax", "percentile", "entropy"]), default="minmax",
              show_default=True, help="Activation range calibration (static mode).")
@click.option("--mode", type=click.Choice(["static", "dynamic"]), default="static", show_default=True,
              help="static: explicit Q/DQ for TensorRT and ORT; dynamic: runtime activation scales (CPU only).")
@click.option("--eval-prompts", type=click.Path(path_type=Path), default=None,
              help="Prompts for the fidelity gate (default: the held-out eval split).")
@click.option("--eval-limit", type=click.IntRange(min=1), default=1000, show_default=True,
              help="Evenly spaced prompts of the eval set used by the gate.")
@click.option("--min-mean-cosine", type=COSINE_RANGE, default=0.999, show_default=True,
              help="Gate: mean over prompts of the valid-token cosine, INT8 vs FP32.")
@click.option("--min-worst-cosine", type=COSINE_RANGE, default=0.99, show_default=True,
              help="Gate: the worst prompt's valid-token cosine.")
@click.option("--float-embedding", is_flag=True, help="Keep the token-embedding table in FP32 (default: INT8 rows).")
@click.option("--embedding-form", type=click.Choice(["gather_cast_mul", "dequantize_gather"]),
              default="gather_cast_mul", show_default=True,
              help="How the graph reads the INT8 embedding rows: gather_cast_mul (ONNX Runtime's fastest) or "
                   "dequantize_gather (DequantizeLinear -> Gather, the form TensorRT 10 accepts: for a bundle you "
                   "will build with --target gpu/jetson). Same table, same values.")
@click.option("--prune-vocab", "prune_vocab", default=None, metavar="train|FILE",
              help="Vocabulary pruning: keep only the embedding rows (and BPE merges) that a prompt corpus needs, "
                   "plus all byte tokens; the bundle ships the pruned tokenizer. 'train' = the shipped calibration "
                   "+ distill splits (never the eval split the gate uses), or a prompt file. Words outside the "
                   "corpus still tokenize (into smaller pieces); the gate reports those prompts apart.")
@click.option("--smooth-alpha", type=click.FloatRange(min=0.0, max=1.0, max_open=True), default=0.5,
              show_default=True,
              help="Static mode: SmoothQuant-style smoothing of LayerNorm -> MatMul pairs whose largest channel peak "
                   "is >= 8x the median (the outlier channels of trained transformers), folded into the LayerNorm "
                   "and the weights before calibration; alpha = how much of the imbalance moves into the weights. "
                   "0 turns it off.")
@click.option("--threads", type=THREADS_RANGE, default=None, help="ONNX Runtime intra-op threads.")
def quantize(bundle: Path, out: Path, calibration_file: Path | None, calibration_limit: int | None, method: str,
             mode: str, eval_prompts: Path | None, eval_limit: int, min_mean_cosine: float,
             min_worst_cosine: float, float_embedding: bool, embedding_form: str, prune_vocab: str | None,
             smooth_alpha: float, threads: int | None) -> None:
    """Quantize an FP32 ONNX bundle to INT8, calibrated on prompts and gated on fidelity.

    Static mode writes explicit Q/DQ (symmetric INT8, per-channel weights, per-tensor activations)
    on every weight-bearing MatMul/Gemm; LayerNorm, Softmax, GELU and residual Adds stay float. The
    token-embedding table is stored INT8 with a scale per row. LayerNorm outputs with outlier
    channels are smoothed first (--smooth-alpha). If INT8 vs FP32 on the eval prompts
    misses the gate, the layers that add the most error are returned to float until it holds; the
    manifest lists them. Never imports torch.
    """
    require_extra("edgeseg quantize", "build", "onnx")
    from edgeseg.bundle import check_bundle_target
    from edgeseg.corpus import calibration_set, gate_set, pruning_corpus
    from edgeseg.quantize import Gate, quantize_bundle

    check_bundle_target(out)
    calibration, calibration_name = calibration_set(calibration_file, calibration_limit)
    evaluation = gate_set(eval_prompts, eval_limit)
    prune_prompts, prune_name = pruning_corpus(prune_vocab) if prune_vocab is not None else (None, "")
    manifest = quantize_bundle(bundle, out, calibration, evaluation, calibration_name=calibration_name,
                               method=method, mode=mode, gate=Gate(min_mean_cosine, min_worst_cosine),
                               embedding_int8=not float_embedding, threads=threads, progress=_note,
                               prune_prompts=prune_prompts, prune_name=prune_name, smooth_alpha=smooth_alpha,
                               embedding_form=embedding_form)
    fid = manifest["fidelity"]
    size = sum(f["bytes"] for f in manifest["files"].values())
    _note(f"INT8 ({mode}) -> {out}: {size / 1e6:.1f} MB, mean cosine {fid['mean_cosine']:.5f}, worst "
          f"{fid['worst_cosine']:.5f} on {fid['prompts']} eval prompts; {len(manifest['excluded_layers'])} "
          f"layer(s) kept in float")
    if fid.get("resegmented"):
        r = fid["resegmented"]
        pooled = "" if r["pooled_cosine_mean"] is None else (
            f": pooled cosine mean {r['pooled_cosine_mean']:.4f}, worst {r['pooled_cosine_worst']:.4f}")
        _note(f"pruned vocabulary: {manifest['tokenizer']['vocab_size']:,} ids; {r['prompts']} of {r['of']} eval "
              f"prompts have a word outside the pruning corpus (segmented differently, not gated){pooled}")



@cli.command()
@click.option("--target", required=True, type=click.Choice(["onnx", "gpu", "jetson", "coreml"]),
              help="onnx: ONNX Runtime; gpu: TensorRT engine built here; jetson: ONNX + build_engine.py for the "
                   "device (built directly on a Jetson); coreml: model.mlpackage (iOS 17+ / macOS 14+).")
@click.option("--encoder", default=None, help=ENCODER_HELP + " Either --encoder or --bundle.")
@click.option("--bundle", type=click.Path(path_type=Path), default=None,
              help="Start from an ONNX bundle (edgeseg export / quantize) instead of a torch encoder.")
@click.option("--checkpoint", type=click.Path(path_type=Path), default=None, help=CHECKPOINT_HELP)
@click.option("--context-length", type=CONTEXT_RANGE, default=None, help=CONTEXT_HELP)
@click.option("--position-table", type=click.Choice(["interpolate", "slice"]), default=None,
              help=POSITION_HELP)
@click.option("--precision", type=click.Choice(["fp32", "fp16", "int8"]), default=None,
              help="Default: int8 (static Q/DQ) for onnx/gpu/jetson, fp16 for coreml; with --bundle, the bundle's. "
                   "Core ML int8 = 8-bit weights, FP16 activations.")
@click.option("--max-batch", type=BATCH_RANGE, default=8, show_default=True,
              help="Largest batch: TensorRT profile 1..N (opt 1); Core ML enumerated batch sizes 1..N.")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Bundle directory to write.")
@click.option("--reference-prompts", type=click.Path(path_type=Path), default=None,
              help="Prompts stored with FP32 outputs for self-checks (default: 32 prompts of the held-out reference "
                   "split).")
@click.option("--calibration", "calibration_file", type=click.Path(path_type=Path), default=None,
              help="INT8 calibration prompts (default: the shipped calibration split).")
@click.option("--calibration-limit", type=click.IntRange(min=1), default=None, help="Use the first N only.")
@click.option("--eval-prompts", type=click.Path(path_type=Path), default=None,
              help="Prompts for the INT8/FP16 fidelity gate (default: the held-out eval split).")
@click.option("--eval-limit", type=click.IntRange(min=1), default=1000, show_default=True,
              help="Evenly spaced prompts of the eval set used by the gate.")
@click.option("--method", type=click.Choice(["minmax", "percentile", "entropy"]), default="minmax",
              show_default=True, help="INT8 activation range calibration.")
@click.option("--min-mean-cosine", type=COSINE_RANGE, default=0.999, show_default=True,
              help="INT8/FP16 gate: mean cosine.")
@click.option("--min-worst-cosine", type=COSINE_RANGE, default=0.99, show_default=True,
              help="INT8/FP16 gate: worst prompt.")
@click.option("--opset", type=click.IntRange(min=17), default=17, show_default=True, help="ONNX opset (>= 17).")
@click.option("--hardware-compatible", is_flag=True, help="TensorRT: engine runs on any Ampere+ GPU (slower).")
@click.option("--version-compatible", is_flag=True, help="TensorRT: engine runs on later TensorRT versions.")
@click.option("--workspace-mib", type=click.IntRange(min=1), default=None, help="TensorRT builder workspace limit.")
@click.option("--timing-cache", type=click.Path(path_type=Path), default=None,
              help="TensorRT timing cache (default: ~/.cache/edgeseg/tensorrt-timing.cache).")
@click.option("--float-embedding", is_flag=True, help="INT8: keep the token-embedding table FP32 (default: INT8 rows; "
              "read as DequantizeLinear -> Gather for gpu/jetson, Gather -> Cast -> Mul for onnx).")
@click.option("--tensorrt-version", default=None, metavar="VERSION",
              help="gpu/jetson: lint the final ONNX against this TensorRT version's ONNX support matrix (10.3, 10.13, "
                   "10.14, 10.16; default 10.3, the oldest the Jetson kit supports); a graph outside it stops the "
                   "build (exit 2).")
@click.option("--w8a8", is_flag=True, help="Core ML: 8-bit activations on top of 8-bit weights (implies --precision "
              "int8; symmetric, before every linear/conv input, calibrated on the calibration prompts; pays off on "
              "A17 Pro / M4).")
@click.option("--bank-prompts", type=click.Path(path_type=Path), default=None,
              help="Core ML: also ship a prompt bank of these prompts beside the package (an app answers them "
                   "without the model; see README 'Prompt banks').")
@click.option("--bank-dtype", type=click.Choice(["float32", "float16"]), default="float32", show_default=True,
              help="Memory dtype of --bank-prompts' bank.")
@click.option("--threads", type=THREADS_RANGE, default=None, help="ONNX Runtime intra-op threads.")
@click.option("--seed", type=SEED_RANGE, default=0, show_default=True, help="Seed of the random weights.")
@semantics_option
def build(target: str, encoder: str | None, bundle: Path | None, checkpoint: Path | None, context_length: int | None,
          position_table: str | None, precision: str | None, max_batch: int, out: Path, reference_prompts: Path | None,
          calibration_file: Path | None, calibration_limit: int | None, eval_prompts: Path | None, eval_limit: int,
          method: str, min_mean_cosine: float, min_worst_cosine: float, opset: int, hardware_compatible: bool,
          version_compatible: bool, workspace_mib: int | None, timing_cache: Path | None, float_embedding: bool,
          tensorrt_version: str | None, w8a8: bool, bank_prompts: Path | None, bank_dtype: str, threads: int | None,
          seed: int, semantics: str | None) -> None:
    """Build a deployable bundle for a target, from an encoder (export -> quantize/fp16 -> target) or a bundle.

    Prerequisites are checked first: --target gpu needs TensorRT 10+ and an NVIDIA GPU here; --target
    coreml needs coremltools (and --encoder). For gpu/jetson the final ONNX is linted against TensorRT's
    ONNX support matrix (--tensorrt-version) before the target step. A summary of every stage is printed
    on stderr.
    """
    if (encoder is None) == (bundle is None):
        raise EdgesegError("give exactly one of --encoder NAME or --bundle DIR")
    if bundle is not None and (checkpoint is not None or context_length is not None or semantics is not None):
        raise EdgesegError("--checkpoint, --context-length and --semantics do not apply to --bundle (the bundle "
                           "fixes them)")
    require_extra("edgeseg build", "build", "onnx", *(["torch"] if encoder else []))
    from edgeseg.bundle import check_bundle_target, verify_bundle
    from edgeseg.corpus import calibration_set, gate_set
    from edgeseg.corpus import reference_prompts as reference_set
    from edgeseg.fileio import read_prompts
    from edgeseg.quantize import Gate
    from edgeseg.targets.pipeline import EngineOptions, Prompts, preflight, resolve_precision
    from edgeseg.targets.pipeline import build as run_build

    check_bundle_target(out)
    from_bundle = verify_bundle(bundle) if bundle is not None and target != "coreml" else None
    precision = resolve_precision(target, "int8" if w8a8 and precision is None else precision, from_bundle)
    facts = preflight(target, precision, bundle is not None, w8a8, tensorrt_version=tensorrt_version,
                      bank=bank_prompts is not None)
    calibration, calibration_name = calibration_set(calibration_file, calibration_limit)
    prompts = Prompts(reference_set(reference_prompts), calibration, calibration_name,
                      gate_set(eval_prompts, eval_limit), float_embedding,
                      read_prompts(bank_prompts) if bank_prompts else None, bank_dtype)
    model = _load(encoder, checkpoint, context_length, position_table, "cpu", seed, semantics) if encoder else None
    result = run_build(target, out, model=model, bundle=bundle, precision=precision, prompts=prompts,
                       source=_source(checkpoint, seed, model) if encoder else None, max_batch=max_batch, opset=opset,
                       method=method, gate=Gate(min_mean_cosine, min_worst_cosine),
                       engine=EngineOptions(hardware_compatible, version_compatible, workspace_mib, None,
                                            str(timing_cache) if timing_cache else None, tensorrt_version),
                       w8a8=w8a8, threads=threads, progress=_note, facts=facts)
    _note("build summary")
    for line in result.summary():
        click.echo(line, err=True)


