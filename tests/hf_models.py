"""transformers 5.23 as the oracle: SAM3 / SAM3-LiteText models built from their configs, saved with
``save_pretrained``, and their ``get_text_features`` on prompts tokenized by transformers' own CLIP
tokenizer (built from the vocabulary edgeseg ships, saved into the checkpoint folder).

The vision, detector and tracker parts are tiny (edgeseg ignores them); the text parts are either
tiny (speed) or the full S0 / S1 / L / SAM3 sizes. Weights are random (every float tensor, BatchNorm
statistics included), so outputs exercise every path.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from conftest import import_transformers, randomize_  # noqa: F401  (import_transformers: for the test modules)

TINY_VISION = {"model_type": "sam3_vision_model", "fpn_hidden_size": 32,
               "backbone_feature_sizes": [[16, 16], [8, 8], [4, 4]],
               "backbone_config": {"model_type": "sam3_vit_model", "hidden_size": 32, "intermediate_size": 64,
                                   "num_hidden_layers": 1, "num_attention_heads": 2, "image_size": 56,
                                   "patch_size": 14, "window_size": 2, "global_attn_indexes": [0],
                                   "pretrain_image_size": 56}}
TINY_DETECTOR = {"geometry_encoder_config": {"num_layers": 1}, "detr_encoder_config": {"num_layers": 1},
                 "detr_decoder_config": {"num_layers": 1, "num_queries": 4}}
# full-size text configs of the released models (transformers' names)
FULL_TEXT = {
    "sam3": {"model_type": "clip_text_model", "hidden_size": 1024, "intermediate_size": 4096, "projection_dim": 512,
             "num_hidden_layers": 24, "num_attention_heads": 16, "max_position_embeddings": 32, "hidden_act": "gelu"},
    "mobileclip-s0": {"hidden_size": 512, "intermediate_size": 2048, "projection_dim": 512, "num_hidden_layers": 6,
                      "num_attention_heads": 8, "max_position_embeddings": 77, "use_repmixer_blocks": True},
    "mobileclip-s1": {"hidden_size": 512, "intermediate_size": 2048, "projection_dim": 512, "num_hidden_layers": 12,
                      "num_attention_heads": 8, "max_position_embeddings": 77, "use_repmixer_blocks": False},
    "mobileclip2-l": {"hidden_size": 768, "intermediate_size": 3072, "projection_dim": 768, "num_hidden_layers": 12,
                      "num_attention_heads": 12, "max_position_embeddings": 77, "use_repmixer_blocks": False},
}
TINY_TEACHER = {"model_type": "clip_text_model", "hidden_size": 64, "intermediate_size": 256, "projection_dim": 32,
                "num_hidden_layers": 2, "num_attention_heads": 4, "max_position_embeddings": 32, "hidden_act": "gelu"}


def tiny_student_text(rows: int = 77, repmixer: bool = True, layers: int = 4) -> dict:
    return {"hidden_size": 64, "intermediate_size": 128, "projection_dim": 64, "num_hidden_layers": layers,
            "num_attention_heads": 2, "max_position_embeddings": rows, "use_repmixer_blocks": repmixer}


PROMPTS = ["a dog", "the leftmost child wearing blue vest", "wow!$ sign", "", "a player in white " * 6,
           "two cats", "Tom & Jerry's cat", "2024 cars"]


def clip_tokenizer(pad_token: str = "<|endoftext|>"):
    """transformers' CLIP tokenizer over the vocabulary edgeseg ships (OpenAI's special-token names)."""
    from transformers import CLIPTokenizer

    from edgeseg.tokenizer import Tokenizer

    ours = Tokenizer(context_length=2)
    vocab = {s: i for i, s in ours.decoder.items() if i < ours.sot_id}
    vocab.update({"<|startoftext|>": ours.sot_id, "<|endoftext|>": ours.eot_id})
    return CLIPTokenizer(vocab=vocab, merges=list(ours.merges), pad_token=pad_token)


def make_model(text: dict, teacher: bool, seed: int = 0):
    """A Sam3Model / Sam3LiteTextModel with this text config and tiny other parts, random weights."""
    import transformers

    if teacher:
        config = transformers.Sam3Config(vision_config=TINY_VISION, text_config=text, **TINY_DETECTOR)
        model = transformers.Sam3Model(config)
    else:
        config = transformers.Sam3LiteTextConfig(vision_config=TINY_VISION, text_config=text, **TINY_DETECTOR)
        model = transformers.Sam3LiteTextModel(config)
    return randomize_(model.eval(), seed)


def save(model, folder: Path, tokenizer: bool = True) -> Path:
    """``save_pretrained`` (and the CLIP tokenizer files, whose pad token edgeseg reads)."""
    model.save_pretrained(str(folder))
    if tokenizer:
        clip_tokenizer().save_pretrained(str(folder))
    return folder


def tokenize(prompts, length: int) -> tuple[np.ndarray, np.ndarray]:
    """transformers' own tokenization, as Sam3Processor pads: (input_ids, attention_mask) int64 [B, L]."""
    enc = clip_tokenizer()(list(prompts), padding="max_length", max_length=length, truncation=True,
                           return_tensors="np")
    return enc["input_ids"].astype(np.int64), enc["attention_mask"].astype(np.int64)


@torch.no_grad()
def text_features(model, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
    out = model.get_text_features(input_ids=torch.from_numpy(input_ids),
                                  attention_mask=torch.from_numpy(attention_mask))
    return out.pooler_output.float().numpy()


def max_valid_diff(ours: np.ndarray, reference: np.ndarray, attention_mask: np.ndarray) -> float:
    valid = attention_mask.astype(bool)
    return float(np.abs(ours[valid] - reference[valid]).max())


def load_text_only(cls, folder: Path):
    """transformers' ``from_pretrained`` of a text-only folder, with the tiny vision/detector swapped in
    (the default full-size vision model would only be randomly initialised); returns (model, loading info)."""
    import transformers

    config = transformers.AutoConfig.from_pretrained(str(folder))
    config = type(config).from_dict({**config.to_dict(), "vision_config": TINY_VISION})
    return cls.from_pretrained(str(folder), config=config, output_loading_info=True)
