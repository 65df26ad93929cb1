"""Offline ReLAM (SPEC §7): relabel an offline control dataset with keypoint rewards.

Per trajectory: a plan from the trajectory's first frame (``relam``: the anticipation model; ``relam-gt``: the
ground-truth keypoint subgoals of the scripted expert from the same initial state), its x^0 tracked along the
trajectory (the ``sim`` tracker replays the stored body poses), and the reward / stage machine of
``relam.reward.relabel``. The environment's own reward is kept beside it for the env-reward baseline.

Output ``results/<profile>/relabelled/<task>/<method>.npz`` (atomic; skipped when its settings match), one row per
transition: ``keypoints``, ``subgoal`` (2K, normalised: what the policy sees at that state), ``state``
(proprioception: TCP xyz + finger opening, read from the recorded robot state), ``action``, ``next_*`` of the same,
``reward`` (ReLAM), ``env_reward``, ``terminal`` (success ended the episode), ``timeout`` (last transition without
success), ``stage``, ``stage_reached``, ``reached_last``, ``success`` (simulator flag after the action), ``episode``,
``t`` (frame index of the state, for image observations) and per-episode ``noisy``. With ``iql.goal_observation``
``state`` ends with the task's goal position (``Task.goal_of_state``), as the online env's does.
Transitions after a terminal success are dropped (they do not exist in an online episode).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from relam.envs.tracking import GroundTruthTracker
from relam.io import atomic_path
from relam.reward import RewardConfig, relabel


def relabel_episode(plan: np.ndarray, gt: dict, step_success: np.ndarray, image_size: int,
                    cfg: RewardConfig, parts=None) -> dict:
    """Track the plan's x^0 through one recorded episode (sim tracker on its stored poses) and relabel it.
    Returns per-state keypoints/targets (T+1) and the per-transition output of ``relam.reward.relabel``
    (``parts``: the part of each keypoint, for ``RewardConfig.part_weighting``)."""
    tracker = GroundTruthTracker(plan[0] * image_size, gt["depth0"], gt["seg0"], gt["camera"], gt["body_poses"][0])
    tracks = tracker.track(gt["body_poses"]) / image_size                    # (T+1, K, 2)
    points = tracker.world_points(gt["body_poses"])                           # (T+1, K, 3) world, metres
    out = relabel(tracks, plan, step_success, cfg, parts)
    targets = plan[1:] if len(plan) > 1 else plan[:1]   # an empty plan shows x^0 as the "subgoal"
    after = np.minimum(out["stage"], len(targets) - 1)
    before = np.concatenate([[0], after[:-1]]).astype(int)  # the policy at state t sees the target before step t
    out["tracks"], out["targets"], out["next_targets"] = tracks, targets[before], targets[after]
    out["points"] = points
    return out


def relabel_dataset(cfg, task: str, method: str, planner=None, progress: bool = True,
                    anticipation_run: str | None = None) -> Path:
    """Relabel ``task``'s offline dataset with ``method``'s plans ('relam' from the anticipation model chosen by
    ``anticipation_run`` (default ``cfg.iql.anticipation_run``), 'relam-gt' from the expert); returns the file."""
    from relam.data.demos import offline_path
    from relam.data.store import EpisodeSet, read_attrs
    from relam.envs.maniskill_tasks import goal_of_states, proprio_of_states
    from relam.rl.env import depth_observation
    from relam.rl.ppo import (keypoint_parts, make_planner, perception_setting, plan_error_of, plan_setting,
                              reward_config)

    run = anticipation_run or cfg.iql.anticipation_run
    generated = method == "relam"
    error = plan_error_of(cfg, task, run) if generated else None
    rc = reward_config(cfg, task, generated, error)
    src = offline_path(cfg, task)
    path = cfg.out / "relabelled" / task / f"{method}.npz"
    src_attrs = read_attrs(src) or {}
    settings = {"task": task, "method": method, "reward": cfg.reward.for_task(task).settings(generated, error),
                "anticipation_run": run if method == "relam" else None, **plan_setting(cfg, task, method, run),
                **perception_setting(cfg, task),
                "source": {k: v for k, v in src_attrs.items() if k in ("n_expert", "n_noisy", "seed_offset")}}
    if cfg.iql.goal_observation:   # absent: files made before the option
        settings["goal_observation"] = True
    if cfg.iql.keypoint_depth:     # absent: files made before the option
        settings["keypoint_depth"] = cfg.iql.keypoint_depth
    settings = json.loads(json.dumps(settings))
    if path.exists():
        with np.load(path) as f:
            if json.loads(str(f["settings"])) == settings:
                return path
    planner = planner or make_planner(task, method, cfg, run)
    size = cfg.env.image_size
    parts = keypoint_parts(cfg, task)
    cols = {k: [] for k in ("keypoints", "subgoal", "state", "action", "next_keypoints", "next_subgoal", "next_state",
                            "reward", "env_reward", "terminal", "timeout", "stage", "stage_reached", "reached_last",
                            "success", "episode", "t")}
    noisy = []
    with EpisodeSet(src) as ds:
        for i in tqdm(range(len(ds)), desc=f"relabel {task}/{method}", disable=not progress, unit="traj"):
            rec, gt = ds[i], ds.groundtruth(i)
            plan = np.asarray(planner(rec.frames[0], {"task_seed": rec.seed}), np.float64)
            out = relabel_episode(plan, gt, rec.step_success, size, rc, parts)
            T = len(rec.actions)
            end = int(np.argmax(out["terminal"])) + 1 if out["terminal"].any() else T   # drop after terminal success
            prop = proprio_of_states(gt["states"])
            if cfg.iql.goal_observation:
                prop = np.concatenate([prop, goal_of_states(gt["states"])], 1)
            if cfg.iql.keypoint_depth:   # as the online wrapper appends them
                prop = np.concatenate([prop, depth_observation(cfg.iql.keypoint_depth, out["points"], gt["camera"])], 1)
            kp = out["tracks"].reshape(T + 1, -1).astype(np.float32)
            sg, nsg = (out[k].reshape(T, -1).astype(np.float32) for k in ("targets", "next_targets"))
            cols["keypoints"].append(kp[:end]); cols["next_keypoints"].append(kp[1:end + 1])
            cols["subgoal"].append(sg[:end]); cols["next_subgoal"].append(nsg[:end])
            cols["state"].append(prop[:end]); cols["next_state"].append(prop[1:end + 1])
            cols["action"].append(rec.actions[:end].astype(np.float32))
            cols["env_reward"].append(rec.rewards[:end].astype(np.float32))
            for k in ("reward", "terminal", "stage", "stage_reached", "reached_last", "success"):
                cols[k].append(out[k][:end])
            timeout = np.zeros(end, bool)
            if not out["terminal"][:end].any():
                timeout[-1] = True
            cols["timeout"].append(timeout)
            cols["episode"].append(np.full(end, i, np.int32)); cols["t"].append(np.arange(end, dtype=np.int32))
            noisy.append(bool(ds.file[ds.names[i]].attrs.get("noisy", False)))
    arrays = {k: np.concatenate(v) for k, v in cols.items()}
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, settings=json.dumps(settings), noisy=np.array(noisy), **arrays)
    return path


def dataset_summary(path: Path | str, keep: np.ndarray | None = None) -> dict:
    """Share of transitions / episodes reaching the last subgoal against the simulator's success share; with
    ``keep`` (a transition mask of whole trajectories: the 'filtered-bc' learner's) also how many trajectories it
    keeps and which: the noisy and the successful share among them.
    ``success_stuck_first``: the share of SUCCESSFUL trajectories that never reach their first subgoal (NaN when
    none succeeds). Why: it says whether the plans are passable by the behaviour that does the task; a high share
    means the stage threshold is too tight for the plans' error (PickCube, 'max' criterion: 80 % at delta 0.047,
    64 % at 0.06, README stage 06), and the reward then pays successful and failed trajectories alike."""
    with np.load(path) as f:
        ep = f["episode"]
        n_ep = int(ep.max()) + 1
        last = np.zeros(n_ep, bool)
        succ = np.zeros(n_ep, bool)
        passed = np.zeros(n_ep, bool)
        np.logical_or.at(last, ep, f["reached_last"])
        np.logical_or.at(succ, ep, f["success"])
        np.logical_or.at(passed, ep, f["stage_reached"])
        out = {"transitions": int(len(ep)), "episodes": n_ep,
               "transitions_last_subgoal": float(f["reached_last"].mean()),
               "episodes_last_subgoal": float(last.mean()), "episodes_success": float(succ.mean()),
               "success_stuck_first": float((~passed[succ]).mean()) if succ.any() else float("nan"),
               "mean_reward": float(f["reward"].mean()), "mean_env_reward": float(f["env_reward"].mean())}
        if keep is not None:
            kept = np.unique(ep[keep])
            out |= {"episodes_kept": int(len(kept)), "kept_noisy_share": float(f["noisy"][kept].mean()),
                    "kept_success_share": float(succ[kept].mean())}
        return out
