"""``edgeseg bench``: candidates against the FP32 SAM3 text encoder, every figure with how it was measured.

One run measures, side by side and in one process where that is fair:

- latency (:mod:`edgeseg.bench.latency`): interleaved rounds, p50/p95/p99 and throughput per batch,
  tokenizer apart, ratios to the baseline measured in the same rounds;
- memory (:mod:`edgeseg.bench.memory`): weights by dtype, bundle bytes, peak RSS of fresh processes;
- embedding accuracy (:mod:`edgeseg.bench.accuracy`) on the held-out ``eval`` split;
- segmentation accuracy (:mod:`edgeseg.bench.segmentation`) through Meta's SAM3 image model;
- reproducibility (:mod:`edgeseg.bench.env`): machine, versions, git state, checkpoints, command.

Outputs: ``results.json``, ``report.md`` and PNG plots (:mod:`edgeseg.bench.report`).
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgeseg.errors import EdgesegError

log = logging.getLogger(__name__)

SCHEMA = "edgeseg.bench/1"
BASELINES = ("sam3-fp32",)
RANDOM_NOTE = "RANDOM/SYNTHETIC WEIGHTS: no real checkpoint; accuracy figures are not meaningful"
PROMPT = "a player in white"
BATCH_EXTRA = ["red car", "dog", "person holding an umbrella", "traffic light", "a cat on a sofa",
               "yellow school bus", "the left zebra"]


@dataclass
class BenchOptions:
    candidates: Sequence[str]
    out: Path
    baseline: str = "sam3-fp32"
    batches: Sequence[int] = (1, 8)
    threads: int = 2
    sam3_checkpoint: Path | None = None
    images: Path | None = None
    prompts: Path | None = None
    skip_segmentation: bool = False
    rounds: int = 10
    warmup: int = 2
    eval_prompts: int = 256
    rss_prompts: int = 100
    memory: bool = True
    max_images: int | None = None
    device: str = "cpu"
    command: str = ""
    suite: str | None = None
    # Injected models (tests, notebooks): the teacher, torch encoders by name, and SAM3's image model.
    teacher: Any = None
    encoders: dict[str, Any] = field(default_factory=dict)
    image_model: Any = None
    resolution: int | None = None
    # --video (edgeseg.bench.video): a clip or frames folder, the frames used, an injected video model
    video: Path | None = None
    video_frames: int = 8
    video_model: Any = None


@dataclass
class Resolved:
    key: str
    kind: str  # torch | bundle
    path: Path | None = None
    name: str | None = None


def resolve_candidates(opts: BenchOptions) -> list[Resolved]:
    """Check every input before any long work: bundles, encoder names, baseline, images, prompts."""
    from edgeseg.encoders import list_encoders

    if opts.baseline not in BASELINES:
        raise EdgesegError(f"unknown baseline {opts.baseline!r}; known: {', '.join(BASELINES)}")
    if not opts.candidates:
        raise EdgesegError("give at least one bundle directory or encoder name to benchmark")
    if opts.sam3_checkpoint is not None and not Path(opts.sam3_checkpoint).is_file():
        raise EdgesegError(f"--sam3-checkpoint {opts.sam3_checkpoint} does not exist")
    resolved: list[Resolved] = []
    names = set(list_encoders()) | set(opts.encoders)
    for item in opts.candidates:
        path = Path(item)
        if path.exists() or os.sep in str(item):
            if not path.is_dir():
                raise EdgesegError(f"{item} is not a bundle directory")
            if not (path / "manifest.json").is_file():
                raise EdgesegError(f"{item} is not a bundle: it has no manifest.json")
            key = path.resolve().name
            resolved.append(Resolved(key, "bundle", path=path))
        elif item in names:
            resolved.append(Resolved(f"{item}-torch", "torch", name=item))
        else:
            raise EdgesegError(f"{item!r} is neither a bundle directory nor an encoder name "
                               f"({', '.join(sorted(names))})")
    keys = [r.key for r in resolved]
    if len(set(keys)) != len(keys) or opts.baseline in keys:
        raise EdgesegError(f"candidate names must be unique and differ from the baseline: {', '.join(keys)}")
    if opts.images is not None and opts.prompts is None:
        raise EdgesegError("--images needs --prompts FILE (image<TAB>prompt lines or a JSON map)")
    if not opts.batches or any(b < 1 for b in opts.batches):
        raise EdgesegError("--batch takes positive batch sizes, e.g. 1,8")
    return resolved


def load_images(opts: BenchOptions) -> list[Any]:
    from edgeseg.bench import segmentation

    prompt_map = segmentation.read_prompt_map(opts.prompts) if opts.prompts is not None else None
    if opts.images is not None:
        items = segmentation.user_images(opts.images, prompt_map)
    else:
        items = segmentation.default_images()
        if prompt_map is not None:
            for item in items:
                item.prompts = prompt_map.get(item.name, []) + prompt_map.get("*", [])
            items = [i for i in items if i.prompts]
            if not items:
                raise EdgesegError(f"no prompts in {opts.prompts} name a default image "
                                   f"({', '.join(i.name for i in segmentation.default_images())})")
    return items[:opts.max_images] if opts.max_images else items


class _LineProgress:
    """Progress for logs (stderr not a terminal): one line per step, at most every ``every_s`` seconds."""

    def __init__(self, total: int, desc: str, every_s: float = 30.0):
        self.total, self.desc, self.every_s = total, desc, every_s
        self.done, self.postfix = 0, ""
        self.started = self.last = time.perf_counter()

    def __enter__(self) -> _LineProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def set_postfix_str(self, text: str) -> None:
        self.postfix = text

    def update(self, n: int = 1) -> None:
        self.done += n
        now = time.perf_counter()
        if now - self.last >= self.every_s or self.done >= self.total:
            self.last = now
            sys.stderr.write(f"edgeseg: {self.desc}: {self.done}/{self.total} after {now - self.started:.0f} s"
                             + (f" ({self.postfix})" if self.postfix else "") + "\n")
            sys.stderr.flush()


def _bar(total: int, desc: str, unit: str = "it") -> Any:
    """A tqdm bar on a terminal; plain progress lines when stderr goes to a log."""
    if not sys.stderr.isatty():
        return _LineProgress(total, desc)
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, leave=False)


def _spaced(prompts: Sequence[str], count: int) -> list[str]:
    step = max(1, len(prompts) // max(1, count))
    return list(prompts[step // 2::step][:count])


def prepare(opts: BenchOptions) -> tuple[list[Resolved], list[Any] | None]:
    """Every check on the inputs that needs no model: candidates, baseline, images and prompts, output folder."""
    resolved = resolve_candidates(opts)
    images = None if opts.skip_segmentation else load_images(opts)
    if opts.video is not None:
        from edgeseg.bench.video import load_clip

        load_clip(opts.video, opts.video_frames)  # decodable, before any long work
    out = Path(opts.out)
    if out.exists() and not out.is_dir():
        raise EdgesegError(f"--out {out} exists and is not a folder")
    if not out.absolute().parent.is_dir():
        raise EdgesegError(f"output folder {out.absolute().parent} does not exist")
    return resolved, images


def run_bench(opts: BenchOptions, prepared: tuple[list[Resolved], list[Any] | None] | None = None) -> dict[str, Any]:
    """Run the benchmark and write ``results.json``, ``report.md`` and plots into ``opts.out``."""
    import torch

    from edgeseg.bench import accuracy, env, latency, memory, report
    from edgeseg.checkpoints import load_encoder
    from edgeseg.corpus import load_split
    from edgeseg.encode import encode_prompts
    from edgeseg.fileio import sha256_file
    from edgeseg.runtime import load
    from edgeseg.tokenizer import get_tokenizer

    started = time.perf_counter()
    resolved, images = prepared if prepared is not None else prepare(opts)
    out = Path(opts.out)
    torch.set_num_threads(opts.threads)
    device = torch.device(opts.device)
    random_weights = opts.sam3_checkpoint is None

    # -- models ----------------------------------------------------------------------------------
    if opts.teacher is not None:
        teacher = opts.teacher.to(device).eval()
    else:
        teacher = load_encoder("sam3", opts.sam3_checkpoint, device=device, seed=0)
    runners: dict[str, Any] = {}
    torch_models: dict[str, Any] = {}
    facts: dict[str, dict[str, Any]] = {opts.baseline: {
        "kind": "torch", "label": "SAM3 text encoder FP32 (torch, baseline)", "encoder": "sam3",
        "context_length": int(teacher.context_length), "precision": "fp32", "backend": "torch",
        "execution_provider": f"torch {device.type}", "semantics": teacher.padding.semantics,
        "checkpoint": (sha256_file(opts.sam3_checkpoint) if opts.sam3_checkpoint else "random"),
        "weights": "checkpoint" if opts.sam3_checkpoint else "random (seed 0)"}}
    for item in resolved:
        if item.kind == "bundle":
            runner = load(item.path, threads=opts.threads)
            runners[item.key] = runner
            manifest = runner.manifest
            session = getattr(runner, "session", None)
            providers = session.get_providers() if session is not None else None
            facts[item.key] = {
                "kind": "bundle", "path": str(item.path), "label": f"{manifest['encoder']} {manifest['precision']} "
                f"bundle ({manifest['backend']})", "encoder": manifest["encoder"],
                "context_length": int(manifest["context_length"]), "precision": manifest["precision"],
                "backend": manifest["backend"], "target": manifest.get("target"),
                "execution_provider": ",".join(providers) if providers else manifest["backend"],
                "semantics": manifest.get("semantics", "efficientsam3"),
                "checkpoint": (manifest.get("source") or {}).get("checkpoint_sha256", "unknown"),
                "model_sha256": manifest["files"][manifest["model"]]["sha256"]}
        else:
            model = opts.encoders.get(item.name)
            model = model.to(device).eval() if model is not None else load_encoder(item.name, device=device, seed=0)
            torch_models[item.key] = model
            facts[item.key] = {"kind": "torch", "label": f"{item.name} FP32 (torch)", "encoder": item.name,
                               "context_length": int(model.context_length), "precision": "fp32",
                               "backend": "torch", "execution_provider": f"torch {device.type}",
                               "semantics": model.padding.semantics,
                               "checkpoint": "random", "weights": "random (seed 0)"}
    any_random = random_weights or any(f.get("checkpoint") in ("random", "unknown") for f in facts.values())
    results: dict[str, Any] = {
        "schema": SCHEMA, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "command": opts.command,
        "suite": opts.suite, "weights": RANDOM_NOTE if any_random else "checkpoints as listed per candidate",
        "random_weights": any_random, "baseline": opts.baseline, "environment": env.environment(opts.threads),
        "candidates": facts,
        "checkpoints": {k: f.get("checkpoint") for k, f in facts.items()},
        "units": {"*_ms": "milliseconds", "*_s": "seconds", "*_bytes": "bytes", "*_mb": "decimal MB (1e6 bytes)",
                  "speedup_vs_baseline": "baseline p50 / candidate p50 (same batch, same run)",
                  "*_ratio_vs_baseline": "baseline value / candidate value (how many times smaller)"},
    }
    keys = [opts.baseline] + [r.key for r in resolved]
    phases: dict[str, float] = {"load_s": time.perf_counter() - started}
    results["phase_wall_s"] = phases
    mark = time.perf_counter()

    # -- latency -----------------------------------------------------------------------------------
    tok = get_tokenizer()
    evaluation = load_split("eval")
    extra = BATCH_EXTRA + [p for p in evaluation[:max(opts.batches)]]
    prompts = {b: ([PROMPT] + extra)[:b] for b in opts.batches}
    sync = torch.cuda.synchronize if device.type == "cuda" else None

    def torch_call(model: Any, b: int) -> Callable[[], Any]:
        ids = torch.from_numpy(tok(prompts[b], model.context_length, model.pad_id).ids).to(device)

        def call() -> Any:
            with torch.inference_mode():
                return model(ids)
        return call

    cands = [latency.Candidate(opts.baseline, facts[opts.baseline]["label"], teacher.context_length,
                               {b: torch_call(teacher, b) for b in opts.batches}, "baseline", sync)]
    for key in keys[1:]:
        if key in torch_models:
            model = torch_models[key]
            cands.append(latency.Candidate(key, facts[key]["label"], model.context_length,
                                           {b: torch_call(model, b) for b in opts.batches}, "candidates", sync))
        else:
            runner = runners[key]
            ids = {b: runner.tokenizer(prompts[b], runner.context_length).ids for b in opts.batches}
            cands.append(latency.Candidate(key, facts[key]["label"], runner.context_length,
                                           {b: (lambda r=runner, x=ids[b]: r.infer(x)) for b in opts.batches},
                                           "candidates"))
    log.info("latency: %d candidates, batches %s, %d rounds", len(cands), list(opts.batches), opts.rounds)
    meter = env.CpuMeter()
    with _bar(opts.rounds, "latency rounds", "round") as bar:
        lat = latency.interleaved_latency(cands, opts.batches, opts.rounds, warmup=opts.warmup,
                                          progress=lambda done, total: bar.update(1))
    latency.add_ratios(lat["batches"], opts.baseline, "speedup_vs_baseline")
    lat["background_cpu"] = meter.stop()
    lat["threads"] = opts.threads
    lat["execution_providers"] = {k: facts[k]["execution_provider"] for k in keys}
    lat["batch_prompts"] = {str(b): prompts[b] for b in opts.batches}
    contexts = sorted({c.context_length for c in cands})
    lat["tokenizer"] = latency.tokenizer_timing(_spaced(evaluation, 200), PROMPT, contexts)
    results["latency"] = lat
    phases["latency_s"], mark = time.perf_counter() - mark, time.perf_counter()

    # -- memory --------------------------------------------------------------------------------------
    static: dict[str, Any] = {opts.baseline: memory.torch_weights(teacher)}
    for key in keys[1:]:
        if key in torch_models:
            static[key] = memory.torch_weights(torch_models[key])
        else:
            path = runners[key].bundle
            model_file = path / runners[key].manifest["model"]
            info = memory.onnx_weights(model_file) if model_file.suffix == ".onnx" else {
                "weights_bytes": model_file.stat().st_size if model_file.is_file() else None,
                "weights_bytes_by_dtype": None, "how": "model file size (not an ONNX graph)"}
            static[key] = {**info, **memory.bundle_bytes(path)}
    base_w = static[opts.baseline]["weights_bytes"]
    for row in static.values():
        row["weights_ratio_vs_baseline"] = memory.ratio(base_w, row["weights_bytes"])
        if "bundle_bytes" in row:
            row["bundle_ratio_vs_baseline"] = memory.ratio(base_w, row["bundle_bytes"])
    dynamic: dict[str, Any] = {}
    if opts.memory:
        prompts_file = out.parent / f".{out.name}.rss-prompts.txt"
        prompts_file.write_text("\n".join(_spaced(evaluation, opts.rss_prompts)) + "\n", encoding="utf-8")
        children = []
        if opts.teacher is None:
            children.append((opts.baseline, memory.torch_child("sam3", opts.sam3_checkpoint, prompts_file,
                                                               opts.threads, 64, opts.device)))
        for key in keys[1:]:
            if key in runners:
                children.append((key, memory.bundle_child(runners[key].bundle, prompts_file, opts.threads, 64)))
            elif facts[key]["encoder"] not in opts.encoders:
                children.append((key, memory.torch_child(facts[key]["encoder"], None, prompts_file, opts.threads,
                                                         64, opts.device)))
        try:
            with _bar(len(children), "memory (fresh processes)", "process") as bar:
                for key, command in children:
                    dynamic[key] = memory.run_measured(command)
                    bar.update(1)
        finally:
            prompts_file.unlink(missing_ok=True)
        base_rss = dynamic.get(opts.baseline, {}).get("peak_rss_kb")
        for row in dynamic.values():
            row["peak_rss_ratio_vs_baseline"] = memory.ratio(base_rss, row["peak_rss_kb"])
            gpu = row.get("child_gpu_peak_allocated_bytes")
            base_gpu = dynamic.get(opts.baseline, {}).get("child_gpu_peak_allocated_bytes")
            row["gpu_peak_ratio_vs_baseline"] = memory.ratio(base_gpu, gpu)
    results["memory"] = {
        "static": static, "dynamic": dynamic,
        "dynamic_method": (f"peak RSS (kernel high-water mark) of a fresh process that imports, loads one model and "
                           f"encodes the same {opts.rss_prompts} eval prompts at batch 64 with {opts.threads} "
                           f"threads; torch children also report torch.cuda.max_memory_allocated on CUDA"),
        "not_measured": [k for k in keys if k not in dynamic] if opts.memory else keys,
    }
    phases["memory_s"], mark = time.perf_counter() - mark, time.perf_counter()

    # -- embedding accuracy ---------------------------------------------------------------------------
    eval_prompts = _spaced(evaluation, opts.eval_prompts)
    with _bar(len(keys), f"embedding accuracy ({len(eval_prompts)} eval prompts)", "encoder") as bar:
        encoded = {opts.baseline: encode_prompts(teacher, eval_prompts)}
        bar.update(1)
        for key in keys[1:]:
            encoded[key] = (encode_prompts(torch_models[key], eval_prompts) if key in torch_models
                            else runners[key].encode(eval_prompts))
            bar.update(1)
    results["accuracy"] = {
        "method": accuracy.METHOD, "split": "eval", "prompts": len(eval_prompts),
        "selection": "evenly spaced prompts of edgeseg/data/prompts/eval.txt (offset half a step)",
        "rows": {key: accuracy.compare(encoded[key], encoded[opts.baseline]) for key in keys},
        "weights": RANDOM_NOTE if any_random else None,
    }
    del encoded
    phases["accuracy_s"], mark = time.perf_counter() - mark, time.perf_counter()
    log.info("latency, memory and embedding accuracy took %.1f min", (mark - started) / 60)

    # -- segmentation ---------------------------------------------------------------------------------
    if images is None:
        results["segmentation"] = {"skipped": "--skip-segmentation"}
    else:
        results["segmentation"] = segmentation_phase(opts, teacher, keys, torch_models, runners, images, facts)
    phases["segmentation_s"] = time.perf_counter() - mark
    if opts.video is not None:
        from edgeseg.bench.video import video_phase

        mark = time.perf_counter()
        results["video"] = video_phase(opts, teacher, keys, torch_models, runners, lambda m: log.info("%s", m))
        phases["video_s"] = time.perf_counter() - mark
    for runner in runners.values():
        runner.deactivate()
    results["runtime_s"] = time.perf_counter() - started
    report.write_outputs(results, out)
    return results


def segmentation_phase(opts: BenchOptions, teacher: Any, keys: list[str], torch_models: dict[str, Any],
                       runners: dict[str, Any], images: list[Any], facts: dict[str, Any]) -> dict[str, Any]:
    import torch

    from edgeseg.bench import segmentation
    from edgeseg.encode import encode_prompts

    t0 = time.perf_counter()
    if opts.image_model is not None:
        model = opts.image_model
    else:
        log.info("building Meta's SAM3 image model (FP32, CPU)")
        model = segmentation.build_image_model(opts.sam3_checkpoint, teacher.state_dict())
    build_s = time.perf_counter() - t0
    resolution = opts.resolution or segmentation.RESOLUTION

    def torch_fn(model_: Any) -> Callable[[list[str]], tuple[np.ndarray, np.ndarray]]:
        def fn(prompts: list[str]) -> tuple[np.ndarray, np.ndarray]:
            with torch.inference_mode():
                enc = encode_prompts(model_, prompts)
            return enc.memory, enc.mask
        return fn

    def runner_fn(runner: Any) -> Callable[[list[str]], tuple[np.ndarray, np.ndarray]]:
        def fn(prompts: list[str]) -> tuple[np.ndarray, np.ndarray]:
            enc = runner.encode(prompts)
            return enc.memory, enc.mask
        return fn

    fns = {opts.baseline: torch_fn(teacher)}
    for key in keys[1:]:
        fns[key] = torch_fn(torch_models[key]) if key in torch_models else runner_fn(runners[key])
    total = sum(len(i.prompts) for i in images) + len(images)
    with _bar(total, f"segmentation ({len(images)} images, SAM3 image model)", "step") as bar:
        seg = segmentation.run_segmentation(model, images, fns, resolution=resolution,
                                            progress=lambda message: (log.info("segmentation: %s", message),
                                                                      bar.set_postfix_str(message[:40]),
                                                                      bar.update(1)))
    seg["model_build_s"] = build_s
    seg["image_model"] = ("Meta sam3 " + str(facts[opts.baseline].get("weights")) +
                          ("; reduced test configuration" if opts.image_model is not None else ""))
    seg["method"] = segmentation.__doc__.split("\n\n", 1)[1].strip().replace("\n", " ")
    seg["baseline_through_adapter"] = (f"'{opts.baseline}' in per_prompt is the baseline teacher's own features "
                                       "injected through the adapter: it checks the substitution (expect IoU 1)")
    seg["weights"] = RANDOM_NOTE if opts.sam3_checkpoint is None else "sam3 checkpoint " + str(opts.sam3_checkpoint)
    comp = segmentation.component_params(model)
    timing = seg["timing"]
    e2e: dict[str, Any] = {"params": comp, "per_prompt_s": {}}
    image_s = timing["image_encoder_s_per_image"]
    text_s = {opts.baseline + " (SAM3's own)": timing["teacher_text_s_per_prompt"],
              **timing["candidate_text_s_per_prompt"]}
    grounding = timing["teacher_grounding_s_per_prompt"]
    for key, t in text_s.items():
        if t is None:
            continue
        total_s = image_s + t + grounding
        e2e["per_prompt_s"][key] = {"image_encoder_s": image_s, "text_encoder_s": t, "grounding_s": grounding,
                                    "total_s": total_s, "text_share": t / total_s, "image_share": image_s / total_s}
    e2e["how"] = ("one image and one prompt: SAM3's image encoder (measured per image), the text encoder "
                  "(measured per prompt inside the pipeline) and the grounding heads; text_share = text / total. "
                  "params/bytes: Meta's model's parameter counts (FP32 = 4 bytes each)")
    seg["end_to_end"] = e2e
    return seg


__all__ = ["BASELINES", "BenchOptions", "RANDOM_NOTE", "SCHEMA", "prepare", "resolve_candidates", "run_bench"]
