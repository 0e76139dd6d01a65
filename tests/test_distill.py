"""Distillation: loss, schedule, data order, teacher cache, resume after SIGKILL, DDP, splice, bad input.

Tiny teacher/student configs (hidden ``--teacher-config`` / ``--student-config`` options) keep every
run to seconds. Reference values come from independent computations: the loss from a float64 numpy
re-implementation, the schedule from its closed form, cache targets from running the teacher
directly, the DDP run from a single-process run with the same global batch.
"""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from edgeseg.checkpoints import SAM3_TEXT_PREFIX, STUDENT_TABLE_KEY, load_encoder, read_checkpoint, save_encoder
from edgeseg.cli import main
from edgeseg.distill.cache import TeacherCache, build_cache, corpus_sha256, teacher_identity
from edgeseg.distill.train import BatchOrder, build_model, lr_factor, param_groups, token_loss_sums
from edgeseg.encoders import build_encoder
from edgeseg.errors import EdgesegError
from edgeseg.tokenizer import get_tokenizer

REPO = Path(__file__).resolve().parents[1]
TINY_STUDENT = {"base": "mobileclip-s0", "name": "tiny-s0", "dim": 32, "heads": 2, "ffn_dim": 64,
                "blocks": ["repmixer", "transformer", "repmixer"]}
TINY_TEACHER = {"base": "sam3", "name": "tiny-sam3", "width": 32, "layers": 2, "heads": 2}


def _lines(name: str, count: int, skip: int = 0) -> list[str]:
    text = (REPO / "edgeseg" / "data" / "prompts" / f"{name}.txt").read_text(encoding="utf-8").split("\n")
    return [t for t in text if t.strip()][skip : skip + count]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("corpus")
    (folder / "train.txt").write_text("\n".join(_lines("distill", 96)) + "\n", encoding="utf-8")
    (folder / "eval.txt").write_text("\n".join(_lines("eval", 24)) + "\n", encoding="utf-8")
    return {"train": folder / "train.txt", "eval": folder / "eval.txt"}


def tiny_args(corpus, out: Path, *extra: str, steps: int = 12) -> list[str]:
    return ["distill", "--student", "tiny", "--student-config", json.dumps(TINY_STUDENT),
            "--teacher-config", json.dumps(TINY_TEACHER), "--prompts", str(corpus["train"]),
            "--eval-prompts", str(corpus["eval"]), "--steps", str(steps), "--batch-size", "8",
            "--warmup-steps", "2", "--lr", "2e-3", "--checkpoint-every", "4", "--eval-every", "4",
            "--log-every", "2", "--shard-size", "32", "--out", str(out), *extra]


def _env() -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    env.pop("WORLD_SIZE", None)
    return env


def run_cli(args: list[str], timeout: int = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgeseg.cli", *args], capture_output=True, text=True,
                          env=_env(), timeout=timeout, cwd=REPO)


# -- loss, schedule, optimizer groups, data order --------------------------------------------------
def test_loss_matches_float64_reference():
    gen = torch.Generator().manual_seed(0)
    s, t = torch.randn(3, 5, 256, generator=gen), torch.randn(3, 5, 256, generator=gen)
    valid = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]], dtype=torch.bool)
    total, mse_sum, cos_sum = token_loss_sums(s, t, valid, 1.0, 2.0)
    a, b, v = s.double().numpy(), t.double().numpy(), valid.numpy()
    mse_ref = sum(((a[i, j] - b[i, j]) ** 2).mean() for i in range(3) for j in range(5) if v[i, j])
    cos_ref = sum(1 - a[i, j] @ b[i, j] / (np.linalg.norm(a[i, j]) * np.linalg.norm(b[i, j]))
                  for i in range(3) for j in range(5) if v[i, j])
    assert math.isclose(mse_sum.item(), mse_ref, rel_tol=1e-5)
    assert math.isclose(cos_sum.item(), cos_ref, rel_tol=1e-5)
    assert math.isclose(total.item(), mse_ref + 2.0 * cos_ref, rel_tol=1e-5)
    # padding tokens do not count: changing them changes nothing
    s2 = s.clone()
    s2[0, 3:] += 100.0
    assert torch.equal(token_loss_sums(s2, t, valid, 1.0, 2.0)[0], total)


def test_warmup_then_cosine_schedule():
    # closed form: (k + 1) / warmup during warmup, then 0.5 * (1 + cos(pi * progress))
    assert lr_factor(0, 10, 2, 0.0) == 0.5 and lr_factor(1, 10, 2, 0.0) == 1.0
    assert lr_factor(2, 10, 2, 0.0) == 1.0
    assert math.isclose(lr_factor(6, 10, 2, 0.0), 0.5, abs_tol=1e-12)
    assert math.isclose(lr_factor(10, 10, 2, 0.1), 0.1, abs_tol=1e-12)


def test_weight_decay_groups():
    model = build_model("tiny", TINY_STUDENT, 16, None, 0)
    for name in model.unused_parameters:
        dict(model.named_parameters())[name].requires_grad_(False)
    decay, no_decay = (set(map(id, g["params"])) for g in param_groups(model, 0.05))
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[i] for i in decay}
    assert "encoder.embedding_layer.weight" in decayed and "projector.weight" in decayed
    assert "encoder.transformer.1.pre_norm_mha.1.qkv_proj.weight" in decayed
    for n in (STUDENT_TABLE_KEY, "projector.bias", "encoder.final_layer_norm.weight",
              "encoder.transformer.0.layer_scale", "encoder.transformer.0.token_mixer.norm.rbr_skip.weight"):
        assert n in {names[i] for i in no_decay}, n
    assert "encoder.projection_layer" not in decayed | {names[i] for i in no_decay}


def test_batch_order_is_a_permutation_per_epoch_and_splits_across_ranks():
    order = BatchOrder(10, 4, seed=3)
    stream = np.concatenate([order.rows(k) for k in range(5)])  # 20 positions = 2 epochs
    assert sorted(stream[:10]) == list(range(10)) and sorted(stream[10:]) == list(range(10))
    assert not np.array_equal(stream[:10], stream[10:])
    rows = order.rows(3)
    parts = [rows[r::2] for r in range(2)]
    assert sorted(np.concatenate(parts)) == sorted(rows)
    assert np.array_equal(BatchOrder(10, 4, seed=3).rows(3), rows)  # a function of (seed, step) only


# -- teacher cache ---------------------------------------------------------------------------------
def test_cache_targets_resume_and_teacher_check(tmp_path):
    prompts = [p.lower() for p in _lines("distill", 20)]
    ids = get_tokenizer()(prompts, 16).ids
    teacher = build_model("sam3", TINY_TEACHER, 16, None, 0)
    calls = []

    def factory():
        calls.append(1)
        return teacher

    tid = teacher_identity("sam3", None, 0, TINY_TEACHER)
    cache = build_cache(tmp_path, prompts, ids, tid, factory, context_length=16, batch_size=6, shard_size=8,
                        progress=False)
    with torch.no_grad():
        expected = teacher(torch.from_numpy(ids))[0].numpy().astype(np.float16)
    assert np.array_equal(cache.targets(np.arange(20)), expected)
    assert np.array_equal(cache.targets(np.array([19, 0, 9])), expected[[19, 0, 9]])
    manifest = json.loads((cache.folder / "manifest.json").read_text())
    assert manifest["teacher"] == tid and manifest["context_length"] == 16
    assert manifest["corpus_sha256"] == corpus_sha256(prompts) and len(manifest["shards"]) == 3
    assert isinstance(np.load(cache.folder / "targets-00000.npy", mmap_mode="r"), np.memmap)
    assert list(cache.rows_of([prompts[5], prompts[2]])) == [5, 2]

    # resume: nothing to do -> the teacher is not even built; one lost shard -> only it is rebuilt
    build_cache(tmp_path, prompts, ids, tid, factory, context_length=16, shard_size=8, progress=False)
    assert len(calls) == 1
    (cache.folder / "targets-00001.npy").unlink()
    dead = subprocess.Popen(["true"])
    dead.wait()
    killed = cache.folder / f".targets-00001.npy.tmp-{dead.pid}-abc.npy"  # what a SIGKILLed build leaves
    killed.write_bytes(b"half a shard")
    before = (cache.folder / "targets-00000.npy").stat().st_mtime_ns
    again = build_cache(tmp_path, prompts, ids, tid, factory, context_length=16, shard_size=8, progress=False)
    assert len(calls) == 2 and (cache.folder / "targets-00000.npy").stat().st_mtime_ns == before
    assert not [p.name for p in cache.folder.iterdir() if ".tmp-" in p.name]  # the killed run's is removed
    assert np.array_equal(again.targets(np.arange(20)), expected)

    other = teacher_identity("sam3", "ab" * 32, 0, None)
    with pytest.raises(EdgesegError, match="made by another teacher"):
        build_cache(tmp_path, prompts, ids, other, factory, context_length=16, progress=False)
    with pytest.raises(EdgesegError, match="context length"):
        build_cache(tmp_path, prompts, ids, tid, factory, context_length=8, progress=False)
    assert isinstance(TeacherCache(cache.folder), TeacherCache)


def _metadata(path: Path) -> dict:
    with open(path, "rb") as fh:
        return json.loads(fh.read(int.from_bytes(fh.read(8), "little")))["__metadata__"]


# -- a run, its outputs, and resume after SIGKILL --------------------------------------------------
@pytest.fixture(scope="module")
def reference_run(corpus, tmp_path_factory):
    """One uninterrupted tiny run (in a subprocess, like the resumed one it is compared with)."""
    root = tmp_path_factory.mktemp("ref")
    proc = run_cli(tiny_args(corpus, root / "run", "--cache", str(root / "cache")))
    assert proc.returncode == 0, proc.stderr
    return root / "run", proc


def test_run_writes_student_config_metrics_and_curves(reference_run, corpus, capsys):
    run, proc = reference_run
    assert "RANDOM weights" in proc.stderr
    config = json.loads((run / "config.json").read_text())
    assert config["complete"] and config["random_teacher"] and config["teacher"].startswith("sam3/random:0")
    assert config["config"]["lr"] == 2e-3 and config["config"]["weight_decay"] == 0.05
    assert config["config"]["mse_weight"] == 1.0 and config["config"]["cos_weight"] == 2.0
    metrics = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    evals = [m for m in metrics if m["kind"] == "eval"]
    assert [m["step"] for m in evals] == [0, 4, 8, 12]
    assert evals[-1]["mean_cosine"] > evals[0]["mean_cosine"] + 0.2  # learning at all; quality: test_student_beats_*
    assert evals[-1]["retrieval_chance"] == 1 / 24 and 0 <= evals[-1]["retrieval_top1"] <= 1
    assert evals[-1]["baseline_retrieval_top1"] == evals[0]["baseline_retrieval_top1"]
    assert "random/synthetic" in evals[0]["weights"] and evals[0]["groups"]
    assert (run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    meta = _metadata(run / "student.safetensors")
    assert meta["encoder"] == "tiny-s0" and meta["context_length"] == "16"
    # a finished run is not redone; other settings in the same folder are refused
    assert main(tiny_args(corpus, run, "--cache", str(run.parent / "cache"))) == 0
    assert "nothing to do" in capsys.readouterr().err


# -- the student must beat every predictor that ignores its input ----------------------------------
def assert_beats_baselines(entry: dict) -> None:
    """What a distilled student must show on held-out prompts; a student that ignores its input fails it.

    The per-position mean training target is the best prompt-independent predictor of token cosine; it
    sees only each prompt's length (its padding), so its pooled retrieval is near chance (1/N).
    """
    assert entry["mean_cosine"] > entry["baseline_mean_cosine"] + 0.05, entry
    assert entry["retrieval_top1"] >= 4 * entry["retrieval_chance"], entry
    assert entry["retrieval_top1"] > entry["baseline_retrieval_top1"] + 0.1, entry


def test_student_beats_the_prompt_independent_baseline(reference_run, corpus, tmp_path, capsys):
    """A longer tiny run (60 steps, batch 16) on the reference run's teacher cache, 24 held-out prompts."""
    run, _ = reference_run
    args = tiny_args(corpus, tmp_path / "run", "--cache", str(run.parent / "cache"), steps=60)
    args = [*args, "--batch-size", "16", "--lr", "5e-3", "--eval-every", "60", "--checkpoint-every", "60"]
    assert main(args) == 0
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert "retrieval top-1" in last and "chance 0.042" in last and "per-position mean predictor" in last
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    first, final = config["initial_eval"], config["final_eval"]
    assert final["prompts"] == 24 and final["retrieval_chance"] == 1 / 24
    assert_beats_baselines(final)
    with pytest.raises(AssertionError):  # the untrained student does not
        assert_beats_baselines(first)


class _Pad0:
    """Pad id 0, the cache's own (what a student's ``padding`` gives evaluate to re-pad ids with)."""

    @staticmethod
    def repad(ids):
        return ids


class _Fixed(torch.nn.Module):
    """A "student" that ignores its input: the same memory for every prompt, padding from the ids."""

    padding = _Pad0()

    def __init__(self, memory: np.ndarray):
        super().__init__()
        self.register_buffer("memory", torch.from_numpy(memory.astype(np.float32)))

    def forward(self, ids):
        return self.memory.expand(ids.shape[0], -1, -1), ids == 0


class _Lookup(torch.nn.Module):
    """A perfect "student": the teacher's own memory of each prompt, looked up by its ids."""

    padding = _Pad0()

    def __init__(self, ids: np.ndarray, targets: np.ndarray):
        super().__init__()
        self.table = {tuple(row): torch.from_numpy(t.astype(np.float32)) for row, t in zip(ids.tolist(), targets)}

    def forward(self, ids):
        return torch.stack([self.table[tuple(row)] for row in ids.tolist()]), ids == 0


def _synthetic(rng, count: int, length: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Ids with 3..length valid tokens and fp16 targets: a component shared by all prompts + their own."""
    sizes = rng.integers(3, length + 1, size=count)
    ids = np.where(np.arange(length) < sizes[:, None], rng.integers(1, 1000, size=(count, length)), 0)
    shared = np.linspace(-1, 1, length * 256).reshape(length, 256)
    return ids.astype(np.int64), (shared + 0.5 * rng.standard_normal((count, length, 256))).astype(np.float16)


def test_the_check_fails_for_a_student_that_ignores_its_input():
    from edgeseg.distill.train import baseline_metrics, evaluate

    rng = np.random.default_rng(0)
    train_ids, train_targets = _synthetic(rng, 64)
    ids, targets = _synthetic(rng, 30)
    valid = (train_ids != 0)[..., None]
    mean = (train_targets.astype(np.float64) * valid).sum(0) / valid.sum(0)  # per-position mean, by hand
    base = baseline_metrics(train_targets, train_ids, ids, targets)
    ignoring = evaluate(_Fixed(mean), ids, targets, {}, 7, "cpu", False)
    entry = {**ignoring, "baseline_mean_cosine": base["mean_cosine"], "baseline_retrieval_top1": base["retrieval_top1"]}
    assert ignoring["retrieval_chance"] == 1 / 30
    assert math.isclose(ignoring["mean_cosine"], base["mean_cosine"], abs_tol=1e-6)
    assert ignoring["retrieval_top1"] == base["retrieval_top1"] < 4 / 30  # it tells prompts apart by length only
    with pytest.raises(AssertionError):
        assert_beats_baselines(entry)
    # the same check passes for a student that reproduces the teacher (cosine 1, every prompt retrieved)
    perfect = evaluate(_Lookup(ids, targets), ids, targets, {}, 7, "cpu", False)
    assert math.isclose(perfect["mean_cosine"], 1.0, abs_tol=1e-9) and perfect["retrieval_top1"] == 1.0
    assert_beats_baselines({**perfect, "baseline_mean_cosine": base["mean_cosine"],
                            "baseline_retrieval_top1": base["retrieval_top1"]})


def test_sigkill_and_restart_gives_bit_identical_weights(reference_run, corpus, tmp_path):
    ref_run, _ = reference_run
    out = tmp_path / "run"
    args = tiny_args(corpus, out, "--cache", str(ref_run.parent / "cache"))
    proc = subprocess.Popen([sys.executable, "-m", "edgeseg.cli", *args, "--throttle", "0.5"], env=_env(), cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not (out / "checkpoint.pt").exists():
            assert proc.poll() is None, "the run ended before its first checkpoint"
            assert time.monotonic() < deadline
            time.sleep(0.05)
        time.sleep(0.7)  # into the next steps, past the checkpoint
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "student.safetensors").exists()
    step = torch.load(out / "checkpoint.pt", weights_only=True)["step"]
    assert 4 <= step < 12
    resumed = run_cli(args)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming {out} from step {step}" in resumed.stderr
    # safetensors writes its metadata map in no fixed order, so compare tensors byte for byte and the metadata
    ours, ref = load_file(out / "student.safetensors"), load_file(ref_run / "student.safetensors")
    assert ours.keys() == ref.keys()
    for key in ref:
        assert ours[key].dtype == ref[key].dtype and ours[key].numpy().tobytes() == ref[key].numpy().tobytes(), key
    assert _metadata(out / "student.safetensors") == _metadata(ref_run / "student.safetensors")
    steps = [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    ref_steps = [json.loads(x)["step"] for x in (ref_run / "metrics.jsonl").read_text().splitlines()]
    assert steps == ref_steps  # no duplicated or missing entries after the restart


def test_resume_with_other_settings_is_refused(reference_run, corpus, tmp_path, capsys):
    run, _ = reference_run
    code = main(tiny_args(corpus, run, "--cache", str(run.parent / "cache"), "--lr", "1e-3"))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "other settings (lr)" in err[0]


# -- distributed -----------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_gloo_processes_match_one_process(reference_run, corpus, tmp_path):
    ref_run, _ = reference_run  # single process, global batch 8
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port()),
           "-m", "edgeseg.cli", "-v", *tiny_args(corpus, out, "--cache", str(tmp_path / "cache"))]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=240, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "rank 1" in proc.stderr  # both ranks built shards of the cache
    config = json.loads((out / "config.json").read_text())
    assert config["world_size"] == 2
    ours, ref = load_file(out / "student.safetensors"), load_file(ref_run / "student.safetensors")
    assert ours.keys() == ref.keys()
    for key in ref:
        torch.testing.assert_close(ours[key], ref[key], rtol=1e-4, atol=1e-5, msg=key)
    # the cache built by two ranks equals the one built by one process
    shards = sorted(p.relative_to(tmp_path / "cache") for p in (tmp_path / "cache").glob("*/targets-*.npy"))
    assert shards == sorted(p.relative_to(ref_run.parent / "cache")
                            for p in (ref_run.parent / "cache").glob("*/targets-*.npy"))
    for shard in shards:
        assert np.array_equal(np.load(tmp_path / "cache" / shard), np.load(ref_run.parent / "cache" / shard))


# -- splice ------------------------------------------------------------------------------------------
def test_splice_writes_litetext_layout_that_loads_back_exactly(tmp_path, capsys):
    student = build_encoder("mobileclip-s0", seed=5)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        student.encoder.positional_embedding.pos_embed.pos_embed.copy_(torch.randn(1, 1, 16, 512, generator=gen))
    save_encoder(student, tmp_path / "student.safetensors")
    vision = {"detector.backbone.vision_backbone.trunk.w": torch.randn(3, 4, generator=gen),
              "tracker.head.bias": torch.randn(5, generator=gen)}
    old_text = {SAM3_TEXT_PREFIX + "encoder.token_embedding.weight": torch.zeros(4, 8),
                SAM3_TEXT_PREFIX + "resizer.weight": torch.zeros(2, 8)}
    torch.save({"model": {**vision, **old_text}, "epoch": 7}, tmp_path / "sam3.pt")
    out = tmp_path / "sam3_litetext.pt"
    code = main(["distill", "splice", "--sam3", str(tmp_path / "sam3.pt"), "--student",
                 str(tmp_path / "student.safetensors"), "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    ckpt = read_checkpoint(out)
    assert (ckpt.layout, ckpt.container, ckpt.looks_like) == ("efficientsam3", "litetext-merged", "mobileclip-s0")
    raw = torch.load(out, weights_only=True)
    assert raw["epoch"] == 7 and raw["meta"]["position_table"] == "slice"
    for key, value in vision.items():
        assert torch.equal(raw["model"][key], value)
    assert not any(k in raw["model"] for k in old_text)
    table = raw["model"][SAM3_TEXT_PREFIX + STUDENT_TABLE_KEY]
    assert table.shape == (1, 1, 77, 512)
    ref = student.state_dict()
    assert torch.equal(table[0, 0, :16], ref[STUDENT_TABLE_KEY][0, 0])
    loaded = load_encoder("mobileclip-s0", out, position_table="slice")
    assert loaded.context_length == 16 and all(torch.equal(loaded.state_dict()[k], ref[k]) for k in ref)
    ids = torch.tensor(get_tokenizer()(["a dog", "the red car on the left"], 16).ids)
    with torch.no_grad():
        assert torch.equal(loaded(ids)[0], student(ids)[0])
    # without --position-table the loader follows the mode the file records ("slice")
    default = load_encoder("mobileclip-s0", out)
    assert all(torch.equal(default.state_dict()[k], ref[k]) for k in ref)
    # documented: bilinear 77 -> 16 resamples the rows, so a spliced file must be read with slice
    resized = torch.nn.functional.interpolate(table.float(), size=(16, 512), mode="bilinear", align_corners=False)
    assert not torch.equal(resized, ref[STUDENT_TABLE_KEY])


def test_splice_bad_inputs(tmp_path, capsys):
    (tmp_path / "student.safetensors").write_bytes(b"not read: the SAM3 file is checked first")
    torch.save({"model": {"detector.backbone.vision_backbone.w": torch.zeros(2)}}, tmp_path / "novision.pt")
    out = tmp_path / "x.pt"
    for sam3, match in ((tmp_path / "missing.pt", "does not exist"), (tmp_path / "novision.pt", "no SAM3 text")):
        code = main(["distill", "splice", "--sam3", str(sam3), "--student", str(tmp_path / "student.safetensors"),
                     "--out", str(out)])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and match in err[0]
        assert not out.exists() and not list(tmp_path.glob(".x.pt*"))


# -- bad input through the CLI ------------------------------------------------------------------------
def _expect_error(args: list[str], match: str, capsys, out: Path) -> None:
    code = main(args)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, err
    assert len(err) == 1 and err[0].startswith("edgeseg: error:") and match in err[0], err
    assert not out.exists(), "a failed run must leave no run folder"


def test_held_out_prompts_are_dropped_from_a_user_corpus(corpus, tmp_path):
    """Prompts equal (after normalization) to eval, reference or --eval-prompts prompts are not trained on."""
    from edgeseg.corpus import normalize_prompt
    from edgeseg.distill.train import DistillConfig, prepare_prompts

    train = _lines("distill", 40)
    shipped_eval, reference = _lines("eval", 1, skip=100)[0], _lines("reference", 1, skip=7)[0]
    own_eval = _lines("distill", 1, skip=500)[0]
    path = tmp_path / "user.txt"
    path.write_text("\n".join([*train, f"  {shipped_eval.upper()} ", reference, own_eval]) + "\n", encoding="utf-8")
    own = tmp_path / "own_eval.txt"
    own.write_text(own_eval + "\n", encoding="utf-8")
    expected = {normalize_prompt(t) for t in (shipped_eval, reference, own_eval)}
    for eval_file, dropped in ((None, expected - {normalize_prompt(own_eval)}), (str(own), expected)):
        notes: list[str] = []
        cfg = DistillConfig(student="mobileclip-s0", out=str(tmp_path / "run"), prompts=[str(path)],
                            eval_prompts=eval_file)
        prompts = prepare_prompts(cfg, notes.append)
        assert set(prompts.dropped) == dropped and set(prompts.train.normalized) & expected == expected - dropped
        assert len(prompts.train.normalized) == len(train) + 3 - len(dropped)
        assert len(notes) == 1 and f"dropped {len(dropped)} training prompt(s)" in notes[0], notes
        if eval_file:
            assert prompts.eval.normalized == [normalize_prompt(own_eval)]


def test_dropped_prompts_are_counted_in_config_and_report(corpus, tmp_path):
    train = tmp_path / "train.txt"
    extra = [_lines("eval", 1, skip=3)[0].upper(), _lines("reference", 1)[0], _lines("eval", 1)[0]]
    train.write_text(corpus["train"].read_text() + "\n".join(extra) + "\n", encoding="utf-8")
    out = tmp_path / "run"
    proc = run_cli(tiny_args({"train": train, "eval": corpus["eval"]}, out, steps=2))
    assert proc.returncode == 0, proc.stderr
    assert "dropped 3 training prompt(s) that are held-out prompts" in proc.stderr
    assert "3 held-out prompt(s) dropped from training" in proc.stderr.strip().splitlines()[-1]
    config = json.loads((out / "config.json").read_text())
    assert config["dropped_held_out"]["count"] == 3 and len(config["dropped_held_out"]["examples"]) == 3
    assert config["train_prompts"] == 96 and config["eval_prompts"] == 24


def test_bad_inputs_exit_2_with_one_line_and_nothing_written(corpus, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    base = ["distill", "--prompts", str(corpus["train"]), "--eval-prompts", str(corpus["eval"]), "--out", str(out)]
    _expect_error(["distill", "--out", str(out)], "needs --student", capsys, out)
    _expect_error(["distill", "--student", "mobileclip-s9", "--out", str(out)], "unknown encoder", capsys, out)
    _expect_error(["distill", "--student", "sam3", "--out", str(out)], "is the teacher", capsys, out)
    _expect_error([*base, "--student", "mobileclip-s0", "--teacher-checkpoint", str(tmp_path / "nope.pt")],
                  "does not exist", capsys, out)
    (tmp_path / "corrupt.pt").write_bytes(b"PK\x03\x04 this is not a checkpoint")
    _expect_error([*base, "--student", "mobileclip-s0", "--teacher-checkpoint", str(tmp_path / "corrupt.pt")],
                  "corrupt", capsys, out)
    (tmp_path / "empty.txt").write_text("\n \n", encoding="utf-8")
    _expect_error(["distill", "--student", "mobileclip-s0", "--prompts", str(tmp_path / "empty.txt"),
                   "--out", str(out)], "holds no prompts", capsys, out)
    held_out = tmp_path / "held_out.txt"
    held_out.write_text("\n".join([*_lines("eval", 3), *_lines("reference", 2)]) + "\n", encoding="utf-8")
    _expect_error(["distill", "--student", "mobileclip-s0", "--prompts", str(held_out), "--out", str(out)],
                  "once its 5 held-out prompt(s) are dropped", capsys, out)
    _expect_error(["distill", "--student", "mobileclip-s0", "--out", str(tmp_path / "no" / "run")],
                  "does not exist", capsys, tmp_path / "no")
    _expect_error([*base, "--student", "mobileclip-s0", "--device", "gpu7"], "unknown --device 'gpu7'", capsys, out)

    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    if os.geteuid() == 0:  # root ignores permissions: make the check see what a user would
        real = os.access
        monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == locked else real(p, mode))
    _expect_error([*base[:-1], str(locked / "run"), "--student", "mobileclip-s0"], "not writable", capsys,
                  locked / "run")
    monkeypatch.undo()
    locked.chmod(0o755)


def test_cache_from_another_teacher_is_refused(reference_run, corpus, tmp_path, capsys):
    run, _ = reference_run
    out = tmp_path / "run"
    _expect_error(tiny_args(corpus, out, "--cache", str(run.parent / "cache"), "--teacher-seed", "1"),
                  "made by another teacher", capsys, out)


def test_init_from_a_finished_run_starts_where_it_ended(reference_run, corpus, tmp_path, capsys):
    run, _ = reference_run
    out = tmp_path / "again"
    args = tiny_args(corpus, out, "--cache", str(run.parent / "cache"), "--init", str(run / "student.safetensors"))
    assert main([a if a != "12" else "1" for a in args]) == 0, capsys.readouterr().err
    first = json.loads((out / "config.json").read_text())["initial_eval"]
    last = json.loads((run / "config.json").read_text())["final_eval"]
    assert math.isclose(first["mean_cosine"], last["mean_cosine"], rel_tol=1e-9)
    assert math.isclose(first["worst_cosine"], last["worst_cosine"], rel_tol=1e-9)


def test_eval_groups_by_length_and_source(tmp_path):
    from edgeseg.distill.train import eval_groups, source_map

    (tmp_path / "alpha.txt").write_text("Red Car\ndog\n", encoding="utf-8")
    (tmp_path / "beta.txt").write_text("dog\ncat\nthe tall man on the left holding a red umbrella\n", encoding="utf-8")
    sources = source_map(tmp_path)
    assert sources == {"red car": "alpha", "dog": "alpha", "cat": "beta",
                       "the tall man on the left holding a red umbrella": "beta"}
    prompts = ["red car", "cat", "the tall man on the left holding a red umbrella", "unseen thing"]
    ids = get_tokenizer()(prompts, 16).ids
    groups = eval_groups(ids, prompts, sources)
    assert list(groups["source alpha"]) == [0] and list(groups["source beta"]) == [1, 2]
    assert list(groups["source unknown"]) == [3]
    # token counts (one per word, + SOT/EOT): "red car" 4, "cat" 3, the long prompt 12
    assert list(groups["length tokens<=4"]) == [0, 1, 3] and list(groups["length tokens>=11"]) == [2]
