"""``edgeseg distill`` and ``edgeseg distill splice``."""

from __future__ import annotations

import json
from pathlib import Path

import click

from edgeseg.cli.common import (
    BATCH_RANGE,
    CONTEXT_RANGE,
    POSITION_HELP,
    PROMPTS_HELP,
    SEED_RANGE,
    _json_option,
    _note,
    cli,
)
from edgeseg.errors import require_extra


@cli.group(invoke_without_command=True)
@click.option("--student", default=None, help="Student to train: mobileclip-s0, mobileclip-s1 or mobileclip2-l.")
@click.option("--teacher-checkpoint", type=click.Path(path_type=Path), default=None,
              help="Meta's sam3.pt (the teacher). Without it the teacher is random (seeded, --teacher-seed).")
@click.option("--context-length", type=CONTEXT_RANGE, default=16, show_default=True,
              help="Student context length; the teacher's targets are computed on the same ids.")
@click.option("--prompts", "prompts_files", multiple=True, type=click.Path(path_type=Path),
              help="Training prompts (repeat for several files; default: the shipped distill split). Prompts that "
                   "equal a held-out prompt after normalization (the eval set, edgeseg's eval and reference splits) "
                   "are dropped from training with a note; config.json counts them. " + PROMPTS_HELP)
@click.option("--eval-prompts", type=click.Path(path_type=Path), default=None,
              help="Your own held-out prompts to evaluate on (default: the shipped eval split); training prompts "
                   "equal to one of them are dropped.")
@click.option("--limit", type=click.IntRange(min=1), default=None,
              help="Train on at most N prompts of the corpus (lowest prompt-hash first).")
@click.option("--eval-limit", type=click.IntRange(min=1), default=1000, show_default=True,
              help="Evaluate on at most N held-out prompts (lowest prompt-hash first).")
@click.option("--steps", type=click.IntRange(min=1), default=2000, show_default=True, help="Optimizer steps.")
@click.option("--batch-size", type=BATCH_RANGE, default=64, show_default=True,
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
@click.option("--seed", type=SEED_RANGE, default=0, show_default=True,
              help="Seed of the student init and the data order.")
@click.option("--teacher-seed", type=SEED_RANGE, default=0, show_default=True, help="Seed of a random teacher.")
@click.option("--init", type=click.Path(path_type=Path), default=None,
              help="Start the student from this checkpoint (LiteText .pt, state dict or edgeseg .safetensors).")
@click.option("--position-table", type=click.Choice(["interpolate", "slice"]), default="interpolate",
              show_default=True, help="How --init's 77-row table is reduced. " + POSITION_HELP)
@click.option("--semantics", type=click.Choice(["efficientsam3", "transformers"]), default=None,
              help="Padding semantics the student trains with (default: --init's own, else efficientsam3); "
                   "'transformers' for a student that `distill splice --to transformers` puts into transformers.")
@click.option("--checkpoint-every", type=click.IntRange(min=1), default=200, show_default=True,
              help="Write RUNDIR/checkpoint.pt every N steps (atomic; the run resumes from it).")
@click.option("--eval-every", type=click.IntRange(min=1), default=200, show_default=True,
              help="Evaluate every N steps.")
@click.option("--log-every", type=click.IntRange(min=1), default=10, show_default=True,
              help="Append training loss to metrics.jsonl every N steps.")
@click.option("--eval-batch-size", type=BATCH_RANGE, default=256, show_default=True)
@click.option("--cache", type=click.Path(path_type=Path), default=None,
              help="Teacher-target cache folder, reusable across runs (default: RUNDIR/cache).")
@click.option("--cache-batch-size", type=BATCH_RANGE, default=64, show_default=True,
              help="Teacher batch when building the cache.")
@click.option("--shard-size", type=BATCH_RANGE, default=4096, show_default=True,
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
    if opts["student"] is None or opts["out"] is None:
        raise click.UsageError("edgeseg distill needs --student NAME and --out RUNDIR")
    require_extra("edgeseg distill", "build", "torch", "safetensors")
    from edgeseg.distill import DistillConfig
    from edgeseg.distill import distill as run_distill
    from edgeseg.distill.train import summary_line

    student_config = _json_option(opts.pop("student_config"), "--student-config")
    teacher_config = _json_option(opts.pop("teacher_config"), "--teacher-config")
    prompts = [str(p) for p in opts.pop("prompts_files")]
    paths = {k: (str(v) if isinstance(v, Path) else v) for k, v in opts.items()}
    cfg = DistillConfig(prompts=prompts, student_config=student_config, teacher_config=teacher_config, **paths)
    summary = run_distill(cfg, note=_note)
    line = summary_line(summary, cfg.out)
    if line:
        _note(line)


@distill.command("splice")
@click.option("--sam3", "sam3_path", required=True, type=click.Path(path_type=Path),
              help="Meta's sam3.pt, or with --to transformers a transformers SAM3 folder (facebook/sam3).")
@click.option("--student", "student_path", required=True, type=click.Path(path_type=Path),
              help="RUNDIR/student.safetensors of a distill run.")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="The SAM3-LiteText checkpoint to write.")
@click.option("--to", "to", type=click.Choice(["efficientsam3", "transformers"]), default="efficientsam3",
              show_default=True, help="efficientsam3: a sam3_litetext .pt; transformers: a Sam3LiteTextModel folder.")
def distill_splice(sam3_path: Path, student_path: Path, out: Path, to: str) -> None:
    """Write a full SAM3 checkpoint with the student as its text encoder (LiteText layout).

    efficientsam3: the student's 16 position rows are rows 0..15 of the 77-row table: load the result
    with `--position-table slice` (efficientsam3's inference code slices too). transformers: a
    Sam3LiteTextModel folder (config.json + model.safetensors, tokenizer files copied) that
    transformers loads with every key; it runs with transformers' padding (pad 49407, masked attention).
    """
    require_extra("edgeseg distill splice", "build", "torch", "safetensors")
    from edgeseg.distill import splice_student, splice_transformers

    if to == "transformers":
        info = splice_transformers(sam3_path, student_path, out)
        click.echo(json.dumps(info, indent=2))
        note = f"wrote {out}: Sam3LiteTextModel.from_pretrained({str(out)!r})"
        if info["student_semantics"] != "transformers":
            note += (f"; the student was trained with {info['student_semantics']} padding, transformers runs it with "
                     "its own (pad 49407, attention masked): outputs differ from the student's")
        _note(note)
        return
    info = splice_student(sam3_path, student_path, out)
    click.echo(json.dumps(info, indent=2))
    _note(f"wrote {out}: load it with --position-table slice")


