"""Gymnasium side of ReLAM: a task as a gymnasium env, online point trackers, and the reward wrapper.

``ReLAMRewardWrapper`` is the reusable piece: put it around ANY gymnasium env whose ``render()`` returns RGB
frames and whose ``info['success']`` is its success flag, give it a planner (first frame -> keypoint subgoals,
e.g. ``ModelPlanner`` over a trained anticipation model) and an online tracker, and it replaces the env's
reward by the ReLAM reward of ``relam.reward`` and its observation by

    {'keypoints': x(t) (2K,), 'subgoal': g^k (2K,), 'state': the inner observation (if a Box), 'image': (3,H,W)}

('image' only with ``image_obs=True``). ``info`` carries the stage, the distances, the env's own reward, and
``subgoal_reached`` (the transition that reached a subgoal: hierarchical PPO cuts GAE there). ``keypoint_parts``
((K,) the part, robot 0 and objects 1.., of each keypoint) lets the reward weight parts equally
(``RewardConfig.part_weighting``). ``EnvRewardWrapper`` around it gives the env-reward baseline: the same observation
and episode end, the simulator's own dense reward.
"""
from __future__ import annotations

import warnings
from typing import Callable, Protocol

import gymnasium as gym
import numpy as np

from relam.envs.base import Task, is_count
from relam.reward import RewardConfig, StageMachine, env_reward_signal

KEYPOINT_DEPTH = (False, True, "xyz")
"""``keypoint_depth``: none, each keypoint's camera depth (True), or its 3-D world position ('xyz')."""


def depth_dim(keypoint_depth, k: int) -> int:
    """Entries ``keypoint_depth`` adds to the state for K keypoints."""
    return {False: 0, True: k, "xyz": 3 * k}[keypoint_depth]


def depth_observation(keypoint_depth, points: np.ndarray, camera) -> np.ndarray:
    """What ``keypoint_depth`` appends to the state for tracked world points (..., K, 3) seen by ``camera``
    (``CameraParams``): their camera depth (..., K) (True; a point lost or behind the camera reads 0) or the points
    themselves (..., 3K) ('xyz'; a lost point reads 0). One rule for relabelled data and live episodes."""
    points = np.asarray(points, np.float64)
    if keypoint_depth == "xyz":
        return np.nan_to_num(points, nan=0.0, posinf=0.0, neginf=0.0).reshape(*points.shape[:-2], -1)
    _, z = camera.project(points)
    return np.maximum(np.nan_to_num(z, nan=0.0, posinf=0.0, neginf=0.0), 0.0)


# Keypoints may leave the image: coordinates are clipped into this box only for the observation.
COORD_LOW, COORD_HIGH = -1.0, 2.0


class TaskEnv(gym.Env):
    """A ``relam.envs`` task as a gymnasium env. Observation: the robot's proprioception (``Task.proprio``:
    end-effector xyz + gripper; never object state), followed with ``goal_obs`` by the task's goal position
    (``Task.goal_of_state``: ManiSkill's ``goal_pos``, which its own camera observation carries too).
    ``render()`` gives the task camera's RGB frame.

    Initial states: ``reset(seed=s)`` reseeds the env's generator, which then draws the task's reset seed from
    ``seed_pool`` (or from [0, 2^31) if no pool). ``reset(options={'task_seed': n})`` resets to task seed n
    exactly (evaluation on held-out seeds)."""

    metadata = {"render_modes": ["rgb_array"]}

    def __init__(self, task: Task, seed_pool=None, goal_obs: bool = False):
        self.task, self.goal_obs = task, bool(goal_obs)
        self.render_mode = "rgb_array"
        self.seed_pool = None if seed_pool is None else np.asarray(seed_pool, np.int64)
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, shape=(7 if goal_obs else 4,), dtype=np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, shape=(task.action_dim,), dtype=np.float32)
        self.task_seed = None
        self.last_state = None

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        if options and options.get("task_seed") is not None:
            self.task_seed = int(options["task_seed"])
        elif self.seed_pool is not None:
            self.task_seed = int(self.seed_pool[self.np_random.integers(len(self.seed_pool))])
        else:
            self.task_seed = int(self.np_random.integers(2 ** 31 - 1))
        self.last_state = self.task.reset(self.task_seed)   # privileged; for the scripted expert only
        return self._observe(), {"task_seed": self.task_seed}

    def step(self, action):
        self.last_state, reward, terminated, truncated, info = self.task.step(np.asarray(action, np.float32))
        return self._observe(), float(reward), bool(terminated), bool(truncated), info

    def _observe(self) -> np.ndarray:
        if not self.goal_obs:
            return self.task.proprio()
        return np.concatenate([self.task.proprio(), self.task.goal_of_state(self.last_state)]).astype(np.float32)

    def render(self):
        return self.task.render()

    def close(self):
        self.task.close()


# --- online trackers ------------------------------------------------------------------------------------

class OnlineTracker(Protocol):
    needs_frames: bool

    def start(self, frame: np.ndarray | None, queries_uv: np.ndarray, info: dict | None = None) -> None:
        """Begin tracking the (N, 2) pixel queries on the episode's first frame (``info``: the reset info)."""

    def update(self, frame: np.ndarray | None) -> np.ndarray:
        """(N, 2) pixel positions on the new frame (NaN where lost)."""


class SimOnlineTracker:
    """Exact tracker from simulator state (SPEC §6): each query pixel is lifted with frame-0 depth and
    segmentation, attached to the body under it and re-projected from the body poses every step. Needs no
    rendering per step (``needs_frames = False``): ~20 µs per step. The lifting depends only on the initial
    state, so it is cached per (task seed, queries): a warm episode start renders nothing."""

    needs_frames = False

    def __init__(self, task: Task, cache_size: int = 10_000):
        self.task, self._gt, self._cache, self.cache_size = task, None, {}, cache_size
        self._frames = None   # the tracked bodies' frames read by the last update (points() reuses them)

    @property
    def camera(self):
        """The camera the points are tracked in (``CameraParams``; None before the first episode starts)."""
        return None if self._gt is None else self._gt.camera

    def start(self, frame, queries_uv, info=None):
        self._frames = None
        seed = None if not info else info.get("task_seed")
        key = None if seed is None else (seed, np.asarray(queries_uv, np.float64).tobytes())
        if key is not None and key in self._cache:
            self._gt = self._cache[key]
            return
        self._gt = self.task.tracker(queries_uv)
        if key is not None and len(self._cache) < self.cache_size:
            self._cache[key] = self._gt

    def update(self, frame=None):
        self._frames = self.task.body_frames(self._gt.body)
        return self._gt.track_frames(*self._frames)

    def points(self) -> np.ndarray:
        """World positions (m) of the tracked points now, (N, 3): their pixels lifted with the depth under them
        through the camera's known pose (as the last ``update`` saw them; at the episode's start, read now)."""
        return self._gt.points_of_frames(*(self._frames or self.task.body_frames(self._gt.body)))


class LKOnlineTracker:
    """Frame-to-frame pyramidal Lucas-Kanade with a forward-backward check, for envs with no simulator ground
    truth. A point that fails the check is held at its last position (and reported, not NaN'd, so the reward
    stays defined)."""

    needs_frames = True

    def __init__(self, win_size: int = 15, max_level: int = 3, fb_threshold: float = 1.0):
        self.params = dict(winSize=(win_size, win_size), maxLevel=max_level)
        self.fb = fb_threshold
        self._gray = self._pts = None

    def start(self, frame, queries_uv, info=None):
        import cv2
        self._gray = cv2.cvtColor(np.asarray(frame, np.uint8), cv2.COLOR_RGB2GRAY)
        self._pts = (np.asarray(queries_uv, np.float32) - 0.5).reshape(-1, 1, 2)  # OpenCV centres at integers

    def update(self, frame):
        import cv2
        gray = cv2.cvtColor(np.asarray(frame, np.uint8), cv2.COLOR_RGB2GRAY)
        nxt, st, _ = cv2.calcOpticalFlowPyrLK(self._gray, gray, self._pts, None, **self.params)
        back, st_b, _ = cv2.calcOpticalFlowPyrLK(gray, self._gray, nxt, None, **self.params)
        good = (st.ravel() == 1) & (st_b.ravel() == 1) & (np.linalg.norm((back - self._pts).reshape(-1, 2), axis=1)
                                                          < self.fb)
        self._pts = np.where(good[:, None, None], nxt, self._pts)
        self._gray = gray
        return self._pts.reshape(-1, 2).astype(np.float64) + 0.5


# --- the reward wrapper -------------------------------------------------------------------------------

# (first frame, reset info) -> (M+1, K, 2) normalised plan. A planner may also offer ``lookup(info)`` -> plan or
# None (a cache): then the wrapper renders the first frame only when the plan is not known yet.
Planner = Callable[[np.ndarray, dict], np.ndarray]


class ReLAMRewardWrapper(gym.Wrapper):
    def __init__(self, env: gym.Env, planner: Planner, tracker: OnlineTracker, num_keypoints: int,
                 reward: RewardConfig = RewardConfig(), image_obs: bool = False, image_size: int | None = None,
                 keypoint_parts=None, keypoint_depth: bool | str = False):
        super().__init__(env)
        if keypoint_depth not in KEYPOINT_DEPTH:
            raise ValueError(f"unknown keypoint_depth {keypoint_depth!r}; choose one of {KEYPOINT_DEPTH}")
        if keypoint_depth and not (callable(getattr(tracker, "points", None)) and hasattr(tracker, "camera")):
            raise ValueError(f"keypoint_depth needs a tracker that measures the keypoints' depth (a points() method "
                             f"and a camera, as the 'sim' tracker's SimOnlineTracker has); {type(tracker).__name__} "
                             f"has none: use the 'sim' tracker or set keypoint_depth=False (iql.keypoint_depth: false)")
        if keypoint_depth and not isinstance(env.observation_space, gym.spaces.Box):
            raise ValueError("keypoint_depth appends the keypoints' depth to the inner env's Box observation ('state'), "
                             f"but the env's observation space is {env.observation_space}")
        self.keypoint_depth = keypoint_depth
        self.parts = keypoint_parts   # (K,) part of each keypoint, for reward.part_weighting='part'
        if reward.part_weighting == "part" and keypoint_parts is None:
            warnings.warn("reward.part_weighting='part' but no keypoint_parts given: every keypoint weighs 1/K (Eq. 3), "
                          "so the object's points may count for little; pass keypoint_parts=(part of each keypoint, "
                          "e.g. [0, 0, 0, 1] for 3 robot points and 1 object point)", RuntimeWarning, stacklevel=2)
        self.planner, self.tracker, self.cfg = planner, tracker, reward
        self.K, self.image_obs = int(num_keypoints), image_obs
        frame = None
        if image_size is None:
            frame = env.render() if getattr(env, "render_mode", None) == "rgb_array" else None
            if frame is None:
                raise ValueError("the wrapped env must render RGB frames (render_mode='rgb_array') or pass "
                                 "image_size=")
            image_size = frame.shape[0]
        self.size = int(image_size)
        box = lambda: gym.spaces.Box(COORD_LOW, COORD_HIGH, shape=(2 * self.K,), dtype=np.float32)  # noqa: E731
        spaces = {"keypoints": box(), "subgoal": box()}
        if isinstance(env.observation_space, gym.spaces.Box):
            spaces["state"] = env.observation_space
            if keypoint_depth:   # the K keypoints' camera depth (m), or their 3K world coordinates, after the inner
                inner, n = env.observation_space, depth_dim(keypoint_depth, self.K)   # observation
                low = 0.0 if keypoint_depth is True else -np.inf
                spaces["state"] = gym.spaces.Box(np.concatenate([np.broadcast_to(inner.low, inner.shape),
                                                                 np.full(n, low)]).astype(np.float32),
                                                 np.concatenate([np.broadcast_to(inner.high, inner.shape),
                                                                 np.full(n, np.inf)]).astype(np.float32),
                                                 dtype=np.float32)
        if image_obs:
            spaces["image"] = gym.spaces.Box(0, 255, shape=(3, self.size, self.size), dtype=np.uint8)
        self.observation_space = gym.spaces.Dict(spaces)
        self.machine: StageMachine | None = None
        self._subgoal_obs = None
        self.keypoints = self.plan = None

    # the policy sees normalised coordinates; the tracker works in pixels
    def _obs(self, inner, frame):
        # per env step: the 2K coordinates clipped in plain Python (NaN -> COORD_LOW), and the subgoal array rebuilt
        # only when the stage changes; numpy's per-call overhead on 8 numbers was most of the wrapper's cost
        kp = np.array([min(max(x, COORD_LOW), COORD_HIGH) if x == x else COORD_LOW
                       for x in self.keypoints.ravel().tolist()], np.float32)
        stage = self.machine.k if self.machine.num_stages else -1
        if self._subgoal_obs is None or self._subgoal_obs[0] != stage:
            target = self.machine.target() if self.machine.num_stages else self.plan[0]
            self._subgoal_obs = (stage, np.clip(target, COORD_LOW, COORD_HIGH).astype(np.float32).ravel())
        obs = {"keypoints": kp, "subgoal": self._subgoal_obs[1].copy()}
        if "state" in self.observation_space.spaces:
            obs["state"] = np.asarray(inner, np.float32)
            if self.keypoint_depth:
                extra = depth_observation(self.keypoint_depth, self.tracker.points(), self.tracker.camera)
                obs["state"] = np.concatenate([obs["state"], extra.astype(np.float32)])
        if self.image_obs:
            obs["image"] = np.ascontiguousarray(np.transpose(frame, (2, 0, 1)))
        return obs

    def _frame(self):
        return self.env.render() if (self.tracker.needs_frames or self.image_obs) else None

    def reset(self, *, seed=None, options=None):
        inner, info = self.env.reset(seed=seed, options=options)
        lookup = getattr(self.planner, "lookup", None)   # a cached plan needs no first frame
        plan = lookup(info) if lookup is not None else None
        frame = self.env.render() if plan is None or self.tracker.needs_frames or self.image_obs else None
        if plan is None:
            plan = self.planner(frame, info)
        plan = np.asarray(plan, np.float64)
        if plan.ndim != 3 or plan.shape[1:] != (self.K, 2):
            raise ValueError(f"planner returned a plan of shape {plan.shape}; expected (M+1, {self.K}, 2)")
        if len(plan) == 0 or not np.isfinite(plan[0]).all():
            warnings.warn("planner returned no usable x^0; keypoints start at the image centre", RuntimeWarning)
            plan = np.full((1, self.K, 2), 0.5)
        self.plan = plan
        self.machine = StageMachine(plan, self.cfg, self.parts)
        self._subgoal_obs = None
        self.tracker.start(frame, plan[0] * self.size, info)
        self.keypoints = plan[0].copy()
        self._ever_success = False
        info = dict(info, stage=0, num_stages=self.machine.num_stages, reached_last=False)
        return self._obs(inner, frame), info

    def step(self, action):
        inner, env_reward, terminated, truncated, info = self.env.step(action)
        frame = self._frame()
        uv = np.asarray(self.tracker.update(frame), np.float64)
        self.keypoints = uv / self.size
        s = self.machine.step(self.keypoints, bool(info.get("success", False)))
        self._ever_success |= bool(info.get("success", False))
        info = dict(info, episode_success=self._ever_success, env_reward=env_reward, stage=s.stage, num_stages=self.machine.num_stages,
                    distance=s.distance, max_distance=s.max_distance, subgoal_reached=s.stage_reached,
                    reached_last=s.reached_last, relam_success=s.success)
        return self._obs(inner, frame), s.reward, bool(terminated or s.terminate), bool(truncated), info


class EnvRewardWrapper(gym.Wrapper):
    """The env-reward baseline around a ``ReLAMRewardWrapper``: same observation (keypoints, subgoal, state), same
    episode end (the simulator's success with ``end_on_success``), but the reward is the simulator's own dense
    reward in ReLAM's form (``relam.reward.env_reward_signal``): ``env_reward / dense_max - 1``, plus the success
    bonus. ``subgoal_reached`` is cleared in ``info`` (kept as ``stage_reached``), so hierarchical PPO does not cut
    GAE at subgoals that pay nothing here; the stage machine still advances the subgoal the policy sees."""

    def __init__(self, env: "ReLAMRewardWrapper", dense_max: float):
        super().__init__(env)
        if env.cfg.success_source != "env":
            raise ValueError(f"the env-reward baseline pays its success bonus on the simulator's success flag, but the "
                             f"reward config has success_source={env.cfg.success_source!r}; set "
                             "reward.success_source: env")
        self.dense_max = float(dense_max)

    def step(self, action):
        obs, _, terminated, truncated, info = self.env.step(action)
        reward = float(env_reward_signal(info["env_reward"], info["relam_success"], self.env.cfg.success_bonus,
                                         self.dense_max))
        info["stage_reached"] = info.pop("subgoal_reached")
        return obs, reward, terminated, truncated, info


class ActionRepeat(gym.Wrapper):
    """Holds each action for ``k`` steps of the wrapped env (``ppo.action_repeat``): the rewards add up, the episode
    stops at the first of them that ends it, and ``info`` is the last step's with the flags that mark ONE step
    (``subgoal_reached`` and ``stage_reached``: hierarchical PPO cuts GAE there; ``success``) set if any of the ``k``
    steps raised them. The reward's stage machine and tracker still see every env step."""

    FLAGS = ("subgoal_reached", "stage_reached", "success")

    def __init__(self, env: gym.Env, k: int):
        if not is_count(k):
            raise ValueError(f"action_repeat must be a positive whole number of env steps per action, got {k!r}")
        super().__init__(env)
        self.k = k

    def step(self, action):
        total, raised = 0.0, set()
        for _ in range(self.k):
            obs, reward, terminated, truncated, info = self.env.step(action)
            total += float(reward)
            raised |= {f for f in self.FLAGS if info.get(f, False)}
            if terminated or truncated:
                break
        return obs, total, terminated, truncated, dict(info, **{f: True for f in raised})
