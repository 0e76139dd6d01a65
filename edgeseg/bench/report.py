"""``report.md``, PNG plots and the README tables from a bench ``results.json``.

Every README table is rendered here from a committed results file (``benchmarks/readme_table.py``
writes them between ``<!-- table:NAME:start -->`` and ``<!-- table:NAME:end -->``): :data:`README_TABLES`.
Optional results sections render through :func:`register_renderer`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edgeseg.fileio import atomic_path

log = logging.getLogger(__name__)
MB = 1_000_000


def md_table(header: list[str], rows: list[list[str]], align: str | None = None) -> str:
    align = align or "l" * len(header)
    marks = ["---:" if a == "r" else "---" for a in align]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(marks) + " |"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _f(value: Any, fmt: str = "{:.2f}") -> str:
    return "n/a" if value is None else fmt.format(value)


def machine_line(results: dict[str, Any]) -> str:
    env = results["environment"]
    gpu = env.get("gpu")
    return (f"{env['device']}{' + ' + gpu['name'] if gpu else ''}, {env['cpu_count']} CPUs, {env['threads']} threads, "
            f"torch {env['versions'].get('torch')}, onnxruntime {env['versions'].get('onnxruntime')}")


def provenance(results: dict[str, Any]) -> str:
    """Where a table's figures come from: machine, weights, command, commit and whether the tree was clean."""
    git = results["environment"]["git"]
    weights = "**random/synthetic weights**" if results.get("random_weights") else "real checkpoints"
    cpu = (results.get("latency") or {}).get("background_cpu", {}).get("other_cores")
    busy = f"; other processes used {cpu:.2f} cores during the latency rounds" if cpu is not None else ""
    return (f"_{machine_line(results)}; {weights}; generated {results['created']} by `{results['command']}` "
            f"(suite {results.get('suite') or '-'}, edgeseg {str(git.get('commit'))[:10]}, "
            f"dirty: {str(results.get('dirty')).lower()}{busy})._")


# -- README tables ---------------------------------------------------------------------------------
def _size(results: dict[str, Any], key: str) -> tuple[float | None, float | None]:
    """Bundle bytes (or torch weights) and the ratio to the baseline; own-length variants: their model's."""
    key = results["candidates"][key].get("shares_weights_with") or key
    st = results["memory"]["static"].get(key, {})
    size = st.get("bundle_bytes", st.get("weights_bytes"))
    return (size / MB if size else None), st.get("bundle_ratio_vs_baseline", st.get("weights_ratio_vs_baseline"))


def headline_table(results: dict[str, Any], batch: str = "1") -> str:
    """Size, latency vs both baselines, efficiency vs the GEMM floor, peak RSS and fidelity per candidate."""
    lat = results["latency"]["batches"][batch]
    eff = (results.get("efficiency") or {}).get("batches", {}).get(batch, {})
    dynamic, fid = results["memory"]["dynamic"], (results.get("fidelity") or {}).get("rows", {})
    rows = []
    for key, cand in results["candidates"].items():
        row, size = lat[key], _size(results, key)
        f = fid.get(key, {}).get("recomputed")
        rows.append([f"`{key}`", cand.get("sequence", "-"), _f(size[0], "{:.1f}"), _f(size[1], "{:.1f}x"),
                     _f(row["p50_ms"]), _f(row.get("speedup_vs_fixed"), "{:.1f}x"),
                     _f(row.get("speedup_vs_dynamic"), "{:.1f}x"), _f(row["first_call_after_switch"]["p50_ms"]),
                     _f(eff.get(key, {}).get("efficiency"), "{:.0%}"),
                     _f(dynamic.get(key, {}).get("peak_rss_mb"), "{:.0f}"),
                     f"{f['mean_cosine']:.5f} / {f['worst_cosine']:.5f} vs `{fid[key]['vs']}`" if f else "-"])
    return "\n".join([
        md_table(["model", "sequence", "size MB", "smaller", f"p50 ms (batch {batch})", "x vs fixed-32",
                  "x vs own-length", "1st call after switch ms", "GEMM efficiency", "peak RSS MB",
                  "fidelity mean / worst"], rows, "llrrrrrrrrl"), "", provenance(results)])


def bars_table(results: dict[str, Any]) -> str:
    rows = [[b["bar"], b["target"], b["measured_text"] + (f" (`{b['which']}`)" if b.get("which") else ""),
             verdict(b["passed"], b["informational"]), b.get("note", "")] for b in results.get("bars", [])]
    return "\n".join([md_table(["bar", "target", "measured", "result", "note"], rows), "", provenance(results)])


def segmentation_table(results: dict[str, Any]) -> str:
    """Agreement with the teacher: embeddings on eval prompts, and masks through SAM3's image model."""
    acc, seg = results["accuracy"]["rows"], results.get("segmentation", {})
    summary, e2e = seg.get("summary", {}), seg.get("end_to_end", {}).get("per_prompt_s", {})
    rows = []
    for key in results["candidates"]:
        s, a = summary.get(key), acc.get(key, {})
        rows.append([f"`{key}`", _f(a.get("mean_token_cosine"), "{:.3f}"), _f(a.get("retrieval_top1"), "{:.2f}"),
                     (f"{s['mean_mask_iou']:.3f} / {s['mean_top1_mask_iou']:.3f}"
                      + (f" ({s['both_empty_prompts']}/{s['prompts']} empty)" if s.get("both_empty_prompts") else "")
                      if s else "-"), _f(e2e.get(key, {}).get("text_share"), "{:.1%}")])
    return "\n".join([md_table(["model", "token cos vs teacher", "retrieval top-1",
                                 "mask IoU vs teacher: detections / top-1 query", "text encoder share of one "
                                 "image + prompt"], rows, "lrrrr"), "", provenance(results)])


def verdict(passed: bool | None, informational: bool = False) -> str:
    if informational:
        return "n/a" if passed is None else ("(pass)" if passed else "(fail)")
    return "n/a" if passed is None else ("PASS" if passed else "**FAIL**")


#: README table name -> renderer of a results.json (``benchmarks/readme_tables.json`` says which file)
README_TABLES: dict[str, Callable[..., str]] = {
    "headline": headline_table, "bars": bars_table, "segmentation": segmentation_table}


def replace_block(readme: str, name: str, table: str) -> str:
    """Put ``table`` between ``<!-- table:NAME:start -->`` and ``<!-- table:NAME:end -->``."""
    start_mark, end_mark = f"<!-- table:{name}:start -->", f"<!-- table:{name}:end -->"
    start, end = readme.find(start_mark), readme.find(end_mark)
    if start < 0 or end < start:
        raise ValueError(f"README has no {start_mark} ... {end_mark} markers")
    return readme[:start + len(start_mark)] + "\n" + table + "\n" + readme[end:]


# -- report.md -------------------------------------------------------------------------------------
def _header(results: dict[str, Any]) -> list[str]:
    env = results["environment"]
    out = [f"# edgeseg bench: candidates vs the SAM3 text encoder ({', '.join(results.get('baselines', []))})", ""]
    if results.get("random_weights"):
        out += [f"> **{results['weights']}.** Sizes, latencies and memory do not depend on weight values; "
                "embedding and segmentation agreement do.", ""]
    out += [
        f"- Generated {results['created']} by `{results['command']}` in {results['runtime_s'] / 60:.1f} min"
        + (f" (suite {results['suite']})" if results.get("suite") else ""),
        f"- Machine: {machine_line(results)}; SIMD {', '.join(env.get('cpu_flags') or ['?'])}; Python "
        f"{env['python']}; {env['platform']}",
        "- Versions: " + ", ".join(f"{k} {v}" for k, v in env["versions"].items() if v),
        f"- edgeseg commit {env['git'].get('commit')}; dirty: {str(results.get('dirty')).lower()}",
        "- Checkpoints: " + ", ".join(f"{k}: {v}" for k, v in results["checkpoints"].items()),
        "- Wall time per phase: " + ", ".join(f"{k[:-2]} {v / 60:.1f} min" for k, v in results["phase_wall_s"].items()),
    ]
    cpu = results.get("latency", {}).get("background_cpu", {}).get("other_cores")
    if cpu is not None:
        out.append(f"- Other processes used {cpu:.2f} of {env['cpu_count']} cores during the latency rounds"
                   + (" -- **the machine was not idle: absolute timings are inflated**" if cpu > 0.1 else ""))
    return out + [""]


def _latency(results: dict[str, Any]) -> list[str]:
    lat = results["latency"]
    eff = (results.get("efficiency") or {}).get("batches", {})
    out = ["## Latency", "", lat["method"] + ". Ratios: " + ", ".join(
        f"x vs {name} = `{ref}` p50 / p50" for name, ref in lat.get("ratio_references", {}).items()) + ".", ""]
    for batch, table in lat["batches"].items():
        rows = [[k, r.get("tokens", r["context_length"]), lat["execution_providers"].get(k, ""), _f(r["p50_ms"]),
                 _f(r["p95_ms"]), _f(r["p99_ms"]), _f(r["prompts_per_s"], "{:.1f}"), str(r["samples"]),
                 _f(r["first_call_after_switch"]["p50_ms"]), _f(r.get("speedup_vs_fixed"), "{:.1f}x"),
                 _f(r.get("speedup_vs_dynamic"), "{:.1f}x"), _f(eff.get(batch, {}).get(k, {}).get("floor_ms")),
                 _f(eff.get(batch, {}).get(k, {}).get("efficiency"), "{:.0%}")] for k, r in table.items()]
        out += [f"### Batch {batch}", "", md_table(
            ["model", "tokens", "runs on", "p50 ms", "p95 ms", "p99 ms", "prompts/s", "calls",
             "1st call after switch p50 ms", "x vs fixed-32", "x vs own-length", "GEMM floor ms", "efficiency"],
            rows, "lrlrrrrrrrrrr"), ""]
    if results.get("efficiency"):
        out += [results["efficiency"]["method"] + " Rates: " + results["efficiency"]["rates_how"] + ".", ""]
    tok = lat.get("tokenizer")
    if tok:
        rows = [[k.split("_")[1], _f(v["cold"]["p50_ms"], "{:.3f}"), _f(v["warm"]["p50_ms"], "{:.4f}")]
                for k, v in tok.items() if k.startswith("context_")]
        out += ["### Tokenizer (per prompt, not included above)", "", tok["method"] + ".", "",
                md_table(["ctx", "cold p50 ms", "warm p50 ms"], rows, "rrr"), ""]
    return out


def _memory(results: dict[str, Any]) -> list[str]:
    mem = results["memory"]
    rows = []
    for k, st in mem["static"].items():
        dy = mem["dynamic"].get(k, {})
        dtypes = ", ".join(f"{d} {b / MB:.1f}" for d, b in (st.get("weights_bytes_by_dtype") or {}).items())
        rows.append([k, _f(st["weights_bytes"] / MB if st.get("weights_bytes") else None, "{:.1f}"), dtypes,
                     _f(st.get("bundle_bytes", 0) / MB if st.get("bundle_bytes") else None, "{:.1f}"),
                     _f(st.get("weights_ratio_vs_baseline"), "{:.1f}x"), _f(dy.get("peak_rss_mb"), "{:.0f}"),
                     _f(dy.get("peak_rss_ratio_vs_baseline"), "{:.1f}x"), str(dy.get("child_torch_imported", "-"))])
    return ["## Memory", "", "Static: weights by dtype (torch state dict, or the ONNX graph's initializers) and "
            "every file of a bundle. Dynamic: " + mem["dynamic_method"] + ".", "",
            md_table(["model", "weights MB", "by dtype (MB)", "bundle MB", "weights x smaller", "peak RSS MB",
                      "x less RSS", "torch imported"], rows, "lrlrrrrl"), ""]


def _accuracy(results: dict[str, Any]) -> list[str]:
    acc = results["accuracy"]
    rows = [[k, str(r["compared_positions"]), _f(r["mean_token_cosine"], "{:.4f}"),
             _f(r["worst_token_cosine"], "{:.4f}"), _f(r["mse"], "{:.4g}"), _f(r["pooled_cosine_mean"], "{:.4f}"),
             _f(r["retrieval_top1"], "{:.3f}"), _f(r["retrieval_top5"], "{:.3f}"), str(r["truncated_at_candidate"])]
            for k, r in acc["rows"].items()]
    out = [f"## Embedding accuracy ({acc['prompts']} eval prompts)", "", acc["method"], "",
           md_table(["model", "positions", "mean token cos", "worst", "MSE", "pooled cos", "retrieval top-1",
                     "top-5", "prompts filling ctx"], rows, "lrrrrrrrr"), ""]
    fid = results.get("fidelity") or {}
    if fid.get("rows"):
        rows = []
        for key, r in fid["rows"].items():
            m, c = r["manifest"] or {}, r["recomputed"]
            rows.append([key, r["vs"], _f(m.get("mean_cosine"), "{:.5f}"), _f(m.get("worst_cosine"), "{:.5f}"),
                         str(m.get("prompts", "-")), _f(c["mean_cosine"], "{:.5f}"), _f(c["worst_cosine"], "{:.5f}"),
                         str(c["prompts"]), str(c["resegmented_prompts"]),
                         _f(r["self_check_vs_torch_reference"]["mean_cosine"], "{:.5f}"),
                         f"{len(r['excluded_layers'])} of {r['layers'] or '?'}"])
        out += ["## Fidelity (derived bundle vs its FP32 bundle, eval split)", "", fid["method"] + ".", "",
                md_table(["bundle", "vs", "manifest mean", "manifest worst", "n", "mean", "worst", "n",
                          "resegmented", "self-check mean", "float layers"], rows, "llrrrrrrrrr"), ""]
    return out


def _bars(results: dict[str, Any]) -> list[str]:
    if not results.get("bars"):
        return []
    return ["## Bars", "", bars_table(results).rsplit("\n\n", 1)[0], ""]


def _segmentation(results: dict[str, Any]) -> list[str]:
    out: list[str] = []
    seg = results.get("segmentation", {})
    if "skipped" in seg:
        out += ["## Segmentation", "", f"Skipped: {seg['skipped']}.", ""]
    elif seg:
        rows = [[k, str(s["prompts"]), _f(s["mean_mask_iou"], "{:.3f}"), _f(s["fraction_mask_iou_ge_0.95"], "{:.2f}"),
                 _f(s["mean_top1_mask_iou"], "{:.3f}"), _f(s["count_agreement"], "{:.2f}"),
                 _f(s["mean_box_iou"], "{:.3f}"), _f(s["mean_abs_top1_score_diff"], "{:.4f}"),
                 str(s["both_empty_prompts"])] for k, s in seg["summary"].items()]
        images = ", ".join(f"{i['name']} ({len(i['prompts'])})" for i in seg["images"])
        out += ["## Segmentation (Meta's SAM3 image model)", "", f"{seg['image_model']}; input {seg['resolution']} px; "
                f"images (prompts): {images}. {seg['baseline_through_adapter']}.", "", seg["method"], "",
                md_table(["model", "prompts", "mean mask IoU", "IoU >= 0.95", "top-1 mask IoU", "count agrees",
                          "box IoU", "|top-1 score diff|", "both empty"], rows, "lrrrrrrrr"), ""]
        e2e = seg["end_to_end"]
        p = e2e["params"]
        rows = [[k, _f(v["image_encoder_s"]), _f(v["text_encoder_s"], "{:.4f}"), _f(v["grounding_s"]),
                 _f(v["total_s"]), f"{v['text_share']:.1%}"] for k, v in e2e["per_prompt_s"].items()]
        out += ["### End to end: image encoder vs text encoder", "",
                f"Parameters: image encoder {p['params']['image_encoder']:,} ({p['share']['image_encoder']:.1%}), "
                f"text encoder {p['params']['text_encoder']:,} ({p['share']['text_encoder']:.1%}), rest "
                f"{p['params']['rest']:,} ({p['share']['rest']:.1%}). " + e2e["how"] + ".", "",
                md_table(["text features from", "image encoder s", "text encoder s", "grounding s", "total s",
                          "text share"], rows, "lrrrrr"), ""]
        rows = [[k, r["image"], r["prompt"], str(r["teacher_detections"]), str(r["candidate_detections"]),
                 _f(r["mask_iou"], "{:.3f}"), _f(r["top1_mask_iou"], "{:.3f}"), _f(r["box_iou"], "{:.3f}"),
                 _f(r["top1_score_diff"], "{:+.4f}")] for k, rs in seg["per_prompt"].items() for r in rs]
        out += ["### Per prompt", "", md_table(["model", "image", "prompt", "teacher dets", "cand dets",
                                                "mask IoU", "top-1 mask IoU", "box IoU", "top-1 score diff"],
                                               rows, "lllrrrrrr"), ""]
    return out


def _video(results: dict[str, Any]) -> list[str]:
    video = results.get("video")
    if not video:
        return []
    rows = [[k, str(s["prompts"]), _f(s.get("mean_frame_mask_iou"), "{:.3f}"),
             _f(s.get("mean_count_agreement"), "{:.2f}"), _f(s.get("mean_id_agreement"), "{:.3f}"),
             str(s.get("id_switches", "-")), str(s.get("both_empty_prompts", "-")),
             _f(video.get("seconds_per_prompt", {}).get(k))] for k, s in video["summary"].items()]
    per_prompt = [[k, r["prompt"], _f(r["mean_mask_iou"], "{:.3f}"), _f(r["count_agreement"], "{:.2f}"),
                   _f(r["id_agreement"], "{:.3f}"), str(r["id_switches"])]
                  for k, rs in video["per_prompt"].items() for r in rs]
    shape = "x".join(str(n) for n in video["frame_shape"])
    return ["## Video (Meta's SAM3 video model)", "",
            f"{video['source']}: {video['frames']} frames of {shape}; prompts: "
            f"{', '.join(repr(p) for p in video['prompts'])}. SAM3's own run takes "
            f"{_f(video.get('seconds_per_prompt', {}).get('reference'))} s per prompt. "
            f"{video['baseline_through_adapter']}.", "", video["method"], "",
            md_table(["text features from", "prompts", "frame mask IoU", "count agrees", "id agreement",
                      "id switches", "both empty", "s per prompt"], rows, "lrrrrrrr"), "",
            "### Per prompt", "",
            md_table(["text features from", "prompt", "frame mask IoU", "count agrees", "id agreement",
                      "id switches"], per_prompt, "llrrrr"), ""]


#: optional results sections (name -> renderer of that section's lines), e.g. prompt banks
RENDERERS: dict[str, Callable[[dict[str, Any]], list[str]]] = {}


def register_renderer(name: str, render_section: Callable[[dict[str, Any]], list[str]]) -> None:
    RENDERERS[name] = render_section


def render(results: dict[str, Any], plot_names: list[str]) -> str:
    out = _header(results)
    out += ["## Summary", "", headline_table(results), ""]
    for part in (_bars, _latency, _memory, _accuracy, _segmentation, _video):
        out += part(results)
    for name, render_section in RENDERERS.items():
        if results.get(name) is not None:
            out += render_section(results[name])
    out += [f"![{name}]({name})" for name in plot_names]
    if results.get("random_weights"):
        out += ["", f"_{results['weights']}._"]
    return "\n".join(out) + "\n"


def plots(results: dict[str, Any], out: Path) -> list[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib is not installed: no plots")
        return []
    tag = " (random/synthetic weights)" if results.get("random_weights") else ""
    lat = results["latency"]["batches"]
    keys = list(results["candidates"])
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    width = 0.8 / max(1, len(lat))
    for i, (batch, table) in enumerate(lat.items()):
        axes[0].bar([j + i * width for j in range(len(keys))], [table[k]["p50_ms"] for k in keys], width,
                    label=f"batch {batch}")
    axes[0].set_xticks([j + width * (len(lat) - 1) / 2 for j in range(len(keys))], keys, rotation=25, ha="right",
                       fontsize=8)
    axes[0].set_yscale("log")
    axes[0].set_ylabel("p50 ms (log)")
    axes[0].set_title("latency")
    axes[0].legend(fontsize=8)
    static = results["memory"]["static"]
    sized = [k for k in keys if k in static and static[k].get("bundle_bytes", static[k]["weights_bytes"])]
    axes[1].bar(sized, [static[k].get("bundle_bytes", static[k]["weights_bytes"]) / MB for k in sized],
                color="tab:gray")
    axes[1].set_yscale("log")
    axes[1].set_ylabel("MB (log)")
    axes[1].set_title("size (bundle files or FP32 weights)")
    axes[1].tick_params(axis="x", labelrotation=25, labelsize=8)
    fig.suptitle("edgeseg bench" + tag, fontsize=11)
    fig.tight_layout()
    names = []
    with atomic_path(out / "latency_size.png") as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    names.append("latency_size.png")
    seg = results.get("segmentation", {})
    if seg.get("per_prompt"):
        fig, ax = plt.subplots(figsize=(10, 4))
        for key, rows in seg["per_prompt"].items():
            ax.plot(range(len(rows)), [r["top1_mask_iou"] for r in rows], marker="o", label=key)
        ax.set_ylim(-0.05, 1.05)
        ax.set_xlabel("prompt (image order)")
        ax.set_ylabel("top-1 mask IoU vs teacher")
        ax.set_title("segmentation agreement with SAM3's own text features" + tag, fontsize=10)
        ax.legend(fontsize=8)
        fig.tight_layout()
        with atomic_path(out / "segmentation_iou.png") as tmp:
            fig.savefig(tmp, dpi=100, format="png")
        plt.close(fig)
        names.append("segmentation_iou.png")
    return names


def write_outputs(results: dict[str, Any], out: Path) -> None:
    """``results.json``, the plots and ``report.md`` in ``out``, each written to a temporary name first."""
    out = Path(out)
    out.mkdir(exist_ok=True)
    names = plots(results, out)
    results["plots"] = names
    with atomic_path(out / "results.json") as tmp:
        tmp.write_text(json.dumps(results, indent=2, default=str) + "\n", encoding="utf-8")
    with atomic_path(out / "report.md") as tmp:
        tmp.write_text(render(results, names), encoding="utf-8")
    log.info("wrote %s", out)


# -- README tables of the other benchmark scripts (their results.json formats) ------------------------
def _script_provenance(results: dict[str, Any]) -> str:
    env = results.get("environment") or {}
    git = env.get("git") or {}
    return (f"_{results.get('machine') or env.get('device', '?')}; {results.get('weights', '')}; generated "
            f"{results.get('created', '?')} by `{results.get('command', '?')}` (edgeseg {str(git.get('commit'))[:10]}, "
            f"dirty: {str(results.get('dirty')).lower()})._")


def cpp_table(results: dict[str, Any]) -> str:
    """``benchmarks/cpp_bench.py``: C++ runtime vs Python, tokenizer and batch-1 encode."""
    rows = [[r["measure"], f"{r['python']:,.1f}", f"{r['cpp']:,.1f}", f"{r['speedup']:.2f}x"] for r in results["rows"]]
    return "\n".join([md_table([f"measure ({results['prompts']:,} prompts; {results['bundle_label']})", "Python", "C++",
                                "C++ vs Python"], rows, "lrrr"), "", _script_provenance(results)])


def tokenizer_parity_table(results: dict[str, Any]) -> str:
    """``benchmarks/tokenizer_parity.py``: C++ tokenizer ids vs Python's, per prompt set."""
    rows = [[s["label"], f"{s['same']:,} / {s['prompts']:,}", str(s["ftfy_changed"]), str(s["differ"]),
             str(s["differ_outside_ftfy"]), str(s["equal_without_ftfy"])] for s in results["sets"]]
    return "\n".join([md_table(["prompts", "identical ids", "ftfy changes", "differ", "differ where ftfy changes "
                                "nothing", "of those differing: equal to Python without ftfy"], rows, "lrrrrr"), "",
                      _script_provenance(results)])


def coreml_table(results: dict[str, Any]) -> str:
    """``benchmarks/coreml_fidelity.py``: Core ML packages' MIL programs (float32 emulation) vs torch FP32."""
    rows = [[f"`{r['name']}`", r["what"], f"{r['mean_cosine']:.5f}", f"{r['worst_cosine']:.5f}", str(r["prompts"]),
             str(r["float_ops"]), f"{r['package_mb']:.1f}"] for r in results["rows"]]
    return "\n".join([md_table(["bundle", "what", "mean token cos vs torch FP32", "worst", "prompts",
                                "linear/conv ops kept float", "package MB"], rows, "llrrrrr"), "",
                      _script_provenance(results)])


README_TABLES.update({"cpp": cpp_table, "tokenizer-parity": tokenizer_parity_table, "coreml": coreml_table})
