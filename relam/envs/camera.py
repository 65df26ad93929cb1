"""Pinhole camera in one convention for every simulator.

Pixel coordinates are continuous (u, v): u grows to the right, v grows DOWN, and pixel
(row i, column j) covers [j, j+1) x [i, i+1), so its centre is (j + 0.5, i + 0.5).
The extrinsic maps world points into OpenCV camera axes (x right, y down, z forward),
so a pixel is ``K @ (E @ [P; 1])`` after dividing by depth z. Both MuJoCo (Meta-World) and
SAPIEN (ManiSkill) cameras are converted into this form, so projection, back-projection and
the ground-truth tracker are written (and tested) once.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class CameraParams:
    intrinsic: np.ndarray  # (3, 3)
    extrinsic: np.ndarray  # (3, 4), world -> OpenCV camera
    width: int
    height: int

    def project(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """World points (..., 3) -> pixel coordinates (..., 2) and camera depth z (...).

        Points behind the camera get NaN pixels. Points outside the image are NOT clipped:
        keypoints may legitimately leave the frame (SPEC §2).
        """
        pts = np.asarray(points, dtype=np.float64)
        cam = pts @ self.extrinsic[:, :3].T + self.extrinsic[:, 3]
        z = cam[..., 2]
        with np.errstate(divide="ignore", invalid="ignore"):
            uv = (cam @ self.intrinsic.T)[..., :2] / z[..., None]
        uv[z <= 1e-9] = np.nan
        return uv, z

    def backproject(self, uv: np.ndarray, depth: np.ndarray) -> np.ndarray:
        """Pixel coordinates (..., 2) with camera depth z (...) -> world points (..., 3)."""
        uv = np.asarray(uv, dtype=np.float64)
        depth = np.asarray(depth, dtype=np.float64)
        ones = np.ones(uv.shape[:-1] + (1,))
        rays = np.concatenate([uv, ones], axis=-1) @ np.linalg.inv(self.intrinsic).T
        cam = rays * depth[..., None]
        rot, trans = self.extrinsic[:, :3], self.extrinsic[:, 3]
        return (cam - trans) @ rot  # rot is orthonormal: R^T (x - t)

    def to_dict(self) -> dict:
        return {
            "intrinsic": self.intrinsic.tolist(),
            "extrinsic": self.extrinsic.tolist(),
            "width": self.width,
            "height": self.height,
        }

    @classmethod
    def from_dict(cls, d: dict) -> "CameraParams":
        return cls(np.asarray(d["intrinsic"], float), np.asarray(d["extrinsic"], float),
                   int(d["width"]), int(d["height"]))


def pixel_centres(height: int, width: int) -> np.ndarray:
    """(H, W, 2) array of the (u, v) coordinates of every pixel centre."""
    v, u = np.mgrid[0:height, 0:width].astype(np.float64) + 0.5
    return np.stack([u, v], axis=-1)


def look_at_rotation(eye, target, up=(0.0, 0.0, 1.0)) -> np.ndarray:
    """Rotation whose columns are the OpenCV camera axes (x right, y down, z forward) in world
    coordinates, for a camera at ``eye`` looking at ``target`` with ``up`` pointing up in the image."""
    eye, target, up = (np.asarray(a, dtype=np.float64) for a in (eye, target, up))
    forward = target - eye
    forward /= np.linalg.norm(forward)
    right = np.cross(forward, up)
    if np.linalg.norm(right) < 1e-8:
        raise ValueError(f"camera up vector {tuple(up)} is parallel to the viewing direction; pick another 'up'")
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    return np.stack([right, down, forward], axis=1)


def quat_wxyz_to_matrix(q: np.ndarray) -> np.ndarray:
    """Unit quaternions (..., 4) in (w, x, y, z) order -> rotation matrices (..., 3, 3)."""
    q = np.asarray(q, dtype=np.float64)
    q = q / np.sqrt((q * q).sum(-1, keepdims=True))
    w, x, y, z = q[..., 0], q[..., 1], q[..., 2], q[..., 3]
    m = np.empty(q.shape[:-1] + (3, 3))  # filled in place: ~3x faster than nested stacks (per-step RL cost)
    m[..., 0, 0], m[..., 0, 1], m[..., 0, 2] = 1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)
    m[..., 1, 0], m[..., 1, 1], m[..., 1, 2] = 2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)
    m[..., 2, 0], m[..., 2, 1], m[..., 2, 2] = 2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)
    return m
