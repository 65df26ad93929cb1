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


def _task_env(env, caller: str):
    """The ``TaskEnv`` directly inside the reward wrapper ``env``, whose scripted expert and simulator the checks
    drive; a clear error for anything else (e.g. a lift or env-reward wrapper in between)."""
    from relam.rl.env import TaskEnv

    inner = env.env
    if not isinstance(inner, TaskEnv):
        raise TypeError(f"{caller} needs the reward wrapper directly around a TaskEnv (relam.rl.ppo.make_env without "
                        f"a lift), got {type(inner).__name__}")
    return inner


def expert_plan_check(env, episodes: int = 10, seed_offset: int = VALIDATION_SEED_OFFSET,
                      after_success: int = 10) -> dict:
    """Play the scripted expert in ``env`` (``relam.rl.ppo.make_env``: the reward wrapper around a ``TaskEnv``)
    from ``episodes`` initial states (task seeds ``seed_offset`` + i). Each episode runs to ``after_success`` steps
    after the first success (as the demos, whose keyframes the plans imitate) or to the step limit; the episode's
    own end on success is ignored so that later stages can still be passed. Returns the per-episode stages passed
    and plan lengths, ``stage_share`` (mean of passed / planned) and the expert's ``success_rate``."""
    inner = _task_env(env, "expert_plan_check")
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


def keypoint_aliases(env, task_seed: int = VALIDATION_SEED_OFFSET, offsets_cm=None, near_cm: float = 8.0,
                     via_cm=(0.0, -10.0, 10.0), steps: int = 50, tries: int = 5) -> dict:
    """Does the camera's view of the keypoints tell the arm's place apart? The reward distance d_k from hand places
    around the grasp to the keypoints of the grasp itself.

    The reference is the scripted expert's keypoints two steps before the task object first moves (by 5 mm): the
    grasp, which the plan's subgoal before the object's motion asks for. The initial state is the first of task
    seeds ``task_seed``, ``task_seed`` + 1, ... (``tries`` of them) from which the expert moves the object. Then,
    from the same initial state for each probe, the hand is driven (delta-position actions, the gripper open) to the
    reference hand place plus ``via_cm`` plus the probe's offset, and then for ``steps`` steps to the reference hand
    place plus the offset (``offsets_cm``: (n, 3) cm, world frame; default: x and z in -15..10 cm by 5, y in {0, -8};
    ``via_cm`` default: 10 cm towards the robot and 10 cm up, so the hand comes from the front and above). There the
    keypoints' distance to the reference is measured as the reward measures it (d_k, ``StageMachine.distance``, and
    the largest single keypoint's), in pixels. The arm is redundant, so the hand's controller reaches the grasp's
    place with the arm a pixel or two off the expert's pose: compare places reached by the same controller (the near
    and far minima), as a policy reaches them by its own path too.

    Why: one camera sees the keypoints in 2-D, so hand places along its view ray look alike. Where such a place is
    reachable it is a pocket of the reward: d_k is nearly as small as at the grasp, no stage is passed, and getting out
    costs reward first. Measured at ``cpu`` (README, stage 05; the profile's cameras and keypoints, validation states
    3 000 000, 3 000 005, 3 000 010): each Meta-World task has such a place ~10 cm along -x (0-5 cm down), its d_k
    1.9-2.1 times the near minimum on drawer-open and 2.1-6.7 times on door-open, so aliasing does not single out
    door-open. Of 33 failed door-open PPO episodes that left the door shut (14 final models of the ``cpu`` ablations),
    7 ended with the hand 9-21 cm from the grasp along the camera's ray (cosine >= 0.7). Where an obstacle stands on
    the way in (button-press-wall's wall) the hand stops short of the grasp's own place and the near minimum reads
    high (2.7-4.8 px): pass another ``via_cm``.

    Returns ``task_seed`` (the one used), ``reference_hand`` (m), ``reference_step``, one row per probe
    (``offset_cm``, ``reached_cm``: where the hand got, from the reference hand place; ``gap_cm``: its distance;
    ``d_px``, ``max_px``), and the summary:
    ``near_min_px`` (the smallest d_k within ``near_cm`` of the grasp), ``far_min_px`` and ``far_min_at_cm`` (the
    smallest d_k further away, and where), ``alias_ratio`` = far / near (near 1: the camera cannot tell those places
    apart). Meta-World tasks only (their actions move the hand by a position delta)."""
    from relam.reward import keypoint_distance
    inner = _task_env(env, "keypoint_aliases")
    task = inner.task
    if task.spec.suite != "metaworld":
        raise ValueError(f"keypoint_aliases drives the hand by Meta-World's delta-position actions; {task.spec.name} "
                         f"is a {task.spec.suite} task")
    if not near_cm > 0 or steps < 1 or tries < 1:
        raise ValueError(f"near_cm must be > 0, steps and tries >= 1, got near_cm={near_cm}, steps={steps}, "
                         f"tries={tries}")
    if offsets_cm is None:
        offsets_cm = [(x, y, z) for x in range(-15, 15, 5) for z in range(-15, 15, 5) for y in (0, -8)]
    offsets = np.asarray(offsets_cm, np.float64).reshape(-1, 3) / 100.0

    def hand() -> np.ndarray:
        return np.asarray(task.proprio()[:3], np.float64)

    def drive(target: np.ndarray, n: int) -> None:
        for _ in range(n):
            action = np.zeros(env.action_space.shape, np.float32)
            action[:3] = np.clip((target - hand()) * 20.0, -1.0, 1.0)   # full speed beyond 5 cm
            action[3:] = -1.0                                           # gripper open
            env.step(action)

    def expert_until_the_object_moves(seed: int):
        """(keypoints, hand) after each expert step from ``seed`` until the object has moved 5 mm; None if never."""
        env.reset(options={"task_seed": seed})
        start, seen = task.object_position().copy(), []
        for _ in range(task.spec.max_steps):
            env.step(task.expert_action(inner.last_state))
            seen.append((env.keypoints.copy(), hand()))
            if np.linalg.norm(task.object_position() - start) > 0.005:
                return seen
        return None

    first = task_seed
    for task_seed in range(first, first + tries):
        if (seen := expert_until_the_object_moves(task_seed)) is not None:
            break
    else:
        raise RuntimeError(f"the expert never moved {task.spec.name}'s object from task seeds {first}.."
                           f"{first + tries - 1}: pass another task_seed or more tries")
    ref_step = max(len(seen) - 3, 0)
    ref_points, ref_hand = seen[ref_step]
    rows = []
    for off in offsets:
        env.reset(options={"task_seed": task_seed})
        drive(ref_hand + off + np.asarray(via_cm, np.float64) / 100.0, 30)
        drive(ref_hand + off, steps)
        per = keypoint_distance(env.keypoints, ref_points).tolist()
        reached = hand() - ref_hand
        rows.append({"offset_cm": (off * 100).round(1).tolist(), "reached_cm": (reached * 100).round(1).tolist(),
                     "gap_cm": float(np.linalg.norm(reached) * 100), "d_px": env.machine.distance(per) * env.size,
                     "max_px": max(per) * env.size})
    near = [r for r in rows if r["gap_cm"] <= near_cm]
    far = [r for r in rows if r["gap_cm"] > near_cm]
    near_min = min((r["d_px"] for r in near), default=None)
    best_far = min(far, key=lambda r: r["d_px"], default=None)
    return {"task_seed": task_seed, "reference_hand": ref_hand.tolist(), "reference_step": ref_step + 1,
            "probes": rows, "near_min_px": near_min, "far_min_px": None if best_far is None else best_far["d_px"],
            "far_min_at_cm": None if best_far is None else best_far["reached_cm"],
            "alias_ratio": (best_far["d_px"] / near_min if best_far is not None and near_min else None)}
