"""``edgeseg segment``: masks from an edgeseg text encoder inside SAM3, for images and clips.

The text source (a bundle of any backend, or an edgeseg torch encoder) becomes SAM3's text encoder
through :mod:`edgeseg.integrations`; SAM3's image model is Meta's (``sam3.pt``, or random weights
without ``--sam3-checkpoint``) or a ``transformers`` SAM3 folder; clips go through Meta's video model.
Per image and prompt it writes instance masks (PNG), an overlay (PNG) and an entry in ``results.json``;
per clip and prompt, per-frame overlays and masks plus an animated overview (GIF). Everything goes
into a temporary sibling of ``--out``, renamed at the end: a failed run leaves no output folder.
``--compare-baseline`` grounds every prompt with SAM3's own text encoder too and reports the
benchmark's agreement measures (:mod:`edgeseg.bench.segmentation`, :mod:`edgeseg.bench.video`).
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgeseg.errors import EdgesegError

log = logging.getLogger(__name__)

SCHEMA = "edgeseg.segment/1"
RANDOM_NOTE = "RANDOM WEIGHTS: no --sam3-checkpoint, SAM3 is untrained; masks and scores mean nothing"
DEFAULT_IMAGE = "chelsea"  # skimage.data.chelsea(): a cat, shipped with scikit-image
DEFAULT_PROMPT = "a cat"


@dataclass
class SegmentOptions:
    out: Path
    bundle: Path | None = None
    encoder: str | None = None
    checkpoint: Path | None = None
    sam3_checkpoint: Path | None = None
    images: Sequence[Path] = ()
    video: Path | None = None
    prompts: Sequence[str] = ()
    threshold: float = 0.5
    top_k: int = 0
    device: str = "cpu"
    compare_baseline: bool = False
    max_frames: int = 16
    fps: float = 4.0
    command: str = ""
    # injected (tests, notebooks): SAM3 models, their input size, and a text source
    image_model: Any = None
    video_model: Any = None
    resolution: int | None = None
    text_source: Any = None


@dataclass
class Prepared:
    images: list[tuple[str, np.ndarray, str]] = field(default_factory=list)  # name, RGB array, where from
    frames: list[np.ndarray] = field(default_factory=list)
    prompts: list[str] = field(default_factory=list)
    library: str = "meta-sam3"
    source: Any = None
    source_facts: dict[str, Any] = field(default_factory=dict)


def slug(text: str) -> str:
    """A file-name-safe form of a prompt or image name."""
    return re.sub(r"[^A-Za-z0-9]+", "-", text.strip()).strip("-").lower()[:48] or "prompt"


def _check_device(device: str) -> None:
    import torch

    try:
        kind = torch.device(device).type
    except RuntimeError as exc:
        raise EdgesegError(f"unknown --device {device!r} (cpu, cuda, cuda:N)") from exc
    if kind not in ("cpu", "cuda"):
        raise EdgesegError(f"--device {device}: edgeseg segment runs on cpu or cuda")
    if kind == "cuda" and not torch.cuda.is_available():
        raise EdgesegError(f"--device {device}: CUDA is not available on this machine")


def _library(opts: SegmentOptions) -> str:
    path = opts.sam3_checkpoint
    if path is None:
        return "meta-sam3"
    if not Path(path).exists():
        raise EdgesegError(f"--sam3-checkpoint {path} does not exist")
    if not Path(path).is_dir():
        return "meta-sam3"
    from edgeseg.integrations.transformers_sam3 import MODEL_TYPES

    try:
        model_type = json.loads((Path(path) / "config.json").read_text(encoding="utf-8")).get("model_type")
    except (OSError, ValueError, AttributeError) as exc:
        raise EdgesegError(f"--sam3-checkpoint {path} is a folder but not a transformers model (config.json)") \
            from exc
    if model_type not in MODEL_TYPES:
        raise EdgesegError(f"--sam3-checkpoint {path} holds a transformers '{model_type}' model, not SAM3")
    return "transformers"


def _text_source(opts: SegmentOptions) -> tuple[Any, dict[str, Any]]:
    if opts.text_source is not None:
        return opts.text_source, {"kind": "injected"}
    if (opts.bundle is None) == (opts.encoder is None):
        raise EdgesegError("give exactly one text encoder: --bundle DIR or --encoder NAME")
    if opts.bundle is not None:
        from edgeseg.runtime import load

        runner = load(opts.bundle)
        m = runner.manifest
        return runner, {"kind": "bundle", "path": str(opts.bundle), "encoder": m["encoder"], "precision":
                        m["precision"], "backend": m["backend"], "context_length": int(m["context_length"]),
                        "checkpoint": (m.get("source") or {}).get("checkpoint_sha256", "unknown")}
    from edgeseg.checkpoints import load_encoder
    from edgeseg.integrations.source import TorchEncoderSource

    model = load_encoder(opts.encoder, opts.checkpoint, device=opts.device, seed=0)
    return TorchEncoderSource(model), {"kind": "torch", "encoder": opts.encoder, "context_length":
                                       int(model.context_length), "checkpoint": str(opts.checkpoint or "random")}


def prepare(opts: SegmentOptions) -> Prepared:
    """Every check on the inputs before any model is built: prompts, device, files, text encoder, output."""
    from edgeseg.fileio import check_output_folder
    from edgeseg.media import read_image, read_video

    prompts = [p.strip() for p in opts.prompts]
    if any(not p for p in prompts):
        raise EdgesegError("--prompt is empty: give the words to segment, e.g. --prompt 'a dog'")
    if not 0.0 <= opts.threshold <= 1.0:
        raise EdgesegError(f"--threshold {opts.threshold} is outside [0, 1]")
    _check_device(opts.device)
    if (opts.images or opts.video is not None) and not prompts:
        raise EdgesegError("--image/--video need at least one --prompt")
    prep = Prepared(prompts=prompts or [DEFAULT_PROMPT])
    for path in opts.images:
        prep.images.append((Path(path).stem, read_image(path), str(path)))
    if opts.video is not None:
        prep.frames = read_video(opts.video, max_frames=opts.max_frames)
        if len({f.shape for f in prep.frames}) != 1:
            raise EdgesegError(f"the frames of {opts.video} do not all have the same size")
    if not opts.images and opts.video is None:
        prep.images.append(_default_image())
    prep.library = _library(opts)
    if prep.library == "transformers" and opts.video is not None:
        raise EdgesegError("--video runs through Meta's sam3 video model: give Meta's sam3.pt (or no checkpoint), "
                           "not a transformers folder")
    _check_out(Path(opts.out))
    check_output_folder(opts.out)
    prep.source, prep.source_facts = _text_source(opts)
    return prep


def _default_image() -> tuple[str, np.ndarray, str]:
    from edgeseg.errors import require_extra

    require_extra("the default photo (or pass --image)", "sam3", "skimage")
    import skimage.data

    from edgeseg.media import as_rgb

    return DEFAULT_IMAGE, as_rgb(getattr(skimage.data, DEFAULT_IMAGE)(), DEFAULT_IMAGE), \
        f"skimage.data.{DEFAULT_IMAGE}()"


def _check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise EdgesegError(f"--out {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        try:
            schema = json.loads((out / "results.json").read_text(encoding="utf-8")).get("schema")
        except (OSError, ValueError, AttributeError):
            schema = None
        if schema != SCHEMA:
            raise EdgesegError(f"--out {out} exists and is not an earlier edgeseg segment output: choose a new folder")


def run_segment(opts: SegmentOptions, prep: Prepared | None = None,
                progress: Callable[[str, int], None] | None = None) -> dict[str, Any]:
    """Segment every image and the clip; write masks, overlays and ``results.json`` into ``opts.out``."""
    from edgeseg.fileio import atomic_path
    from edgeseg.integrations import FeatureCache
    from edgeseg.segment import clip, images

    started = time.perf_counter()
    prep = prep if prep is not None else prepare(opts)
    cache = FeatureCache(prep.source)
    random_weights = opts.sam3_checkpoint is None  # an injected model (tests) is random too
    results: dict[str, Any] = {
        "schema": SCHEMA, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "command": opts.command,
        "weights": RANDOM_NOTE if random_weights else f"SAM3 checkpoint {opts.sam3_checkpoint}",
        "random_sam3": random_weights, "library": prep.library, "text_encoder": prep.source_facts,
        "threshold": opts.threshold, "top_k": opts.top_k, "device": opts.device,
        "compare_baseline": opts.compare_baseline,
    }
    banner = "RANDOM WEIGHTS: untrained SAM3, masks mean nothing" if random_weights else None
    with atomic_path(Path(opts.out), directory=True) as tmp:
        if prep.images:
            results["images"] = images.segment_images(opts, prep, cache, tmp, banner, progress)
        if prep.frames:
            results["video"] = clip.segment_clip(opts, prep, cache, tmp, banner, progress)
        results["text_cache"] = {"encoded": dict(cache.encoded), "calls": cache.calls, "hits": cache.hits}
        results["runtime_s"] = time.perf_counter() - started
        (tmp / "results.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    close = getattr(prep.source, "deactivate", None)
    if callable(close):
        close()
    return results


__all__ = ["DEFAULT_IMAGE", "DEFAULT_PROMPT", "RANDOM_NOTE", "SCHEMA", "Prepared", "SegmentOptions", "prepare",
           "run_segment", "slug"]
