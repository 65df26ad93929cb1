"""Interfaces and the backend registry of the perception stage."""
from __future__ import annotations

from typing import Protocol

import numpy as np


class PerceptionError(RuntimeError):
    """Bad input or an unavailable backend; the message names the problem and the fix."""


class Segmenter(Protocol):
    def __call__(self, frame: np.ndarray, prompts: list[str]) -> dict[str, np.ndarray]:
        """RGB uint8 (H, W, 3) and text prompts -> {prompt: bool mask (H, W)}."""


class PointTracker(Protocol):
    def __call__(self, video: np.ndarray, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Video uint8 (T, H, W, 3) and query pixels (N, 2) on frame 0 -> tracks (T, N, 2) float pixel
        coordinates (continuous convention of relam.envs.camera: pixel (i, j) is centred at (j+.5, i+.5);
        NOT clipped, points may leave the image) and visibility (T, N) bool."""


def make_segmenter(name: str, **kwargs) -> Segmenter:
    if name == "sim":
        from relam.perception.segmenters import SimSegmenter
        return SimSegmenter(**kwargs)
    if name == "sam3":
        from relam.perception.sam3 import Sam3Segmenter
        return Sam3Segmenter(**kwargs)
    raise PerceptionError(f"unknown segmenter {name!r}; choose 'sim' or 'sam3'")


def make_tracker(name: str, **kwargs) -> PointTracker:
    if name == "sim":
        from relam.perception.trackers import SimTracker
        return SimTracker(**kwargs)
    if name == "lk":
        from relam.perception.trackers import LKTracker
        return LKTracker(**kwargs)
    if name == "cotracker":
        from relam.perception.cotracker import CoTracker
        return CoTracker(**kwargs)
    raise PerceptionError(f"unknown tracker {name!r}; choose 'sim', 'lk' or 'cotracker'")


def check_video(video: np.ndarray) -> np.ndarray:
    video = np.asarray(video)
    if video.ndim != 4 or video.shape[-1] != 3:
        raise PerceptionError(f"video must be (T, H, W, 3) RGB, got shape {video.shape}")
    if video.shape[0] < 2:
        raise PerceptionError(f"video has {video.shape[0]} frame(s); tracking needs at least 2 frames")
    if video.dtype != np.uint8:
        raise PerceptionError(f"video must be uint8, got {video.dtype}; convert with (x*255).astype(np.uint8)")
    return video


def check_queries(queries: np.ndarray) -> np.ndarray:
    q = np.asarray(queries, dtype=np.float64)
    if q.ndim != 2 or q.shape[1] != 2:
        raise PerceptionError(f"query points must be (N, 2) pixel coordinates, got shape {q.shape}")
    if not np.isfinite(q).all():
        raise PerceptionError("query points contain NaN/inf; pass finite pixel coordinates on frame 0")
    return q
