"""ManiSkill 3 tasks (PushCube, PickCube) behind the ``Task`` interface.

Simulation and rendering
------------------------
One ``gym.make(env_id, obs_mode="none", sim_backend="cpu", render_backend="cpu",
control_mode="pd_ee_delta_pos")`` env per task. ``obs_mode="none"`` makes ``env.step`` do physics only;
the task's fixed camera (``TaskSpec.camera`` -> ManiSkill's ``base_camera`` through ``sensor_configs``)
is rendered by this class *lazily* and at most once per simulator state:

- the first of ``render()`` / ``depth()`` / ``segmentation()`` after a ``reset``/``step`` takes ONE
  picture (SAPIEN ``take_picture``; ~20-30 ms on one lavapipe core, almost independent of size);
- with the ``minimal`` shader pack that single picture holds both the ``Color`` texture and the
  ``PositionSegmentation`` texture, so depth and segmentation of the same state cost only a texture read
  (~0.1 ms, measured) and never a second render. There is therefore no need for a second env or for
  switching obs modes: demo collection (``render()`` every step, ``depth()``/``segmentation()`` on frame
  0) costs the same as stepping with RGB observations, and RL code that never renders pays physics only.

Conventions (checked in ``tests/test_maniskill_tasks.py``)
----------------------------------------------------------
- Images are upright (SAPIEN renders row 0 at the top) and RGB uint8.
- SAPIEN's ``intrinsic_cv`` puts the principal point at (W/2, H/2) with pixel (i, j) centred at
  (j + 0.5, i + 0.5) -- the same continuous convention as ``CameraParams``; measured against the
  per-pixel camera-space positions the mean offset is < 0.01 px, so K is used unchanged.
- ``depth()`` is camera-frame z (not ray length) in metres. The minimal shader stores camera-space
  positions as int16 millimetres, so depth is quantised to 1 mm (< 0.3 px back-projection error).
  Pixels that see no surface (the black sky above the far edge of the ground) get the far plane (30 m).
- PushCube's red/white ``goal_region`` disk is hidden from every picture (its goal is a fixed offset from the
  cube); PickCube's green ``goal_site`` sphere is drawn (``TaskSpec.show_goal``): its random 3-D goal is the task
  specification, which an image-based model could not know otherwise.
- ``segmentation()`` returns body *slots*: 0 = static world (ground, table, background, hidden
  markers), then one slot per Panda link (in the articulation's link order), then the cube. Slots are
  keyed by body name, so they are stable across resets.

Privileged state vector (``reset``/``step`` return value)
--------------------------------------------------------
ManiSkill's ``state`` observation is not produced in this obs mode, so the state vector is read from
the simulator directly (privileged; for experts, diagnostics and state-based baselines, never for the
pixel policies). Layout, float32 (``STATE_LAYOUT``): Panda qpos (9), qvel (9), TCP pose (7: xyz,
wxyz), cube pose (7), goal position (3), is-grasped flag (1) -> 36 values. PickCube's goal is random
in x, y, z; the image shows its sphere in 2-D only, this vector gives it in 3-D (ManiSkill's own ``rgb``
observation also carries ``goal_pos``); PushCube's goal is always cube_0 + (0.2, 0, 0).

Episodes
--------
``step`` returns ``terminated=False`` always (success does not end an episode: demos run past the
first success and the RL reward wrapper decides when to stop, SPEC §5); ``truncated`` is True once
``TaskSpec.max_steps`` steps were taken. ``info['success']`` is the simulator's success flag (bool).

Measured (2-core CPU machine, lavapipe, 128 px; ``benchmarks/probe_maniskill_noise.py --render``)
-------------------------------------------------------------------------------------------------
- Cameras (both from the +y side, across the main motion; whole gripper and cube in view): cube-centre
  image motion from reset to 10 steps after the expert's first success, 5 demos (seeds 0-4):
  PushCube 45.6 / 32.4 / 42.4 / 35.8 / 43.6 px, median 42.4; PickCube 55.8 / 40.2 / 3.5 / 32.8 /
  58.6 px, median 40.2 (seed 2's goal is 3 cm from the cube). SPEC §5 asks >= 15 px. Cube area in
  frame 0: 95-141 px (PushCube), 69-121 px (PickCube).
- Scripted experts (100-step limit): PushCube 49/50 on seeds 1000-1049 and 59/60 on seeds 0-59 (the
  failures: cube spawned at x ~ 0.1, goal at x ~ 0.3, and the Panda with its vertical gripper cannot
  reach past x ~ 0.156 at table height); PickCube 50/50 and 60/60; median 22 / 27 steps to success.
- steps/s: physics + expert 250-300; step + render() 32-37; demo-collection pattern (render every
  step, depth/segmentation on frame 0, body_poses every step) 33-38 (1.03x raw step+render);
  render+depth+segmentation every step 31-38.
"""
from __future__ import annotations

import dataclasses

import fnmatch
from dataclasses import dataclass

import numpy as np

import relam  # noqa: F401  (configures Vulkan before sapien is imported)
from relam.envs.base import CameraSpec, Task, TaskSpec
from relam.envs.camera import CameraParams

# --------------------------------------------------------------------------------------------------
# Specs
# --------------------------------------------------------------------------------------------------
_PROMPT_BODIES_ROBOT = ("panda_*",)

MANISKILL_SPECS: dict[str, TaskSpec] = {
    "PushCube": TaskSpec(
        name="PushCube",
        suite="maniskill",
        env_id="PushCube-v1",
        prompts=("robot arm", "blue cube"),
        # from the +y side, across the push axis (+x), a little in front and above; cube motion over an
        # expert demo: median 42 px at 128 px (see module docstring)
        camera=CameraSpec(eye=(0.2, 0.6, 0.35), target=(0.0, 0.0, 0.1), fovy=45.0),
        max_steps=100,
        prompt_bodies={"robot arm": _PROMPT_BODIES_ROBOT, "blue cube": ("cube",)},
    ),
    "PickCube": TaskSpec(
        name="PickCube",
        suite="maniskill",
        env_id="PickCube-v1",
        prompts=("robot arm", "red cube"),
        # same side, further back and aimed higher so a cube lifted to the highest goal (z 0.34) and
        # the gripper above it stay in view; cube motion median 40 px at 128 px
        camera=CameraSpec(eye=(0.28, 0.68, 0.4), target=(-0.03, 0.0, 0.21), fovy=45.0),
        max_steps=100,
        # Deviation from "goal markers hidden" (ours): PickCube's goal is a random 3-D point and IS the task
        # specification; hidden, no image-based model (anticipation model, pixel policy) could know where to
        # bring the cube. PushCube's goal is a fixed offset from the cube, so its disk stays hidden.
        show_goal=True,
        prompt_bodies={"robot arm": _PROMPT_BODIES_ROBOT, "red cube": ("cube",)},
    ),
}

STATE_LAYOUT: dict[str, slice] = {
    "qpos": slice(0, 9),
    "qvel": slice(9, 18),
    "tcp_pose": slice(18, 25),
    "cube_pose": slice(25, 32),
    "goal_pos": slice(32, 35),
    "is_grasped": slice(35, 36),
}
STATE_DIM = 36


def proprio_of_states(states: np.ndarray) -> np.ndarray:
    """TCP xyz + finger opening (..., 4) in privileged state vectors (..., 36): what the robot knows itself."""
    s = np.asarray(states)
    qpos, tcp = s[..., STATE_LAYOUT["qpos"]], s[..., STATE_LAYOUT["tcp_pose"]][..., :3]
    return np.concatenate([tcp, qpos[..., 7:8] + qpos[..., 8:9]], -1).astype(np.float32)


def goal_of_states(states: np.ndarray) -> np.ndarray:
    """ManiSkill's ``goal_pos`` (..., 3) in privileged state vectors (..., 36)."""
    return np.asarray(states)[..., STATE_LAYOUT["goal_pos"]].astype(np.float32)


_GOAL_MARKERS = {"PushCube": "goal_region", "PickCube": "goal_site"}
_CUBE_ATTR = {"PushCube": "obj", "PickCube": "cube"}


# --------------------------------------------------------------------------------------------------
# Scripted experts (privileged state; pd_ee_delta_pos: action = (dx, dy, dz) / 0.1 m, gripper +1 open,
# -1 closed)
# --------------------------------------------------------------------------------------------------
_MAX_DELTA = 0.1  # metres per step at |action| = 1 (Panda pd_ee_delta_pos pos_lower/pos_upper)


def _move(tcp, target, max_step=0.05, gain=1.0):
    """Normalised xyz action moving the TCP toward ``target`` by at most ``max_step`` metres per step."""
    d = gain * (np.asarray(target, np.float64) - tcp)
    n = np.linalg.norm(d)
    if n > max_step:
        d *= max_step / n
    return d / _MAX_DELTA


def _split_state(s):
    s = np.asarray(s, np.float64)
    return (s[STATE_LAYOUT["qpos"]], s[STATE_LAYOUT["tcp_pose"]][:3], s[STATE_LAYOUT["cube_pose"]][:3],
            s[STATE_LAYOUT["goal_pos"]], bool(s[STATE_LAYOUT["is_grasped"]][0] > 0.5))


def push_cube_expert(state) -> np.ndarray:
    """Push from behind (-x side) with a closed gripper until the cube sits on the goal centre.

    Stateless: the phase is decided from the current state, so the controller recovers from
    perturbations (noisy demos)."""
    _, tcp, cube, goal, _ = _split_state(state)
    push_z, hover_z, back = 0.02, 0.07, 0.045
    pre = np.array([cube[0] - back, cube[1], push_z])
    to_goal = goal[:2] - cube[:2]
    if np.linalg.norm(to_goal) < 0.015:
        xyz = np.zeros(3)                                           # done: hold still
    elif tcp[2] < 0.04 and abs(tcp[1] - cube[1]) < 0.015 and tcp[0] < cube[0] - 0.015:
        # behind the cube and low: push along x, keep centred on the cube's y
        target = np.array([goal[0] - back + 0.01, cube[1] + 0.5 * (goal[1] - cube[1]), push_z])
        xyz = _move(tcp, target, max_step=0.025)
    elif np.linalg.norm(tcp[:2] - pre[:2]) < 0.012:
        xyz = _move(tcp, pre, max_step=0.05)                         # above the pre-push point: descend
    elif tcp[2] < hover_z - 0.02:
        xyz = _move(tcp, np.array([tcp[0], tcp[1], hover_z]), max_step=0.05)   # rise before moving over
    else:
        xyz = _move(tcp, np.array([pre[0], pre[1], hover_z]), max_step=0.05)
    return np.concatenate([xyz, [-1.0]]).astype(np.float32)


def pick_cube_expert(state) -> np.ndarray:
    """Top-down grasp (pd_ee_delta_pos cannot yaw; the 8 cm gripper closes on the 4 cm cube at any yaw),
    then carry the cube to the goal and hold still there (success needs a static robot).

    Stateless, with retries: a gripper that closed on nothing re-opens and re-approaches."""
    qpos, tcp, cube, goal, grasped = _split_state(state)
    finger = float(qpos[7] + qpos[8])            # gripper opening (m), 0.08 fully open
    hover = np.array([cube[0], cube[1], cube[2] + 0.06])
    grasp_pt = cube.copy()
    xy_err = np.linalg.norm(tcp[:2] - cube[:2])
    if grasped:
        return np.concatenate([_move(tcp, goal, max_step=0.04, gain=0.8), [-1.0]]).astype(np.float32)
    near = np.linalg.norm(tcp - grasp_pt) < 0.012
    if near and finger > 0.01:
        return np.concatenate([_move(tcp, grasp_pt, max_step=0.01), [-1.0]]).astype(np.float32)   # close
    if finger < 0.07:                            # closed on nothing / half open: open while rising
        target = np.array([tcp[0], tcp[1], max(tcp[2], hover[2])]) if xy_err < 0.02 else hover
        return np.concatenate([_move(tcp, target, max_step=0.03), [1.0]]).astype(np.float32)
    if xy_err < 0.01:
        return np.concatenate([_move(tcp, grasp_pt, max_step=0.04), [1.0]]).astype(np.float32)   # descend
    target = hover if tcp[2] > cube[2] + 0.03 or xy_err < 0.03 else np.array([tcp[0], tcp[1], hover[2]])
    return np.concatenate([_move(tcp, target, max_step=0.05), [1.0]]).astype(np.float32)


_EXPERTS = {"PushCube": push_cube_expert, "PickCube": pick_cube_expert}


# --------------------------------------------------------------------------------------------------
# Noisy demonstrations (SPEC §7: 100 expert + 100 noisy trajectories)
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class NoiseParams:
    """Action noise for the offline dataset's "noisy expert" trajectories (SPEC §7).

    Each step the expert's xyz action gets Gaussian noise (optionally AR(1)-correlated in time) and,
    with probability ``eps_random``, is replaced by a uniformly random xyz action. The gripper dim is
    left alone by default. The defaults are the dataset's scheme (``DEFAULT_NOISE``); measured with
    ``benchmarks/probe_maniskill_noise.py`` (80 episodes, seeds 1000-1079, 100-step limit): PushCube
    75 %, PickCube 35 % success, against 98 % / 100 % for the clean expert (other seed sets move these
    by about ±10 points). Why not i.i.d. Gaussian σ=0.3: on every dim a noisy gripper drops the cube
    (PickCube 0/20), and even on xyz only PickCube gets 2/20, because its success needs a *static*
    robot at the goal, which never-ending noise does not allow; occasional random actions leave clean
    stretches in which the (stateless) expert recovers and settles."""
    sigma: float = 0.1
    """Stationary std of the Gaussian xyz noise, in normalised action units (1.0 = 0.1 m per step)."""
    rho: float = 0.0
    """AR(1) correlation of the Gaussian noise between consecutive steps (0 = i.i.d.). Needs the
    per-episode ``state`` dict of ``noisy_action``."""
    eps_random: float = 0.33
    """Probability per step of replacing the xyz action with a uniform random one in [-random_scale, random_scale]^3."""
    random_scale: float = 1.0
    """Range of those random xyz actions (1.0: the whole action space, up to 10 cm per step; the experts move at most
    5 cm, i.e. |action| <= 0.5)."""
    gripper_sigma: float = 0.0
    """Std of Gaussian noise on the gripper dim (0 = untouched)."""


DEFAULT_NOISE = NoiseParams()
"""The scheme used for the noisy half of the offline dataset."""


def noisy_action(expert_action, rng: np.random.Generator, step: int, params: NoiseParams,
                 state: dict | None = None) -> np.ndarray:
    """Perturb one expert action; returns an action clipped to [-1, 1].

    ``state`` is a per-episode dict holding the AR(1) noise; pass the same dict every step of one
    episode and a fresh ``{}`` for the next (``step == 0`` also resets it)."""
    a = np.asarray(expert_action, np.float64).copy()
    if state is None:
        state = {}
    if step == 0 or "eps" not in state:
        state["eps"] = rng.normal(0.0, params.sigma, 3)
    else:
        fresh = rng.normal(0.0, params.sigma, 3)
        state["eps"] = params.rho * state["eps"] + np.sqrt(1 - params.rho ** 2) * fresh
    a[:3] += state["eps"]
    if params.eps_random > 0 and rng.random() < params.eps_random:
        a[:3] = rng.uniform(-params.random_scale, params.random_scale, 3)
    if params.gripper_sigma > 0:
        a[3] += rng.normal(0.0, params.gripper_sigma)
    return np.clip(a, -1.0, 1.0).astype(np.float32)


# --------------------------------------------------------------------------------------------------
# Task
# --------------------------------------------------------------------------------------------------
def _np(x):
    import torch
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


class ManiSkillTask(Task):
    """One ManiSkill env behind the ``Task`` interface (see the module docstring)."""

    def __init__(self, name: str, image_size: int = 128, camera: CameraSpec | None = None,
                 max_steps: int | None = None, robot_init_qpos_noise: float = 0.02, render: bool = True,
                 **kwargs):
        """``camera`` overrides the spec's camera, ``max_steps`` its episode limit. ``render=False``
        forbids pictures (render/depth/segmentation raise); it costs nothing either way because
        pictures are only taken on demand. Other kwargs go to ``gym.make``."""
        if name not in MANISKILL_SPECS:
            raise ValueError(f"unknown ManiSkill task {name!r}; known: {list(MANISKILL_SPECS)}")
        spec = MANISKILL_SPECS[name]
        if camera is not None or max_steps is not None:
            spec = dataclasses.replace(spec, camera=camera or spec.camera,
                                       max_steps=int(max_steps or spec.max_steps), prompt_bodies=dict(spec.prompt_bodies))
        self.spec = spec
        self.image_size = int(image_size)
        self._render_enabled = bool(render)
        try:
            import gymnasium as gym
            import mani_skill.envs  # noqa: F401  (registers the envs)
            from mani_skill.utils import sapien_utils
        except ImportError as e:  # pragma: no cover
            raise ImportError("ManiSkill tasks need `mani-skill` (see requirements.txt)") from e
        cam = spec.camera
        pose = sapien_utils.look_at(eye=list(cam.eye), target=list(cam.target), up=list(cam.up))
        self._far = 30.0
        sensor_cfg = dict(base_camera=dict(pose=pose, width=self.image_size, height=self.image_size,
                                           fov=float(np.deg2rad(cam.fovy)), near=0.01, far=self._far))
        try:
            self._env = gym.make(spec.env_id, obs_mode="none", sim_backend="cpu", render_backend="cpu",
                                 control_mode="pd_ee_delta_pos", sensor_configs=sensor_cfg,
                                 robot_init_qpos_noise=robot_init_qpos_noise, **kwargs)
        except RuntimeError as e:
            from relam.platform import VulkanUnavailableError, vulkan_help
            msg = str(e).lower()
            if any(k in msg for k in ("vulkan", "physical device", "vk::", "incompatibledriver")):
                raise VulkanUnavailableError(vulkan_help(str(e))) from None
            raise
        self._u = self._env.unwrapped
        self._sensor = self._u._sensors["base_camera"]
        space = self._u.single_action_space
        self._act_low = np.asarray(space.low, np.float32)
        self._act_high = np.asarray(space.high, np.float32)
        self._cube = getattr(self._u, _CUBE_ATTR[name])
        self._goal = getattr(self._u, _GOAL_MARKERS[name])
        if self._goal not in self._u._hidden_objects:
            self._u._hidden_objects.append(self._goal)  # also hidden from ManiSkill's own sensor renders
        self._agent = self._u.agent
        # body slots: 0 = static world, then Panda links, then the cube (by name -> stable)
        links = list(self._agent.robot.get_links())
        self._slot_objs = [None] + links + [self._cube]
        self.slot_names: tuple[str, ...] = ("world",) + tuple(l.name for l in links) + ("cube",)
        self._build_seg_lut()
        self.show_goal = self.spec.show_goal  # may be switched off, e.g. to measure occlusion-free geometry
        self._version = 0
        self._pic_version = -1
        self._rgb = self._depth = self._seg = None
        self._cam_params: CameraParams | None = None
        self._steps = 0
        self._seeded = False

    # ---------------------------------------------------------------------------------------------
    def _build_seg_lut(self):
        id_map = self._u.segmentation_id_map
        by_name = {}
        for sid, obj in id_map.items():
            by_name.setdefault(obj.name, int(sid))
        lut = np.zeros(max(id_map) + 1 if id_map else 1, dtype=np.int32)
        for slot, name in enumerate(self.slot_names):
            if slot and name in by_name:
                lut[by_name[name]] = slot
        self._seg_lut = lut

    def _state(self) -> np.ndarray:
        robot = self._agent.robot
        qpos = _np(robot.get_qpos())[0]
        qvel = _np(robot.get_qvel())[0]
        tcp = _np(self._agent.tcp.pose.raw_pose)[0]
        cube = _np(self._cube.pose.raw_pose)[0]
        goal = _np(self._goal.pose.p)[0]
        grasped = float(_np(self._agent.is_grasping(self._cube))[0])
        return np.concatenate([qpos, qvel, tcp, cube, goal, [grasped]]).astype(np.float32)

    def _hide_markers(self):
        for obj in self._u._hidden_objects:
            if self.show_goal and obj is self._goal:
                obj.show_visual()
            else:
                obj.hide_visual()

    # --- episode -----------------------------------------------------------------------------------
    def reset(self, seed: int) -> np.ndarray:
        self._env.reset(seed=int(seed))
        self._hide_markers()
        self._version += 1
        self._steps = 0
        self._seeded = True
        return self._state()

    def step(self, action):
        if not self._seeded:
            raise RuntimeError("call reset(seed) before step()")
        a = np.asarray(action, np.float32).reshape(self._act_low.shape)
        a = np.clip(a, self._act_low, self._act_high)
        _, reward, _, _, info = self._u.step(a)
        self._version += 1
        self._steps += 1
        out = {"success": bool(_np(info["success"]).reshape(-1)[0]), "elapsed_steps": self._steps}
        if "is_grasped" in info:
            out["is_grasped"] = bool(_np(info["is_grasped"]).reshape(-1)[0])
        truncated = self._steps >= self.spec.max_steps
        return self._state(), float(_np(reward).reshape(-1)[0]), False, truncated, out

    @property
    def action_dim(self) -> int:
        return int(self._act_low.shape[0])

    @property
    def state_dim(self) -> int:
        return STATE_DIM

    def state_vector(self) -> np.ndarray:
        """The privileged state vector of the current state (same as reset/step return)."""
        return self._state()

    def expert_action(self, obs: np.ndarray) -> np.ndarray:
        a = _EXPERTS[self.spec.name](obs)
        return np.clip(a, self._act_low, self._act_high)

    # --- rendering and ground truth ------------------------------------------------------------------
    def _picture(self):
        """Take (at most) one picture of the current state."""
        if not self._render_enabled:
            raise RuntimeError(f"task {self.spec.name!r} was built with render=False")
        if self._pic_version != self._version:
            self._hide_markers()
            self._u.scene.update_render(update_sensors=True, update_human_render_cameras=False)
            self._sensor.capture()
            self._pic_version = self._version
            self._rgb = self._depth = self._seg = None

    def render(self) -> np.ndarray:
        self._picture()
        if self._rgb is None:
            o = self._sensor.get_obs(rgb=True, depth=False, position=False, segmentation=False)
            self._rgb = np.ascontiguousarray(_np(o["rgb"])[0, ..., :3]).astype(np.uint8, copy=False)
        return self._rgb.copy()

    def _depth_seg(self):
        self._picture()
        if self._depth is None:
            o = self._sensor.get_obs(rgb=False, depth=True, position=False, segmentation=True)
            depth = _np(o["depth"])[0, ..., 0].astype(np.float32) / 1000.0
            depth[depth <= 0] = self._far  # no surface (sky): the far plane, like MuJoCo's depth
            self._depth = depth
            ids = _np(o["segmentation"])[0, ..., 0].astype(np.int64)
            ids = np.where((ids >= 0) & (ids < len(self._seg_lut)), ids, 0)
            self._seg = self._seg_lut[ids]

    def depth(self) -> np.ndarray:
        self._depth_seg()
        return self._depth.copy()

    def segmentation(self) -> np.ndarray:
        self._depth_seg()
        return self._seg.copy()

    def camera(self) -> CameraParams:
        if self._cam_params is None:
            p = self._sensor.get_params()
            self._cam_params = CameraParams(
                intrinsic=_np(p["intrinsic_cv"])[0].astype(np.float64),
                extrinsic=_np(p["extrinsic_cv"])[0].astype(np.float64),
                width=self.image_size, height=self.image_size)
        return self._cam_params

    def body_poses(self) -> np.ndarray:
        out = np.zeros((len(self._slot_objs), 7), dtype=np.float64)
        out[0, 3] = 1.0
        for i, obj in enumerate(self._slot_objs[1:], start=1):
            out[i] = _np(obj.pose.raw_pose)[0]
        return out

    def prompt_slots(self, prompt: str) -> np.ndarray:
        if prompt not in self.spec.prompt_bodies:
            raise KeyError(f"task {self.spec.name!r} has no ground-truth bodies for prompt {prompt!r}; "
                           f"known prompts: {list(self.spec.prompt_bodies)}")
        pats = self.spec.prompt_bodies[prompt]
        return np.array([i for i, n in enumerate(self.slot_names)
                         if i and any(fnmatch.fnmatchcase(n, p) for p in pats)], dtype=np.int64)

    def object_position(self) -> np.ndarray:
        return _np(self._cube.pose.p)[0].astype(np.float64)

    def proprio(self) -> np.ndarray:
        return self.proprio_of_state(self._state())

    def proprio_of_state(self, states: np.ndarray) -> np.ndarray:
        return proprio_of_states(states)

    def goal_of_state(self, states: np.ndarray) -> np.ndarray:
        return goal_of_states(states)

    def goal_position(self) -> np.ndarray:
        """World position of the (hidden) goal marker (privileged; diagnostics only)."""
        return _np(self._goal.pose.p)[0].astype(np.float64)

    def close(self) -> None:
        if getattr(self, "_env", None) is not None:
            self._env.close()
            self._env = None
