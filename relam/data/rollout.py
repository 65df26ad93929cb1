"""One episode of a task under a policy, recorded as arrays.

Split into what ReLAM may read (frames, and for control datasets the actions/rewards/success the
agent itself experiences) and simulator ground truth that only the ``sim`` perception backends,
oracles and evaluation may read (body poses, frame-0 depth/segmentation/masks, object positions,
privileged state).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from relam.envs.base import Task

PolicyFn = Callable[[Task, np.ndarray, int], np.ndarray]


def expert_policy(task: Task, obs: np.ndarray, step: int) -> np.ndarray:
    return task.expert_action(obs)


@dataclass
class Episode:
    seed: int
    frames: np.ndarray           # (T, H, W, 3) uint8, frame t is seen before action t
    actions: np.ndarray          # (T-1, A)
    rewards: np.ndarray          # (T-1,) environment reward
    success: np.ndarray          # (T-1,) simulator success flag after each action
    first_success: int           # index of the first action after which success was 1, or -1
    groundtruth: dict = field(default_factory=dict)

    @property
    def length(self) -> int:
        return len(self.frames)

    @property
    def succeeded(self) -> bool:
        return self.first_success >= 0


def rollout(task: Task, seed: int, policy: PolicyFn = expert_policy, extra_after_success: int = 10,
            max_steps: int | None = None, record_frames: bool = True) -> Episode:
    """Run one episode from ``reset(seed)``; stop ``extra_after_success`` steps after the first success
    or at ``max_steps``. Frame-0 depth, segmentation and prompt masks are captured for the ground truth."""
    max_steps = max_steps or task.spec.max_steps
    obs = task.reset(seed)
    seg0 = task.segmentation()
    gt = {
        "depth0": task.depth(),
        "seg0": seg0.astype(np.int32),
        "masks0": np.stack([m for m in task.masks(seg=seg0).values()]),
        "camera": task.camera(),
    }
    frames = [task.render()] if record_frames else []
    poses, states, objects = [task.body_poses()], [np.asarray(obs, np.float64)], [task.object_position()]
    actions, rewards, success = [], [], []
    first = -1
    for t in range(max_steps):
        action = np.asarray(policy(task, obs, t), dtype=np.float32)
        obs, reward, terminated, truncated, info = task.step(action)
        actions.append(action)
        rewards.append(reward)
        success.append(bool(info["success"]))
        if record_frames:
            frames.append(task.render())
        poses.append(task.body_poses())
        states.append(np.asarray(obs, np.float64))
        objects.append(task.object_position())
        if first < 0 and info["success"]:
            first = t
        if (first >= 0 and t >= first + extra_after_success) or terminated:
            break
    gt.update(body_poses=np.stack(poses), states=np.stack(states), object_pos=np.stack(objects))
    return Episode(
        seed=int(seed),
        frames=np.stack(frames) if record_frames else np.zeros((0,), np.uint8),
        actions=np.stack(actions).astype(np.float32),
        rewards=np.asarray(rewards, np.float32),
        success=np.asarray(success, bool),
        first_success=first,
        groundtruth=gt,
    )
