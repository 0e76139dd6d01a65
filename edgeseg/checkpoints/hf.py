"""The Hugging Face ``transformers`` layout of SAM3 / SAM3-LiteText checkpoints (text part).

A transformers checkpoint is a folder with ``config.json`` and ``model.safetensors`` (or a sharded
``model.safetensors.index.json``), as ``save_pretrained`` writes it for ``Sam3Model`` (teacher:
``text_encoder`` is a ``CLIPTextModelWithProjection``), ``Sam3LiteTextModel`` (students:
``Sam3LiteTextTextModel``) or ``Sam3VideoModel`` (the same under ``detector_model.``). Only the
text keys are read: ``text_encoder.*`` and ``text_projection.*``; vision, detector and tracker
weights are ignored. Nothing here imports ``transformers``: config and weights are plain JSON and
safetensors.

Keys map one to one onto edgeseg's module keys (which are Meta's / efficientsam3's), except:

* transformers splits attention's fused input projection (``qkv_proj`` / ``in_proj_*``) into
  ``q_proj``, ``k_proj``, ``v_proj``: concatenated back in q, k, v order (bit for bit);
* the teacher's unused ``text_projection`` is stored transposed (``nn.Linear`` weight);
* the students' unused MobileCLIP ``projection_layer`` is ``text_encoder.projection.weight`` as
  is (the Hub converter copies it untransposed).

Padding: transformers pads with the tokenizer's pad token, 49407 (``<|endoftext|>``) in CLIP's
tokenizer files; :func:`tokenizer_pad_id` reads it from the checkpoint folder when the files are
there.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import torch

from edgeseg.encoders import get_config, list_encoders
from edgeseg.errors import EdgesegError

log = logging.getLogger(__name__)

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
INDEX = "model.safetensors.index.json"
VIDEO_PREFIX = "detector_model."
TEXT_ROOTS = ("text_encoder.", "text_projection.")
TRANSFORMERS_VERSION = "5.23.0"  # the version the written configs and the parity tests follow
MODEL_TYPES = {"sam3": "sam3", "sam3_lite_text": "mobileclip"}  # transformers model_type -> edgeseg family
# text-config defaults of transformers 5.23 (Sam3Config's CLIP text config; Sam3LiteTextTextConfig)
CLIP_DEFAULTS = {"vocab_size": 49408, "hidden_size": 1024, "intermediate_size": 4096, "projection_dim": 512,
                 "num_hidden_layers": 24, "num_attention_heads": 16, "max_position_embeddings": 32,
                 "hidden_act": "gelu", "layer_norm_eps": 1e-5}
LITE_DEFAULTS = {"vocab_size": 49408, "hidden_size": 512, "intermediate_size": 2048, "projection_dim": 512,
                 "num_hidden_layers": 12, "num_attention_heads": 8, "max_position_embeddings": 77,
                 "hidden_act": "gelu", "layer_norm_eps": 1e-5, "use_repmixer_blocks": True,
                 "repmixer_kernel_size": 11}

# (edgeseg key, transformers key): {i} a block index, {leaf} a parameter or buffer name, {qkv} one of
# the three projections transformers splits a fused one into.
_T = "text_encoder.layers.{i}."
STUDENT_KEYS = (
    ("encoder.embedding_layer.weight", "text_encoder.embeddings.token_embedding.weight"),
    ("encoder.positional_embedding.pos_embed.pos_embed",
     "text_encoder.embeddings.position_embedding.position_embedding"),
    ("encoder.final_layer_norm.{leaf}", "text_encoder.final_layer_norm.{leaf}"),
    ("encoder.projection_layer", "text_encoder.projection.weight"),
    ("projector.{leaf}", "text_projection.{leaf}"),
    ("encoder.transformer.{i}.pre_norm_mha.0.{leaf}", _T + "layer_norm1.{leaf}"),
    ("encoder.transformer.{i}.pre_norm_mha.1.qkv_proj.{leaf}", _T + "self_attn.{qkv}_proj.{leaf}"),
    ("encoder.transformer.{i}.pre_norm_mha.1.out_proj.{leaf}", _T + "self_attn.out_proj.{leaf}"),
    ("encoder.transformer.{i}.pre_norm_ffn.0.{leaf}", _T + "layer_norm2.{leaf}"),
    ("encoder.transformer.{i}.pre_norm_ffn.1.{leaf}", _T + "mlp.fc1.{leaf}"),
    ("encoder.transformer.{i}.pre_norm_ffn.4.{leaf}", _T + "mlp.fc2.{leaf}"),
    ("encoder.transformer.{i}.layer_scale", _T + "layer_scale"),
    ("encoder.transformer.{i}.token_mixer.layer_scale", _T + "token_mixer.layer_scale"),
    ("encoder.transformer.{i}.token_mixer.norm.rbr_skip.{leaf}", _T + "token_mixer.reference_batchnorm.{leaf}"),
    ("encoder.transformer.{i}.token_mixer.mixer.rbr_skip.{leaf}", _T + "token_mixer.mixer.batchnorm_skip.{leaf}"),
    ("encoder.transformer.{i}.token_mixer.mixer.rbr_conv.0.conv.weight", _T + "token_mixer.mixer.conv.weight"),
    ("encoder.transformer.{i}.token_mixer.mixer.rbr_conv.0.bn.{leaf}", _T + "token_mixer.mixer.batchnorm_conv.{leaf}"),
    ("encoder.transformer.{i}.convffn.conv.conv.weight", _T + "conv_feed_forward.depthwise_conv.weight"),
    ("encoder.transformer.{i}.convffn.conv.bn.{leaf}", _T + "conv_feed_forward.depthwise_batchnorm.{leaf}"),
    ("encoder.transformer.{i}.convffn.fc1.{leaf}", _T + "conv_feed_forward.mlp.fc1.{leaf}"),
    ("encoder.transformer.{i}.convffn.fc2.{leaf}", _T + "conv_feed_forward.mlp.fc2.{leaf}"),
)
_C = "text_encoder.text_model.encoder.layers.{i}."
_R = "encoder.transformer.resblocks.{i}."
TEACHER_KEYS = (
    ("encoder.token_embedding.weight", "text_encoder.text_model.embeddings.token_embedding.weight"),
    ("encoder.positional_embedding", "text_encoder.text_model.embeddings.position_embedding.weight"),
    (_R + "ln_1.{leaf}", _C + "layer_norm1.{leaf}"),
    (_R + "attn.in_proj_{leaf}", _C + "self_attn.{qkv}_proj.{leaf}"),
    (_R + "attn.out_proj.{leaf}", _C + "self_attn.out_proj.{leaf}"),
    (_R + "ln_2.{leaf}", _C + "layer_norm2.{leaf}"),
    (_R + "mlp.c_fc.{leaf}", _C + "mlp.fc1.{leaf}"),
    (_R + "mlp.c_proj.{leaf}", _C + "mlp.fc2.{leaf}"),
    ("encoder.ln_final.{leaf}", "text_encoder.text_model.final_layer_norm.{leaf}"),
    ("encoder.text_projection", "text_encoder.text_projection.weight"),
    ("resizer.{leaf}", "text_projection.{leaf}"),
)
TRANSPOSED = frozenset({"encoder.text_projection"})  # Meta stores x @ P ([in, out]); transformers a Linear
QKV = ("q", "k", "v")
_FIELDS = {"i": r"(?P<i>\d+)", "leaf": r"(?P<leaf>weight|bias|running_mean|running_var|num_batches_tracked)",
           "qkv": r"(?P<qkv>q|k|v)"}


def _pattern(template: str) -> re.Pattern:
    parts = re.split(r"\{(\w+)\}", template)
    return re.compile("".join(_FIELDS[p] if i % 2 else re.escape(p) for i, p in enumerate(parts)))


def _rules(family: str) -> list[tuple[re.Pattern, str, re.Pattern, str]]:
    table = TEACHER_KEYS if family == "sam3" else STUDENT_KEYS
    return [(_pattern(ours), ours, _pattern(theirs), theirs) for ours, theirs in table]


def to_edgeseg(state: dict[str, torch.Tensor], family: str) -> tuple[dict[str, torch.Tensor], list[str], list[str]]:
    """transformers text keys -> edgeseg keys; also the keys no rule knows and the missing q/k/v parts."""
    rules = _rules(family)
    out: dict[str, torch.Tensor] = {}
    parts: dict[str, dict[str, tuple[str, torch.Tensor]]] = {}
    unknown = []
    for key, value in state.items():
        for _, ours, theirs_re, _ in rules:
            match = theirs_re.fullmatch(key)
            if match is None:
                continue
            fields = match.groupdict()
            qkv = fields.pop("qkv", None)
            name = ours.format(**fields)
            if qkv is not None:
                parts.setdefault(name, {})[qkv] = (key, value)
            else:
                out[name] = value.t().contiguous() if name in TRANSPOSED else value
            break
        else:
            unknown.append(key)
    incomplete = []
    for name, found in parts.items():
        if set(found) != set(QKV):
            some = next(iter(found.values()))[0]
            incomplete += [re.sub(r"\.[qkv]_proj\.", f".{p}_proj.", some) for p in QKV if p not in found]
            continue
        out[name] = torch.cat([found[p][1] for p in QKV])
    return out, unknown, incomplete


def from_edgeseg(state: dict[str, torch.Tensor], family: str) -> dict[str, torch.Tensor]:
    """edgeseg keys -> transformers keys (q/k/v split, the teacher's text_projection transposed)."""
    rules = _rules(family)
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        for ours_re, _, _, theirs in rules:
            match = ours_re.fullmatch(key)
            if match is None:
                continue
            fields = match.groupdict()
            if "{qkv}" in theirs:
                for p, piece in zip(QKV, value.chunk(3)):
                    out[theirs.format(qkv=p, **fields)] = piece.clone()
            else:
                out[theirs.format(**fields)] = value.t().contiguous() if key in TRANSPOSED else value
            break
        else:
            raise EdgesegError(f"no transformers key for the edgeseg key {key!r}")
    return out


def transformers_names(keys: list[str], family: str) -> list[str]:
    """The transformers names of edgeseg keys (for messages about a transformers checkpoint)."""
    names = []
    for key in keys:
        for ours_re, _, _, theirs in _rules(family):
            match = ours_re.fullmatch(key)
            if match is not None:
                names.append(theirs.format(qkv="q", **match.groupdict()))
                break
        else:
            names.append(key)
    return names


# -- config.json -------------------------------------------------------------------------------
def read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise EdgesegError(f"cannot read {what} {path}: {exc}") from exc


def text_config(config: Any, where: Path) -> tuple[str, dict[str, Any], str]:
    """``(model_type, text config with transformers' defaults, key prefix)`` of a SAM3 config.json."""
    if not isinstance(config, dict):
        raise EdgesegError(f"{where} is not a transformers config (expected a JSON object)")
    prefix, model_type = "", config.get("model_type")
    if model_type == "sam3_video":  # Sam3VideoModel: the image model is its detector
        config, prefix = config.get("detector_config") or {}, VIDEO_PREFIX
        model_type = config.get("model_type", "sam3")
    if model_type not in MODEL_TYPES:
        raise EdgesegError(f"{where} is the config of a {model_type or 'unnamed'!s} model, not SAM3 or SAM3-LiteText "
                           f"(model_type sam3, sam3_lite_text or sam3_video)")
    text = config.get("text_config") or {}
    if not isinstance(text, dict):
        raise EdgesegError(f"{where}: text_config is not a JSON object")
    defaults = CLIP_DEFAULTS if model_type == "sam3" else LITE_DEFAULTS
    return model_type, {**defaults, **text}, prefix


def _supported(text: dict[str, Any], where: Path) -> None:
    if text["hidden_act"] != "gelu" or float(text["layer_norm_eps"]) != 1e-5:
        raise EdgesegError(f"{where}: text encoder with hidden_act {text['hidden_act']!r} and layer_norm_eps "
                           f"{text['layer_norm_eps']}: edgeseg's encoders use exact GELU and eps 1e-5")
    if text["hidden_size"] % text["num_attention_heads"]:
        raise EdgesegError(f"{where}: hidden_size {text['hidden_size']} is not a multiple of the heads")


def edgeseg_config(model_type: str, text: dict[str, Any], config: dict[str, Any], where: Path) -> dict[str, Any]:
    """The edgeseg encoder config (data as in ``encoders/configs``) of a transformers text config."""
    _supported(text, where)
    detector = config.get("detector_config") if config.get("model_type") == "sam3_video" else config
    output_dim = int(((detector or {}).get("detr_encoder_config") or {}).get("hidden_size", 256))
    hidden, layers = int(text["hidden_size"]), int(text["num_hidden_layers"])
    common = {"vocab_size": int(text["vocab_size"]), "heads": int(text["num_attention_heads"]),
              "output_dim": output_dim}
    if model_type == "sam3":
        if text["intermediate_size"] % hidden:
            raise EdgesegError(f"{where}: intermediate_size {text['intermediate_size']} is not a multiple of "
                               f"hidden_size {hidden}")
        rows = int(text["max_position_embeddings"])
        return {**get_config("sam3"), **common, "width": hidden, "layers": layers,
                "mlp_ratio": int(text["intermediate_size"]) // hidden, "context_length": min(32, rows),
                "max_context_length": rows, "text_projection_dim": int(text["projection_dim"])}
    if int(text["projection_dim"]) != hidden:
        raise EdgesegError(f"{where}: projection_dim {text['projection_dim']} != hidden_size {hidden}: edgeseg keeps "
                           "MobileCLIP's square projection_layer")
    repmixer = bool(text["use_repmixer_blocks"])
    blocks = ["repmixer" if repmixer and i in (0, layers - 1) else "transformer" for i in range(layers)]
    return {**get_config("mobileclip-s0"), **common, "dim": hidden, "ffn_dim": int(text["intermediate_size"]),
            "blocks": blocks, "repmixer_kernel": int(text["repmixer_kernel_size"]),
            "checkpoint_table_rows": int(text["max_position_embeddings"]),
            "description": "SAM3-LiteText student read from a transformers config"}


_SHAPE_FIELDS = ("family", "vocab_size", "dim", "heads", "ffn_dim", "blocks", "repmixer_kernel", "output_dim",
                 "width", "layers", "mlp_ratio", "text_projection_dim")


def variant(cfg: dict[str, Any]) -> str | None:
    """The registered encoder with this architecture (the teacher's table length included), or None."""
    for name in list_encoders():
        ref = get_config(name)
        fields = [*_SHAPE_FIELDS, *(("max_context_length",) if ref["family"] == "sam3" else ())]
        if all(ref.get(f) == cfg.get(f) for f in fields):
            return name
    return None


def describe(cfg: dict[str, Any]) -> str:
    """A short architecture description for messages."""
    if cfg["family"] == "sam3":
        return f"a CLIP text encoder of width {cfg['width']}, {cfg['layers']} layers, {cfg['heads']} heads"
    rep = "with" if "repmixer" in cfg["blocks"] else "without"
    return f"a LiteText text encoder of width {cfg['dim']}, {len(cfg['blocks'])} layers {rep} RepMixer blocks"


def to_transformers_config(cfg: dict[str, Any], table_rows: int, extra: dict[str, Any]) -> dict[str, Any]:
    """A ``config.json`` that transformers 5.23 builds the same text encoder from (other parts default)."""
    common = {"vocab_size": cfg["vocab_size"], "num_attention_heads": cfg["heads"], "hidden_act": "gelu",
              "layer_norm_eps": 1e-5, "max_position_embeddings": int(table_rows)}
    if cfg["family"] == "sam3":
        text = {"model_type": "clip_text_model", **common, "hidden_size": cfg["width"],
                "intermediate_size": cfg["mlp_ratio"] * cfg["width"], "projection_dim": cfg["text_projection_dim"],
                "num_hidden_layers": cfg["layers"], "bos_token_id": 49406, "eos_token_id": 49407}
        head = {"architectures": ["Sam3Model"], "model_type": "sam3"}
    else:
        blocks = list(cfg["blocks"])
        repmixer = "repmixer" in blocks
        expected = ["repmixer" if repmixer and i in (0, len(blocks) - 1) else "transformer" for i in range(len(blocks))]
        if blocks != expected:
            raise EdgesegError(f"block list {blocks} has no transformers equivalent (RepMixer first and last, or none)")
        text = {"model_type": "sam3_lite_text_text_model", **common, "hidden_size": cfg["dim"],
                "intermediate_size": cfg["ffn_dim"], "projection_dim": cfg["dim"], "num_hidden_layers": len(blocks),
                "attention_dropout": 0.0, "use_repmixer_blocks": repmixer, "layer_scale_init_value": 1e-5,
                "repmixer_kernel_size": cfg["repmixer_kernel"]}
        head = {"architectures": ["Sam3LiteTextModel"], "model_type": "sam3_lite_text"}
    return {**head, "text_config": text, "detr_encoder_config": {"hidden_size": cfg["output_dim"]},
            "dtype": "float32", "transformers_version": TRANSFORMERS_VERSION, "edgeseg": extra}


# -- tokenizer files ---------------------------------------------------------------------------
def _token_text(value: Any) -> str | None:
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def tokenizer_pad_id(folder: Path) -> int | None:
    """The pad token id in a checkpoint folder's tokenizer files, None when there are none (or they name none).

    The pad token comes from ``tokenizer_config.json`` (else ``special_tokens_map.json``), its id
    from ``added_tokens_decoder``, ``tokenizer.json``'s ``added_tokens`` / vocabulary, or ``vocab.json``.
    """
    files = {name: folder / name for name in ("tokenizer_config.json", "special_tokens_map.json",
                                               "tokenizer.json", "vocab.json")}
    data = {name: read_json(path, "tokenizer file") for name, path in files.items() if path.is_file()}
    if not data:
        return None
    pad = _token_text((data.get("tokenizer_config.json") or {}).get("pad_token")) or \
        _token_text((data.get("special_tokens_map.json") or {}).get("pad_token"))
    if pad is None:  # transformers could not pad with these files either; edgeseg uses CLIP's pad (49407)
        log.warning("%s: the tokenizer files name no pad token; padding with 49407 (<|endoftext|>)", folder)
        return None
    ids: dict[str, int] = {}
    for key, entry in ((data.get("tokenizer_config.json") or {}).get("added_tokens_decoder") or {}).items():
        if _token_text(entry) is not None and str(key).isdigit():
            ids[_token_text(entry)] = int(key)
    fast = data.get("tokenizer.json") or {}
    for entry in fast.get("added_tokens") or []:
        if isinstance(entry, dict) and _token_text(entry) is not None and isinstance(entry.get("id"), int):
            ids.setdefault(_token_text(entry), entry["id"])
    for vocab in ((fast.get("model") or {}).get("vocab"), data.get("vocab.json")):
        if isinstance(vocab, dict) and isinstance(vocab.get(pad), int):
            ids.setdefault(pad, vocab[pad])
    if pad not in ids:
        raise EdgesegError(f"{folder}: the tokenizer files name pad token {pad!r} but give it no id")
    return ids[pad]
