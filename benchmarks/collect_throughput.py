"""Demo-collection throughput against the raw simulator, per task, measured in one run.

raw   = reset + (expert action, step, render) per frame, nothing stored
collect = relam.data.demos.collect_demos (rollout + ground truth + gzip HDF5 writes), same frames
Target (foundation issue): collect / raw >= 0.8.

    .venv/bin/python benchmarks/collect_throughput.py [--demos 5] [--tasks drawer-open PushCube]
"""
from __future__ import annotations

import argparse
import tempfile
import time

import relam  # noqa: F401
from relam.config import load_config
from relam.data.demos import collect_demos
from relam.envs import TASKS, make_task


def raw_fps(name: str, seeds, image_size: int, extra: int) -> float:
    task = make_task(name, image_size=image_size)
    frames, t0 = 0, None
    for i, seed in enumerate(seeds):
        obs = task.reset(seed)
        if i == 0:
            t0 = time.perf_counter()  # exclude one-off start-up, as collection's own timer does not
        task.render()
        frames += 1
        first = -1
        for t in range(task.spec.max_steps):
            obs, _, term, _, info = task.step(task.expert_action(obs))
            task.render()
            frames += 1
            if first < 0 and info["success"]:
                first = t
            if first >= 0 and t >= first + extra:
                break
    fps = frames / (time.perf_counter() - t0)
    task.close()
    return fps


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--demos", type=int, default=5)
    ap.add_argument("--tasks", nargs="*", default=list(TASKS))
    ap.add_argument("--rounds", type=int, default=3,
                    help="alternate raw/collect this many times and keep each one's best (shared, noisy machines)")
    args = ap.parse_args()
    print(f"{'task':20s} {'raw fps':>9s} {'collect fps':>12s} {'ratio':>7s}")
    for name in args.tasks:
        raw, col = 0.0, 0.0
        for _ in range(args.rounds):
            with tempfile.TemporaryDirectory() as tmp:
                cfg = load_config("smoke", {"results_dir": tmp, "demos": {"n_demos": args.demos}})
                seeds = range(cfg.demos.seed_offset, cfg.demos.seed_offset + args.demos)
                raw = max(raw, raw_fps(name, seeds, cfg.env.image_size, cfg.demos.extra_frames_after_success))
                col = max(col, collect_demos(cfg, name, progress=False)["frames_per_s"])
        print(f"{name:20s} {raw:9.1f} {col:12.1f} {col / raw:7.2f}", flush=True)


if __name__ == "__main__":
    main()
