"""Stable-Baselines3 building blocks of hierarchical PPO (SPEC §6): the GAE cut and the policy networks.

Kept apart from ``relam.rl.ppo`` so that importing the config does not import SB3.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from stable_baselines3.common.vec_env import VecEnvWrapper


class GAECutVecEnv(VecEnvWrapper):
    """Marks transitions with ``info['subgoal_reached']`` as done FOR THE LEARNER ONLY.

    In SB3's on-policy loop a ``done`` only (a) sets ``episode_starts`` in the rollout buffer, which stops the
    GAE recursion (no bootstrap, no advantage flowing back across the boundary), and (b) is checked for time-limit
    bootstrapping, which needs ``terminal_observation`` (absent here). The env below is NOT reset: the next
    observation is the ongoing episode's. So advantages are computed per sub-task (paper App. A.3). Put this
    outside ``VecNormalize`` so its return statistics still see whole episodes."""

    def reset(self):
        return self.venv.reset()

    def step_wait(self):
        obs, rewards, dones, infos = self.venv.step_wait()
        cut = np.array([bool(i.get("subgoal_reached", False)) for i in infos])
        for i, info in enumerate(infos):
            info["gae_cut"] = bool(cut[i] and not dones[i])
        return obs, rewards, dones | cut, infos


def image_cnn(c: int, h: int, w: int, out_dim: int) -> nn.Module:
    """The paper's 3-layer CNN over an image in [0, 1], (B, c, h, w) -> (B, out_dim); used by PPO and IQL."""
    conv = nn.Sequential(
        nn.Conv2d(c, 32, 8, stride=4), nn.ReLU(), nn.Conv2d(32, 64, 4, stride=2), nn.ReLU(),
        nn.Conv2d(64, 64, 3, stride=1), nn.ReLU(), nn.Flatten())
    with torch.no_grad():
        n = conv(torch.zeros(1, c, h, w)).shape[1]
    return nn.Sequential(conv, nn.Linear(n, out_dim), nn.ReLU())


class KeypointFeatures(BaseFeaturesExtractor):
    """points (keypoints, subgoal, ``diff_scale`` x (subgoal - keypoints), proprioception, and the lifted subgoal
    of ``relam.rl.lift`` if the observation has 'lift') -> MLP; with an 'image' key also a 3-layer CNN over the
    frame (paper), concatenated."""

    def __init__(self, observation_space, point_dim: int = 128, image_dim: int = 256, diff_scale: float = 1.0):
        spaces = observation_space.spaces
        n_points = spaces["keypoints"].shape[0] * 3 + (spaces["state"].shape[0] if "state" in spaces else 0) \
            + (spaces["lift"].shape[0] if "lift" in spaces else 0)
        has_image = "image" in spaces
        super().__init__(observation_space, point_dim + (image_dim if has_image else 0))
        self.diff_scale = diff_scale
        self.points = nn.Sequential(nn.Linear(n_points, point_dim), nn.Tanh(), nn.Linear(point_dim, point_dim),
                                    nn.Tanh())
        self.cnn = None
        if has_image:
            self.cnn = image_cnn(*spaces["image"].shape, image_dim)

    def forward(self, obs):
        kp, sg = obs["keypoints"], obs["subgoal"]
        parts = [kp, sg, self.diff_scale * (sg - kp)] + [obs[k] for k in ("state", "lift") if k in obs]
        out = [self.points(torch.cat(parts, -1))]
        if self.cnn is not None:
            out.append(self.cnn(obs["image"]))  # SB3's preprocess_obs already scaled the uint8 image to [0, 1]
        return torch.cat(out, -1)
