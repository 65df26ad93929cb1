"""Planning latency of the anticipation model on CPU: one episode = one encoder call + generate().

Target (anticipation issue): generate() < 50 ms per episode, encoder excluded. Reports the median over
repeats for the `cpu` profile's model and the paper's (d=512, 12 layers), each plain and with the image-reading
options of the ``kp-near-object-readout`` ablation (first-frame read-out, CoordConv, 16 point tokens), a plan of
``--steps`` subgoals (the stop logit is forced off so every configuration generates the same length), 1 thread.
It also splits ``generate()`` into its once-per-episode part (the image tokens through every layer, then x^0:
``generate(max_len=1)``) and the cost of each further subgoal (one token through every layer, its keys and values
cached), so the latency of any plan length can be read off: once + (M - 1) * per subgoal. Each configuration
is timed in fp32 and with the blocks in int8 (``int8_for_cpu``, ``ModelPlanner(quantize=True)``), in the same run.

``--checkpoints`` also plays trained models (e.g. ``results/cpu/anticipation/*/checkpoint.pt``) on their held-out
demos in fp32 and int8: both held-out errors (x^0 / plan, px) and the largest difference between the two plans.

    .venv/bin/python benchmarks/planning_latency.py [--steps 8] [--repeats 20] [--checkpoints PATH ...]
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

import relam  # noqa: F401
from relam.config import load_config
from relam.models.anticipation import AnticipationModel, int8_for_cpu
from relam.models.train_anticipation import IMAGE_READING_OPTIONS


def median_ms(fn, repeats):
    fn()  # warm-up
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1000)
    return float(np.median(out))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--checkpoints", nargs="*", default=[])
    args = ap.parse_args()
    torch.set_num_threads(1)
    print(f"{'profile':8s} {'read-out':8s} {'weights':7s} {'d':>4s} {'layers':>6s} {'params M':>8s} "
          f"{'encoder ms':>10s} {'generate ms':>11s} {'once ms':>7s} {'per subgoal':>11s} target<50")
    for profile, readout in (("cpu", False), ("cpu", True), ("paper", False), ("paper", True)):
        mcfg = load_config(profile).anticipation.model
        mcfg.encoder = "cnn"  # DINOv2 weights are not available offline; the encoder is timed separately anyway
        for k, v in (IMAGE_READING_OPTIONS["model"] if readout else {}).items():
            setattr(mcfg, k, v)
        fp32 = AnticipationModel(mcfg).eval()
        with torch.no_grad():
            fp32.head_stop.bias.fill_(-1e4)
        n = sum(p.numel() for p in fp32.parameters()) / 1e6
        img = torch.randint(0, 256, (1, 128, 128, 3), dtype=torch.uint8)
        for weights, model in (("fp32", fp32), ("int8", int8_for_cpu(fp32))):
            with torch.no_grad():
                feats = model.encode_images(img, img)
                enc = median_ms(lambda: model.encode_images(img, img), args.repeats)
                gen = median_ms(lambda: model.generate(feats, max_len=args.steps), args.repeats)
                once = median_ms(lambda: model.generate(feats, max_len=1), args.repeats)
            per = (gen - once) / max(args.steps - 1, 1)
            print(f"{profile:8s} {str(readout):8s} {weights:7s} {mcfg.d_model:4d} {mcfg.n_layers:6d} {n:8.1f} "
                  f"{enc:10.1f} {gen:11.1f} {once:7.1f} {per:11.1f} {'OK' if gen < 50 else 'over'}")
    for path in args.checkpoints:
        held_out_int8(Path(path))


def held_out_int8(checkpoint: Path):
    """A trained model's held-out errors in fp32 and int8, and how far apart the two plans are."""
    from relam.models.train_anticipation import _finished_run, batch_goals, plan_errors
    from relam.perception.subgoals import SubgoalDataset, subgoal_path
    tasks = list(torch.load(checkpoint, map_location="cpu", weights_only=False)["tasks"])
    out = checkpoint.parents[2]            # results/<profile>/anticipation/<run>/checkpoint.pt
    datasets = {t: SubgoalDataset.load(subgoal_path(out, t), t) for t in tasks}
    model, _, val, feats = _finished_run(checkpoint.parent, datasets)
    size = next(iter(datasets.values())).first_frames.shape[1]
    with torch.no_grad():
        f, g = feats(val), batch_goals(val, model)
        plans = {w: m.generate(f, goal=g) for w, m in (("fp32", model), ("int8", int8_for_cpu(model)))}
    truths = [s.subgoals for s in val]
    err = {w: plan_errors(p, truths, size) for w, p in plans.items()}
    diff = max(float(np.abs(a[:len(b)] - b[:len(a)]).max()) for a, b in zip(plans["fp32"], plans["int8"])) * size
    lengths = sum(len(a) != len(b) for a, b in zip(plans["fp32"], plans["int8"]))
    print(f"{checkpoint}: {len(val)} held-out demos; x0 / plan px fp32 {err['fp32']['x0_px']:.2f} / "
          f"{err['fp32']['subgoal_px']:.2f}, int8 {err['int8']['x0_px']:.2f} / {err['int8']['subgoal_px']:.2f}; "
          f"largest difference {diff:.2f} px, {lengths} plan(s) of another length")


if __name__ == "__main__":
    main()
