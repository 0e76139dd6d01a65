"""edgeseg encoders inside SAM3 apps: Meta's ``sam3`` package and ``transformers``, image and video.

- :mod:`edgeseg.integrations.source`: text sources (bundle runners of every backend, edgeseg torch
  encoders, functions) and :class:`FeatureCache`, which encodes each prompt once;
- :mod:`edgeseg.integrations.meta_sam3`: a text source as SAM3's ``language_backbone`` (image model,
  ``Sam3Processor``, video model, ``Sam3VideoPredictor``); memory ``[L, B, 256]``, mask True = padding;
- :mod:`edgeseg.integrations.transformers_sam3`: ``text_embeds`` + ``attention_mask`` (1 = valid) for
  ``Sam3Model`` / ``Sam3LiteTextModel``, and per-prompt features in a ``Sam3VideoModel`` session;
- :mod:`edgeseg.integrations.meta_build`: Meta's image and video models built and run on CPU.

Only these modules convert between edgeseg's layout (``memory [B, L, 256]``, ``mask [B, L]`` True =
padding) and a SAM3 library's. Importing this package imports neither torch nor a SAM3 library.
"""

from edgeseg.integrations.source import FeatureCache, TextFeatures, TextSource, as_text_source

__all__ = ["FeatureCache", "TextFeatures", "TextSource", "as_text_source"]
