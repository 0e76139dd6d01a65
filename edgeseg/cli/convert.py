"""``edgeseg convert``: a text encoder from one checkpoint layout to another."""

from __future__ import annotations

import json
from pathlib import Path

import click

from edgeseg.cli.common import CONTEXT_HELP, ENCODER_HELP, POSITION_HELP, _note, cli
from edgeseg.errors import require_extra


@cli.command()
@click.option("--encoder", required=True, help=ENCODER_HELP)
@click.option("--checkpoint", required=True, type=click.Path(path_type=Path),
              help="The checkpoint to convert: a transformers folder (or its .safetensors with config.json beside "
                   "it), an efficientsam3 / Meta .pt, a bare state dict or an edgeseg .safetensors.")
@click.option("--to", "to", required=True, type=click.Choice(["transformers", "efficientsam3", "edgeseg"]),
              help="Layout to write: a transformers folder (config.json + model.safetensors, text keys only), an "
                   "efficientsam3 .pt ({'model': detector.backbone.language_backbone.*, 'meta': ...}; the teacher "
                   "in Meta's sam3.pt text layout) or an edgeseg .safetensors.")
@click.option("--out", required=True, type=click.Path(path_type=Path),
              help="Output folder (transformers) or file (.pt / .safetensors); written atomically.")
@click.option("--context-length", type=int, default=None, help=CONTEXT_HELP + " Recorded in the output.")
@click.option("--position-table", type=click.Choice(["interpolate", "slice"]), default=None,
              help=POSITION_HELP + " Recorded in the output; 'slice' towards transformers writes the first C rows.")
def convert(encoder: str, checkpoint: Path, to: str, out: Path, context_length: int | None,
            position_table: str | None) -> None:
    """Convert a checkpoint's text encoder to another layout, tensor for tensor.

    Strict both ways (every text key with its shape, nothing else; the output is read back and
    compared before it is renamed into place) and lossless: every tensor keeps its values, dtype and
    rows (the position table keeps all of them), so round trips are bit-identical. The output runs
    with its layout's padding semantics (a transformers folder as transformers runs it); the summary
    says when that differs from the source's.

    \b
    edgeseg convert --encoder mobileclip-s0 --checkpoint sam3_litetext_s0.pt --to transformers --out s0-hf
    edgeseg convert --encoder mobileclip-s0 --checkpoint s0-hf --to edgeseg --out s0.safetensors
    """
    require_extra("edgeseg convert", "build", "torch", "safetensors")
    from edgeseg.checkpoints.convert import convert_checkpoint

    summary = convert_checkpoint(encoder, checkpoint, to, out, context_length, position_table)
    click.echo(json.dumps(summary, indent=2))
    note = (f"wrote {out} ({to} layout, {summary['tensors']} tensors, context {summary['context_length']}, "
            f"position table: {summary['position_table']})")
    if summary["source_semantics"] != summary["output_semantics"]:
        note += (f"; the source ran with {summary['source_semantics']} padding semantics, the output runs with "
                 f"{summary['output_semantics']} ones (students' outputs differ; --semantics "
                 f"{summary['source_semantics']} restores them in edgeseg)")
    _note(note)
