"""From any video file + text prompts to keypoints, tracks and keyframes: the path for your own videos.

    from relam.perception.video import subgoals_from_video
    sg = subgoals_from_video("demo.mp4", ["robot arm", "red cube"], segmenter="sam3", tracker="lk",
                             segmenter_kwargs={"model": "/models/sam3"})
    sg.keypoints.points, sg.keypoints.tracks, sg.keyframes, sg.subgoals

Frames are resized to ``size`` x ``size`` (the pipeline's 128 px by default, so window/motion settings
keep their meaning). ``segmenter``/``tracker`` are backend names or ready objects (any callable with the
``Segmenter``/``PointTracker`` signature).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from relam.perception.base import PerceptionError, check_video, make_segmenter, make_tracker
from relam.perception.keyframes import KeyframeConfig
from relam.perception.keypoints import KeypointConfig
from relam.perception.subgoals import DemoSubgoals, extract_demo


def read_video(path: Path | str, size: int | None = 128, max_frames: int | None = None) -> np.ndarray:
    """RGB uint8 (T, size, size, 3) from any file OpenCV can decode (mp4, avi, gif, ...)."""
    import cv2

    path = Path(path)
    if not path.exists():
        raise PerceptionError(f"video file {path} does not exist")
    cap = cv2.VideoCapture(str(path))
    frames = []
    while max_frames is None or len(frames) < max_frames:
        ok, bgr = cap.read()
        if not ok:
            break
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        if size is not None and rgb.shape[:2] != (size, size):
            rgb = cv2.resize(rgb, (size, size), interpolation=cv2.INTER_AREA)
        frames.append(rgb)
    cap.release()
    if not frames:
        raise PerceptionError(f"could not decode any frame from {path}; is it a video OpenCV can read?")
    return np.stack(frames)


def subgoals_from_video(video, prompts, segmenter="sam3", tracker="lk", size: int = 128,
                        keypoints: KeypointConfig = KeypointConfig(), keyframes: KeyframeConfig = KeyframeConfig(),
                        suite: str = "metaworld", segmenter_kwargs: dict | None = None,
                        tracker_kwargs: dict | None = None) -> DemoSubgoals:
    """``video`` is a path or a (T, H, W, 3) uint8 array; ``prompts`` are text prompts, robot first.
    ``suite`` picks the keyframe gap defaults (metaworld: 8..30 frames, maniskill: 6..25)."""
    if isinstance(video, (str, Path)):
        video = read_video(video, size)
    video = check_video(video)
    if not prompts:
        raise PerceptionError("give at least one text prompt (robot first, then the task object)")
    seg = make_segmenter(segmenter, **(segmenter_kwargs or {})) if isinstance(segmenter, str) else segmenter
    trk = make_tracker(tracker, **(tracker_kwargs or {})) if isinstance(tracker, str) else tracker
    masks = seg(video[0], list(prompts))
    return extract_demo(video, {p: masks[p] for p in prompts}, trk, suite, keypoints, keyframes,
                        task=str(getattr(video, "name", "video")))
