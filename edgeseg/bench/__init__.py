"""``edgeseg bench``: candidates against the SAM3 text encoder, every figure with how it was measured.

One run measures, side by side and in one process where that is fair, against two baselines (the
FP32 teacher in torch at SAM3's fixed context 32, and at each prompt's own length; see
:mod:`edgeseg.bench.models`):

- latency (:mod:`edgeseg.bench.latency`): steady-state blocks in rotated rounds, p50/p95/p99 and
  throughput per batch, first call after switching models apart, tokenizer apart;
- efficiency (:mod:`edgeseg.bench.gemm`): each p50 against this machine's GEMM floor for its MACs;
- memory (:mod:`edgeseg.bench.memory`): weights by dtype, bundle bytes, peak RSS of fresh processes (psutil);
- embedding accuracy (:mod:`edgeseg.bench.accuracy`) on the held-out ``eval`` split, and fidelity of
  each INT8/FP16 bundle against the FP32 bundle it was made from;
- segmentation accuracy (:mod:`edgeseg.bench.segmentation`) through Meta's SAM3 image model;
- bars (:mod:`edgeseg.bench.bars`): thresholds given as data (a suite file) checked on the results;
- reproducibility (:mod:`edgeseg.bench.env`): machine, versions, git state (``dirty``), checkpoints, command.

The steps are named in :data:`PHASES`; optional sections (e.g. prompt banks) join with
:func:`register_section` and are rendered by :func:`edgeseg.bench.report.register_renderer`.
Outputs: ``results.json``, ``report.md`` and PNG plots (:mod:`edgeseg.bench.report`).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeseg.bench import phases
from edgeseg.bench.models import (
    DYNAMIC,
    FIXED,
    TORCH_INT8,
    TORCH_INT8_DYNAMIC,
    Model,
    baselines,
    bundle_model,
    torch_model,
)
from edgeseg.bench.phases import Run
from edgeseg.bench.progress import bar as _bar  # noqa: F401  (the names other modules used before)
from edgeseg.bench.progress import spaced as _spaced  # noqa: F401
from edgeseg.errors import EdgesegError

log = logging.getLogger(__name__)

SCHEMA = "edgeseg.bench/2"
BASELINES = (FIXED,)
MAX_BATCH = 1024  # prompts per timed call: far above any app's batch, below what exhausts memory
RESERVED = (FIXED, DYNAMIC, TORCH_INT8, TORCH_INT8_DYNAMIC)
RANDOM_NOTE = "RANDOM/SYNTHETIC WEIGHTS: no real checkpoint; accuracy figures are not meaningful"


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
    warmup: int = 3
    block_s: float = 0.4  # timed calls per block: about this many seconds
    pause_s: float = 0.1  # pause before each block (the previous runtime's threads park)
    teacher_int8: bool = False  # also torch's dynamic INT8 teacher, fixed and own length
    bars: Sequence[dict[str, Any]] = ()  # thresholds (a suite's "bars"), checked on the results
    suite_run: dict[str, Any] | None = None  # what benchmarks/run_suite.py built for this run
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
    #: checkpoints of torch-encoder candidates by encoder name (``--checkpoint NAME=PATH``); others are random
    checkpoints: dict[str, Path] = field(default_factory=dict)
    image_model: Any = None
    resolution: int | None = None
    gemm_measure: Callable[..., dict[str, Any]] | None = None  # replaces edgeseg.bench.gemm.gemm_rates (tests)
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
    if len(set(keys)) != len(keys) or set(keys) & set(RESERVED):
        raise EdgesegError(f"candidate names must be unique and differ from the baselines ({', '.join(RESERVED)}): "
                           f"{', '.join(keys)}")
    if opts.images is not None and opts.prompts is None:
        raise EdgesegError("--images needs --prompts FILE (image<TAB>prompt lines or a JSON map)")
    if not opts.batches or any(not 1 <= b <= MAX_BATCH for b in opts.batches):
        raise EdgesegError(f"--batch takes batch sizes from 1 to {MAX_BATCH}, e.g. 1,8; got "
                           f"{','.join(map(str, opts.batches)) or 'none'}")
    unused = sorted(set(opts.checkpoints) - {r.name for r in resolved if r.kind == "torch"})
    if unused:
        raise EdgesegError(f"--checkpoint {', '.join(unused)}: not a torch encoder among the candidates")
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


def load_models(opts: BenchOptions, resolved: list[Resolved]) -> dict[str, Model]:
    """The baselines (torch teacher, fixed and own length) then every candidate, in the order given."""
    import torch

    from edgeseg.checkpoints import fingerprint, load_encoder
    from edgeseg.fileio import sha256_file

    device = torch.device(opts.device)
    if opts.teacher is not None:
        teacher = opts.teacher.to(device).eval()
    else:
        teacher = load_encoder("sam3", opts.sam3_checkpoint, device=device, seed=0)
    facts = {"encoder": "sam3", "checkpoint": sha256_file(opts.sam3_checkpoint) if opts.sam3_checkpoint else "random",
             "weights": "checkpoint" if opts.sam3_checkpoint else "random (seed 0)"}
    models = {m.key: m for m in baselines(teacher, facts, device, opts.teacher_int8)}
    models[FIXED].extra["child_encoder"] = None if opts.teacher is not None else "sam3"
    for model in models.values():
        if model.kernel == "torch-int8":
            model.extra.update(count_from=teacher, no_child=True)
    for item in resolved:
        if item.kind == "bundle":
            models[item.key] = bundle_model(item.key, item.path, opts.threads)
            continue
        injected, checkpoint = opts.encoders.get(item.name), opts.checkpoints.get(item.name)
        model = injected.to(device).eval() if injected is not None else load_encoder(item.name, checkpoint,
                                                                                     device=device, seed=0)
        models[item.key] = torch_model(item.key, model, f"{item.name} FP32 (torch)", {
            "encoder": item.name, "precision": "fp32",
            "checkpoint": fingerprint(checkpoint) if checkpoint else "random",
            "weights": "checkpoint" if checkpoint else "random (seed 0)"}, device)
        models[item.key].extra.update(child_encoder=None if injected is not None else item.name,
                                      child_checkpoint=checkpoint)
    return models


def start_results(opts: BenchOptions, models: dict[str, Model]) -> dict[str, Any]:
    from edgeseg.bench import env

    facts = {k: m.facts for k, m in models.items()}
    any_random = opts.sam3_checkpoint is None or any(f.get("checkpoint") in ("random", "unknown")
                                                     for f in facts.values())
    environment = env.environment(opts.threads)
    return {
        "schema": SCHEMA, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "command": opts.command,
        "suite": opts.suite, "suite_run": opts.suite_run, "dirty": environment["git"].get("dirty"),
        "weights": RANDOM_NOTE if any_random else "checkpoints as listed per candidate",
        "random_weights": any_random, "baseline": FIXED, "baselines": [k for k, m in models.items()
                                                                       if k.startswith("sam3-") and m.torch_model
                                                                       is not None],
        "environment": environment, "candidates": facts, "checkpoints": {k: f.get("checkpoint") for k, f in
                                                                         facts.items()},
        "units": {"*_ms": "milliseconds", "*_s": "seconds", "*_bytes": "bytes", "*_mb": "decimal MB (1e6 bytes)",
                  "speedup_vs_fixed": f"{FIXED} p50 / candidate p50 (same batch, same run)",
                  "speedup_vs_dynamic": f"{DYNAMIC} p50 / candidate p50 (same batch, same run)",
                  "efficiency": "GEMM floor for the candidate's MACs / candidate p50",
                  "*_ratio_vs_baseline": f"{FIXED} value / candidate value (how many times smaller)"},
    }


#: the steps of a run, in order: (results key, step); a step returns its section of results.json
PHASES: list[tuple[str, Callable[[Run], Any]]] = [
    ("latency", phases.latency_phase),
    ("efficiency", phases.efficiency_phase),
    ("memory", phases.memory_phase),
    ("accuracy", phases.accuracy_phase),
    ("fidelity", phases.fidelity_phase),
    ("segmentation", phases.segmentation_phase),
    ("video", phases.video_step),
]
#: optional sections (name -> step) run after :data:`PHASES`; a step returning None adds nothing
SECTIONS: dict[str, Callable[[Run], dict[str, Any] | None]] = {}


def register_section(name: str, step: Callable[[Run], dict[str, Any] | None]) -> None:
    """Add an optional step (e.g. prompt-bank figures) whose result goes to ``results[name]``."""
    SECTIONS[name] = step


def run_bench(opts: BenchOptions, prepared: tuple[list[Resolved], list[Any] | None] | None = None) -> dict[str, Any]:
    """Run the benchmark and write ``results.json``, ``report.md`` and plots into ``opts.out``."""
    import torch

    from edgeseg.bench import bars, report
    from edgeseg.corpus import load_split

    started = time.perf_counter()
    resolved, images = prepared if prepared is not None else prepare(opts)
    threads_before = torch.get_num_threads()  # restored at the end: a library call leaves no global change
    torch.set_num_threads(opts.threads)
    models = load_models(opts, resolved)
    results = start_results(opts, models)
    run = Run(opts, models, list(load_split("eval")), images, results)
    results["phase_wall_s"] = {"load_s": time.perf_counter() - started}
    try:
        for name, step in [*PHASES, *SECTIONS.items()]:
            section = phases.timed(results["phase_wall_s"], name, lambda step=step: step(run))
            if section is not None:
                results[name] = section
    finally:
        for model in models.values():
            if model.runner is not None:
                model.runner.deactivate()
        torch.set_num_threads(threads_before)
    results["bars"] = bars.evaluate(opts.bars, results)
    results["runtime_s"] = time.perf_counter() - started
    report.write_outputs(results, Path(opts.out))
    return results


__all__ = ["BASELINES", "PHASES", "BenchOptions", "RANDOM_NOTE", "SCHEMA", "SECTIONS", "prepare", "register_section",
           "resolve_candidates", "run_bench"]
