"""Meta's SAM3 image and video models (the ``sam3`` package), built on CPU, FP32, from Meta's own builders.

Meta's package assumes a GPU in a few places: ``device="cuda"`` defaults in cached position encodings and
decoder coordinates, ``pin_memory()`` / ``.cuda()`` on tensors it moves, ``storage_device = cuda`` in the
tracker, and bfloat16 casts of the tracker's features that CUDA autocast would absorb. Where CUDA is not
available, :class:`CpuShim` (a ``TorchFunctionMode``) maps every one of them to CPU and keeps float32:
build *and* run Meta's models inside ``with CpuShim():``. With CUDA present it changes nothing.

Checkpoints: Meta's ``sam3.pt`` (``{"model": {...}}``) holds the image detector under ``detector.*`` and
the video tracker under ``tracker.*``; both load strictly. Without a checkpoint the weights are random
(seeded). ``tiny=True`` builds a reduced ViT (2 blocks, width 64, 224 px) and text encoder (width 64,
2 layers) for tests; everything after the backbone keeps SAM3's configuration (the video tracker is
built for 224 px instead of 1008).
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

from edgeseg.errors import EdgesegError

log = logging.getLogger(__name__)

RESOLUTION = 1008  # SAM3's native input size (its ViT's RoPE tables are built for it)
TINY_RESOLUTION = 224  # the reduced test configuration


def _is_cuda(device: Any) -> bool:
    try:
        return isinstance(device, (str, torch.device)) and torch.device(device).type == "cuda"
    except RuntimeError:
        return False


class CpuShim(TorchFunctionMode):
    """Runs SAM3's CUDA-only call sites on CPU when CUDA is not available (a no-op otherwise).

    ``device='cuda'`` -> CPU; ``pin_memory()`` and ``.cuda()`` -> the tensor itself; ``.to('cuda')`` ->
    CPU; ``.to(torch.bfloat16)`` -> unchanged (the tracker casts features to bfloat16 for CUDA autocast,
    which does not exist on CPU; float32 is kept); ``torch.empty`` -> zeros (Meta leaves a few tensors,
    e.g. the text encoder's position table, for a checkpoint to fill: zeros make a random model
    deterministic); ``torch.stack([])`` -> an empty int64 tensor (Meta's CPU connected-components
    fallback stacks one label map per new detection, and fails on a frame without any).
    """

    def __init__(self) -> None:
        super().__init__()
        self.cuda = torch.cuda.is_available()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if self.cuda:
            return func(*args, **kwargs)
        if _is_cuda(kwargs.get("device")):
            kwargs["device"] = "cpu"
        if func in (torch.Tensor.pin_memory, torch.Tensor.cuda):
            return args[0]
        if func is torch.Tensor.to:
            if kwargs.get("dtype") is torch.bfloat16 or (len(args) > 1 and args[1] is torch.bfloat16):
                return args[0]
            if len(args) > 1 and _is_cuda(args[1]):
                args = (args[0], "cpu", *args[2:])
        if func is torch.empty:
            return torch.zeros(*args, **kwargs)
        if func is torch.stack and args and not len(args[0]):
            return torch.zeros(0, dtype=torch.int64)
        return func(*args, **kwargs)


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Meta's import- and build-time warnings off (torch.jit, CUDA autocast on CPU); its own INFO loggers
    (which print to stderr) at WARNING unless edgeseg logs at INFO (``-v``)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield
    if not logging.getLogger("edgeseg").isEnabledFor(logging.INFO):
        for name in list(logging.root.manager.loggerDict):
            if name.startswith("sam3"):
                logging.getLogger(name).setLevel(logging.WARNING)


def import_sam3() -> Any:
    """Meta's ``sam3.model_builder``, or a one-line error naming the extra."""
    from edgeseg.errors import require_extra

    require_extra("SAM3's image and video models", "sam3", "sam3", "torchvision")
    with quiet():
        import sam3.model.sam3_video_inference  # noqa: F401  (its import warns about CUDA autocast)
        import sam3.model_builder as builder
    return builder


def _tiny_trunk() -> Any:
    from sam3.model.vitdet import ViT

    return ViT(img_size=TINY_RESOLUTION, pretrain_img_size=TINY_RESOLUTION, patch_size=14, embed_dim=64, depth=2,
               num_heads=2, mlp_ratio=2.0, norm_layer="LayerNorm", drop_path_rate=0.0, qkv_bias=True,
               use_abs_pos=True, tile_abs_pos=True, global_att_blocks=(1,), rel_pos_blocks=(), use_rope=True,
               use_interp_rope=True, window_size=8, pretrain_use_cls_token=True, retain_cls_token=False,
               ln_pre=True, ln_post=False, return_interm_layers=False, bias_patch_embed=False)


def _backbone(builder: Any, tiny: bool, tracker_features: bool) -> Any:
    """SAM3's vision-language backbone (``SAM3VLBackbone``), full size or tiny."""
    from sam3.model.text_encoder_ve import VETextEncoder
    from sam3.model.tokenizer_ve import SimpleTokenizer
    from sam3.model.vl_combiner import SAM3VLBackbone

    from edgeseg.tokenizer import default_vocab_path

    if tiny:
        neck = builder._create_vit_neck(builder._create_position_encoding(precompute_resolution=RESOLUTION),
                                        _tiny_trunk(), enable_inst_interactivity=tracker_features)
        text = VETextEncoder(tokenizer=SimpleTokenizer(bpe_path=str(default_vocab_path())), d_model=256,
                             width=64, heads=4, layers=2)
    else:
        neck = builder._create_vision_backbone(enable_inst_interactivity=tracker_features)
        text = builder._create_text_encoder(str(default_vocab_path()))
    return SAM3VLBackbone(visual=neck, text=text, scalp=1)


def _finite(model: torch.nn.Module, seed: int) -> None:
    """Seeded small values for any tensor a random model left non-finite."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if tensor.is_floating_point() and not torch.isfinite(tensor).all():
                log.info("SAM3: %s was not initialised; random values", name)
                tensor.copy_(torch.randn(tensor.shape, generator=gen) * 0.02)


def read_sam3_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """The state dict of Meta's ``sam3.pt`` (``{"model": ...}``), checked to be SAM3's."""
    from edgeseg.checkpoints import _torch_load

    path = Path(path)
    if not path.is_file():
        raise EdgesegError(f"SAM3 checkpoint {path} does not exist")
    state = _torch_load(path)
    state = state.get("model", state) if isinstance(state, dict) else state
    if not isinstance(state, dict) or not any(str(k).startswith("detector.") for k in state):
        raise EdgesegError(f"{path} is not Meta's sam3.pt: it holds no 'detector.*' keys")
    return state


def _load_strict(model: torch.nn.Module, state: dict[str, torch.Tensor], path: Path, what: str) -> None:
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise EdgesegError(f"{path} does not fit SAM3's {what}: {str(exc).splitlines()[0][:200]}") from exc


def build_image_model(checkpoint: Path | None = None, text_state: dict[str, torch.Tensor] | None = None,
                      tiny: bool = False, seed: int = 0) -> torch.nn.Module:
    """Meta's SAM3 image model (``Sam3Image``: FP32, CPU, eval), composed with Meta's own builders.

    ``checkpoint``: Meta's sam3.pt (its ``detector.*`` keys, loaded strictly). Without it the weights are
    random (``seed``), and ``text_state`` (an edgeseg teacher's state dict), if given, is loaded into its
    text encoder.
    """
    builder = import_sam3()
    state = read_sam3_checkpoint(checkpoint) if checkpoint is not None else None
    torch.manual_seed(seed)
    with quiet(), CpuShim(), torch.device("cpu"):
        model = builder._create_sam3_model(
            _backbone(builder, tiny, False), builder._create_sam3_transformer(), builder._create_geometry_encoder(),
            builder._create_segmentation_head(), builder._create_dot_product_scoring(), None, True)
    if state is not None:
        detector = {k[len("detector."):]: v for k, v in state.items() if k.startswith("detector.")}
        _load_strict(model, detector, Path(checkpoint), "image model")
    elif text_state is not None:
        model.backbone.language_backbone.load_state_dict(text_state, strict=True)
    _finite(model, seed)
    return model.eval()


def _tiny_tracker() -> Any:
    """SAM3's tracker (``Sam3TrackerPredictor``, as ``build_tracker``) sized for 224 px frames."""
    import sam3.model_builder as builder
    from sam3.model.memory import CXBlock, SimpleFuser, SimpleMaskDownSampler, SimpleMaskEncoder
    from sam3.model.position_encoding import PositionEmbeddingSine
    from sam3.model.sam3_tracking_predictor import Sam3TrackerPredictor

    side = TINY_RESOLUTION // 14 * 16
    maskmem = SimpleMaskEncoder(
        out_dim=64, position_encoding=PositionEmbeddingSine(num_pos_feats=64, normalize=True, temperature=10000),
        mask_downsampler=SimpleMaskDownSampler(kernel_size=3, stride=2, padding=1, interpol_size=[side, side]),
        fuser=SimpleFuser(layer=CXBlock(dim=256, kernel_size=7, padding=3, layer_scale_init_value=1e-6,
                                        use_dwconv=True), num_layers=2))
    return Sam3TrackerPredictor(
        image_size=TINY_RESOLUTION, num_maskmem=7, backbone=None, backbone_stride=14,
        transformer=builder._create_tracker_transformer(), maskmem_backbone=maskmem, multimask_output_in_sam=True,
        forward_backbone_per_frame_for_eval=True, trim_past_non_cond_mem_for_eval=False,
        multimask_output_for_tracking=True, multimask_min_pt_num=0, multimask_max_pt_num=1,
        always_start_from_first_ann_frame=False, non_overlap_masks_for_mem_enc=False,
        non_overlap_masks_for_output=False, max_cond_frames_in_attn=4, offload_output_to_cpu_for_eval=False,
        sam_mask_decoder_extra_args={"dynamic_multimask_via_stability": True,
                                     "dynamic_multimask_stability_delta": 0.05,
                                     "dynamic_multimask_stability_thresh": 0.98},
        clear_non_cond_mem_around_input=True, fill_hole_area=0, use_memory_selection=True)


def _detector(builder: Any, tiny: bool) -> Any:
    """SAM3's detector for video (``Sam3ImageOnVideoMultiGPU``, as ``build_sam3_video_model``)."""
    from sam3.model.model_misc import MLP, DotProductScoring
    from sam3.model.sam3_image import Sam3ImageOnVideoMultiGPU

    mlp = MLP(input_dim=256, hidden_dim=2048, output_dim=256, num_layers=2, dropout=0.1, residual=True,
              out_norm=torch.nn.LayerNorm(256))
    return Sam3ImageOnVideoMultiGPU(
        num_feature_levels=1, backbone=_backbone(builder, tiny, True), transformer=builder._create_sam3_transformer(),
        segmentation_head=builder._create_segmentation_head(), semantic_segmentation_head=None,
        input_geometry_encoder=builder._create_geometry_encoder(), use_early_fusion=True, use_dot_prod_scoring=True,
        dot_prod_scoring=DotProductScoring(d_model=256, d_proj=256, prompt_mlp=mlp), supervise_joint_box_scores=True)


#: Meta's video-model settings (``build_sam3_video_model`` with temporal disambiguation)
VIDEO_SETTINGS = dict(
    score_threshold_detection=0.5, assoc_iou_thresh=0.1, det_nms_thresh=0.1, new_det_thresh=0.7, hotstart_delay=15,
    hotstart_unmatch_thresh=8, hotstart_dup_thresh=8, suppress_unmatched_only_within_hotstart=True,
    min_trk_keep_alive=-1, max_trk_keep_alive=30, init_trk_keep_alive=30,
    suppress_overlapping_based_on_recent_occlusion_threshold=0.7, suppress_det_close_to_boundary=False,
    fill_hole_area=16, recondition_every_nth_frame=16, masklet_confirmation_enable=False,
    decrease_trk_keep_alive_for_empty_masklets=False, image_mean=(0.5, 0.5, 0.5), image_std=(0.5, 0.5, 0.5))


def build_video_model(checkpoint: Path | None = None, tiny: bool = False, seed: int = 0,
                      **settings: Any) -> torch.nn.Module:
    """Meta's SAM3 video model (``Sam3VideoInferenceWithInstanceInteractivity``: detector + tracker, CPU).

    ``checkpoint``: Meta's sam3.pt, loaded strictly (``detector.*`` and ``tracker.*``). ``settings``
    override :data:`VIDEO_SETTINGS` (e.g. lower detection thresholds for a random model).
    """
    builder = import_sam3()
    from sam3.model.sam3_video_inference import Sam3VideoInferenceWithInstanceInteractivity

    state = read_sam3_checkpoint(checkpoint) if checkpoint is not None else None
    unknown = set(settings) - set(VIDEO_SETTINGS)
    if unknown:
        raise EdgesegError(f"unknown SAM3 video settings: {', '.join(sorted(unknown))}")
    torch.manual_seed(seed)
    with quiet(), CpuShim(), torch.device("cpu"):
        tracker = _tiny_tracker() if tiny else builder.build_tracker(apply_temporal_disambiguation=True)
        model = Sam3VideoInferenceWithInstanceInteractivity(
            detector=_detector(builder, tiny), tracker=tracker, compile_model=False,
            image_size=TINY_RESOLUTION if tiny else RESOLUTION, **{**VIDEO_SETTINGS, **settings})
    if state is not None:
        _load_strict(model, state, Path(checkpoint), "video model")
    _finite(model, seed)
    return model.eval()


def video_predictor(model: torch.nn.Module) -> Any:
    """Meta's ``Sam3VideoPredictor`` (its session API: ``handle_request``) around an already built video model.

    The predictor's own constructor builds the full model and calls ``.cuda()``; this skips that and
    keeps ``model`` where it is. Without CUDA, the two log helpers that query the GPU report the CPU
    instead. Run its requests inside ``with CpuShim():`` on CPU.
    """
    import_sam3()
    from sam3.model.sam3_video_predictor import Sam3VideoPredictor

    cls = Sam3VideoPredictor
    if not torch.cuda.is_available():
        class CpuVideoPredictor(Sam3VideoPredictor):
            def _get_session_stats(self) -> str:
                return f"{len(self._ALL_INFERENCE_STATES)} session(s), CPU"

            def _get_torch_and_gpu_properties(self) -> str:
                return f"torch {torch.__version__}, CPU"
        cls = CpuVideoPredictor
    predictor = cls.__new__(cls)
    predictor.model = model
    predictor.async_loading_frames = False
    predictor.video_loader_type = "cv2"
    return predictor


__all__ = ["RESOLUTION", "TINY_RESOLUTION", "VIDEO_SETTINGS", "CpuShim", "build_image_model", "build_video_model",
           "import_sam3", "read_sam3_checkpoint", "video_predictor"]
