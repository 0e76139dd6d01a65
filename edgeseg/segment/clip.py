"""``edgeseg segment --video``: each prompt tracked over a clip by Meta's SAM3 video model, the text from the
edgeseg source (encoded once per prompt); per-frame overlays and masks, and an animated overview."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from edgeseg.segment import render


def _frame_instances(tracks: Any, prompt: str, width: int, height: int) -> tuple[list[Any], list[dict]]:
    instances, rows = [], []
    for obj, mask, score, box in zip(tracks.ids, tracks.masks, tracks.scores, tracks.boxes):
        x, y, w, h = (float(v) for v in box)
        xyxy = [x * width, y * height, (x + w) * width, (y + h) * height]
        instances.append(render.Instance(mask, xyxy, float(score), f"{prompt} #{int(obj)} {float(score):.2f}",
                                         int(obj)))
        rows.append({"id": int(obj), "score": float(score), "box_xyxy": [round(v, 2) for v in xyxy],
                     "area": int(mask.sum())})
    return instances, rows


def _write_frames(folder: Path, frames: list[np.ndarray], tracks: list[Any], prompt: str, banner: str | None,
                  root: Path, fps: float) -> dict[str, Any]:
    from edgeseg.media import write_animation

    (folder / "masks").mkdir(parents=True, exist_ok=True)
    pictures, per_frame = [], []
    height, width = frames[0].shape[:2]
    for frame, track in zip(frames, tracks):
        instances, rows = _frame_instances(track, prompt, width, height)
        for inst, row in zip(instances, rows):
            path = render.write_mask(folder / "masks" / f"frame_{track.frame:04d}_id_{row['id']}.png", inst.mask)
            row["mask"] = str(path.relative_to(root))
        picture = render.overlay(frame, instances, banner)
        overlay = render.write_png(folder / f"frame_{track.frame:04d}.png", picture)
        pictures.append(picture)
        per_frame.append({"frame": track.frame, "objects": rows, "overlay": str(overlay.relative_to(root))})
    animation = write_animation(folder / "overview.gif", pictures, fps=fps)
    return {"frames": per_frame, "overview": str(animation.relative_to(root))}


def build_video_engine(opts: Any) -> Any:
    from edgeseg.integrations.meta_build import build_video_model

    model = opts.video_model if opts.video_model is not None else build_video_model(opts.sam3_checkpoint)
    return model.to(opts.device)


def segment_clip(opts: Any, prep: Any, cache: Any, out: Path, banner: str | None,
                 progress: Callable[[str, int], None] | None = None) -> dict[str, Any]:
    """Track every prompt from frame 0 over the clip; with ``--compare-baseline`` also with SAM3's own text
    encoder, compared with the benchmark's measures (:func:`edgeseg.bench.video.compare_tracks`)."""
    import torch
    from PIL import Image

    from edgeseg.bench.video import compare_tracks, summarize_video, track
    from edgeseg.integrations import meta_sam3
    from edgeseg.integrations.meta_build import CpuShim
    from edgeseg.segment import slug

    t0 = time.perf_counter()
    model = build_video_engine(opts)
    timing: dict[str, Any] = {"model_build_s": time.perf_counter() - t0, "track_s": []}
    entries, comparisons = [], []
    with CpuShim(), torch.inference_mode():
        state = model.init_state(resource_path=[Image.fromarray(f) for f in prep.frames], offload_video_to_cpu=True)
        for prompt in prep.prompts:
            t0 = time.perf_counter()
            with meta_sam3.text_encoder(model, cache):
                tracks = track(model, state, prompt)
            timing["track_s"].append(time.perf_counter() - t0)
            entry = {"prompt": prompt, "ids": sorted({int(i) for t in tracks for i in t.ids}),
                     **_write_frames(out / "video" / slug(prompt), prep.frames, tracks, prompt, banner, out, opts.fps)}
            if opts.compare_baseline:
                entry["compare_baseline"] = compare_tracks(track(model, state, prompt), tracks)
                comparisons.append(entry["compare_baseline"])
            entries.append(entry)
            if progress:
                progress(f"video: {prompt!r}", len(prep.frames))
    return {"source": str(opts.video), "frames": len(prep.frames), "frame_shape": list(prep.frames[0].shape),
            "prompts": entries, "timing": timing,
            "compare_baseline_summary": summarize_video(comparisons) if opts.compare_baseline else None}


__all__ = ["segment_clip"]
