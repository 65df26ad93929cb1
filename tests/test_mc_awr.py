"""The 'awr-mc' offline learner (relam.rl.mc_awr): Monte-Carlo returns, advantage weights, filtering, resumption."""
import numpy as np
import pytest
import torch

from relam.rl.mc_awr import MCAWR, TemporalEnsemble, advantage_weights, chunk_targets, load_policy, mc_returns


def test_mc_returns_are_discounted_within_each_trajectory_only():
    episode = np.array([0, 0, 0, 1, 1])
    rewards = np.array([-1.0, -1.0, 10.0, -1.0, -1.0])
    # ep 0: G2 = 10, G1 = -1 + 0.5 * 10 = 4, G0 = -1 + 0.5 * 4 = 1; ep 1 (a timeout: no bootstrap): -1.5, -1
    np.testing.assert_allclose(mc_returns(rewards, episode, 0.5), [1.0, 4.0, 10.0, -1.5, -1.0])
    with pytest.raises(ValueError, match="contiguous"):
        mc_returns(rewards, np.array([0, 1, 0, 1, 1]), 0.5)
    with pytest.raises(ValueError, match="episode ids"):
        mc_returns(rewards, episode[:3], 0.5)


def test_advantage_weights_grow_with_the_advantage_and_are_clipped():
    adv = torch.tensor([-2.0, -1.0, 0.0, 1.0, 2.0])
    w = advantage_weights(adv, 1.0, 100.0)
    assert torch.all(w[1:] > w[:-1])
    np.testing.assert_allclose(w[3] / w[2], np.exp(1.0 / adv.std().item()), rtol=1e-5)
    assert torch.all(advantage_weights(adv, 0.0, 100.0) == 1.0)          # beta 0: plain cloning
    assert advantage_weights(adv, 50.0, 3.0).max() == 3.0
    # scale-free: multiplying the returns by 10 gives the same weights
    np.testing.assert_allclose(advantage_weights(10 * adv, 1.0, 100.0), w, rtol=1e-5)


def _two_behaviours(n_traj=40, length=10, seed=0):
    """Trajectories over the same observations: half act +0.5 and end with a success bonus, half act -0.5 and
    do not. Cloning everything averages to 0; weighting by Monte-Carlo advantage must lean to +0.5."""
    rng = np.random.default_rng(seed)
    obs = rng.normal(size=(n_traj * length, 3)).astype(np.float32)
    good = np.repeat(np.arange(n_traj) % 2 == 0, length)
    actions = np.where(good, 0.5, -0.5)[:, None].repeat(2, 1).astype(np.float32)
    rewards = np.full(n_traj * length, -1.0, np.float32)
    rewards[length - 1::length] += np.where(np.arange(n_traj) % 2 == 0, 10.0, 0.0)
    episode = np.repeat(np.arange(n_traj), length)
    return obs, actions, mc_returns(rewards, episode, 0.99), good


def _learner(beta, seed=0, **kw):
    obs, actions, returns, good = _two_behaviours()
    settings = dict(hidden=(32,), learning_rate=3e-3, batch_size=64, beta=beta, value_steps=300, seed=seed) | kw
    return MCAWR(obs, actions, returns, **settings), obs, good


def test_advantage_weighting_clones_the_successful_behaviour_where_plain_cloning_averages():
    plain, obs, good = _learner(0.0)
    plain.fit(400)
    weighted, _, _ = _learner(1.0)
    weighted.fit(400)
    assert abs(plain.predict(obs).mean()) < 0.1
    assert weighted.predict(obs).mean() > 0.25
    assert weighted.weight_share(good) > 0.75 and plain.weight_share(good) == pytest.approx(0.5)


def test_a_resumed_learner_continues_exactly_and_the_saved_policy_loads(tmp_path):
    straight, obs, _ = _learner(1.0, dropout=0.1)
    straight.fit(30)
    straight.fit(30)
    first, _, _ = _learner(1.0, dropout=0.1)
    first.fit(30)
    first.save(tmp_path / "ck.pt")
    torch.rand(100)   # other users of the global random stream do not change the learner's dropout masks
    resumed = _learner(1.0, dropout=0.1)[0].load_state(tmp_path / "ck.pt")
    resumed.fit(30)
    np.testing.assert_allclose(resumed.predict(obs), straight.predict(obs), atol=1e-6)
    assert resumed.steps == 60
    resumed.save(tmp_path / "model.pt")
    np.testing.assert_allclose(load_policy(tmp_path / "model.pt").predict(obs), straight.predict(obs), atol=1e-6)
    other, _, _ = _learner(3.0, dropout=0.1)
    with pytest.raises(ValueError, match="delete it to start over"):
        other.load_state(tmp_path / "ck.pt")


def test_pixel_observations_go_through_the_cnn(tmp_path):
    rng = np.random.default_rng(0)
    img = rng.random((20, 3 * 48 * 48), dtype=np.float32)
    obs = np.concatenate([img, rng.normal(size=(20, 5)).astype(np.float32)], 1)
    learner = MCAWR(obs, rng.uniform(-1, 1, (20, 2)), rng.normal(size=20), hidden=(16,), value_steps=5,
                    value_batch_size=8, batch_size=8, image_size=48)
    learner.fit(3)
    learner.save(tmp_path / "m.pt")
    y = obs.copy()
    y[:, :3 * 48 * 48] = 0.0
    policy = load_policy(tmp_path / "m.pt")
    np.testing.assert_allclose(policy.predict(obs), learner.predict(obs), atol=1e-6)
    assert not np.allclose(policy.predict(obs), policy.predict(y))


def test_dropout_trains_the_policy_but_acting_is_deterministic(tmp_path):
    learner, obs, _ = _learner(1.0, dropout=0.5)
    learner.fit(5)
    assert any(isinstance(m, torch.nn.Dropout) for m in learner.policy.mlp)
    np.testing.assert_array_equal(learner.predict(obs), learner.predict(obs))
    learner.policy.train()   # in training mode the same input gives different outputs
    x = torch.as_tensor(obs[:8])
    assert not torch.allclose(learner.policy(x), learner.policy(x))
    learner.save(tmp_path / "m.pt")
    np.testing.assert_allclose(load_policy(tmp_path / "m.pt").predict(obs), learner.predict(obs), atol=1e-6)


def test_chunk_targets_are_the_next_actions_of_the_same_trajectory_only():
    actions = np.arange(5, dtype=np.float32)[:, None]
    targets, mask = chunk_targets(actions, np.array([0, 0, 0, 1, 1]), 3)
    np.testing.assert_array_equal(targets[..., 0], [[0, 1, 2], [1, 2, 1], [2, 2, 2], [3, 4, 3], [4, 4, 4]])
    np.testing.assert_array_equal(mask, [[1, 1, 1], [1, 1, 0], [1, 0, 0], [1, 1, 0], [1, 0, 0]])


def test_temporal_ensemble_averages_every_chunk_that_covers_this_step():
    chunks = [np.array([[1.0], [2.0], [3.0]]) * 10 ** j for j in range(4)]
    flat = TemporalEnsemble(3, decay=0.0)
    # step t sees chunk j's entry t - j for the last 3 chunks: 1; (2 + 10) / 2; (3 + 20 + 100) / 3; (30 + 200 + 1000) / 3
    np.testing.assert_allclose([flat(c)[0] for c in chunks], [1.0, 6.0, 41.0, 410.0], rtol=1e-6)
    flat.reset()                                        # a new episode forgets the old chunks
    assert flat(chunks[2])[0] == pytest.approx(100.0)
    decayed = TemporalEnsemble(3, decay=0.5)
    decayed(chunks[0])
    w = np.exp(-0.5)                                    # the older chunk weighs more (ACT)
    assert decayed(chunks[1])[0] == pytest.approx((2.0 + w * 10.0) / (1 + w), rel=1e-6)


def test_a_chunked_learner_clones_acts_with_memory_and_loads_the_same(tmp_path):
    episode = np.repeat(np.arange(40), 10)
    with pytest.raises(ValueError, match="episode="):
        _learner(1.0, chunk=3)
    chunked, obs, good = _learner(1.0, chunk=3, episode=episode)
    chunked.fit(400)
    for wrong in (obs[:2], obs[0]):                     # a batch of two, or one observation without its batch axis
        with pytest.raises(ValueError, match=r"one observation per call.*\(1, obs_dim\)"):
            chunked.predict(wrong)
    firsts = []
    for o in obs[good][:50]:                            # each a first step: the chunk's own first action
        chunked.reset()
        firsts.append(chunked.predict(o[None])[0])
    assert np.mean(firsts) > 0.25                       # still clones the successful behaviour
    chunked.reset()
    run = [chunked.predict(o[None])[0] for o in obs[:5]]
    chunked.reset()
    assert not np.allclose(chunked.predict(obs[1:2])[0], run[1])   # step 1 also heard step 0's chunk
    chunked.save(tmp_path / "model.pt")
    loaded = load_policy(tmp_path / "model.pt")
    loaded.reset()
    np.testing.assert_allclose([loaded.predict(o[None])[0] for o in obs[:5]], run, atol=1e-6)


def test_an_ensemble_acts_on_its_members_mean_trains_each_on_its_own_rows_and_loads_the_same(tmp_path):
    from relam.rl.mc_awr import _EnsembleNet
    obs, actions, returns, good = _two_behaviours()
    episode = np.repeat(np.arange(40), 10)   # as _two_behaviours' trajectories
    ens = MCAWR(obs, actions, returns, hidden=(32,), learning_rate=3e-3, batch_size=64, beta=1.0, value_steps=300,
                seed=0, members=3, chunk=2, episode=episode)
    assert isinstance(ens.policy, _EnsembleNet) and ens.settings["members"] == 3
    rows = ens._policy_batch()
    assert rows.shape == (3, 64) and not torch.equal(rows[0], rows[1])   # each member its own minibatch
    with torch.no_grad():
        x = torch.as_tensor(obs[:5])
        members = torch.tanh(ens.policy.eval()(x))                          # (3, 5, chunk * A)
    assert not torch.allclose(members[0], members[1])                     # members start from their own weights
    np.testing.assert_allclose(ens.predict(obs[:1]), members[:, 0].mean(0).view(2, -1)[0][None].numpy(), atol=1e-6)
    ens.reset()
    ens.fit(200)
    ens.reset()
    assert ens.predict(obs[good][:1]).mean() > 0.25                      # still clones the better behaviour
    ens.save(tmp_path / "model.pt")
    loaded, ens_again = load_policy(tmp_path / "model.pt"), MCAWR(
        obs, actions, returns, hidden=(32,), learning_rate=3e-3, batch_size=64, beta=1.0, value_steps=300, seed=0,
        members=3, chunk=2, episode=episode).load_state(tmp_path / "model.pt")
    for policy in (loaded, ens_again):
        policy.reset(), ens.reset()
        np.testing.assert_allclose([policy.predict(o[None]) for o in obs[:4]], [ens.predict(o[None]) for o in obs[:4]],
                                   atol=1e-6)
    with pytest.raises(ValueError, match="keypoint observation only"):
        MCAWR(np.zeros((4, 3 * 4 * 4 + 2), np.float32), np.zeros((4, 2)), np.zeros(4), image_size=4, members=2)


def test_ema_policy_acts_on_the_average_of_the_trained_weights_resumes_exactly_and_loads_the_same(tmp_path):
    learner, obs, good = _learner(1.0, dropout=0.1, ema=0.9)
    assert learner.settings["ema"] == 0.9 and "ema" not in _learner(1.0)[0].settings   # absent when off
    start = [p.detach().clone() for p in learner.acting.parameters()]
    learner.fit(1)
    # one step: acting = 0.9 * before + 0.1 * trained (the trained weights moved; the average a tenth of that)
    for a, p, s in zip(learner.acting.parameters(), learner.policy.parameters(), start):
        torch.testing.assert_close(a, 0.9 * s + 0.1 * p)
    assert not torch.allclose(next(learner.acting.parameters()), next(learner.policy.parameters()))
    learner.fit(299)
    assert learner.predict(obs[good]).mean() > 0.25                      # the average still clones the better half
    with torch.no_grad():   # and it is the average that acts, not the trained weights
        trained = torch.tanh(learner.policy.eval()(torch.as_tensor(obs[:5]))).numpy()
    assert not np.allclose(learner.predict(obs[:5]), trained, atol=1e-4)
    # resumed from a checkpoint it continues exactly (both weight sets are saved); model.pt acts as the average
    straight, _, _ = _learner(1.0, dropout=0.1, ema=0.9)
    straight.fit(60)
    first, _, _ = _learner(1.0, dropout=0.1, ema=0.9)
    first.fit(30)
    first.save(tmp_path / "ck.pt")
    resumed = _learner(1.0, dropout=0.1, ema=0.9)[0].load_state(tmp_path / "ck.pt")
    resumed.fit(30)
    np.testing.assert_allclose(resumed.predict(obs), straight.predict(obs), atol=1e-6)
    resumed.save(tmp_path / "model.pt")
    np.testing.assert_allclose(load_policy(tmp_path / "model.pt").predict(obs), straight.predict(obs), atol=1e-6)
    with pytest.raises(ValueError, match=r"in \[0, 1\)"):
        _learner(1.0, ema=1.0)
