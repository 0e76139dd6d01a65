"""``edgeseg bench``: candidates against the FP32 SAM3 baseline."""

from __future__ import annotations

from pathlib import Path

import click

from edgeseg.cli.common import (
    CHECKPOINTS_HELP,
    _note,
    cli,
    command_line,
    parse_checkpoints,
)
from edgeseg.devices import check_device
from edgeseg.errors import EdgesegError, require_extra


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
@click.option("--checkpoint", "checkpoint_opts", multiple=True, metavar="NAME=PATH", help=CHECKPOINTS_HELP)
@click.option("--images", type=click.Path(path_type=Path), default=None,
              help="Folder of images for segmentation (needs --prompts). Default: scikit-image sample photos.")
@click.option("--max-images", type=click.IntRange(min=1), default=None, help="Use at most this many images.")
@click.option("--skip-segmentation", is_flag=True, help="Only latency, memory and embedding accuracy.")
@click.option("--rounds", type=click.IntRange(min=1), default=10,
              help="Latency rounds: one block (warm-up, then timed calls) per model and batch, order rotated.")
@click.option("--warmup", type=click.IntRange(min=0), default=3, help="Untimed calls per block after its first call.")
@click.option("--teacher-int8", is_flag=True,
              help="Also time torch's dynamic INT8 teacher (fixed 32 and own length) as baselines (CPU).")
@click.option("--bars", "bars_file", type=click.Path(path_type=Path), default=None,
              help="JSON file with a 'bars' list (a benchmarks/suites file): thresholds checked on the results.")
@click.option("--suite-run", "suite_run_file", type=click.Path(path_type=Path), default=None,
              help="JSON record of how the suite's bundles were built (benchmarks/run_suite.py writes it).")
@click.option("--video", type=click.Path(path_type=Path), default=None,
              help="A clip (MP4, ...) or a folder of frames: per-frame mask IoU and tracking-id agreement through "
                   "SAM3's video model (prompts: --prompts lines naming the file or every image; else 'a person').")
@click.option("--video-frames", type=click.IntRange(min=1), default=8, help="Use the first N frames of --video.")
@click.option("--eval-prompts", type=click.IntRange(min=2), default=256,
              help="Eval-split prompts for embedding accuracy and retrieval.")
@click.option("--no-memory", is_flag=True, help="Skip the peak-RSS child processes.")
@click.option("--device", default="cpu", help="torch device for torch encoders (cpu, cuda).")
@click.option("--suite", default=None, help="Name of the benchmarks/ suite this run belongs to (recorded).")
@click.option("--bank", is_flag=True, help="Also benchmark prompt banks of the first bundle candidate (OUT/bank/).")
@click.option("--bank-prompts", type=click.Path(path_type=Path), default=None,
              help="Prompts of the --bank benchmark (default: 1,000 evenly spaced eval-split prompts).")
@click.option("--out", required=True, type=click.Path(path_type=Path),
              help="Folder for results.json, report.md and the PNG plots.")
def bench(candidates: tuple[str, ...], baseline: str, prompts_file: Path | None, batches: str, threads: int,
          sam3_checkpoint: Path | None, images: Path | None, max_images: int | None, skip_segmentation: bool,
          rounds: int, warmup: int, teacher_int8: bool, bars_file: Path | None, suite_run_file: Path | None,
          eval_prompts: int, no_memory: bool, device: str, suite: str | None, bank: bool, bank_prompts: Path | None,
          out: Path, video: Path | None = None, video_frames: int = 8,
          checkpoint_opts: tuple[str, ...] = ()) -> None:
    """Benchmark bundles and/or encoders against the FP32 SAM3 text encoder.

    CANDIDATES are bundle folders (edgeseg export/quantize/build) or encoder names (torch, random
    weights). The SAM3 text encoder in torch runs as two baselines: at SAM3's fixed context 32 and
    at each prompt's own length. Measures latency (blocks in rotated rounds, p50/p95/p99, first call
    after switching models, ratios to both baselines), efficiency against this machine's GEMM floor,
    memory (weights, bundle bytes, peak RSS of fresh processes), embedding accuracy on the eval split,
    fidelity of each INT8/FP16 bundle against its FP32 bundle, and segmentation agreement through
    Meta's SAM3 image model. Writes OUT/results.json, OUT/report.md and plots.
    """
    require_extra("edgeseg bench (its FP32 SAM3 baseline runs in torch)", "build", "torch")
    from edgeseg.bench import BenchOptions, prepare, run_bench

    try:
        sizes = [int(b) for b in batches.split(",") if b.strip()]
    except ValueError as exc:
        raise EdgesegError(f"--batch takes comma-separated integers, got {batches!r}") from exc
    checkpoints = parse_checkpoints(checkpoint_opts, [c for c in candidates if not Path(c).exists()])
    if device != "cpu":
        check_device(device)
    bars = _read_json(bars_file, "--bars").get("bars", []) if bars_file else []
    suite_run = _read_json(suite_run_file, "--suite-run") if suite_run_file else None
    opts = BenchOptions(candidates=list(candidates), out=out, baseline=baseline, batches=sizes, threads=threads,
                        sam3_checkpoint=sam3_checkpoint, images=images, prompts=prompts_file,
                        skip_segmentation=skip_segmentation, rounds=rounds, warmup=warmup,
                        teacher_int8=teacher_int8, bars=bars, suite_run=suite_run, eval_prompts=eval_prompts,
                        memory=not no_memory, max_images=max_images, device=device, suite=suite,
                        video=video, video_frames=video_frames, checkpoints=checkpoints,
                        command=command_line(click.get_current_context(), ["candidates"]))
    bank_job = _bank_job(candidates, bank_prompts) if bank or bank_prompts else None  # checked before the long run
    prepared = prepare(opts)
    if sam3_checkpoint is None:
        _note("no --sam3-checkpoint: the baseline and SAM3's image model have RANDOM weights; accuracy figures "
              "are not meaningful")
    results = run_bench(opts, prepared)
    _note(f"wrote {out}/results.json, report.md and plots in {results['runtime_s'] / 60:.1f} min")
    if bank_job is not None:
        _bank_phase(*bank_job, out, threads)
    from edgeseg.bench.bars import failed

    for name in failed(results.get("bars", [])):
        _note(f"bar not met: {name}")


def _read_json(path: Path, option: str) -> dict:
    import json

    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise EdgesegError(f"{option} {path}: {exc}") from exc


# -- prompt banks (issue 16): a separate phase after the main run, results in OUT/bank/ -----------------
def _bank_job(candidates: tuple[str, ...], prompts_file: Path | None) -> tuple[Path, list[str]]:
    from edgeseg.bench.bank import bank_target, default_prompts
    from edgeseg.fileio import read_prompts

    return bank_target(candidates), read_prompts(prompts_file) if prompts_file is not None else default_prompts()


def _bank_phase(bundle: Path, prompts: list[str], out: Path, threads: int) -> None:
    from edgeseg.bench.bank import run_bank_bench

    results = run_bank_bench(bundle, prompts, out / "bank", threads=threads, progress=_note)
    for bar in results["targets"]:
        ratio = "n/a" if bar["ratio_to_goal"] is None else f"{bar['ratio_to_goal']:.2f}x the goal"
        value = "n/a" if bar["measured"] is None else f"{bar['measured']:,.2f}{bar['unit']}"
        _note(f"bank: {bar['bar']}: {value} (goal {bar['goal']}; {ratio})")
    _note(f"wrote {out}/bank/results.json, report.md and bank.png")


