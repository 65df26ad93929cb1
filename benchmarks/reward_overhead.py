"""Env steps/s with the ReLAM reward wrapper against the bare env, measured in the same run (issue 5 target:
overhead <= 10 % with the sim tracker and the keypoint-only policy, i.e. no rendering per step).

Two loops: random actions (the env alone), and ``--policy`` (each step's action from the keypoint-only PPO policy,
as in training; the bare env's loop runs the same policy on a fixed observation, so both pay the same network
cost). 200-step episodes over a pool of initial states. Steps/s are per CPU second of this process
(``time.process_time``), so other jobs on a shared machine do not distort the ratio much. Two wrapper numbers: ``warm`` (every pool seed
already planned, as in most of an RL run: plans are cached per seed) and ``cold`` (every episode plans anew: one
render + anticipation-model call or expert rollout per episode). Rounds alternate bare / wrapped to share noise.

    python benchmarks/reward_overhead.py --task drawer-open --method relam --steps 4000
"""
import argparse
import time

import numpy as np

from relam.config import load_config
from relam.rl.env import TaskEnv
from relam.rl.ppo import make_env, make_planner


def run(env, steps: int, seed: int, act=None) -> float:
    """Steps/s of ``env`` driven by ``act(obs)`` (default: uniform random actions)."""
    rng = np.random.default_rng(seed)
    act = act or (lambda _obs: rng.uniform(-1, 1, env.action_space.shape).astype(np.float32))
    obs, _ = env.reset(seed=seed)
    t0 = time.process_time()   # CPU time of this process: the shared machine's other jobs do not count
    for _ in range(steps):
        obs, _, term, trunc, _ = env.step(act(obs))
        if term or trunc:
            obs, _ = env.reset()
    return steps / (time.process_time() - t0)


def policy_actions(wrapped, cfg):
    """(act for the wrapped env, act for the bare env): the keypoint-only PPO policy as training builds it; the
    bare env has no keypoint observation, so its loop feeds the policy one fixed wrapped observation."""
    import torch
    from stable_baselines3 import PPO
    from stable_baselines3.common.vec_env import DummyVecEnv

    from relam.rl.ppo import policy_kwargs

    torch.set_num_threads(cfg.torch_threads)
    model = PPO("MultiInputPolicy", DummyVecEnv([lambda: wrapped]), device="cpu", seed=0,
                policy_kwargs=policy_kwargs(cfg.ppo))
    fixed, _ = wrapped.reset()
    act = lambda obs: model.predict(obs, deterministic=False)[0]  # noqa: E731 - sampling, as in rollouts
    return act, lambda _obs: act(fixed)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--profile", default="cpu")
    ap.add_argument("--task", default="drawer-open")
    ap.add_argument("--method", default="relam", choices=["relam", "relam-gt"])
    ap.add_argument("--steps", type=int, default=4000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--pool", type=int, default=4)
    ap.add_argument("--policy", action="store_true", help="actions from the keypoint-only PPO policy network")
    a = ap.parse_args()
    cfg = load_config(a.profile, {"ppo": {"policy": "keypoints"}})
    planner = make_planner(a.task, a.method, cfg)
    pool = np.arange(a.pool)
    wrapped = make_env(a.task, planner, cfg, seed_pool=pool)
    cold = make_env(a.task, planner.planner, cfg, seed_pool=pool)  # the planner without its cache
    bare = TaskEnv(wrapped.unwrapped.task, seed_pool=pool)
    for s in pool:  # warm the plan cache
        wrapped.reset(options={"task_seed": int(s)})
    act = bare_act = None
    if a.policy:
        act, bare_act = policy_actions(wrapped, cfg)
    fps = {"bare": [], "wrapped_warm": [], "wrapped_cold": []}
    for r in range(a.rounds):
        fps["bare"].append(run(bare, a.steps, r, bare_act))
        fps["wrapped_warm"].append(run(wrapped, a.steps, r, act))
        fps["wrapped_cold"].append(run(cold, a.steps, r, act))
    med = {k: float(np.median(v)) for k, v in fps.items()}
    loop = "keypoint-policy actions" if a.policy else "random actions"
    print(f"task {a.task}, method {a.method}, {loop}, {a.steps} steps x {a.rounds} rounds (median steps/s)")
    for k, v in med.items():
        print(f"  {k:13s} {v:8.1f} steps/s   ratio to bare {v / med['bare']:.3f}   overhead "
              f"{100 * (med['bare'] / v - 1):5.1f} %")


if __name__ == "__main__":
    main()
