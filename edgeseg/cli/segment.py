"""``edgeseg segment``: masks, overlays and results.json from an edgeseg text encoder inside SAM3."""

from __future__ import annotations

from pathlib import Path

import click

from edgeseg.cli.common import CHECKPOINT_HELP, ENCODER_HELP, _note, cli, command_line


@cli.command(context_settings={"show_default": True})
@click.option("--bundle", type=click.Path(path_type=Path), default=None, help="Bundle folder (any backend).")
@click.option("--encoder", default=None, help=ENCODER_HELP + " (torch; instead of --bundle)")
@click.option("--checkpoint", type=click.Path(path_type=Path), default=None, help=CHECKPOINT_HELP)
@click.option("--sam3-checkpoint", type=click.Path(path_type=Path), default=None,
              help="Meta's sam3.pt, or a transformers SAM3 folder (Sam3Model / Sam3LiteTextModel, images only). "
                   "Default: Meta's SAM3 with RANDOM weights (plumbing only: nothing meaningful is detected).")
@click.option("--image", "images", multiple=True, type=click.Path(path_type=Path),
              help="An image to segment (repeatable). Default: scikit-image's 'chelsea' photo.")
@click.option("--video", type=click.Path(path_type=Path), default=None,
              help="A clip (MP4, ...) or a folder of frames, tracked with Meta's SAM3 video model.")
@click.option("--prompt", "prompts", multiple=True, help="What to segment (repeatable). Default: 'a cat'.")
@click.option("--threshold", type=float, default=0.5, help="Detection score threshold (SAM3's own is 0.5).")
@click.option("--top-k", type=click.IntRange(min=0), default=0,
              help="Also draw the N best-scoring queries whatever their score, labelled as below threshold "
                   "(images; shows the plumbing with random weights).")
@click.option("--device", default="cpu", help="torch device for SAM3: cpu or cuda.")
@click.option("--compare-baseline", is_flag=True,
              help="Also run SAM3's own text encoder; report mask IoU, detection-count and box agreement "
                   "(video: per-frame mask IoU and tracking-id agreement), as edgeseg bench does.")
@click.option("--max-frames", type=click.IntRange(min=1), default=16, help="Use the first N frames of --video.")
@click.option("--out", required=True, type=click.Path(path_type=Path),
              help="Folder for masks, overlays, results.json (a new folder, or an earlier segment output).")
def segment(bundle: Path | None, encoder: str | None, checkpoint: Path | None, sam3_checkpoint: Path | None,
            images: tuple[Path, ...], video: Path | None, prompts: tuple[str, ...], threshold: float, top_k: int,
            device: str, compare_baseline: bool, max_frames: int, out: Path) -> None:
    """Segment images or a clip with SAM3, using an edgeseg encoder as SAM3's text encoder.

    Writes OUT/<image>/<prompt>/overlay.png and mask_NN.png, OUT/video/<prompt>/frame_NNNN.png, masks/ and
    overview.gif, and OUT/results.json (boxes, scores, ids, timing).

    \b
    edgeseg segment --bundle s0-int8 --out seg                       # the shipped photo and prompt
    edgeseg segment --bundle s0-int8 --image dog.jpg --prompt "a dog" --compare-baseline --out seg
    edgeseg segment --bundle s0-int8 --video clip.mp4 --prompt "a person" --sam3-checkpoint sam3.pt --out seg
    """
    from edgeseg.bench import _bar
    from edgeseg.segment import SegmentOptions, prepare, run_segment

    opts = SegmentOptions(out=out, bundle=bundle, encoder=encoder, checkpoint=checkpoint,
                          sam3_checkpoint=sam3_checkpoint, images=list(images), video=video, prompts=list(prompts),
                          threshold=threshold, top_k=top_k, device=device, compare_baseline=compare_baseline,
                          max_frames=max_frames, command=command_line(click.get_current_context()))
    prep = prepare(opts)
    if sam3_checkpoint is None:
        _note("no --sam3-checkpoint: SAM3's image/video model has RANDOM weights; masks are not meaningful "
              "(--top-k N draws the best queries anyway)")
    total = len(prep.images) * len(prep.prompts) + len(prep.frames) * len(prep.prompts)
    with _bar(total, "segment (SAM3 image encoder ~1 min per picture on CPU)", "step") as bar:
        results = run_segment(opts, prep, progress=lambda message, n: (bar.set_postfix_str(message[:40]),
                                                                         bar.update(n)))
    _note(f"wrote {out}/results.json, masks and overlays in {results['runtime_s']:.1f} s")
    overlays = [p["overlay"] for item in results.get("images", {}).get("items", []) for p in item["prompts"]]
    overlays += [p["overview"] for p in results.get("video", {}).get("prompts", []) if "overview" in p]
    for path in overlays[:4]:
        _note(f"overlay: {Path(out) / path}")
    if len(overlays) > 4:
        _note(f"... and {len(overlays) - 4} more overlays in {out}")


__all__ = ["segment"]
