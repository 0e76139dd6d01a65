"""The CLI on transformers checkpoints, driven exactly as a user would (``edgeseg info / encode / export /
build / convert / distill splice`` with ``--checkpoint DIR``), against transformers 5.23 as the oracle.

Full-size S0, S1, L and SAM3 text encoders (random weights, tiny vision/detector parts) are built from
their configs and saved with ``save_pretrained`` together with transformers' CLIP tokenizer files;
edgeseg's outputs are compared with ``get_text_features`` on transformers' own tokenization, on valid
positions (max abs diff <= 1e-4, float32, CPU).
"""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
import torch
from hf_models import (
    FULL_TEXT,
    PROMPTS,
    TINY_TEACHER,
    import_transformers,
    load_text_only,
    make_model,
    max_valid_diff,
    save,
    text_features,
    tokenize,
)
from safetensors import safe_open
from test_cli import CLI, FRESH, load_npz, ok, write_prompts

from edgeseg.checkpoints import read_checkpoint, save_encoder
from edgeseg.checkpoints.convert import convert_checkpoint
from edgeseg.encoders import build_encoder

pytestmark = pytest.mark.parity
TOL = 1e-4
STUDENTS = ("mobileclip-s0", "mobileclip-s1", "mobileclip2-l")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Full-size transformers folders (name -> (model, folder)) and a prompts file."""
    import_transformers()
    root = tmp_path_factory.mktemp("hf-cli")
    made = {}
    for i, name in enumerate(("mobileclip-s0", "mobileclip-s1", "mobileclip2-l", "sam3")):
        model = make_model(FULL_TEXT[name], name == "sam3", seed=i)
        made[name] = (model, save(model, root / name))
    made["prompts"] = write_prompts(root / "prompts.txt", [p for p in PROMPTS if p.strip()])
    return made


@pytest.fixture(scope="module")
def cli(request, tmp_path_factory):
    runner = CLI(tmp_path_factory.mktemp("cli-runs"), fresh=FRESH)
    request.getfixturevalue("files")
    yield runner
    runner.close()


def prompts_of(files) -> list[str]:
    return files["prompts"].read_text(encoding="utf-8").splitlines()


def check_against_transformers(out: dict, model, prompts, length: int) -> None:
    ids, attention = tokenize(prompts, length)
    np.testing.assert_array_equal(out["input_ids"], ids)
    np.testing.assert_array_equal(out["mask"], attention == 0)
    assert max_valid_diff(out["memory"], text_features(model, ids, attention), attention) <= TOL


def fails_cleanly(run, *outputs) -> str:
    assert run.returncode == 2, str(run)
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("edgeseg: error: ") and "Traceback" not in run.stderr, str(run)
    for path in outputs:
        assert not path.exists() and not list(path.parent.glob(f".{path.name}.tmp-*")), path
    return lines[0]


def test_info_reports_layout_semantics_and_table(cli, files):
    data = json.loads(ok(cli("info", "--encoder", "mobileclip-s0", "--checkpoint", files["mobileclip-s0"][1],
                             "--json")).stdout)
    assert (data["layout"], data["semantics"], data["pad_id"]) == ("transformers", "transformers", 49407)
    assert (data["context_length"], data["position_table"], data["checkpoint_table_rows"]) == (16, "interpolate", 77)
    data = json.loads(ok(cli("info", "--encoder", "sam3", "--checkpoint", files["sam3"][1], "--json",
                             "--semantics", "efficientsam3")).stdout)
    assert (data["layout"], data["semantics"], data["pad_id"], data["context_length"]) == (
        "transformers", "efficientsam3", 0, 32)


@pytest.mark.parametrize("name,length", [("mobileclip-s0", None), ("mobileclip-s0", 32), ("mobileclip-s1", None),
                                         ("mobileclip2-l", None), ("sam3", None)])
def test_encode_matches_get_text_features(cli, files, tmp_path, name, length):
    model, folder = files[name]
    extra = ("--context-length", str(length)) if length else ()
    out = tmp_path / "memory.npz"
    run = ok(cli("encode", "--encoder", name, "--checkpoint", folder, "--prompts", files["prompts"], "--out", out,
                 *extra))
    assert "transformers, pad id 49407" in run.stderr
    check_against_transformers(load_npz(out), model, prompts_of(files), length or (32 if name == "sam3" else 16))


def test_s0_export_and_jetson_bundles_match_get_text_features(cli, files, tmp_path):
    model, folder = files["mobileclip-s0"]
    ok(cli("export", "--encoder", "mobileclip-s0", "--checkpoint", folder, "--out", tmp_path / "fp32"))
    manifest = json.loads((tmp_path / "fp32" / "manifest.json").read_text())
    assert (manifest["semantics"], manifest["tokenizer"]["pad_id"]) == ("transformers", 49407)
    assert manifest["source"]["layout"] == "transformers"
    ok(cli("build", "--target", "jetson", "--precision", "fp32", "--encoder", "mobileclip-s0", "--checkpoint", folder,
           "--out", tmp_path / "jetson"))
    for bundle in ("fp32", "jetson"):
        out = tmp_path / f"{bundle}.npz"
        ok(cli("encode", "--bundle", tmp_path / bundle, "--prompts", files["prompts"], "--out", out))
        check_against_transformers(load_npz(out), model, prompts_of(files), 16)


def text_tensors(folder) -> dict[str, torch.Tensor]:
    with safe_open(str(folder / "model.safetensors"), "pt") as fh:
        return {k: fh.get_tensor(k) for k in fh.keys() if k.startswith(("text_encoder.", "text_projection."))}


def assert_identical(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert set(a) == set(b)
    for key in a:
        assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), key


def test_convert_round_trips_are_bit_identical_and_load_in_transformers(cli, files, tmp_path):
    import transformers

    model, folder = files["mobileclip-s0"]
    steps = [("efficientsam3", tmp_path / "s0.pt"), ("edgeseg", tmp_path / "s0.safetensors"),
             ("transformers", tmp_path / "s0-hf")]
    source = folder
    for to, out in steps:
        summary = json.loads(ok(cli("convert", "--encoder", "mobileclip-s0", "--checkpoint", source, "--to", to,
                                    "--out", out)).stdout)
        assert summary["bit_identical"] and summary["position_table"] == "interpolate"
        source = out
    assert_identical(text_tensors(steps[-1][1]), text_tensors(folder))
    config = json.loads((steps[-1][1] / "config.json").read_text())
    assert config["text_config"]["max_position_embeddings"] == 77 and config["edgeseg"]["contents"].startswith(
        "text encoder only")
    theirs, info = load_text_only(transformers.Sam3LiteTextModel, steps[-1][1])
    text_keys = [k for k in info["missing_keys"] | info["unexpected_keys"] if k.startswith(("text_", "text."))]
    assert not text_keys and not info["mismatched_keys"]
    out = tmp_path / "memory.npz"
    ok(cli("encode", "--encoder", "mobileclip-s0", "--checkpoint", steps[-1][1], "--prompts", files["prompts"],
           "--out", out))
    check_against_transformers(load_npz(out), theirs.eval(), prompts_of(files), 16)


def test_an_efficientsam3_file_converts_and_loads_in_transformers_strictly(cli, files, tmp_path):
    import transformers

    from edgeseg.checkpoints import SAM3_TEXT_PREFIX, STUDENT_TABLE_KEY

    state = build_encoder("mobileclip-s1", context_length=77, seed=5).state_dict()
    state[STUDENT_TABLE_KEY] = torch.randn(state[STUDENT_TABLE_KEY].shape)
    torch.save({"model": {SAM3_TEXT_PREFIX + k: v for k, v in state.items()}}, tmp_path / "s1_ctx16.pt")
    ok(cli("convert", "--encoder", "mobileclip-s1", "--checkpoint", tmp_path / "s1_ctx16.pt", "--to", "transformers",
           "--out", tmp_path / "hf"))
    ok(cli("convert", "--encoder", "mobileclip-s1", "--checkpoint", tmp_path / "hf", "--to", "efficientsam3",
           "--out", tmp_path / "back.pt"))
    back = torch.load(tmp_path / "back.pt", weights_only=True)["model"]
    assert_identical({k[len(SAM3_TEXT_PREFIX):]: v for k, v in back.items()}, state)
    theirs, info = load_text_only(transformers.Sam3LiteTextModel, tmp_path / "hf")
    assert not [k for k in info["missing_keys"] | info["unexpected_keys"] if k.startswith("text")]
    out = tmp_path / "memory.npz"
    ok(cli("encode", "--encoder", "mobileclip-s1", "--checkpoint", tmp_path / "hf", "--prompts", files["prompts"],
           "--out", out))
    check_against_transformers(load_npz(out), theirs.eval(), prompts_of(files), 16)


def test_slice_towards_transformers_is_applied_and_recorded(cli, files, tmp_path):
    summary = json.loads(ok(cli("convert", "--encoder", "mobileclip-s0", "--checkpoint", files["mobileclip-s0"][1],
                                "--to", "transformers", "--position-table", "slice", "--out", tmp_path / "hf")).stdout)
    assert summary["position_table"].startswith("slice applied: rows 0..15 of 77") and not summary["bit_identical"]
    table = text_tensors(tmp_path / "hf")["text_encoder.embeddings.position_embedding.position_embedding"]
    original = text_tensors(files["mobileclip-s0"][1])["text_encoder.embeddings.position_embedding.position_embedding"]
    assert torch.equal(table, original[:, :, :16])
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["edgeseg"]["position_table"].startswith("slice")


def test_the_teacher_converts_to_transformers_text_only(tmp_path):
    """Tiny teacher (library level, with its config): transformers -> Meta's layout -> transformers, bit for bit."""
    transformers = import_transformers()
    model = make_model(TINY_TEACHER, teacher=True, seed=7)
    save(model, tmp_path / "hf", tokenizer=False)
    cfg = read_checkpoint(tmp_path / "hf").metadata["config"]
    convert_checkpoint("sam3", tmp_path / "hf", "efficientsam3", tmp_path / "meta.pt", config=cfg)
    assert read_checkpoint(tmp_path / "meta.pt").layout == "sam3"
    convert_checkpoint("sam3", tmp_path / "meta.pt", "transformers", tmp_path / "back", config=cfg)
    assert_identical(text_tensors(tmp_path / "back"), text_tensors(tmp_path / "hf"))
    config = json.loads((tmp_path / "back" / "config.json").read_text())
    assert config["model_type"] == "sam3" and "text encoder only" in config["edgeseg"]["contents"]
    theirs, info = load_text_only(transformers.Sam3Model, tmp_path / "back")
    assert not [k for k in info["missing_keys"] | info["unexpected_keys"] if k.startswith("text")]
    ids, attention = tokenize(PROMPTS, 32)
    np.testing.assert_array_equal(text_features(theirs.eval(), ids, attention), text_features(model, ids, attention))


def test_splice_to_transformers_gives_a_litetext_checkpoint(cli, files, tmp_path):
    import transformers

    sam3 = make_model(TINY_TEACHER, teacher=True, seed=3)
    save(sam3, tmp_path / "sam3")
    student = build_encoder("mobileclip-s0", seed=4)
    save_encoder(student, tmp_path / "student.safetensors")
    ok(cli("distill", "splice", "--to", "transformers", "--sam3", tmp_path / "sam3", "--student",
           tmp_path / "student.safetensors", "--out", tmp_path / "lite"))
    theirs, info = transformers.Sam3LiteTextModel.from_pretrained(str(tmp_path / "lite"), output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    out = tmp_path / "memory.npz"
    ok(cli("encode", "--encoder", "mobileclip-s0", "--checkpoint", tmp_path / "lite", "--prompts", files["prompts"],
           "--out", out))
    check_against_transformers(load_npz(out), theirs.eval(), prompts_of(files), 16)


# -- bad input ------------------------------------------------------------------------------------
def _lying_header(src, dst) -> None:
    """A copy of a safetensors file whose header claims a shape its bytes do not have."""
    data = src.read_bytes()
    (size,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + size])
    key = "text_projection.weight"
    header[key]["shape"] = [header[key]["shape"][0] * 2, header[key]["shape"][1]]
    raw = json.dumps(header).encode()
    dst.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + size:])


def _bad_checkpoints(files, root) -> dict:
    s0 = files["mobileclip-s0"][1]
    bad = {}
    bad["no-config"] = root / "no-config"
    bad["no-config"].mkdir()
    (bad["no-config"] / "model.safetensors").symlink_to(s0 / "model.safetensors")
    bad["other-model"] = root / "other-model"
    bad["other-model"].mkdir()
    (bad["other-model"] / "config.json").write_text(json.dumps({"model_type": "clip", "architectures": ["CLIPModel"]}))
    (bad["other-model"] / "model.safetensors").symlink_to(s0 / "model.safetensors")
    bad["missing-shard"] = root / "missing-shard"
    files["mobileclip-s0"][0].save_pretrained(str(bad["missing-shard"]), max_shard_size="100MB")
    shards = sorted(bad["missing-shard"].glob("model-*.safetensors"))
    assert len(shards) > 1
    shards[-1].unlink()
    bad["lying-header"] = root / "lying-header"
    bad["lying-header"].mkdir()
    (bad["lying-header"] / "config.json").symlink_to(s0 / "config.json")
    _lying_header(s0 / "model.safetensors", bad["lying-header"] / "model.safetensors")
    return bad


def test_bad_checkpoints_fail_with_one_line_and_write_nothing(cli, files, tmp_path):
    bad = _bad_checkpoints(files, tmp_path)
    expected = {"no-config": "directory without config.json", "other-model": "config of a clip model",
                "missing-shard": "names shard model-", "lying-header": "not a valid safetensors file"}
    for case, folder in bad.items():
        out = tmp_path / f"{case}.npz"
        line = fails_cleanly(cli("encode", "--encoder", "mobileclip-s0", "--checkpoint", folder, "--prompts",
                                 files["prompts"], "--out", out), out)
        assert expected[case] in line, line
        conv = tmp_path / f"{case}-hf"
        assert expected[case] in fails_cleanly(cli("convert", "--encoder", "mobileclip-s0", "--checkpoint", folder,
                                                   "--to", "transformers", "--out", conv), conv)


def test_a_wrong_encoder_names_what_the_folder_holds(cli, files, tmp_path):
    out = tmp_path / "x.npz"
    line = fails_cleanly(cli("encode", "--encoder", "mobileclip-s0", "--checkpoint", files["mobileclip-s1"][1],
                             "--prompts", files["prompts"], "--out", out), out)
    assert "holds the mobileclip-s1 text encoder (transformers sam3_lite_text config), not mobileclip-s0" in line
    line = fails_cleanly(cli("export", "--encoder", "mobileclip-s0", "--checkpoint", files["sam3"][1],
                             "--out", tmp_path / "b"), tmp_path / "b")
    assert "holds the sam3 text encoder" in line


def test_a_sharded_checkpoint_loads(files, tmp_path):
    model, _ = files["mobileclip-s1"]
    model.save_pretrained(str(tmp_path / "sharded"), max_shard_size="100MB")
    ckpt = read_checkpoint(tmp_path / "sharded")
    assert ckpt.container == "sharded-safetensors" and ckpt.metadata["encoder"] == "mobileclip-s1"
    from edgeseg.checkpoints import load_encoder
    from edgeseg.encode import encode_prompts

    result = encode_prompts(load_encoder("mobileclip-s1", tmp_path / "sharded"), PROMPTS)
    ids, attention = tokenize(PROMPTS, 16)
    assert max_valid_diff(result.memory, text_features(model, ids, attention), attention) <= TOL
