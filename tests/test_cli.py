"""End-to-end tests of the ``edgeseg`` command line: ``info``, ``tokenize`` and ``encode``.

Every command runs in a separate process so that exit codes, stdout and stderr are the real ones.
A fresh ``python -m edgeseg.cli`` spends ~5 s importing torch, and this file runs ~90 commands, so
by default each command runs in a child forked from one helper process that has imported torch
and nothing else (no edgeseg, no click): the child runs ``edgeseg.cli`` as ``__main__`` exactly as
``python -m`` does, with its own stdout/stderr files and exit status. Set ``EDGESEG_TEST_FRESH=1``
to run every command in a fresh interpreter instead (slow, ~4 min on 2 cores);
:func:`test_forked_runner_matches_a_fresh_process` always checks a few commands both ways.

Expected values come from the specification, not from the code under test: parameter counts
from ``shared/reference/encoders.md`` (the paper's figures), token ids hand-checked against CLIP's
vocabulary (and, where installed, Meta's own tokenizer), the position-table reduction re-derived
with numpy.
"""

from __future__ import annotations

import collections
import importlib.util
import json
import math
import os
import pickle
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from forked_cli import ForkServer, Run, fresh_run

from edgeseg.checkpoints import save_encoder
from edgeseg.encode import encode_prompts
from edgeseg.encoders import build_encoder
from edgeseg.tokenizer import default_vocab_path

FRESH = os.environ.get("EDGESEG_TEST_FRESH") == "1"
TIMEOUT_S = 180

SOT, EOT, PAD = 49406, 49407, 0
A, DOG, PHOTO, OF, CAT = 320, 1929, 1125, 539, 2368  # CLIP BPE ids of "a</w>", "dog</w>", ...

STUDENTS = ("mobileclip-s0", "mobileclip-s1", "mobileclip2-l")
ENCODERS = ("sam3", *STUDENTS)
WIDTH = {"mobileclip-s0": 512, "mobileclip-s1": 512, "mobileclip2-l": 768}
# shared/reference/encoders.md: sam3 2.1, students 3.1 (the paper's counts use a 77-row table).
PARAMS = {"sam3": 353_724_672, "mobileclip-s0": 42_541_312, "mobileclip-s1": 63_528_192,
          "mobileclip2-l": 123_800_320}
PARAMS_77 = {"mobileclip-s0": 42_572_544, "mobileclip-s1": 63_559_424, "mobileclip2-l": 123_847_168}
PAPER_M = {"mobileclip-s0": 42.57, "mobileclip-s1": 63.56, "mobileclip2-l": 123.85}
DEFAULT_CONTEXT = {"sam3": 32, "mobileclip-s0": 16, "mobileclip-s1": 16, "mobileclip2-l": 16}
# MobileCLIP-S0's two RepMixer blocks hold 4 BatchNorms each (token_mixer.norm.rbr_skip,
# token_mixer.mixer.rbr_skip, token_mixer.mixer.rbr_conv.0.bn, convffn.conv.bn; encoders.md 4):
# running_mean + running_var (512 floats each, 4 bytes) and num_batches_tracked (int64, 8 bytes)
# are state-dict entries that are not parameters.
S0_BATCHNORMS = 2 * 4
BUFFER_BYTES = {"sam3": 0, "mobileclip-s0": S0_BATCHNORMS * (2 * 512 * 4 + 8), "mobileclip-s1": 0,
                "mobileclip2-l": 0}

# Cases where the CLI breaks its contract; each is an xfail(strict=True), so the file passes today
# and fails (XPASS) once the CLI is fixed: then delete the entry.
KNOWN_CLI_BUGS: dict[str, str] = {}  # case id -> reason; a listed case is an expected failure


# -- running the CLI (tests/forked_cli.py) --------------------------------------------------------
class CLI:
    """Runs ``edgeseg ARGS`` in a separate process: a fork of the helper, or a fresh interpreter."""

    def __init__(self, workdir: Path, fresh: bool):
        self.workdir, self.fresh = workdir, fresh
        self.server = None if fresh else ForkServer(workdir, TIMEOUT_S)

    def __call__(self, *args: str | os.PathLike, cwd: Path | None = None) -> Run:
        if self.fresh:
            return fresh_run(tuple(str(a) for a in args), cwd or self.workdir, TIMEOUT_S)
        run = self.server(*args, cwd=cwd)
        # whatever importing torch printed would reach the stderr of a real run too
        return Run(run.args, run.returncode, run.stdout, self.server.preload_stderr + run.stderr)

    def close(self) -> None:
        if self.server is not None:
            self.server.close()


@pytest.fixture(scope="module")
def cli(request, tmp_path_factory):
    runner = CLI(tmp_path_factory.mktemp("cli-runs"), fresh=FRESH)
    request.getfixturevalue("files")  # build the checkpoints while the helper imports torch
    yield runner
    runner.close()


def ok(run: Run) -> Run:
    assert run.returncode == 0, str(run)
    assert "Traceback" not in run.stderr, str(run)
    return run


def says_random(run: Run) -> bool:
    """Whether stderr says the weights are random, paths (tmp folders named after tests) left out."""
    text = run.stderr
    for arg in run.args:
        if os.sep in arg:
            text = text.replace(arg, "<path>")
    return re.search(r"\brandom\b", text, re.I) is not None


def load_npz(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


def write_prompts(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


# -- shared inputs ------------------------------------------------------------------------------
PROMPTS = ["a dog", "a photo of a cat", "  A   PHOTO  of a   Cat  ", "café &amp; crème brûlée", "red car"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Prompt files and checkpoints shared by the module (the checkpoints take a few seconds)."""
    d = tmp_path_factory.mktemp("inputs")
    f: dict[str, Path] = {"prompts": write_prompts(d / "prompts.txt", PROMPTS)}

    model5 = build_encoder("mobileclip-s0", seed=5)
    f["s0_seed5"] = save_encoder(model5, d / "s0_seed5.safetensors")

    # a SAM3-LiteText-style merged file: the student under SAM3's prefix, 77-row table, other keys
    student77 = build_encoder("mobileclip-s0", context_length=77, seed=7).state_dict()
    merged = {"detector.backbone.language_backbone." + k: v for k, v in student77.items()}
    torch.save({"model": merged | {"tracker.x": torch.zeros(1)}}, d / "litetext_s0.pt")
    f["merged"] = d / "litetext_s0.pt"

    s1 = {k: torch.zeros(v.shape, dtype=v.dtype)
          for k, v in build_encoder("mobileclip-s1", device="meta").state_dict().items()}
    torch.save(s1, d / "s1_state_dict.pt")
    f["s1"] = d / "s1_state_dict.pt"

    data = f["merged"].read_bytes()
    (d / "truncated.pt").write_bytes(data[: len(data) // 2])
    f["truncated"] = d / "truncated.pt"
    yield {"dir": d, "paths": f, "model5": model5, "student77": student77}
    for path in d.rglob("*"):  # ~700 MB of checkpoints; pytest keeps the last runs' folders
        if path.is_file() and path.stat().st_size > 1 << 20:
            path.unlink()


@pytest.fixture(scope="module")
def bad_files(files):
    """One file per kind of bad input (prompt files and checkpoints)."""
    d = files["dir"] / "bad"
    d.mkdir()
    p = {
        "missing-prompts": d / "no_such_prompts.txt",
        "directory-prompts": d / "a_folder",
        "missing-checkpoint": d / "no_such_checkpoint.pt",
        "directory-checkpoint": d / "a_folder",
    }
    (d / "a_folder").mkdir()
    (d / "empty.txt").write_bytes(b"")
    (d / "blank.txt").write_bytes(b"\n   \n\t\r\n\n")
    (d / "latin1.txt").write_bytes(b"a dog\ncaf\xe9\n")
    torch.save(NotAStateDict(), d / "custom_object.pt")
    with open(d / "protocol4_object.pt", "wb") as fh:
        pickle.dump({"weight": NotAStateDict()}, fh, protocol=4)
    torch.save({"weight": torch.zeros(2), "hook": write_prompts}, d / "function_in_dict.pt")
    torch.save(OrderedDictSubclass(weight=torch.zeros(2)), d / "ordered_dict_subclass.pt")
    torch.save([1, 2, 3], d / "list.pt")
    torch.save({"weight": torch.zeros(2), "step": 3}, d / "non_tensor_value.pt")
    torch.save({"model": {"vision.weight": torch.zeros(2)}}, d / "no_text_encoder.pt")
    (d / "zero_bytes.pt").write_bytes(b"")
    (d / "corrupt.safetensors").write_bytes(np.random.default_rng(0).bytes(4096))
    for name in ("empty.txt", "blank.txt", "latin1.txt"):
        p[name.split(".")[0] + "-prompts"] = d / name
    for name in ("custom_object.pt", "protocol4_object.pt", "function_in_dict.pt", "ordered_dict_subclass.pt",
                 "list.pt", "non_tensor_value.pt", "no_text_encoder.pt", "zero_bytes.pt", "corrupt.safetensors"):
        p[name.split(".")[0]] = d / name
    p.update(files["paths"])
    return p


class NotAStateDict:
    """A custom class: pickles of it need arbitrary code, so weights_only loading refuses them."""

    def __init__(self):
        self.weight = torch.zeros(2)


class OrderedDictSubclass(collections.OrderedDict):
    pass


# -- 1. info ------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ENCODERS)
def test_info_json(cli, name):
    run = ok(cli("info", "--encoder", name, "--json"))
    data = json.loads(run.stdout)
    assert data["name"] == name
    for key in ("params", "context_length", "output_dim", "bytes_fp32"):
        assert type(data[key]) is int, (key, data[key])
    assert data["params"] == PARAMS[name]
    assert data["context_length"] == DEFAULT_CONTEXT[name]
    assert data["output_dim"] == 256
    assert data["bytes_fp32"] == 4 * PARAMS[name] + BUFFER_BYTES[name]
    if name in STUDENTS:
        assert data["params_with_checkpoint_table"] == PARAMS_77[name]
        assert data["params_with_checkpoint_table"] - data["params"] == (77 - 16) * WIDTH[name]
        assert math.isclose(data["params_with_checkpoint_table"], PAPER_M[name] * 1e6, rel_tol=2e-3)
    else:
        assert data["params"] == 353_724_672


def test_info_context_length_changes_student_position_table(cli):
    data = json.loads(ok(cli("info", "--encoder", "mobileclip-s0", "--context-length", "8", "--json")).stdout)
    assert data["context_length"] == 8
    assert data["params"] == PARAMS["mobileclip-s0"] - 8 * 512
    assert data["params_with_checkpoint_table"] == PARAMS_77["mobileclip-s0"]
    assert data["bytes_fp32"] == 4 * data["params"] + BUFFER_BYTES["mobileclip-s0"]


def test_info_table_output(cli):
    run = ok(cli("info", "--encoder", "mobileclip-s1"))
    assert re.search(r"^params\s+63,528,192$", run.stdout, re.M), run.stdout
    with pytest.raises(json.JSONDecodeError):
        json.loads(run.stdout)


def test_info_with_checkpoint(cli, files):
    path = files["paths"]["merged"]
    data = json.loads(ok(cli("info", "--encoder", "mobileclip-s0", "--checkpoint", path, "--json")).stdout)
    assert data["name"] == "mobileclip-s0"
    assert data["params"] == PARAMS["mobileclip-s0"]
    assert data["context_length"] == 16
    assert (data["layout"], data["container"]) == ("efficientsam3", "litetext-merged")
    assert (data["semantics"], data["pad_id"]) == ("efficientsam3", 0)
    assert data["weights"] == str(path)


# -- 2. tokenize --------------------------------------------------------------------------------
def test_tokenize_known_ids(cli, tmp_path):
    long_a = " ".join(["a"] * 40)
    prompts = write_prompts(tmp_path / "p.txt", ["a dog", "", "   ", "a photo of a cat", long_a, "\t", long_a + " dog"])
    out = tmp_path / "ids.npz"
    run = ok(cli("tokenize", "--prompts", prompts, "--out", out))
    arrays = load_npz(out)
    assert list(arrays) == ["input_ids"]
    ids = arrays["input_ids"]
    assert ids.dtype == np.int64
    assert ids.shape == (4, 16)  # blank lines are skipped
    assert ids[0].tolist() == [SOT, A, DOG, EOT] + [PAD] * 12
    assert ids[1].tolist() == [SOT, A, PHOTO, OF, A, CAT, EOT] + [PAD] * 9
    assert ids[2].tolist() == [SOT] + [A] * 14 + [EOT]  # truncated, EOT kept last
    assert ids[3].tolist() == [SOT] + [A] * 14 + [EOT]
    lines = [line for line in run.stderr.splitlines() if "truncat" in line]
    assert len(lines) == 1 and re.search(r"(?<!\d)2 truncated|truncated\D{0,3}2(?!\d)", lines[0]), run.stderr
    assert not list(tmp_path.glob(".ids.npz.tmp-*"))


@pytest.mark.parametrize("length", [2, 5, 77])
def test_tokenize_context_length(cli, tmp_path, length):
    prompts = write_prompts(tmp_path / "p.txt", ["a photo of a cat"])
    out = tmp_path / "ids.npz"
    ok(cli("tokenize", "--prompts", prompts, "--context-length", length, "--out", out))
    ids = load_npz(out)["input_ids"]
    full = [SOT, A, PHOTO, OF, A, CAT, EOT]
    expected = full + [PAD] * (length - len(full)) if length >= len(full) else full[: length - 1] + [EOT]
    assert ids.dtype == np.int64 and ids.tolist() == [expected]


def _meta_tokenizer():
    """Meta's SimpleTokenizer, loaded from its file so that sam3's heavy package init is skipped."""
    spec = importlib.util.find_spec("sam3")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("Meta's sam3 package is not installed")
    source = Path(list(spec.submodule_search_locations)[0]) / "model" / "tokenizer_ve.py"
    try:
        file_spec = importlib.util.spec_from_file_location("_meta_tokenizer_ve", source)
        module = importlib.util.module_from_spec(file_spec)
        file_spec.loader.exec_module(module)
    except (FileNotFoundError, ImportError):
        from sam3.model import tokenizer_ve as module
    return module.SimpleTokenizer(bpe_path=str(default_vocab_path()))


@pytest.mark.parity
@pytest.mark.parametrize("length", [16, 32])
def test_tokenize_matches_meta_tokenizer(cli, tmp_path, length):
    prompts = [*PROMPTS, "a " * 40 + "dog", "Ünïcödé ñandú 🐕 dog's & cat’s", "&lt;b&gt;bold&lt;/b&gt;",
               "3.14 meters, 12 o'clock", "ＦＵＬＬ ｗｉｄｔｈ", "tab\tseparated\u00a0nbsp"]
    path = write_prompts(tmp_path / "p.txt", prompts)
    out = tmp_path / "ids.npz"
    ok(cli("tokenize", "--prompts", path, "--context-length", length, "--out", out))
    expected = _meta_tokenizer()(prompts, context_length=length).numpy()
    np.testing.assert_array_equal(load_npz(out)["input_ids"], expected)


# -- 3. encode ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def random_s0(cli, files, tmp_path_factory):
    d = tmp_path_factory.mktemp("encode-seed0")
    runs = [ok(cli("encode", "--encoder", "mobileclip-s0", "--prompts", files["paths"]["prompts"],
                   "--out", d / f"run{i}.npz")) for i in (1, 2)]
    return runs, [load_npz(d / f"run{i}.npz") for i in (1, 2)]


def test_encode_random_weights_output_contract(random_s0):
    runs, (arrays, _) = random_s0
    assert set(arrays) == {"input_ids", "mask", "memory"}
    ids, mask, memory = arrays["input_ids"], arrays["mask"], arrays["memory"]
    batch = len(PROMPTS)
    assert ids.dtype == np.int64 and ids.shape == (batch, 16)
    assert mask.dtype == np.bool_ and mask.shape == (batch, 16)
    assert memory.dtype == np.float32 and memory.shape == (batch, 16, 256)
    np.testing.assert_array_equal(mask, ids == 0)
    assert ids[0].tolist() == [SOT, A, DOG, EOT] + [PAD] * 12
    np.testing.assert_array_equal(ids[1], ids[2])  # cleaning: case and spacing do not matter
    assert np.isfinite(memory).all() and memory.std() > 0
    assert says_random(runs[0]) and says_random(runs[1]), runs[0].stderr


def test_encode_random_weights_are_seeded(random_s0):
    _, (first, second) = random_s0
    for key in ("input_ids", "mask", "memory"):
        np.testing.assert_array_equal(first[key], second[key])


def test_encode_seed_option_changes_random_weights(cli, files, random_s0, tmp_path):
    out = tmp_path / "seed1.npz"
    ok(cli("encode", "--encoder", "mobileclip-s0", "--seed", "1", "--prompts", files["paths"]["prompts"], "--out", out))
    memory = load_npz(out)["memory"]
    assert not np.allclose(memory, random_s0[1][0]["memory"], atol=1e-3)


def test_encode_with_checkpoint_matches_in_process(cli, files, random_s0, tmp_path):
    out = tmp_path / "ckpt.npz"
    run = ok(cli("encode", "--encoder", "mobileclip-s0", "--checkpoint", files["paths"]["s0_seed5"],
                 "--prompts", files["paths"]["prompts"], "--out", out))
    assert not says_random(run), run.stderr
    arrays = load_npz(out)
    expected = encode_prompts(files["model5"], PROMPTS)
    np.testing.assert_array_equal(arrays["input_ids"], expected.input_ids)
    np.testing.assert_array_equal(arrays["mask"], expected.mask)
    np.testing.assert_allclose(arrays["memory"], expected.memory, rtol=1e-5, atol=1e-5)
    assert not np.allclose(arrays["memory"], random_s0[1][0]["memory"], atol=1e-3)


def _interpolate_rows(table: np.ndarray, length: int) -> np.ndarray:
    """Linear resize of [T, D] rows to ``length`` rows, align_corners=False (half-pixel centres)."""
    rows = table.shape[0]
    src = np.maximum((np.arange(length) + 0.5) * rows / length - 0.5, 0.0)
    lo = np.floor(src).astype(int)
    hi = np.minimum(lo + 1, rows - 1)
    w = (src - lo)[:, None]
    return (1 - w) * table[lo] + w * table[hi]


@pytest.fixture(scope="module")
def merged_runs(cli, files, tmp_path_factory):
    d = tmp_path_factory.mktemp("encode-merged")
    out = {}
    for mode in ("slice", "interpolate"):
        run = ok(cli("encode", "--encoder", "mobileclip-s0", "--checkpoint", files["paths"]["merged"],
                     "--position-table", mode, "--prompts", files["paths"]["prompts"], "--out", d / f"{mode}.npz"))
        assert not says_random(run), run.stderr
        out[mode] = load_npz(d / f"{mode}.npz")
    return out


@pytest.mark.parametrize("mode", ["slice", "interpolate"])
def test_encode_litetext_checkpoint_position_table(files, merged_runs, mode):
    arrays = merged_runs[mode]
    state = dict(files["student77"])
    key = "encoder.positional_embedding.pos_embed.pos_embed"
    table = state[key][0, 0].double().numpy()
    assert table.shape == (77, 512)
    rows = table[:16] if mode == "slice" else _interpolate_rows(table, 16)
    state[key] = torch.from_numpy(rows).float()[None, None]
    model = build_encoder("mobileclip-s0", seed=None)
    model.load_state_dict(state, strict=True)
    with torch.inference_mode():
        memory, mask = model(torch.from_numpy(arrays["input_ids"]))
    assert arrays["memory"].shape == (len(PROMPTS), 16, 256)
    np.testing.assert_array_equal(arrays["mask"], mask.numpy())
    np.testing.assert_allclose(arrays["memory"], memory.numpy(), rtol=1e-5, atol=1e-5)


def test_encode_position_table_modes_differ(merged_runs):
    np.testing.assert_array_equal(merged_runs["slice"]["input_ids"], merged_runs["interpolate"]["input_ids"])
    assert not np.allclose(merged_runs["slice"]["memory"], merged_runs["interpolate"]["memory"], atol=1e-4)


# -- 4. bad inputs ------------------------------------------------------------------------------
def _case(command: str, what: str, args: list[str], mentions: str | None = None):
    """One bad-input case; ``{name}`` in args is a path from ``bad_files``, ``OUT`` the output."""
    case_id = f"{command}-{what}"
    marks = [pytest.mark.xfail(strict=True, reason="CLI bug: " + KNOWN_CLI_BUGS[case_id])] \
        if case_id in KNOWN_CLI_BUGS else []
    return pytest.param(command, args, mentions, id=case_id, marks=marks)


def _with_out(command: str, args: list[str]) -> list[str]:
    return args + ["--out", "OUT"] if command in ("tokenize", "encode") else args


PROMPT_FILES = ["missing-prompts", "empty-prompts", "blank-prompts", "latin1-prompts", "directory-prompts"]
CHECKPOINTS = [
    ("wrong-model", "s1", "s1_state_dict.pt"),
    ("missing-checkpoint", "missing-checkpoint", "no_such_checkpoint.pt"),
    ("directory-checkpoint", "directory-checkpoint", "a_folder"),
    ("truncated", "truncated", "truncated.pt"),
    ("custom-object", "custom_object", "custom_object.pt"),
    ("pickle-protocol4-object", "protocol4_object", "protocol4_object.pt"),
    ("function-in-dict", "function_in_dict", "function_in_dict.pt"),
    ("ordered-dict-subclass", "ordered_dict_subclass", "ordered_dict_subclass.pt"),
    ("list-not-dict", "list", "list.pt"),
    ("non-tensor-value", "non_tensor_value", "non_tensor_value.pt"),
    ("no-text-encoder", "no_text_encoder", "no_text_encoder.pt"),
    ("zero-bytes", "zero_bytes", "zero_bytes.pt"),
    ("corrupt-safetensors", "corrupt", "corrupt.safetensors"),
]
S0 = ["--encoder", "mobileclip-s0"]
PROMPTS_ARG = ["--prompts", "{prompts}"]


def ref(key: str) -> str:
    """Placeholder for the path ``bad_files[key]``."""
    return "{" + key + "}"


def _input_cases() -> list:
    cases = []
    for kind in PROMPT_FILES:
        cases.append(_case("tokenize", kind, ["--prompts", ref(kind), "--out", "OUT"], ref(kind)))
        cases.append(_case("encode", kind, S0 + ["--prompts", ref(kind), "--out", "OUT"], ref(kind)))
    cases.append(_case("info", "unknown-encoder", ["--encoder", "mobileclip-s9"], "mobileclip-s9"))
    cases.append(_case("encode", "unknown-encoder", ["--encoder", "mobileclip-s9", *PROMPTS_ARG, "--out", "OUT"],
                       "mobileclip-s9"))
    for what, key, filename in CHECKPOINTS:
        cases.append(_case("info", what, S0 + ["--checkpoint", ref(key)], filename))
        cases.append(_case("encode", what, S0 + ["--checkpoint", ref(key), *PROMPTS_ARG, "--out", "OUT"], filename))
    return cases


BAD_CASES = [
    *_input_cases(),
    _case("info", "student-checkpoint-for-sam3", ["--encoder", "sam3", "--checkpoint", "{merged}"], "litetext_s0.pt"),
    _case("info", "bad-position-table", S0 + ["--position-table", "nearest"], "nearest"),
    _case("info", "bad-position-table-with-checkpoint",
          S0 + ["--checkpoint", "{merged}", "--position-table", "nearest"], "nearest"),
    _case("encode", "bad-position-table", _with_out("encode", S0 + ["--position-table", "nearest"] + PROMPTS_ARG),
          "nearest"),
    _case("encode", "bad-position-table-with-checkpoint",
          _with_out("encode", S0 + ["--checkpoint", "{merged}", "--position-table", "nearest"] + PROMPTS_ARG),
          "nearest"),
    _case("tokenize", "context-length-1", _with_out("tokenize", PROMPTS_ARG + ["--context-length", "1"])),
    _case("tokenize", "context-length-0", _with_out("tokenize", PROMPTS_ARG + ["--context-length", "0"])),
    _case("tokenize", "context-length-not-int", _with_out("tokenize", PROMPTS_ARG + ["--context-length", "x"]), "'x'"),
    _case("info", "student-context-length-99", S0 + ["--context-length", "99"], "99"),
    _case("info", "sam3-context-length-40", ["--encoder", "sam3", "--context-length", "40"], "40"),
    _case("encode", "student-context-length-99", _with_out("encode", S0 + ["--context-length", "99"] + PROMPTS_ARG),
          "99"),
    _case("encode", "context-length-1", _with_out("encode", S0 + ["--context-length", "1"] + PROMPTS_ARG)),
    _case("tokenize", "missing-out-folder", PROMPTS_ARG + ["--out", "/nonexistent/dir/x.npz"], "/nonexistent/dir"),
    _case("encode", "missing-out-folder", S0 + PROMPTS_ARG + ["--out", "/nonexistent/dir/x.npz"], "/nonexistent/dir"),
    _case("encode", "missing-out-folder-with-checkpoint",
          S0 + ["--checkpoint", "{s0_seed5}"] + PROMPTS_ARG + ["--out", "/nonexistent/dir/x.npz"], "/nonexistent/dir"),
    _case("info", "missing-encoder-option", ["--json"], "--encoder"),
    _case("encode", "missing-prompts-option", _with_out("encode", S0), "--prompts"),
    _case("tokenize", "missing-out-option", PROMPTS_ARG, "--out"),
    _case("tokenize", "unknown-option", _with_out("tokenize", PROMPTS_ARG + ["--bogus"]), "--bogus"),
    _case("encode", "bad-batch-size", _with_out("encode", S0 + PROMPTS_ARG + ["--batch-size", "0"]), "--batch-size"),
    _case("encode", "unknown-device", _with_out("encode", S0 + PROMPTS_ARG + ["--device", "gpu7"]), "gpu7"),
]


@pytest.mark.parametrize("command, args, mentions", BAD_CASES)
def test_bad_input_fails_cleanly(cli, bad_files, tmp_path, command, args, mentions):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "result.npz"
    paths = {k: str(v) for k, v in bad_files.items()}

    def fill(text: str) -> str:
        return re.sub(r"\{([\w-]+)\}", lambda m: paths[m.group(1)], text)

    argv = [str(out) if a == "OUT" else fill(a) for a in args]
    run = cli(command, *argv, cwd=out_dir)

    assert run.returncode == 2, str(run)
    assert "Traceback" not in run.stderr, str(run)
    lines = run.stderr.splitlines()
    assert len(lines) == 1 and lines[0].strip(), f"expected exactly one stderr line\n{run}"
    assert "error" in lines[0].lower(), str(run)
    if mentions is not None:
        assert fill(mentions) in lines[0], f"the message should name {mentions!r}\n{run}"
    assert run.stdout == "", str(run)
    assert not out.exists()
    assert sorted(p.name for p in out_dir.iterdir()) == [], "leftover files in the output folder"


# -- 5. help ------------------------------------------------------------------------------------
HELP_OPTIONS = {
    None: ["info", "tokenize", "encode", "--verbose", "--version"],
    "info": ["--encoder", "--context-length", "--checkpoint", "--position-table", "--json"],
    "tokenize": ["--prompts", "--context-length", "--out"],
    "encode": ["--encoder", "--checkpoint", "--context-length", "--position-table", "--prompts", "--out",
               "--batch-size", "--device", "--seed"],
}


@pytest.mark.parametrize("command", list(HELP_OPTIONS), ids=lambda c: c or "edgeseg")
@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_help(cli, command, flag):
    run = ok(cli(*([command] if command else []), flag))
    assert run.stdout.startswith("Usage:"), run.stdout
    for option in HELP_OPTIONS[command]:
        assert option in run.stdout, f"{option} missing from the help of {command}"
    assert run.stderr.strip() == "", run.stderr


# -- the fork helper against the real console script ----------------------------------------------
def test_forked_runner_matches_a_fresh_process(cli, bad_files, tmp_path):
    """The console script, run from scratch, gives what the forked runner gives."""
    script = Path(sys.executable).with_name("edgeseg")
    entry = [str(script)] if script.exists() else [sys.executable, "-m", "edgeseg.cli"]
    cases = [
        ["tokenize", "--prompts", bad_files["prompts"], "--out", tmp_path / "ids.npz"],
        ["encode", "--encoder", "mobileclip-s0", "--checkpoint", bad_files["truncated"], "--prompts",
         bad_files["prompts"], "--out", tmp_path / "x.npz"],
    ]
    for args in cases:
        fresh = subprocess.run([*entry, *map(str, args)], capture_output=True, text=True, cwd=tmp_path,
                               stdin=subprocess.DEVNULL, timeout=TIMEOUT_S)
        forked = cli(*args, cwd=tmp_path)
        assert (fresh.returncode, fresh.stdout, fresh.stderr) == (forked.returncode, forked.stdout, forked.stderr)
