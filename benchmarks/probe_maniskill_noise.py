"""Probe the ManiSkill scripted experts and the noisy-demo scheme (no rendering).

For each task and each noise setting: success share over N episodes (an episode succeeds if the
simulator's success flag is ever 1 within ``max_steps``), median steps to first success, and the mean
cube path length (how different from the clean demos the noisy ones are). Optionally (``--render``)
the throughput of step + render() at the task's image size.

    .venv/bin/python benchmarks/probe_maniskill_noise.py --episodes 20
    .venv/bin/python benchmarks/probe_maniskill_noise.py --episodes 20 --grid   # several schemes
    .venv/bin/python benchmarks/probe_maniskill_noise.py --render   # + throughput and cube image motion
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np

import relam  # noqa: F401
from relam.envs.maniskill_tasks import DEFAULT_NOISE, NoiseParams, ManiSkillTask, noisy_action

GRID = {
    "iid_all_0.3 (gripper too)": NoiseParams(sigma=0.3, rho=0.0, eps_random=0.0, gripper_sigma=0.3),
    "iid_xyz_0.15": NoiseParams(sigma=0.15, rho=0.0, eps_random=0.0),
    "iid_xyz_0.3": NoiseParams(sigma=0.3, rho=0.0, eps_random=0.0),
    "iid_xyz_0.6": NoiseParams(sigma=0.6, rho=0.0, eps_random=0.0),
    "ar0.8_xyz_0.3": NoiseParams(sigma=0.3, rho=0.8, eps_random=0.0),
    "eps0.2": NoiseParams(sigma=0.0, eps_random=0.2),
    "eps0.3": NoiseParams(sigma=0.0, eps_random=0.3),
    "eps0.4": NoiseParams(sigma=0.0, eps_random=0.4),
    "eps0.3+iid0.1": NoiseParams(sigma=0.1, eps_random=0.3),
}


def run(task: ManiSkillTask, params: NoiseParams | None, episodes: int, seed0: int = 1000) -> dict:
    succ, first, path = [], [], []
    t0, steps = time.time(), 0
    for ep in range(episodes):
        seed = seed0 + ep
        rng = np.random.default_rng(seed)
        noise_state: dict = {}
        s = task.reset(seed)
        prev, length, hit = task.object_position(), 0.0, None
        for k in range(task.spec.max_steps):
            a = task.expert_action(s)
            if params is not None:
                a = noisy_action(a, rng, k, params, noise_state)
            s, _, _, trunc, info = task.step(a)
            steps += 1
            cur = task.object_position()
            length += float(np.linalg.norm(cur - prev))
            prev = cur
            if info["success"] and hit is None:
                hit = k + 1
            if trunc:
                break
        succ.append(hit is not None)
        first.append(hit)
        path.append(length)
    firsts = [f for f in first if f is not None]
    return {"success": float(np.mean(succ)), "n": episodes,
            "median_steps_to_success": float(np.median(firsts)) if firsts else None,
            "mean_cube_path_m": float(np.mean(path)), "steps_per_s": steps / (time.time() - t0)}


def throughput(task: ManiSkillTask, steps: int = 60) -> dict:
    """steps/s: physics + expert only; raw step + render() every step; demo-collection pattern
    (render() + body_poses() every step, depth()/segmentation() on frame 0); everything every step."""
    out = {}
    task.reset(0)
    for _ in range(5):  # warm up the renderer (the first pictures of a process are slow)
        task.step(np.zeros(task.action_dim))
        task.render(), task.depth()
    for mode in ("step_only", "step_render", "collection", "render_depth_seg_every_step"):
        s = task.reset(0)
        t0 = time.time()
        for k in range(steps):
            if mode == "collection" and k == 0:
                task.render(), task.depth(), task.segmentation(), task.body_poses()
            s, *_ = task.step(task.expert_action(s))
            if mode != "step_only":
                task.render()
            if mode == "collection":
                task.body_poses()
            if mode == "render_depth_seg_every_step":
                task.depth(), task.segmentation()
        out[mode] = round(steps / (time.time() - t0), 1)
    out["collection/step_render"] = round(out["collection"] / out["step_render"], 3)
    return out


def cube_motion(task: ManiSkillTask, demos: int = 5, after_success: int = 10) -> dict:
    """Image motion (px) of the cube centre from reset to ``after_success`` steps after the expert's
    first success (the end of a demo video, SPEC §5/§9), per demo and median; plus the cube's
    visible area (px) in frame 0."""
    motion, area = [], []
    obj = task.spec.object_prompt
    for seed in range(demos):
        s = task.reset(seed)
        p0 = task.project(task.object_position()[None])[0]
        area.append(int(np.isin(task.segmentation(), task.prompt_slots(obj)).sum()))
        first = None
        for k in range(task.spec.max_steps):
            s, _, _, trunc, info = task.step(task.expert_action(s))
            if info["success"] and first is None:
                first = k
            if (first is not None and k >= first + after_success) or trunc:
                break
        p1 = task.project(task.object_position()[None])[0]
        motion.append(round(float(np.linalg.norm(p1 - p0)), 1))
    return {"motion_px": motion, "median_motion_px": float(np.median(motion)),
            "cube_area_px_frame0": area, "image_size": task.image_size}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", nargs="+", default=["PushCube", "PickCube"])
    ap.add_argument("--episodes", type=int, default=20)
    ap.add_argument("--grid", action="store_true", help="probe several noise schemes, not just the default")
    ap.add_argument("--render", action="store_true",
                    help="also measure rendering throughput and the cube's image motion over expert demos")
    ap.add_argument("--noise-episodes", type=int, default=None,
                    help="episodes per noise scheme (default: --episodes)")
    ap.add_argument("--image-size", type=int, default=128)
    args = ap.parse_args()
    import torch
    torch.set_num_threads(1)
    results = {}
    for name in args.tasks:
        task = ManiSkillTask(name, image_size=args.image_size)
        res = {"expert": run(task, None, args.episodes)}
        schemes = dict(GRID) if args.grid else {}
        schemes["DEFAULT_NOISE"] = DEFAULT_NOISE
        for label, p in schemes.items():
            res[label] = run(task, p, args.noise_episodes or args.episodes)
        if args.render:
            res["throughput_steps_per_s"] = throughput(task)
            res["cube_motion"] = cube_motion(task)
        task.close()
        results[name] = res
        for label, r in res.items():
            print(f"{name:9s} {label:28s} {json.dumps(r)}", flush=True)
    return results


if __name__ == "__main__":
    main()
