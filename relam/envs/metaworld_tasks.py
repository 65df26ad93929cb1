"""Meta-World 3.x tasks (drawer-open, door-open, button-press-wall) behind the ``Task`` interface.

Rendering goes through our own ``mujoco.Renderer`` on one fixed camera rather than the env's
``render()``: it lets us (a) place the camera by eye/target (SPEC §5/§9 want views in which the task
object moves a lot in the image), (b) switch off shadows, MSAA and reflections, which cost ~10x at any
size (PLATFORM.md), and (c) read depth and segmentation from the very same camera.
The camera is written into the model's ``corner`` slot, so renders and projections agree by
construction and the image is upright (no 180° flip needed).
"""
from __future__ import annotations

import mujoco
import numpy as np

from relam.envs.base import CameraSpec, Task, TaskSpec
from relam.envs.camera import CameraParams, look_at_rotation

# Cameras (ours): placed so the task object's image motion over an expert demo is >= 3 delta
# (>= 15.4 px at 128 px, SPEC §5) while the arm (at its start pose too), gripper and object stay in
# view. Measured (128 px, reset -> 10 steps after first success, 3 seeds): drawer-open 29-31 px
# (corner: 14), door-open 51-54 px, button-press-wall 18-19 px (best stock camera: 8).
# ``benchmarks/object_motion.py`` re-measures them.
METAWORLD_SPECS: dict[str, TaskSpec] = {
    "drawer-open": TaskSpec(
        name="drawer-open", suite="metaworld", env_id="drawer-open-v3",
        prompts=("robot arm", "green drawer"),
        camera=CameraSpec(eye=(0.9, 0.55, 0.55), target=(0.0, 0.7, 0.1), fovy=45.0),
        max_steps=200,
        prompt_bodies={"robot arm": ("base",), "green drawer": ("drawer",)},
    ),
    "door-open": TaskSpec(
        name="door-open", suite="metaworld", env_id="door-open-v3",
        prompts=("robot arm", "door"),
        camera=CameraSpec(eye=(1.0, 0.2, 0.7), target=(-0.1, 0.65, 0.1), fovy=50.0),
        max_steps=200,
        prompt_bodies={"robot arm": ("base",), "door": ("door",)},
    ),
    "button-press-wall": TaskSpec(
        name="button-press-wall", suite="metaworld", env_id="button-press-wall-v3",
        prompts=("robot arm", "button"),
        camera=CameraSpec(eye=(0.55, 0.85, 0.35), target=(0.0, 0.55, 0.15), fovy=50.0),
        max_steps=200,
        prompt_bodies={"robot arm": ("base",), "button": ("box",)},
    ),
}

_POLICIES = {
    "drawer-open": "SawyerDrawerOpenV3Policy",
    "door-open": "SawyerDoorOpenV3Policy",
    "button-press-wall": "SawyerButtonPressWallV3Policy",
}


def _subtree(model: mujoco.MjModel, root: str) -> np.ndarray:
    """Body ids of ``root`` and all its descendants (bodies are stored parents-first)."""
    rid = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_BODY, root)
    if rid < 0:
        raise KeyError(f"body {root!r} not in the Meta-World model")
    inside = np.zeros(model.nbody, bool)
    inside[rid] = True
    for b in range(rid + 1, model.nbody):
        inside[b] = inside[model.body_parentid[b]]
    return np.flatnonzero(inside)


class MetaWorldTask(Task):
    dense_reward_max = 10.0   # Meta-World's v2/v3 shaped rewards lie in [0, 10] (10 on success)

    def __init__(self, name: str, image_size: int = 128, camera: CameraSpec | None = None,
                 max_steps: int | None = None):
        import metaworld
        import metaworld.policies as policies

        base = METAWORLD_SPECS[name]
        self.spec = TaskSpec(**{**base.__dict__, "camera": camera or base.camera,
                                "max_steps": max_steps or base.max_steps})
        self.image_size = int(image_size)
        env_cls = metaworld.ALL_V3_ENVIRONMENTS_GOAL_OBSERVABLE[f"{self.spec.env_id}-goal-observable"]
        self.env = env_cls()
        # Random object/goal placement on every reset (PLATFORM.md): otherwise every seed is the same.
        self.env._freeze_rand_vec = False
        self.env._set_task_called = True
        self.env._partially_observable = False
        self.env.seeded_rand_vec = True  # draw placements from env.np_random (seeded), not global np.random
        self.env.max_path_length = max(self.env.max_path_length, self.spec.max_steps)
        self.model, self.data = self.env.model, self.env.data
        self.policy = getattr(policies, _POLICIES[name])()

        m = self.model
        m.vis.quality.shadowsize = 0
        m.vis.quality.offsamples = 0
        m.mat_reflectance[:] = 0
        m.site_rgba[:, 3] = 0  # goal/marker sites leak the goal into the image
        m.vis.global_.offwidth = max(m.vis.global_.offwidth, self.image_size)
        m.vis.global_.offheight = max(m.vis.global_.offheight, self.image_size)
        self._cam_id = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_CAMERA, "corner")
        self._place_camera(self.spec.camera)
        self._renderer = mujoco.Renderer(m, self.image_size, self.image_size)
        self._geom_body = np.append(m.geom_bodyid, 0).astype(np.int32)  # index -1 (no geom) -> world
        self._slots = {p: np.concatenate([_subtree(m, b) for b in roots])
                       for p, roots in self.spec.prompt_bodies.items()}
        self._obs = None
        self._steps = 0

    def _place_camera(self, cam: CameraSpec) -> None:
        rot_cv = look_at_rotation(cam.eye, cam.target, cam.up)
        mat_mj = rot_cv * np.array([1.0, -1.0, -1.0])  # MuJoCo camera axes: x right, y up, z backward
        quat = np.zeros(4)
        mujoco.mju_mat2Quat(quat, mat_mj.flatten())
        self.model.cam_pos[self._cam_id] = cam.eye
        self.model.cam_quat[self._cam_id] = quat
        self.model.cam_fovy[self._cam_id] = cam.fovy

    # --- episode -------------------------------------------------------------------------------------
    def reset(self, seed: int) -> np.ndarray:
        # Meta-World ignores reset(seed=...): seed its np_random directly (placements use it because
        # seeded_rand_vec is on). Its reset() returns an observation computed before mj_forward, so
        # moved objects (door, drawer) are reported at their previous position: recompute it.
        self.env.seed(int(seed))
        self.env.reset()
        mujoco.mj_forward(self.model, self.data)
        curr = self.env._get_curr_obs_combined_no_goal()
        self.env._prev_obs = curr
        obs = self.env._get_obs()  # [current, previous(=current), goal]
        self._obs, self._steps = obs, 0
        return obs

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(np.asarray(action, dtype=np.float64))
        self._obs = obs
        self._steps += 1
        truncated = bool(truncated) or self._steps >= self.spec.max_steps
        info = dict(info)
        info["success"] = bool(info.get("success", 0.0) > 0.5)
        return obs, float(reward), bool(terminated), truncated, info

    @property
    def action_dim(self) -> int:
        return 4

    def expert_action(self, obs=None) -> np.ndarray:
        return np.clip(self.policy.get_action(self._obs if obs is None else obs), -1.0, 1.0)

    # --- rendering and ground truth ------------------------------------------------------------------
    def render(self) -> np.ndarray:
        self._renderer.update_scene(self.data, camera=self._cam_id)
        return self._renderer.render()

    def depth(self) -> np.ndarray:
        r = self._renderer
        r.enable_depth_rendering()
        try:
            r.update_scene(self.data, camera=self._cam_id)
            return r.render().astype(np.float32)
        finally:
            r.disable_depth_rendering()

    def segmentation(self) -> np.ndarray:
        r = self._renderer
        r.enable_segmentation_rendering()
        try:
            r.update_scene(self.data, camera=self._cam_id)
            seg = r.render()
        finally:
            r.disable_segmentation_rendering()
        geom = np.where(seg[..., 1] == mujoco.mjtObj.mjOBJ_GEOM, seg[..., 0], -1)
        return self._geom_body[geom]

    def camera(self) -> CameraParams:
        size = self.image_size
        f = 0.5 * size / np.tan(np.deg2rad(self.model.cam_fovy[self._cam_id]) / 2)
        intr = np.array([[f, 0, size / 2], [0, f, size / 2], [0, 0, 1.0]])
        mat_mj = self.data.cam_xmat[self._cam_id].reshape(3, 3)
        rot_cv = mat_mj * np.array([1.0, -1.0, -1.0])  # columns: right, down, forward (world)
        pos = self.data.cam_xpos[self._cam_id]
        extr = np.concatenate([rot_cv.T, (-rot_cv.T @ pos)[:, None]], axis=1)
        return CameraParams(intr, extr, size, size)

    def body_poses(self) -> np.ndarray:
        return np.concatenate([self.data.xpos, self.data.xquat], axis=1)

    def body_frames(self, slots: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.data.xpos[slots], self.data.xmat[slots].reshape(-1, 3, 3)   # MuJoCo keeps both per body

    def prompt_slots(self, prompt: str) -> np.ndarray:
        return self._slots[prompt]

    def movable_slots(self, prompt: str) -> np.ndarray:
        # the drawer's case, the door's frame and the button's box are welded to the world: in the first frame
        # they cover 65-85 % of their prompt's pixels, and a keypoint on them never moves
        slots = self._slots[prompt]
        return slots[self.model.body_weldid[slots] != 0]

    def object_position(self) -> np.ndarray:
        return np.asarray(self.env._get_pos_objects()[:3], dtype=np.float64)

    def goal_position(self) -> np.ndarray:
        """World position of the task's target (Meta-World's ``_target_pos``: the open drawer's handle, the pressed
        button, the swung door's handle), which the goal-observable observation ends with; its marker site is
        hidden from the camera (``site_rgba``). Privileged, like ManiSkill's goal marker: what a ``goal_input``
        anticipation model reads (``relam.rl.planners.SimGoal``), so that one model can read goals over both
        simulators' tasks."""
        return np.asarray(self.env._target_pos, dtype=np.float64).copy()

    def proprio(self) -> np.ndarray:
        return self.proprio_of_state(self._obs)

    def proprio_of_state(self, states: np.ndarray) -> np.ndarray:
        return np.asarray(states, dtype=np.float32)[..., :4]  # hand xyz + gripper opening

    def close(self) -> None:
        self._renderer.close()
        self.env.close()
