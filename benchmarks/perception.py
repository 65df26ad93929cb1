"""Perception benchmarks (keypoint/keyframe issue), measured in one run:

1. the `lk` tracker's pixel error against the `sim` (ground-truth) tracker on the selected keypoints of
   expert demos of each task: median and 90th percentile over all frames and keypoints (and over the
   frames where LK reports the point visible), plus extraction time per demo with each backend;
2. subgoal extraction of 100 demos of one task with the `sim` backends (target < 120 s on 2 cores).

    .venv/bin/python benchmarks/perception.py [--demos 10] [--big-task drawer-open] [--results-dir DIR]
Demos are read from DIR/demos (e.g. results/cpu) when present, else collected into a temporary folder.
"""
from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time

import numpy as np

import relam  # noqa: F401
from relam.config import load_config
from relam.data.demos import collect_demos, demo_path
from relam.data.store import EpisodeSet
from relam.envs import TASKS, task_spec
from relam.perception.subgoals import build_subgoal_dataset, extract_from_demo_set


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--demos", type=int, default=10)
    ap.add_argument("--tasks", nargs="*", default=list(TASKS))
    ap.add_argument("--big-task", default="drawer-open")
    ap.add_argument("--big-demos", type=int, default=100)
    ap.add_argument("--results-dir", default=None)
    args = ap.parse_args()
    tmp = tempfile.TemporaryDirectory()
    root = args.results_dir or tmp.name

    print(f"{'task':18s} {'median px':>9s} {'p90 px':>7s} {'median vis':>10s} {'p90 vis':>8s} "
          f"{'visible':>7s} {'sim s/demo':>10s} {'lk s/demo':>9s}")
    for task in args.tasks:
        cfg = load_config("cpu", {"results_dir": root, "demos": {"n_demos": args.demos}})
        if not demo_path(cfg, task).exists():
            collect_demos(cfg, task, progress=False)
        pc = cfg.perception.for_task(task)   # the task's own keypoint settings (door-open: K = 8 at cpu)
        lk_pc = dataclasses.replace(pc, tracker="lk")
        spec = task_spec(task)
        errs, errs_vis, vis_share, t_sim, t_lk = [], [], [], 0.0, 0.0
        with EpisodeSet(demo_path(cfg, task)) as ds:
            n = min(args.demos, len(ds))
            for i in range(n):
                t0 = time.perf_counter()
                ref = extract_from_demo_set(pc, ds, i, spec)
                t_sim += time.perf_counter() - t0
                t0 = time.perf_counter()
                extract_from_demo_set(lk_pc, ds, i, spec)  # the full stage with lk (its own keypoints)
                t_lk += time.perf_counter() - t0
                from relam.perception.trackers import LKTracker
                tracks, vis = LKTracker()(ds[i].frames, ref.keypoints.points)  # same keypoints as sim
                e = np.linalg.norm(tracks - ref.keypoints.tracks, axis=-1)
                errs.append(e.ravel())
                errs_vis.append(e[vis])
                vis_share.append(vis.mean())
        e, ev = np.concatenate(errs), np.concatenate(errs_vis)
        print(f"{task:18s} {np.median(e):9.2f} {np.percentile(e, 90):7.2f} {np.median(ev):10.2f} "
              f"{np.percentile(ev, 90):8.2f} {np.mean(vis_share):7.2f} {t_sim / n:10.3f} {t_lk / n:9.3f}", flush=True)

    cfg = load_config("cpu", {"results_dir": root, "demos": {"n_demos": args.big_demos}})
    if not demo_path(cfg, args.big_task).exists() or len(EpisodeSet(demo_path(cfg, args.big_task))) < args.big_demos:
        t0 = time.perf_counter()
        collect_demos(cfg, args.big_task, progress=False)
        print(f"(collected {args.big_demos} {args.big_task} demos in {time.perf_counter() - t0:.0f} s)")
    t0 = time.perf_counter()
    s = build_subgoal_dataset(cfg, args.big_task, progress=False)
    took = time.perf_counter() - t0
    print(f"subgoal extraction, {s['demos']} demos of {args.big_task}, sim backends: {took:.1f} s "
          f"({took / s['demos']:.2f} s/demo; target < 120 s) {'OK' if took < 120 else 'TOO SLOW'}")


if __name__ == "__main__":
    main()
