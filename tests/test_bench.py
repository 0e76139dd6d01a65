"""edgeseg bench: a tiny benchmark end to end, the results schema, both baselines, the timing mechanics on
hand-made clocks, ratios and efficiency on hand-made numbers, psutil memory of a child that allocates a
known amount, bars, the README tables, the SAM3 substitution, bad inputs.

No test here times anything for real: the mechanics (block order, warm-up exclusion, first call after a
switch) run on a fake clock, and the tiny end-to-end run only checks that figures are consistent.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import calibration_prompts, import_sam3, run_cli
from test_encoders_mobileclip import S0_BLOCKS, tiny_student
from test_export import REF_PROMPTS, SOURCE, tiny_exported_bundle, tiny_teacher

from edgeseg.tokenizer import get_tokenizer

ROOT = Path(__file__).resolve().parent.parent


BARS = [{"bar": "bundle size", "value": "memory.static.{key}.bundle_bytes", "over": ["bundle"], "scale": 1e-6,
         "op": "<=", "target": 1000, "format": "{:.2f} MB"},
        {"bar": "(info) impossible", "value": "latency.batches.1.bundle.p50_ms", "op": "<=", "target": 0,
         "informational": True}]


def fake_rates(m: int, k: int, n: int, threads: int, backends=()) -> dict:
    """Hand-made GEMM rates: 1 GMAC/s per 100 rows, times 2 for INT8 kernels (so floors are known numbers)."""
    return {b: {"gmac_per_s": m / 100 * (2 if "int8" in b else 1), "median_us": 1.0} for b in backends}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """One tiny bench: tiny teacher (both baselines), a tiny student bundle, its dynamic INT8 bundle, the tiny
    teacher exported with a dynamic sequence axis, a tiny torch student, one image, one prompt."""
    import_sam3()
    from edgeseg.bench import BenchOptions, run_bench
    from edgeseg.bench.segmentation import TINY_RESOLUTION, build_image_model
    from edgeseg.export import export_bundle
    from edgeseg.quantize import Gate, quantize_bundle

    teacher = tiny_teacher()
    student = tiny_student(S0_BLOCKS, seed=3)
    _, bundle, _ = tiny_exported_bundle(tmp_path_factory)
    root = tmp_path_factory.mktemp("bench")
    int8 = root / "bundle-int8"
    quantize_bundle(bundle, int8, [], calibration_prompts()[::900][:16], mode="dynamic", gate=Gate(0.0, 0.0))
    teacher_dyn = root / "teacher-own"
    export_bundle(teacher, teacher_dyn, REF_PROMPTS, dict(SOURCE), dynamic_length=True)
    prompts = root / "prompts.tsv"
    prompts.write_text("astronaut\ta woman\n", encoding="utf-8")
    image_model = build_image_model(text_state=teacher.state_dict(), tiny=True)
    opts = BenchOptions(candidates=[str(bundle), str(int8), str(teacher_dyn), "tiny-student"], out=root / "out",
                        batches=(1, 2), threads=1, prompts=prompts, rounds=2, warmup=1, block_s=0.01, pause_s=0.0,
                        eval_prompts=24, rss_prompts=8, max_images=1, command="test", teacher=teacher,
                        encoders={"tiny-student": student}, image_model=image_model, resolution=TINY_RESOLUTION,
                        teacher_int8=True, bars=BARS, gemm_measure=fake_rates)
    from edgeseg.bench import SECTIONS, register_section
    from edgeseg.bench.report import RENDERERS, register_renderer

    register_section("extra", lambda run: {"models": len(run.models)})  # the hook optional sections use
    register_renderer("extra", lambda section: ["## Extra", "", f"{section['models']} models", ""])
    try:
        results = run_bench(opts)
    finally:
        SECTIONS.pop("extra")
        RENDERERS.pop("extra")
    return results, opts, teacher, student, bundle


KEYS = ["sam3-fp32", "sam3-fp32-dyn", "sam3-int8-torch", "sam3-int8-torch-dyn", "bundle", "bundle-int8", "teacher-own",
        "tiny-student-torch"]


def test_outputs_and_schema(tiny_run):
    results, opts, _, _, bundle = tiny_run
    out = Path(opts.out)
    on_disk = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert on_disk["schema"] == "edgeseg.bench/2"
    for key in ("created", "command", "weights", "random_weights", "baseline", "baselines", "environment",
                "candidates", "checkpoints", "latency", "efficiency", "memory", "accuracy", "fidelity", "segmentation",
                "bars", "dirty", "runtime_s", "plots", "phase_wall_s"):
        assert key in on_disk, key
    env = on_disk["environment"]
    assert set(env["versions"]) >= {"torch", "onnxruntime", "tensorrt", "coremltools", "sam3"}
    assert {"commit", "tracked_changes", "dirty"} <= set(env["git"]) and env["threads"] == 1 and env["device"]
    assert on_disk["dirty"] == env["git"]["dirty"]
    assert on_disk["random_weights"] is True and "RANDOM" in on_disk["weights"]
    assert list(on_disk["candidates"]) == KEYS
    assert on_disk["baselines"] == KEYS[:4]
    assert on_disk["checkpoints"]["sam3-fp32"] == "random"
    assert set(on_disk["phase_wall_s"]) == {"load_s", "latency_s", "efficiency_s", "memory_s", "accuracy_s",
                                            "fidelity_s", "segmentation_s", "video_s", "extra_s"}
    assert on_disk["extra"] == {"models": len(KEYS)}
    report = (out / "report.md").read_text(encoding="utf-8")
    assert "RANDOM/SYNTHETIC WEIGHTS" in report and "## Segmentation" in report and "## Bars" in report
    assert f"## Extra\n\n{len(KEYS)} models" in report
    for name in on_disk["plots"]:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p.name for p in out.iterdir() if ".tmp" in p.name]
    assert on_disk["latency"]["execution_providers"]["bundle"] == "CPUExecutionProvider"
    assert on_disk["candidates"]["teacher-own"]["sequence"] == "own length"
    assert on_disk["candidates"]["sam3-fp32-dyn"]["sequence"] == "own length"


def test_latency_rows_and_both_ratios(tiny_run):
    results = tiny_run[0]
    lat = results["latency"]
    assert set(lat["batches"]) == {"1", "2"} and len(lat["order"]) == 2
    prompt_tokens = len(get_tokenizer()(["a player in white"], 32).ids[0].nonzero()[0])
    for rows in lat["batches"].values():
        fixed, own = rows["sam3-fp32"]["p50_ms"], rows["sam3-fp32-dyn"]["p50_ms"]
        for row in rows.values():
            assert row["samples"] == 2 * row["calls_per_block"]
            assert row["p50_ms"] <= row["p95_ms"] <= row["p99_ms"] <= row["max_ms"]
            assert row["speedup_vs_fixed"] == pytest.approx(fixed / row["p50_ms"], rel=1e-12)
            assert row["speedup_vs_dynamic"] == pytest.approx(own / row["p50_ms"], rel=1e-12)
            assert row["first_call_after_switch"]["samples"] == 2
            assert row["prompts_per_s"] == pytest.approx(row["batch"] / (row["p50_ms"] / 1e3))
    one = lat["batches"]["1"]
    assert one["sam3-fp32"]["tokens"] == 32 and one["sam3-fp32-dyn"]["tokens"] == prompt_tokens
    assert one["teacher-own"]["tokens"] == prompt_tokens and one["bundle"]["tokens"] == 16
    assert lat["tokenizer"]["context_16"]["cold"]["samples"] > 0


def test_efficiency_uses_the_macs_of_what_ran(tiny_run):
    from edgeseg.bench import gemm

    results, _, teacher, _, _ = tiny_run
    eff, lat = results["efficiency"]["batches"], results["latency"]["batches"]
    per_token = gemm.count(gemm.torch_matrices(teacher))["macs_per_token"]
    for batch, rows in eff.items():
        for key in ("sam3-fp32", "sam3-fp32-dyn", "sam3-int8-torch", "teacher-own"):
            row = rows[key]
            assert row["macs_per_call"] == per_token * int(batch) * lat[batch][key]["tokens"]
            rate = row["shape"]["m"] / 100 * (2 if "int8" in row["kernel"] else 1)
            assert row["gmac_per_s"] == rate
            assert row["floor_ms"] == pytest.approx(row["macs_per_call"] / (rate * 1e9) * 1e3)
            assert row["efficiency"] == pytest.approx(row["floor_ms"] / lat[batch][key]["p50_ms"])
    assert eff["1"]["bundle-int8"]["kernel"] == "ort-int8-dynamic" and eff["1"]["bundle"]["kernel"] == "ort-fp32"
    assert eff["1"]["sam3-int8-torch"]["kernel"] == "torch-int8"


def test_dynamic_length_baselines_are_exact_on_valid_positions(tiny_run):
    rows = tiny_run[0]["accuracy"]["rows"]
    for key in ("sam3-fp32-dyn", "teacher-own"):
        assert rows[key]["mean_token_cosine"] > 0.99999 and rows[key]["worst_token_cosine"] > 0.9999, key
        assert rows[key]["retrieval_top1"] == 1.0 and rows[key]["mask_mismatch_prompts"] == 0
    assert rows["sam3-int8-torch"]["mean_token_cosine"] > 0.9  # torch's INT8: close, not exact


def test_memory_figures_and_ratios(tiny_run):
    results, _, teacher, student, bundle = tiny_run
    static = results["memory"]["static"]
    expected = sum(t.numel() * t.element_size() for t in teacher.state_dict().values())  # no tied tensors here
    assert static["sam3-fp32"]["weights_bytes"] == expected
    assert "sam3-fp32-dyn" not in static  # the same weights as sam3-fp32
    assert static["tiny-student-torch"]["weights_bytes"] == sum(
        t.numel() * t.element_size() for t in student.state_dict().values())
    files = sum(p.stat().st_size for p in Path(bundle).rglob("*") if p.is_file())
    assert static["bundle"]["bundle_bytes"] == files
    assert static["bundle"]["bundle_ratio_vs_baseline"] == pytest.approx(expected / files)
    dynamic = results["memory"]["dynamic"]
    assert dynamic["bundle"]["returncode"] == 0 and dynamic["bundle"]["peak_rss_bytes"] > 10_000_000
    assert dynamic["bundle"]["child_torch_imported"] is False
    # Injected in-process models cannot be re-created in a fresh process: no RSS, so no RSS ratio.
    assert set(results["memory"]["not_measured"]) == {k for k in KEYS if k.startswith(("sam3", "tiny"))}
    assert dynamic["bundle"]["peak_rss_ratio_vs_baseline"] is None


def test_embedding_accuracy_against_an_independent_computation(tiny_run):
    from edgeseg.bench.progress import spaced
    from edgeseg.corpus import load_split

    results, _, teacher, student, _ = tiny_run
    rows = results["accuracy"]["rows"]
    assert rows["sam3-fp32"]["mean_token_cosine"] == pytest.approx(1.0)
    assert rows["sam3-fp32"]["retrieval_top1"] == 1.0
    prompts = spaced(load_split("eval"), 24)
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
    tp = (t_mem.double() * (~t_mask)[..., None]).sum(1) / (~t_mask).sum(1, keepdim=True)
    sp = (s.double() * (~s_mask)[..., None]).sum(1) / (~s_mask).sum(1, keepdim=True)
    sims = torch.nn.functional.cosine_similarity(sp[:, None], tp[None], dim=-1)
    top1 = (sims.argmax(1) == torch.arange(24)).double().mean().item()
    assert row["retrieval_top1"] == pytest.approx(top1)


def test_fidelity_pairs_the_int8_bundle_with_its_source(tiny_run):
    import onnxruntime as ort

    from edgeseg.bench.progress import spaced
    from edgeseg.corpus import load_split

    results, _, _, _, bundle = tiny_run
    rows = results["fidelity"]["rows"]
    assert set(rows) == {"bundle-int8"} and rows["bundle-int8"]["vs"] == "bundle"
    prompts = spaced(load_split("eval"), 24)
    ids = get_tokenizer()(prompts, 16).ids
    int8 = Path(results["candidates"]["bundle-int8"]["path"])
    ref, mask = ort.InferenceSession(str(bundle / "model.onnx")).run(None, {"input_ids": ids})
    got, _ = ort.InferenceSession(str(int8 / "model.onnx")).run(None, {"input_ids": ids})
    a, b = got.astype(np.float64), ref.astype(np.float64)
    cos = (a * b).sum(-1) / np.maximum(np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1), 1e-12)
    valid = ~mask
    per_prompt = (cos * valid).sum(1) / valid.sum(1)
    row = rows["bundle-int8"]["recomputed"]
    assert row["prompts"] == 24 and row["resegmented_prompts"] == 0 and row["masks_equal"]
    assert row["mean_cosine"] == pytest.approx(per_prompt.mean(), abs=1e-5)
    assert row["worst_cosine"] == pytest.approx(per_prompt.min(), abs=1e-5)


def test_bars_in_the_results(tiny_run):
    bars = tiny_run[0]["bars"]
    assert [b["passed"] for b in bars] == [True, False] and bars[0]["which"] == "bundle"
    assert bars[1]["informational"]


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




def test_readme_table_script_reproduces_the_tables(tiny_run, tmp_path):
    """The table script puts each renderer's table between its markers, from a given results.json, and
    the figures in the table are the results' own (checked by reading the table back)."""
    results, opts, *_ = tiny_run
    clean = {**results, "dirty": False}
    (tmp_path / "r.json").write_text(json.dumps(clean, default=str), encoding="utf-8")
    config = tmp_path / "tables.json"
    config.write_text(json.dumps({"tables": [
        {"name": "head", "results": "r.json", "render": "headline", "options": {"batch": "2"}},
        {"name": "seg", "results": "r.json", "render": "segmentation"}]}), encoding="utf-8")
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- table:head:start -->\nold\n<!-- table:head:end -->\nmiddle\n"
                      "<!-- table:seg:start -->\n<!-- table:seg:end -->\nrest\n", encoding="utf-8")
    script = [sys.executable, str(ROOT / "benchmarks/readme_table.py"), "--config", str(config), "--root",
              str(tmp_path), "--readme", str(readme)]
    assert subprocess.run(script + ["--check"], capture_output=True).returncode == 1
    proc = subprocess.run(script, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    text = readme.read_text(encoding="utf-8")
    assert "old" not in text and text.startswith("intro\n") and text.endswith("rest\n") and "\nmiddle\n" in text
    assert subprocess.run(script + ["--check"], capture_output=True).returncode == 0
    head = text.split("<!-- table:head:start -->")[1].split("<!-- table:head:end -->")[0]
    rows = {line.split("|")[1].strip().strip("`"): [c.strip() for c in line.split("|")[1:-1]]
            for line in head.splitlines() if line.startswith("| `")}
    assert list(rows) == KEYS
    lat = results["latency"]["batches"]["2"]
    for key, cells in rows.items():
        assert cells[4] == f"{lat[key]['p50_ms']:.2f}" and cells[5] == f"{lat[key]['speedup_vs_fixed']:.1f}x"
        assert cells[6] == f"{lat[key]['speedup_vs_dynamic']:.1f}x"
    size = results["memory"]["static"]["bundle"]["bundle_bytes"] / 1e6
    assert rows["bundle"][2] == f"{size:.1f}" and "dirty: false" in head
    dirty = {**results, "dirty": True}
    (tmp_path / "r.json").write_text(json.dumps(dirty, default=str), encoding="utf-8")
    proc = subprocess.run(script, capture_output=True, text=True)
    assert proc.returncode == 2 and "uncommitted changes" in proc.stderr


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
    (["--batch", "0"], "from 1 to 1024"),
    (["--batch", "1,100000"], "from 1 to 1024"),
    (["--checkpoint", "mobileclip-s1=x.pt"], "not one of the encoders this command runs"),
    (["--checkpoint", "mobileclip-s0"], "expected NAME=PATH"),
    (["--checkpoint", "mobileclip-s0=no_such.pt"], "does not exist"),
])
def test_unknown_baseline_bad_batches_and_checkpoints(tmp_path, args, needle):
    rc, err = run_cli(["bench", "mobileclip-s0", "--skip-segmentation", *args, "--out", str(tmp_path / "out")])
    assert rc == 2 and needle in _one_error_line(err) and not (tmp_path / "out").exists()


def test_unreadable_bars_file(tmp_path):
    (tmp_path / "bars.json").write_text("{not json", encoding="utf-8")
    rc, err = run_cli(["bench", "mobileclip-s0", "--skip-segmentation", "--bars", str(tmp_path / "bars.json"),
                       "--out", str(tmp_path / "out")])
    assert rc == 2 and "--bars" in _one_error_line(err) and not (tmp_path / "out").exists()


def test_a_candidate_named_like_a_baseline(tmp_path):
    bundle = tmp_path / "sam3-fp32-dyn"
    bundle.mkdir()
    (bundle / "manifest.json").write_text("{}", encoding="utf-8")
    rc, err = run_cli(["bench", str(bundle), "--skip-segmentation", "--out", str(tmp_path / "out")])
    assert rc == 2 and "differ from the baselines" in _one_error_line(err)


def test_unknown_candidate(tmp_path):
    rc, err = run_cli(["bench", "mobileclip-s9", "--skip-segmentation", "--out", str(tmp_path / "out")])
    assert rc == 2 and "neither a bundle directory nor an encoder name" in _one_error_line(err)


def test_progress_goes_to_logs_as_lines(capsys):
    """Without a terminal (a log file, CI) progress is plain lines on stderr, not a tqdm bar."""
    from edgeseg.bench.progress import bar as _bar

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


def test_checkpoint_option_loads_torch_candidates(tmp_path):
    """``bench --checkpoint NAME=PATH``: the torch candidate runs the file's weights (its outputs are those of
    ``load_encoder`` on the file and differ from the random ones), recorded by fingerprint; the memory child
    gets the file too."""
    from edgeseg.bench import BenchOptions, load_models, resolve_candidates
    from edgeseg.bench.phases import _children
    from edgeseg.checkpoints import fingerprint, load_encoder, save_encoder
    from edgeseg.encoders import build_encoder

    ckpt = tmp_path / "s0_seed5.safetensors"
    save_encoder(build_encoder("mobileclip-s0", seed=5), ckpt)
    opts = BenchOptions(candidates=["mobileclip-s0"], out=tmp_path / "out", teacher=tiny_teacher(),
                        checkpoints={"mobileclip-s0": ckpt})
    models = load_models(opts, resolve_candidates(opts))
    got = models["mobileclip-s0-torch"]
    ids = got.ids(["a dog", "the red car on the left"])
    with torch.no_grad():
        expected = load_encoder("mobileclip-s0", ckpt)(torch.from_numpy(ids))[0].numpy()
        random = build_encoder("mobileclip-s0", seed=0)(torch.from_numpy(ids))[0].numpy()
    memory = got.infer(ids)[0]
    assert np.array_equal(memory, expected) and not np.allclose(memory, random, atol=1e-3)
    assert got.facts["checkpoint"] == fingerprint(ckpt) and got.facts["weights"] == "checkpoint"
    run = type("Run", (), {"opts": opts, "models": {"mobileclip-s0-torch": got}})
    (key, argv), = _children(run, tmp_path / "prompts.txt")
    assert key == "mobileclip-s0-torch" and str(ckpt) in argv

