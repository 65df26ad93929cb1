"""Image encoders for the anticipation model: uint8 images (B, H, W, 3) -> patch tokens (B, P, C).

- ``cnn``: a small strided-conv patch encoder trained with the model; the offline default.
- ``dinov2``: transformers' Dinov2Model, frozen (paper), from a local directory or hub id. Its patch features
  of each distinct image are computed once and cached on disk (``FeatureCache``), so training epochs and
  evaluation episodes never run it twice on the same picture.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


class EncoderUnavailableError(RuntimeError):
    pass


class CNNEncoder(nn.Module):
    """Strided convs down to a ``grid`` x ``grid`` map of ``channels``-dim patch tokens, plus ``points`` tokens
    that each say WHERE one learned feature is (spatial soft-argmax).

    Why the extra machinery (measured on the ``cpu`` subgoal datasets, 45 training demos per task): a plain
    strided CNN + average pool, trained from scratch, learned nothing about object positions -- held-out x^0
    errors equalled those of predicting the training mean (PickCube 11.7 vs 11.3 px, PushCube 6.6 vs 7.2 px).
    Convs are translation-equivariant and a 4 x 4 pool keeps cells of 32 px, so a token cannot say where in its
    cell an object is. Two standard fixes (options, off by default; see ``AnticipationConfig.split_x0_loss`` for what
    they do and do not achieve):

    - ``coords``: two input channels with each pixel's normalised (x, y) (CoordConv);
    - ``points``: a 1x1 conv turns the stride-4 feature map into ``points`` heat maps; a softmax over space
      gives each map's expected (x, y) in [-1, 1] (spatial soft-argmax, as in deep visuomotor policies). A
      map that learns "red cube" or "green goal" hands the transformer that object's coordinates directly.
      Each point becomes a token: its (x, y) and their Fourier features through a linear layer."""

    trainable = True
    FREQS = (1.0, 2.0, 4.0, 8.0)

    def __init__(self, channels: int = 128, grid: int = 4, coords: bool = False, points: int = 0):
        super().__init__()
        self.grid, self.out_dim, self.coords, self.points = grid, channels, coords, points
        self.stem = nn.Sequential(
            nn.Conv2d(3 + 2 * coords, 32, 5, stride=2, padding=2), nn.GELU(),
            nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.GELU(),
        )
        self.net = nn.Sequential(
            nn.Conv2d(64, 128, 3, stride=2, padding=1), nn.GELU(),
            nn.Conv2d(128, channels, 3, stride=1, padding=1), nn.GELU(),
        )
        if points:
            self.heat = nn.Conv2d(64, points, 1)
            self.log_temperature = nn.Parameter(torch.zeros(()))
            self.point_embed = nn.Linear(2 + 4 * len(self.FREQS), channels)

    _LEGACY = {"net.0.": "stem.0.", "net.2.": "stem.2.", "net.4.": "net.0.", "net.6.": "net.2."}

    def _load_from_state_dict(self, state_dict, prefix, *args, **kw):
        # checkpoints written before the stem / net split held all four convs in ``net``
        if prefix + "stem.0.weight" not in state_dict and prefix + "net.6.weight" in state_dict:
            for key in [k for k in state_dict if k.startswith(prefix + "net.")]:
                rest = key[len(prefix):]
                old = next(o for o in self._LEGACY if rest.startswith(o))
                state_dict[prefix + self._LEGACY[old] + rest[len(old):]] = state_dict.pop(key)
        super()._load_from_state_dict(state_dict, prefix, *args, **kw)

    def soft_argmax(self, fmap: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) features -> (B, points, 2) expected (x, y) in [-1, 1] of each heat map."""
        b, _, h, w = fmap.shape
        heat = self.heat(fmap).flatten(2) / self.log_temperature.exp()
        prob = heat.softmax(-1).view(b, self.points, h, w)
        xs = torch.linspace(-1, 1, w, device=fmap.device)
        ys = torch.linspace(-1, 1, h, device=fmap.device)
        return torch.stack([(prob.sum(2) * xs).sum(-1), (prob.sum(3) * ys).sum(-1)], -1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.permute(0, 3, 1, 2).float() / 127.5 - 1.0
        if self.coords:
            b, _, h, w = x.shape
            ys = torch.linspace(-1, 1, h, device=x.device).view(1, 1, h, 1).expand(b, 1, h, w)
            xs = torch.linspace(-1, 1, w, device=x.device).view(1, 1, 1, w).expand(b, 1, h, w)
            x = torch.cat([x, xs, ys], 1)
        fmap = self.stem(x)
        tokens = F.adaptive_avg_pool2d(self.net(fmap), self.grid).flatten(2).transpose(1, 2)  # (B, grid^2, C)
        if not self.points:
            return tokens
        xy = self.soft_argmax(fmap)
        ang = xy[..., None] * torch.tensor(self.FREQS, device=xy.device) * torch.pi           # (B, P, 2, F)
        feats = torch.cat([xy, ang.sin().flatten(2), ang.cos().flatten(2)], -1)
        return torch.cat([tokens, self.point_embed(feats)], 1)                                # (B, grid^2 + P, C)


def resolve_dinov2(source: str | None) -> str:
    source = source or os.environ.get("RELAM_DINOV2_MODEL") or "facebook/dinov2-small"
    return source


class DINOv2Encoder(nn.Module):
    """Frozen DINOv2 patch features at ``image_size`` (224: 16 x 16 patches of 14 px), average-pooled by
    ``pool`` (2 -> 8 x 8 tokens per image: 4x fewer tokens for the transformer, same field of view)."""

    trainable = False
    MEAN = (0.485, 0.456, 0.406)
    STD = (0.229, 0.224, 0.225)

    def __init__(self, source: str | None = None, image_size: int = 224, pool: int = 2):
        super().__init__()
        from transformers import Dinov2Model

        self.source = resolve_dinov2(source)
        local = Path(self.source).expanduser()
        try:
            if local.exists():
                model = Dinov2Model.from_pretrained(str(local))
            else:
                model = Dinov2Model.from_pretrained(self.source, local_files_only=os.environ.get(
                    "HF_HUB_OFFLINE", "0") not in ("0", ""))
        except Exception as e:  # noqa: BLE001 - every loading failure gets the same actionable message
            raise EncoderUnavailableError(
                f"cannot load DINOv2 weights from {self.source!r} ({type(e).__name__}: {str(e)[:200]}). "
                "Provide them: on a machine with internet run `huggingface-cli download facebook/dinov2-small "
                "--local-dir /models/dinov2-small`, then set anticipation.dinov2_model (or RELAM_DINOV2_MODEL) to "
                "that directory. Fallback without weights: anticipation.encoder='cnn' (a small CNN trained with "
                "the model; the default where no DINOv2 weights are present).") from None
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        self.model, self.image_size, self.pool = model, image_size, pool
        self.out_dim = model.config.hidden_size
        self.register_buffer("mean", torch.tensor(self.MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(self.STD).view(1, 3, 1, 1), persistent=False)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.permute(0, 3, 1, 2).float() / 255.0
        x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", antialias=True,
                          align_corners=False)
        x = (x - self.mean) / self.std
        tokens = self.model(pixel_values=x).last_hidden_state[:, 1:]  # drop CLS
        side = int(round(tokens.shape[1] ** 0.5))
        if self.pool > 1:
            grid = tokens.transpose(1, 2).reshape(len(x), -1, side, side)
            tokens = F.avg_pool2d(grid, self.pool).flatten(2).transpose(1, 2)
        return tokens


def make_encoder(name: str, **kw) -> nn.Module:
    if name == "cnn":
        return CNNEncoder(channels=kw.get("cnn_channels", 128), grid=kw.get("cnn_grid", 4),
                          coords=kw.get("cnn_coords", False), points=kw.get("cnn_points", 0))
    if name == "dinov2":
        return DINOv2Encoder(kw.get("dinov2_model") or None, kw.get("dinov2_image_size", 224), kw.get("dinov2_pool", 2))
    raise ValueError(f"unknown encoder {name!r}; choose 'cnn' or 'dinov2'")


def image_key(image: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(image).tobytes()).hexdigest()


class FeatureCache:
    """Disk cache of frozen-encoder features, one entry per distinct image (keyed by its bytes' SHA-1).
    ``encode(images)`` returns features, computing only the images not cached yet; ``save()`` writes the
    cache atomically (temp file + rename)."""

    def __init__(self, path: Path | str, encoder: nn.Module, batch_size: int = 16):
        self.path, self.encoder, self.batch = Path(path), encoder, batch_size
        self.store: dict[str, np.ndarray] = {}
        if self.path.exists():
            with np.load(self.path) as z:
                self.store = {k: z[k] for k in z.files}
        self.computed = 0

    def encode(self, images: np.ndarray) -> torch.Tensor:
        keys = [image_key(im) for im in images]
        todo = [i for i, k in enumerate(keys) if k not in self.store]
        for s in range(0, len(todo), self.batch):
            idx = todo[s:s + self.batch]
            feats = self.encoder(torch.from_numpy(np.stack([images[i] for i in idx]))).cpu().numpy()
            for i, f in zip(idx, feats):
                self.store[keys[i]] = f.astype(np.float32)
            self.computed += len(idx)
        return torch.from_numpy(np.stack([self.store[k] for k in keys]))

    def save(self) -> None:
        from relam.io import atomic_path
        with atomic_path(self.path) as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, **self.store)
