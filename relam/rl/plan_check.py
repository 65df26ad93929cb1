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


def stage_stalls(env, act, episodes: int = 10, seed_offset: int = VALIDATION_SEED_OFFSET, on_reset=None) -> dict:
    """Where a policy's episodes stop passing the plan's stages, and which keypoints hold them there.

    ``act(obs) -> action`` plays ``episodes`` episodes in ``env`` (the reward wrapper of ``relam.rl.ppo.make_env``)
    from task seeds ``seed_offset`` + i (``on_reset()`` at each start, for a policy with memory). For the stage each
    episode ends in (unless it passed the whole plan), the step of closest approach to that stage's subgoal (the
    smallest value of the stage criterion, ``StageMachine.criterion_value``) gives each keypoint's distance there,
    in pixels. Why: many of door-open's episodes end in a stage whose door keypoints are on their subgoal while an
    arm keypoint stays a few px beyond the threshold (``cpu``, seeds 0-2: 10-40 % of the stalled episodes within
    2 px, 45-80 % held by the arm; README, stage 05); this tells such a near miss from a policy that never got
    there, and the arm (part 0) from the objects.

    Returns per-episode rows (``stage``, ``num_stages``, ``success``, ``reached_last``, ``miss_px``: the criterion's
    value minus the threshold, ``keypoint_px``: each keypoint's distance at closest approach, split into
    ``robot_px`` / ``object_px`` when the env knows the keypoints' parts) and ``summary``: success rate, mean stages
    passed, the share of episodes that passed the whole plan, and of the others the share blocked by the robot's
    keypoints (the largest distance on the arm; None when the parts are unknown) and the share of near misses
    (``miss_px`` <= 2 px)."""
    from relam.reward import part_labels

    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}")
    relam_env = env
    while not hasattr(relam_env, "machine"):   # the ReLAM wrapper under e.g. the env-reward or lift wrappers
        if not hasattr(relam_env, "env"):
            raise TypeError(f"stage_stalls needs an env with the ReLAM reward wrapper (relam.rl.ppo.make_env), got "
                            f"{type(env).__name__}")
        relam_env = relam_env.env
    size = relam_env.size
    rows = []
    for i in range(episodes):
        obs, info = env.reset(options={"task_seed": seed_offset + i})
        if on_reset is not None:
            on_reset()
        parts = None if relam_env.parts is None else part_labels(relam_env.parts, relam_env.K)
        best, ever, done = None, False, False   # best: (criterion value, keypoint distances px) in the current stage
        stage = 0
        while not done:
            obs, _, terminated, truncated, info = env.step(act(obs))
            ever |= bool(info.get("success", False))
            done = terminated or truncated
            passed = info.get("subgoal_reached", info.get("stage_reached", False))   # env-reward renames it
            if info["stage"] != stage or passed:
                stage, best = info["stage"], None   # a new stage: its closest approach starts afresh
                if passed:
                    continue
            machine = relam_env.machine
            target = machine.target()
            if target is None:
                continue
            d = np.linalg.norm(relam_env.keypoints - target, axis=-1)
            crit = machine.criterion_value(d.tolist())
            if best is None or crit < best[0]:
                best = (crit, d * size)
        row = {"task_seed": seed_offset + i, "stage": int(info["stage"] + info["reached_last"]),
               "num_stages": int(info["num_stages"]), "success": ever, "reached_last": bool(info["reached_last"])}
        if not info["reached_last"] and best is not None:
            d = best[1]
            row |= {"miss_px": (best[0] - relam_env.machine.cfg.delta) * size, "keypoint_px": d.round(1).tolist()}
            if parts is not None:
                row |= {"robot_px": d[parts == 0].round(1).tolist(), "object_px": d[parts != 0].round(1).tolist(),
                        "blocked_by_robot": bool(parts[np.argmax(d)] == 0)}
        rows.append(row)
    stalled = [r for r in rows if "miss_px" in r]
    summary = {"success_rate": float(np.mean([r["success"] for r in rows])),
               "mean_stages": float(np.mean([r["stage"] for r in rows])),
               "last_subgoal_rate": float(np.mean([r["reached_last"] for r in rows])),
               "stalled_blocked_by_robot": (float(np.mean([r["blocked_by_robot"] for r in stalled]))
                                            if stalled and parts is not None else None),
               "stalled_near_miss": float(np.mean([r["miss_px"] <= 2.0 for r in stalled])) if stalled else None}
    return {"episodes": rows, "summary": summary}
