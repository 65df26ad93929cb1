"""Where a trained PickCube offline policy fails: grasp, closest approach to the goal, and stillness there.

PickCube succeeds when the cube is within 2.5 cm of a random goal in the air AND the robot is static. This replays a
finished offline run's final model (``model.pt`` of the ``awr-mc`` learner) on held-out evaluation states and prints,
per episode, whether the cube was ever grasped, its closest distance to the goal, the arm's largest joint speed at
that moment and the simulator's success; then the shares. The run's own profile settings (goal observation, plans)
are read from ``--results-dir``'s profile and the run's ``config.json``.

    .venv/bin/python benchmarks/pickcube_failures.py --results-dir results/cpu --method relam-gt --seed 1 --episodes 20
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

import relam  # noqa: F401
from relam.config import load_config
from relam.envs.maniskill_tasks import STATE_LAYOUT as L
from relam.rl.iql import flat_observation, observed_subgoal, relative_objects
from relam.rl.mc_awr import load_policy
from relam.rl.ppo import make_env, make_planner
from relam.rl.runs import EVAL_SEED_OFFSET

TOLERANCE = 0.025   # PickCube-v1's goal threshold (m)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results-dir", default="results/cpu")
    ap.add_argument("--profile", default="cpu")
    ap.add_argument("--method", default="relam-gt", choices=("relam", "relam-gt", "env-reward"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--episodes", type=int, default=20)
    a = ap.parse_args()
    run = Path(a.results_dir) / "runs" / "PickCube" / a.method / f"seed{a.seed}"
    if not (run / "model.pt").exists():
        raise SystemExit(f"{run / 'model.pt'} is missing: train the run first (notebook 06), with the awr-mc learner")
    settings = json.loads((run / "config.json").read_text())["iql"]
    # the run's observation as its config saved it: the subgoal view resolved for its method (True, False or
    # 'objects'), the goal, the keypoint depth (False, True or "xyz") and the offsets from the cube
    cfg = load_config(a.profile, {"results_dir": a.results_dir, "iql": {
        "goal_observation": bool(settings.get("goal_observation", False)),
        "subgoal_observation": settings.get("subgoal_observation", True), "subgoal_observation_generated": None,
        "keypoint_depth": settings.get("keypoint_depth", False),
        "relative_goal": bool(settings.get("relative_goal", False))}})
    with_subgoal, relative = observed_subgoal(cfg, "PickCube", a.method), relative_objects(cfg, "PickCube")
    source = "relam-gt" if a.method == "relam-gt" else "relam"
    env = make_env("PickCube", make_planner("PickCube", source, cfg, cfg.iql.anticipation_run), cfg,
                   image_obs=False, goal_obs=cfg.iql.goal_observation, keypoint_depth=cfg.iql.keypoint_depth)
    policy = load_policy(run / "model.pt")
    rows = []
    for i in range(a.episodes):
        obs, _ = env.reset(options={"task_seed": EVAL_SEED_OFFSET + i})
        policy.reset()   # a policy with action chunks (iql.mc_chunk) starts each episode without memory
        done, grasped, closest, speed, success = False, False, np.inf, np.nan, False
        while not done:
            x = flat_observation(obs["keypoints"], obs["subgoal"], obs["state"], with_subgoal, relative)[None]
            obs, _, term, trunc, info = env.step(policy.predict(x)[0])
            s = env.unwrapped.last_state
            grasped |= bool(s[L["is_grasped"]][0] > 0.5)
            d = float(np.linalg.norm(s[L["cube_pose"]][:3] - s[L["goal_pos"]]))
            if d < closest:
                closest, speed = d, float(np.abs(s[L["qvel"]][:7]).max())
            success |= bool(info.get("success", False))
            done = term or trunc
        rows.append((success, grasped, closest, speed))
        print(f"state {EVAL_SEED_OFFSET + i}: success {success}, grasped {grasped}, closest {closest * 100:.1f} cm "
              f"(max joint speed there {speed:.2f} rad/s), stage {info['stage']} of {info['num_stages']}", flush=True)
    r = np.array(rows, float)
    held = r[:, 1] == 1
    print(f"\n{a.method} seed {a.seed}, {a.episodes} states: success {r[:, 0].mean():.0%}, never grasped "
          f"{(~held).mean():.0%}; of the grasps: success {r[held, 0].mean() if held.any() else 0:.0%}, within 2.5 cm "
          f"but not still {np.mean((r[held, 2] < TOLERANCE) & (r[held, 0] == 0)) if held.any() else 0:.0%}, "
          f"never within 2.5 cm {np.mean(r[held, 2] >= TOLERANCE) if held.any() else 0:.0%}")
    env.close()


if __name__ == "__main__":
    main()
