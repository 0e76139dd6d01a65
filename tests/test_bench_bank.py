"""The prompt-bank benchmark (``edgeseg.bench.bank``, ``edgeseg bench --bank``) on tiny inputs.

Only that it runs, measures what it says and reports it: the numbers of a tiny random model on a shared
machine mean nothing (the lead runs the real measurement on an idle machine). Oracles: the bank files'
sizes on disk, the issue's goals written out here, ``hashlib``-free structural checks.
"""

from __future__ import annotations

import json

import pytest
from test_export import tiny_exported_bundle

from edgeseg.cli import main

PROMPTS = ["a dog", "forklift", "pallet", "person", "traffic light", "a red car", "the left zebra", "a cat",
           "yellow school bus", "a player in white", "two dogs", "a bicycle"]


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory):
    return tiny_exported_bundle(tmp_path_factory)[1]


def test_bank_bench_measures_and_reports(tiny_bundle, tmp_path):
    from edgeseg.bench.bank import run_bank_bench, tool_path

    out = tmp_path / "bank"
    results = run_bank_bench(tiny_bundle, PROMPTS, out, threads=1, rounds=1, max_calls=16, block_s=0.01)
    on_disk = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert on_disk["schema"] == "edgeseg.bench.bank/1" and on_disk["prompts"] == len(PROMPTS)
    assert on_disk["random_weights"] and "RANDOM" in on_disk["weights"]
    py = results["python_latency"]["batches"]
    for size in ("1", "8"):
        for name in ("encoder_encode", "encoder_model_only", "hit_text_float32", "hit_text_float16",
                     "hit_ids_float32"):
            assert py[size][name]["median_us"] > 0, (size, name)
        assert py[size]["hit_text_float32"]["speedup_vs_encoder"] > 1  # a lookup beats a forward pass
    sizes = results["size"]
    assert sizes["float16"]["bytes"] < sizes["float32"]["bytes"]
    assert sizes["float32"]["bytes_per_1000_prompts"] == pytest.approx(sizes["float32"]["bytes"] * 1000 / 12)
    fid = results["fidelity_float16_vs_float32"]
    assert 0.9999 < fid["mean_cosine"] <= 1.0 and 0 < fid["max_abs_diff"] < 1e-2
    rss = results["rss"]
    assert rss["python_bank_only"]["returncode"] == 0 and rss["python_encoder"]["returncode"] == 0
    assert rss["python_bank_only"]["child_onnxruntime_imported"] is False  # no session at all
    assert rss["python_bank_only"]["child_tokenizer_built"] is False  # every prompt found by its text
    assert rss["python_encoder"]["child_onnxruntime_imported"] is True
    goals = {bar["goal"] for bar in results["targets"]}
    assert ">= 1,000.0x" in goals and "<= 60.0 MB" in goals
    if tool_path().is_file():
        assert rss["cpp_bank_only"]["returncode"] == 0 and rss["cpp_bank_only"]["child_bank_entries"] == 12
        assert results["cpp_latency"]["float32"]["speedup_b1"] > 1
        assert all(bar["measured"] is not None for bar in results["targets"])
    report = (out / "report.md").read_text(encoding="utf-8")
    assert "ratio to goal" in report and "float16 vs float32" in report
    assert (out / "bank.png").stat().st_size > 1000
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # the work folder is gone


def test_bench_cli_runs_the_bank_phase_after_the_main_run(tiny_bundle, tmp_path, monkeypatch, capsys):
    import edgeseg.bench
    import edgeseg.bench.bank

    calls = []
    monkeypatch.setattr(edgeseg.bench, "prepare", lambda opts: calls.append("prepare"))
    monkeypatch.setattr(edgeseg.bench, "run_bench", lambda opts, prepared: calls.append("main") or {"runtime_s": 0})

    def fake_bank_bench(bundle, prompts, out, threads, progress):
        calls.append(("bank", bundle, prompts, out.name))
        return {"targets": [{"bar": "x", "measured": 2000.0, "unit": "x", "goal": ">= 1,000.0x",
                             "ratio_to_goal": 2.0}]}

    monkeypatch.setattr(edgeseg.bench.bank, "run_bank_bench", fake_bank_bench)
    prompts = tmp_path / "p.txt"
    prompts.write_text("a dog\npallet\n", encoding="utf-8")
    args = ["bench", "mobileclip-s0", str(tiny_bundle), "--bank-prompts", str(prompts), "--out", str(tmp_path / "o")]
    assert main(args) == 0
    assert calls == ["prepare", "main", ("bank", tiny_bundle, ["a dog", "pallet"], "bank")]
    assert "bank: x: 2,000.00x (goal >= 1,000.0x; 2.00x the goal)" in capsys.readouterr().err
    calls.clear()  # bad input is found before the long run
    assert main(["bench", "mobileclip-s0", "--bank", "--out", str(tmp_path / "o")]) == 2
    (tmp_path / "empty.txt").write_text("\n", encoding="utf-8")
    assert main(["bench", str(tiny_bundle), "--bank-prompts", str(tmp_path / "empty.txt"), "--out",
                 str(tmp_path / "o")]) == 2
    assert calls == []
    err = capsys.readouterr().err.strip().splitlines()
    assert "give a bundle candidate" in err[0] and "holds no prompts" in err[1]
