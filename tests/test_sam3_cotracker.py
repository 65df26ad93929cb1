"""SAM 3 segmenter and CoTracker tracker: real loading code with tiny random weights / fake modules (offline)."""
import json
import sys

import numpy as np
import pytest
import torch

from relam.perception.base import PerceptionError, make_segmenter, make_tracker

torch.set_num_threads(1)

PROMPTS = ["robot arm", "red cube"]


# ----------------------------------------------------------------------------------------------- SAM 3
def _tiny_vocab():
    """Byte-level BPE vocabulary with only single letters (no merges): enough to tokenise the prompts."""
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in "abcdefghijklmnopqrstuvwxyz":
        vocab[c] = len(vocab)
    for c in "abcdefghijklmnopqrstuvwxyz":
        vocab[c + "</w>"] = len(vocab)
    return vocab


def _tiny_sam3_config(vocab_size):
    from transformers.models.sam3.configuration_sam3 import (
        Sam3Config, Sam3DETRDecoderConfig, Sam3DETREncoderConfig, Sam3GeometryEncoderConfig,
        Sam3MaskDecoderConfig, Sam3VisionConfig, Sam3ViTConfig)

    small = dict(num_attention_heads=4, intermediate_size=64)
    # 112 px input = 8x8 patches of 14 px; 4x4 attention windows, layer 1 global; position table for 112 px
    vit = Sam3ViTConfig(hidden_size=32, num_hidden_layers=2, image_size=112, patch_size=14, window_size=4,
                        global_attn_indexes=[1], pretrain_image_size=112, **small)
    vision = Sam3VisionConfig(backbone_config=vit, fpn_hidden_size=32)
    text = dict(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, projection_dim=32, num_hidden_layers=1,
                num_attention_heads=4, max_position_embeddings=32, hidden_act="gelu",
                bos_token_id=0, eos_token_id=1, pad_token_id=1)
    return Sam3Config(
        vision_config=vision, text_config=text,
        geometry_encoder_config=Sam3GeometryEncoderConfig(hidden_size=32, num_layers=1, **small),
        detr_encoder_config=Sam3DETREncoderConfig(hidden_size=32, num_layers=1, **small),
        detr_decoder_config=Sam3DETRDecoderConfig(hidden_size=32, num_layers=1, num_queries=8, **small),
        mask_decoder_config=Sam3MaskDecoderConfig(hidden_size=32, num_upsampling_stages=2, num_attention_heads=4))


@pytest.fixture(scope="module")
def tiny_sam3_dir(tmp_path_factory):
    """A SAM 3 checkpoint directory as `huggingface-cli download` would give, with tiny random weights:
    config.json + model.safetensors (save_pretrained), a CLIP tokenizer, and preprocessor_config.json (written by
    hand: Sam3ImageProcessor is a torchvision class and cannot be instantiated without torchvision)."""
    from transformers import CLIPTokenizer, Sam3Model

    d = tmp_path_factory.mktemp("tiny_sam3")
    vocab = _tiny_vocab()
    torch.manual_seed(0)
    Sam3Model(_tiny_sam3_config(len(vocab))).save_pretrained(d)
    CLIPTokenizer(vocab=vocab, merges=[]).save_pretrained(d)
    (d / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "Sam3ImageProcessor", "processor_class": "Sam3Processor",
        "size": {"height": 112, "width": 112}, "mask_size": {"height": 32, "width": 32},
        "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5], "rescale_factor": 1 / 255,
        "do_resize": True, "do_rescale": True, "do_normalize": True, "do_convert_rgb": True, "resample": 2}))
    return d


def _frame(h=128, w=128):
    """Synthetic scene: grey background, a dark 'arm' bar and a red cube."""
    f = np.full((h, w, 3), 170, np.uint8)
    f[10:70, w // 2 - 6:w // 2 + 6] = (60, 60, 70)
    f[h - 40:h - 20, 20:40] = (220, 30, 30)
    return f


def test_sam3_tiny_checkpoint_end_to_end(tiny_sam3_dir):
    from relam.perception.sam3 import Sam3Segmenter

    seg = Sam3Segmenter(model=str(tiny_sam3_dir))
    masks = seg(_frame(), PROMPTS)
    assert set(masks) == set(PROMPTS)
    for m in masks.values():
        assert m.shape == (128, 128) and m.dtype == bool


def test_sam3_prompts_reach_model_and_masks_resized(tiny_sam3_dir, monkeypatch):
    # threshold 0 keeps every instance, so the union/resize path runs on real (random) mask logits
    seg = make_segmenter("sam3", model=str(tiny_sam3_dir), threshold=0.0)
    seen = []
    forward = seg.model.forward

    def spy(*args, **kwargs):
        seen.append(kwargs["input_ids"].clone())
        return forward(*args, **kwargs)

    monkeypatch.setattr(seg.model, "forward", spy)
    masks = seg(_frame(96, 160), PROMPTS)
    assert [m.shape for m in masks.values()] == [(96, 160)] * 2 and all(m.dtype == bool for m in masks.values())
    assert any(m.any() for m in masks.values())  # 8 instances kept, sigmoid masks -> something is on
    assert len(seen) == 2 and seen[0].shape == (1, 32) and not torch.equal(seen[0], seen[1])


def test_sam3_env_var_and_bad_frames(tiny_sam3_dir, monkeypatch):
    from relam.perception.sam3 import Sam3Segmenter

    monkeypatch.setenv("RELAM_SAM3_MODEL", str(tiny_sam3_dir))
    seg = Sam3Segmenter()
    assert seg.source == str(tiny_sam3_dir)
    assert seg(_frame(), []) == {}
    with pytest.raises(PerceptionError, match="uint8"):
        seg(_frame().astype(np.float32), PROMPTS)
    with pytest.raises(PerceptionError, match=r"\(H, W, 3\)"):
        seg(_frame()[..., 0], PROMPTS)
    with pytest.raises(PerceptionError, match="non-empty strings"):
        seg(_frame(), ["robot arm", ""])


def test_sam3_prebuilt_objects_skip_loading(tiny_sam3_dir, monkeypatch):
    from relam.perception.sam3 import Sam3Segmenter

    loaded = Sam3Segmenter(model=str(tiny_sam3_dir))
    monkeypatch.setenv("RELAM_SAM3_MODEL", "/nonexistent")  # would fail if anything were loaded
    seg = Sam3Segmenter(model_obj=loaded.model, processor_obj=loaded.processor)
    masks = seg(_frame(), PROMPTS)
    assert all(m.shape == (128, 128) and m.dtype == bool for m in masks.values())


def test_sam3_missing_weights_message():
    from relam.perception.sam3 import Sam3Segmenter

    with pytest.raises(PerceptionError) as e:
        Sam3Segmenter(model="/nonexistent")
    msg = str(e.value)
    assert "/nonexistent" in msg and "huggingface-cli download facebook/sam3" in msg
    assert "RELAM_SAM3_MODEL" in msg and "make_segmenter('sim')" in msg


def test_sam3_default_hub_id_offline_fails_fast(monkeypatch):
    from relam.perception.sam3 import Sam3Segmenter

    monkeypatch.delenv("RELAM_SAM3_MODEL", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # not in the local cache + offline -> no 20 s of network retries
    with pytest.raises(PerceptionError, match="facebook/sam3.*make_segmenter\\('sim'\\)"):
        Sam3Segmenter()


# ----------------------------------------------------------------------------------------------- CoTracker
VEL = np.array([3.0, -2.0])  # px per frame, in both conventions


class FakeCoTracker(torch.nn.Module):
    """CoTracker3 predictor call convention; moves every query by VEL per frame in CoTracker's coordinates."""

    def __init__(self, visibility="float"):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.visibility, self.calls = visibility, []

    def forward(self, video, queries):
        self.calls.append((video.clone(), queries.clone()))
        t_len = video.shape[1]
        t = torch.arange(t_len, dtype=torch.float32)[:, None, None]
        tracks = queries[0, None, :, 1:] + t * torch.tensor(VEL, dtype=torch.float32)  # (T, N, 2)
        vis = torch.ones(t_len, queries.shape[1])
        vis[-1, 0] = 0.2  # point 0 occluded on the last frame
        if self.visibility == "bool":
            return tracks[None], vis[None] > 0.5
        if self.visibility == "trailing":
            return tracks[None], vis[None, ..., None]
        return tracks[None], vis[None]


def _video(t_len=6, h=32, w=40):
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (t_len, h, w, 3), dtype=np.uint8)


def test_cotracker_coordinate_conversion_with_fake_model():
    from relam.perception.cotracker import CoTracker, from_cotracker, to_cotracker

    fake = FakeCoTracker()
    tracker = CoTracker(model_obj=fake)
    video = _video()
    queries = np.array([[0.5, 0.5], [20.0, 16.5], [39.5, 31.5]])  # centres of pixels (0,0) / - / (31,39)
    tracks, visible = tracker(video, queries)

    (v_in, q_in), = fake.calls
    assert v_in.shape == (1, 6, 3, 32, 40) and v_in.dtype == torch.float32
    assert torch.equal(v_in[0, 2].permute(1, 2, 0), torch.from_numpy(video[2]).float())  # 0..255, RGB order
    assert q_in.shape == (1, 3, 3) and torch.all(q_in[0, :, 0] == 0)  # queries on frame 0
    np.testing.assert_allclose(q_in[0, :, 1:].numpy(), [[0, 0], [19.5, 16], [39, 31]])  # ours -> theirs: -0.5

    assert tracks.shape == (6, 3, 2) and tracks.dtype == np.float64
    expect = queries[None] + np.arange(6)[:, None, None] * VEL  # theirs -> ours: +0.5 (motion unchanged)
    np.testing.assert_allclose(tracks, expect, atol=1e-5)
    assert tracks[..., 0].max() > 40  # left the image: not clipped
    assert visible.shape == (6, 3) and visible.dtype == bool
    assert not visible[-1, 0] and visible.sum() == 6 * 3 - 1
    np.testing.assert_allclose(from_cotracker(to_cotracker(queries)), queries)


@pytest.mark.parametrize("kind", ["bool", "trailing"])
def test_cotracker_visibility_layouts(kind):
    tracker = make_tracker("cotracker", model_obj=FakeCoTracker(kind))
    tracks, visible = tracker(_video(4), np.array([[5.5, 5.5], [10.0, 3.0]]))
    assert tracks.shape == (4, 2, 2) and visible.shape == (4, 2) and visible.dtype == bool
    assert not visible[-1, 0] and visible[-1, 1]


def test_cotracker_input_validation_and_bad_output():
    from relam.perception.cotracker import CoTracker

    tracker = CoTracker(model_obj=FakeCoTracker())
    with pytest.raises(PerceptionError, match="uint8"):
        tracker(_video().astype(np.float32), np.zeros((1, 2)))
    with pytest.raises(PerceptionError, match=r"\(N, 2\)"):
        tracker(_video(), np.zeros((3,)))
    with pytest.raises(PerceptionError, match="at least 2 frames"):
        tracker(_video(1), np.zeros((1, 2)))
    tracks, visible = tracker(_video(), np.zeros((0, 2)))
    assert tracks.shape == (6, 0, 2) and visible.shape == (6, 0)

    class Wrong(torch.nn.Module):
        def forward(self, video, queries):
            return torch.zeros(1, 2, queries.shape[1], 2), torch.ones(1, 2, queries.shape[1])

    with pytest.raises(PerceptionError, match="tracks of shape"):
        CoTracker(model_obj=Wrong())(_video(), np.zeros((1, 2)))


class FakeOnline(torch.nn.Module):
    """CoTrackerOnlinePredictor protocol: register queries, then windows of 2*step frames, stride step; returns the
    tracks of all frames seen so far (in CoTracker coordinates; every point moves by VEL per frame)."""
    step = 3

    def __init__(self):
        super().__init__()
        self.queries, self.seen, self.chunks = None, 0, []

    def forward(self, video_chunk, is_first_step=False, queries=None, **kw):
        if is_first_step:
            self.queries, self.seen = queries.clone(), 0
            return None, None
        self.chunks.append(video_chunk.shape[1])
        self.seen = len(self.chunks) * self.step + self.step
        t = torch.arange(self.seen, dtype=torch.float32)[:, None, None]
        tracks = self.queries[0, None, :, 1:] + t * torch.tensor(VEL, dtype=torch.float32)
        return tracks[None], torch.ones(1, self.seen, self.queries.shape[1], dtype=torch.bool)


def test_cotracker_online_protocol():
    from relam.perception.cotracker import CoTracker

    fake = FakeOnline()
    tracks, visible = CoTracker(model_obj=fake, online=True)(_video(10), np.array([[4.5, 4.5]]))
    assert fake.chunks == [6, 6, 6]  # windows start at 0, 3, 6; the last (6..11) covers frame 9, padded to full length
    assert tracks.shape == (10, 1, 2) and visible.shape == (10, 1) and visible.all()
    np.testing.assert_allclose(tracks[:, 0], [4.5, 4.5] + np.arange(10)[:, None] * VEL, atol=1e-5)


def test_cotracker_unavailable_names_fallbacks(tmp_path, monkeypatch):
    from relam.perception.cotracker import CoTracker

    monkeypatch.setitem(sys.modules, "cotracker", None)  # import cotracker -> ImportError even if installed
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.delenv("RELAM_COTRACKER_CHECKPOINT", raising=False)
    with pytest.raises(PerceptionError) as e:
        CoTracker()
    msg = str(e.value)
    assert "make_tracker('lk')" in msg and "make_tracker('sim')" in msg
    assert "pip install -c constraints.txt git+https://github.com/facebookresearch/co-tracker" in msg
    assert "torchvision" in msg  # CoTracker's code imports timm, which pulls torchvision
    with pytest.raises(PerceptionError, match="is not a file.*make_tracker\\('lk'\\)"):
        make_tracker("cotracker", checkpoint=str(tmp_path / "missing.pth"))


HUBCONF = '''
import torch


class _Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.shift = torch.nn.Parameter(torch.zeros(2))


class _Predictor(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.model = _Net()

    def forward(self, video, queries):
        t = video.shape[1]
        tracks = queries[:, None, :, 1:].expand(-1, t, -1, -1) + self.model.shift
        return tracks, torch.ones(tracks.shape[:3], dtype=torch.bool)


def cotracker3_offline(*, pretrained=True, **kwargs):
    assert not pretrained, "the relam loader must not download"
    return _Predictor()
'''


def test_cotracker_torch_hub_cache_only(tmp_path, monkeypatch):
    """Backend (c): a hub cache holding the repository and the checkpoint is used with source='local'."""
    from relam.perception.cotracker import CoTracker

    hub = tmp_path / "hub"
    repo = hub / "facebookresearch_co-tracker_main"
    repo.mkdir(parents=True)
    (repo / "hubconf.py").write_text(HUBCONF)
    monkeypatch.setitem(sys.modules, "cotracker", None)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub))
    monkeypatch.delenv("RELAM_COTRACKER_CHECKPOINT", raising=False)
    with pytest.raises(PerceptionError, match="not the weights"):
        CoTracker()
    (hub / "checkpoints").mkdir()
    torch.save({"model": {"shift": torch.tensor([1.0, 2.0])}}, hub / "checkpoints" / "scaled_offline.pth")
    tracker = CoTracker()
    assert tracker.backend == "torch.hub"
    tracks, visible = tracker(_video(3), np.array([[4.5, 6.5]]))
    np.testing.assert_allclose(tracks[1:, 0], [[5.5, 8.5]] * 2, atol=1e-6)  # loaded weights are used
    assert visible.all()
