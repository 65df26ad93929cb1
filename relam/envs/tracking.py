"""Ground-truth point tracker for simulated scenes.

A query pixel on frame 0 is lifted to 3-D with the depth under it, attached to the body that the
segmentation shows there (in that body's local frame), and re-projected at any later state from the
body's pose. It needs no rendering after frame 0, so it costs microseconds per step. Points on the
static background (body slot 0, identity pose) stay put; points may leave the image and are never
clipped. The same code serves live episodes (poses read from the simulator) and recorded demos
(poses stored per frame in the simulator ground-truth file).
"""
from __future__ import annotations

import math

import numpy as np

from relam.envs.camera import CameraParams, quat_wxyz_to_matrix


class GroundTruthTracker:
    def __init__(self, query_uv, depth0, seg0, camera: CameraParams, poses0):
        """query_uv (N, 2) pixels on frame 0; depth0 (H, W) camera z in metres; seg0 (H, W) body slots;
        poses0 (B, 7) body poses (x, y, z, qw, qx, qy, qz) at frame 0."""
        uv = np.asarray(query_uv, dtype=np.float64).reshape(-1, 2)
        if not np.all(np.isfinite(uv)):
            raise ValueError("query points contain NaN/inf; pass finite pixel coordinates on frame 0")
        h, w = seg0.shape
        cols = np.clip(np.floor(uv[:, 0]).astype(int), 0, w - 1)
        rows = np.clip(np.floor(uv[:, 1]).astype(int), 0, h - 1)
        self.camera = camera
        proj = camera.intrinsic @ camera.extrinsic       # (3, 4) world -> homogeneous pixels, for track_frames
        self._proj_rows = proj.tolist()
        self.body = np.asarray(seg0[rows, cols], dtype=np.int64)
        world = camera.backproject(uv, np.asarray(depth0, np.float64)[rows, cols])
        pos, rot = _split(np.asarray(poses0)[self.body])
        # local = R^T (P - p), written per point
        self.local = np.einsum("nji,nj->ni", rot, world - pos)
        self._local_rows = self.local.tolist()

    def world_points(self, poses) -> np.ndarray:
        """Poses (..., B, 7) -> tracked 3-D points (..., N, 3)."""
        pos, rot = _split(np.asarray(poses)[..., self.body, :])
        return np.einsum("...nij,nj->...ni", rot, self.local) + pos

    def track_frames(self, pos: np.ndarray, rot: np.ndarray) -> np.ndarray:
        """Pixel coordinates (N, 2) from the positions (N, 3) and rotation matrices (N, 3, 3) of the tracked
        points' bodies (``self.body``): the per-step path of RL (same result as ``track``). Plain Python over
        the few points: with N = 4 numpy's per-call overhead was most of the cost (about 2x slower)."""
        (a0, a1, a2, a3), (b0, b1, b2, b3), (c0, c1, c2, c3) = self._proj_rows
        out = []
        for (px, py, pz), r, (lx, ly, lz) in zip(np.asarray(pos).tolist(), np.asarray(rot).reshape(-1, 9).tolist(),
                                                 self._local_rows):
            wx = r[0] * lx + r[1] * ly + r[2] * lz + px
            wy = r[3] * lx + r[4] * ly + r[5] * lz + py
            wz = r[6] * lx + r[7] * ly + r[8] * lz + pz
            h = c0 * wx + c1 * wy + c2 * wz + c3
            if h <= 1e-9:                       # behind the camera: no pixel
                out.append((math.nan, math.nan))
            else:
                out.append(((a0 * wx + a1 * wy + a2 * wz + a3) / h, (b0 * wx + b1 * wy + b2 * wz + b3) / h))
        return np.array(out, np.float64).reshape(-1, 2)

    def points_of_frames(self, pos: np.ndarray, rot: np.ndarray) -> np.ndarray:
        """World positions (N, 3) of the tracked points from their bodies' positions (N, 3) and rotation matrices
        (N, 3, 3), as ``track_frames`` takes them."""
        return np.einsum("nij,nj->ni", np.asarray(rot, np.float64), self.local) + np.asarray(pos, np.float64)

    def track(self, poses) -> np.ndarray:
        """Poses (B, 7) or a sequence (T, B, 7) -> pixel coordinates (N, 2) or (T, N, 2)."""
        uv, _ = self.camera.project(self.world_points(poses))
        return uv


def _split(poses: np.ndarray):
    return poses[..., :3], quat_wxyz_to_matrix(poses[..., 3:7])
