"""How much of PickCube's 3-D goal a keypoint policy can know (one camera, 2-D keypoints).

PickCube succeeds when the cube is within 2.5 cm of a random point in the air. A ReLAM policy learns the goal
only from its plan: 2-D keypoint subgoals in one camera. Two probes:

1. ``ceiling``: the goal's EXACT image point (u, v) and the best estimate of the 3-D goal from it (the mean goal
   of the 20 training goals with the nearest image points: E[goal | u, v]). Depth along the camera ray is what a
   single image point cannot give.
2. ``plans``: the scripted expert's plan for K keypoints; an MLP regresses the 3-D goal from the plan's last
   subgoal (K x 2 coordinates). Robot keypoints spread over the arm carry some depth (the arm's 2-D pose).

The share of goals estimated within 2.5 cm bounds the success of a policy that acts on that information alone.

    .venv/bin/python benchmarks/pickcube_goal_depth.py ceiling --n 1500
    .venv/bin/python benchmarks/pickcube_goal_depth.py plans --k 4 8 --n 300     # ~2 s per expert plan
"""
from __future__ import annotations

import argparse
import time

import numpy as np

import relam  # noqa: F401
from relam.envs import make_task

TOLERANCE = 0.025   # PickCube-v1's goal threshold (m)
SEED0 = 20_000      # task seeds of the probe: not those of demos, offline data or evaluation


def summarise(err: np.ndarray, along: np.ndarray) -> str:
    return (f"mean error {err.mean() * 100:.1f} cm (along the view {np.abs(along).mean() * 100:.1f} cm), "
            f"within 2.5 cm {np.mean(err < TOLERANCE) * 100:.0f} %, within 5 cm {np.mean(err < 0.05) * 100:.0f} %")


def view_axis(task) -> np.ndarray:
    cam = task.spec.camera
    f = np.asarray(cam.target, float) - np.asarray(cam.eye, float)
    return f / np.linalg.norm(f)


def goal(task, seed: int) -> np.ndarray:
    """The 3-D goal of PickCube's initial state ``seed``."""
    task.reset(seed)
    return task.goal_position()


def ceiling(n: int) -> None:
    task = make_task("PickCube", image_size=128)
    goals = np.array([goal(task, SEED0 + s) for s in range(n)])
    uv, _ = task.camera().project(goals)
    n_tr = int(0.8 * n)
    d = np.linalg.norm(uv[n_tr:, None] - uv[None, :n_tr], axis=-1)
    est = goals[:n_tr][np.argsort(d, 1)[:, :20]].mean(1)
    e = est - goals[n_tr:]
    print(f"exact 2-D goal point, {n - n_tr} held-out goals: " + summarise(np.linalg.norm(e, axis=1), e @ view_axis(task)))
    task.close()


def regress(x: np.ndarray, y: np.ndarray, folds: int = 5, steps: int = 3000, seed: int = 0) -> np.ndarray:
    """Cross-validated MLP predictions of y from x (standardised inputs)."""
    import torch
    torch.manual_seed(seed)
    idx = np.random.default_rng(seed).permutation(len(x))
    pred = np.zeros_like(y)
    for f in range(folds):
        te = idx[f::folds]
        tr = np.setdiff1d(idx, te)
        mu, sd = x[tr].mean(0), x[tr].std(0) + 1e-6
        xt = torch.tensor((x - mu) / sd, dtype=torch.float32)
        yt = torch.tensor(y, dtype=torch.float32)
        net = torch.nn.Sequential(torch.nn.Linear(x.shape[1], 128), torch.nn.ReLU(), torch.nn.Linear(128, 128),
                                  torch.nn.ReLU(), torch.nn.Linear(128, y.shape[1]))
        opt = torch.optim.Adam(net.parameters(), 1e-3, weight_decay=1e-4)
        for _ in range(steps):
            loss = ((net(xt[tr]) - yt[tr]) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        pred[te] = net(xt[te]).detach().numpy()
    return pred


def plans(ks: list[int], n: int, selection: str) -> None:
    from relam.perception.keypoints import KeypointConfig
    from relam.rl.planners import ExpertPlanner

    for k in ks:
        planner = ExpertPlanner("PickCube", keypoints=KeypointConfig(num_keypoints=k, selection=selection))
        x, goals, t0 = [], [], time.time()
        for s in range(n):
            x.append(planner(None, {"task_seed": SEED0 + s})[-1].reshape(-1))
            goals.append(goal(planner.task, SEED0 + s))
        goals = np.array(goals)
        e = regress(np.array(x, np.float64), goals) - goals
        print(f"K={k} ({selection}), {n} expert plans ({time.time() - t0:.0f} s), last subgoal -> 3-D goal: "
              + summarise(np.linalg.norm(e, axis=1), e @ view_axis(planner.task)), flush=True)
        planner.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("probe", choices=("ceiling", "plans"))
    ap.add_argument("--n", type=int, default=300, help="goals (ceiling) or expert plans (plans)")
    ap.add_argument("--k", type=int, nargs="+", default=[4, 8], help="keypoint counts (plans)")
    ap.add_argument("--selection", default="fps", help="keypoint selection (plans), see KeypointConfig")
    a = ap.parse_args()
    ceiling(a.n) if a.probe == "ceiling" else plans(a.k, a.n, a.selection)


if __name__ == "__main__":
    main()
