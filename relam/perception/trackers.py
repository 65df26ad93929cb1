"""Point trackers: ``sim`` (simulator ground truth) and ``lk`` (OpenCV Lucas-Kanade, no weights)."""
from __future__ import annotations

import numpy as np

from relam.envs.tracking import GroundTruthTracker
from relam.perception.base import PerceptionError, check_queries, check_video


class SimTracker:
    """Exact tracks from the simulator: query pixels are lifted with frame-0 depth/segmentation and moved
    with the recorded body poses (relam.envs.tracking). Visibility = inside the image (occlusion is not
    modelled: the point is tracked through it, which is what the reward wants)."""

    def __init__(self, depth0, seg0, camera, body_poses):
        self.depth0, self.seg0, self.camera, self.poses = depth0, seg0, camera, np.asarray(body_poses)

    @classmethod
    def from_groundtruth(cls, gt: dict) -> "SimTracker":
        return cls(gt["depth0"], gt["seg0"], gt["camera"], gt["body_poses"])

    def __call__(self, video, queries):
        queries = check_queries(queries)
        if video is not None:
            video = check_video(video)
            if len(video) != len(self.poses):
                raise PerceptionError(f"video has {len(video)} frames but the ground truth has {len(self.poses)}")
        tracks = GroundTruthTracker(queries, self.depth0, self.seg0, self.camera, self.poses[0]).track(self.poses)
        h, w = self.seg0.shape
        visible = (tracks[..., 0] >= 0) & (tracks[..., 0] < w) & (tracks[..., 1] >= 0) & (tracks[..., 1] < h)
        return tracks, visible


class LKTracker:
    """Pyramidal Lucas-Kanade, frame to frame, with a forward-backward consistency check.

    A point whose backward-tracked position misses its start by more than ``fb_threshold`` px (or that LK
    loses) is marked invisible for that frame and held at its last good position; tracking continues from
    there, so it can be picked up again. Works on any video, needs no weights."""

    def __init__(self, win_size: int = 15, max_level: int = 3, fb_threshold: float = 1.0):
        self.win, self.levels, self.fb = win_size, max_level, fb_threshold

    def __call__(self, video, queries):
        import cv2

        video, queries = check_video(video), check_queries(queries)
        gray = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in video]
        params = dict(winSize=(self.win, self.win), maxLevel=self.levels,
                      criteria=(cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 30, 0.01))
        # OpenCV puts pixel centres at integers; ours are at +0.5
        pts = (queries - 0.5).astype(np.float32).reshape(-1, 1, 2)
        tracks = np.empty((len(video), len(queries), 2))
        visible = np.zeros((len(video), len(queries)), bool)
        tracks[0], visible[0] = queries, True
        for t in range(1, len(video)):
            nxt, st, _ = cv2.calcOpticalFlowPyrLK(gray[t - 1], gray[t], pts, None, **params)
            back, st_b, _ = cv2.calcOpticalFlowPyrLK(gray[t], gray[t - 1], nxt, None, **params)
            fb_err = np.linalg.norm((back - pts).reshape(-1, 2), axis=1)
            good = (st.ravel() == 1) & (st_b.ravel() == 1) & (fb_err < self.fb)
            pts = np.where(good[:, None, None], nxt, pts)
            tracks[t], visible[t] = pts.reshape(-1, 2) + 0.5, good
        return tracks, visible
