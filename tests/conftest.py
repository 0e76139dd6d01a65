"""Shared test helpers.

Parity tests use Meta's ``sam3`` package (the ``[sam3]`` extra) as the oracle. Where CI=true they
must run: a missing package is a failure there, not a skip.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PROMPT_SETS = REPO / "edgeseg" / "data" / "prompts"


def import_sam3():
    """Meta's tokenizer and text encoder classes, or skip (fail under CI) when not installed."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from sam3.model.text_encoder_ve import VETextEncoder
            from sam3.model.tokenizer_ve import SimpleTokenizer
    except ImportError as exc:  # pragma: no cover - depends on the environment
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"the sam3 extra must be installed in CI for parity tests: {exc}")
        pytest.skip(f"Meta's sam3 package is not installed (pip install -e .[sam3]): {exc}")
    return SimpleTokenizer, VETextEncoder


def randomize_(model, seed: int = 0):
    """Every float tensor of ``model`` random at a sane scale, from one seeded generator in state-dict
    order: BatchNorm variances positive, layer scales O(1), matrices (not embeddings) ~ 1/sqrt(fan-in)."""
    import math

    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if not tensor.is_floating_point():
                continue
            value = torch.randn(tensor.shape, generator=gen)
            if name.endswith("running_var"):
                value = value.abs() + 0.5
            elif name.endswith("layer_scale"):
                value = value * 0.5
            elif tensor.dim() >= 2 and "embed" not in name:
                value = value / math.sqrt(tensor.shape[1] * (tensor.shape[-1] if tensor.dim() == 4 else 1))
            tensor.copy_(value)
    return model


def import_transformers():
    """transformers (the pinned 5.23.0 oracle), or skip (fail under CI) when it is not installed."""
    try:
        import transformers
    except ImportError as exc:  # pragma: no cover - depends on the environment
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"transformers==5.23.0 must be installed in CI for the transformers parity tests: {exc}")
        pytest.skip(f"transformers is not installed (pip install -e .[transformers]): {exc}")
    return transformers


@pytest.fixture(scope="session")
def meta_tokenizer():
    from edgeseg.tokenizer import default_vocab_path

    simple_tokenizer, _ = import_sam3()
    return simple_tokenizer(bpe_path=str(default_vocab_path()))


def run_cli(args: list[str]) -> tuple[int, str]:
    """``edgeseg ARGS`` in this process: (exit code, what it wrote on stderr)."""
    import contextlib
    import io

    from edgeseg.cli import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = main(list(args))
    return rc, err.getvalue()


def calibration_prompts(limit: int | None = None) -> list[str]:
    """Real prompts shipped in edgeseg/data/prompts/ (all splits), in file order."""
    prompts: list[str] = []
    for name in ("calibration", "distill", "eval", "reference"):
        path = PROMPT_SETS / f"{name}.txt"
        if path.exists():
            prompts += [line for line in path.read_text(encoding="utf-8").split("\n") if line.strip()]
    if not prompts:
        pytest.fail("edgeseg/data/prompts/ holds no prompt files")
    return prompts[:limit] if limit else prompts


# Inputs where tokenizers disagree in practice: html entities, accents, mojibake, CJK, emoji,
# fullwidth, ligatures, combining marks, contractions, digits, special strings, truncation.
HARD_PROMPTS = [
    "Tom &amp;amp; Jerry", "fish &lt;3 chips", "caf\u00e9 au lait", "cafe\u0301", "Cr\u00e8me Br\u00fbl\u00e9e",
    "caf\u00c3\u00a9", "\u00e2\u20ac\u0153quoted\u00e2\u20ac\ufffd", "\u732b\u3068\u72ac",
    "\ud55c\uad6d\uc5b4 \ud14d\uc2a4\ud2b8",
    "\U0001f436 dog", "\U0001f468\u200d\U0001f469\u200d\U0001f467 family", "\uff21\uff22\uff23 \ufb01sh",
    "x<end_of_text>y", "<START_OF_TEXT>", "hi!$ there !% wow!!", "\u0130stanbul", "stra\u00dfe", "a\u200bb",
    "\x1c\x1dfoo\tbar\r\nbaz", "2024 cars", "dog's 'sun they'll we'd", "   ", "", "A Very Long Prompt " * 12,
    "the leftmost child wearing blue vest", "\u0645\u0631\u062d\u0628\u0627", "\u00bd \u2163 \u00b2",
    "\u00a0nbsp\u2003em space", "UPPER lower MiXeD", "e\u0301\u0301\u0301", "\ufeffbom", "\\ back\\slash",
]
