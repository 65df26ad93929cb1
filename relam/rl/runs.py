"""What PPO and IQL runs share: the run directory, its start-or-skip rule, and the evaluation loop.

A run lives in ``results/<profile>/runs/<task>/<method>/seed<k>/``. Its ``config.json`` defines it: a finished run
(``results.json``) with the same config is skipped, a changed config deletes the old run's files and starts over,
and otherwise the algorithm resumes from its own checkpoint.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from relam.io import atomic_write_text

EVAL_SEED_OFFSET = 1_000_000   # held-out initial states (demos use 0+, offline data 500_000+)


def run_dir_of(cfg, task: str, method: str, seed: int) -> Path:
    return cfg.out / "runs" / task / method / f"seed{seed}"


def begin_run(run_dir: Path, config: dict, run_files: tuple[str, ...]) -> dict | None:
    """Create ``run_dir`` and write ``config.json``. Returns the saved results (with ``skipped``) if the run is
    already finished with this config; deletes ``run_files`` (and results.json) left by another config."""
    run_dir.mkdir(parents=True, exist_ok=True)
    text = json.dumps(config, indent=2, sort_keys=True)
    same = (run_dir / "config.json").exists() and (run_dir / "config.json").read_text() == text
    if same and (run_dir / "results.json").exists():
        return json.loads((run_dir / "results.json").read_text()) | {"skipped": True}
    if not same:
        for name in run_files + ("results.json",):
            (run_dir / name).unlink(missing_ok=True)
    atomic_write_text(run_dir / "config.json", text)
    return None


def evaluate_policy(act, env, episodes: int, seed_offset: int = EVAL_SEED_OFFSET) -> dict:
    """``act(obs) -> action`` for episodes from task seeds ``seed_offset + i`` in a ReLAM-wrapped env.
    Success = the simulator's flag was ever 1; also the share that reached the last subgoal."""
    success, last, stages, returns, env_returns, lengths = [], [], [], [], [], []
    for i in range(episodes):
        obs, info = env.reset(options={"task_seed": seed_offset + i})
        ever, ret, env_ret, n, done = False, 0.0, 0.0, 0, False
        while not done:
            obs, r, term, trunc, info = env.step(act(obs))
            ever |= bool(info.get("success", False))
            ret, env_ret, n, done = ret + r, env_ret + info.get("env_reward", 0.0), n + 1, term or trunc
        success.append(ever)
        last.append(bool(info["reached_last"]))
        stages.append(info["stage"] + info["reached_last"])
        returns.append(ret)
        env_returns.append(env_ret)
        lengths.append(n)
    return {"success_rate": float(np.mean(success)), "last_subgoal_rate": float(np.mean(last)),
            "mean_stages": float(np.mean(stages)), "mean_return": float(np.mean(returns)),
            "mean_env_return": float(np.mean(env_returns)), "mean_length": float(np.mean(lengths)),
            "episodes": episodes}
