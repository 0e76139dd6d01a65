"""``edgeseg info``, ``tokenize``, ``encode`` and ``compare``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from edgeseg.cli.common import (
    BATCH_RANGE,
    CHECKPOINT_HELP,
    CHECKPOINTS_HELP,
    CONTEXT_HELP,
    CONTEXT_RANGE,
    ENCODER_HELP,
    POSITION_HELP,
    PROMPTS_HELP,
    SEED_RANGE,
    THREADS_RANGE,
    _echo_record,
    _load,
    _note,
    _write_npz,
    cli,
    parse_checkpoints,
    semantics_option,
)
from edgeseg.devices import check_device
from edgeseg.errors import EdgesegError, require_extra


@cli.command()
@click.option("--encoder", required=True, help=ENCODER_HELP)
@click.option("--context-length", type=CONTEXT_RANGE, default=None, help=CONTEXT_HELP)
@click.option("--checkpoint", type=click.Path(path_type=Path), default=None,
              help="Also read this checkpoint, check it matches the encoder, and report it.")
@click.option("--position-table", type=click.Choice(["interpolate", "slice"]), default=None,
              help=POSITION_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@semantics_option
def info(encoder: str, context_length: int | None, checkpoint: Path | None, position_table: str | None,
         as_json: bool, semantics: str | None) -> None:
    """Describe an encoder: parameters, FP32 size, context length, output width.

    Counted on the 'meta' device (no memory is allocated) unless --checkpoint is given. 'params'
    counts every parameter a checkpoint holds, including dead weights kept for exact loading
    (sam3's text_projection, the students' projection_layer); 'params_used' leaves them out.
    Students hold a position table of context-length rows; 'params_with_checkpoint_table' counts
    the 77-row table of the released files (the paper's figures). With --checkpoint, 'layout' is
    the checkpoint's layout (sam3, efficientsam3, transformers, edgeseg) and 'padding' the
    semantics it runs with (pad id, mask rule, students' attention).
    """
    require_extra("edgeseg info --encoder", "build", "torch")
    from edgeseg.checkpoints import load_encoder
    from edgeseg.encoders import build_encoder
    from edgeseg.encoders.base import Padding

    if checkpoint is None:
        model = build_encoder(encoder, context_length, device="meta")
        model.padding = Padding.of(semantics or "efficientsam3")
        data = model.describe()
        data["weights"] = "random"
    else:
        model = load_encoder(encoder, checkpoint, context_length, position_table, semantics=semantics)
        data = model.describe()
        data.update({"weights": str(checkpoint), "layout": model.checkpoint_layout,
                     "container": model.checkpoint_container})
    data["semantics"] = data["padding"]["semantics"]
    data["pad_id"] = data["padding"]["pad_id"]
    _echo_record(data, as_json)


@cli.command()
@click.option("--prompts", "prompts_file", required=True, type=click.Path(path_type=Path), help=PROMPTS_HELP)
@click.option("--context-length", type=CONTEXT_RANGE, default=16, show_default=True,
              help="Tokens per prompt including SOT and EOT (32 for the sam3 teacher).")
@click.option("--out", required=True, type=click.Path(path_type=Path),
              help="Output .npz with 'input_ids' int64 [B, L].")
@click.option("--semantics", type=click.Choice(["efficientsam3", "transformers"]), default="efficientsam3",
              show_default=True, help="Pad with 0 (efficientsam3, SAM3) or 49407 (transformers' CLIP tokenizer).")
def tokenize(prompts_file: Path, context_length: int, out: Path, semantics: str) -> None:
    """Tokenize prompts exactly as SAM3 does (CLIP BPE; SOT 49406, EOT 49407, pad 0 or 49407).

    Prompts longer than the context are truncated with EOT kept last; the count is reported.
    """
    from edgeseg.fileio import check_output_target, read_prompts
    from edgeseg.tokenizer import PAD_ID, TRANSFORMERS_PAD_ID, get_tokenizer

    prompts = read_prompts(prompts_file)
    check_output_target(out)
    batch = get_tokenizer()(prompts, context_length, TRANSFORMERS_PAD_ID if semantics == "transformers" else PAD_ID)
    _write_npz(out, input_ids=batch.ids)
    _note(f"tokenized {len(prompts)} prompt(s) to [{len(prompts)}, {context_length}] "
          f"({batch.truncated} truncated) -> {out}")


@cli.command()
@click.option("--encoder", default=None, help=ENCODER_HELP + " Either --encoder or --bundle.")
@click.option("--bundle", type=click.Path(path_type=Path), default=None,
              help="Run a bundle (from export/quantize/build) instead of a torch encoder; never imports torch.")
@click.option("--bank", "bank_file", type=click.Path(path_type=Path), default=None,
              help="With --bundle: a prompt bank built from it (edgeseg bank build); prompts it holds are answered "
                   "from it, the others run the model.")
@click.option("--checkpoint", type=click.Path(path_type=Path), default=None, help=CHECKPOINT_HELP)
@click.option("--context-length", type=CONTEXT_RANGE, default=None, help=CONTEXT_HELP)
@click.option("--position-table", type=click.Choice(["interpolate", "slice"]), default=None,
              help=POSITION_HELP)
@click.option("--prompts", "prompts_file", required=True, type=click.Path(path_type=Path), help=PROMPTS_HELP)
@click.option("--out", required=True, type=click.Path(path_type=Path),
              help="Output .npz: input_ids int64 [B, L], mask bool [B, L] (True = padding), "
                   "memory float32 [B, L, 256].")
@click.option("--batch-size", type=BATCH_RANGE, default=None,
              help="Prompts per model call (default: 8 for bundles, which keeps ONNX Runtime's working memory "
                   "small; 64 for torch encoders).")
@click.option("--device", default="cpu", show_default=True, help="torch device (cpu, cuda, cuda:1, ...).")
@click.option("--threads", type=THREADS_RANGE, default=None, help="Intra-op threads (bundles).")
@click.option("--seed", type=SEED_RANGE, default=0, show_default=True, help="Seed of the random weights.")
@semantics_option
def encode(encoder: str | None, bundle: Path | None, bank_file: Path | None, checkpoint: Path | None,
           context_length: int | None, position_table: str | None, prompts_file: Path, out: Path,
           batch_size: int | None, device: str, threads: int | None, seed: int, semantics: str | None) -> None:
    """Encode prompts into SAM3 text memory with a torch encoder or a bundle."""
    from tqdm import tqdm

    from edgeseg.fileio import check_output_target, read_prompts

    if (encoder is None) == (bundle is None):
        raise EdgesegError("give exactly one of --encoder NAME or --bundle DIR")
    if bundle is not None and (checkpoint is not None or context_length is not None or semantics is not None):
        raise EdgesegError("--checkpoint, --context-length and --semantics do not apply to --bundle (the bundle "
                           "fixes them)")
    if bank_file is not None and bundle is None:
        raise EdgesegError("--bank applies to --bundle (a bank belongs to the bundle it was built from)")
    if encoder is not None:
        require_extra("edgeseg encode --encoder", "build", "torch")
    prompts = read_prompts(prompts_file)
    check_output_target(out)
    if bundle is not None:
        from edgeseg.runtime import load
        from edgeseg.runtime.base import DEFAULT_BATCH

        with load(bundle, threads=threads, bank=bank_file) as runner, \
                tqdm(total=len(prompts), unit="prompt", desc=bundle.name, disable=None, file=sys.stderr) as bar:
            result = runner.encode(prompts, batch_size=batch_size or DEFAULT_BATCH, progress=bar.update)
        name, length = f"bundle {bundle}", runner.context_length
        padding = (f"{runner.manifest.get('semantics', 'efficientsam3')}, pad id "
                   f"{runner.manifest['tokenizer'].get('pad_id', 0)}")
    else:
        from edgeseg.encode import encode_prompts

        check_device(device)
        model = _load(encoder, checkpoint, context_length, position_table, device, seed, semantics)
        with tqdm(total=len(prompts), unit="prompt", desc=encoder, disable=None, file=sys.stderr) as bar:
            result = encode_prompts(model, prompts, batch_size=batch_size or 64, progress=bar.update)
        name, length = encoder, model.context_length
        padding = f"{model.padding.semantics}, pad id {model.pad_id}"
    _write_npz(out, input_ids=result.input_ids, mask=result.mask, memory=result.memory)
    _note(f"encoded {len(prompts)} prompt(s) with {name} at context {length} ({padding} padding; "
          f"{result.truncated} truncated) -> {out}")



@cli.command()
@click.option("--prompts", "prompts_file", required=True, type=click.Path(path_type=Path), help=PROMPTS_HELP)
@click.option("--encoders", default="sam3,mobileclip-s0,mobileclip-s1,mobileclip2-l", show_default=True,
              help="Comma-separated encoder names; the first is the reference for the cosine column.")
@click.option("--repeats", type=click.IntRange(min=1), default=3, show_default=True,
              help="Timed forward passes per encoder (after one warm-up).")
@click.option("--batch-size", type=BATCH_RANGE, default=64, show_default=True)
@click.option("--threads", type=THREADS_RANGE, default=None, help="torch intra-op threads.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON rows instead of a table.")
@click.option("--checkpoint", "checkpoint_opts", multiple=True, metavar="NAME=PATH", help=CHECKPOINTS_HELP)
def compare(prompts_file: Path, encoders: str, repeats: int, batch_size: int, threads: int | None,
            as_json: bool, checkpoint_opts: tuple[str, ...]) -> None:
    """Tokenize and encode prompts with several encoders and print a comparison table.

    Columns: weights ('random' or the checkpoint's file name), parameters, FP32 state-dict size,
    context length, mean latency of one batch on this machine, and the cosine between each
    encoder's masked-mean-pooled memory and the first encoder's, per prompt (mean and worst).
    Encoders without --checkpoint NAME=PATH have RANDOM seeded weights: a cosine involving one only
    shows the pipeline runs (near 0 by construction).

    \b
    edgeseg compare --prompts p.txt --encoders sam3,mobileclip-s0 --checkpoint sam3=sam3.pt \\
        --checkpoint mobileclip-s0=runs/s0/student.safetensors
    """
    require_extra("edgeseg compare", "build", "torch")
    import torch

    from edgeseg.encode import RANDOM, compare_encoders, encoder_names, load_encoders
    from edgeseg.fileio import read_prompts

    names = encoder_names(encoders)
    checkpoints = parse_checkpoints(checkpoint_opts, names)
    prompts = read_prompts(prompts_file)
    if threads:
        torch.set_num_threads(threads)
    models, weights = load_encoders(names, checkpoints)  # a bad checkpoint fails here, before any output
    random = [n for n, w in zip(names, weights) if w == RANDOM]
    _note(f"comparing {', '.join(names)} on {len(prompts)} prompt(s)"
          + (f"; RANDOM weights (seed 0) for {', '.join(random)}" if random else ""))
    rows = compare_encoders(models, prompts, repeats=repeats, batch_size=batch_size, weights=weights)
    if as_json:
        click.echo(json.dumps({"threads": torch.get_num_threads(), "rows": rows}, indent=2))
        return
    ref = names[0]
    header = ["encoder", "weights", "params", "fp32 MB", "ctx", "batch", "latency ms", f"cos vs {ref} mean/min"]
    table = [[r["encoder"], r["weights"], f"{r['params']:,}", f"{r['bytes_fp32'] / 1e6:.1f}",
              str(r["context_length"]), str(r["batch"]), f"{r['latency_ms']:.1f}",
              f"{r['cosine_mean']:+.3f}/{r['cosine_min']:+.3f}"] for r in rows]
    widths = [max(len(h), *(len(row[i]) for row in table)) for i, h in enumerate(header)]
    click.echo("  ".join(h.ljust(w) for h, w in zip(header, widths)))
    click.echo("  ".join("-" * w for w in widths))
    for row in table:
        click.echo("  ".join(c.ljust(w) for c, w in zip(row, widths)))
    if RANDOM in weights:
        click.echo(f"(rows with 'random' weights are random/synthetic, {torch.get_num_threads()} CPU threads; "
                   "cosines involving them are not meaningful)")
    else:
        click.echo(f"({torch.get_num_threads()} CPU threads)")
