"""Shared pieces of the ``edgeseg`` command line: the click group, option help texts, and helpers.

Commands live in one module per group of the pipeline (``encoders``, ``build``, ``analyze``,
``distill``, ``bench``, ...); each registers itself on :data:`cli`. The CLI holds argument parsing,
progress and error mapping only: every user-facing failure is an
:class:`edgeseg.errors.EdgesegError`, turned into one stderr line and exit code 2 by :func:`main`.
"""

from __future__ import annotations

import json
import logging
import math
import sys
from collections.abc import Sequence
from pathlib import Path

import click

from edgeseg import __version__
from edgeseg.bundlecheck import printable
from edgeseg.errors import EdgesegError
from edgeseg.tokenizer import MAX_CONTEXT_LENGTH

log = logging.getLogger("edgeseg")

ENCODER_HELP = "Encoder name: sam3 (the SAM3 teacher), mobileclip-s0, mobileclip-s1, mobileclip2-l."
CONTEXT_HELP = "Context length in tokens (default: the encoder's, 32 for sam3, 16 for students)."
CHECKPOINT_HELP = (
    "Weights: Meta's sam3.pt, an efficientsam3 SAM3-LiteText .pt, a bare text-encoder state dict, an edgeseg "
    ".safetensors, or a transformers checkpoint (a folder with config.json + model.safetensors or a sharded "
    "index, or that .safetensors with config.json beside it). Without it the weights are random (seeded)."
)
SEMANTICS_HELP = (
    "Padding semantics to run the encoder with: 'transformers' (pad 49407 or the tokenizer files' pad id, "
    "students' attention masked to SOT..EOT) or 'efficientsam3' (pad 0, mask ids == 0, students attend to "
    "padding). Default: the checkpoint's own (transformers for transformers checkpoints, what an edgeseg file "
    "records, else efficientsam3)."
)
POSITION_HELP = (
    "How a student checkpoint's 77-row position table is reduced to the context length: 'interpolate' "
    "(bilinear, how the LiteText checkpoints were trained) or 'slice' (first rows, what efficientsam3's "
    "released inference code does). Default: the mode the checkpoint records (edgeseg distill splice "
    "writes 'slice'), else 'interpolate'."
)
PROMPTS_HELP = "UTF-8 text file, one prompt per line (blank lines are skipped)."

#: --context-length of every command (the tokenizer's range; an encoder may accept less)
CONTEXT_RANGE = click.IntRange(2, MAX_CONTEXT_LENGTH)
#: batch sizes and --max-batch (checked before anything is allocated)
MAX_BATCH = 65536
BATCH_RANGE = click.IntRange(1, MAX_BATCH)
THREADS_RANGE = click.IntRange(1, 1024)
SEED_RANGE = click.IntRange(0, 2**32 - 1)
COSINE_RANGE = click.FloatRange(-1.0, 1.0)
#: path options a command reads and updates in place (caches): never compared with --out
READ_WRITE_PARAMS = frozenset({"cache", "timing_cache"})


def _setup_logging(verbose: int) -> None:
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="edgeseg: %(levelname)s: %(message)s", stream=sys.stderr)


def _note(message: str) -> None:
    click.echo(f"edgeseg: {printable(message, 2000)}", err=True)


def _echo_record(data: dict, as_json: bool) -> None:
    """Print ``data`` as JSON, or as aligned ``key  value`` lines (dicts as JSON, large counts with commas)."""
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    width = max(len(k) for k in data)
    for key, value in data.items():
        if isinstance(value, int) and not isinstance(value, bool) and value >= 10_000:
            value = f"{value:,}"
        elif isinstance(value, dict):
            value = json.dumps(value)
        click.echo(f"{key.ljust(width)}  {value}")


def semantics_option(command):
    """The ``--semantics`` option of every command that builds an encoder."""
    return click.option("--semantics", type=click.Choice(["efficientsam3", "transformers"]), default=None,
                        help=SEMANTICS_HELP)(command)


def _load(encoder: str, checkpoint: Path | None, context_length: int | None, position_table: str | None,
          device: str, seed: int, semantics: str | None = None):
    from edgeseg.checkpoints import load_encoder

    model = load_encoder(encoder, checkpoint, context_length, position_table, device=device, seed=seed,
                         semantics=semantics)
    if checkpoint is None:
        _note(f"no --checkpoint given: {encoder} has RANDOM weights (seed {seed}); outputs are not meaningful")
    return model


def _write_npz(out: Path, **arrays) -> None:
    import numpy as np

    from edgeseg.fileio import atomic_path

    with atomic_path(out) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)


def _option_name(param: click.Parameter) -> str:
    return max(param.opts, key=len) if param.opts else param.name


def _input_paths(ctx: click.Context) -> list[Path]:
    """Every path the command reads: path-typed options and arguments (but --out and caches)."""
    found = []
    for param in ctx.command.params:
        value = ctx.params.get(param.name)
        is_path = isinstance(param.type, click.Path) or isinstance(param, click.Argument)
        if param.name == "out" or param.name in READ_WRITE_PARAMS or not is_path or value is None:
            continue
        for item in value if isinstance(value, (list, tuple)) else [value]:
            if isinstance(item, (str, Path)) and str(item):
                found.append(Path(item))
    return found


def check_params(ctx: click.Context) -> None:
    """Checks every command gets before it runs: finite numbers, int64 integers, an --out that is a name
    and none of the command's inputs (same file or folder through symlinks and hard links)."""
    from edgeseg.fileio import check_not_an_input

    for param in ctx.command.params:
        value = ctx.params.get(param.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise EdgesegError(f"{_option_name(param)}: {value} is not a finite number")
        if isinstance(value, int) and not isinstance(value, bool) and not -(2**63) <= value < 2**63:
            raise EdgesegError(f"{_option_name(param)}: {value} is out of range")
    out = ctx.params.get("out")
    if out is None:
        return
    if str(out) in ("", ".") or Path(out).name in ("", ".", ".."):
        raise EdgesegError(f"--out {printable(repr(str(out)))} is empty or not a name: give the file or folder "
                           "to write")
    check_not_an_input(out, _input_paths(ctx))


class _Checked:
    def invoke(self, ctx: click.Context):
        check_params(ctx)
        return super().invoke(ctx)


class EdgesegCommand(_Checked, click.Command):
    """A command whose parameters get :func:`check_params` first."""


class EdgesegGroup(_Checked, click.Group):
    """The ``edgeseg`` group: its commands and sub-groups are checked the same way."""

    command_class = EdgesegCommand
    group_class = type


@click.group(cls=EdgesegGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
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


def _source(checkpoint: Path | None, seed: int, model=None) -> dict:
    from edgeseg.checkpoints import fingerprint

    if checkpoint is None:
        return {"checkpoint": None, "checkpoint_sha256": "random", "seed": seed}
    layout = getattr(model, "checkpoint_layout", None) if model is not None else None
    return {"checkpoint": checkpoint.name, "checkpoint_sha256": fingerprint(checkpoint), "seed": None,
            **({"layout": layout} if layout else {})}



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




CHECKPOINTS_HELP = (
    "NAME=PATH: load torch encoder NAME from checkpoint PATH, strictly (every key, every shape; the formats of "
    "edgeseg info --checkpoint). Repeat for several encoders; an encoder without one has RANDOM weights (seed 0)."
)


def parse_checkpoints(values: Sequence[str], names: Sequence[str], option: str = "--checkpoint") -> dict[str, Path]:
    """``NAME=PATH`` option values -> ``{NAME: PATH}`` for the torch encoders ``names`` a command runs.

    A value must be ``NAME=PATH`` with NAME a registered encoder among ``names``, named once, and
    PATH an existing file or folder; anything else is an :class:`EdgesegError` (one line, exit 2).
    Load each with :func:`edgeseg.checkpoints.load_encoder`.
    """
    found: dict[str, Path] = {}
    for value in values:
        name, sep, path = (part.strip() for part in str(value).partition("="))
        if not sep or not name or not path:
            raise EdgesegError(f"{option} {value!r}: expected NAME=PATH, e.g. {option} mobileclip-s0=s0.safetensors")
        from edgeseg.encoders import get_config

        get_config(name)  # an unknown encoder name is a user error
        if name not in names:
            raise EdgesegError(f"{option} {value!r}: {name} is not one of the encoders this command runs "
                               f"({', '.join(names) or 'none'})")
        if name in found:
            raise EdgesegError(f"{option}: {name} is given twice ({found[name]} and {path})")
        if not Path(path).exists():
            raise EdgesegError(f"{option} {value!r}: checkpoint {path} does not exist")
        found[name] = Path(path)
    return found


def command_line(ctx: click.Context, positional: Sequence[str] = ()) -> str:
    """The command line that reproduces this run: ``edgeseg NAME``, the ``positional`` arguments' values, and
    every option that differs from its default (a repeated option once per value), shell-quoted."""
    import shlex

    words = ["edgeseg", ctx.command.name or "", *(str(v) for name in positional for v in ctx.params[name])]
    for param in ctx.command.params:
        value = ctx.params.get(param.name)
        if param.name in positional or value == param.default or value in (None, False, ()):
            continue
        flag = max(param.opts, key=len)
        for item in value if isinstance(value, tuple) else [value]:
            words += [flag] if item is True else [flag, str(item)]
    return shlex.join(words)
