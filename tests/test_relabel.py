"""Offline relabelling (SPEC §7) of a tiny recorded PushCube dataset with ground-truth keypoint subgoals."""
import json

import numpy as np
import pytest

from relam.config import load_config
from relam.reward import reward_function


def test_relabel_dataset_is_consistent_with_the_reward(tmp_path):
    from relam.data.demos import collect_offline
    from relam.rl.relabel import dataset_summary, relabel_dataset

    cfg = load_config("smoke", {"results_dir": str(tmp_path / "results"), "offline": {"n_expert": 1, "n_noisy": 1}})
    collect_offline(cfg, "PushCube", progress=False)
    path = relabel_dataset(cfg, "PushCube", "relam-gt", progress=False)
    d = dict(np.load(path))
    assert set(np.unique(d["episode"])) == {0, 1}
    f = reward_function(cfg.reward)
    for ep in (0, 1):
        m = d["episode"] == ep
        kp, nkp, sg, nsg = d["keypoints"][m], d["next_keypoints"][m], d["subgoal"][m], d["next_subgoal"][m]
        np.testing.assert_allclose(nkp[:-1], kp[1:])             # transitions chain within an episode
        np.testing.assert_allclose(nsg[:-1], sg[1:])
        # each reward = f(part-weighted distance of the NEXT keypoints to the current target) + bonuses: K = 4 is
        # 3 robot points and 1 cube point, so the cube carries half of the distance
        dist = np.linalg.norm((nkp - sg).reshape(len(kp), -1, 2), axis=-1)
        assert cfg.reward.part_weighting == "part" and dist.shape[1] == 4
        expect = f(dist[:, :3].mean(1) / 2 + dist[:, 3] / 2) + cfg.reward.stage_bonus * d["stage_reached"][m] \
            + cfg.reward.success_bonus * d["success"][m]
        np.testing.assert_allclose(d["reward"][m], expect, rtol=1e-5, atol=1e-5)
        assert (dist.max(1)[d["stage_reached"][m]] < cfg.reward.delta).all()   # max criterion
        assert d["terminal"][m].sum() + d["timeout"][m].sum() == 1 and (d["terminal"][m] | d["timeout"][m])[-1]
        assert d["terminal"][m][-1] == d["success"][m][-1]
    s = dataset_summary(path)
    assert s["episodes"] == 2 and 0 <= s["episodes_last_subgoal"] <= 1 and 0 <= s["episodes_success"] <= 1
    won = [e for e in (0, 1) if d["success"][d["episode"] == e].any()]
    stuck = [not d["stage_reached"][d["episode"] == e].any() for e in won]
    assert (np.isnan(s["success_stuck_first"]) if not won else s["success_stuck_first"] == np.mean(stuck))
    mtime = path.stat().st_mtime_ns
    assert relabel_dataset(cfg, "PushCube", "relam-gt", progress=False) == path and path.stat().st_mtime_ns == mtime


def _smoke_iql_run(tmp_path, n: int = 1, **iql):
    """A tiny offline PushCube dataset (n expert + n noisy) and one relam-gt run on it: (cfg, results, run dir)."""
    from relam.data.demos import collect_offline
    from relam.rl.iql import train_run

    cfg = load_config("smoke", {"results_dir": str(tmp_path / "results"), "offline": {"n_expert": n, "n_noisy": n},
                                "iql": {"eval_every_epochs": 1, "eval_episodes": 1, "learner": "iql",
                                        "trajectory_filter": "none", "subgoal_lift": False, "goal_observation": False,
                                        "keypoint_depth": False, "relative_goal": False,
                                        **iql}})
    collect_offline(cfg, "PushCube", progress=False)
    return cfg, train_run(cfg, "PushCube", "relam-gt", 0), cfg.out / "runs" / "PushCube" / "relam-gt" / "seed0"


def test_iql_smoke_fit_writes_a_checkpoint_that_loads_and_evaluates(tmp_path):
    import d3rlpy

    from relam.rl.iql import flat_observation, train_run

    cfg, res, rd = _smoke_iql_run(tmp_path, epochs=2, steps_per_epoch=20)
    for name in ("config.json", "train.csv", "eval.csv", "checkpoint.d3", "model.d3", "results.json"):
        assert (rd / name).exists(), name
    assert res["steps"] == 40 and 0 <= res["success_rate"] <= 1 and len(res["evals"]) == 2
    assert res["final_eval"]["episodes"] == 1  # one simulator episode ran end to end
    algo = d3rlpy.load_learnable(str(rd / "model.d3"), device="cpu:0")
    x = flat_observation(np.zeros(8), np.full(8, 0.5), np.zeros(4))[None]
    assert algo.predict(x).shape == (1, 4)
    assert train_run(cfg, "PushCube", "relam-gt", 0)["skipped"]
    cfg.iql.epochs = 3                                  # a larger budget continues from epoch 2
    longer = train_run(cfg, "PushCube", "relam-gt", 0)
    assert longer["resumed"] and [e["epoch"] for e in longer["evals"]] == [1, 2, 3]

    from relam.rl.iql import per_state_outcomes, reevaluate_grid, reevaluate_run
    # on the run's own single state the re-evaluation replays the run's final evaluation exactly
    same = reevaluate_run(cfg, "PushCube", "relam-gt", 0, episodes=1)
    for k in ("success_rate", "last_subgoal_rate", "mean_return", "mean_length"):
        assert same[k] == longer["final_eval"][k], k
    assert same["own_success_rate"] == longer["success_rate"] and (rd / "reeval1.json").exists()
    from relam.rl.runs import EVAL_SEED_OFFSET
    assert [e["task_seed"] for e in same["per_episode"]] == [EVAL_SEED_OFFSET]
    assert same["per_episode"][0]["success"] == (same["success_rate"] == 1.0)
    assert same["per_episode"][0]["length"] == same["mean_length"]
    mtime = (rd / "reeval1.json").stat().st_mtime_ns
    assert reevaluate_run(cfg, "PushCube", "relam-gt", 0, episodes=1) == same
    assert (rd / "reeval1.json").stat().st_mtime_ns == mtime       # kept while the run's results are unchanged
    with pytest.raises(ValueError, match="not a finished run"):
        reevaluate_run(cfg, "PushCube", "relam", 0, episodes=1)
    cfg.iql.reeval_episodes, cfg.iql.methods, cfg.iql.seeds = 2, ["relam-gt", "relam"], [0]
    table = reevaluate_grid(cfg, progress=False)                      # unfinished runs are left out
    assert list(table.method) == ["relam-gt"] and table.episodes.tolist() == [2] and (rd / "reeval2.json").exists()
    per_state = per_state_outcomes(cfg, progress=False)               # the same two episodes, one row each
    assert per_state.task_seed.tolist() == [EVAL_SEED_OFFSET, EVAL_SEED_OFFSET + 1]
    assert per_state.success.mean() == table.success_rate[0] and set(per_state.method) == {"relam-gt"}


def test_downscale_block_averages_channels_first():
    from relam.rl.iql import downscale

    img = np.zeros((4, 4, 3), np.uint8)
    img[:2, :2, 0] = 255                      # top-left block red
    img[2:, 2:, 2] = 51                       # bottom-right block dim blue
    x = downscale(img, 2).reshape(3, 2, 2)
    assert x[0, 0, 0] == 1.0 and x[0].sum() == 1.0
    assert x[2, 1, 1] == pytest.approx(0.2) and x[1].sum() == 0
    with pytest.raises(ValueError, match="must divide"):
        downscale(img, 3)


def test_iql_pixel_policy_smoke_fit_and_evaluation(tmp_path):
    import d3rlpy

    from relam.rl.iql import downscale, flat_observation

    _, res, rd = _smoke_iql_run(tmp_path, epochs=1, steps_per_epoch=10, observation="pixels", image_size=64)
    assert res["final_eval"]["episodes"] == 1 and res["steps"] == 10
    assert json.loads((rd / "config.json").read_text())["iql"]["observation"] == "pixels"
    algo = d3rlpy.load_learnable(str(rd / "model.d3"), device="cpu:0")
    x = np.concatenate([downscale(np.zeros((128, 128, 3), np.uint8), 64),
                        flat_observation(np.zeros(8), np.full(8, 0.5), np.zeros(4))])[None]
    assert algo.predict(x).shape == (1, 4)
    # the CNN sees the image: changing only the pixels changes the critic's value
    y = x.copy()
    y[0, :3 * 64 * 64] = 1.0
    assert not np.allclose(algo.predict_value(x, algo.predict(x)), algo.predict_value(y, algo.predict(x)))


def test_env_reward_baseline_is_shifted_like_relam_and_pays_the_success_bonus(tmp_path):
    """A positive dense reward with episodes ending at success makes success a loss for the learner; the
    env-reward baseline therefore gets ReLAM's form: dense - 1 (in [-1, 0]) + success bonus."""
    from relam.rl.iql import build_dataset, env_reward_signal

    dense, success = np.array([0.2, 0.6, 1.0]), np.array([False, False, True])
    np.testing.assert_allclose(env_reward_signal(dense, success, 10.0), [-0.8, -0.4, 10.0])
    path = tmp_path / "r.npz"
    np.savez(path, keypoints=np.zeros((3, 8)), subgoal=np.zeros((3, 8)), state=np.zeros((3, 4)),
             action=np.zeros((3, 4), np.float32), reward=np.array([-0.5, -0.2, 11.0]), env_reward=dense,
             success=success, terminal=success, timeout=np.zeros(3, bool))
    env_ds = build_dataset(path, "env_reward", success_bonus=10.0)
    np.testing.assert_allclose(env_ds.episodes[0].rewards.ravel(), [-0.8, -0.4, 10.0])
    relam_ds = build_dataset(path, "reward")
    np.testing.assert_allclose(relam_ds.episodes[0].rewards.ravel(), [-0.5, -0.2, 11.0])


def test_keep_mask_keeps_whole_trajectories_with_the_highest_return(tmp_path):
    from relam.rl.iql import build_dataset, keep_mask

    # episode 0: return -3 (slow, no success); 1: -0.5 + 10; 2: -1 + 10 (success later); 3: -2
    episode = np.array([0, 0, 0, 1, 2, 2, 3, 3])
    reward = np.array([-1, -1, -1, 9.5, -1, 10, -1, -1], np.float32)
    success = np.array([0, 0, 0, 1, 0, 1, 0, 0], bool)
    env_reward = np.array([0.9, 0.9, 0.9, 0.1, 0.1, 0.1, 0.5, 0.5])   # dense - 1: ep 0 -0.3, 1 +9.1, 2 +8.2, 3 -1.0
    path = tmp_path / "r.npz"
    np.savez(path, episode=episode, reward=reward, env_reward=env_reward, success=success,
             keypoints=np.zeros((8, 8)), subgoal=np.zeros((8, 8)), state=np.zeros((8, 4)),
             action=np.arange(32, dtype=np.float32).reshape(8, 4), terminal=success,
             timeout=np.isin(np.arange(8), [2, 7]))
    np.testing.assert_array_equal(keep_mask(path, "reward", 0.5), np.isin(episode, [1, 2]))
    np.testing.assert_array_equal(keep_mask(path, "reward", 0.75), np.isin(episode, [1, 2, 3]))
    np.testing.assert_array_equal(keep_mask(path, "env_reward", 0.75), np.isin(episode, [0, 1, 2]))   # ranks differ
    np.testing.assert_array_equal(keep_mask(path, "env_reward", 0.25), episode == 1)
    assert keep_mask(path, "reward", 1.0).all()
    with pytest.raises(ValueError, match="keep_fraction"):
        keep_mask(path, "reward", 0.0)
    ds = build_dataset(path, "reward", keep=keep_mask(path, "reward", 0.5))
    assert len(ds.episodes) == 2 and ds.transition_count == 3
    np.testing.assert_array_equal(np.concatenate([e.actions for e in ds.episodes]), np.arange(12, 24).reshape(3, 4))


def test_success_filter_keeps_every_successful_trajectory_however_slow(tmp_path):
    from relam.rl.iql import IQLConfig, success_mask, training_mask

    # episode 0: long, succeeds at its end (a slow noisy success); 1: fast success; 2: fails; 3: succeeds mid-way
    episode = np.array([0, 0, 0, 0, 1, 2, 2, 3, 3, 3])
    success = np.array([0, 0, 0, 1, 1, 0, 0, 0, 1, 0], bool)
    reward = np.where(success, 10.0, -1.0).astype(np.float32)
    path = tmp_path / "r.npz"
    np.savez(path, episode=episode, reward=reward, env_reward=np.zeros(10), success=success)
    np.testing.assert_array_equal(success_mask(path), episode != 2)
    assert training_mask(IQLConfig(learner="awr-mc"), path, "reward", 10.0) is None
    np.testing.assert_array_equal(training_mask(IQLConfig(learner="awr-mc", trajectory_filter="successful"),
                                                path, "reward", 10.0), episode != 2)
    # filtered-bc ranks ALL trajectories (top half: 1 at +10, 3 at +8) and then applies the filter
    both = IQLConfig(learner="filtered-bc", keep_fraction=0.5, trajectory_filter="successful")
    np.testing.assert_array_equal(training_mask(both, path, "reward", 10.0), np.isin(episode, [1, 3]))
    with pytest.raises(ValueError, match="iql.trajectory_filter"):
        training_mask(IQLConfig(trajectory_filter="best"), path, "reward", 10.0)
    np.savez(path, episode=episode, reward=reward, env_reward=np.zeros(10), success=np.zeros(10, bool))
    with pytest.raises(ValueError, match="trajectory_filter: none"):
        success_mask(path)


def test_filtered_bc_learner_clones_the_best_trajectories_and_records_them(tmp_path):
    import d3rlpy

    from relam.rl.iql import flat_observation, train_run

    cfg, res, rd = _smoke_iql_run(tmp_path, n=2, epochs=1, steps_per_epoch=20, learner="filtered-bc",
                                  keep_fraction=0.5)
    assert res["learner"] == "filtered-bc" and res["final_eval"]["episodes"] == 1
    assert res["dataset"]["episodes"] == 4 and res["dataset"]["episodes_kept"] == 2
    saved = json.loads((rd / "config.json").read_text())["iql"]
    assert saved["learner"] == "filtered-bc" and "expectile" not in saved
    algo = d3rlpy.load_learnable(str(rd / "model.d3"), device="cpu:0")
    assert isinstance(algo, d3rlpy.algos.BC)
    assert algo.predict(flat_observation(np.zeros(8), np.full(8, 0.5), np.zeros(4))[None]).shape == (1, 4)
    cfg.iql.learner = "bc"
    with pytest.raises(ValueError, match="iql.learner"):
        train_run(cfg, "PushCube", "relam-gt", 0)


def test_awr_mc_learner_writes_a_resumable_run_whose_model_loads(tmp_path):
    from relam.rl.iql import flat_observation, train_run
    from relam.rl.mc_awr import load_policy

    cfg, res, rd = _smoke_iql_run(tmp_path, n=2, epochs=1, steps_per_epoch=20, learner="awr-mc", value_steps=10)
    assert res["learner"] == "awr-mc" and res["final_eval"]["episodes"] == 1 and res["steps"] == 20
    assert 0.0 < res["dataset"]["noisy_weight_share"] < 1.0
    assert (rd / "model.pt").exists() and not (rd / "model.d3").exists()
    saved = json.loads((rd / "config.json").read_text())["iql"]
    assert saved["learner"] == "awr-mc" and saved["mc_beta"] == 1.0 and saved["gamma"] == 0.99
    assert "expectile" not in saved and "keep_fraction" not in saved
    x = flat_observation(np.zeros(8), np.full(8, 0.5), np.zeros(4))[None]
    assert load_policy(rd / "model.pt").predict(x).shape == (1, 4)
    cfg.iql.epochs = 2                                  # a larger budget continues from epoch 1
    longer = train_run(cfg, "PushCube", "relam-gt", 0)
    assert longer["resumed"] and [e["epoch"] for e in longer["evals"]] == [1, 2]
    cfg.iql.mc_beta = 3.0                               # another setting starts over
    again = train_run(cfg, "PushCube", "relam-gt", 0)
    assert not again["resumed"] and json.loads((rd / "config.json").read_text())["iql"]["mc_beta"] == 3.0
    assert "episodes_kept" not in again["dataset"]      # no filter: every trajectory
    cfg.iql.trajectory_filter = "successful"            # the filter is part of the run's definition
    kept = train_run(cfg, "PushCube", "relam-gt", 0)
    assert not kept["resumed"] and json.loads((rd / "config.json").read_text())["iql"]["trajectory_filter"] == "successful"
    n_success = round(kept["dataset"]["episodes_success"] * kept["dataset"]["episodes"])
    assert 0 < kept["dataset"]["episodes_kept"] == n_success and kept["dataset"]["kept_success_share"] == 1.0


def test_validation_selects_the_checkpoint_that_scored_best_on_validation_states(tmp_path, monkeypatch):
    from relam.rl import iql
    from relam.rl.mc_awr import load_policy
    from relam.rl.runs import EVAL_SEED_OFFSET, VALIDATION_SEED_OFFSET

    x = iql.flat_observation(np.linspace(0, 1, 8), np.full(8, 0.5), np.ones(4))[None].astype(np.float32)
    scores = {EVAL_SEED_OFFSET: iter([0.2, 0.4, 0.6]), VALIDATION_SEED_OFFSET: iter([0.0, 1.0, 0.0])}
    seen = {"eval": [], "val": []}

    def scripted(algo, env, episodes, image_size=None, seed_offset=EVAL_SEED_OFFSET, with_subgoal=True, relative=None):
        seen["val" if seed_offset == VALIDATION_SEED_OFFSET else "eval"].append((episodes, algo.predict(x)))
        return {"success_rate": next(scores[seed_offset]), "last_subgoal_rate": 0.0}

    monkeypatch.setattr(iql, "evaluate", scripted)
    cfg, res, rd = _smoke_iql_run(tmp_path, n=2, epochs=3, steps_per_epoch=20, learner="awr-mc", value_steps=10,
                                  validation_episodes=2, mc_chunk=1)   # memoryless, so one predict shows the weights
    assert [e for e, _ in seen["val"]] == [2, 2, 2] and [e for e, _ in seen["eval"]] == [1, 1, 1]
    # the run reports epoch 2 (validation 1.0), not the final model; both are kept
    assert res["success_rate"] == 0.4 and res["selected_step"] == 40 and res["final_eval"]["success_rate"] == 0.6
    assert json.loads((rd / "config.json").read_text())["iql"]["validation_episodes"] == 2
    np.testing.assert_allclose(load_policy(rd / "selected.pt").predict(x), seen["val"][1][1], atol=1e-6)
    np.testing.assert_allclose(load_policy(rd / "model.pt").predict(x), seen["val"][2][1], atol=1e-6)
    assert not np.allclose(seen["val"][1][1], seen["val"][2][1])   # the two checkpoints differ

    cfg.iql.validation_episodes = 0                    # off: a run as before the option, the final model reported
    assert "validation_episodes" not in iql.run_config(cfg, "PushCube", "relam-gt", 0)["iql"]
    scores[EVAL_SEED_OFFSET] = iter([0.3, 0.1, 0.5])
    off = iql.train_run(cfg, "PushCube", "relam-gt", 0)
    assert not off["resumed"] and off["success_rate"] == 0.5 and off["selected_step"] == 60
    assert not (rd / "selected.pt").exists() and len(seen["val"]) == 3


def test_awr_mc_with_action_chunks_resets_its_memory_every_evaluation_episode(tmp_path, monkeypatch):
    from relam.rl.iql import flat_observation, run_config
    from relam.rl.mc_awr import MCAWR, load_policy

    resets = []
    original = MCAWR.reset
    monkeypatch.setattr(MCAWR, "reset", lambda self: (resets.append(1), original(self)))
    cfg, res, rd = _smoke_iql_run(tmp_path, n=1, epochs=1, steps_per_epoch=20, learner="awr-mc", value_steps=10,
                                  mc_chunk=2, eval_episodes=2)
    assert len(resets) == 2 and res["final_eval"]["episodes"] == 2   # one reset per evaluation episode
    assert json.loads((rd / "config.json").read_text())["iql"]["mc_chunk"] == 2
    policy = load_policy(rd / "model.pt")
    policy.reset()
    x = flat_observation(np.zeros(8), np.full(8, 0.5), np.zeros(4))[None]
    assert policy.predict(x).shape == (1, 4)
    cfg.iql.mc_chunk = 1                                # off: runs made before the option keep their config
    assert "mc_chunk" not in run_config(cfg, "PushCube", "relam-gt", 0)["iql"]
    assert "mc_ema" not in run_config(cfg, "PushCube", "relam-gt", 0)["iql"]   # so is the weight average
    cfg.iql.mc_ema = 0.999
    assert run_config(cfg, "PushCube", "relam-gt", 0)["iql"]["mc_ema"] == 0.999


def test_iql_run_configs_do_not_carry_the_other_learners_settings(tmp_path):
    from relam.rl.iql import run_config

    cfg = load_config("smoke", {"results_dir": str(tmp_path), "iql": {"learner": "iql"}})
    iql = run_config(cfg, "PushCube", "relam-gt", 0)["iql"]
    assert "learner" not in iql and "mc_beta" not in iql and "value_steps" not in iql and iql["expectile"] == 0.7
    cfg.iql.learner = "filtered-bc"
    assert "mc_beta" not in run_config(cfg, "PushCube", "relam-gt", 0)["iql"]


def test_iql_actor_dropout_is_in_the_actor_only_survives_saving_and_is_absent_from_configs_when_off(tmp_path):
    import d3rlpy
    import torch

    from relam.rl.iql import IQLConfig, make_algo, run_config, train_run

    rng = np.random.default_rng(0)
    ds = d3rlpy.dataset.MDPDataset(rng.normal(size=(40, 6)).astype("float32"),
                                   rng.uniform(-1, 1, (40, 2)).astype("float32"), rng.normal(size=40).astype("float32"),
                                   np.r_[np.zeros(19), 1, np.zeros(19), 1],
                                   action_space=d3rlpy.constants.ActionSpace.CONTINUOUS)

    def dropouts(module):
        return [m.p for m in module.modules() if isinstance(m, torch.nn.Dropout)]

    algo = make_algo(IQLConfig(actor_dropout=0.25, hidden=[16, 16], batch_size=8), 0)
    algo.fit(ds, n_steps=5, n_steps_per_epoch=5, show_progress=False,
             logger_adapter=d3rlpy.logging.NoopAdapterFactory())
    mods = algo.impl.modules
    assert dropouts(mods.policy) == [0.25, 0.25]                  # one after each hidden layer
    assert not dropouts(mods.value_func) and not any(dropouts(q) for q in mods.q_funcs)
    x = rng.normal(size=(3, 6)).astype("float32")
    np.testing.assert_array_equal(algo.predict(x), algo.predict(x))   # acting: dropout off
    algo.save(str(tmp_path / "m.d3"))
    loaded = d3rlpy.load_learnable(str(tmp_path / "m.d3"), device="cpu:0")
    assert dropouts(loaded.impl.modules.policy) == [0.25, 0.25]
    np.testing.assert_allclose(loaded.predict(x), algo.predict(x), atol=1e-6)
    plain = make_algo(IQLConfig(hidden=[16, 16]), 0)
    plain.build_with_dataset(ds)
    assert not dropouts(plain.impl.modules.policy)                 # off: none

    cfg = load_config("smoke", {"results_dir": str(tmp_path), "iql": {"learner": "iql"}})
    assert "actor_dropout" not in run_config(cfg, "PushCube", "relam-gt", 0)["iql"]   # off: configs as before
    cfg.iql.actor_dropout = 0.1
    assert run_config(cfg, "PushCube", "relam-gt", 0)["iql"]["actor_dropout"] == 0.1
    cfg.iql.learner = "awr-mc"                                      # not the learner it is for: refused up front
    with pytest.raises(ValueError, match="actor_dropout.*learner 'iql' only"):
        train_run(cfg, "PushCube", "relam-gt", 0)
    cfg.iql.learner, cfg.iql.actor_dropout = "iql", 1.0
    with pytest.raises(ValueError, match=r"must be in \[0, 1\)"):
        train_run(cfg, "PushCube", "relam-gt", 0)
    cfg.iql.actor_dropout, cfg.iql.observation = 0.1, "pixels"
    with pytest.raises(ValueError, match="actor_dropout.*keypoint observation"):
        train_run(cfg, "PushCube", "relam-gt", 0)
    assert not (tmp_path / "runs").exists()                         # nothing written by a refused run


def test_goal_observation_appends_the_tasks_goal_offline_and_online(tmp_path):
    from relam.data.store import EpisodeSet
    from relam.data.demos import offline_path
    from relam.envs.maniskill_tasks import goal_of_states
    from relam.envs.metaworld_tasks import MetaWorldTask
    from relam.rl.iql import flat_observation, run_config
    from relam.rl.mc_awr import load_policy
    from relam.rl.ppo import make_env, make_planner
    from relam.rl.relabel import relabel_dataset

    cfg, res, rd = _smoke_iql_run(tmp_path, epochs=1, steps_per_epoch=20, learner="awr-mc", value_steps=10,
                                  goal_observation=True)
    assert json.loads((rd / "config.json").read_text())["iql"]["goal_observation"] is True
    assert res["final_eval"]["episodes"] == 1
    x = flat_observation(np.zeros(8), np.full(8, 0.5), np.zeros(7))[None]   # proprio (4) + goal (3)
    assert load_policy(rd / "model.pt").predict(x).shape == (1, 4)
    # offline: the relabelled state ends with each trajectory's goal, read from its recorded simulator states
    d = dict(np.load(cfg.out / "relabelled" / "PushCube" / "relam-gt.npz"))
    assert d["state"].shape[1] == 7 and d["next_state"].shape[1] == 7
    with EpisodeSet(offline_path(cfg, "PushCube")) as ds:
        for ep in np.unique(d["episode"]):
            m = d["episode"] == ep
            goal = goal_of_states(ds.groundtruth(int(ep))["states"])[: m.sum()]
            np.testing.assert_allclose(d["state"][m][:, 4:], goal)
    # online: the env's state ends with the simulator's goal
    env = make_env("PushCube", make_planner("PushCube", "relam-gt", cfg), cfg, image_obs=False, goal_obs=True)
    obs, _ = env.reset(options={"task_seed": 1_000_000})
    assert env.observation_space["state"].shape == (7,)
    np.testing.assert_allclose(obs["state"][4:], env.unwrapped.task.goal_position(), atol=1e-6)
    env.close()
    # switching the option off gives other files and runs; a task without a goal says which option to unset
    cfg.iql.goal_observation = False
    assert "goal_observation" not in run_config(cfg, "PushCube", "relam-gt", 0)["iql"]
    assert np.load(relabel_dataset(cfg, "PushCube", "relam-gt", progress=False))["state"].shape[1] == 4
    with pytest.raises(NotImplementedError, match="iql.goal_observation: false"):
        MetaWorldTask.goal_of_state(object.__new__(MetaWorldTask), np.zeros(39))


def test_keypoint_depth_appends_each_keypoints_camera_depth_offline_and_online(tmp_path):
    from relam.data.demos import offline_path
    from relam.data.store import EpisodeSet
    from relam.envs.tracking import GroundTruthTracker
    from relam.rl.env import LKOnlineTracker, ReLAMRewardWrapper
    from relam.rl.iql import run_config
    from relam.rl.mc_awr import load_policy
    from relam.rl.iql import flat_observation
    from relam.rl.ppo import make_env, make_planner
    from relam.rl.relabel import relabel_dataset

    cfg, res, rd = _smoke_iql_run(tmp_path, epochs=1, steps_per_epoch=20, learner="awr-mc", value_steps=10,
                                  goal_observation=True, keypoint_depth=True)
    assert json.loads((rd / "config.json").read_text())["iql"]["keypoint_depth"] is True
    assert res["final_eval"]["episodes"] == 1                       # evaluated online with the depths observed
    assert load_policy(rd / "model.pt").predict(flat_observation(np.zeros(8), np.zeros(8), np.ones(11))[None]).shape \
        == (1, 4)
    # offline: the state ends with the K keypoints' camera z, the z of the tracked 3-D points in the camera frame
    d = dict(np.load(cfg.out / "relabelled" / "PushCube" / "relam-gt.npz"))
    assert d["state"].shape[1] == 4 + 3 + 4 and d["next_state"].shape[1] == 11
    planner = make_planner("PushCube", "relam-gt", cfg)
    with EpisodeSet(offline_path(cfg, "PushCube")) as ds:
        rec, gt = ds[0], ds.groundtruth(0)
        plan = np.asarray(planner(rec.frames[0], {"task_seed": rec.seed}))
    tracker = GroundTruthTracker(plan[0] * cfg.env.image_size, gt["depth0"], gt["seg0"], gt["camera"],
                                 gt["body_poses"][0])
    _, z = gt["camera"].project(tracker.world_points(gt["body_poses"]).reshape(-1, 3))
    z = z.reshape(len(gt["body_poses"]), -1)
    m = d["episode"] == 0
    np.testing.assert_allclose(d["state"][m][:, 7:], z[: m.sum()], rtol=1e-5)
    assert np.all((z > 0.2) & (z < 3.0))                            # metres in front of the camera
    # online: the same layout, the depths of the points the wrapper tracks
    env = make_env("PushCube", planner, cfg, image_obs=False, goal_obs=True, keypoint_depth=True)
    obs, _ = env.reset(options={"task_seed": 1_000_000})
    assert env.observation_space["state"].shape == (11,) and env.observation_space.contains(obs)
    for _ in range(3):   # the hand moves; the points stay in view
        obs, *_ = env.step(np.array([0.5, 0.0, 0.3, 1.0], np.float32))
    task, tracked = env.unwrapped.task, env.tracker._gt                # the wrapper's sim tracker's 3-D points
    _, z_now = task.camera().project(tracked.world_points(task.body_poses()))
    np.testing.assert_allclose(obs["state"][7:], z_now, rtol=1e-5)
    with pytest.raises(ValueError, match="tracker that measures the keypoints' depth"):
        ReLAMRewardWrapper(env.unwrapped, planner, LKOnlineTracker(), 4, image_size=cfg.env.image_size,
                           keypoint_depth=True)
    env.close()
    # 'xyz': the tracked points' world positions instead, offline and online
    cfg.iql.keypoint_depth = "xyz"
    d = dict(np.load(relabel_dataset(cfg, "PushCube", "relam-gt", progress=False)))
    m = d["episode"] == 0
    np.testing.assert_allclose(d["state"][m][:, 7:].reshape(-1, 4, 3),
                               tracker.world_points(gt["body_poses"])[: m.sum()], atol=1e-6)
    env = make_env("PushCube", planner, cfg, image_obs=False, goal_obs=True, keypoint_depth="xyz")
    obs, _ = env.reset(options={"task_seed": 1_000_000})
    assert obs["state"].shape == (7 + 12,) and env.observation_space.contains(obs)
    np.testing.assert_allclose(obs["state"][7:].reshape(4, 3),
                               env.tracker._gt.world_points(env.unwrapped.task.body_poses()), atol=1e-5)
    env.close()
    cfg.iql.keypoint_depth = "z"
    with pytest.raises(ValueError, match="keypoint_depth"):
        make_env("PushCube", planner, cfg, image_obs=False, goal_obs=True, keypoint_depth="z")
    # off: other files and runs, without the depths
    cfg.iql.keypoint_depth = False
    assert "keypoint_depth" not in run_config(cfg, "PushCube", "relam-gt", 0)["iql"]
    assert np.load(relabel_dataset(cfg, "PushCube", "relam-gt", progress=False))["state"].shape[1] == 7


def test_objects_subgoal_observation_hides_the_robot_keypoints_subgoal_in_training_and_evaluation(tmp_path,
                                                                                                   monkeypatch):
    import relam.rl.iql as iql_mod
    from relam.rl.iql import flat_observation, observed_subgoal, transitions

    kp, sg, st = np.linspace(0, 1, 8), np.full(8, 0.5), np.ones(4)
    mask = np.array([False, False, False, True])                      # robot x3, cube x1 (PushCube's parts)
    x = flat_observation(kp, sg, st, mask)
    assert x.shape == flat_observation(kp, sg, st).shape == (28,)     # same layout as the full observation
    assert not x[8:14].any() and not x[16:22].any()                   # the robot's subgoal and difference
    np.testing.assert_array_equal(x[14:16], sg[6:8])
    np.testing.assert_allclose(x[22:24], sg[6:8] - kp[6:8])
    moved_robot, moved_cube = sg.copy(), sg.copy()
    moved_robot[:6] += 0.2
    moved_cube[6:] += 0.2
    np.testing.assert_array_equal(flat_observation(kp, moved_robot, st, mask), x)
    assert not np.array_equal(flat_observation(kp, moved_cube, st, mask), x)
    with pytest.raises(ValueError, match="subgoal mask has 3 keypoints"):
        flat_observation(kp, sg, st, mask[:3])

    seen = []
    original = iql_mod.evaluate
    monkeypatch.setattr(iql_mod, "evaluate", lambda *a, **k: seen.append(k["with_subgoal"]) or original(*a, **k))
    cfg, res, rd = _smoke_iql_run(tmp_path, epochs=1, steps_per_epoch=20, learner="awr-mc", value_steps=10,
                                  subgoal_observation="objects")
    np.testing.assert_array_equal(observed_subgoal(cfg, "PushCube", "relam-gt"), mask)
    assert json.loads((rd / "config.json").read_text())["iql"]["subgoal_observation"] == "objects"
    assert seen and all(np.array_equal(s, mask) for s in seen)       # evaluated with the mask it trained with
    data = transitions(cfg.out / "relabelled" / "PushCube" / "relam-gt.npz", "reward", with_subgoal=mask)
    assert data["observations"].shape[1] == 28 and not data["observations"][:, 8:14].any()
    assert data["observations"][:, 14:16].any()
    # for generated plans only: relam / env-reward observe the objects' subgoal, relam-gt (exact plans) all of it
    cfg.iql.subgoal_observation, cfg.iql.subgoal_observation_generated = True, "objects"
    assert observed_subgoal(cfg, "PushCube", "relam-gt") is True
    for method in ("relam", "env-reward"):
        np.testing.assert_array_equal(observed_subgoal(cfg, "PushCube", method), mask)
        assert iql_mod._iql_settings(cfg.iql, method)["subgoal_observation"] == "objects"   # a run config's "iql"
    gt_config = iql_mod.run_config(cfg, "PushCube", "relam-gt", 0)["iql"]
    assert "subgoal_observation" not in gt_config and "subgoal_observation_generated" not in gt_config
    cfg.iql.subgoal_lift = True
    with pytest.raises(ValueError, match="observes 'objects'"):
        iql_mod.train_run(cfg, "PushCube", "relam", 0)
    cfg.iql.subgoal_lift, cfg.iql.subgoal_observation_generated = False, "robot"
    with pytest.raises(ValueError, match="choose true, false or 'objects'"):
        iql_mod.train_run(cfg, "PushCube", "relam", 0)
    assert (rd / "model.pt").exists()                                  # refused before it touched the finished run


def test_a_policy_without_the_subgoal_observation_trains_evaluates_and_ignores_the_subgoal(tmp_path):
    from relam.rl.iql import flat_observation, run_config, transitions
    from relam.rl.mc_awr import load_policy

    kp, sg, st = np.linspace(0, 1, 8), np.full(8, 0.5), np.ones(4)
    assert flat_observation(kp, sg, st).shape == (28,) and flat_observation(kp, sg, st, False).shape == (12,)
    np.testing.assert_array_equal(flat_observation(kp, sg, st, False), flat_observation(kp, sg + 0.3, st, False))
    cfg, res, rd = _smoke_iql_run(tmp_path, epochs=1, steps_per_epoch=20, learner="awr-mc", value_steps=10,
                                  subgoal_observation=False)
    assert json.loads((rd / "config.json").read_text())["iql"]["subgoal_observation"] is False
    assert res["final_eval"]["episodes"] == 1                          # evaluated with the same 2K + S inputs
    policy = load_policy(rd / "model.pt")
    assert policy.predict(flat_observation(kp, sg, st, False)[None]).shape == (1, 4)
    with pytest.raises(RuntimeError):                                  # the full observation no longer fits it
        policy.predict(flat_observation(kp, sg, st)[None])
    data = transitions(cfg.out / "relabelled" / "PushCube" / "relam-gt.npz", "reward", with_subgoal=False)
    assert data["observations"].shape[1] == 12
    cfg.iql.subgoal_observation = True                                 # on (the default): the key leaves the config
    assert "subgoal_observation" not in run_config(cfg, "PushCube", "relam-gt", 0)["iql"]
    cfg.iql.subgoal_observation, cfg.iql.subgoal_lift = False, True
    with pytest.raises(ValueError, match="subgoal_observation"):
        from relam.rl.iql import train_run
        train_run(cfg, "PushCube", "relam-gt", 0)
    assert (rd / "model.pt").exists()                                  # refused before it touched the finished run


def test_relative_goal_appends_each_object_keypoints_offsets_to_the_goal_and_the_hand(tmp_path, monkeypatch):
    import relam.rl.iql as iql_mod
    from relam.rl.iql import flat_observation, relative_features, relative_objects, run_config, transitions
    from relam.rl.mc_awr import load_policy

    hand, goal = np.array([0.1, 0.2, 0.3]), np.array([0.5, -0.1, 0.4])
    points = np.arange(12, dtype=float).reshape(4, 3) / 10            # robot x3, cube last (PushCube's parts)
    st = np.concatenate([hand, [0.04], goal, points.ravel()])           # proprio 4, goal 3, xyz 3K
    mask = np.array([False, False, False, True])
    rel = relative_features(st, mask)
    np.testing.assert_allclose(rel, np.concatenate([goal - points[3], points[3] - hand]), atol=1e-6)
    kp, sg = np.linspace(0, 1, 8), np.full(8, 0.5)
    x = flat_observation(kp, sg, st, True, mask)
    np.testing.assert_array_equal(x[:-6], flat_observation(kp, sg, st))  # appended after the usual layout
    np.testing.assert_array_equal(x[-6:], rel)
    assert flat_observation(kp, sg, st, False, mask).shape == (8 + 19 + 6,)
    higher = st.copy()
    higher[6] += 0.2                                                    # goal z: only goal - cube moves
    np.testing.assert_allclose(relative_features(higher, mask) - rel, [0, 0, 0.2, 0, 0, 0], atol=1e-6)
    two = relative_features(np.stack([st, higher]), np.array([False, True, False, True]))
    assert two.shape == (2, 12)                                         # 6 per object keypoint, batched
    with pytest.raises(ValueError, match="keypoint_depth: xyz"):
        relative_features(np.ones(11), mask)                            # a state with camera depths only

    seen = []
    original = iql_mod.evaluate
    monkeypatch.setattr(iql_mod, "evaluate", lambda *a, **k: seen.append(k["relative"]) or original(*a, **k))
    cfg, res, rd = _smoke_iql_run(tmp_path, epochs=1, steps_per_epoch=20, learner="awr-mc", value_steps=10,
                                  goal_observation=True, keypoint_depth="xyz", relative_goal=True)
    assert json.loads((rd / "config.json").read_text())["iql"]["relative_goal"] is True
    assert res["final_eval"]["episodes"] == 1 and seen and all(np.array_equal(s, mask) for s in seen)
    d = dict(np.load(cfg.out / "relabelled" / "PushCube" / "relam-gt.npz"))
    data = transitions(cfg.out / "relabelled" / "PushCube" / "relam-gt.npz", "reward", relative=mask)
    assert data["observations"].shape[1] == 24 + 19 + 6
    cube = d["state"][:, -3:]
    np.testing.assert_allclose(data["observations"][:, -6:-3], d["state"][:, 4:7] - cube, atol=1e-6)
    np.testing.assert_allclose(data["observations"][:, -3:], cube - d["state"][:, :3], atol=1e-6)
    policy = load_policy(rd / "model.pt")
    assert policy.predict(data["observations"][:1]).shape == (1, 4)
    with pytest.raises(RuntimeError):                                   # the observation without them no longer fits
        policy.predict(data["observations"][:1, :-6])
    # settings whose state lacks what it subtracts are refused, naming the fix
    cfg.iql.keypoint_depth = True
    with pytest.raises(ValueError, match="keypoint_depth: xyz, or relative_goal: false"):
        relative_objects(cfg, "PushCube")
    with pytest.raises(ValueError, match="relative_goal"):
        iql_mod.train_run(cfg, "PushCube", "relam-gt", 1)
    cfg.iql.keypoint_depth, cfg.iql.subgoal_lift = "xyz", True
    with pytest.raises(ValueError, match="subgoal_lift"):
        relative_objects(cfg, "PushCube")
    cfg.iql.subgoal_lift, cfg.iql.relative_goal = False, False         # off: runs keep their earlier config
    assert relative_objects(cfg, "PushCube") is None
    assert "relative_goal" not in run_config(cfg, "PushCube", "relam-gt", 0)["iql"]
