"""Perception for ReLAM: text-prompted segmentation on frame 0 and point tracking through a video.

Two pluggable interfaces (see ``base.py``): ``Segmenter`` and ``PointTracker``, with backends chosen by
name through ``make_segmenter`` / ``make_tracker``:
- segmenters: ``sim`` (simulator ground truth, offline default), ``sam3`` (transformers' Sam3Model)
- trackers:   ``sim`` (ground truth, default in simulation), ``lk`` (OpenCV pyramidal Lucas-Kanade with a
              forward-backward check; no weights), ``cotracker`` (CoTracker3 via torch.hub / the package)
"""
from relam.perception.base import PerceptionError, PointTracker, Segmenter, make_segmenter, make_tracker  # noqa: F401
