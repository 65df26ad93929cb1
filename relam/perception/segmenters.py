"""Ground-truth segmenter: the simulator's masks for the paper's text prompts (offline default)."""
from __future__ import annotations

import numpy as np

from relam.perception.base import PerceptionError


class SimSegmenter:
    """An oracle bound to ONE simulator state: built from a live task (``task=``, masks of its current
    state) or from stored masks (``masks={prompt: mask}``, e.g. a demo's frame-0 ground truth). The RGB
    frame passed in is only checked for size: the masks come from the simulator, not from the pixels."""

    def __init__(self, task=None, masks: dict | None = None):
        if (task is None) == (masks is None):
            raise PerceptionError("SimSegmenter needs exactly one of task= (live) or masks= (stored ground truth)")
        self.task, self.stored = task, masks

    @classmethod
    def from_groundtruth(cls, gt: dict, prompts) -> "SimSegmenter":
        return cls(masks={p: np.asarray(m, bool) for p, m in zip(prompts, gt["masks0"])})

    def __call__(self, frame: np.ndarray, prompts) -> dict[str, np.ndarray]:
        masks = self.task.masks(list(prompts)) if self.task is not None else self.stored
        missing = [p for p in prompts if p not in masks]
        if missing:
            raise PerceptionError(f"no ground-truth mask for prompt(s) {missing}; available: {list(masks)}")
        out = {p: masks[p] for p in prompts}
        shape = np.asarray(frame).shape[:2]
        for p, m in out.items():
            if m.shape != shape:
                raise PerceptionError(f"ground-truth mask for {p!r} is {m.shape} but the frame is {shape}")
        return out
