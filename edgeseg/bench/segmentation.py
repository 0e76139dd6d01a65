"""Segmentation-level accuracy through Meta's full SAM3 image model (the ``sam3`` package, FP32).

Each image goes through SAM3's image encoder once; then every prompt is grounded once with SAM3's
own text features (its ``VETextEncoder``, context 32) and once per candidate with the candidate's
features injected where the text encoder's output goes: ``model.backbone.language_backbone`` is
swapped for :class:`edgeseg.integrations.meta_sam3.TextEncoderAdapter`, which returns ``(mask [B, L] bool
True = padding, memory [L, B, 256], embeds [L, B, 1024])`` exactly as ``VETextEncoder.forward`` does.
Candidates give L = 16 rows (their
context); the teacher gives 32. SAM3 reads the text memory only through attention masked by the
padding mask and a masked mean, so the number of padding rows does not matter, only the valid ones.
The token-embedding output (``language_embeds``) is not read by SAM3's grounding path; the adapter
returns zeros for it (checked: :func:`embeds_unused`, and SAM3's own features through the adapter
reproduce its outputs bit for bit in ``tests/test_integrations.py``).

Outputs are compared at the mask head's resolution (no resize to the photo), per prompt: detections
(score = sigmoid(logit) * presence > threshold, 0.5 as in ``Sam3Processor``), count agreement,
IoU of the union of detected masks (1.0 when both runs detect nothing: they agree), the IoU of the
top-scoring query's mask (defined even without detections), box IoU of greedily matched detections
(top-1 boxes when either run has none) and the score difference of the top-1 queries.

Meta's SAM3 models are built and run on CPU by :mod:`edgeseg.integrations.meta_build`; the candidates'
features reach SAM3 through :mod:`edgeseg.integrations.meta_sam3` (the public adapter, the only one).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgeseg.errors import EdgesegError
from edgeseg.integrations.meta_build import RESOLUTION, TINY_RESOLUTION, CpuShim, build_image_model
from edgeseg.media import as_rgb, read_image

log = logging.getLogger(__name__)

DEFAULT_PROMPTS = Path(__file__).with_name("default_images.json")


# -- images and prompts ----------------------------------------------------------------------------
@dataclass
class ImageItem:
    name: str
    array: np.ndarray  # uint8 [H, W, 3]
    prompts: list[str]
    source: str


def default_images(limit: int | None = None) -> list[ImageItem]:
    """scikit-image's sample photos with prompts naming what is in them (``default_images.json``)."""
    try:
        import skimage.data
    except ImportError as exc:
        raise EdgesegError("the default images come from scikit-image (pip install scikit-image), or pass "
                           "--images DIR --prompts FILE") from exc
    spec = json.loads(DEFAULT_PROMPTS.read_text(encoding="utf-8"))
    items = []
    for name, prompts in spec["images"].items():
        items.append(ImageItem(name, as_rgb(getattr(skimage.data, name)(), name), list(prompts),
                               f"skimage.data.{name}()"))
    return items[:limit] if limit else items


def read_prompt_map(path: Path) -> dict[str, list[str]]:
    """Prompts per image: JSON ``{"images": {name: [prompts]}}`` or ``{name: [...]}``, or TSV
    lines ``image<TAB>prompt``; a line without a tab applies to every image (key ``*``)."""
    from edgeseg.fileio import read_prompts

    if not Path(path).is_file():
        raise EdgesegError(f"prompts file {path} does not exist")
    if Path(path).suffix.lower() == ".json":
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise EdgesegError(f"prompts file {path} is not valid JSON: {exc}") from exc
        data = data.get("images", data) if isinstance(data, dict) else None
        if not isinstance(data, dict) or not all(isinstance(v, list) for v in data.values()):
            raise EdgesegError(f"prompts file {path} must map image names to lists of prompts")
        return {str(k): [str(p) for p in v] for k, v in data.items()}
    mapping: dict[str, list[str]] = {}
    for line in read_prompts(path):
        image, tab, prompt = line.partition("\t")
        key, text = (image.strip(), prompt.strip()) if tab else ("*", line.strip())
        mapping.setdefault(key, []).append(text)
    return mapping


def user_images(directory: Path, prompt_map: dict[str, list[str]] | None) -> list[ImageItem]:
    directory = Path(directory)
    if not directory.is_dir():
        raise EdgesegError(f"images folder {directory} does not exist")
    files = sorted(p for p in directory.iterdir() if p.is_file() and not p.name.startswith("."))
    if not files:
        raise EdgesegError(f"images folder {directory} holds no files")
    if prompt_map is None:
        raise EdgesegError("--images needs --prompts FILE (image<TAB>prompt lines, or prompts for every image)")
    items = []
    for path in files:
        array = read_image(path)
        prompts = prompt_map.get(path.name, []) + prompt_map.get(path.stem, []) + prompt_map.get("*", [])
        if prompts:
            items.append(ImageItem(path.name, array, prompts, str(path)))
    if not items:
        raise EdgesegError(f"no prompts in the prompts file name an image of {directory}")
    return items


# -- metrics -------------------------------------------------------------------------------------
@dataclass
class Grounding:
    scores: np.ndarray  # [Q] score of every query (sigmoid(logit) * presence)
    boxes: np.ndarray  # [Q, 4] xyxy, normalized
    masks: np.ndarray  # [Q, h, w] bool (mask logit > 0)
    threshold: float
    logits: Any = None  # [Q, h, w] float mask logits (torch), when kept (edgeseg segment resizes them)

    @property
    def kept(self) -> np.ndarray:
        return self.scores > self.threshold


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of xyxy boxes ``a [N, 4]`` and ``b [M, 4]``."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    area_a = np.clip(a[:, 2:] - a[:, :2], 0, None).prod(-1)
    area_b = np.clip(b[:, 2:] - b[:, :2], 0, None).prod(-1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def compare_groundings(ref: Grounding, got: Grounding) -> dict[str, Any]:
    rk, gk = ref.kept, got.kept
    empty = np.zeros(ref.masks.shape[1:], dtype=bool)
    ref_union = ref.masks[rk].any(0) if rk.any() else empty
    got_union = got.masks[gk].any(0) if gk.any() else empty
    r_top, g_top = int(ref.scores.argmax()), int(got.scores.argmax())
    if rk.any() and gk.any():
        ious = box_iou(ref.boxes[rk], got.boxes[gk])
        matched_box_iou = float(ious.max(1).mean())
        how = "mean over the teacher's detections of the best IoU with a candidate detection"
    else:
        matched_box_iou = float(box_iou(ref.boxes[[r_top]], got.boxes[[g_top]])[0, 0])
        how = "top-1 query boxes (a run without detections)"
    return {
        "teacher_detections": int(rk.sum()), "candidate_detections": int(gk.sum()),
        "count_agrees": bool(rk.sum() == gk.sum()),
        "mask_iou": mask_iou(ref_union, got_union),
        "both_empty": bool(not rk.any() and not gk.any()),
        "top1_mask_iou": mask_iou(ref.masks[r_top], got.masks[g_top]),
        "box_iou": matched_box_iou, "box_iou_how": how,
        "top1_score_teacher": float(ref.scores[r_top]), "top1_score_candidate": float(got.scores[g_top]),
        "top1_score_diff": float(got.scores[g_top] - ref.scores[r_top]),
        "same_top1_query": r_top == g_top,
    }


def summarize(rows: Sequence[dict[str, Any]], iou_bar: float = 0.95) -> dict[str, Any]:
    if not rows:
        return {"prompts": 0}
    iou = np.array([r["mask_iou"] for r in rows])
    top1 = np.array([r["top1_mask_iou"] for r in rows])
    return {
        "prompts": len(rows),
        "mean_mask_iou": float(iou.mean()), f"fraction_mask_iou_ge_{iou_bar}": float((iou >= iou_bar).mean()),
        "mean_top1_mask_iou": float(top1.mean()),
        f"fraction_top1_mask_iou_ge_{iou_bar}": float((top1 >= iou_bar).mean()),
        "count_agreement": float(np.mean([r["count_agrees"] for r in rows])),
        "mean_box_iou": float(np.mean([r["box_iou"] for r in rows])),
        "mean_abs_top1_score_diff": float(np.mean([abs(r["top1_score_diff"]) for r in rows])),
        "both_empty_prompts": int(sum(r["both_empty"] for r in rows)),
    }


# -- the run -------------------------------------------------------------------------------------
def _find_stage(device: Any = "cpu") -> Any:
    """SAM3's query for one image and one text (what ``Sam3Processor`` builds)."""
    from sam3.model.data_misc import FindStage

    ids = torch.tensor([0], dtype=torch.long, device=device)
    return FindStage(img_ids=ids, text_ids=ids,
                     input_boxes=None, input_boxes_mask=None, input_boxes_label=None, input_points=None,
                     input_points_mask=None)


def ground(model: torch.nn.Module, backbone_out: dict[str, Any], prompt: str, threshold: float,
           find_stage: Any, device: Any = "cpu", keep_logits: bool = False) -> tuple[Grounding, float, float]:
    """Text features for ``prompt`` (whatever text module is installed), then SAM3's grounding heads."""
    t0 = time.perf_counter()
    text = model.backbone.forward_text([prompt], device=device)
    t1 = time.perf_counter()
    out = model.forward_grounding(backbone_out={**backbone_out, **text}, find_input=find_stage,
                                  geometric_prompt=model._get_dummy_prompt(), find_target=None)
    t2 = time.perf_counter()
    scores = (out["pred_logits"].sigmoid() * out["presence_logit_dec"].sigmoid().unsqueeze(1)).squeeze(-1)[0]
    from sam3.model.box_ops import box_cxcywh_to_xyxy

    boxes = box_cxcywh_to_xyxy(out["pred_boxes"][0])
    logits = out["pred_masks"][0]
    grounding = Grounding(scores.float().cpu().numpy(), boxes.float().cpu().numpy(), (logits > 0).cpu().numpy(),
                          threshold, logits if keep_logits else None)
    return grounding, t1 - t0, t2 - t1


def transform(resolution: int) -> Callable[[np.ndarray], torch.Tensor]:
    """SAM3's image preprocessing (as ``Sam3Processor``): resize to a square, scale to [-1, 1]."""
    def apply(array: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(array).permute(2, 0, 1).float().div(255.0)[None]
        x = torch.nn.functional.interpolate(x, size=(resolution, resolution), mode="bilinear", antialias=True,
                                            align_corners=False)
        return (x - 0.5) / 0.5
    return apply


def run_segmentation(model: torch.nn.Module, images: Sequence[ImageItem], candidates: dict[str, Any],
                     resolution: int = RESOLUTION, threshold: float = 0.5,
                     progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Ground every (image, prompt) with SAM3's own text encoder and with each candidate's features; compare.

    ``candidates``: name -> a text source (:func:`edgeseg.integrations.as_text_source`: a runner, an edgeseg
    encoder, or a function ``prompts -> (memory [B, L, 256], mask [B, L])``), encoded afresh per prompt
    (no cache: the text time is measured).
    """
    from edgeseg.integrations import as_text_source, meta_sam3

    find_stage = _find_stage()
    prep = transform(resolution)
    sources = {key: as_text_source(src) for key, src in candidates.items()}
    rows: dict[str, list[dict[str, Any]]] = {key: [] for key in candidates}
    timing: dict[str, list[float]] = {"image_encoder_s": [], "teacher_text_s": [], "teacher_grounding_s": []}
    text_s: dict[str, list[float]] = {key: [] for key in candidates}
    decoder_s: dict[str, list[float]] = {key: [] for key in candidates}
    teacher_rows = []
    with CpuShim(), torch.inference_mode():
        for item in images:
            t0 = time.perf_counter()
            backbone_out = model.backbone.forward_image(prep(item.array))
            timing["image_encoder_s"].append(time.perf_counter() - t0)
            if progress:
                progress(f"{item.name}: image encoder {timing['image_encoder_s'][-1]:.1f} s")
            for prompt in item.prompts:
                ref, txt, dec = ground(model, backbone_out, prompt, threshold, find_stage)  # SAM3's own encoder
                timing["teacher_text_s"].append(txt)
                timing["teacher_grounding_s"].append(dec)
                teacher_rows.append({"image": item.name, "prompt": prompt, "detections": int(ref.kept.sum()),
                                     "top1_score": float(ref.scores.max())})
                for key, source in sources.items():
                    with meta_sam3.text_encoder(model, source, cache=False):
                        got, txt, dec = ground(model, backbone_out, prompt, threshold, find_stage)
                    text_s[key].append(txt)
                    decoder_s[key].append(dec)
                    rows[key].append({"image": item.name, "prompt": prompt, **compare_groundings(ref, got)})
                if progress:
                    progress(f"{item.name}: {prompt!r}")
    return {
        "images": [{"name": i.name, "source": i.source, "shape": list(i.array.shape), "prompts": i.prompts}
                   for i in images],
        "resolution": resolution, "threshold": threshold,
        "teacher": teacher_rows,
        "per_prompt": rows,
        "summary": {key: summarize(r) for key, r in rows.items()},
        "timing": _timing(timing, text_s, decoder_s),
    }


def _mean(values: Sequence[float]) -> float | None:
    return float(np.mean(values)) if len(values) else None


def _timing(timing: dict[str, list[float]], text_s: dict[str, list[float]],
            decoder_s: dict[str, list[float]]) -> dict[str, Any]:
    return {
        "image_encoder_s_per_image": _mean(timing["image_encoder_s"]),
        "image_encoder_s": timing["image_encoder_s"],
        "teacher_text_s_per_prompt": _mean(timing["teacher_text_s"]),
        "teacher_grounding_s_per_prompt": _mean(timing["teacher_grounding_s"]),
        "candidate_text_s_per_prompt": {k: _mean(v) for k, v in text_s.items() if v},
        "candidate_grounding_s_per_prompt": {k: _mean(v) for k, v in decoder_s.items() if v},
        "how": "time.perf_counter around SAM3's forward_image (image encoder + neck), forward_text (text "
               "encoder; candidates: tokenize + encode + adapter) and forward_grounding (fusion encoder, "
               "decoder, scoring, mask head), one prompt per call",
    }


def component_params(model: torch.nn.Module) -> dict[str, Any]:
    """Parameters and FP32 bytes of the image encoder, the text encoder and the rest of SAM3."""
    def count(module: torch.nn.Module) -> int:
        return sum(p.numel() for p in module.parameters())

    total = count(model)
    vision = count(model.backbone.vision_backbone)
    text = count(model.backbone.language_backbone)
    parts = {"image_encoder": vision, "text_encoder": text, "rest": total - vision - text}
    return {"params": {**parts, "total": total}, "bytes_fp32": {k: v * 4 for k, v in parts.items()},
            "share": {k: v / total for k, v in parts.items()}}


def embeds_unused(model: torch.nn.Module, image: np.ndarray, prompt: str, resolution: int) -> bool:
    """True when SAM3's own features with zeroed ``embeds`` (what the adapter returns) ground exactly as
    SAM3's own text encoder does."""
    from edgeseg.integrations import meta_sam3

    find_stage = _find_stage()
    with CpuShim(), torch.inference_mode():
        backbone_out = model.backbone.forward_image(transform(resolution)(image))
        a, _, _ = ground(model, backbone_out, prompt, 0.5, find_stage)
        with meta_sam3.text_encoder(model, meta_sam3.own_text_source(model), cache=False):
            b, _, _ = ground(model, backbone_out, prompt, 0.5, find_stage)
    return bool(np.array_equal(a.scores, b.scores) and np.array_equal(a.masks, b.masks))


__all__ = ["RESOLUTION", "TINY_RESOLUTION", "Grounding", "ImageItem", "box_iou", "build_image_model",
           "compare_groundings", "default_images", "ground", "mask_iou", "read_prompt_map", "run_segmentation",
           "summarize", "transform", "user_images"]
