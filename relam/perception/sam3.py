"""Text-prompted segmentation with SAM 3 (transformers' ``Sam3Model``), the pip-installable stand-in for the
paper's EVF-SAM (see /work/shared/PLATFORM.md).

Weights: ``model`` is a local directory (``huggingface-cli download facebook/sam3 --local-dir DIR``) or a hub id
(default ``facebook/sam3``, overridden by the environment variable ``RELAM_SAM3_MODEL``). Loading always goes through
``from_pretrained``; nothing is downloaded when the hub cannot be reached, and the failure is a
:class:`PerceptionError` that says how to provide weights and names the offline fallback (``make_segmenter("sim")``).

Pre-processing: transformers' ``Sam3Processor`` is used when it loads. Its image processor
(``Sam3ImageProcessor``) is a torchvision-backend class, so without torchvision (the situation on the team's CPU
machines, where torchvision must not be installed) the processor cannot be built; we then load the tokenizer with
``AutoTokenizer.from_pretrained`` and the image-processor settings (``preprocessor_config.json``) from the same
source and apply them in plain torch (:class:`TorchSam3Processor`: resize to the configured square size, bilinear
with antialiasing, rescale, normalise -- the same steps as the torchvision backend).

Post-processing mirrors ``Sam3ImageProcessor.post_process_instance_segmentation``: instance score =
sigmoid(pred_logits) * sigmoid(presence_logits); instances with score > ``threshold`` are kept; their mask
probabilities (sigmoid of pred_masks) are resized bilinearly to the frame and binarised at ``mask_threshold``.
The mask for a prompt is the union of its kept instances (an empty mask is a valid answer here; the keypoint
stage reports empty masks by prompt name).
"""
from __future__ import annotations

import os

import numpy as np

from relam.perception.base import PerceptionError

DEFAULT_MODEL = "facebook/sam3"
ENV_VAR = "RELAM_SAM3_MODEL"
TEXT_MAX_LENGTH = 32  # Sam3Processor pads every prompt to 32 tokens (the text encoder's position table)

_HOW_TO = (
    "To provide SAM 3 weights: on a machine with internet run "
    "`huggingface-cli download facebook/sam3 --local-dir /path/to/sam3` (if the repository is gated, accept its "
    "licence on huggingface.co and `huggingface-cli login` first), copy the directory here, then pass it as "
    "Sam3Segmenter(model='/path/to/sam3') / make_segmenter('sam3', model='/path/to/sam3') or set "
    f"{ENV_VAR}=/path/to/sam3. Offline fallback: the simulator's ground-truth masks, make_segmenter('sim')."
)


def _offline() -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return True
    try:
        from transformers.utils import is_offline_mode
        return bool(is_offline_mode())
    except Exception:  # pragma: no cover - older/newer transformers
        return False


def _from_pretrained(loader, source: str):
    """``loader(source, **kw)`` for a local directory; for a hub id try the local cache first (instant), then the
    hub unless offline mode is on (huggingface_hub retries for ~20 s before giving up without a network)."""
    if os.path.isdir(source):
        return loader(source)
    try:
        return loader(source, local_files_only=True)
    except Exception:
        if _offline():
            raise
    return loader(source)


def _torch_interpolation(resample):
    """PIL resample code (as stored in preprocessor_config.json) -> torch interpolate mode."""
    try:
        code = int(resample)
    except (TypeError, ValueError):
        code = 2
    return {0: "nearest", 2: "bilinear", 3: "bicubic"}.get(code, "bilinear")


class TorchSam3Processor:
    """torch-only replacement for ``Sam3Processor`` (used when its torchvision image processor is unavailable).

    Same call convention for what the segmenter needs: ``processor(images=frame, return_tensors="pt")`` ->
    ``{"pixel_values", "original_sizes"}`` and ``processor(text=[...], return_tensors="pt")`` ->
    ``{"input_ids", "attention_mask"}`` (padded to 32 tokens like Sam3Processor)."""

    def __init__(self, tokenizer, image_processor_dict: dict):
        self.tokenizer = tokenizer
        d = dict(image_processor_dict)
        size = d.get("size") or {"height": 1008, "width": 1008}
        if "height" not in size or "width" not in size:
            raise PerceptionError(f"unsupported Sam3 image-processor size {size}; expected {{'height', 'width'}}")
        self.size = (int(size["height"]), int(size["width"]))
        self.do_resize = bool(d.get("do_resize", True))
        self.do_rescale = bool(d.get("do_rescale", True))
        self.do_normalize = bool(d.get("do_normalize", True))
        self.rescale_factor = float(d.get("rescale_factor", 1 / 255))
        self.mean = np.asarray(d.get("image_mean", [0.5, 0.5, 0.5]), np.float32).reshape(-1)
        self.std = np.asarray(d.get("image_std", [0.5, 0.5, 0.5]), np.float32).reshape(-1)
        self.mode = _torch_interpolation(d.get("resample", 2))

    @classmethod
    def from_pretrained(cls, source: str, **kwargs) -> "TorchSam3Processor":
        from transformers import AutoTokenizer
        from transformers.image_processing_base import ImageProcessingMixin

        tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
        ip_dict, _ = ImageProcessingMixin.get_image_processor_dict(source, **kwargs)
        return cls(tokenizer, ip_dict)

    def _pixels(self, image: np.ndarray):
        import torch
        import torch.nn.functional as F

        x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float()  # (1, 3, H, W) 0..255
        if self.do_resize and tuple(x.shape[-2:]) != self.size:
            kw = dict(align_corners=False, antialias=True) if self.mode in ("bilinear", "bicubic") else {}
            x = F.interpolate(x, size=self.size, mode=self.mode, **kw)
            x = x.round().clamp(0, 255)  # the torchvision backend resizes uint8 images and returns uint8
        if self.do_rescale:
            x = x * self.rescale_factor
        if self.do_normalize:
            x = (x - torch.from_numpy(self.mean).view(1, -1, 1, 1)) / torch.from_numpy(self.std).view(1, -1, 1, 1)
        return x

    def __call__(self, images=None, text=None, return_tensors="pt", **kwargs):
        import torch

        out = {}
        if images is not None:
            image = np.asarray(images)
            out["pixel_values"] = self._pixels(image)
            out["original_sizes"] = torch.tensor([image.shape[:2]])
        if text is not None:
            enc = self.tokenizer(text, return_tensors="pt", padding="max_length", max_length=TEXT_MAX_LENGTH,
                                 truncation=True)
            out["input_ids"], out["attention_mask"] = enc["input_ids"], enc["attention_mask"]
        return out


def _load_processor(source: str):
    """Sam3Processor when it can be built (torchvision present), else TorchSam3Processor."""
    from transformers import Sam3Processor

    try:
        return _from_pretrained(Sam3Processor.from_pretrained, source)
    except Exception as official_error:
        try:
            return _from_pretrained(TorchSam3Processor.from_pretrained, source)
        except Exception as e:
            raise PerceptionError(
                f"could not load the SAM 3 processor (tokenizer + image-processor config) from {source!r}: "
                f"{type(e).__name__}: {e} (Sam3Processor: {type(official_error).__name__}: {official_error}). "
                + _HOW_TO) from e


class Sam3Segmenter:
    """SAM 3 with text prompts: frame (H, W, 3) uint8 + prompts -> {prompt: bool mask (H, W)}."""

    def __init__(self, model: str | None = None, device: str = "cpu", threshold: float = 0.5,
                 mask_threshold: float = 0.5, model_obj=None, processor_obj=None):
        self.source = str(model) if model is not None else os.environ.get(ENV_VAR) or DEFAULT_MODEL
        self.device, self.threshold, self.mask_threshold = device, float(threshold), float(mask_threshold)
        try:
            import torch  # noqa: F401
            from transformers import Sam3Model
        except ImportError as e:
            raise PerceptionError(f"SAM 3 needs torch and transformers>=5 with Sam3Model ({e}). " + _HOW_TO) from e

        if model_obj is None:
            try:
                model_obj = _from_pretrained(Sam3Model.from_pretrained, self.source)
            except Exception as e:
                if os.path.isdir(self.source):
                    where = "is a directory but holds no loadable SAM 3 checkpoint (config.json + weights)"
                elif _looks_like_path(self.source):
                    where = "is not a directory"
                else:
                    where = "is neither a local directory nor a hub id in the local cache or on a reachable hub"
                raise PerceptionError(
                    f"cannot load SAM 3 weights: {self.source!r} {where} ({type(e).__name__}: "
                    f"{str(e).splitlines()[0] if str(e) else ''}). " + _HOW_TO) from e
        self.model = model_obj.to(device).eval()
        self.processor = processor_obj if processor_obj is not None else _load_processor(self.source)

    def __call__(self, frame: np.ndarray, prompts: list[str]) -> dict[str, np.ndarray]:
        import torch

        frame = _check_frame(frame)
        if isinstance(prompts, str):
            prompts = [prompts]
        prompts = list(prompts)
        bad = [p for p in prompts if not isinstance(p, str) or not p.strip()]
        if bad:
            raise PerceptionError(f"text prompts must be non-empty strings, got {bad!r}")
        if not prompts:
            return {}
        h, w = frame.shape[:2]
        with torch.no_grad():
            pixels = self.processor(images=frame, return_tensors="pt")["pixel_values"].to(self.device)
            vision = self.model.get_vision_features(pixel_values=pixels)
            text = self.processor(text=prompts, return_tensors="pt")
            ids, attn = text["input_ids"].to(self.device), text["attention_mask"].to(self.device)
            out = {}
            for i, prompt in enumerate(prompts):
                res = self.model(vision_embeds=vision, input_ids=ids[i:i + 1], attention_mask=attn[i:i + 1])
                out[prompt] = instance_union(res, (h, w), self.threshold, self.mask_threshold)
        return out


def instance_union(outputs, size: tuple[int, int], threshold: float, mask_threshold: float) -> np.ndarray:
    """Union of the instance masks of the first image in ``outputs`` (a Sam3ImageSegmentationOutput) whose score
    exceeds ``threshold``, at ``size`` = (H, W). Same rule as Sam3ImageProcessor.post_process_instance_segmentation."""
    import torch.nn.functional as F

    scores = outputs.pred_logits[0].float().sigmoid()
    if getattr(outputs, "presence_logits", None) is not None:
        scores = scores * outputs.presence_logits[0].float().sigmoid()
    keep = scores > threshold
    if not bool(keep.any()):
        return np.zeros(size, bool)
    probs = outputs.pred_masks[0][keep].float().sigmoid()  # (k, h', w')
    probs = F.interpolate(probs[None], size=tuple(size), mode="bilinear", align_corners=False)[0]
    return (probs > mask_threshold).any(dim=0).cpu().numpy().astype(bool)


def _looks_like_path(s: str) -> bool:
    """A hub id is ``name`` or ``owner/name``; anything else (absolute/relative path, 2+ slashes) is a path."""
    return s.startswith(("/", ".", "~")) or s.count("/") > 1 or "\\" in s


def _check_frame(frame) -> np.ndarray:
    frame = np.asarray(frame)
    if frame.ndim != 3 or frame.shape[-1] != 3:
        raise PerceptionError(f"frame must be one RGB image (H, W, 3), got shape {frame.shape}")
    if frame.dtype != np.uint8:
        raise PerceptionError(f"frame must be uint8, got {frame.dtype}; convert with (x*255).astype(np.uint8)")
    if min(frame.shape[:2]) < 1:
        raise PerceptionError(f"frame is empty: shape {frame.shape}")
    return frame
