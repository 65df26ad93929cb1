"""Offline relabelling (SPEC §7) of a tiny recorded PushCube dataset with ground-truth keypoint subgoals."""
import numpy as np

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
        # each reward = f(mean distance of the NEXT keypoints to the current target) + bonuses
        dist = np.linalg.norm((nkp - sg).reshape(len(kp), -1, 2), axis=-1)
        expect = f(dist.mean(1)) + cfg.reward.stage_bonus * d["stage_reached"][m] \
            + cfg.reward.success_bonus * d["success"][m]
        np.testing.assert_allclose(d["reward"][m], expect, rtol=1e-5, atol=1e-5)
        assert (dist.max(1)[d["stage_reached"][m]] < cfg.reward.delta).all()   # max criterion
        assert d["terminal"][m].sum() + d["timeout"][m].sum() == 1 and (d["terminal"][m] | d["timeout"][m])[-1]
        assert d["terminal"][m][-1] == d["success"][m][-1]
    s = dataset_summary(path)
    assert s["episodes"] == 2 and 0 <= s["episodes_last_subgoal"] <= 1 and 0 <= s["episodes_success"] <= 1
    mtime = path.stat().st_mtime_ns
    assert relabel_dataset(cfg, "PushCube", "relam-gt", progress=False) == path and path.stat().st_mtime_ns == mtime
