"""Can a plan be followed? Play the task's scripted expert through the ReLAM reward env and count its stages.

A stage is passed only when the stage criterion holds for the subgoal of that stage, in order. A ground-truth
plan (``relam-gt``) is the expert's own keyframes, so the expert passes all of it. A GENERATED plan carries the
anticipation model's errors; where the expert, which does the task, cannot pass a generated subgoal, a policy
cannot either without leaving the way the task is done, and the episode's reward stalls at that stage. Measured
at ``cpu`` (the profile's models, 20 validation states, README stage 05): with the 'max' criterion at the 'model'
delta the expert passes 11 % of door-open's generated stages (while succeeding in 90 % of the episodes), 30 % of
button-press-wall's and 94 % of drawer-open's. On door-open two of its robot keypoints come within 1-3 px of their
generated subgoals, but one arm point stays 8-13 px off, and in half the plans the door's later subgoals stay 11-18 px off.
"""
from __future__ import annotations

import numpy as np

from relam.rl.runs import VALIDATION_SEED_OFFSET


def expert_plan_check(env, episodes: int = 10, seed_offset: int = VALIDATION_SEED_OFFSET,
                      after_success: int = 10) -> dict:
    """Play the scripted expert in ``env`` (``relam.rl.ppo.make_env``: the reward wrapper around a ``TaskEnv``)
    from ``episodes`` initial states (task seeds ``seed_offset`` + i). Each episode runs to ``after_success`` steps
    after the first success (as the demos, whose keyframes the plans imitate) or to the step limit; the episode's
    own end on success is ignored so that later stages can still be passed. Returns the per-episode stages passed
    and plan lengths, ``stage_share`` (mean of passed / planned) and the expert's ``success_rate``."""
    from relam.rl.env import TaskEnv

    inner = env.env
    if not isinstance(inner, TaskEnv):
        raise TypeError(f"expert_plan_check needs the reward wrapper directly around a TaskEnv (relam.rl.ppo.make_env "
                        f"without a lift), got {type(inner).__name__}")
    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}")
    passed, planned, success = [], [], []
    for i in range(episodes):
        _, info = env.reset(options={"task_seed": seed_offset + i})
        stages, won, left = 0, False, None
        for _ in range(inner.task.spec.max_steps):
            _, _, _, truncated, info = env.step(inner.task.expert_action(inner.last_state))
            stages = info["stage"] + int(info["reached_last"])
            if info.get("success") and not won:
                won, left = True, after_success
            if truncated or (left is not None and (left := left - 1) < 0):
                break
        passed.append(stages)
        planned.append(int(info["num_stages"]))
        success.append(won)
    share = float(np.mean([p / n if n else 1.0 for p, n in zip(passed, planned)]))
    return {"stages_passed": passed, "num_stages": planned, "stage_share": share,
            "success_rate": float(np.mean(success))}
