"""The task interface that every later stage talks to.

One ``Task`` wraps one simulated task of the paper and hides which simulator runs it. Everything is
seen through ONE fixed third-person camera (``TaskSpec.camera``), rendered upright at
``image_size`` pixels with fast render settings and goal/marker sites hidden.

Ground truth for oracles, the ``sim`` perception backends and evaluation:
- ``segmentation()`` gives per-pixel *body slots*: integers indexing ``body_poses()``; slot 0 is the
  static world (identity pose), so background pixels tracked by the ground-truth tracker stay put.
- ``masks(prompts)`` turns the paper's text prompts (SPEC §2) into boolean masks via
  ``TaskSpec.prompt_bodies``.
- ``depth()`` is the camera-frame z in metres; ``camera()`` gives ``CameraParams`` (OpenCV convention).
"""
from __future__ import annotations

import abc
from dataclasses import dataclass, field

import numpy as np

from relam.envs.camera import CameraParams
from relam.envs.tracking import GroundTruthTracker


@dataclass(frozen=True)
class CameraSpec:
    """A fixed camera placed by eye/target/up (world frame, metres) and vertical field of view."""
    eye: tuple[float, float, float]
    target: tuple[float, float, float]
    up: tuple[float, float, float] = (0.0, 0.0, 1.0)
    fovy: float = 45.0


def is_count(value) -> bool:
    """A positive whole number (not a bool, which Python counts as an int): step counts, limits and repeats."""
    return not isinstance(value, bool) and isinstance(value, int) and value >= 1


@dataclass(frozen=True)
class TaskSpec:
    name: str
    suite: str                      # "metaworld" | "maniskill"
    env_id: str
    prompts: tuple[str, ...]        # text prompts for the segmenter (paper App. D), robot first
    camera: CameraSpec
    max_steps: int                  # episode limit used for demos and RL
    prompt_bodies: dict = field(default_factory=dict)  # prompt -> body-name patterns (sim segmenter)
    show_goal: bool = False         # draw the goal marker: only where the goal is part of the task's spec

    @property
    def robot_prompt(self) -> str:
        return self.prompts[0]

    @property
    def object_prompt(self) -> str:
        return self.prompts[-1]


class Task(abc.ABC):
    spec: TaskSpec
    image_size: int
    dense_reward_max: float = 1.0
    """Largest per-step value of ``step()``'s own dense reward (ManiSkill's normalised dense reward: 1); the
    env-reward baselines divide by it to put the simulator's reward in ReLAM's range (``relam.reward``)."""

    # --- episode -------------------------------------------------------------------------------------
    @abc.abstractmethod
    def reset(self, seed: int) -> np.ndarray:
        """Reset to the initial state drawn from ``seed`` and return the proprioceptive/state vector."""

    @abc.abstractmethod
    def step(self, action) -> tuple[np.ndarray, float, bool, bool, dict]:
        """Gymnasium-style step; ``info['success']`` is the simulator's success flag (bool)."""

    @property
    @abc.abstractmethod
    def action_dim(self) -> int: ...

    @abc.abstractmethod
    def expert_action(self, obs: np.ndarray) -> np.ndarray:
        """Scripted expert's action for the current state (privileged; for demos only)."""

    # --- rendering and ground truth ------------------------------------------------------------------
    @abc.abstractmethod
    def render(self) -> np.ndarray:
        """Upright RGB uint8 (H, W, 3) from the task camera."""

    @abc.abstractmethod
    def depth(self) -> np.ndarray:
        """Camera-frame z (H, W) float32 in metres."""

    @abc.abstractmethod
    def segmentation(self) -> np.ndarray:
        """Body slots (H, W) int32; slot 0 is the static world."""

    @abc.abstractmethod
    def camera(self) -> CameraParams: ...

    @abc.abstractmethod
    def body_poses(self) -> np.ndarray:
        """(B, 7) poses (x, y, z, qw, qx, qy, qz) of every body slot; row 0 is the identity."""

    def body_frames(self, slots: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Positions (N, 3) and rotation matrices (N, 3, 3) of the given body slots (per-step tracking). Default:
        from ``body_poses``; simulators that keep rotation matrices override it to skip the conversion."""
        from relam.envs.camera import quat_wxyz_to_matrix
        poses = self.body_poses()[slots]
        return poses[:, :3], quat_wxyz_to_matrix(poses[:, 3:7])

    @abc.abstractmethod
    def prompt_slots(self, prompt: str) -> np.ndarray:
        """Body slots that the text prompt refers to (ground-truth segmenter)."""

    def movable_slots(self, prompt: str) -> np.ndarray:
        """The prompt's body slots that can move (not welded to the world); default: all of them."""
        return self.prompt_slots(prompt)

    @abc.abstractmethod
    def object_position(self) -> np.ndarray:
        """World position (3,) of the task object's reference point (evaluation/diagnostics only)."""

    def proprio(self) -> np.ndarray:
        """The robot's own state (4,): end-effector xyz (world, metres) and gripper opening. What a real robot
        knows about itself; the keypoint-only policy reads it beside the keypoints (no object state)."""
        raise NotImplementedError(f"{type(self).__name__} has no proprio()")

    def proprio_of_state(self, states: np.ndarray) -> np.ndarray:
        """``proprio()`` of recorded simulator states (..., state_dim) -> (..., 4), e.g. a demo's ``states``."""
        raise NotImplementedError(f"{type(self).__name__} has no proprio_of_state()")

    def goal_of_state(self, states: np.ndarray) -> np.ndarray:
        """The task's goal position (world xyz, metres) in recorded simulator states (..., state_dim) -> (..., 3):
        what the simulator's own observation gives a policy beside its camera (ManiSkill's ``goal_pos``). For the
        ``iql.goal_observation`` option; tasks without a goal in their standard observation do not have it."""
        raise NotImplementedError(
            f"{type(self).__name__} has no goal_of_state(): its standard observation carries no goal; "
            "set iql.goal_observation: false for this task")

    def close(self) -> None:
        pass

    # --- derived helpers ------------------------------------------------------------------------------
    def masks(self, prompts=None, seg: np.ndarray | None = None) -> dict[str, np.ndarray]:
        seg = self.segmentation() if seg is None else seg
        prompts = self.spec.prompts if prompts is None else prompts
        out = {}
        for p in prompts:
            if p not in self.spec.prompts:
                raise KeyError(f"task {self.spec.name!r} has no ground-truth mask for prompt {p!r}; "
                               f"known prompts: {list(self.spec.prompts)}")
            out[p] = np.isin(seg, self.prompt_slots(p))
        return out

    def tracker(self, query_uv) -> GroundTruthTracker:
        """Ground-truth tracker for pixels of the CURRENT frame; call ``.track(task.body_poses())`` later."""
        return GroundTruthTracker(query_uv, self.depth(), self.segmentation(), self.camera(), self.body_poses())

    def project(self, points) -> np.ndarray:
        return self.camera().project(points)[0]
