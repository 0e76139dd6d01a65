"""``report.md``, PNG plots and the README results table from a bench ``results.json``."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from edgeseg.fileio import atomic_path

log = logging.getLogger(__name__)
MB = 1_000_000
TABLE_START = "<!-- bench-table:start -->"
TABLE_END = "<!-- bench-table:end -->"


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


def results_table(results: dict[str, Any], batch: str = "1") -> str:
    """The README table: one row per candidate (baseline first), size, latency, memory, accuracy."""
    lat = results["latency"]["batches"].get(batch) or next(iter(results["latency"]["batches"].values()))
    static, dynamic = results["memory"]["static"], results["memory"]["dynamic"]
    acc = results["accuracy"]["rows"]
    seg = results.get("segmentation", {}).get("summary", {})
    rows = []
    for key, cand in results["candidates"].items():
        st, dy, row = static.get(key, {}), dynamic.get(key, {}), lat.get(key, {})
        size = st.get("bundle_bytes", st.get("weights_bytes"))
        s = seg.get(key, {})
        rows.append([
            f"`{key}`", str(cand["context_length"]), _f(size / MB if size else None, "{:.1f}"),
            _f(st.get("bundle_ratio_vs_baseline", st.get("weights_ratio_vs_baseline")), "{:.1f}x"),
            _f(row.get("p50_ms")), _f(row.get("speedup_vs_baseline"), "{:.1f}x"),
            _f(dy.get("peak_rss_mb"), "{:.0f}"), _f(dy.get("peak_rss_ratio_vs_baseline"), "{:.1f}x"),
            _f(acc.get(key, {}).get("mean_token_cosine"), "{:.3f}"), _f(acc.get(key, {}).get("retrieval_top1"),
                                                                       "{:.2f}"),
            (f"{s['mean_mask_iou']:.3f} / {s['mean_top1_mask_iou']:.3f}"
             + (f" ({s['both_empty_prompts']}/{s['prompts']} empty)" if s.get("both_empty_prompts") else "")
             if s else "-"),
        ])
    weights = "**random/synthetic weights**" if results.get("random_weights") else "real checkpoints"
    lines = [
        md_table(["candidate", "ctx", "size MB", "smaller", f"p50 ms (batch {batch})", "faster", "peak RSS MB",
                  "less RSS", "token cos vs teacher", "retrieval top-1",
                  "mask IoU vs teacher: detections / top-1 query"], rows, "lrrrrrrrrrr"),
        "",
        f"_{machine_line(results)}; {weights}; generated {results['created']} by `{results['command']}` "
        f"(edgeseg {str(results['environment']['git'].get('commit'))[:10]}"
        f"{', modified' if results['environment']['git'].get('tracked_changes') else ''}). Size = bundle files, or "
        f"FP32 weights for torch encoders; ratios = baseline / candidate from the same run; mask IoU: union of "
        f"detected masks (1.0 when both runs detect nothing: 'empty') / the top-scoring query's mask; the baseline "
        f"row is SAM3's own features injected through the adapter (a check)._",
    ]
    return "\n".join(lines)


def replace_table(readme: str, table: str) -> str:
    start, end = readme.find(TABLE_START), readme.find(TABLE_END)
    if start < 0 or end < start:
        raise ValueError(f"README has no {TABLE_START} ... {TABLE_END} markers")
    return readme[:start + len(TABLE_START)] + "\n" + table + "\n" + readme[end:]


def render(results: dict[str, Any], plots: list[str]) -> str:
    env = results["environment"]
    out = [f"# edgeseg bench: candidates vs the FP32 SAM3 text encoder ({results['baseline']})", ""]
    if results.get("random_weights"):
        out += [f"> **{results['weights']}.** Sizes, latencies and memory do not depend on weight values; "
                "embedding and segmentation agreement do.", ""]
    cpu = results["latency"].get("background_cpu", {}).get("other_cores")
    out += [
        f"- Generated {results['created']} by `{results['command']}` in {results['runtime_s'] / 60:.1f} min",
        f"- Machine: {machine_line(results)}; SIMD {', '.join(env.get('cpu_flags') or ['?'])}; Python "
        f"{env['python']}; {env['platform']}",
        "- Versions: " + ", ".join(f"{k} {v}" for k, v in env["versions"].items() if v),
        f"- edgeseg commit {env['git'].get('commit')}"
        + (" (tracked files modified)" if env["git"].get("tracked_changes") else ""),
        "- Checkpoints: " + ", ".join(f"{k}: {v}" for k, v in results["checkpoints"].items()),
    ]
    if results.get("phase_wall_s"):
        out.append("- Wall time per phase: " + ", ".join(f"{k[:-2]} {v / 60:.1f} min"
                                                         for k, v in results["phase_wall_s"].items()))
    if cpu is not None:
        out.append(f"- Other processes used {cpu:.2f} of {env['cpu_count']} cores during the latency rounds"
                   + (" -- **the machine was not idle: absolute timings are inflated**" if cpu > 0.1 else ""))
    out += ["", "## Summary", "", results_table(results), ""]
    lat = results["latency"]
    out += ["## Latency", "", lat["method"] + ".", ""]
    for batch, table in lat["batches"].items():
        rows = [[k, str(r["context_length"]), lat["execution_providers"].get(k, ""), _f(r["p50_ms"]),
                 _f(r["p95_ms"]), _f(r["p99_ms"]), _f(r["prompts_per_s"], "{:.1f}"), str(r["samples"]),
                 _f(r.get("speedup_vs_baseline"), "{:.1f}x")] for k, r in table.items()]
        out += [f"### Batch {batch}", "", md_table(["candidate", "ctx", "runs on", "p50 ms", "p95 ms", "p99 ms",
                                                    "prompts/s", "calls", "x vs baseline"], rows, "lrlrrrrrr"), ""]
    tok = lat.get("tokenizer")
    if tok:
        rows = [[k.split("_")[1], _f(v["cold"]["p50_ms"], "{:.3f}"), _f(v["warm"]["p50_ms"], "{:.4f}")]
                for k, v in tok.items() if k.startswith("context_")]
        out += ["### Tokenizer (per prompt, not included above)", "", tok["method"] + ".", "",
                md_table(["ctx", "cold p50 ms", "warm p50 ms"], rows, "rrr"), ""]
    mem = results["memory"]
    rows = []
    for k, st in mem["static"].items():
        dy = mem["dynamic"].get(k, {})
        dtypes = ", ".join(f"{d} {b / MB:.1f}" for d, b in (st.get("weights_bytes_by_dtype") or {}).items())
        rows.append([k, _f(st["weights_bytes"] / MB if st.get("weights_bytes") else None, "{:.1f}"), dtypes,
                     _f(st.get("bundle_bytes", 0) / MB if st.get("bundle_bytes") else None, "{:.1f}"),
                     _f(st.get("weights_ratio_vs_baseline"), "{:.1f}x"), _f(dy.get("peak_rss_mb"), "{:.0f}"),
                     _f(dy.get("peak_rss_ratio_vs_baseline"), "{:.1f}x"),
                     str(dy.get("child_torch_imported", "-"))])
    out += ["## Memory", "", "Static: weights by dtype (torch state dict, or the ONNX graph's initializers) and "
            "every file of a bundle. Dynamic: " + mem["dynamic_method"] + ".", "",
            md_table(["candidate", "weights MB", "by dtype (MB)", "bundle MB", "weights x smaller", "peak RSS MB",
                      "x less RSS", "torch imported"], rows, "lrlrrrrl"), ""]
    acc = results["accuracy"]
    rows = [[k, str(r["compared_positions"]), _f(r["mean_token_cosine"], "{:.4f}"),
             _f(r["worst_token_cosine"], "{:.4f}"), _f(r["mse"], "{:.4g}"), _f(r["pooled_cosine_mean"], "{:.4f}"),
             _f(r["retrieval_top1"], "{:.3f}"), _f(r["retrieval_top5"], "{:.3f}"), str(r["truncated_at_candidate"])]
            for k, r in acc["rows"].items()]
    out += [f"## Embedding accuracy ({acc['prompts']} eval prompts)", "", acc["method"], "",
            md_table(["candidate", "positions", "mean token cos", "worst", "MSE", "pooled cos", "retrieval top-1",
                      "top-5", "prompts filling ctx"], rows, "lrrrrrrrr"), ""]
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
                md_table(["candidate", "prompts", "mean mask IoU", "IoU >= 0.95", "top-1 mask IoU", "count agrees",
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
        out += ["### Per prompt", "", md_table(["candidate", "image", "prompt", "teacher dets", "cand dets",
                                                "mask IoU", "top-1 mask IoU", "box IoU", "top-1 score diff"],
                                               rows, "lllrrrrrr"), ""]
    for name in plots:
        out.append(f"![{name}]({name})")
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
    sizes = [static[k].get("bundle_bytes", static[k]["weights_bytes"]) / MB for k in keys]
    axes[1].bar(keys, sizes, color="tab:gray")
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
