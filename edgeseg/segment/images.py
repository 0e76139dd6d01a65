"""``edgeseg segment --image``: every (image, prompt) through a SAM3 image engine, masks and overlays on disk."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from edgeseg.segment import render
from edgeseg.segment.engines import MetaImageEngine, TransformersImageEngine, at_image_size, select


def build_engine(opts: Any, library: str) -> Any:
    """The SAM3 image engine: an injected model, a transformers folder, or Meta's model (sam3.pt or random)."""
    from edgeseg.integrations.meta_build import RESOLUTION, build_image_model

    if library == "transformers" and opts.image_model is None:
        from edgeseg.integrations.transformers_sam3 import load_model

        return TransformersImageEngine(load_model(opts.sam3_checkpoint), opts.device)
    model = opts.image_model
    if model is not None and not hasattr(model, "backbone"):
        return TransformersImageEngine(model, opts.device)
    if model is None:
        model = build_image_model(opts.sam3_checkpoint)
    return MetaImageEngine(model, opts.resolution or RESOLUTION, opts.device)


def _instances(grounding: Any, prompt: str, top_k: int, shape: tuple[int, int]) -> tuple[list[Any], list[dict]]:
    picks = select(grounding, top_k)
    masks, boxes = at_image_size(grounding, picks, *shape)
    instances, rows = [], []
    for i, (pick, mask, box) in enumerate(zip(picks, masks, boxes)):
        text = render.label(prompt, pick.score, pick.below_threshold, pick.rank)
        instances.append(render.Instance(mask, box.tolist(), pick.score, text, i, pick.below_threshold))
        rows.append({"id": i, "query": pick.query, "score": pick.score, "rank": pick.rank,
                     "box_xyxy": [round(float(v), 2) for v in box], "area": int(mask.sum()),
                     "kind": "top-k, below threshold" if pick.below_threshold else "detection"})
    return instances, rows


def _write_prompt(folder: Path, array: np.ndarray, instances: list[Any], rows: list[dict], banner: str | None,
                  root: Path) -> dict[str, Any]:
    folder.mkdir(parents=True, exist_ok=True)
    for inst, row in zip(instances, rows):
        row["mask"] = str(render.write_mask(folder / f"mask_{row['id']:02d}.png", inst.mask).relative_to(root))
    overlay = render.write_png(folder / "overlay.png", render.overlay(array, instances, banner))
    return {"overlay": str(overlay.relative_to(root))}


def segment_images(opts: Any, prep: Any, cache: Any, out: Path, banner: str | None,
                   progress: Callable[[str, int], None] | None = None) -> dict[str, Any]:
    """Ground every prompt on every image with the text source (and SAM3's own encoder with
    ``--compare-baseline``); write ``<image>/<prompt>/overlay.png`` and ``mask_NN.png``."""
    from edgeseg.bench.segmentation import compare_groundings, summarize
    from edgeseg.segment import slug

    t0 = time.perf_counter()
    engine = build_engine(opts, prep.library)
    timing: dict[str, Any] = {"model_build_s": time.perf_counter() - t0, "image_encoder_s": [], "text_s": [],
                              "grounding_s": []}
    entries, comparisons = [], []
    for name, array, where in prep.images:
        t0 = time.perf_counter()
        state = engine.image(array)
        timing["image_encoder_s"].append(time.perf_counter() - t0)
        prompts = []
        for prompt in prep.prompts:
            grounding, text_s, heads_s = engine.ground(state, cache, prompt, opts.threshold)
            timing["text_s"].append(text_s)
            timing["grounding_s"].append(heads_s)
            instances, rows = _instances(grounding, prompt, opts.top_k, array.shape[:2])
            entry = {"prompt": prompt, "detections": int(grounding.kept.sum()), "instances": rows,
                     "top1_score": float(grounding.scores.max()),
                     **_write_prompt(out / slug(name) / slug(prompt), array, instances, rows, banner, out)}
            if opts.compare_baseline:
                reference, _, _ = engine.ground(state, None, prompt, opts.threshold)
                entry["compare_baseline"] = compare_groundings(reference, grounding)
                comparisons.append(entry["compare_baseline"])
            prompts.append(entry)
            if progress:
                progress(f"{name}: {prompt!r}", 1)
        entries.append({"name": name, "source": where, "shape": list(array.shape), "prompts": prompts})
    return {"engine": engine.library, "resolution": engine.resolution, "items": entries,
            "compare_baseline_summary": summarize(comparisons) if opts.compare_baseline else None,
            "timing": {**timing, "how": "time.perf_counter around the image encoder (once per image), the text "
                       "encoder (per prompt; cached prompts cost ~0) and SAM3's grounding heads"}}


__all__ = ["build_engine", "segment_images"]
