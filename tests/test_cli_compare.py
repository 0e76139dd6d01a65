"""``edgeseg compare --checkpoint NAME=PATH``: checkpoints for torch encoders, and its bad input.

The checkpoint is a seeded MobileCLIP-S0 saved with edgeseg's own ``save_encoder``. The expected
cosine column is recomputed here from the two encoders built directly (numpy cosine of the
masked-mean pooled memories), so the test fails if compare ran the random S0 instead of the file.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edgeseg.checkpoints import load_encoder, save_encoder
from edgeseg.cli import main
from edgeseg.cli.common import parse_checkpoints
from edgeseg.encode import encode_prompts
from edgeseg.encoders import build_encoder
from edgeseg.errors import EdgesegError

PROMPTS = ["a dog", "the red car on the left", "a person holding an umbrella"]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    d = tmp_path_factory.mktemp("compare")
    (d / "prompts.txt").write_text("\n".join(PROMPTS) + "\n", encoding="utf-8")
    save_encoder(build_encoder("mobileclip-s0", seed=5), d / "s0_seed5.safetensors")
    yield d
    (d / "s0_seed5.safetensors").unlink()  # ~170 MB


def _pooled_cosine(a, b) -> np.ndarray:
    """Per-prompt cosine of the valid-token means, written out in numpy."""
    def pool(enc):
        valid = (~enc.mask)[..., None].astype(np.float64)
        return (enc.memory * valid).sum(1) / valid.sum(1)

    x, y = pool(a), pool(b)
    return (x * y).sum(1) / (np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1))


def _compare(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["compare", "--repeats", "1", "--batch-size", "4", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_checkpoint_weights_are_used(inputs, capsys):
    ckpt = inputs / "s0_seed5.safetensors"
    code, out, err = _compare(capsys, "--prompts", str(inputs / "prompts.txt"), "--encoders",
                              "mobileclip-s0,mobileclip-s1", "--checkpoint", f"mobileclip-s0={ckpt}", "--json")
    assert code == 0, err
    assert err.strip().endswith("RANDOM weights (seed 0) for mobileclip-s1"), err
    rows = json.loads(out)["rows"]
    assert [r["weights"] for r in rows] == ["s0_seed5.safetensors", "random"]

    s1 = encode_prompts(build_encoder("mobileclip-s1", seed=0), PROMPTS)
    loaded = encode_prompts(load_encoder("mobileclip-s0", ckpt), PROMPTS)
    random_s0 = encode_prompts(build_encoder("mobileclip-s0", seed=0), PROMPTS)
    expected, if_random = _pooled_cosine(s1, loaded), _pooled_cosine(s1, random_s0)
    assert abs(expected.mean() - if_random.mean()) > 1e-3  # the check can tell the two apart
    assert rows[1]["cosine_mean"] == pytest.approx(expected.mean(), abs=1e-5)
    assert rows[1]["cosine_min"] == pytest.approx(expected.min(), abs=1e-5)
    assert rows[0]["cosine_mean"] == pytest.approx(1.0, abs=1e-6)


def test_table_says_random_or_file_per_row_and_caveat_only_with_random(inputs, capsys):
    ckpt = inputs / "s0_seed5.safetensors"
    code, out, err = _compare(capsys, "--prompts", str(inputs / "prompts.txt"), "--encoders", "mobileclip-s0",
                              "--checkpoint", f"mobileclip-s0={ckpt}")
    assert code == 0, err
    lines = out.strip().splitlines()
    assert lines[0].split()[:2] == ["encoder", "weights"] and lines[2].split()[:2] == ["mobileclip-s0",
                                                                                      "s0_seed5.safetensors"]
    assert "not meaningful" not in out and "RANDOM" not in err
    code, out, err = _compare(capsys, "--prompts", str(inputs / "prompts.txt"), "--encoders", "mobileclip-s0")
    assert code == 0, err
    assert out.strip().splitlines()[2].split()[:2] == ["mobileclip-s0", "random"]
    assert "not meaningful" in out.strip().splitlines()[-1] and "RANDOM" in err


@pytest.mark.parametrize("values, match", [
    (["mobileclip-s0"], "expected NAME=PATH"),
    (["=x.pt"], "expected NAME=PATH"),
    (["mobileclip-s0="], "expected NAME=PATH"),
    (["mobileclip-s9=CKPT"], "unknown encoder 'mobileclip-s9'"),
    (["sam3=CKPT"], "sam3 is not one of the encoders this command runs"),
    (["mobileclip-s0=nope.safetensors"], "does not exist"),
    (["mobileclip-s0=CKPT", "mobileclip-s0=CKPT"], "mobileclip-s0 is given twice"),
])
def test_bad_checkpoint_options_exit_2_with_one_line(inputs, capsys, values, match):
    args = []
    for value in values:
        args += ["--checkpoint", value.replace("CKPT", str(inputs / "s0_seed5.safetensors"))]
    code, out, err = _compare(capsys, "--prompts", str(inputs / "prompts.txt"), "--encoders", "mobileclip-s0",
                              *args)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("edgeseg: error:") and match in lines[0], err
    assert out == ""


def test_a_checkpoint_of_another_encoder_is_refused(inputs, capsys):
    code, _, err = _compare(capsys, "--prompts", str(inputs / "prompts.txt"), "--encoders", "mobileclip-s1",
                            "--checkpoint", f"mobileclip-s1={inputs / 's0_seed5.safetensors'}")
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "not mobileclip-s1" in lines[0], err


def test_parse_checkpoints_helper(tmp_path):
    (tmp_path / "a.pt").write_bytes(b"")
    got = parse_checkpoints([f" sam3 = {tmp_path / 'a.pt'}"], ["sam3", "mobileclip-s0"])
    assert got == {"sam3": tmp_path / "a.pt"} and parse_checkpoints([], []) == {}
    with pytest.raises(EdgesegError, match="--student-checkpoint 'sam3'"):
        parse_checkpoints(["sam3"], ["sam3"], option="--student-checkpoint")
    assert isinstance(next(iter(got.values())), Path)


def test_command_line_repeats_multiple_options_and_leaves_out_defaults():
    """The recorded command (bench and segment reports): an unused repeatable option is not written as '()'."""
    import click

    from edgeseg.cli.common import command_line

    seen = []

    @click.command("x")
    @click.argument("items", nargs=-1)
    @click.option("--checkpoint", multiple=True)
    @click.option("--rounds", default=3)
    @click.option("--flag", is_flag=True)
    def x(items, checkpoint, rounds, flag):
        seen.append(command_line(click.get_current_context(), ["items"]))

    x.main(["a b", "c", "--checkpoint", "s0=x y.pt", "--checkpoint", "s1=z.pt", "--flag"], standalone_mode=False)
    x.main(["c", "--rounds", "3"], standalone_mode=False)
    assert seen == ["edgeseg x 'a b' c --checkpoint 's0=x y.pt' --checkpoint s1=z.pt --flag", "edgeseg x c"]
