"""Probe the ManiSkill scripted experts and the noisy-demo scheme (no rendering).

For each task and each noise setting: success share over N episodes (an episode succeeds if the
simulator's success flag is ever 1 within ``max_steps``), median steps to first success, and the mean
cube path length (how different from the clean demos the noisy ones are). Optionally (``--render``)
the throughput of step + render() at the task's image size.

    .venv/bin/python benchmarks/probe_maniskill_noise.py --episodes 20
    .venv/bin/python benchmarks/probe_maniskill_noise.py --episodes 20 --grid   # several schemes
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np

import relam  # noqa: F401
from relam.envs.maniskill_tasks import DEFAULT_NOISE, NoiseParams, ManiSkillTask, noisy_action

GRID = {
    "iid_all_0.3 (gripper too)": NoiseParams(sigma=0.3, rho=0.0, gripper_sigma=0.3),
    "iid_xyz_0.3": NoiseParams(sigma=0.3, rho=0.0),
    "iid_xyz_0.6": NoiseParams(sigma=0.6, rho=0.0),
    "ar0.8_xyz_0.3": NoiseParams(sigma=0.3, rho=0.8),
    "ar0.8_xyz_0.5": NoiseParams(sigma=0.5, rho=0.8),
    "ar0.9_xyz_0.5": NoiseParams(sigma=0.5, rho=0.9),
    "eps0.3": NoiseParams(sigma=0.0, eps_random=0.3),
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
    """steps/s of step + expert, with render() every step, and with render+depth+segmentation every step."""
    out = {}
    for mode in ("step_only", "render", "render_depth_seg"):
        s = task.reset(0)
        t0 = time.time()
        for _ in range(steps):
            s, *_ = task.step(task.expert_action(s))
            if mode != "step_only":
                task.render()
            if mode == "render_depth_seg":
                task.depth(), task.segmentation()
        out[mode] = steps / (time.time() - t0)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", nargs="+", default=["PushCube", "PickCube"])
    ap.add_argument("--episodes", type=int, default=20)
    ap.add_argument("--grid", action="store_true", help="probe several noise schemes, not just the default")
    ap.add_argument("--render", action="store_true", help="also measure step+render throughput")
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
            res[label] = run(task, p, args.episodes)
        if args.render:
            res["throughput_steps_per_s"] = throughput(task)
        task.close()
        results[name] = res
        for label, r in res.items():
            print(f"{name:9s} {label:28s} {json.dumps(r)}", flush=True)
    return results


if __name__ == "__main__":
    main()
