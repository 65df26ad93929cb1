"""Subgoal lifting (ours, not in the paper): tell a keypoint policy where its end effector should go, in 3-D.

A keypoint subgoal is 2-D: one camera's pixels. Where the camera looks along the depth of the task, the subgoal
says little about depth directly (PickCube: the goal floats in the air and the side camera looks along y; from
the goal's exact image point the best guess is 5 cm off, README stage 06). The robot's keypoints in the subgoal do
carry depth, through the arm's pose, but a policy trained on ~100 demonstrations has seen only ~100 final poses
to learn that from.

Every transition of the dataset, however, pairs the robot's CURRENT keypoints with its current end-effector
position (proprioception, in the observation): thousands of pairs. ``SubgoalLift`` regresses the end-effector
xyz on the robot keypoints over all of them, applies the regressor to the SUBGOAL's robot keypoints, and gives
the policy ``LIFT_SCALE * (lifted target - end effector)`` as three extra inputs. No privileged state is used:
keypoints and proprioception are what the keypoint policy already observes.

Offline (``iql.subgoal_lift``) the regressor is fitted on the run's dataset; online (``ppo.subgoal_lift``) on the
task's demonstrations (``demo_pairs``), and ``LiftObservation`` adds the feature to the env's observation as
``obs['lift']``. Both are options, off by default: measured at ``cpu`` they did not help (offline PickCube / PushCube,
PPO door-open; README, stages 05 and 06).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import gymnasium as gym
import numpy as np
import torch
from torch import nn

LIFT_SCALE = 10.0
"""Multiplies the lifted offset (metres) so that the centimetres that decide success are inputs of ~0.1-1."""


class SubgoalLift:
    """Regressor robot keypoints (normalised image coordinates) -> end-effector xyz, and the policy features it makes.

    ``robot`` is the indices of the robot's keypoints among the K (part 0 of ``keypoint_parts``). Observations are
    the flat keypoint vectors of ``relam.rl.iql.flat_observation`` (keypoints 2K, subgoal 2K, difference 2K,
    proprioception 4; an image may precede them): ``augment`` reads their last 6K + 4 entries."""

    def __init__(self, robot, num_keypoints: int, hidden: int = 256, steps: int = 6000, batch_size: int = 256,
                 learning_rate: float = 1e-3, seed: int = 0):
        robot = np.asarray(robot, np.int64).ravel()
        if len(robot) == 0 or robot.min() < 0 or robot.max() >= num_keypoints:
            raise ValueError(f"subgoal lifting needs the robot's keypoint indices in [0, {num_keypoints}); got "
                             f"{robot.tolist()}: pass the keypoints whose part is 0 (the robot)")
        self.robot, self.K = robot, int(num_keypoints)
        self.cols = np.stack([2 * robot, 2 * robot + 1], 1).ravel()   # (u, v) columns of the robot's keypoints
        self.settings = dict(hidden=hidden, steps=steps, batch_size=batch_size, learning_rate=learning_rate, seed=seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.net = nn.Sequential(nn.Linear(len(self.cols), hidden), nn.ReLU(), nn.Linear(hidden, hidden),
                                     nn.ReLU(), nn.Linear(hidden, 3))
        self.stats: dict[str, torch.Tensor] = {}
        self.fit_error = float("nan")

    def fit(self, keypoints: np.ndarray, proprio: np.ndarray) -> "SubgoalLift":
        """Regress ``proprio[:, :3]`` on the robot's columns of ``keypoints`` (N, 2K); N >= 2."""
        keypoints, proprio = np.asarray(keypoints, np.float32), np.asarray(proprio, np.float32)
        if keypoints.ndim != 2 or keypoints.shape[1] != 2 * self.K or len(keypoints) != len(proprio) \
                or len(proprio) < 2:
            raise ValueError(f"subgoal lifting fits on (N, {2 * self.K}) keypoints and (N, >=3) proprioception, "
                             f"N >= 2; got {keypoints.shape} and {proprio.shape}")
        x, y = torch.as_tensor(keypoints[:, self.cols]), torch.as_tensor(proprio[:, :3])
        self.stats = {"x_mean": x.mean(0), "x_std": x.std(0) + 1e-6, "y_mean": y.mean(0), "y_std": y.std(0) + 1e-6}
        xn, yn = self._norm_x(x), (y - self.stats["y_mean"]) / self.stats["y_std"]
        s = self.settings
        gen = torch.Generator().manual_seed(s["seed"])
        opt = torch.optim.Adam(self.net.parameters(), lr=s["learning_rate"])
        for _ in range(s["steps"]):
            i = torch.randint(len(xn), (s["batch_size"],), generator=gen)
            loss = ((self.net(xn[i]) - yn[i]) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        self.fit_error = float(np.linalg.norm(self.predict(keypoints) - proprio[:, :3], axis=1).mean())
        return self

    def _norm_x(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.stats["x_mean"]) / self.stats["x_std"]

    def predict(self, keypoints: np.ndarray) -> np.ndarray:
        """End-effector xyz (N, 3) the robot keypoints (N, 2K) correspond to."""
        if not self.stats:
            raise RuntimeError("SubgoalLift.predict before fit() or load()")
        x = torch.as_tensor(np.asarray(keypoints, np.float32)[:, self.cols])
        with torch.no_grad():
            return (self.net(self._norm_x(x)) * self.stats["y_std"] + self.stats["y_mean"]).numpy()

    def augment(self, obs: np.ndarray) -> np.ndarray:
        """Flat observations (..., D) -> (..., D + 3): ``LIFT_SCALE * (lift(subgoal) - end effector)`` appended."""
        obs = np.asarray(obs, np.float32)
        n = 6 * self.K + 4
        if obs.shape[-1] < n:
            raise ValueError(f"subgoal lifting expects flat keypoint observations of >= {n} entries for K = {self.K} "
                             f"keypoints; got {obs.shape[-1]}: was the lift fitted for another keypoint count?")
        flat = obs.reshape(-1, obs.shape[-1])[:, -n:]
        feat = self.offset(flat[:, 2 * self.K:4 * self.K], flat[:, 6 * self.K:6 * self.K + 3])
        return np.concatenate([obs, feat.reshape(obs.shape[:-1] + (3,))], -1)

    def offset(self, subgoal: np.ndarray, end_effector: np.ndarray) -> np.ndarray:
        """The policy feature ``LIFT_SCALE * (lift(subgoal) - end effector)``: (N, 2K), (N, 3) -> (N, 3) float32."""
        return (LIFT_SCALE * (self.predict(subgoal) - end_effector)).astype(np.float32)

    def save(self, path: Path | str) -> None:
        torch.save({"robot": self.robot, "K": self.K, "settings": self.settings, "net": self.net.state_dict(),
                    "stats": self.stats, "fit_error": self.fit_error}, path)

    @classmethod
    def load(cls, path: Path | str) -> "SubgoalLift":
        ck = torch.load(path, weights_only=False)
        lift = cls(ck["robot"], ck["K"], **ck["settings"])
        lift.net.load_state_dict(ck["net"])
        lift.stats, lift.fit_error = ck["stats"], ck["fit_error"]
        return lift


def load_or_fit(path: Path, fit: Callable[[], SubgoalLift]) -> SubgoalLift:
    """A run's lift: loaded from ``path`` (a resumed run keeps the lift it trained with), else ``fit()`` and saved
    there atomically."""
    from relam.io import atomic_path

    if path.exists():
        return SubgoalLift.load(path)
    lift = fit()
    with atomic_path(path) as tmp:
        lift.save(tmp)
    return lift


class LiftedPolicy:
    """A learner whose observations are lifted first (what ``relam.rl.iql`` evaluates when ``iql.subgoal_lift``)."""

    def __init__(self, learner, lift: SubgoalLift):
        self.learner, self.lift = learner, lift

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.learner.predict(self.lift.augment(x))

    def reset(self) -> None:
        if hasattr(self.learner, "reset"):
            self.learner.reset()


def demo_pairs(cfg, task) -> tuple[np.ndarray, np.ndarray]:
    """(keypoints (N, 2K), proprioception (N, 4)) over every frame of the task's demos: the subgoal dataset's
    keypoint tracks (stage 03) beside the robot's proprioception recorded with each frame (``task`` is a
    ``relam.envs`` Task, which reads it from the recorded states)."""
    from relam.data.demos import demo_path
    from relam.data.store import open_h5, sim_path
    from relam.perception.subgoals import SubgoalDataset, subgoal_path

    ds = SubgoalDataset.load(subgoal_path(cfg.out, task.spec.name), task.spec.name)
    path = demo_path(cfg, task.spec.name)
    with open_h5(path) as f, open_h5(sim_path(path)) as g:
        by_seed = {int(f[n].attrs["seed"]): n for n in f.keys() if n.startswith("ep_")}
        states = {}
        for seed in ds.seeds:
            if int(seed) not in by_seed:
                raise ValueError(f"demo seed {int(seed)} of {subgoal_path(cfg.out, task.spec.name)} is not in {path}: "
                                 f"the subgoal dataset is older than the demos; rerun notebooks/03_keyframes.ipynb")
            states[int(seed)] = g[by_seed[int(seed)]]["states"][()]
    kps, props = [], []
    for tracks, seed in zip(ds.tracks, ds.seeds):
        n = min(len(tracks), len(states[int(seed)]))
        kps.append(np.asarray(tracks[:n], np.float32).reshape(n, -1))
        props.append(task.proprio_of_state(states[int(seed)][:n]))
    return np.concatenate(kps), np.concatenate(props)


class LiftObservation(gym.ObservationWrapper):
    """Adds ``obs['lift']`` = ``LIFT_SCALE * (lift(subgoal) - end effector)`` (3,) to a ``ReLAMRewardWrapper``'s
    observation (which must carry 'subgoal' and the proprioception as 'state')."""

    def __init__(self, env: gym.Env, lift: SubgoalLift):
        super().__init__(env)
        spaces = env.observation_space.spaces
        if "subgoal" not in spaces or "state" not in spaces:
            raise ValueError("LiftObservation needs an observation with 'subgoal' and 'state' (the proprioception); "
                             f"got {list(spaces)}")
        if spaces["subgoal"].shape[0] != 2 * lift.K:
            raise ValueError(f"the lift was fitted for K = {lift.K} keypoints, the env plans "
                             f"{spaces['subgoal'].shape[0] // 2}")
        self.lift = lift
        self.observation_space = gym.spaces.Dict(
            dict(spaces) | {"lift": gym.spaces.Box(-np.inf, np.inf, shape=(3,), dtype=np.float32)})

    def observation(self, obs):
        return dict(obs) | {"lift": self.lift.offset(np.asarray(obs["subgoal"], np.float32)[None],
                                                     obs["state"][None, :3])[0]}
