"""``edgeseg analyze``: prompt anatomy."""

from __future__ import annotations

from pathlib import Path

import click

from edgeseg.cli.common import (
    CHECKPOINT_HELP,
    ENCODER_HELP,
    _note,
    cli,
)
from edgeseg.errors import require_extra


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
    if not no_embedding:
        require_extra("edgeseg analyze (its embedding part; --no-embedding skips it)", "build", "torch")
    from edgeseg.analyze import parse_contexts, summary_line
    from edgeseg.analyze import run as run_analysis

    result = run_analysis([*prompts_files, *more_prompts], out, contexts=parse_contexts(contexts), encoder=encoder,
                          checkpoint=checkpoint, embedding=not no_embedding, sample=sample,
                          max_truncation=max_truncation, coverage=coverage, seed=seed, note=_note)
    _note(summary_line(result, out))
