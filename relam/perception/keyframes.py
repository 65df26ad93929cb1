"""Keyframe selection (paper Eq. 2; SPEC §3): keyframes where the keypoints' motion turns.

t_0 = 0; given t_k, search t in [t_k + dmin, min(t_k + dmax, T-1)] and take
t_{k+1} = argmax_t (1/K) sum_i (1 - cos angle(u_i(t), v_i(t))),  u_i = x_i(t) - x_i(t-s), v_i = x_i(t+s) - x_i(t).
A point whose |u| or |v| is below ``motion_floor`` contributes 0. If every score is 0 (straight motion), take
t_k + dmax. The last frame is always the final keyframe.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class KeyframeConfig:
    step: int = 2
    """s: frames between the points that define the incoming/outgoing motion directions (ours)."""
    dmin_metaworld: int = 8
    """Minimum gap between keyframes in Meta-World (ours)."""
    dmax_metaworld: int = 30
    """Maximum gap between keyframes in Meta-World (ours). Halved to 15 (door-open, ``cpu``, 2026-12-02): plans of
    7-10 instead of 5-7 subgoals, the push on the door cut into smaller stages; the expert passes 29 % instead of
    11 % of the generated stages (model 2.73 / 6.31 px held out), PPO reaches ~3 stages instead of ~1.5, but success
    (150k, 3 seeds, validation-selected) stays where it was: ``relam-gt`` 20 / 50 / 0 %, ``relam`` 0 / 0 / 0 % at 90k
    (stopped). So 30 stays."""
    dmin_maniskill: int = 6
    """Minimum gap in ManiSkill (ours; its demos are shorter)."""
    dmax_maniskill: int = 25
    """Maximum gap in ManiSkill (ours)."""
    motion_floor: float = 0.5
    """Pixels: a point moving less than this over ``step`` frames has no direction and scores 0."""

    def gaps(self, suite: str) -> tuple[int, int]:
        return (self.dmin_metaworld, self.dmax_metaworld) if suite == "metaworld" else \
            (self.dmin_maniskill, self.dmax_maniskill)


def turning_scores(tracks: np.ndarray, step: int, motion_floor: float) -> np.ndarray:
    """(T, K, 2) -> (T,) mean over points of 1 - cos(angle between incoming and outgoing motion);
    0 where the window t-s .. t+s leaves the video."""
    T = len(tracks)
    scores = np.zeros(T)
    if T <= 2 * step:
        return scores
    u = tracks[step:T - step] - tracks[:T - 2 * step]
    v = tracks[2 * step:] - tracks[step:T - step]
    nu, nv = np.linalg.norm(u, axis=-1), np.linalg.norm(v, axis=-1)
    ok = (nu >= motion_floor) & (nv >= motion_floor)
    cos = np.einsum("tkd,tkd->tk", u, v) / np.where(ok, nu * nv, 1.0)
    scores[step:T - step] = np.where(ok, 1.0 - cos, 0.0).mean(axis=1)
    return scores


def select_keyframes(tracks: np.ndarray, dmin: int, dmax: int, step: int = 2, motion_floor: float = 0.5) -> np.ndarray:
    tracks = np.asarray(tracks, np.float64)
    if tracks.ndim != 3 or tracks.shape[-1] != 2:
        raise ValueError(f"tracks must be (T, K, 2), got {tracks.shape}")
    if not np.isfinite(tracks).all():
        raise ValueError("tracks contain NaN/inf; keyframes need finite keypoint tracks")
    if not 1 <= dmin <= dmax:
        raise ValueError(f"need 1 <= dmin <= dmax, got dmin={dmin}, dmax={dmax}")
    T = len(tracks)
    scores = turning_scores(tracks, step, motion_floor)
    keys = [0]
    while True:
        lo, hi = keys[-1] + dmin, min(keys[-1] + dmax, T - 1)
        if lo > hi:
            break
        window = scores[lo:hi + 1]
        # 1e-9: float round-off makes perfectly straight motion score ~1e-16, which is not a turn
        nxt = lo + int(np.argmax(window)) if window.max() > 1e-9 else min(keys[-1] + dmax, T - 1)
        keys.append(nxt)
        if nxt >= T - 1:
            break
    if keys[-1] != T - 1:
        keys.append(T - 1)
    return np.asarray(keys)
