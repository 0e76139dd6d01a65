"""edgeseg bench --video: tracking agreement measures by hand, and the phase on a 3-frame clip through Meta's
SAM3 video model (tiny, random weights)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from conftest import import_sam3

from edgeseg.bench.video import FrameTracks, compare_tracks, match_objects, summarize_video
from edgeseg.errors import EdgesegError


def box_mask(x0: int, x1: int, shape=(8, 8)) -> np.ndarray:
    mask = np.zeros(shape, bool)
    mask[2:6, x0:x1] = True
    return mask


def frame(index: int, ids: list[int], masks: list[np.ndarray]) -> FrameTracks:
    n = len(ids)
    return FrameTracks(index, np.array(ids, np.int64), np.array(masks, bool).reshape(n, 8, 8),
                       np.ones(n, np.float32), np.zeros((n, 4), np.float32))


def test_tracking_agreement_by_hand():
    left, right, wide = box_mask(0, 3), box_mask(5, 8), box_mask(0, 4)
    ref = [frame(0, [1, 2], [left, right]), frame(1, [1, 2], [left, right]), frame(2, [1], [left])]
    # the candidate names the objects 7 and 9, swaps them on frame 1 (an id switch), and widens one mask
    got = [frame(0, [7, 9], [left, right]), frame(1, [9, 7], [left, right]), frame(2, [7], [wide])]
    result = compare_tracks(ref, got)
    assert [f["matched"] for f in result["frames"]] == [2, 2, 1]
    assert result["id_switches"] == 2  # both objects matched other ids than on frame 0
    assert result["id_agreement"] == pytest.approx(3 / 5)  # frames 0 (2 objects) and 2 (1) agree; 5 object-frames
    union_iou = np.logical_and(left, wide).sum() / np.logical_or(left, wide).sum()  # 12 / 16
    assert result["frames"][2]["mask_iou"] == pytest.approx(union_iou)
    assert result["mean_mask_iou"] == pytest.approx((1 + 1 + 0.75) / 3)
    assert result["count_agreement"] == 1.0 and not result["both_empty"]
    empty = [frame(i, [], []) for i in range(3)]
    nothing = compare_tracks(empty, empty)
    assert nothing["id_agreement"] == 1.0 and nothing["both_empty"] and nothing["mean_mask_iou"] == 1.0
    missing = compare_tracks(ref, empty)
    assert missing["id_agreement"] == 0.0 and missing["count_agreement"] == 0.0
    assert match_objects(ref[0], frame(0, [3], [box_mask(2, 5)])) == []  # IoU 1/3 < 0.5: no match
    assert summarize_video([result, nothing])["mean_id_agreement"] == pytest.approx((0.6 + 1) / 2)
    with pytest.raises(EdgesegError, match="different frames"):
        compare_tracks(ref, got[:2])


@pytest.mark.parity
def test_video_phase_on_a_three_frame_clip(tmp_path_factory):
    import_sam3()
    from skimage.data import astronaut
    from test_export import tiny_teacher

    from edgeseg.bench.video import video_phase
    from edgeseg.integrations.meta_build import build_video_model
    from edgeseg.media import write_animation

    clip = tmp_path_factory.mktemp("clip") / "clip.mp4"
    base = astronaut()[::4, ::4]
    write_animation(clip, [np.ascontiguousarray(np.roll(base, 6 * i, axis=1)) for i in range(3)], fps=2)
    teacher = tiny_teacher()
    model = build_video_model(tiny=True)
    model.detector.backbone.language_backbone.load_state_dict(teacher.state_dict(), strict=True)
    opts = SimpleNamespace(video=clip, video_frames=3, prompts=None, video_model=model, sam3_checkpoint=None)
    result = video_phase(opts, teacher, ["sam3-fp32"], {}, {})  # the baseline teacher through the adapter
    assert result["frames"] == 3 and result["prompts"] == ["a person"]
    for key in ("sam3-fp32",):
        row = result["per_prompt"][key][0]
        assert [f["frame"] for f in row["frames"]] == [0, 1, 2]
        assert result["summary"][key]["prompts"] == 1
    # random weights: nothing reaches SAM3's detection threshold, in any run (so they agree)
    assert result["reference"][0]["objects_per_frame"] == [0, 0, 0]
    assert result["summary"]["sam3-fp32"]["mean_id_agreement"] == 1.0
    from edgeseg.bench.report import _video

    section = "\n".join(_video({"video": result}))  # report.md's section
    assert f"{clip}: 3 frames of {'x'.join(map(str, base.shape))}" in section and "'a person'" in section
    summary_row = next(line for line in section.splitlines() if line.startswith("| sam3-fp32 | 1 |"))
    assert [c.strip() for c in summary_row.strip("|").split("|")][2:7] == ["1.000", "1.00", "1.000", "0", "1"]


def test_bench_video_that_cannot_be_decoded_is_one_line(tmp_path):
    from conftest import run_cli

    (tmp_path / "clip.mp4").write_bytes(b"not a video")
    rc, err = run_cli(["bench", "mobileclip-s0", "--skip-segmentation", "--video", str(tmp_path / "clip.mp4"),
                       "--out", str(tmp_path / "out")])
    lines = [line for line in err.splitlines() if line.strip()]
    assert rc == 2 and len(lines) == 1 and "not a video that can be decoded" in lines[0]
    assert not (tmp_path / "out").exists()
