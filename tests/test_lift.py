"""Subgoal lifting (relam.rl.lift): robot keypoints -> end-effector xyz, applied to the subgoal."""
import json

import numpy as np
import pytest

from relam.rl.lift import LIFT_SCALE, LiftedPolicy, SubgoalLift


def _camera(p):
    """Three robot points around an end effector p (N, 3) and one object point, seen by a pinhole camera looking
    along +y: depth is visible only through perspective (the spread of the robot's points)."""
    offsets = np.array([[0.0, 0.0, 0.0], [0.1, 0.0, 0.1], [-0.1, 0.0, 0.2]])
    pts = p[:, None, :] + offsets[None]
    depth = pts[..., 1] + 1.5
    uv = np.stack([pts[..., 0] / depth, pts[..., 2] / depth], -1) + 0.5
    obj = np.full((len(p), 1, 2), 0.3)
    return np.concatenate([uv, obj], 1).reshape(len(p), 8).astype(np.float32)


def _flat(kp, sg, proprio):
    from relam.rl.iql import flat_observation
    return flat_observation(kp, sg, proprio)


def test_lift_recovers_depth_from_the_robot_keypoints():
    rng = np.random.default_rng(0)
    p = rng.uniform(-0.2, 0.2, (3000, 3))
    proprio = np.concatenate([p, np.zeros((3000, 1))], 1)
    lift = SubgoalLift([0, 1, 2], 4, steps=3000).fit(_camera(p[:2500]), proprio[:2500])
    err = np.abs(lift.predict(_camera(p[2500:])) - p[2500:])
    baseline = np.abs(p[2500:] - p[:2500].mean(0))
    assert err[:, 1].mean() < 0.2 * baseline[:, 1].mean()      # depth, which no single point shows
    assert err.mean() < 0.1 * baseline.mean() and lift.fit_error < 0.02


def test_augment_appends_the_scaled_offset_of_the_lifted_subgoal_only(tmp_path):
    rng = np.random.default_rng(1)
    p = rng.uniform(-0.2, 0.2, (600, 3))
    proprio = np.concatenate([p, np.zeros((600, 1))], 1)
    lift = SubgoalLift([0, 1, 2], 4, steps=300).fit(_camera(p), proprio)
    kp, sg = _camera(p[:5]), _camera(p[5:10])
    x = _flat(kp, sg, proprio[:5])
    out = lift.augment(x)
    assert out.shape == (5, x.shape[1] + 3)
    np.testing.assert_array_equal(out[:, :-3], x)
    np.testing.assert_allclose(out[:, -3:], LIFT_SCALE * (lift.predict(sg) - p[:5]), rtol=1e-5, atol=1e-5)
    moved_kp = _flat(_camera(p[10:15]), sg, proprio[:5])            # where the robot IS does not enter the lift
    np.testing.assert_allclose(lift.augment(moved_kp)[:, -3:], out[:, -3:], atol=1e-5)
    sg_obj = sg.copy()
    sg_obj[:, 6:] += 0.2                                            # nor does the object's subgoal keypoint
    np.testing.assert_allclose(lift.augment(_flat(kp, sg_obj, proprio[:5]))[:, -3:], out[:, -3:], atol=1e-5)
    sg_robot = sg.copy()
    sg_robot[:, :6] += 0.05                                         # the robot's subgoal does
    assert np.abs(lift.augment(_flat(kp, sg_robot, proprio[:5]))[:, -3:] - out[:, -3:]).max() > 0.05
    with_image = np.concatenate([np.ones((5, 12), np.float32), x], 1)   # a pixel observation's image comes first
    np.testing.assert_allclose(lift.augment(with_image)[:, -3:], out[:, -3:], atol=1e-6)
    np.testing.assert_allclose(lift.augment(x[0]), out[0], atol=1e-6)   # one observation
    lift.save(tmp_path / "lift.pt")
    np.testing.assert_array_equal(SubgoalLift.load(tmp_path / "lift.pt").augment(x), out)

    class Echo:
        def predict(self, z):
            return z
    np.testing.assert_array_equal(LiftedPolicy(Echo(), lift).predict(x), out)


def test_lift_rejects_bad_input_clearly():
    with pytest.raises(ValueError, match="robot's keypoint indices"):
        SubgoalLift([], 4)
    with pytest.raises(ValueError, match="robot's keypoint indices"):
        SubgoalLift([0, 4], 4)
    lift = SubgoalLift([0], 4, steps=1)
    with pytest.raises(RuntimeError, match="before fit"):
        lift.predict(np.zeros((1, 8)))
    with pytest.raises(ValueError, match=r"\(N, 8\) keypoints"):
        lift.fit(np.zeros((10, 6)), np.zeros((10, 4)))
    lift.fit(np.random.default_rng(0).random((10, 8)), np.zeros((10, 4)))
    with pytest.raises(ValueError, match="another keypoint count"):
        lift.augment(np.zeros((2, 20)))


def test_an_offline_run_with_the_lift_saves_it_and_resumes_with_it(tmp_path):
    from test_relabel import _smoke_iql_run

    from relam.rl.iql import train_run

    cfg, res, rd = _smoke_iql_run(tmp_path, n=1, epochs=1, steps_per_epoch=10, learner="awr-mc", value_steps=10,
                                  subgoal_lift=True)
    assert res["final_eval"]["episodes"] == 1 and 0 <= res["dataset"]["lift_mean_error_m"] < 0.5
    assert json.loads((rd / "config.json").read_text())["iql"]["subgoal_lift"] is True
    saved = (rd / "lift.pt").read_bytes()
    cfg.iql.epochs = 2                                  # resuming reads the saved lift, it does not refit
    assert train_run(cfg, "PushCube", "relam-gt", 0)["resumed"] and (rd / "lift.pt").read_bytes() == saved
    cfg.iql.subgoal_lift = False                        # without it the run starts over and drops the lift
    again = train_run(cfg, "PushCube", "relam-gt", 0)
    assert not again["resumed"] and not (rd / "lift.pt").exists() and "lift_mean_error_m" not in again["dataset"]
    assert "subgoal_lift" not in json.loads((rd / "config.json").read_text())["iql"]


def test_ppo_with_the_lift_fits_it_on_the_demos_and_observes_it(tmp_path):
    from test_ppo import _tiny_cfg

    from relam.data.demos import collect_demos
    from relam.envs import make_task
    from relam.perception.subgoals import build_subgoal_dataset
    from relam.rl.lift import LiftObservation, demo_pairs
    from relam.rl.ppo import make_env, make_planner, train_run

    cfg = _tiny_cfg(tmp_path, subgoal_lift=True, total_steps=200, n_steps=100, eval_every=200)
    collect_demos(cfg, "drawer-open", progress=False)
    build_subgoal_dataset(cfg, "drawer-open", progress=False)
    task = make_task("drawer-open", image_size=cfg.env.image_size)
    keypoints, proprio = demo_pairs(cfg, task)
    task.close()
    assert keypoints.shape[1] == 8 and proprio.shape[1] == 4 and len(keypoints) == len(proprio) > 3 * 20
    res = train_run(cfg, "drawer-open", "relam-gt", 0)
    rd = cfg.out / "runs" / "drawer-open" / "relam-gt" / "seed0"
    assert res["steps"] == 200 and json.loads((rd / "config.json").read_text())["ppo"]["subgoal_lift"] is True
    lift = SubgoalLift.load(rd / "lift.pt")
    assert lift.fit_error < 0.02                     # the demos' hand, from its keypoints, to within 2 cm
    env = make_env("drawer-open", make_planner("drawer-open", "relam-gt", cfg), cfg, lift=lift)
    obs, _ = env.reset(options={"task_seed": 5})
    np.testing.assert_allclose(obs["lift"], LIFT_SCALE * (lift.predict(obs["subgoal"][None])[0] - obs["state"][:3]),
                               rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="K = 2"):
        LiftObservation(env.env, SubgoalLift([0], 2, steps=1))
    cfg.ppo.subgoal_lift = False                     # off: absent from the run config, the run starts over
    again = train_run(cfg, "drawer-open", "relam-gt", 0)
    assert not again["resumed"] and not (rd / "lift.pt").exists()
    assert "subgoal_lift" not in json.loads((rd / "config.json").read_text())["ppo"]
