"""edgeseg.integrations: edgeseg text sources inside Meta's sam3 (image, video) and transformers' SAM3 models.

Oracles: SAM3's own outputs from each library, computed with its own text encoder (``Sam3Processor``
with the model's ``VETextEncoder``; ``Sam3Model(input_ids=...)``). Injecting that same encoder's
features through the adapters must reproduce them bit for bit. Tiny random models keep this fast.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from conftest import import_sam3, import_transformers
from test_export import tiny_exported_bundle

from edgeseg.errors import EdgesegError
from edgeseg.integrations import FeatureCache, as_text_source

PROMPTS = ["a woman", "a red car"]


def photo(height: int = 96, width: int = 128, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def runner(tmp_path_factory):
    from edgeseg.runtime import load

    _, bundle, _ = tiny_exported_bundle(tmp_path_factory)
    with load(bundle) as r:
        yield r


# ---- Meta's sam3, image ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def meta_image():
    import_sam3()
    from edgeseg.integrations.meta_build import TINY_RESOLUTION, build_image_model

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from sam3.model.sam3_image_processor import Sam3Processor
    model = build_image_model(tiny=True)
    processor = Sam3Processor(model, resolution=TINY_RESOLUTION, device="cpu", confidence_threshold=0.0)
    return model, processor


def _meta_run(processor, image, prompt):
    from PIL import Image

    from edgeseg.integrations.meta_build import CpuShim

    with CpuShim():
        state = processor.set_text_prompt(prompt, processor.set_image(Image.fromarray(image)))
    return {k: state[k].clone() for k in ("masks_logits", "boxes", "scores")}


@pytest.mark.parity
def test_meta_baseline_through_the_adapter_is_bit_exact(meta_image):
    from edgeseg.integrations import meta_sam3

    model, processor = meta_image
    image = photo()
    own = _meta_run(processor, image, PROMPTS[0])  # SAM3's own text encoder: the oracle
    assert own["scores"].numel() == 200  # threshold 0: every query kept, so every query is compared
    source = FeatureCache(meta_sam3.own_text_source(model))
    original = model.backbone.language_backbone
    with meta_sam3.text_encoder(processor, source) as adapter:
        assert model.backbone.language_backbone is adapter
        got = _meta_run(processor, image, PROMPTS[0])
        again = _meta_run(processor, photo(seed=1), PROMPTS[0])  # a second frame: served from the cache
    assert model.backbone.language_backbone is original
    for key in own:
        assert torch.equal(own[key], got[key]), key
    assert adapter.calls == 2 and source.encoded == {PROMPTS[0]: 1} and source.hits == 1
    assert again["scores"].shape == own["scores"].shape


@pytest.mark.parity
def test_meta_candidate_bundle_grounds_through_the_image_model(meta_image, runner):
    from edgeseg.integrations import meta_sam3

    model, processor = meta_image
    image = photo()
    own = _meta_run(processor, image, PROMPTS[1])
    adapter = meta_sam3.install(model, runner)  # the plain call
    try:
        with pytest.raises(EdgesegError, match="already installed"):
            meta_sam3.install(model, runner)
        got = _meta_run(processor, image, PROMPTS[1])
        mask, memory, embeds = adapter([PROMPTS[1]], None, device="cpu")  # SAM3's own tuple
    finally:
        meta_sam3.restore(model)
    expected = runner.encode([PROMPTS[1]])
    assert memory.shape == (runner.context_length, 1, 256) and memory.dtype == torch.float32
    assert torch.equal(memory[:, 0], torch.from_numpy(expected.memory[0]))  # [L, B, 256], sequence-first
    assert mask.dtype == torch.bool and torch.equal(mask, torch.from_numpy(expected.mask))  # True = padding
    assert embeds.shape == (runner.context_length, 1, 64) and not embeds.any()  # width of the replaced encoder
    assert got["masks_logits"].shape == own["masks_logits"].shape
    assert not torch.equal(got["scores"], own["scores"])  # the candidate's features reached SAM3's heads
    assert adapter.cache.encoded == {PROMPTS[1]: 1}


def test_sources_and_the_cache_count_each_prompt_once():
    calls = []

    def fn(prompts):
        calls.append(list(prompts))
        ids = np.array([[len(p), 0, 0] for p in prompts])
        return np.repeat(ids[..., None], 4, axis=2).astype(np.float32), ids == 0

    cache = FeatureCache(fn)
    first = cache.encode(["ab", "abc", "ab"])
    second = cache.encode(["abc", "x"])
    assert calls == [["ab", "abc"], ["x"]] and cache.encoded == {"ab": 1, "abc": 1, "x": 1}
    assert first.memory[:, 0, 0].tolist() == [2, 3, 2] and second.memory[:, 0, 0].tolist() == [3, 1]
    assert first.mask.dtype == bool and first.mask[:, 1:].all() and cache.calls == 2 and cache.hits == 2
    with pytest.raises(EdgesegError, match="not a text source"):
        as_text_source(42)
    with pytest.raises(EdgesegError, match="expected"):
        FeatureCache(lambda p: (np.zeros((1, 3, 4), np.float32), np.zeros((1, 3), bool))).encode(["a", "b"])


# ---- Meta's sam3, video --------------------------------------------------------------------------------
def frames(count: int = 3):
    from PIL import Image
    from skimage.data import astronaut

    base = astronaut()[::4, ::4]
    return [Image.fromarray(np.ascontiguousarray(np.roll(base, 6 * i, axis=1))) for i in range(count)]


@pytest.mark.parity
def test_meta_video_predictor_with_an_injected_encoder_encodes_each_prompt_once(runner):
    import_sam3()
    from edgeseg.integrations import meta_sam3
    from edgeseg.integrations.meta_build import CpuShim, build_video_model, video_predictor

    model = build_video_model(tiny=True, hotstart_delay=0, hotstart_unmatch_thresh=0, hotstart_dup_thresh=0)
    predictor = video_predictor(model)
    cache = FeatureCache(runner)
    with CpuShim(), meta_sam3.text_encoder(predictor, cache) as adapter:
        session = predictor.handle_request({"type": "start_session", "resource_path": frames(3)})["session_id"]
        predictor.handle_request({"type": "add_prompt", "session_id": session, "frame_index": 0, "text": "a dog"})
        request = {"type": "propagate_in_video", "session_id": session, "propagation_direction": "forward",
                   "start_frame_index": 0}
        outputs = list(predictor.handle_stream_request(request))
        for prompt in ("a cat", "a dog"):  # Meta keeps only the latest prompt's text: it asks again
            predictor.handle_request({"type": "add_prompt", "session_id": session, "frame_index": 0,
                                      "text": prompt})
        predictor.handle_request({"type": "close_session", "session_id": session})
    assert [out["frame_index"] for out in outputs] == [0, 1, 2]
    assert all(out["outputs"]["out_binary_masks"].shape[1:] == (128, 128) for out in outputs)
    assert adapter.calls == 3  # SAM3 asked for text once per add_prompt: [prompt, "visual"]
    assert cache.encoded == {"a dog": 1, "visual": 1, "a cat": 1}  # the runner encoded each prompt once
    assert model.detector.backbone.language_backbone is adapter.original


# ---- transformers ----------------------------------------------------------------------------------------
def tiny_hf_config(lite: bool = False):
    transformers = import_transformers()
    vision = dict(backbone_config=dict(model_type="sam3_vit_model", hidden_size=64, intermediate_size=128,
                                       num_hidden_layers=2, num_attention_heads=2, image_size=224, patch_size=14,
                                       window_size=8, global_attn_indexes=[1], pretrain_image_size=224),
                  backbone_feature_sizes=[[64, 64], [32, 32], [16, 16]])
    if lite:
        text = dict(hidden_size=64, intermediate_size=128, projection_dim=64, num_hidden_layers=3,
                    num_attention_heads=4, max_position_embeddings=16)
        return transformers.Sam3LiteTextModel, transformers.Sam3LiteTextConfig(vision_config=vision, text_config=text)
    text = dict(hidden_size=64, intermediate_size=128, projection_dim=64, num_hidden_layers=2, num_attention_heads=4,
                max_position_embeddings=32)
    return transformers.Sam3Model, transformers.Sam3Config(vision_config=vision, text_config=text)


@pytest.fixture(scope="module", params=["sam3", "sam3_lite_text"])
def hf_model(request):
    cls, config = tiny_hf_config(lite=request.param == "sam3_lite_text")
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return cls(config).eval()


def _hf_outputs(out):
    return {k: getattr(out, k) for k in ("pred_masks", "pred_boxes", "pred_logits", "presence_logits")}


@pytest.mark.parity
def test_transformers_baseline_through_text_inputs_is_bit_exact(hf_model):
    """OwnTextSource tokenizes as Sam3Processor (transformers' own CLIP tokenizer is the oracle: pad with
    <|endoftext|>, attention 1 through the first EOT), so the masks are SAM3's own, bit for bit. Padding with
    0 instead changes the LiteText student's valid outputs (its RepMixer convolutions see padding)."""
    from hf_models import tokenize

    from edgeseg.integrations.transformers_sam3 import OwnTextSource, text_inputs

    context = hf_model.config.text_config.max_position_embeddings
    ids, attention = (torch.from_numpy(a) for a in tokenize(PROMPTS, context))
    pixels = torch.randn(len(PROMPTS), 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        own = _hf_outputs(hf_model(pixel_values=pixels, input_ids=ids, attention_mask=attention))
        inputs = text_inputs(hf_model, OwnTextSource(hf_model, context), PROMPTS)
        got = _hf_outputs(hf_model(pixel_values=pixels, **inputs))
    assert inputs["attention_mask"].dtype == torch.int64 and torch.equal(inputs["attention_mask"], attention)
    for key in own:
        assert torch.equal(own[key], got[key]), key


@pytest.mark.parity
def test_transformers_candidate_bundle_grounds(hf_model, runner):
    from edgeseg.integrations.transformers_sam3 import text_inputs

    pixels = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    inputs = text_inputs(hf_model, runner, PROMPTS[0])
    expected = runner.encode([PROMPTS[0]])
    embeds = inputs["text_embeds"].pooler_output
    assert embeds.shape == (1, runner.context_length, 256)  # batch-first
    assert torch.equal(embeds, torch.from_numpy(expected.memory))
    assert torch.equal(inputs["attention_mask"], torch.from_numpy(~expected.mask).long())  # 1 = valid
    with torch.inference_mode():
        out = hf_model(pixel_values=pixels, **inputs)
    assert out.pred_masks.shape[:2] == (1, 200) and torch.isfinite(out.pred_logits).all()


def test_transformers_load_model_refuses_other_models(tmp_path):
    import_transformers()
    from edgeseg.integrations.transformers_sam3 import load_model

    (tmp_path / "config.json").write_text('{"model_type": "bert"}', encoding="utf-8")
    with pytest.raises(EdgesegError, match="not SAM3"):
        load_model(tmp_path)
    with pytest.raises(EdgesegError, match="no readable config.json"):
        load_model(tmp_path / "nope")
