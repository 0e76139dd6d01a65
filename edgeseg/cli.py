"""``edgeseg`` command line: a thin click layer over the library.

Every command turns a user-facing failure (:class:`edgeseg.errors.EdgesegError`, or a click usage
error) into one line on stderr and exit code 2; outputs are written to a temporary path and
renamed, so a failed command leaves no output file.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import click

from edgeseg import __version__
from edgeseg.errors import EdgesegError

log = logging.getLogger("edgeseg")

ENCODER_HELP = "Encoder name: sam3 (the SAM3 teacher), mobileclip-s0, mobileclip-s1, mobileclip2-l."
CONTEXT_HELP = "Context length in tokens (default: the encoder's, 32 for sam3, 16 for students)."
CHECKPOINT_HELP = (
    "Weights: Meta's sam3.pt, an efficientsam3 SAM3-LiteText .pt, a bare text-encoder state dict, or "
    "an edgeseg .safetensors. Without it the weights are random (seeded)."
)
POSITION_HELP = (
    "How a student checkpoint's 77-row position table is reduced to the context length: 'interpolate' "
    "(bilinear, how the LiteText checkpoints were trained) or 'slice' (first rows, what efficientsam3's "
    "released inference code does). Default: the mode the checkpoint records (edgeseg distill splice "
    "writes 'slice'), else 'interpolate'."
)
PROMPTS_HELP = "UTF-8 text file, one prompt per line (blank lines are skipped)."


def _setup_logging(verbose: int) -> None:
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="edgeseg: %(levelname)s: %(message)s", stream=sys.stderr)


def _note(message: str) -> None:
    click.echo(f"edgeseg: {message}", err=True)


def _load(encoder: str, checkpoint: Path | None, context_length: int | None, position_table: str | None,
          device: str, seed: int):
    from edgeseg.checkpoints import load_encoder

    model = load_encoder(encoder, checkpoint, context_length, position_table, device=device, seed=seed)
    if checkpoint is None:
        _note(f"no --checkpoint given: {encoder} has RANDOM weights (seed {seed}); outputs are not meaningful")
    return model


def _write_npz(out: Path, **arrays) -> None:
    import numpy as np

    from edgeseg.fileio import atomic_path

    with atomic_path(out) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **arrays)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="edgeseg")
@click.option("-v", "--verbose", count=True, help="More log output on stderr (-v info, -vv debug).")
def cli(verbose: int) -> None:
    """edgeseg: SAM3's text encoder for edge devices.

    Tokenize prompts exactly as SAM3 does, run the SAM3 teacher or a SAM3-LiteText MobileCLIP
    student, distill the teacher into a student, export to ONNX, quantize to INT8, build bundles
    for ONNX Runtime, TensorRT (GPU, Jetson) and Core ML, and benchmark them against the FP32 SAM3
    text encoder. Encoders map token ids [B, L] to memory [B, L, 256] float32 and a padding mask
    [B, L] (True = padding).

    \b
    edgeseg export --encoder mobileclip-s0 --out s0-fp32
    edgeseg quantize s0-fp32 --out s0-int8
    edgeseg encode --bundle s0-int8 --prompts prompts.txt --out memory.npz
    edgeseg build --target jetson --encoder mobileclip-s0 --precision int8 --out s0-jetson
    """
    _setup_logging(verbose)


@cli.command()
@click.option("--encoder", required=True, help=ENCODER_HELP)
@click.option("--context-length", type=int, default=None, help=CONTEXT_HELP)
@click.option("--checkpoint", type=click.Path(path_type=Path), default=None,
              help="Also read this checkpoint, check it matches the encoder, and report it.")
@click.option("--position-table", type=click.Choice(["interpolate", "slice"]), default=None,
              help=POSITION_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def info(encoder: str, context_length: int | None, checkpoint: Path | None, position_table: str | None,
         as_json: bool) -> None:
    """Describe an encoder: parameters, FP32 size, context length, output width.

    Counted on the 'meta' device (no memory is allocated) unless --checkpoint is given. 'params'
    counts every parameter a checkpoint holds, including dead weights kept for exact loading
    (sam3's text_projection, the students' projection_layer); 'params_used' leaves them out.
    Students hold a position table of context-length rows; 'params_with_checkpoint_table' counts
    the 77-row table of the released files (the paper's figures).
    """
    from edgeseg.checkpoints import load_encoder, read_checkpoint
    from edgeseg.encoders import build_encoder

    if checkpoint is None:
        data = build_encoder(encoder, context_length, device="meta").describe()
        data["weights"] = "random"
    else:
        data = load_encoder(encoder, checkpoint, context_length, position_table).describe()
        data["weights"] = str(checkpoint)
        data["checkpoint_layout"] = read_checkpoint(checkpoint).layout
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    width = max(len(k) for k in data)
    for key, value in data.items():
        if isinstance(value, int) and not isinstance(value, bool) and value >= 10_000:
            value = f"{value:,}"
        click.echo(f"{key.ljust(width)}  {value}")


@cli.command()
@click.option("--prompts", "prompts_file", required=True, type=click.Path(path_type=Path), help=PROMPTS_HELP)
@click.option("--context-length", type=int, default=16, show_default=True,
              help="Tokens per prompt including SOT and EOT (32 for the sam3 teacher).")
@click.option("--out", required=True, type=click.Path(path_type=Path),
              help="Output .npz with 'input_ids' int64 [B, L].")
def tokenize(prompts_file: Path, context_length: int, out: Path) -> None:
    """Tokenize prompts exactly as SAM3 does (CLIP BPE; SOT 49406, EOT 49407, pad 0).

    Prompts longer than the context are truncated with EOT kept last; the count is reported.
    """
    from edgeseg.fileio import check_output_folder, read_prompts
    from edgeseg.tokenizer import get_tokenizer

    if context_length < 2:
        raise EdgesegError(f"--context-length must be at least 2 (SOT and EOT), got {context_length}")
    prompts = read_prompts(prompts_file)
    check_output_folder(out)
    batch = get_tokenizer()(prompts, context_length)
    _write_npz(out, input_ids=batch.ids)
    _note(f"tokenized {len(prompts)} prompt(s) to [{len(prompts)}, {context_length}] "
          f"({batch.truncated} truncated) -> {out}")


@cli.command()
@click.option("--encoder", default=None, help=ENCODER_HELP + " Either --encoder or --bundle.")
@click.option("--bundle", type=click.Path(path_type=Path), default=None,
              help="Run a bundle (from export/quantize/build) instead of a torch encoder; never imports torch.")
@click.option("--checkpoint", type=click.Path(path_type=Path), default=None, help=CHECKPOINT_HELP)
@click.option("--context-length", type=int, default=None, help=CONTEXT_HELP)
@click.option("--position-table", type=click.Choice(["interpolate", "slice"]), default=None,
              help=POSITION_HELP)
@click.option("--prompts", "prompts_file", required=True, type=click.Path(path_type=Path), help=PROMPTS_HELP)
@click.option("--out", required=True, type=click.Path(path_type=Path),
              help="Output .npz: input_ids int64 [B, L], mask bool [B, L] (True = padding), "
                   "memory float32 [B, L, 256].")
@click.option("--batch-size", type=click.IntRange(min=1), default=None,
              help="Prompts per model call (default: 8 for bundles, which keeps ONNX Runtime's working memory "
                   "small; 64 for torch encoders).")
@click.option("--device", default="cpu", show_default=True, help="torch device (cpu, cuda, cuda:1, ...).")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="Intra-op threads (bundles).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random weights.")
def encode(encoder: str | None, bundle: Path | None, checkpoint: Path | None, context_length: int | None,
           position_table: str | None, prompts_file: Path, out: Path, batch_size: int | None, device: str,
           threads: int | None, seed: int) -> None:
    """Encode prompts into SAM3 text memory with a torch encoder or a bundle."""
    from tqdm import tqdm

    from edgeseg.fileio import check_output_folder, read_prompts

    if (encoder is None) == (bundle is None):
        raise EdgesegError("give exactly one of --encoder NAME or --bundle DIR")
    if bundle is not None and (checkpoint is not None or context_length is not None):
        raise EdgesegError("--checkpoint and --context-length do not apply to --bundle (the bundle fixes both)")
    prompts = read_prompts(prompts_file)
    check_output_folder(out)
    if bundle is not None:
        from edgeseg.runtime import load
        from edgeseg.runtime.base import DEFAULT_BATCH

        with load(bundle, threads=threads) as runner, \
                tqdm(total=len(prompts), unit="prompt", desc=bundle.name, disable=None, file=sys.stderr) as bar:
            result = runner.encode(prompts, batch_size=batch_size or DEFAULT_BATCH, progress=bar.update)
        name, length = f"bundle {bundle}", runner.context_length
    else:
        from edgeseg.encode import encode_prompts

        _check_device(device)
        model = _load(encoder, checkpoint, context_length, position_table, device, seed)
        with tqdm(total=len(prompts), unit="prompt", desc=encoder, disable=None, file=sys.stderr) as bar:
            result = encode_prompts(model, prompts, batch_size=batch_size or 64, progress=bar.update)
        name, length = encoder, model.context_length
    _write_npz(out, input_ids=result.input_ids, mask=result.mask, memory=result.memory)
    _note(f"encoded {len(prompts)} prompt(s) with {name} at context {length} "
          f"({result.truncated} truncated) -> {out}")


@cli.command()
@click.option("--encoder", required=True, help=ENCODER_HELP)
@click.option("--checkpoint", type=click.Path(path_type=Path), default=None, help=CHECKPOINT_HELP)
@click.option("--context-length", type=int, default=None, help=CONTEXT_HELP)
@click.option("--position-table", type=click.Choice(["interpolate", "slice"]), default=None,
              help=POSITION_HELP)
@click.option("--opset", type=click.IntRange(min=17), default=17, show_default=True, help="ONNX opset (>= 17).")
@click.option("--reference-prompts", type=click.Path(path_type=Path), default=None,
              help="Prompts whose ids and FP32 outputs are stored in the bundle for self-checks "
                   "(default: 32 prompts of the held-out eval split).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random weights.")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Bundle directory to write.")
def export(encoder: str, checkpoint: Path | None, context_length: int | None, position_table: str | None, opset: int,
           reference_prompts: Path | None, seed: int, out: Path) -> None:
    """Export an encoder to an FP32 ONNX bundle, verified against torch with ONNX Runtime.

    The graph takes input_ids int64 [batch, L] (dynamic batch, fixed L) and returns memory float32
    [batch, L, 256] and mask bool [batch, L]. S0's RepMixer BatchNorms are folded first; unused
    weights are not in the graph. The bundle holds model.onnx, the tokenizer vocabulary, reference
    inputs/outputs and manifest.json (sha256 of every file); it is written atomically.
    """
    from edgeseg.bundle import check_bundle_target
    from edgeseg.export import export_bundle

    check_bundle_target(out)
    prompts = _reference_prompts(reference_prompts)
    model = _load(encoder, checkpoint, context_length, position_table, "cpu", seed)
    manifest = export_bundle(model, out, prompts, _source(checkpoint, seed), opset=opset)
    _note(f"exported {encoder} (context {manifest['context_length']}, FP32) -> {out}; ONNX Runtime vs torch "
          f"max abs diff {manifest['export']['max_abs_diff']:.2e}")


@cli.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--out", required=True, type=click.Path(path_type=Path), help="INT8 bundle directory to write.")
@click.option("--calibration", "calibration_file", type=click.Path(path_type=Path), default=None,
              help="Calibration prompts, one per line (default: the shipped calibration split, 2,000 prompts).")
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
@click.option("--min-mean-cosine", type=float, default=0.999, show_default=True,
              help="Gate: mean over prompts of the valid-token cosine, INT8 vs FP32.")
@click.option("--min-worst-cosine", type=float, default=0.99, show_default=True,
              help="Gate: the worst prompt's valid-token cosine.")
@click.option("--float-embedding", is_flag=True, help="Keep the token-embedding table in FP32 (default: INT8 rows).")
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
@click.option("--threads", type=click.IntRange(min=1), default=None, help="ONNX Runtime intra-op threads.")
def quantize(bundle: Path, out: Path, calibration_file: Path | None, calibration_limit: int | None, method: str,
             mode: str, eval_prompts: Path | None, eval_limit: int, min_mean_cosine: float,
             min_worst_cosine: float, float_embedding: bool, prune_vocab: str | None, smooth_alpha: float,
             threads: int | None) -> None:
    """Quantize an FP32 ONNX bundle to INT8, calibrated on prompts and gated on fidelity.

    Static mode writes explicit Q/DQ (symmetric INT8, per-channel weights, per-tensor activations)
    on every weight-bearing MatMul/Gemm; LayerNorm, Softmax, GELU and residual Adds stay float. The
    token-embedding table is stored INT8 with a scale per row. LayerNorm outputs with outlier
    channels are smoothed first (--smooth-alpha). If INT8 vs FP32 on the eval prompts
    misses the gate, the layers that add the most error are returned to float until it holds; the
    manifest lists them. Never imports torch.
    """
    from edgeseg.bundle import check_bundle_target
    from edgeseg.corpus import load_split
    from edgeseg.fileio import read_prompts
    from edgeseg.quantize import Gate, quantize_bundle

    check_bundle_target(out)
    if calibration_file is not None:
        calibration, calibration_name = read_prompts(calibration_file), calibration_file.name
    else:
        calibration, calibration_name = load_split("calibration"), "calibration/calibration.txt"
    if calibration_limit:
        calibration = calibration[:calibration_limit]
    evaluation = read_prompts(eval_prompts) if eval_prompts is not None else load_split("eval")
    step = max(1, len(evaluation) // eval_limit)
    evaluation = evaluation[::step][:eval_limit]
    prune_prompts, prune_name = None, ""
    if prune_vocab == "train":
        prune_prompts, prune_name = load_split("calibration") + load_split("distill"), "calibration/ train splits"
    elif prune_vocab is not None:
        prune_prompts, prune_name = read_prompts(Path(prune_vocab)), Path(prune_vocab).name
    manifest = quantize_bundle(bundle, out, calibration, evaluation, calibration_name=calibration_name,
                               method=method, mode=mode, gate=Gate(min_mean_cosine, min_worst_cosine),
                               embedding_int8=not float_embedding, threads=threads, progress=_note,
                               prune_prompts=prune_prompts, prune_name=prune_name, smooth_alpha=smooth_alpha)
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
@click.option("--prompts", "prompts_files", required=True, multiple=True, type=click.Path(path_type=Path),
              help="Prompt files, UTF-8, one prompt per line: --prompts A.txt B.txt ... (each file's stem names "
                   "its source).")
@click.argument("more_prompts", nargs=-1, type=click.Path(path_type=Path))
@click.option("--out", required=True, type=click.Path(path_type=Path),
              help="Output folder: analysis.json, report.md, vocabulary.txt, PNG plots (written atomically).")
@click.option("--contexts", default="8,16,32", show_default=True, help="Comma-separated context lengths to tabulate.")
@click.option("--encoder", default="sam3", show_default=True, help=ENCODER_HELP + " Used by the embedding part.")
@click.option("--teacher-checkpoint", "--checkpoint", "checkpoint", type=click.Path(path_type=Path), default=None,
              help=CHECKPOINT_HELP)
@click.option("--no-embedding", is_flag=True, help="Skip the embedding part (no model is built).")
@click.option("--sample", type=click.IntRange(min=3), default=512, show_default=True,
              help="Prompts (with distinct tokens) sampled for the embedding part, seeded.")
@click.option("--max-truncation", type=click.FloatRange(0, 1, min_open=True), default=0.01, show_default=True,
              help="Recommend the smallest context (4..77) truncating fewer than this fraction of prompts.")
@click.option("--coverage", type=click.FloatRange(0, 1, min_open=True), default=0.999, show_default=True,
              help="Token-occurrence coverage for the recommended vocabulary size (100% is reported too).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the sample and of random weights.")
def analyze(prompts_files: tuple[Path, ...], more_prompts: tuple[Path, ...], out: Path, contexts: str, encoder: str,
            checkpoint: Path | None, no_embedding: bool, sample: int, max_truncation: float, coverage: float,
            seed: int) -> None:
    """Prompt anatomy: token lengths, vocabulary and embedding of a prompt corpus, with recommendations.

    A prompt's length n is its content tokens + 2 (SOT, EOT). For each context length L: density
    mean(min(n, L)) / L, padding 1 - density, the fraction of prompts truncated (n > L) and of tokens
    lost. Vocabulary: distinct ids, coverage of token occurrences, the pruned id set. Embedding: PCA
    and a TwoNN intrinsic dimension of the pooled memory of a seeded sample (random weights without
    --teacher-checkpoint). See report.md in --out for all definitions.
    """
    from edgeseg.analyze import parse_contexts
    from edgeseg.analyze import run as run_analysis

    lengths = parse_contexts(contexts)
    if no_embedding and checkpoint is not None:
        _note("--no-embedding: --teacher-checkpoint is not used")
    result = run_analysis([*prompts_files, *more_prompts], out, contexts=lengths, encoder=encoder,
                          checkpoint=checkpoint, embedding=not no_embedding, sample=sample,
                          max_truncation=max_truncation, coverage=coverage, seed=seed, note=_note)
    timing, rec = result["timing_s"], result["recommendation"]
    emb = f", embedding {timing['embedding']:.1f} s" if "embedding" in timing else ""
    _note(f"analyzed {result['inputs']['prompts']:,} prompt(s) ({result['inputs']['unique_prompts']:,} distinct) "
          f"from {len(result['inputs']['files'])} file(s): length+vocabulary {timing['length_and_vocabulary']:.1f} s"
          f"{emb}, total {timing['total']:.1f} s; recommended context {rec['context_length']}, vocabulary "
          f"{rec['vocabulary']['vocabulary_size']:,} ids at {rec['vocabulary']['coverage']:.1%} coverage -> {out}")


@cli.command()
@click.option("--target", required=True, type=click.Choice(["onnx", "gpu", "jetson", "coreml"]),
              help="onnx: ONNX Runtime; gpu: TensorRT engine built here; jetson: ONNX + build_engine.py for the "
                   "device (built directly on a Jetson); coreml: model.mlpackage (iOS 17+ / macOS 14+).")
@click.option("--encoder", default=None, help=ENCODER_HELP + " Either --encoder or --bundle.")
@click.option("--bundle", type=click.Path(path_type=Path), default=None,
              help="Start from an ONNX bundle (edgeseg export / quantize) instead of a torch encoder.")
@click.option("--checkpoint", type=click.Path(path_type=Path), default=None, help=CHECKPOINT_HELP)
@click.option("--context-length", type=int, default=None, help=CONTEXT_HELP)
@click.option("--position-table", type=click.Choice(["interpolate", "slice"]), default=None,
              help=POSITION_HELP)
@click.option("--precision", type=click.Choice(["fp32", "fp16", "int8"]), default=None,
              help="Default: int8 (static Q/DQ) for onnx/gpu/jetson, fp16 for coreml; with --bundle, the bundle's. "
                   "Core ML int8 = 8-bit weights, FP16 activations.")
@click.option("--max-batch", type=click.IntRange(min=1), default=8, show_default=True,
              help="Largest batch: TensorRT profile 1..N (opt 1); Core ML enumerated batch sizes 1..N.")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Bundle directory to write.")
@click.option("--reference-prompts", type=click.Path(path_type=Path), default=None,
              help="Prompts stored with FP32 outputs for self-checks (default: 32 prompts of the eval split).")
@click.option("--calibration", "calibration_file", type=click.Path(path_type=Path), default=None,
              help="INT8 calibration prompts (default: the shipped calibration split).")
@click.option("--calibration-limit", type=click.IntRange(min=1), default=None, help="Use the first N only.")
@click.option("--eval-prompts", type=click.Path(path_type=Path), default=None,
              help="Prompts for the INT8/FP16 fidelity gate (default: the held-out eval split).")
@click.option("--eval-limit", type=click.IntRange(min=1), default=1000, show_default=True,
              help="Evenly spaced prompts of the eval set used by the gate.")
@click.option("--method", type=click.Choice(["minmax", "percentile", "entropy"]), default="minmax",
              show_default=True, help="INT8 activation range calibration.")
@click.option("--min-mean-cosine", type=float, default=0.999, show_default=True, help="INT8/FP16 gate: mean cosine.")
@click.option("--min-worst-cosine", type=float, default=0.99, show_default=True, help="INT8/FP16 gate: worst prompt.")
@click.option("--opset", type=click.IntRange(min=17), default=17, show_default=True, help="ONNX opset (>= 17).")
@click.option("--hardware-compatible", is_flag=True, help="TensorRT: engine runs on any Ampere+ GPU (slower).")
@click.option("--version-compatible", is_flag=True, help="TensorRT: engine runs on later TensorRT versions.")
@click.option("--workspace-mib", type=click.IntRange(min=1), default=None, help="TensorRT builder workspace limit.")
@click.option("--timing-cache", type=click.Path(path_type=Path), default=None,
              help="TensorRT timing cache (default: ~/.cache/edgeseg/tensorrt-timing.cache).")
@click.option("--float-embedding", is_flag=True, help="INT8: keep the token-embedding table FP32 (default: INT8 rows).")
@click.option("--w8a8", is_flag=True, help="Core ML: 8-bit activations on top of 8-bit weights (implies --precision "
              "int8; symmetric, before every linear/conv input, calibrated on the calibration prompts; pays off on "
              "A17 Pro / M4).")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="ONNX Runtime intra-op threads.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random weights.")
def build(target: str, encoder: str | None, bundle: Path | None, checkpoint: Path | None, context_length: int | None,
          position_table: str | None, precision: str | None, max_batch: int, out: Path, reference_prompts: Path | None,
          calibration_file: Path | None, calibration_limit: int | None, eval_prompts: Path | None, eval_limit: int,
          method: str, min_mean_cosine: float, min_worst_cosine: float, opset: int, hardware_compatible: bool,
          version_compatible: bool, workspace_mib: int | None, timing_cache: Path | None, float_embedding: bool,
          w8a8: bool, threads: int | None, seed: int) -> None:
    """Build a deployable bundle for a target, from an encoder (export -> quantize/fp16 -> target) or a bundle.

    Prerequisites are checked first: --target gpu needs TensorRT 10+ and an NVIDIA GPU here; --target
    coreml needs coremltools (and --encoder). A summary of every stage is printed on stderr.
    """
    from edgeseg.bundle import check_bundle_target, verify_bundle
    from edgeseg.corpus import load_split
    from edgeseg.fileio import read_prompts
    from edgeseg.quantize import Gate
    from edgeseg.targets.pipeline import EngineOptions, Prompts, preflight, resolve_precision
    from edgeseg.targets.pipeline import build as run_build

    if (encoder is None) == (bundle is None):
        raise EdgesegError("give exactly one of --encoder NAME or --bundle DIR")
    if bundle is not None and (checkpoint is not None or context_length is not None):
        raise EdgesegError("--checkpoint and --context-length do not apply to --bundle (the bundle fixes both)")
    check_bundle_target(out)
    from_bundle = verify_bundle(bundle) if bundle is not None and target != "coreml" else None
    precision = resolve_precision(target, "int8" if w8a8 and precision is None else precision, from_bundle)
    facts = preflight(target, precision, bundle is not None, w8a8)
    calibration, calibration_name = (read_prompts(calibration_file), calibration_file.name) if calibration_file \
        else (load_split("calibration"), "calibration/calibration.txt")
    evaluation = read_prompts(eval_prompts) if eval_prompts is not None else load_split("eval")
    prompts = Prompts(_reference_prompts(reference_prompts), calibration[:calibration_limit], calibration_name,
                      evaluation[::max(1, len(evaluation) // eval_limit)][:eval_limit], float_embedding)
    model = _load(encoder, checkpoint, context_length, position_table, "cpu", seed) if encoder else None
    result = run_build(target, out, model=model, bundle=bundle, precision=precision, prompts=prompts,
                       source=_source(checkpoint, seed) if encoder else None, max_batch=max_batch, opset=opset,
                       method=method, gate=Gate(min_mean_cosine, min_worst_cosine),
                       engine=EngineOptions(hardware_compatible, version_compatible, workspace_mib, None,
                                            str(timing_cache) if timing_cache else None),
                       w8a8=w8a8, threads=threads, progress=_note, facts=facts)
    _note("build summary")
    for line in result.summary():
        click.echo(line, err=True)


def _reference_prompts(path: Path | None, count: int = 32) -> list[str]:
    from edgeseg.fileio import read_prompts

    if path is not None:
        return read_prompts(path)
    from edgeseg.corpus import load_split

    prompts = load_split("eval")
    step = max(1, len(prompts) // count)
    return prompts[::step][:count]


def _source(checkpoint: Path | None, seed: int) -> dict:
    from edgeseg.fileio import sha256_file

    if checkpoint is None:
        return {"checkpoint": None, "checkpoint_sha256": "random", "seed": seed}
    return {"checkpoint": checkpoint.name, "checkpoint_sha256": sha256_file(checkpoint), "seed": None}


@cli.command()
@click.option("--prompts", "prompts_file", required=True, type=click.Path(path_type=Path), help=PROMPTS_HELP)
@click.option("--encoders", default="sam3,mobileclip-s0,mobileclip-s1,mobileclip2-l", show_default=True,
              help="Comma-separated encoder names; the first is the reference for the cosine column.")
@click.option("--repeats", type=click.IntRange(min=1), default=3, show_default=True,
              help="Timed forward passes per encoder (after one warm-up).")
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--threads", type=click.IntRange(min=1), default=None, help="torch intra-op threads.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON rows instead of a table.")
def compare(prompts_file: Path, encoders: str, repeats: int, batch_size: int, threads: int | None,
            as_json: bool) -> None:
    """Tokenize and encode prompts with several encoders and print a comparison table.

    Columns: parameters, FP32 state-dict size, context length, mean latency of one batch on
    this machine, and the cosine between each encoder's masked-mean-pooled memory and the first
    encoder's, per prompt (mean and worst). All encoders have RANDOM seeded weights here, so the
    cosine column only shows the pipeline runs; with random weights it is near 0 by construction.
    """
    import torch

    from edgeseg.encode import compare_encoders
    from edgeseg.encoders import build_encoder, get_config
    from edgeseg.fileio import read_prompts

    names = [n.strip() for n in encoders.split(",") if n.strip()]
    if not names:
        raise EdgesegError("--encoders names no encoder")
    for name in names:
        get_config(name)
    prompts = read_prompts(prompts_file)
    if threads:
        torch.set_num_threads(threads)
    _note(f"comparing {', '.join(names)} on {len(prompts)} prompt(s); RANDOM weights (seed 0)")
    models = [build_encoder(name) for name in names]
    rows = compare_encoders(models, prompts, repeats=repeats, batch_size=batch_size)
    if as_json:
        click.echo(json.dumps({"weights": "random", "threads": torch.get_num_threads(), "rows": rows}, indent=2))
        return
    ref = names[0]
    header = ["encoder", "params", "fp32 MB", "ctx", "batch", "latency ms", f"cos vs {ref} mean/min"]
    table = [[r["encoder"], f"{r['params']:,}", f"{r['bytes_fp32'] / 1e6:.1f}", str(r["context_length"]),
              str(r["batch"]), f"{r['latency_ms']:.1f}", f"{r['cosine_mean']:+.3f}/{r['cosine_min']:+.3f}"]
             for r in rows]
    widths = [max(len(h), *(len(row[i]) for row in table)) for i, h in enumerate(header)]
    click.echo("  ".join(h.ljust(w) for h, w in zip(header, widths)))
    click.echo("  ".join("-" * w for w in widths))
    for row in table:
        click.echo("  ".join(c.ljust(w) for c, w in zip(row, widths)))
    click.echo(f"(random/synthetic weights, {torch.get_num_threads()} CPU threads; cosines are not meaningful)")


def _check_device(device: str) -> None:
    import torch

    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise EdgesegError(f"unknown --device {device!r}") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise EdgesegError(f"--device {device}: CUDA is not available on this machine")


# -- edgeseg distill (issue 3) ---------------------------------------------------------------------
def _json_option(value: str | None, option: str):
    if value is None:
        return None
    try:
        text = Path(value).read_text(encoding="utf-8") if not value.lstrip().startswith("{") else value
        data = json.loads(text)
    except (OSError, ValueError) as exc:
        raise EdgesegError(f"{option}: not a JSON object or a JSON file ({exc})") from exc
    if not isinstance(data, dict):
        raise EdgesegError(f"{option}: expected a JSON object")
    return data


@cli.group(invoke_without_command=True)
@click.option("--student", default=None, help="Student to train: mobileclip-s0, mobileclip-s1 or mobileclip2-l.")
@click.option("--teacher-checkpoint", type=click.Path(path_type=Path), default=None,
              help="Meta's sam3.pt (the teacher). Without it the teacher is random (seeded, --teacher-seed).")
@click.option("--context-length", type=int, default=16, show_default=True,
              help="Student context length; the teacher's targets are computed on the same ids.")
@click.option("--prompts", "prompts_files", multiple=True, type=click.Path(path_type=Path),
              help="Training prompts (repeat for several files; default: calibration/distill.txt). " + PROMPTS_HELP)
@click.option("--eval-prompts", type=click.Path(path_type=Path), default=None,
              help="Held-out prompts (default: calibration/eval.txt); a training corpus overlapping them is refused.")
@click.option("--limit", type=click.IntRange(min=1), default=None,
              help="Train on at most N prompts of the corpus (lowest prompt-hash first).")
@click.option("--eval-limit", type=click.IntRange(min=1), default=1000, show_default=True,
              help="Evaluate on at most N held-out prompts (lowest prompt-hash first).")
@click.option("--steps", type=click.IntRange(min=1), default=2000, show_default=True, help="Optimizer steps.")
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True,
              help="Global batch (prompts per step, summed over torchrun processes).")
@click.option("--lr", type=float, default=5e-4, show_default=True, help="Peak AdamW learning rate.")
@click.option("--min-lr-ratio", type=float, default=0.0, show_default=True, help="Final lr as a fraction of --lr.")
@click.option("--warmup-steps", type=click.IntRange(min=0), default=100, show_default=True,
              help="Linear warmup steps before the cosine decay.")
@click.option("--weight-decay", type=float, default=0.05, show_default=True,
              help="AdamW weight decay (not on biases, norms, layer scales, the position table).")
@click.option("--beta1", type=float, default=0.9, show_default=True, help="AdamW beta1.")
@click.option("--beta2", type=float, default=0.98, show_default=True, help="AdamW beta2.")
@click.option("--eps", type=float, default=1e-6, show_default=True, help="AdamW epsilon.")
@click.option("--mse-weight", type=float, default=1.0, show_default=True, help="Weight of the token MSE.")
@click.option("--cos-weight", type=float, default=2.0, show_default=True, help="Weight of (1 - token cosine).")
@click.option("--grad-clip", type=float, default=1.0, show_default=True, help="Gradient clipping (global norm).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the student init and the data order.")
@click.option("--teacher-seed", type=int, default=0, show_default=True, help="Seed of a random teacher.")
@click.option("--init", type=click.Path(path_type=Path), default=None,
              help="Start the student from this checkpoint (LiteText .pt, state dict or edgeseg .safetensors).")
@click.option("--position-table", type=click.Choice(["interpolate", "slice"]), default="interpolate",
              show_default=True, help="How --init's 77-row table is reduced. " + POSITION_HELP)
@click.option("--checkpoint-every", type=click.IntRange(min=1), default=200, show_default=True,
              help="Write RUNDIR/checkpoint.pt every N steps (atomic; the run resumes from it).")
@click.option("--eval-every", type=click.IntRange(min=1), default=200, show_default=True,
              help="Evaluate every N steps.")
@click.option("--log-every", type=click.IntRange(min=1), default=10, show_default=True,
              help="Append training loss to metrics.jsonl every N steps.")
@click.option("--eval-batch-size", type=click.IntRange(min=1), default=256, show_default=True)
@click.option("--cache", type=click.Path(path_type=Path), default=None,
              help="Teacher-target cache folder, reusable across runs (default: RUNDIR/cache).")
@click.option("--cache-batch-size", type=click.IntRange(min=1), default=64, show_default=True,
              help="Teacher batch when building the cache.")
@click.option("--shard-size", type=click.IntRange(min=1), default=4096, show_default=True,
              help="Prompts per cache shard.")
@click.option("--device", default="cpu", show_default=True,
              help="torch device (cpu, cuda); under torchrun one GPU per rank.")
@click.option("--amp/--no-amp", default=None, help="bf16 autocast (default: on for CUDA, never on CPU).")
@click.option("--sources", type=click.Path(path_type=Path), default=None,
              help="Folder of the source prompt lists (shared/prompts) for per-source eval metrics.")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Run folder: config.json, metrics.jsonl, curves.png, checkpoint.pt, student.safetensors.")
@click.option("--student-config", default=None, hidden=True, help="Test hook: JSON config of a custom student.")
@click.option("--teacher-config", default=None, hidden=True, help="Test hook: JSON config of a custom teacher.")
@click.option("--throttle", type=float, default=0.0, hidden=True, help="Test hook: sleep seconds per step.")
@click.pass_context
def distill(ctx: click.Context, **opts) -> None:
    """Distill the SAM3 teacher into a MobileCLIP student (SAM3-LiteText).

    Phase 1 caches the teacher's memory for every prompt (fp16 shards, reused by later runs and
    resumable); phase 2 trains the student on it (token MSE + cosine, AdamW, warmup + cosine decay),
    evaluates on the held-out eval split, checkpoints atomically and resumes when the same command is
    run again. Under `torchrun --nproc_per_node N` it runs DDP (gloo on CPU, nccl on CUDA).

    \b
    edgeseg distill --student mobileclip-s0 --teacher-checkpoint sam3.pt --out runs/s0
    edgeseg distill splice --sam3 sam3.pt --student runs/s0/student.safetensors --out sam3_litetext.pt
    """
    if ctx.invoked_subcommand is not None:
        return
    from edgeseg.distill import DistillConfig
    from edgeseg.distill import distill as run_distill

    if opts["student"] is None or opts["out"] is None:
        raise click.UsageError("edgeseg distill needs --student NAME and --out RUNDIR")
    student_config = _json_option(opts.pop("student_config"), "--student-config")
    teacher_config = _json_option(opts.pop("teacher_config"), "--teacher-config")
    prompts = [str(p) for p in opts.pop("prompts_files")]
    paths = {k: (str(v) if isinstance(v, Path) else v) for k, v in opts.items()}
    cfg = DistillConfig(prompts=prompts, student_config=student_config, teacher_config=teacher_config, **paths)
    summary = run_distill(cfg, note=_note)
    final = summary.get("final_eval") or {}
    first = summary.get("initial_eval") or {}
    if final:
        tag = " (random/synthetic teacher weights)" if summary.get("random_teacher") else ""
        _note(f"eval mean token cosine {first.get('mean_cosine', float('nan')):.4f} -> {final['mean_cosine']:.4f}, "
              f"worst prompt {final['worst_cosine']:.4f}{tag}; wrote {cfg.out}/student.safetensors")


@distill.command("splice")
@click.option("--sam3", "sam3_path", required=True, type=click.Path(path_type=Path), help="Meta's sam3.pt.")
@click.option("--student", "student_path", required=True, type=click.Path(path_type=Path),
              help="RUNDIR/student.safetensors of a distill run.")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="The SAM3-LiteText checkpoint to write.")
def distill_splice(sam3_path: Path, student_path: Path, out: Path) -> None:
    """Write a full SAM3 checkpoint with the student as its text encoder (LiteText layout).

    The student's 16 position rows are rows 0..15 of the 77-row table: load the result with
    `--position-table slice` (efficientsam3's inference code slices too).
    """
    from edgeseg.distill import splice_student

    info = splice_student(sam3_path, student_path, out)
    click.echo(json.dumps(info, indent=2))
    _note(f"wrote {out}: load it with --position-table slice")


# ---- edgeseg bench (issue 6) ---------------------------------------------------------------------
@cli.command(context_settings={"show_default": True})
@click.argument("candidates", nargs=-1, required=True)
@click.option("--baseline", default="sam3-fp32", help="Reference: the FP32 SAM3 text encoder in torch (always run).")
@click.option("--prompts", "prompts_file", type=click.Path(path_type=Path), default=None,
              help="Segmentation prompts: TSV lines 'image<TAB>prompt' (a line without a tab applies to every "
                   "image) or JSON {image: [prompts]}. Default: the shipped prompts of the default images.")
@click.option("--batch", "batches", default="1,8", help="Comma-separated batch sizes for latency.")
@click.option("--threads", type=click.IntRange(min=1), default=2, help="torch and ONNX Runtime intra-op threads.")
@click.option("--sam3-checkpoint", type=click.Path(path_type=Path), default=None,
              help="Meta's sam3.pt: real weights for the baseline and the SAM3 image model (default: random).")
@click.option("--images", type=click.Path(path_type=Path), default=None,
              help="Folder of images for segmentation (needs --prompts). Default: scikit-image sample photos.")
@click.option("--max-images", type=click.IntRange(min=1), default=None, help="Use at most this many images.")
@click.option("--skip-segmentation", is_flag=True, help="Only latency, memory and embedding accuracy.")
@click.option("--rounds", type=click.IntRange(min=1), default=10, help="Interleaved latency rounds.")
@click.option("--eval-prompts", type=click.IntRange(min=2), default=256,
              help="Eval-split prompts for embedding accuracy and retrieval.")
@click.option("--no-memory", is_flag=True, help="Skip the peak-RSS child processes.")
@click.option("--device", default="cpu", help="torch device for torch encoders (cpu, cuda).")
@click.option("--suite", default=None, help="Name of the benchmarks/ suite this run belongs to (recorded).")
@click.option("--out", required=True, type=click.Path(path_type=Path),
              help="Folder for results.json, report.md and the PNG plots.")
def bench(candidates: tuple[str, ...], baseline: str, prompts_file: Path | None, batches: str, threads: int,
          sam3_checkpoint: Path | None, images: Path | None, max_images: int | None, skip_segmentation: bool,
          rounds: int, eval_prompts: int, no_memory: bool, device: str, suite: str | None, out: Path) -> None:
    """Benchmark bundles and/or encoders against the FP32 SAM3 text encoder.

    CANDIDATES are bundle folders (edgeseg export/quantize/build) or encoder names (torch, random
    weights). Measures latency (interleaved rounds, p50/p95/p99, ratios to the baseline), memory
    (weights, bundle bytes, peak RSS of fresh processes), embedding accuracy on the eval split, and
    segmentation agreement through Meta's SAM3 image model with each candidate's text features
    injected. Writes OUT/results.json, OUT/report.md and plots.
    """
    from edgeseg.bench import BenchOptions, prepare, run_bench

    try:
        sizes = [int(b) for b in batches.split(",") if b.strip()]
    except ValueError as exc:
        raise EdgesegError(f"--batch takes comma-separated integers, got {batches!r}") from exc
    if device != "cpu":
        _check_device(device)
    opts = BenchOptions(candidates=list(candidates), out=out, baseline=baseline, batches=sizes, threads=threads,
                        sam3_checkpoint=sam3_checkpoint, images=images, prompts=prompts_file,
                        skip_segmentation=skip_segmentation, rounds=rounds, eval_prompts=eval_prompts,
                        memory=not no_memory, max_images=max_images, device=device, suite=suite,
                        command=_bench_command(click.get_current_context()))
    prepared = prepare(opts)
    if sam3_checkpoint is None:
        _note("no --sam3-checkpoint: the baseline and SAM3's image model have RANDOM weights; accuracy figures "
              "are not meaningful")
    results = run_bench(opts, prepared)
    _note(f"wrote {out}/results.json, report.md and plots in {results['runtime_s'] / 60:.1f} min")


def _bench_command(ctx: click.Context) -> str:
    """The command line that reproduces this run (options that differ from their defaults)."""
    import shlex

    words = ["edgeseg", "bench", *ctx.params["candidates"]]
    for param in ctx.command.params:
        value = ctx.params.get(param.name)
        if param.name == "candidates" or value == param.default or value is None or value is False:
            continue
        flag = max(param.opts, key=len)
        words += [flag] if isinstance(value, bool) else [flag, str(value)]
    return shlex.join(words)


def main(argv: list[str] | None = None) -> int:
    """Console entry point: run the CLI, mapping user errors to one stderr line and exit 2."""
    try:
        cli.main(args=argv, prog_name="edgeseg", standalone_mode=False)
    except EdgesegError as exc:
        click.echo(f"edgeseg: error: {exc}", err=True)
        return exc.exit_code
    except click.exceptions.Abort:
        click.echo("edgeseg: aborted", err=True)
        return 130
    except click.ClickException as exc:
        message = " ".join(exc.format_message().split())
        click.echo(f"edgeseg: error: {message} (see --help)", err=True)
        return 2
    except KeyboardInterrupt:
        click.echo("edgeseg: interrupted", err=True)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
