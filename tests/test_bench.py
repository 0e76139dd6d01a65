"""edgeseg bench: a tiny benchmark end to end, the results schema, ratios, the SAM3 substitution, bad inputs."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import import_sam3
from test_encoders_mobileclip import S0_BLOCKS, tiny_student
from test_export import tiny_exported_bundle, tiny_teacher

from edgeseg.cli import main
from edgeseg.tokenizer import get_tokenizer

ROOT = Path(__file__).resolve().parent.parent


def run_cli(args: list[str]) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = main(args)
    return rc, err.getvalue()


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """One tiny bench: tiny teacher (baseline), a tiny student bundle, a tiny torch student, one image, one prompt."""
    import_sam3()
    from edgeseg.bench import BenchOptions, run_bench
    from edgeseg.bench.segmentation import TINY_RESOLUTION, build_image_model

    teacher = tiny_teacher()
    student = tiny_student(S0_BLOCKS, seed=3)
    _, bundle, _ = tiny_exported_bundle(tmp_path_factory)
    root = tmp_path_factory.mktemp("bench")
    prompts = root / "prompts.tsv"
    prompts.write_text("astronaut\ta woman\n", encoding="utf-8")
    image_model = build_image_model(text_state=teacher.state_dict(), tiny=True)
    opts = BenchOptions(candidates=[str(bundle), "tiny-student"], out=root / "out", batches=(1, 2), threads=2,
                        prompts=prompts, rounds=2, warmup=1, eval_prompts=24, rss_prompts=8, max_images=1,
                        command="test", teacher=teacher, encoders={"tiny-student": student},
                        image_model=image_model, resolution=TINY_RESOLUTION)
    results = run_bench(opts)
    return results, opts, teacher, student, bundle


def test_outputs_and_schema(tiny_run):
    results, opts, _, _, bundle = tiny_run
    out = Path(opts.out)
    on_disk = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert on_disk["schema"] == "edgeseg.bench/1"
    for key in ("created", "command", "weights", "random_weights", "baseline", "environment", "candidates",
                "checkpoints", "latency", "memory", "accuracy", "segmentation", "runtime_s", "plots", "phase_wall_s"):
        assert key in on_disk, key
    env = on_disk["environment"]
    assert set(env["versions"]) >= {"torch", "onnxruntime", "tensorrt", "coremltools", "sam3"}
    assert {"commit", "tracked_changes"} <= set(env["git"]) and env["threads"] == 2 and env["device"]
    assert on_disk["random_weights"] is True and "RANDOM" in on_disk["weights"]
    assert list(on_disk["candidates"]) == ["sam3-fp32", "bundle", "tiny-student-torch"]
    assert on_disk["checkpoints"]["sam3-fp32"] == "random"
    assert set(on_disk["phase_wall_s"]) == {"load_s", "latency_s", "memory_s", "accuracy_s", "segmentation_s"}
    report = (out / "report.md").read_text(encoding="utf-8")
    assert "RANDOM/SYNTHETIC WEIGHTS" in report and "## Segmentation" in report
    for name in on_disk["plots"]:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p.name for p in out.iterdir() if ".tmp" in p.name]
    assert on_disk["latency"]["execution_providers"]["bundle"] == "CPUExecutionProvider"


def test_latency_ratios_come_from_the_measured_p50s(tiny_run):
    results = tiny_run[0]
    lat = results["latency"]
    assert set(lat["batches"]) == {"1", "2"}
    for rows in lat["batches"].values():
        base = rows["sam3-fp32"]["p50_ms"]
        for row in rows.values():
            assert row["samples"] == 2 * row["calls_per_round"]
            assert row["p50_ms"] <= row["p95_ms"] <= row["p99_ms"] <= row["max_ms"]
            assert row["speedup_vs_baseline"] == pytest.approx(base / row["p50_ms"], rel=1e-12)
            assert row["prompts_per_s"] == pytest.approx(row["batch"] / (row["p50_ms"] / 1e3))
    assert lat["tokenizer"]["context_16"]["cold"]["samples"] > 0


def test_memory_figures_and_ratios(tiny_run):
    results, _, teacher, student, bundle = tiny_run
    static = results["memory"]["static"]
    expected = sum(t.numel() * t.element_size() for t in teacher.state_dict().values())  # no tied tensors here
    assert static["sam3-fp32"]["weights_bytes"] == expected
    assert static["tiny-student-torch"]["weights_bytes"] == sum(
        t.numel() * t.element_size() for t in student.state_dict().values())
    files = sum(p.stat().st_size for p in Path(bundle).rglob("*") if p.is_file())
    assert static["bundle"]["bundle_bytes"] == files
    for row in static.values():
        assert row["weights_ratio_vs_baseline"] == pytest.approx(expected / row["weights_bytes"])
    assert static["bundle"]["bundle_ratio_vs_baseline"] == pytest.approx(expected / files)
    dynamic = results["memory"]["dynamic"]
    assert dynamic["bundle"]["returncode"] == 0 and dynamic["bundle"]["peak_rss_kb"] > 10_000
    assert dynamic["bundle"]["child_torch_imported"] is False
    # Injected in-process models cannot be re-created in a fresh process: no RSS, so no RSS ratio.
    assert set(results["memory"]["not_measured"]) == {"sam3-fp32", "tiny-student-torch"}
    assert dynamic["bundle"]["peak_rss_ratio_vs_baseline"] is None


def test_embedding_accuracy_against_an_independent_computation(tiny_run):
    from edgeseg.bench import _spaced
    from edgeseg.corpus import load_split

    results, _, teacher, student, _ = tiny_run
    rows = results["accuracy"]["rows"]
    assert rows["sam3-fp32"]["mean_token_cosine"] == pytest.approx(1.0)
    assert rows["sam3-fp32"]["retrieval_top1"] == 1.0
    prompts = _spaced(load_split("eval"), 24)
    with torch.no_grad():
        t_mem, t_mask = teacher(torch.from_numpy(get_tokenizer()(prompts, 32).ids))
        s_mem, s_mask = student(torch.from_numpy(get_tokenizer()(prompts, 16).ids))
    t16, s = t_mem[:, :16].double(), s_mem.double()
    valid = (~t_mask[:, :16] & ~s_mask).double()
    cos = torch.nn.functional.cosine_similarity(t16, s, dim=-1)
    per_prompt = (cos * valid).sum(1) / valid.sum(1)
    row = rows["tiny-student-torch"]
    assert row["prompts"] == 24 and row["compared_positions"] == 16
    assert row["mean_token_cosine"] == pytest.approx(per_prompt.mean().item(), abs=1e-6)
    assert row["worst_token_cosine"] == pytest.approx(per_prompt.min().item(), abs=1e-6)
    # retrieval with SAM3's pooling: each encoder's masked mean over its own valid tokens
    tp = (t_mem.double() * (~t_mask)[..., None]).sum(1) / (~t_mask).sum(1, keepdim=True)
    sp = (s.double() * (~s_mask)[..., None]).sum(1) / (~s_mask).sum(1, keepdim=True)
    sims = torch.nn.functional.cosine_similarity(sp[:, None], tp[None], dim=-1)
    top1 = (sims.argmax(1) == torch.arange(24)).double().mean().item()
    assert row["retrieval_top1"] == pytest.approx(top1)


def test_segmentation_substitution_and_summary(tiny_run):
    results = tiny_run[0]
    seg = results["segmentation"]
    assert [i["name"] for i in seg["images"]] == ["astronaut"] and seg["images"][0]["prompts"] == ["a woman"]
    # The baseline's own features injected through the adapter must reproduce SAM3's text path exactly:
    # Meta's VETextEncoder (oracle) and edgeseg's teacher hold the same weights.
    same = seg["per_prompt"]["sam3-fp32"][0]
    assert same["mask_iou"] == 1.0 and same["top1_mask_iou"] == 1.0 and same["count_agrees"]
    assert abs(same["top1_score_diff"]) < 1e-4
    for key, rows in seg["per_prompt"].items():
        summary = seg["summary"][key]
        ious = [r["mask_iou"] for r in rows]
        assert summary["mean_mask_iou"] == pytest.approx(np.mean(ious))
        assert summary["fraction_mask_iou_ge_0.95"] == pytest.approx(np.mean([i >= 0.95 for i in ious]))
        assert summary["count_agreement"] == np.mean([r["teacher_detections"] == r["candidate_detections"]
                                                      for r in rows])
    e2e = seg["end_to_end"]
    params = e2e["params"]["params"]
    assert params["image_encoder"] + params["text_encoder"] + params["rest"] == params["total"]
    for row in e2e["per_prompt_s"].values():
        assert row["text_share"] == pytest.approx(row["text_encoder_s"] / row["total_s"])


def test_sam3_ignores_the_text_embeds_the_adapter_zeroes(tiny_run):
    from edgeseg.bench.segmentation import TINY_RESOLUTION, default_images, embeds_unused

    opts = tiny_run[1]
    assert embeds_unused(opts.image_model, default_images()[1].array, "a cup of coffee", TINY_RESOLUTION)


def test_mask_and_box_iou_by_hand():
    from edgeseg.bench.segmentation import box_iou, mask_iou

    a = np.zeros((4, 4), bool)
    b = np.zeros((4, 4), bool)
    a[:2, :2] = True  # 4 pixels
    b[:2, :3] = True  # 6 pixels, 4 shared
    assert mask_iou(a, b) == pytest.approx(4 / 6)
    assert mask_iou(np.zeros((2, 2), bool), np.zeros((2, 2), bool)) == 1.0
    iou = box_iou(np.array([[0, 0, 2, 2.0]]), np.array([[1, 1, 3, 3.0], [0, 0, 2, 2.0]]))
    assert iou[0, 0] == pytest.approx(1 / 7) and iou[0, 1] == pytest.approx(1.0)


def test_readme_table_script(tiny_run, tmp_path):
    import subprocess
    import sys

    results, opts, *_ = tiny_run
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- bench-table:start -->\nold\n<!-- bench-table:end -->\nrest\n", encoding="utf-8")
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks/readme_table.py"), str(Path(opts.out) /
                           "results.json"), "--readme", str(readme)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    text = readme.read_text(encoding="utf-8")
    assert "old" not in text and text.startswith("intro\n") and text.endswith("rest\n")
    assert "`tiny-student-torch`" in text and "random/synthetic weights" in text


# ---- bad input through the CLI: one stderr line, exit 2 -------------------------------------------
def _one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("edgeseg: error:")
    return lines[0]


def test_missing_images_folder(tmp_path):
    prompts = tmp_path / "p.tsv"
    prompts.write_text("x.png\ta dog\n", encoding="utf-8")
    rc, err = run_cli(["bench", "mobileclip-s0", "--images", str(tmp_path / "nope"), "--prompts", str(prompts),
                       "--out", str(tmp_path / "out")])
    assert rc == 2 and "does not exist" in _one_error_line(err)
    assert not (tmp_path / "out").exists()


def test_a_file_that_is_not_an_image(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    (images / "photo.jpg").write_text("not a picture", encoding="utf-8")
    prompts = tmp_path / "p.tsv"
    prompts.write_text("photo.jpg\ta dog\n", encoding="utf-8")
    rc, err = run_cli(["bench", "mobileclip-s0", "--images", str(images), "--prompts", str(prompts),
                       "--out", str(tmp_path / "out")])
    assert rc == 2 and "not an image" in _one_error_line(err)


def test_a_bundle_without_manifest(tmp_path):
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "model.onnx").write_bytes(b"x")
    rc, err = run_cli(["bench", str(bundle), "--skip-segmentation", "--out", str(tmp_path / "out")])
    assert rc == 2 and "manifest.json" in _one_error_line(err)


@pytest.mark.parametrize("args, needle", [
    (["--baseline", "sam2-fp32"], "unknown baseline"),
    (["--batch", "1,x"], "--batch"),
])
def test_unknown_baseline_and_bad_batches(tmp_path, args, needle):
    rc, err = run_cli(["bench", "mobileclip-s0", "--skip-segmentation", *args, "--out", str(tmp_path / "out")])
    assert rc == 2 and needle in _one_error_line(err)


def test_unknown_candidate(tmp_path):
    rc, err = run_cli(["bench", "mobileclip-s9", "--skip-segmentation", "--out", str(tmp_path / "out")])
    assert rc == 2 and "neither a bundle directory nor an encoder name" in _one_error_line(err)


def test_gemm_estimate_counts_the_encoders_macs(tmp_path_factory, monkeypatch):
    """benchmarks/gemm_ceiling.py: MACs from the ONNX graph equal the torch model's weight products, and the
    estimated ratio is computed from the rates it measured (rates replaced by known numbers here)."""
    import importlib.util

    from edgeseg.export import inference_copy

    spec = importlib.util.spec_from_file_location("gemm_ceiling", ROOT / "benchmarks/gemm_ceiling.py")
    gemm = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gemm)
    student, bundle, manifest = tiny_exported_bundle(tmp_path_factory)
    expected = 0
    for module in inference_copy(student).modules():
        if isinstance(module, torch.nn.Linear):
            expected += module.in_features * module.out_features
        elif isinstance(module, torch.nn.Conv2d) and module.groups == 1 and module.kernel_size == (1, 1):
            expected += module.in_channels * module.out_channels
    macs = gemm.weight_macs(bundle)
    assert macs["context_length"] == manifest["context_length"] == 16
    assert macs["macs_per_call"] == expected * 16 > 0

    rates = {"ort-fp32": 10.0, "ort-int8-static": 20.0, "ort-int8-dynamic": 40.0, "torch-fp32": 5.0}
    monkeypatch.setattr(gemm, "gemm_rates", lambda m, k, n, threads: {b: {"gmac_per_s": r, "median_us": 1.0}
                                                                      for b, r in rates.items()})
    result = gemm.estimate(bundle, bundle, 2)  # the same bundle as teacher and student: ratio = rate ratio
    assert result["mac_ratio"] == 1.0
    assert result["estimates"]["ort-int8-dynamic vs ort-fp32"]["ratio"] == pytest.approx(4.0)
    assert result["estimates"]["ort-int8-static vs torch-fp32"]["ratio"] == pytest.approx(4.0)
    assert result["estimates"]["ort-fp32 vs torch-fp32"]["ratio"] == pytest.approx(2.0)
    assert "| S0 | 16 x" in "\n".join(gemm.render(result))


def test_progress_goes_to_logs_as_lines(capsys):
    """Without a terminal (a log file, CI) progress is plain lines on stderr, not a tqdm bar."""
    from edgeseg.bench import _bar

    with _bar(3, "segmentation (1 images)", "step") as bar:
        bar.every_s = 0.0  # a line per step
        for prompt in ("a dog", "a cat", "a car"):
            bar.set_postfix_str(prompt)
            bar.update(1)
    err = capsys.readouterr().err.splitlines()
    assert [line.split(" after ")[0] for line in err] == [f"edgeseg: segmentation (1 images): {i}/3" for i in (1, 2, 3)]
    assert err[-1].endswith("(a car)")
    with _bar(4, "latency rounds") as bar:  # default: at most every 30 s, and the last step
        for _ in range(4):
            bar.update(1)
    assert capsys.readouterr().err.count("\n") == 1
