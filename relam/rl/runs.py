"""What PPO and IQL runs share: the run directory, its start-or-skip rule, and the evaluation loop.

A run lives in ``results/<profile>/runs/<task>/<method>/seed<k>/``. Its ``config.json`` defines it: a finished run
(``results.json``) with the same config is skipped, a changed config deletes the old run's files and starts over,
and otherwise the algorithm resumes from its own checkpoint. A config that differs only by a LARGER training
budget (``ppo.total_steps``, ``iql.epochs``) extends the run from its last checkpoint: both algorithms train
with constant learning rates and clip ranges here, so nothing in the update depends on the budget, and the
extended run is a longer run of the same settings (its random stream differs from a run started at the larger
budget, as any resumed run's does).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from relam.io import atomic_write_text

EVAL_SEED_OFFSET = 1_000_000   # held-out initial states (demos use 0+, offline data 500_000+)
VALIDATION_SEED_OFFSET = 3_000_000   # checkpoint selection (PPO training uses 2_000_000+)


def run_dir_of(cfg, task: str, method: str, seed: int) -> Path:
    return cfg.out / "runs" / task / method / f"seed{seed}"


def begin_run(run_dir: Path, config: dict, run_files: tuple[str, ...], budget: tuple[str, str] | None = None,
              final_files: tuple[str, ...] = ()) -> dict | None:
    """Create ``run_dir`` and write ``config.json``. Returns the saved results (with ``skipped``) if the run is
    already finished with this config; deletes ``run_files`` (and results.json) left by another config, except
    when the only difference is a larger ``config[budget[0]][budget[1]]``: then only results.json and
    ``final_files`` go and the run resumes from its checkpoint (see the module docstring)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    text = json.dumps(config, indent=2, sort_keys=True)
    same = (run_dir / "config.json").exists() and (run_dir / "config.json").read_text() == text
    if same and (run_dir / "results.json").exists():
        return json.loads((run_dir / "results.json").read_text()) | {"skipped": True}
    if not same:
        extend = budget is not None and (run_dir / "config.json").exists() and \
            _only_budget_grew(json.loads((run_dir / "config.json").read_text()), json.loads(text), *budget)
        for name in (final_files if extend else run_files) + ("results.json",):
            (run_dir / name).unlink(missing_ok=True)
    atomic_write_text(run_dir / "config.json", text)
    return None


def _only_budget_grew(old: dict, new: dict, section: str, key: str) -> bool:
    try:
        grew = new[section][key] > old[section][key]
    except (KeyError, TypeError):
        return False
    rest = lambda c: {**c, section: {k: v for k, v in c[section].items() if k != key}}   # noqa: E731
    return bool(grew) and rest(old) == rest(new)


def evaluate_policy(act, env, episodes: int, seed_offset: int = EVAL_SEED_OFFSET, on_reset=None,
                    per_episode: bool = False) -> dict:
    """``act(obs) -> action`` for episodes from task seeds ``seed_offset + i`` in a ReLAM-wrapped env; ``on_reset()``
    (if given) at each episode start, for a policy that acts with memory. Success = the simulator's flag was ever 1;
    also the share that reached the last subgoal. With ``per_episode``, 'per_episode' lists each episode's task seed,
    success, last subgoal, stages passed and length: every method and seed plays the same states, so outcomes can
    be paired per state (hard states fail for every policy; README, stage 06)."""
    success, last, stages, returns, env_returns, lengths = [], [], [], [], [], []
    for i in range(episodes):
        obs, info = env.reset(options={"task_seed": seed_offset + i})
        if on_reset is not None:
            on_reset()
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
    res = {"success_rate": float(np.mean(success)), "last_subgoal_rate": float(np.mean(last)),
           "mean_stages": float(np.mean(stages)), "mean_return": float(np.mean(returns)),
           "mean_env_return": float(np.mean(env_returns)), "mean_length": float(np.mean(lengths)),
           "episodes": episodes}
    if per_episode:
        res["per_episode"] = [{"task_seed": seed_offset + i, "success": success[i], "reached_last": last[i],
                               "stages": int(stages[i]), "length": lengths[i]} for i in range(episodes)]
    return res


def evaluate_with_validation(evaluate, episodes: int, validation_episodes: int) -> dict:
    """One evaluation point of a run: ``evaluate(episodes, seed_offset)`` on the evaluation states, plus, when
    ``validation_episodes`` > 0, its success and last-subgoal shares on the validation states (which
    ``selected_index`` picks the reported checkpoint by)."""
    res = evaluate(episodes, EVAL_SEED_OFFSET)
    if validation_episodes > 0:
        val = evaluate(validation_episodes, VALIDATION_SEED_OFFSET)
        res |= {"validation_success_rate": val["success_rate"],
                "validation_last_subgoal_rate": val["last_subgoal_rate"]}
    return res


def selected_index(evals: list[dict]) -> int:
    """The evaluation whose checkpoint the run reports: best validation success, ties to the later one; the last
    evaluation when there was no validation."""
    if not evals or "validation_success_rate" not in evals[-1]:
        return len(evals) - 1
    return max(range(len(evals)), key=lambda i: (evals[i].get("validation_success_rate", -1.0), i))


def grid(cfg, algo: str, section, progress: bool = True) -> list[dict]:
    """Every task x method x seed of a config section (``cfg.ppo`` / ``cfg.iql``); finished runs are skipped,
    interrupted ones resume. With ``section.workers > 1`` runs go to that many subprocesses
    (``python -m relam.rl.<algo>``), one core each, logging to ``<run dir>/stdout.log``; a failed run is reported
    with the tail of its log after the others have finished."""
    import importlib
    import os
    import subprocess
    import sys
    import time

    from tqdm.auto import tqdm

    # seed-major order: an interrupted grid already has every task x method for the first seeds
    jobs = [(t, m, s) for s in section.seeds for t in section.tasks for m in section.methods]
    results, failed = [], []
    bar = tqdm(total=len(jobs), desc=f"{algo.upper()} runs", disable=not progress, unit="run")
    if section.workers <= 1:
        train_run = importlib.import_module(f"relam.rl.{algo}").train_run
        for t, m, s in jobs:
            bar.set_postfix_str(f"{t}/{m}/seed{s}")
            results.append(train_run(cfg, t, m, s))
            bar.update()
        bar.close()
        return results
    cfg_path = cfg.out / "runs" / f"grid_config_{algo}.json"
    atomic_write_text(cfg_path, json.dumps(cfg.to_dict()))
    pending, running = list(jobs), []
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    while pending or running:
        while pending and len(running) < section.workers:
            t, m, s = pending.pop(0)
            rd = run_dir_of(cfg, t, m, s)
            rd.mkdir(parents=True, exist_ok=True)
            log = open(rd / "stdout.log", "a")
            cmd = [sys.executable, "-m", f"relam.rl.{algo}", "--config-json", str(cfg_path), "--task", t,
                   "--method", m, "--seed", str(s)]
            running.append(((t, m, s), subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env), log))
        time.sleep(1.0)
        for item in list(running):
            (t, m, s), proc, log = item
            if proc.poll() is None:
                continue
            running.remove(item)
            log.close()
            rd = run_dir_of(cfg, t, m, s)
            if proc.returncode == 0 and (rd / "results.json").exists():
                r = json.loads((rd / "results.json").read_text())
                results.append(r)
                bar.set_postfix_str(f"{t}/{m}/seed{s}: {r['success_rate']:.0%}")
            else:
                tail = "\n".join((rd / "stdout.log").read_text().splitlines()[-15:])
                failed.append(f"{t}/{m}/seed{s} (exit {proc.returncode}); end of {rd / 'stdout.log'}:\n{tail}")
            bar.update()
    bar.close()
    if failed:
        raise RuntimeError(f"{len(failed)} {algo.upper()} run(s) failed (finished runs are kept; rerun to resume):\n"
                           + "\n\n".join(failed))
    return results


def run_one_main(algo: str, train_run, argv=None) -> int:
    """Command line of one run, used by ``grid``'s worker processes: ``python -m relam.rl.<algo> ...``."""
    import argparse

    ap = argparse.ArgumentParser(description=f"Train one {algo.upper()} run (used by the grid's worker processes).")
    ap.add_argument("--config-json", required=True, help="a full config saved by the grid")
    ap.add_argument("--task", required=True)
    ap.add_argument("--method", required=True)
    ap.add_argument("--seed", type=int, required=True)
    args = ap.parse_args(argv)
    from relam.config import config_from_dict
    cfg = config_from_dict(json.loads(Path(args.config_json).read_text()))
    r = train_run(cfg, args.task, args.method, args.seed)
    print(json.dumps({k: v for k, v in r.items() if k != "evals"}))
    return 0
