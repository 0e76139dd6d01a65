"""edgeseg segment: masks, results.json and overlays for an image and a 3-frame clip (tiny random SAM3 models),
the shipped default through the CLI, and bad input (one stderr line, exit 2, no output folder)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import import_sam3, run_cli
from test_export import tiny_exported_bundle


def _png(path: Path) -> np.ndarray:
    from PIL import Image

    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path
    with Image.open(path) as img:
        return np.asarray(img)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    from PIL import Image
    from skimage.data import astronaut

    root = tmp_path_factory.mktemp("segment-inputs")
    base = astronaut()[::4, ::4]  # 128 x 128
    Image.fromarray(base).save(root / "astronaut.png")
    (root / "frames").mkdir()
    for i in range(3):
        Image.fromarray(np.ascontiguousarray(np.roll(base, 6 * i, axis=1))).save(root / "frames" / f"{i:03d}.png")
    _, bundle, _ = tiny_exported_bundle(tmp_path_factory)
    return root, bundle


@pytest.fixture(scope="module")
def tiny_meta():
    import_sam3()
    from edgeseg.integrations.meta_build import build_image_model, build_video_model

    return build_image_model(tiny=True), build_video_model(tiny=True)


@pytest.mark.parity
def test_segment_an_image_and_a_three_frame_clip(inputs, tiny_meta, tmp_path):
    from edgeseg.integrations.meta_build import TINY_RESOLUTION
    from edgeseg.segment import SegmentOptions, run_segment

    root, bundle = inputs
    image_model, video_model = tiny_meta
    out = tmp_path / "seg"
    opts = SegmentOptions(out=out, bundle=bundle, images=[root / "astronaut.png"], video=root / "frames",
                          prompts=["a woman"], top_k=2, compare_baseline=True, image_model=image_model,
                          video_model=video_model, resolution=TINY_RESOLUTION)
    results = run_segment(opts)
    on_disk = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert on_disk["schema"] == "edgeseg.segment/1" and on_disk["random_sam3"] and "RANDOM" in on_disk["weights"]
    assert on_disk["text_cache"]["encoded"] == {"a woman": 1, "visual": 1}  # once over the image and 3 frames
    item = on_disk["images"]["items"][0]
    assert item["name"] == "astronaut" and [p["prompt"] for p in item["prompts"]] == ["a woman"]
    for entry in item["prompts"]:
        overlay = _png(out / entry["overlay"])
        assert overlay.shape == (128, 128, 3)
        assert (overlay[1, :40] == 0).all() or overlay[1, :40, 2].max() < 40  # the black RANDOM WEIGHTS banner
        assert len(entry["instances"]) == entry["detections"] + sum(
            i["kind"] == "top-k, below threshold" for i in entry["instances"]) >= 2
        for inst in entry["instances"]:
            mask = _png(out / inst["mask"])
            assert mask.shape == (128, 128) and set(np.unique(mask)) <= {0, 255} and (mask > 0).sum() == inst["area"]
        assert set(entry["compare_baseline"]) >= {"mask_iou", "count_agrees", "box_iou", "top1_mask_iou"}
    video = on_disk["video"]
    assert video["frames"] == 3 and len(video["prompts"]) == 1
    for entry in video["prompts"]:
        assert [f["frame"] for f in entry["frames"]] == [0, 1, 2]
        for f in entry["frames"]:
            assert _png(out / f["overlay"]).shape == (128, 128, 3)
        from PIL import Image

        with Image.open(out / entry["overview"]) as gif:
            assert gif.format == "GIF" and gif.n_frames == 3
        assert entry["compare_baseline"]["frames"][0]["frame"] == 0
    assert results["video"]["compare_baseline_summary"]["prompts"] == 1
    assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name]


@pytest.mark.parity
def test_segment_through_transformers(inputs, tmp_path):
    from test_integrations import tiny_hf_config

    from edgeseg.segment import SegmentOptions, run_segment

    root, bundle = inputs
    cls, config = tiny_hf_config()
    torch.manual_seed(0)
    opts = SegmentOptions(out=tmp_path / "seg", bundle=bundle, images=[root / "astronaut.png"], prompts=["a woman"],
                          top_k=1, compare_baseline=True, image_model=cls(config).eval())
    results = run_segment(opts)
    entry = results["images"]["items"][0]["prompts"][0]
    assert results["images"]["engine"] == "transformers" and len(entry["instances"]) >= 1
    assert _png(tmp_path / "seg" / entry["overlay"]).shape == (128, 128, 3)
    assert 0.0 <= entry["compare_baseline"]["top1_mask_iou"] <= 1.0


@pytest.mark.parity
def test_cli_shipped_default(inputs, tiny_meta, tmp_path, monkeypatch):
    """``edgeseg segment --bundle DIR --out DIR`` alone: the shipped photo and prompt (tiny model patched in)."""
    import edgeseg.integrations.meta_build as meta_build

    _, bundle = inputs
    monkeypatch.setattr(meta_build, "build_image_model", lambda checkpoint=None: tiny_meta[0])
    monkeypatch.setattr(meta_build, "RESOLUTION", meta_build.TINY_RESOLUTION)
    rc, err = run_cli(["segment", "--bundle", str(bundle), "--top-k", "1", "--out", str(tmp_path / "seg")])
    assert rc == 0, err
    assert "RANDOM weights" in err
    results = json.loads((tmp_path / "seg" / "results.json").read_text(encoding="utf-8"))
    item = results["images"]["items"][0]
    assert item["source"] == "skimage.data.chelsea()" and item["prompts"][0]["prompt"] == "a cat"
    assert _png(tmp_path / "seg" / item["prompts"][0]["overlay"]).shape == (300, 451, 3)
    assert err.strip().splitlines()[-1] == f"edgeseg: overlay: {tmp_path / 'seg' / 'chelsea' / 'a-cat' / 'overlay.png'}"
    assert results["command"].startswith("edgeseg segment --bundle")


def _one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("edgeseg: error:")
    return lines[0]


@pytest.mark.parametrize("case, needle", [
    ("not-an-image", "not an image"),
    ("bad-video", "not a video that can be decoded"),
    ("empty-prompt", "--prompt is empty"),
    ("unknown-device", "unknown --device"),
    ("not-sam3", "not Meta's sam3.pt"),
    ("not-sam3-folder", "not SAM3"),
])
def test_bad_input_is_one_line_exit_2_and_no_output(inputs, tmp_path, case, needle):
    _, bundle = inputs
    picture = tmp_path / "photo.jpg"
    from PIL import Image

    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(picture)
    args = ["segment", "--bundle", str(bundle), "--prompt", "a dog", "--image", str(picture)]
    if case == "not-an-image":
        (tmp_path / "fake.png").write_text("not a picture", encoding="utf-8")
        args = ["segment", "--bundle", str(bundle), "--prompt", "a dog", "--image", str(tmp_path / "fake.png")]
    elif case == "bad-video":
        (tmp_path / "clip.mp4").write_bytes(b"\x00\x01 not a video")
        args = ["segment", "--bundle", str(bundle), "--prompt", "a dog", "--video", str(tmp_path / "clip.mp4")]
    elif case == "empty-prompt":
        args[4] = "  "
    elif case == "unknown-device":
        args += ["--device", "tpu9"]
    elif case == "not-sam3":
        torch.save({"model": {"weight": torch.zeros(2)}}, tmp_path / "other.pt")
        args += ["--sam3-checkpoint", str(tmp_path / "other.pt")]
    else:
        (tmp_path / "bert").mkdir()
        (tmp_path / "bert" / "config.json").write_text('{"model_type": "bert"}', encoding="utf-8")
        args += ["--sam3-checkpoint", str(tmp_path / "bert")]
    rc, err = run_cli([*args, "--out", str(tmp_path / "seg")])
    assert rc == 2 and needle in _one_error_line(err), err
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith((".seg", "seg"))]
