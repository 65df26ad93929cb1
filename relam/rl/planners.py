"""Where an episode's keypoint subgoals come from (first frame -> plan (M+1, K, 2), normalised).

- ``ModelPlanner`` (method ``relam``): the trained anticipation model on the episode's first frame and the task's
  indication frame; one encoder call and one autoregressive generation per episode.
- ``ExpertPlanner`` (method ``relam-gt``, the paper's Fig. 6(c) ablation): the ground-truth keypoint subgoals of
  the scripted expert from the SAME initial state, extracted exactly like the demo subgoals (keypoint selection
  on the expert rollout, keyframes on its tracks). Costs an expert rollout per new initial state.
- ``CachedPlanner``: plans are deterministic per task seed; RL draws its initial states from a finite seed pool,
  so each seed is planned once (generating/rolling out per episode halved PPO throughput in SPEC §5's probe).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from relam.envs import make_task
from relam.perception.keyframes import KeyframeConfig
from relam.perception.keypoints import KeypointConfig


class ModelPlanner:
    def __init__(self, checkpoint: Path | str, task: str, max_len: int | None = None):
        from relam.models.train_anticipation import load_model
        self.model, ckpt = load_model(checkpoint)
        tasks = list(ckpt["tasks"])
        if task not in tasks:
            raise ValueError(f"anticipation model {checkpoint} was trained on {tasks}, not on {task!r}")
        self.task_frame = np.asarray(ckpt["task_frames"][tasks.index(task)])
        self.num_keypoints = self.model.cfg.num_keypoints
        self.generated = True   # plans carry the model's error: the reward may use a looser stage threshold
        self.max_len = max_len

    @torch.no_grad()
    def __call__(self, frame: np.ndarray, info: dict | None = None) -> np.ndarray:
        if frame.shape != self.task_frame.shape:
            raise ValueError(f"first frame is {frame.shape} but the model's task frame is {self.task_frame.shape}")
        first = torch.from_numpy(np.ascontiguousarray(frame))[None]
        feats = self.model.encode_images(first, torch.from_numpy(self.task_frame)[None])
        return self.model.generate(feats, self.max_len)[0]


class ExpertPlanner:
    def __init__(self, task: str, image_size: int = 128, keypoints: KeypointConfig = KeypointConfig(),
                 keyframes: KeyframeConfig = KeyframeConfig(), extra_after_success: int = 10):
        self.task = make_task(task, image_size=image_size)
        self.kp, self.kf, self.extra = keypoints, keyframes, extra_after_success
        self.num_keypoints = keypoints.num_keypoints
        self.generated = False

    def __call__(self, frame=None, info: dict | None = None) -> np.ndarray:
        import warnings

        from relam.data.rollout import rollout
        from relam.perception.subgoals import extract_demo
        from relam.perception.trackers import SimTracker

        if not info or info.get("task_seed") is None:
            raise ValueError("ExpertPlanner needs the task seed (info['task_seed'], set by relam.rl.env.TaskEnv)")
        ep = rollout(self.task, int(info["task_seed"]), extra_after_success=self.extra, record_frames=False)
        gt = ep.groundtruth
        size = self.task.image_size
        video = np.broadcast_to(np.zeros((1, size, size, 3), np.uint8), (len(gt["body_poses"]), size, size, 3))
        masks = dict(zip(self.task.spec.prompts, gt["masks0"]))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # fallbacks warn per demo; RL would print thousands
            demo = extract_demo(video, masks, SimTracker.from_groundtruth(gt), self.task.spec.suite, self.kp,
                                self.kf, self.task.spec.name)
        return demo.subgoals

    def close(self):
        self.task.close()


class CachedPlanner:
    """Memoises a planner by ``info['task_seed']`` (falls through when there is none)."""

    def __init__(self, planner):
        self.planner, self.cache = planner, {}
        self.num_keypoints = planner.num_keypoints
        self.generated = getattr(planner, "generated", False)

    def lookup(self, info):
        key = None if not info else info.get("task_seed")
        return self.cache.get(key) if key is not None else None

    def __call__(self, frame, info=None):
        key = None if not info else info.get("task_seed")
        if key is None:
            return self.planner(frame, info)
        if key not in self.cache:
            self.cache[key] = self.planner(frame, info)
        return self.cache[key]
