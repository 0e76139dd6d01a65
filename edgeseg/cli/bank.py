"""``edgeseg bank build|info|verify``: prompt banks (zero encoder latency for known prompts)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from edgeseg.cli.common import PROMPTS_HELP, _note, cli
from edgeseg.errors import EdgesegError


@cli.group()
def bank() -> None:
    """Prompt banks: a bundle's outputs for known prompts, stored once and looked up.

    \b
    edgeseg bank build --bundle s0-int8 --prompts classes.txt --out classes.bank.safetensors
    edgeseg encode --bundle s0-int8 --bank classes.bank.safetensors --prompts prompts.txt --out memory.npz
    edgeseg bank build --bundle s0-int8 --prompts classes.txt --bank-only --out classes-bank   # no model at all
    edgeseg bank verify classes.bank.safetensors --bundle s0-int8
    """


@bank.command("build")
@click.option("--bundle", required=True, type=click.Path(path_type=Path),
              help="The bundle whose encoder fills the bank.")
@click.option("--prompts", "prompts_file", required=True, type=click.Path(path_type=Path), help=PROMPTS_HELP)
@click.option("--dtype", type=click.Choice(["float32", "float16"]), default="float32", show_default=True,
              help="Stored memory: float32 (exactly the encoder's output) or float16 (half the file).")
@click.option("--bank-only", is_flag=True,
              help="Write a bank-only bundle folder (tokenizer + bank + manifest, no model) instead of a bank file.")
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True,
              help="Prompts per model call while building.")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="Intra-op threads.")
@click.option("--out", required=True, type=click.Path(path_type=Path),
              help="Bank file to write (e.g. NAME.bank.safetensors); with --bank-only, a bundle folder.")
def build_command(bundle: Path, prompts_file: Path, dtype: str, bank_only: bool, batch_size: int,
                  threads: int | None, out: Path) -> None:
    """Run the bundle once per distinct prompt and store ids, mask and memory in one bank file.

    The bank (safetensors: no pickle, memory-mappable from Python and C++) is keyed by token ids and
    also stores each prompt's exact text; its header binds it to the bundle (model and vocabulary
    sha256, context length, pad id, semantics), so a bank made for another bundle is refused.
    """
    from tqdm import tqdm

    from edgeseg.bundle import check_bundle_target
    from edgeseg.fileio import check_output_folder, read_prompts
    from edgeseg.runtime.bank import build_bank_only_bundle, build_from_bundle

    if bank_only:
        check_bundle_target(out)
    else:
        check_output_folder(out)
    prompts = read_prompts(prompts_file)
    build = build_bank_only_bundle if bank_only else build_from_bundle
    with tqdm(unit="prompt", desc="bank", disable=None, file=sys.stderr) as bar:
        result = build(bundle, prompts, out, dtype=dtype, batch_size=batch_size, threads=threads, progress=bar.update)
    count = result["bank"]["prompts"] if bank_only else result.prompts
    entries = result["bank"]["entries"] if bank_only else result.entries
    size = (out / "bank.safetensors" if bank_only else out).stat().st_size
    _note(f"bank of {count} prompt(s) ({entries} distinct token-id rows, {dtype}, {size / 1e6:.2f} MB) -> {out}"
          + (" (bank-only bundle)" if bank_only else ""))


@bank.command("info")
@click.argument("bank_file", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def info_command(bank_file: Path, as_json: bool) -> None:
    """Print a bank's header: what it is bound to, dtype, counts, size."""
    from edgeseg.bank import open_bank

    opened = open_bank(bank_file, verify_data=False)
    data = {**opened.header.describe(), "bytes": opened.size,
            "bytes_per_1000_prompts": round(opened.size * 1000 / opened.header.prompts)}
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    width = max(len(k) for k in data)
    for key, value in data.items():
        click.echo(f"{key.ljust(width)}  {json.dumps(value) if isinstance(value, dict) else value}")


@bank.command("verify")
@click.argument("bank_file", type=click.Path(path_type=Path))
@click.option("--bundle", type=click.Path(path_type=Path), default=None,
              help="Also check that the bank belongs to this bundle (and recompute entries with it).")
@click.option("--recompute", type=click.IntRange(min=0), default=8, show_default=True,
              help="With --bundle: run the bundle again on the first N entries (in the build's batches) and compare.")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="Intra-op threads (recompute).")
def verify_command(bank_file: Path, bundle: Path | None, recompute: int, threads: int | None) -> None:
    """Check a bank: header against the file, arrays, data sha256; with --bundle, its binding and values."""
    from edgeseg.bank import bundle_identity, open_bank
    from edgeseg.bundle import verify_bundle

    opened = open_bank(bank_file, verify_data=True)
    message = f"bank {bank_file} OK: {opened.header.prompts} prompt(s), {opened.entries} entries, {opened.header.dtype}"
    if bundle is not None:
        manifest = verify_bundle(bundle)
        opened.check_binding(bundle_identity(manifest), bundle)
        message += f"; bound to bundle {bundle}"
        if recompute and manifest["backend"] != "bank":
            from edgeseg.runtime.bank import recompute as run_again

            check = run_again(opened, bundle, recompute, threads)
            message += (f"; recomputed {check['entries']} entries: {check['bit_identical']} bit-identical, max abs "
                        f"diff {check['max_abs_diff']:.2e}")
    elif recompute != 8:
        raise EdgesegError("--recompute needs --bundle DIR")
    _note(message)
