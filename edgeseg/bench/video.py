"""Segmentation agreement on a clip through Meta's SAM3 video model (detector + tracker, FP32, CPU).

For every prompt, the clip is tracked once with SAM3's own text encoder (the reference) and once per
candidate with the candidate's features injected through :mod:`edgeseg.integrations.meta_sam3`: the
prompt is added on frame 0 and propagated forward over every frame (``Sam3VideoInference.add_prompt``
then ``propagate_in_video``, Meta's own session flow). Per frame, at the video's resolution:

- ``mask_iou``: IoU of the union of all tracked objects' masks (1.0 when both runs track nothing);
- ``count_agrees``: both runs track the same number of objects;
- objects are matched greedily by mask IoU (pairs >= ``match_iou``, 0.5), highest first.

Tracking ids: SAM3 numbers objects in the order it first detects them, so ids of two runs are not
comparable directly. Each reference id is paired with the candidate id it first matches; afterwards a
frame *agrees* on that object when it matches the same candidate id again. ``id_agreement`` = agreeing
(frame, object) pairs / max(reference, candidate) object-frames (1.0 when neither run tracks anything),
and ``id_switches`` counts matches to a different candidate id than the first one.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeseg.bench.segmentation import mask_iou
from edgeseg.errors import EdgesegError

log = logging.getLogger(__name__)

MATCH_IOU = 0.5
DEFAULT_VIDEO_PROMPTS = ("a person",)
DEFAULT_MAX_FRAMES = 8


@dataclass
class FrameTracks:
    frame: int
    ids: np.ndarray  # [N] int64 SAM3 object ids
    masks: np.ndarray  # [N, H, W] bool at the video's resolution
    scores: np.ndarray  # [N] float detection score of each object
    boxes: np.ndarray  # [N, 4] xywh normalized


def track(model: Any, state: dict[str, Any], prompt: str) -> list[FrameTracks]:
    """Add ``prompt`` on frame 0 of an initialised video state and propagate it forward over every frame."""
    model.add_prompt(state, frame_idx=0, text_str=prompt)
    frames = []
    for index, out in model.propagate_in_video(state, start_frame_idx=0, max_frame_num_to_track=state["num_frames"],
                                               reverse=False):
        frames.append(FrameTracks(int(index), np.asarray(out["out_obj_ids"], dtype=np.int64),
                                  np.asarray(out["out_binary_masks"], dtype=bool),
                                  np.asarray(out["out_probs"], dtype=np.float32),
                                  np.asarray(out["out_boxes_xywh"], dtype=np.float32)))
    return sorted(frames, key=lambda f: f.frame)


def match_objects(ref: FrameTracks, got: FrameTracks, min_iou: float = MATCH_IOU) -> list[tuple[int, int, float]]:
    """Greedy one-to-one matching by mask IoU: ``(ref id, got id, iou)`` pairs with iou >= ``min_iou``."""
    pairs = [(mask_iou(a, b), i, j) for i, a in enumerate(ref.masks) for j, b in enumerate(got.masks)]
    used_ref, used_got, matches = set(), set(), []
    for iou, i, j in sorted(pairs, key=lambda p: -p[0]):
        if iou < min_iou or i in used_ref or j in used_got:
            continue
        used_ref.add(i)
        used_got.add(j)
        matches.append((int(ref.ids[i]), int(got.ids[j]), float(iou)))
    return matches


def _union(frame: FrameTracks, shape: tuple[int, ...]) -> np.ndarray:
    return frame.masks.any(0) if len(frame.masks) else np.zeros(shape, dtype=bool)


def compare_tracks(ref: Sequence[FrameTracks], got: Sequence[FrameTracks],
                   min_iou: float = MATCH_IOU) -> dict[str, Any]:
    """Per-frame mask IoU, count agreement and tracking-id agreement of two runs over the same frames."""
    if [f.frame for f in ref] != [f.frame for f in got]:
        raise EdgesegError("the two runs cover different frames")
    first: dict[int, int] = {}
    agree = switches = 0
    frames = []
    for r, g in zip(ref, got):
        shape = (r.masks.shape[1:] if len(r.masks) else g.masks.shape[1:]) or (1, 1)
        matches = match_objects(r, g, min_iou)
        for rid, gid, _ in matches:
            expected = first.setdefault(rid, gid)
            agree += expected == gid
            switches += expected != gid
        frames.append({"frame": r.frame, "reference_objects": len(r.ids), "candidate_objects": len(g.ids),
                       "count_agrees": len(r.ids) == len(g.ids), "matched": len(matches),
                       "mask_iou": mask_iou(_union(r, shape), _union(g, shape)),
                       "matched_iou": [m[2] for m in matches]})
    ref_total, got_total = sum(len(f.ids) for f in ref), sum(len(f.ids) for f in got)
    denominator = max(ref_total, got_total)
    return {
        "frames": frames,
        "mean_mask_iou": float(np.mean([f["mask_iou"] for f in frames])) if frames else None,
        "count_agreement": float(np.mean([f["count_agrees"] for f in frames])) if frames else None,
        "id_agreement": 1.0 if denominator == 0 else agree / denominator,
        "id_switches": switches, "reference_object_frames": ref_total, "candidate_object_frames": got_total,
        "both_empty": denominator == 0,
    }


def summarize_video(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    if not rows:
        return {"prompts": 0}
    return {
        "prompts": len(rows),
        "mean_frame_mask_iou": float(np.mean([r["mean_mask_iou"] for r in rows])),
        "mean_count_agreement": float(np.mean([r["count_agreement"] for r in rows])),
        "mean_id_agreement": float(np.mean([r["id_agreement"] for r in rows])),
        "id_switches": int(sum(r["id_switches"] for r in rows)),
        "both_empty_prompts": int(sum(r["both_empty"] for r in rows)),
    }


def run_video_agreement(model: Any, frames: Sequence[np.ndarray], prompts: Sequence[str],
                        candidates: dict[str, Any], progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Track every prompt over ``frames`` with SAM3's own text encoder and with each candidate; compare."""
    import torch
    from PIL import Image

    from edgeseg.integrations import as_text_source, meta_sam3
    from edgeseg.integrations.meta_build import CpuShim

    sources = {key: as_text_source(src) for key, src in candidates.items()}
    rows: dict[str, list[dict[str, Any]]] = {key: [] for key in sources}
    seconds: dict[str, list[float]] = {"reference": [], **{key: [] for key in sources}}
    reference = []
    with CpuShim(), torch.inference_mode():
        state = model.init_state(resource_path=[Image.fromarray(f) for f in frames], offload_video_to_cpu=True)
        for prompt in prompts:
            t0 = time.perf_counter()
            ref = track(model, state, prompt)
            seconds["reference"].append(time.perf_counter() - t0)
            reference.append({"prompt": prompt, "objects_per_frame": [len(f.ids) for f in ref],
                              "ids": sorted({int(i) for f in ref for i in f.ids})})
            for key, source in sources.items():
                t0 = time.perf_counter()
                with meta_sam3.text_encoder(model, source):
                    got = track(model, state, prompt)
                seconds[key].append(time.perf_counter() - t0)
                rows[key].append({"prompt": prompt, **compare_tracks(ref, got)})
            if progress:
                progress(f"video: {prompt!r}")
    return {
        "frames": len(frames), "frame_shape": list(frames[0].shape), "prompts": list(prompts),
        "reference": reference, "per_prompt": rows,
        "summary": {key: summarize_video(r) for key, r in rows.items()},
        "seconds_per_prompt": {k: float(np.mean(v)) for k, v in seconds.items() if v},
        "method": __doc__.split("\n\n", 1)[1].strip().replace("\n", " "),
    }


def video_phase(opts: Any, teacher: Any, keys: Sequence[str], torch_models: dict[str, Any],
                runners: dict[str, Any], progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """``edgeseg bench --video``: the baseline (through the adapter, a check) and every candidate on the clip."""
    from edgeseg.integrations.meta_build import build_video_model

    frames = load_clip(opts.video, opts.video_frames)
    prompts = video_prompts(opts.video, opts.prompts)
    t0 = time.perf_counter()
    model = getattr(opts, "video_model", None)
    if model is None:
        log.info("building Meta's SAM3 video model (FP32, CPU)")
        model = build_video_model(opts.sam3_checkpoint)
        if opts.sam3_checkpoint is None:
            model.detector.backbone.language_backbone.load_state_dict(teacher.state_dict(), strict=True)
    build_s = time.perf_counter() - t0
    candidates = {keys[0]: teacher, **{k: torch_models[k] if k in torch_models else runners[k] for k in keys[1:]}}
    result = run_video_agreement(model, frames, prompts, candidates, progress)
    result["model_build_s"] = build_s
    result["source"] = str(opts.video)
    result["baseline_through_adapter"] = (f"'{keys[0]}' is the baseline teacher's own features injected through "
                                          "the adapter: it checks the substitution (expect agreement 1)")
    return result


def video_prompts(video: Path, prompts_file: Path | None) -> list[str]:
    """Prompts for the clip: lines of ``--prompts`` that name the video file (or apply to every image),
    else :data:`DEFAULT_VIDEO_PROMPTS`."""
    from edgeseg.bench.segmentation import read_prompt_map

    if prompts_file is None:
        return list(DEFAULT_VIDEO_PROMPTS)
    mapping = read_prompt_map(prompts_file)
    prompts = mapping.get(Path(video).name, []) + mapping.get(Path(video).stem, []) + mapping.get("*", [])
    return prompts or list(DEFAULT_VIDEO_PROMPTS)


def load_clip(path: Path, max_frames: int = DEFAULT_MAX_FRAMES) -> list[np.ndarray]:
    """The first ``max_frames`` frames of a video file or frames folder (checked before any long work)."""
    from edgeseg.media import read_video

    frames = read_video(path, max_frames=max_frames)
    if len({f.shape for f in frames}) != 1:
        raise EdgesegError(f"the frames of {path} do not all have the same size")
    return frames


__all__ = ["DEFAULT_VIDEO_PROMPTS", "FrameTracks", "compare_tracks", "load_clip", "match_objects",
           "run_video_agreement", "summarize_video", "track", "video_phase", "video_prompts"]
