"""The named steps of one ``edgeseg bench`` run; each reads the :class:`Run` and returns its results section."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgeseg.bench import accuracy, env, gemm, latency, memory
from edgeseg.bench.models import DYNAMIC, FIXED, Model
from edgeseg.bench.progress import bar, spaced
from edgeseg.runtime.base import DEFAULT_BATCH

log = logging.getLogger(__name__)

PROMPT = "a player in white"
BATCH_EXTRA = ["red car", "dog", "person holding an umbrella", "traffic light", "a cat on a sofa",
               "yellow school bus", "the left zebra"]
#: every latency row gets ``speedup_vs_<name>`` = that baseline's p50 / the row's p50 (same batch, same run)
RATIO_REFERENCES = {"fixed": FIXED, "dynamic": DYNAMIC}


@dataclass
class Run:
    opts: Any  # BenchOptions
    models: dict[str, Model]
    evaluation: list[str]
    images: list[Any] | None
    results: dict[str, Any]
    encoded: dict[str, Any] = field(default_factory=dict)  # key -> Encoded of the accuracy prompts

    @property
    def teacher(self) -> Any:
        return self.models[FIXED].torch_model


def batch_prompts(batches: list[int], evaluation: list[str]) -> dict[int, list[str]]:
    extra = BATCH_EXTRA + list(evaluation[:max(batches)])
    return {b: ([PROMPT] + extra)[:b] for b in batches}


def latency_phase(run: Run) -> dict[str, Any]:
    opts = run.opts
    prompts = batch_prompts(list(opts.batches), run.evaluation)
    cands = []
    for model in run.models.values():
        ids = {b: model.ids(prompts[b]) for b in opts.batches}
        cands.append(latency.Candidate(model.key, model.facts["label"], model.context_length,
                                       {b: model.prepare(ids[b]) for b in opts.batches}, model.sync,
                                       {b: int(ids[b].shape[1]) for b in opts.batches}))
    log.info("latency: %d models, batches %s, %d rounds of blocks", len(cands), list(opts.batches), opts.rounds)
    meter = env.CpuMeter()
    with bar(opts.rounds, "latency rounds", "round") as progress:
        lat = latency.block_latency(cands, opts.batches, opts.rounds, warmup=opts.warmup, block_s=opts.block_s,
                                    pause_s=opts.pause_s, progress=lambda done, total: progress.update(1))
    for name, reference in RATIO_REFERENCES.items():
        latency.add_ratios(lat["batches"], reference, f"speedup_vs_{name}")
    lat.update({"background_cpu": meter.stop(), "threads": opts.threads, "ratio_references": RATIO_REFERENCES,
                "execution_providers": {k: m.facts["execution_provider"] for k, m in run.models.items()},
                "batch_prompts": {str(b): prompts[b] for b in opts.batches}})
    contexts = sorted({m.context_length for m in run.models.values()})
    lat["tokenizer"] = latency.tokenizer_timing(spaced(run.evaluation, 200), PROMPT, contexts)
    return lat


def _counted(model: Model, run: Run) -> dict[str, Any] | None:
    """MACs per token of a model's weight products (torch modules, or the bundle's ONNX graph)."""
    if model.torch_model is not None:
        source = model.extra.get("count_from", model.torch_model)
        return gemm.count(gemm.torch_matrices(source))
    path = model.runner.bundle / model.runner.manifest["model"]
    return gemm.count(gemm.onnx_matrices(path)) if path.suffix == ".onnx" else None


def efficiency_phase(run: Run, rates: gemm.RateCache | None = None) -> dict[str, Any]:
    """Each candidate's p50 against this machine's GEMM floor for its MACs (:mod:`edgeseg.bench.gemm`)."""
    rates = rates or gemm.RateCache(run.opts.threads, run.opts.gemm_measure or gemm.gemm_rates)
    lat = run.results["latency"]["batches"]
    rows: dict[str, dict[str, Any]] = {}
    for key, model in run.models.items():
        counted = _counted(model, run) if model.kernel else None
        for batch, table in lat.items():
            row = table[key]
            if counted is None or counted["dominant"] is None:
                rows.setdefault(batch, {})[key] = {"efficiency": None, "why": "no CPU GEMM rate for this backend"}
                continue
            call = gemm.macs(counted, int(batch) * row["tokens"])
            rate = rates.rate(call["shape"], model.kernel)
            floor = gemm.floor_ms(call["macs_per_call"], rate)
            rows.setdefault(batch, {})[key] = {
                **call, "kernel": model.kernel, "gmac_per_s": rate, "floor_ms": floor,
                "efficiency": floor / row["p50_ms"], "macs_per_token": counted["macs_per_token"]}
    return {"method": gemm.__doc__.split("\n\n", 1)[1].strip().replace("\n", " "), "rates_how": gemm.RATES_HOW,
            "rates": rates.rates, "batches": rows}


def _static(model: Model) -> dict[str, Any]:
    if model.torch_model is not None:
        return memory.torch_weights(model.torch_model)
    path = model.runner.bundle
    model_file = path / model.runner.manifest["model"]
    info = memory.onnx_weights(model_file) if model_file.suffix == ".onnx" else {
        "weights_bytes": model_file.stat().st_size if model_file.is_file() else None,
        "weights_bytes_by_dtype": None, "how": "model file size (not an ONNX graph)"}
    return {**info, **memory.bundle_bytes(path)}


#: prompts per model call in the memory children: what each path does by default (the runtime's
#: ``Runner.encode`` and ``edgeseg encode --bundle`` use DEFAULT_BATCH; ``encode_prompts`` uses 64)
TORCH_BATCH = 64


def _children(run: Run, prompts_file: Any) -> list[tuple[str, list[str]]]:
    opts, children = run.opts, []
    for key, model in run.models.items():
        if model.shares_weights_with or model.extra.get("no_child"):
            continue
        if model.runner is not None:
            children.append((key, memory.bundle_child(model.runner.bundle, prompts_file, opts.threads,
                                                      DEFAULT_BATCH)))
        elif model.extra.get("child_encoder"):
            checkpoint = opts.sam3_checkpoint if key == FIXED else model.extra.get("child_checkpoint")
            children.append((key, memory.torch_child(model.extra["child_encoder"], checkpoint, prompts_file,
                                                     opts.threads, TORCH_BATCH, opts.device)))
    return children


def memory_phase(run: Run) -> dict[str, Any]:
    opts = run.opts
    static = {k: _static(m) for k, m in run.models.items() if not m.shares_weights_with}
    base_w = static[FIXED]["weights_bytes"]
    for row in static.values():
        row["weights_ratio_vs_baseline"] = memory.ratio(base_w, row["weights_bytes"])
        if "bundle_bytes" in row:
            row["bundle_ratio_vs_baseline"] = memory.ratio(base_w, row["bundle_bytes"])
    dynamic: dict[str, Any] = {}
    if opts.memory:
        out = opts.out
        prompts_file = out.parent / f".{out.name}.rss-prompts.txt"
        prompts_file.write_text("\n".join(spaced(run.evaluation, opts.rss_prompts)) + "\n", encoding="utf-8")
        children = _children(run, prompts_file)
        try:
            with bar(len(children), "memory (fresh processes)", "process") as progress:
                for key, command in children:
                    dynamic[key] = memory.run_measured(command)
                    progress.update(1)
        finally:
            prompts_file.unlink(missing_ok=True)
        base = dynamic.get(FIXED, {})
        for row in dynamic.values():
            row["peak_rss_ratio_vs_baseline"] = memory.ratio(base.get("peak_rss_bytes"), row["peak_rss_bytes"])
            row["gpu_peak_ratio_vs_baseline"] = memory.ratio(base.get("child_gpu_peak_allocated_bytes"),
                                                             row.get("child_gpu_peak_allocated_bytes"))
    return {"static": static, "dynamic": dynamic, "not_measured": [k for k in run.models if k not in dynamic],
            "dynamic_method": (f"peak RSS of a fresh process (psutil) that imports, loads one model and encodes the "
                               f"same {opts.rss_prompts} eval prompts with {opts.threads} threads, in the batches each "
                               f"path uses by default (bundles: Runner.encode's {DEFAULT_BATCH}, torch encoders: "
                               f"encode_prompts' {TORCH_BATCH}); torch "
                               f"children also report torch.cuda.max_memory_allocated on CUDA; dynamic-length "
                               f"variants share their fixed-length model's weights and are not run apart")}


def accuracy_phase(run: Run) -> dict[str, Any]:
    prompts = spaced(run.evaluation, run.opts.eval_prompts)
    with bar(len(run.models), f"embedding accuracy ({len(prompts)} eval prompts)", "encoder") as progress:
        for key, model in run.models.items():
            run.encoded[key] = model.encode(prompts)
            progress.update(1)
    return {"method": accuracy.METHOD, "split": "eval", "prompts": len(prompts),
            "selection": "evenly spaced prompts of the eval split (offset half a step)",
            "rows": {key: accuracy.compare(run.encoded[key], run.encoded[FIXED]) for key in run.models},
            "weights": run.results["weights"] if run.results.get("random_weights") else None}


def same_tokens(tok_a: Any, ids_a: np.ndarray, tok_b: Any, ids_b: np.ndarray) -> np.ndarray:
    """Per row: do two tokenizers (e.g. full and pruned vocabularies) give the same token strings?"""
    dec_a, dec_b = tok_a.decoder, tok_b.decoder
    return np.array([[dec_a[int(i)] for i in a if i] == [dec_b[int(i)] for i in b if i] for a, b in zip(ids_a, ids_b)],
                    dtype=bool)


def fidelity_pairs(models: dict[str, Model]) -> list[tuple[str, str]]:
    """(derived bundle, its FP32 source bundle) for every candidate made from another candidate's model."""
    by_sha = {m.facts.get("model_sha256"): k for k, m in models.items() if m.runner is not None}
    return [(k, by_sha[m.facts["source_model_sha256"]]) for k, m in models.items()
            if m.runner is not None and m.facts.get("source_model_sha256") in by_sha]


def fidelity_phase(run: Run) -> dict[str, Any]:
    """Each INT8/FP16 bundle vs the FP32 bundle it was made from, on the accuracy prompts (and its manifest)."""
    from edgeseg.outputs import token_fidelity

    rows = {}
    for key, source in fidelity_pairs(run.models):
        got, ref = run.encoded[key], run.encoded[source]
        same = same_tokens(run.models[key].tokenizer, got.input_ids, run.models[source].tokenizer, ref.input_ids)
        recomputed = token_fidelity(got.memory[same], ref.memory[same], ref.mask[same])
        manifest = run.models[key].runner.manifest
        rows[key] = {"vs": source, "manifest": manifest.get("fidelity"),
                     "recomputed": {**recomputed, "resegmented_prompts": int((~same).sum()),
                                    "masks_equal": bool(np.array_equal(ref.mask[same], got.mask[same]))},
                     "self_check_vs_torch_reference": run.models[key].runner.self_check(),
                     "excluded_layers": manifest.get("excluded_layers", []),
                     "layers": (manifest.get("quantization") or {}).get("layers")}
    return {"method": ("derived bundle vs the FP32 bundle it was made from (manifest source_bundle), both on their "
                       "runtime, on the accuracy prompts (offset half a step from quantize's gate prompts); "
                       "edgeseg.outputs.token_fidelity; prompts a pruned vocabulary segments differently are left out "
                       "and counted; 'manifest' = the gate run quantize recorded; self_check = the bundle vs the torch "
                       "FP32 reference outputs it carries"), "rows": rows}


def timed(phases: dict[str, float], name: str, step: Callable[[], Any]) -> Any:
    start = time.perf_counter()
    try:
        return step()
    finally:
        phases[f"{name}_s"] = time.perf_counter() - start


def segmentation_phase(run: Run) -> dict[str, Any]:
    """Meta's SAM3 image model grounding every prompt with SAM3's own and each model's text features."""
    from edgeseg.bench import segmentation

    opts = run.opts
    if run.images is None:
        return {"skipped": "--skip-segmentation"}
    t0 = time.perf_counter()
    if opts.image_model is not None:
        image_model = opts.image_model
    else:
        log.info("building Meta's SAM3 image model (FP32, CPU)")
        image_model = segmentation.build_image_model(opts.sam3_checkpoint, run.teacher.state_dict())
    build_s = time.perf_counter() - t0

    def encoder_fn(model: Model) -> Callable[[list[str]], tuple[np.ndarray, np.ndarray]]:
        def fn(prompts: list[str]) -> tuple[np.ndarray, np.ndarray]:
            enc = model.encode(prompts)
            return enc.memory, enc.mask
        return fn

    fns = {key: encoder_fn(model) for key, model in run.models.items()}
    total = sum(len(i.prompts) for i in run.images) + len(run.images)
    with bar(total, f"segmentation ({len(run.images)} images, SAM3 image model)", "step") as progress:
        seg = segmentation.run_segmentation(
            image_model, run.images, fns, resolution=opts.resolution or segmentation.RESOLUTION,
            progress=lambda message: (log.info("segmentation: %s", message), progress.set_postfix_str(message[:40]),
                                      progress.update(1)))
    seg.update({"model_build_s": build_s, "method": segmentation.__doc__.split("\n\n", 1)[1].strip().replace("\n", " "),
                "image_model": ("Meta sam3 " + str(run.models[FIXED].facts.get("weights"))
                                + ("; reduced test configuration" if opts.image_model is not None else "")),
                "baseline_through_adapter": (f"'{FIXED}' in per_prompt is the baseline teacher's own features injected "
                                             "through the adapter: it checks the substitution (expect IoU 1)"),
                "weights": run.results["weights"] if opts.sam3_checkpoint is None
                else "sam3 checkpoint " + str(opts.sam3_checkpoint)})
    seg["end_to_end"] = end_to_end(seg, segmentation.component_params(image_model))
    return seg


def video_step(run: Run) -> dict[str, Any] | None:
    """``--video``: tracking agreement through Meta's SAM3 video model (:mod:`edgeseg.bench.video`)."""
    if run.opts.video is None:
        return None
    from edgeseg.bench.video import video_phase

    keys = list(run.models)  # every model is a text source (Model.encode); the baseline first
    return video_phase(run.opts, run.teacher, keys, {}, run.models, lambda message: log.info("%s", message))


def end_to_end(seg: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """Image encoder, text encoder and grounding heads' share of one image and one prompt."""
    timing = seg["timing"]
    image_s, grounding = timing["image_encoder_s_per_image"], timing["teacher_grounding_s_per_prompt"]
    text_s = {FIXED + " (SAM3's own)": timing["teacher_text_s_per_prompt"], **timing["candidate_text_s_per_prompt"]}
    per_prompt = {}
    for key, t in text_s.items():
        if t is not None:
            total_s = image_s + t + grounding
            per_prompt[key] = {"image_encoder_s": image_s, "text_encoder_s": t, "grounding_s": grounding,
                               "total_s": total_s, "text_share": t / total_s, "image_share": image_s / total_s}
    return {"params": params, "per_prompt_s": per_prompt,
            "how": ("one image and one prompt: SAM3's image encoder (measured per image), the text encoder (measured "
                    "per prompt inside the pipeline) and the grounding heads; text_share = text / total. "
                    "params/bytes: Meta's model's parameter counts (FP32 = 4 bytes each)")}
