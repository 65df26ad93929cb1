"""Where an episode's keypoint subgoals come from (first frame -> plan (M+1, K, 2), normalised).

- ``ModelPlanner`` (method ``relam``): the trained anticipation model on the episode's first frame and the task's
  indication frame; one encoder call and one autoregressive generation per episode.
- ``ExpertPlanner`` (method ``relam-gt``, the paper's Fig. 6(c) ablation): the ground-truth keypoint subgoals of
  the scripted expert from the SAME initial state, extracted exactly like the demo subgoals (keypoint selection
  on the expert rollout, keyframes on its tracks). Costs an expert rollout per new initial state.
- ``AnchoredPlanner`` (default around ``ModelPlanner``; deviation from the paper, see its docstring): snaps each
  generated x^0 keypoint onto the mask of the part it stands for and shifts that keypoint's subgoal path with it.
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


def required_task_seed(info: dict | None, who: str) -> int:
    """The episode's task seed, for simulator oracles that re-create its initial state."""
    if not info or info.get("task_seed") is None:
        raise ValueError(f"{who} needs the task seed (info['task_seed'], set by relam.rl.env.TaskEnv)")
    return int(info["task_seed"])


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

        ep = rollout(self.task, required_task_seed(info, "ExpertPlanner"), extra_after_success=self.extra,
                     record_frames=False)
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


def keypoint_prompt_index(prompts, kp: KeypointConfig) -> np.ndarray:
    """Which prompt each of the K keypoints belongs to: keypoint selection orders them robot first, then each
    object prompt, with ``quotas`` points per prompt (``relam.perception.keypoints``)."""
    from relam.perception.keypoints import quotas
    return np.repeat(np.arange(len(prompts)), quotas(prompts, kp.num_keypoints, kp.object_share))


def anchor_plan(plan: np.ndarray, masks: list[np.ndarray], prompt_index, window: int = 5):
    """Move every x^0 keypoint that lies off its part onto the nearest interior pixel of that part's mask and
    shift its whole subgoal path by the same offset (the generated motion is kept, only its start is corrected).

    ``plan``: (M+1, K, 2) normalised; ``masks[j]``: bool (H, W) mask of prompt j on the first frame;
    ``prompt_index``: (K,) prompt of each keypoint. Interior = pixels whose ``window`` square lies in the mask
    (as in keypoint selection), or the raw mask when nothing survives; an empty mask leaves the point as is.
    Returns (anchored plan, (K,) shift in pixels)."""
    from relam.perception.keypoints import window_filter

    plan = np.array(plan, np.float64)
    size = masks[0].shape[0]
    shift = np.zeros(plan.shape[1])
    for k, j in enumerate(prompt_index):
        interior = window_filter(masks[j], window)
        if not interior.any():
            interior = np.asarray(masks[j], bool)
        if not interior.any() or not np.isfinite(plan[0, k]).all():
            continue
        p = plan[0, k] * size
        r, c = int(np.floor(p[1])), int(np.floor(p[0]))
        if 0 <= r < size and 0 <= c < size and interior[r, c]:
            continue
        rows, cols = np.nonzero(interior)
        centres = np.stack([cols + 0.5, rows + 0.5], 1)
        best = centres[np.argmin(((centres - p) ** 2).sum(1))]
        plan[:, k] += (best - p) / size
        shift[k] = float(np.linalg.norm(best - p))
    return plan, shift


class SimFirstFrameMasks:
    """Ground-truth part masks of an episode's first frame, from its task seed (the simulator oracle that plays
    the segmenter's role, as everywhere in simulation): resets its own task instance to ``info['task_seed']``."""

    def __init__(self, task: str, image_size: int = 128):
        self.task = make_task(task, image_size=image_size)
        self.prompts = list(self.task.spec.prompts)

    def __call__(self, frame, info: dict | None) -> list[np.ndarray]:
        self.task.reset(required_task_seed(info, "SimFirstFrameMasks"))
        masks = self.task.masks(self.prompts)
        return [masks[p] for p in self.prompts]

    def close(self):
        self.task.close()


class AnchoredPlanner:
    """A planner whose x^0 keypoints are snapped onto their parts' masks (``anchor_plan``).

    Why (deviation from the paper, where x^0 is the model's output as is): the tracker follows whatever body lies
    under each x^0 pixel. Our small CPU anticipation models place x^0 within ~6-12 px on ManiSkill, larger than
    the cube (~10 px), so the cube's keypoint landed on the table in 88 % (PushCube) / 87 % (PickCube) of the
    offline trajectories: a keypoint that never moves, subgoals that can never be reached. The first frame's
    part masks (the segmenter of the perception stage; ground truth in simulation) fix x^0 at the cost of one
    segmentation per episode. ``masks_fn(frame, info) -> [mask per prompt]``; for your own robot, e.g.
    ``lambda frame, info: [m for m in segmenter(frame, prompts).values()]``."""

    def __init__(self, planner, masks_fn, prompt_index, window: int = 5):
        self.planner, self.masks_fn = planner, masks_fn
        self.prompt_index, self.window = np.asarray(prompt_index), window
        self.num_keypoints = planner.num_keypoints
        self.generated = getattr(planner, "generated", True)
        if len(self.prompt_index) != self.num_keypoints:
            raise ValueError(f"prompt_index has {len(self.prompt_index)} entries for {self.num_keypoints} keypoints")

    def __call__(self, frame, info=None):
        plan = self.planner(frame, info)
        return anchor_plan(plan, self.masks_fn(frame, info), self.prompt_index, self.window)[0]

    def close(self):
        for part in (self.planner, self.masks_fn):
            if hasattr(part, "close"):
                part.close()


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
