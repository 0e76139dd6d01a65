"""Phase 2 of distillation: train a SAM3-LiteText student on cached teacher targets.

Recipe (every value is a :class:`DistillConfig` field and a command-line option, recorded in
``RUNDIR/config.json``):

* loss over the valid (non-padding) tokens of the 256-d memory, averaged over the valid tokens of
  the global batch: ``mse_weight * mean_d (s - t)^2 + cos_weight * (1 - cos(s, t))`` (1.0 and 2.0);
* AdamW, weight decay 0.05 on matrices and the token embedding; none on biases, norms (LayerNorm,
  BatchNorm), layer scales and the position table; linear warmup then cosine decay to
  ``min_lr_ratio * lr``; gradients clipped to global norm 1.0; bf16 autocast on CUDA only;
* the student runs in eval mode throughout (dropout is 0 in these towers anyway): S0's BatchNorms
  keep their running statistics (random init: identity; ``--init``: the checkpoint's) and train only
  their affine weights. This makes every prompt's output independent of the rest of its batch, so
  a DDP run equals a single-process run with the same global batch;
* the dead weights kept for strict checkpoint loading (``projection_layer``) are frozen.

Data order: epoch e visits the training rows in ``randperm(N, seed, e)``; global step k takes
positions ``k*B .. k*B+B-1`` of that stream (B = ``batch_size``, the *global* batch), and rank r of
W takes every W-th of them starting at r. The data position is therefore the step itself.

Checkpoints (``RUNDIR/checkpoint.pt``, atomic, every ``checkpoint_every`` steps): model, optimizer,
scheduler, step, RNG states (torch, CUDA, numpy, python) and the config. Restarting the same
command resumes from it; on CPU the final weights are bit-identical to an uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edgeseg.devices import check_device
from edgeseg.errors import EdgesegError
from edgeseg.fileio import atomic_path

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"
STUDENT = "student.safetensors"
CONFIG = "config.json"
METRICS = "metrics.jsonl"
CURVES = "curves.png"
PLOT_EVERY_S = 300.0
# fields that do not change the computation: a resumed run may differ in them
_RUN_ONLY = {"out", "throttle", "progress", "cache", "cache_batch_size", "sources"}


@dataclass
class DistillConfig:
    """Every setting of a distillation run (the CLI's options)."""

    student: str
    out: str
    teacher: str = "sam3"
    teacher_checkpoint: str | None = None
    teacher_seed: int = 0
    init: str | None = None
    position_table: str = "interpolate"
    semantics: str | None = None  # the student's padding semantics; None: --init's own, else efficientsam3
    context_length: int = 16
    prompts: list[str] = field(default_factory=list)  # empty: the shipped distill split
    eval_prompts: str | None = None  # None: the shipped eval split
    limit: int | None = None  # at most this many training prompts (lowest key hash first)
    eval_limit: int | None = 1000
    steps: int = 2000
    batch_size: int = 64
    lr: float = 5e-4
    min_lr_ratio: float = 0.0
    warmup_steps: int = 100
    weight_decay: float = 0.05
    beta1: float = 0.9
    beta2: float = 0.98
    eps: float = 1e-6
    mse_weight: float = 1.0
    cos_weight: float = 2.0
    grad_clip: float = 1.0
    seed: int = 0
    checkpoint_every: int = 200
    eval_every: int = 200
    log_every: int = 10
    eval_batch_size: int = 256
    cache: str | None = None  # None: RUNDIR/cache
    cache_batch_size: int = 64
    shard_size: int = 4096
    device: str = "cpu"
    amp: bool | None = None  # None: on for CUDA, off on CPU
    sources: str | None = None  # folder of source lists, for per-source eval metrics
    student_config: dict | None = None  # test hook: a config dict instead of a registered name
    teacher_config: dict | None = None
    throttle: float = 0.0  # test hook: seconds of sleep per step (to interrupt runs)
    progress: bool = True

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def computation(self) -> dict[str, Any]:
        return {k: v for k, v in self.to_json().items() if k not in _RUN_ONLY}


# -- distributed --------------------------------------------------------------------------------
@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    def barrier(self) -> None:
        if self.enabled:
            torch.distributed.barrier()


def init_distributed(device: str) -> Dist:
    """Join the process group that ``torchrun`` describes in the environment (gloo on CPU, nccl on CUDA)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    backend = "nccl" if torch.device(device).type == "cuda" else "gloo"
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend=backend)
    log.info("distributed: rank %d of %d (%s)", rank, world, backend)
    return Dist(rank, world, local)


# -- models -------------------------------------------------------------------------------------
def build_model(name: str, config: dict | None, context_length: int, checkpoint: str | None, seed: int,
                position_table: str = "interpolate", device: str = "cpu") -> nn.Module:
    """A registered encoder (random or from a checkpoint), or one built from a config dict (tests)."""
    from edgeseg.checkpoints import load_encoder, read_checkpoint
    from edgeseg.encoders import FAMILIES, get_config
    from edgeseg.encoders.base import reset_parameters_

    if config is None:
        return load_encoder(name, checkpoint, context_length, position_table, device=device, seed=seed)
    cfg = {**get_config(config.get("base", name)), **{k: v for k, v in config.items() if k != "base"}}
    model = FAMILIES[cfg["family"]](config.get("name", f"{name}-custom"), cfg, context_length)
    reset_parameters_(model, seed)
    if checkpoint is not None:
        state = {k: v.float() for k, v in read_checkpoint(checkpoint).state.items()}
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise EdgesegError(f"{checkpoint} does not fit the custom {name} config: {exc}") from exc
    return model.to(device).eval()


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: decay on matrices and the token embedding; none on biases, norms, scales, positions."""
    norms = (nn.LayerNorm, nn.BatchNorm2d, nn.GroupNorm)
    no_decay_ids = set()
    for module in model.modules():
        if isinstance(module, norms):
            no_decay_ids.update(id(p) for p in module.parameters(recurse=False))
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        leaf = name.rsplit(".", 1)[-1]
        if id(p) in no_decay_ids or p.ndim <= 1 or leaf in ("bias", "layer_scale") or "positional_embedding" in name:
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def lr_factor(step: int, steps: int, warmup: int, min_ratio: float) -> float:
    """Linear warmup from 0 to 1 over ``warmup`` steps, then cosine from 1 to ``min_ratio``."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    span = max(1, steps - warmup)
    progress = min(1.0, (step - warmup) / span)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def make_optimizer(model: nn.Module, cfg: DistillConfig) -> tuple[torch.optim.Optimizer, Any]:
    opt = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2),
                            eps=cfg.eps)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: lr_factor(s, cfg.steps, cfg.warmup_steps, cfg.min_lr_ratio))
    return opt, sched


def token_loss_sums(student: torch.Tensor, target: torch.Tensor, valid: torch.Tensor,
                    mse_weight: float, cos_weight: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sums over valid tokens of the weighted loss, the token MSE and ``1 - cos`` (float32)."""
    s, t = student.float(), target.float()
    v = valid.float()
    mse = ((s - t) ** 2).mean(-1)
    cos = F.cosine_similarity(s, t, dim=-1, eps=1e-8)
    mse_sum = (mse * v).sum()
    cos_sum = ((1.0 - cos) * v).sum()
    return mse_weight * mse_sum + cos_weight * cos_sum, mse_sum, cos_sum


# -- data ---------------------------------------------------------------------------------------
class BatchOrder:
    """Deterministic global batches over ``n`` rows: epoch permutations from the seed, step -> rows."""

    def __init__(self, n: int, batch_size: int, seed: int):
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self._perms: dict[int, np.ndarray] = {}

    def _perm(self, epoch: int) -> np.ndarray:
        if epoch not in self._perms:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perms = {epoch: torch.randperm(self.n, generator=gen).numpy()}
        return self._perms[epoch]

    def rows(self, step: int) -> np.ndarray:
        positions = np.arange(step * self.batch_size, (step + 1) * self.batch_size, dtype=np.int64)
        out = np.empty_like(positions)
        for e in np.unique(positions // self.n):
            where = positions // self.n == e
            out[where] = self._perm(int(e))[positions[where] % self.n]
        return out


# -- RNG and checkpoints ------------------------------------------------------------------------
def rng_state() -> dict[str, Any]:
    keys, pos, has_gauss, gauss = np.random.get_state()[1:]
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(gauss)},
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def _plain(obj: Any) -> Any:
    """JSON-able copy (for the config stored inside the checkpoint, loaded with weights_only)."""
    return json.loads(json.dumps(obj))


def save_checkpoint(path: Path, model: nn.Module, opt: torch.optim.Optimizer, sched: Any, step: int,
                    cfg: DistillConfig, world: int) -> None:
    payload = {
        "format": "edgeseg-distill-checkpoint/1",
        "step": step,
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict(),
        "rng": rng_state(),
        "data": {"next_step": step, "batch_size": cfg.batch_size, "seed": cfg.seed, "world_size": world},
        "config": json.dumps(cfg.computation(), sort_keys=True),
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def _read_summary(out: Path) -> dict[str, Any]:
    try:
        summary = json.loads((out / CONFIG).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise EdgesegError(f"{out / CONFIG} cannot be read ({exc}); remove the run folder or use another "
                           "--out") from exc
    if not isinstance(summary, dict):
        raise EdgesegError(f"{out / CONFIG} is not a run summary; remove the run folder or use another --out")
    return summary


def load_checkpoint(path: Path) -> dict[str, Any]:
    """A run's checkpoint.pt, read with weights_only=True and checked (structure, finite weights)."""
    from edgeseg.checkpoints import _torch_load, check_finite

    try:
        payload = _torch_load(path)  # weights_only=True; pickled code is refused, never run
    except EdgesegError as exc:
        raise EdgesegError(f"cannot resume: {exc}; remove it") from exc
    try:
        config = json.loads(payload["config"])
        valid = payload["format"] == "edgeseg-distill-checkpoint/1" and isinstance(config, dict) and \
            type(payload["step"]) is int and all(isinstance(payload[k], dict) for k in ("model", "optimizer", "rng"))
    except (TypeError, KeyError, IndexError, ValueError):
        valid = False
    if not valid:
        raise EdgesegError(f"cannot resume from {path}: it is not an edgeseg distill checkpoint; remove it")
    check_finite(payload["model"], path)
    return payload


# -- evaluation ---------------------------------------------------------------------------------
LENGTH_GROUPS = (("tokens<=4", 0, 4), ("tokens 5-6", 5, 6), ("tokens 7-10", 7, 10), ("tokens>=11", 11, 10**9))


@torch.no_grad()
def evaluate(model: nn.Module, ids: np.ndarray, targets: np.ndarray, groups: dict[str, np.ndarray],
             batch_size: int, device: str, amp: bool) -> dict[str, Any]:
    """Token cosine and MSE vs the teacher over valid tokens, per prompt, then mean/worst per group.

    Also pooled retrieval (:func:`edgeseg.outputs.retrieval`): each prompt's masked-mean-pooled student
    memory must be nearest to its own pooled teacher memory among all ``ids``; ``retrieval_chance``
    (1/N) is what a student that ignores its input gets at best.
    """
    from edgeseg.outputs import retrieval

    per_cos, per_mse, pooled_s, pooled_t = [], [], [], []
    for start in range(0, len(ids), batch_size):
        chunk = torch.from_numpy(np.asarray(ids[start : start + batch_size], dtype=np.int64)).to(device)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
            memory, mask = model(model.padding.repad(chunk))  # the student's pad id (transformers: 49407)
        s = memory.double()
        t = torch.from_numpy(np.asarray(targets[start : start + batch_size])).to(device).double()
        valid = (~mask).double()
        count = valid.sum(1).clamp_min(1.0)
        cos = F.cosine_similarity(s, t, dim=-1, eps=1e-12)
        per_cos.append(((cos * valid).sum(1) / count).cpu().numpy())
        per_mse.append(((((s - t) ** 2).mean(-1) * valid).sum(1) / count).cpu().numpy())
        pooled_s.append(((s * valid[..., None]).sum(1) / count[:, None]).cpu().numpy())
        pooled_t.append(((t * valid[..., None]).sum(1) / count[:, None]).cpu().numpy())
    cos_all, mse_all = np.concatenate(per_cos), np.concatenate(per_mse)
    result: dict[str, Any] = {"prompts": int(len(cos_all)), "mean_cosine": float(cos_all.mean()),
                              "worst_cosine": float(cos_all.min()), "mse": float(mse_all.mean())}
    ranked = retrieval(np.concatenate(pooled_s), np.concatenate(pooled_t))
    result.update({k: ranked[k] for k in ("retrieval_top1", "retrieval_chance")})
    by_group = {}
    for name, members in groups.items():
        if len(members):
            by_group[name] = {"prompts": int(len(members)), "mean_cosine": float(cos_all[members].mean()),
                              "worst_cosine": float(cos_all[members].min()), "mse": float(mse_all[members].mean())}
    result["groups"] = by_group
    return result


def eval_groups(ids: np.ndarray, normalized: Sequence[str], sources: dict[str, str] | None) -> dict[str, np.ndarray]:
    """Prompt indices per token-length group (always) and per source list (when known)."""
    lengths = (np.asarray(ids) != 0).sum(1)
    groups = {f"length {name}": np.nonzero((lengths >= lo) & (lengths <= hi))[0] for name, lo, hi in LENGTH_GROUPS}
    if sources:
        names: dict[str, list[int]] = {}
        for i, p in enumerate(normalized):
            names.setdefault(f"source {sources.get(p, 'unknown')}", []).append(i)
        groups.update({k: np.asarray(v, dtype=np.int64) for k, v in sorted(names.items())})
    return groups


def source_map(folder: str | os.PathLike) -> dict[str, str]:
    """normalized prompt -> the source list credited with it (the first list in SOURCE_ORDER), as corpus.py does."""
    from edgeseg.corpus import _read_pool

    pool, _ = _read_pool(Path(folder))
    return {p.normalized: p.source for p in pool.values()}


def baseline_metrics(train_targets: np.ndarray, train_ids: np.ndarray, ids: np.ndarray,
                     targets: np.ndarray) -> dict[str, float]:
    """Eval metrics of the best prompt-independent predictor: the per-position mean training target.

    ``mean_cosine`` tells how much of the teacher's memory is shared by all prompts (large for a
    random teacher); ``retrieval_top1`` is its pooled retrieval (it sees only each prompt's length,
    so it can tell prompts apart by length alone). A student must beat both.
    """
    from edgeseg.outputs import pooled, retrieval, token_fidelity

    valid = (np.asarray(train_ids) != 0)[..., None]
    mean = (np.asarray(train_targets, dtype=np.float64) * valid).sum(0) / np.maximum(valid.sum(0), 1)
    targets = np.asarray(targets, dtype=np.float64)
    pred = np.broadcast_to(mean, targets.shape)
    mask = np.asarray(ids) == 0
    return {"mean_cosine": token_fidelity(pred, targets, mask)["mean_cosine"],
            "retrieval_top1": retrieval(pooled(pred, mask), pooled(targets, mask))["retrieval_top1"]}


def plot_curves(metrics: list[dict[str, Any]], path: Path, title: str) -> None:
    from edgeseg.errors import optional_module

    matplotlib = optional_module("matplotlib", f"{path.name}")
    if matplotlib is None:
        return
    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    train = [m for m in metrics if m["kind"] == "train"]
    evals = [m for m in metrics if m["kind"] == "eval"]
    fig = Figure(figsize=(11, 4))
    ax1, ax2 = fig.subplots(1, 2)
    if train:
        ax1.plot([m["step"] for m in train], [m["loss"] for m in train], label="loss")
        ax1.plot([m["step"] for m in train], [m["mse"] for m in train], label="token MSE")
        ax1.plot([m["step"] for m in train], [m["one_minus_cos"] for m in train], label="1 - cos")
        ax1.set_yscale("log")
        ax1.legend()
    ax1.set_xlabel("step")
    ax1.set_title("training loss")
    if evals:
        steps = [m["step"] for m in evals]
        ax2.plot(steps, [m["mean_cosine"] for m in evals], marker="o", label="mean token cosine")
        ax2.plot(steps, [m["worst_cosine"] for m in evals], marker=".", label="worst prompt")
        if evals[0].get("baseline_mean_cosine") is not None:
            ax2.axhline(evals[0]["baseline_mean_cosine"], color="grey", ls="--", label="per-position mean predictor")
        if "retrieval_top1" in evals[0]:
            ax2.plot(steps, [m["retrieval_top1"] for m in evals], marker="s", label="pooled retrieval top-1")
            ax2.axhline(evals[0]["retrieval_chance"], color="grey", ls=":", label="retrieval chance (1/N)")
        ax2.legend()
    ax2.set_xlabel("step")
    ax2.set_title("eval vs teacher")
    fig.suptitle(title)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100)


# -- the run ------------------------------------------------------------------------------------
@dataclass
class Corpus:
    normalized: list[str]
    ids: np.ndarray


def _prepare_corpus(prompts: Sequence[str], context_length: int) -> Corpus:
    from edgeseg.corpus import normalize_prompt
    from edgeseg.tokenizer import get_tokenizer

    seen: dict[str, str] = {}
    for p in prompts:
        n = normalize_prompt(p)
        if n and n not in seen:
            seen[n] = p
    normalized = list(seen)
    ids = get_tokenizer()(list(seen.values()), context_length).ids if normalized else np.zeros((0, context_length))
    return Corpus(normalized, np.asarray(ids, dtype=np.int64))


def _subset(corpus: Corpus, limit: int | None) -> Corpus:
    """At most ``limit`` prompts, lowest key hash first (a stable, source-blind sample), kept in corpus order."""
    if limit is None or limit >= len(corpus.normalized):
        return corpus
    from edgeseg.distill.cache import prompt_key

    order = sorted(range(len(corpus.normalized)), key=lambda i: prompt_key(corpus.normalized[i]))[:limit]
    order.sort()
    return Corpus([corpus.normalized[i] for i in order], corpus.ids[order])


def _check_out(out: Path) -> None:
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise EdgesegError(f"output folder {parent} does not exist")
    if out.exists() and not out.is_dir():
        raise EdgesegError(f"--out {out} exists and is not a folder")
    target = out if out.exists() else parent
    if not os.access(target, os.W_OK | os.X_OK):
        raise EdgesegError(f"output folder {target} is not writable")


def _teacher_id(cfg: DistillConfig) -> str:
    from edgeseg.distill.cache import teacher_identity
    from edgeseg.fileio import sha256_file

    sha = None
    if cfg.teacher_checkpoint is not None:
        path = Path(cfg.teacher_checkpoint)
        if not path.is_file():
            raise EdgesegError(f"teacher checkpoint {path} does not exist")
        sha = sha256_file(path)
    return teacher_identity(cfg.teacher, sha, cfg.teacher_seed, cfg.teacher_config)


def _validate(cfg: DistillConfig) -> None:
    from edgeseg.encoders import get_config, resolve_context_length

    if cfg.student_config is None:
        student_cfg = get_config(cfg.student)
        if student_cfg["family"] == "sam3":
            raise EdgesegError(f"{cfg.student} is the teacher; choose a student: mobileclip-s0, mobileclip-s1, "
                               "mobileclip2-l")
        resolve_context_length(cfg.student, cfg.context_length)
    if cfg.teacher_config is None:
        resolve_context_length(cfg.teacher, cfg.context_length)
    for name in ("steps", "batch_size", "checkpoint_every", "eval_every", "log_every", "shard_size",
                 "cache_batch_size", "eval_batch_size"):
        if int(getattr(cfg, name)) < 1:
            raise EdgesegError(f"--{name.replace('_', '-')} must be at least 1")
    if cfg.lr <= 0 or cfg.weight_decay < 0 or cfg.grad_clip <= 0 or cfg.warmup_steps < 0:
        raise EdgesegError("--lr and --grad-clip must be positive, --weight-decay and --warmup-steps >= 0")
    if cfg.init is not None and not Path(cfg.init).is_file():
        raise EdgesegError(f"--init checkpoint {cfg.init} does not exist")
    if cfg.sources is not None and not Path(cfg.sources).is_dir():
        raise EdgesegError(f"--sources {cfg.sources} is not a folder")


@dataclass
class RunPrompts:
    """The training and evaluation corpora of a run, and the held-out prompts dropped from training."""

    train: Corpus
    eval: Corpus
    dropped: list[str]  # normalized training prompts that are held-out prompts (not trained on)


def held_out_rule(custom_eval: bool) -> str:
    own = "the --eval-prompts file, " if custom_eval else ""
    return (f"training prompts equal after normalization to a prompt of {own}edgeseg's eval or reference "
            "split are dropped")


def prepare_prompts(cfg: DistillConfig, note: Callable[[str], None]) -> RunPrompts:
    """Tokenized training and eval corpora; training prompts that are held-out prompts are dropped with a note.

    Held out: the eval set in use (``--eval-prompts`` or the shipped eval split) and edgeseg's own
    eval and reference splits (gates and bundle self-checks measure on them), compared after
    :func:`edgeseg.corpus.normalize_prompt`. ``--limit`` applies to what is left.
    """
    from edgeseg.corpus import held_out_normalized, load_split
    from edgeseg.fileio import read_prompts

    raw = [p for f in cfg.prompts for p in read_prompts(f)] if cfg.prompts else load_split("distill")
    train = _prepare_corpus(raw, cfg.context_length)
    eval_raw = read_prompts(cfg.eval_prompts) if cfg.eval_prompts else load_split("eval")
    evalc = _prepare_corpus(eval_raw, cfg.context_length)
    held_out = held_out_normalized() | set(evalc.normalized)
    keep = [i for i, n in enumerate(train.normalized) if n not in held_out]
    dropped = [n for n in train.normalized if n in held_out]
    train = _subset(Corpus([train.normalized[i] for i in keep], train.ids[keep]), cfg.limit)
    if not train.normalized:
        raise EdgesegError("the training corpus holds no prompts" + (
            f" once its {len(dropped)} held-out prompt(s) are dropped" if dropped else ""))
    if dropped:
        shown = ", ".join(repr(t) for t in dropped[:3]) + (f" and {len(dropped) - 3} more" if len(dropped) > 3 else "")
        note(f"dropped {len(dropped)} training prompt(s) that are held-out prompts after normalization ({shown}); "
             f"{held_out_rule(bool(cfg.eval_prompts))}")
    return RunPrompts(train, _subset(evalc, cfg.eval_limit), dropped)


def _setup_device(cfg: DistillConfig) -> tuple[Dist, str, bool]:
    check_device(cfg.device)
    dist = init_distributed(cfg.device)
    device = cfg.device
    if torch.device(device).type == "cuda" and dist.enabled:
        device = f"cuda:{dist.local_rank}"
        torch.cuda.set_device(device)
    on_cuda = torch.device(device).type == "cuda"
    amp = on_cuda if cfg.amp is None else bool(cfg.amp and on_cuda)
    if dist.enabled and cfg.batch_size % dist.world:
        raise EdgesegError(f"--batch-size {cfg.batch_size} must be a multiple of the {dist.world} processes")
    return dist, device, amp


def _resume_state(out: Path, cfg: DistillConfig) -> dict[str, Any] | None:
    """The checkpoint of an earlier run of the same settings in ``out`` (None: start afresh)."""
    ckpt_path = out / CHECKPOINT
    if not ckpt_path.exists():
        return None
    resume = load_checkpoint(ckpt_path)
    old, now = json.loads(resume["config"]), _plain(cfg.computation())
    if old != now:
        diff = sorted(k for k in set(old) | set(now) if old.get(k) != now.get(k))
        raise EdgesegError(f"{out} holds a run with other settings ({', '.join(diff)}); use the same options "
                           "to resume it, or another --out")
    return resume


def _check_teacher_file(cfg: DistillConfig) -> None:
    """A corrupt or wrong teacher checkpoint must fail before anything is written."""
    if cfg.teacher_checkpoint is None:
        return
    from edgeseg.checkpoints import read_checkpoint

    found = read_checkpoint(cfg.teacher_checkpoint)
    if cfg.teacher_config is None and found.looks_like != cfg.teacher:
        raise EdgesegError(f"teacher checkpoint {cfg.teacher_checkpoint} holds "
                           f"{found.looks_like or 'no known text encoder'}, not the {cfg.teacher} teacher")


def _teacher_targets(cfg: DistillConfig, prompts: RunPrompts, teacher_id: str, cache_dir: Path, dist: Dist,
                     device: str) -> tuple[Any, Any]:
    """Phase 1: the teacher's memory for the training and eval corpora (cached, shared across ranks)."""
    from edgeseg.distill.cache import build_cache

    teacher_cache: dict[str, nn.Module] = {}

    def shared_teacher() -> nn.Module:
        if "model" not in teacher_cache:
            teacher_cache["model"] = build_model(cfg.teacher, cfg.teacher_config, cfg.context_length,
                                                 cfg.teacher_checkpoint, cfg.teacher_seed, device=device)
        return teacher_cache["model"]

    common_args = dict(context_length=cfg.context_length, batch_size=cfg.cache_batch_size, shard_size=cfg.shard_size,
                       rank=dist.rank, world=dist.world, barrier=dist.barrier if dist.enabled else None,
                       device=device, progress=cfg.progress)  # the teacher runs in fp32, also on CUDA
    train, evalc = prompts.train, prompts.eval
    train_cache = build_cache(cache_dir, train.normalized, train.ids, teacher_id, shared_teacher, **common_args)
    eval_cache = build_cache(cache_dir, evalc.normalized, evalc.ids, teacher_id, shared_teacher, **common_args)
    return train_cache, eval_cache


def _make_student(cfg: DistillConfig, resume: dict[str, Any] | None, device: str, dist: Dist,
                  note: Callable[[str], None]) -> tuple[nn.Module, nn.Module, Any, Any, int]:
    """The student (its DDP wrapper when distributed), optimizer, schedule and first step, resumed if asked."""
    seed_everything(cfg.seed)
    student = build_model(cfg.student, cfg.student_config, cfg.context_length, cfg.init, cfg.seed,
                          cfg.position_table, device=device)
    if cfg.semantics is not None:
        from edgeseg.encoders.base import Padding

        student.padding = Padding.of(cfg.semantics)  # trained on its pad id (transformers: 49407, masked attention)
    student.eval()  # see the module docs: BatchNorm statistics stay fixed, dropout is 0
    params = dict(student.named_parameters())
    for name in getattr(student, "unused_parameters", ()):
        params[name].requires_grad_(False)
    opt, sched = make_optimizer(student, cfg)
    start = 0
    if resume is not None:
        try:
            student.load_state_dict(resume["model"], strict=True)
            opt.load_state_dict(resume["optimizer"])
            sched.load_state_dict(resume["scheduler"])
            set_rng_state(resume["rng"])
        except (RuntimeError, ValueError, KeyError, TypeError, IndexError, AttributeError) as exc:
            raise EdgesegError(f"cannot resume from {Path(cfg.out) / CHECKPOINT}: it does not fit this run "
                               f"({str(exc)[:200]}); remove it") from exc
        start = int(resume["step"])
        if dist.rank == 0:
            note(f"resuming {Path(cfg.out)} from step {start} of {cfg.steps}")
    model: nn.Module = student
    if dist.enabled:
        model = nn.parallel.DistributedDataParallel(
            student, device_ids=[dist.local_rank] if torch.device(device).type == "cuda" else None)
    return student, model, opt, sched, start


class _Recorder:
    """metrics.jsonl, config.json, evaluations and curves of a run (rank 0 writes)."""

    def __init__(self, cfg: DistillConfig, out: Path, student: nn.Module, eval_cache: Any, eval_targets: np.ndarray,
                 groups: dict, baseline: dict[str, float], device: str, amp: bool):
        self.cfg, self.out, self.student, self.eval_cache, self.groups = cfg, out, student, eval_cache, groups
        self.eval_targets, self.baseline, self.device, self.amp = eval_targets, baseline, device, amp
        self.metrics: list[dict[str, Any]] = []
        self.plotted = time.monotonic()

    def start(self, start: int, resumed: bool, config_doc: dict[str, Any]) -> None:
        path = self.out / METRICS
        if path.exists() and resumed:
            lines = path.read_text(encoding="utf-8").splitlines()
            self.metrics = [m for m in (json.loads(x) for x in lines if x.strip()) if m["step"] <= start]
        with atomic_path(path) as tmp:
            tmp.write_text("".join(json.dumps(m) + "\n" for m in self.metrics), encoding="utf-8")
        _write_json(self.out / CONFIG, config_doc)

    def log(self, entry: dict[str, Any]) -> None:
        self.metrics.append(entry)
        with open(self.out / METRICS, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(entry) + "\n")

    def evaluate(self, step: int) -> dict[str, Any]:
        cfg = self.cfg
        result = evaluate(self.student, self.eval_cache.ids, self.eval_targets, self.groups, cfg.eval_batch_size,
                          self.device, self.amp)
        entry = {"kind": "eval", "step": step, **result, "baseline_mean_cosine": self.baseline["mean_cosine"],
                 "baseline_retrieval_top1": self.baseline["retrieval_top1"],
                 "weights": "random/synthetic teacher" if cfg.teacher_checkpoint is None else "teacher checkpoint"}
        if not any(m["kind"] == "eval" and m["step"] == step for m in self.metrics):
            self.log(entry)
        if time.monotonic() - self.plotted > PLOT_EVERY_S:  # matplotlib is slow: at most every few minutes
            self.plot()
        return entry

    def plot(self) -> None:
        tag = " (random/synthetic teacher weights)" if self.cfg.teacher_checkpoint is None else ""
        plot_curves(self.metrics, self.out / CURVES, f"{self.cfg.student} distillation{tag}")
        self.plotted = time.monotonic()


def _train_steps(cfg: DistillConfig, model: nn.Module, student: nn.Module, opt: Any, sched: Any, train_cache: Any,
                 start: int, dist: Dist, device: str, amp: bool, rec: _Recorder | None) -> None:
    """Phase 2: optimizer steps ``start .. cfg.steps``, with logging, evaluation and checkpoints."""
    from tqdm import tqdm

    order = BatchOrder(len(train_cache), cfg.batch_size, cfg.seed)
    bar = tqdm(total=cfg.steps, initial=start, unit="step", desc="distill",
               disable=not (cfg.progress and dist.rank == 0), dynamic_ncols=True)
    window: list[float] = []
    for step in range(start, cfg.steps):
        stats, grad_norm = _train_step(cfg, model, student, opt, sched, train_cache, order.rows(step), dist, device,
                                       amp)
        done = step + 1
        window.append(time.perf_counter())
        bar.update(1)
        if rec is not None and (done % cfg.log_every == 0 or done == cfg.steps):
            rate = (len(window) - 1) / (window[-1] - window[0]) if len(window) > 1 else float("nan")
            window = window[-1:]
            rec.log({"kind": "train", "step": done, "loss": stats[0], "mse": stats[1], "one_minus_cos": stats[2],
                     "lr": sched.get_last_lr()[0], "grad_norm": grad_norm, "steps_per_s": rate})
            bar.set_postfix(loss=f"{stats[0]:.4f}")
        if cfg.throttle:
            time.sleep(cfg.throttle)
        if done % cfg.eval_every == 0 or done == cfg.steps:
            if rec is not None:
                last = rec.evaluate(done)
                bar.write(f"step {done}: eval mean token cosine {last['mean_cosine']:.4f} "
                          f"(worst {last['worst_cosine']:.4f})")
            dist.barrier()
        if done % cfg.checkpoint_every == 0 or done == cfg.steps:
            if dist.rank == 0:
                save_checkpoint(Path(cfg.out) / CHECKPOINT, student, opt, sched, done, cfg, dist.world)
            dist.barrier()
    bar.close()


def _train_step(cfg: DistillConfig, model: nn.Module, student: nn.Module, opt: Any, sched: Any, train_cache: Any,
                rows: np.ndarray, dist: Dist, device: str, amp: bool) -> tuple[list[float], float]:
    """One optimizer step on the global batch ``rows`` (this rank's share); loss sums per valid token, clip norm."""
    global_valid = float(max(1, int((train_cache.ids[np.sort(rows)] != 0).sum())))
    local = rows[dist.rank :: dist.world]
    ids = torch.from_numpy(np.asarray(train_cache.ids[local], dtype=np.int64)).to(device)
    target = torch.from_numpy(train_cache.targets(local)).to(device)
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
        memory, mask = model(student.padding.repad(ids))  # the corpus is padded with 0
    loss_sum, mse_sum, cos_sum = token_loss_sums(memory, target, ~mask, cfg.mse_weight, cfg.cos_weight)
    loss = loss_sum / global_valid * dist.world
    opt.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(student.parameters(), cfg.grad_clip)
    opt.step()
    sched.step()
    stats = torch.stack([loss_sum.detach(), mse_sum.detach(), cos_sum.detach()]).float()
    if dist.enabled:
        torch.distributed.all_reduce(stats)
    return (stats / global_valid).cpu().tolist(), float(grad_norm)


def _config_doc(cfg: DistillConfig, teacher_id: str, dist: Dist, device: str, amp: bool, prompts: RunPrompts,
                train_cache: Any, eval_cache: Any, student: nn.Module) -> dict[str, Any]:
    return {"config": cfg.to_json(), "teacher": teacher_id, "random_teacher": cfg.teacher_checkpoint is None,
            "world_size": dist.world, "device": device, "amp": amp, "train_prompts": len(prompts.train.normalized),
            "eval_prompts": len(prompts.eval.normalized),
            "dropped_held_out": {"count": len(prompts.dropped), "examples": prompts.dropped[:10],
                                 "rule": held_out_rule(bool(cfg.eval_prompts))},
            "train_cache": str(train_cache.folder), "eval_cache": str(eval_cache.folder),
            "encoder": getattr(student, "name", cfg.student), "context_length": cfg.context_length,
            "complete": False, "note": ("random/synthetic teacher weights" if cfg.teacher_checkpoint is None else None)}


def _recorder(cfg: DistillConfig, out: Path, student: nn.Module, train_cache: Any, eval_cache: Any,
              prompts: RunPrompts, device: str, amp: bool) -> _Recorder:
    sources = source_map(cfg.sources) if cfg.sources else None
    groups = eval_groups(eval_cache.ids, prompts.eval.normalized, sources)
    eval_targets = eval_cache.targets(np.arange(len(eval_cache)))
    sample = np.arange(min(len(train_cache), 4096))
    baseline = baseline_metrics(train_cache.targets(sample), train_cache.ids[sample], eval_cache.ids, eval_targets)
    return _Recorder(cfg, out, student, eval_cache, eval_targets, groups, baseline, device, amp)


def distill(cfg: DistillConfig, note: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run (or resume) a distillation; returns the final summary written into ``config.json``."""
    from edgeseg.distill.cache import check_teacher

    note = note or (lambda message: log.warning("%s", message))
    out = Path(cfg.out)
    _validate(cfg)
    _check_out(out)
    dist, device, amp = _setup_device(cfg)
    prompts = prepare_prompts(cfg, note if dist.rank == 0 else (lambda message: None))
    teacher_id = _teacher_id(cfg)  # teacher identity and cache compatibility (reads only)
    cache_dir = Path(cfg.cache) if cfg.cache else out / "cache"
    check_teacher(cache_dir, teacher_id, cfg.context_length)
    resume = _resume_state(out, cfg)
    if (out / STUDENT).exists() and resume is not None and int(resume["step"]) >= cfg.steps:
        if dist.rank == 0:
            note(f"{out} already holds the finished run ({cfg.steps} steps); nothing to do")
        return _read_summary(out)
    _check_teacher_file(cfg)
    if cfg.teacher_checkpoint is None and dist.rank == 0:
        note(f"no --teacher-checkpoint: the {cfg.teacher} teacher has RANDOM weights (seed {cfg.teacher_seed}); "
             "targets and every metric of this run come from random/synthetic weights")
    if dist.rank == 0:
        out.mkdir(exist_ok=True)
        cache_dir.mkdir(parents=True, exist_ok=True)
    dist.barrier()
    train_cache, eval_cache = _teacher_targets(cfg, prompts, teacher_id, cache_dir, dist, device)

    student, model, opt, sched, start = _make_student(cfg, resume, device, dist, note)
    rec = None
    if dist.rank == 0:
        rec = _recorder(cfg, out, student, train_cache, eval_cache, prompts, device, amp)
        rec.start(start, resume is not None, _config_doc(cfg, teacher_id, dist, device, amp, prompts, train_cache,
                                                          eval_cache, student))
        if start == 0:
            log.info("step 0: eval mean cosine %.4f", rec.evaluate(0)["mean_cosine"])
    dist.barrier()
    started = time.perf_counter()
    _train_steps(cfg, model, student, opt, sched, train_cache, start, dist, device, amp, rec)
    summary = _finish(cfg, out, student, rec, time.perf_counter() - started) if rec is not None else {}
    dist.barrier()
    if dist.enabled:
        torch.distributed.destroy_process_group()
    return summary


def _finish(cfg: DistillConfig, out: Path, student: nn.Module, rec: _Recorder, elapsed: float) -> dict[str, Any]:
    from edgeseg.checkpoints import save_encoder

    save_encoder(student, out / STUDENT)
    rec.plot()
    evals = [m for m in rec.metrics if m["kind"] == "eval"]
    summary = _read_summary(out)
    summary.update({"complete": True, "steps_done": cfg.steps, "train_seconds_this_process": round(elapsed, 1),
                    "initial_eval": evals[0] if evals else None, "final_eval": evals[-1] if evals else None})
    _write_json(out / CONFIG, summary)
    return summary


def summary_line(summary: dict[str, Any], out: str | os.PathLike) -> str:
    """One line on a finished run: eval cosine and retrieval against both baselines ('' before any eval)."""
    final, first = summary.get("final_eval") or {}, summary.get("initial_eval") or {}
    if not final:
        return ""
    nan = float("nan")
    tag = " (random/synthetic teacher weights)" if summary.get("random_teacher") else ""
    dropped = (summary.get("dropped_held_out") or {}).get("count", 0)
    held = f"; {dropped} held-out prompt(s) dropped from training" if dropped else ""
    return (f"eval mean token cosine {first.get('mean_cosine', nan):.4f} -> {final['mean_cosine']:.4f} "
            f"(per-position mean predictor {final.get('baseline_mean_cosine', nan):.4f}), worst prompt "
            f"{final['worst_cosine']:.4f}, retrieval top-1 {final.get('retrieval_top1', nan):.3f} (chance "
            f"{final.get('retrieval_chance', nan):.3f}, per-position mean predictor "
            f"{final.get('baseline_retrieval_top1', nan):.3f}) on {summary.get('eval_prompts')} held-out prompts"
            f"{tag}{held}; trained on {summary.get('train_prompts')} prompts; wrote {Path(out) / STUDENT}")


def _write_json(path: Path, data: dict[str, Any]) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
