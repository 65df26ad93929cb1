"""Scripted-expert success rate per task: share of episodes whose simulator success flag was ever 1
within the task's step limit (no rendering).

    .venv/bin/python benchmarks/expert_success.py [--episodes 50] [--seed0 2000]
"""
from __future__ import annotations

import argparse

import relam  # noqa: F401
from relam.envs import TASKS, make_task


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--episodes", type=int, default=50)
    ap.add_argument("--seed0", type=int, default=2000)
    ap.add_argument("--tasks", nargs="*", default=list(TASKS))
    args = ap.parse_args()
    for name in args.tasks:
        task = make_task(name)
        wins, steps = 0, []
        for seed in range(args.seed0, args.seed0 + args.episodes):
            obs = task.reset(seed)
            for t in range(task.spec.max_steps):
                obs, _, _, _, info = task.step(task.expert_action(obs))
                if info["success"]:
                    wins += 1
                    steps.append(t + 1)
                    break
        steps.sort()
        med = steps[len(steps) // 2] if steps else None
        print(f"{name:18s} {wins}/{args.episodes} = {100 * wins / args.episodes:.0f} %  median steps to success {med}",
              flush=True)
        task.close()


if __name__ == "__main__":
    main()
