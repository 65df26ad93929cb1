"""Planning latency of the anticipation model on CPU: one episode = one encoder call + generate().

Target (anticipation issue): generate() < 50 ms per episode, encoder excluded. Reports the median over
repeats for the `cpu` profile's model and the paper's (d=512, 12 layers), each plain and with the image-reading
options of the ``kp-near-object-readout`` ablation (first-frame read-out, CoordConv, 16 point tokens), a plan of
``--steps`` subgoals (the stop logit is forced off so every configuration generates the same length), 1 thread.
It also splits ``generate()`` into its once-per-episode part (the image tokens through every layer, then x^0:
``generate(max_len=1)``) and the cost of each further subgoal (one token through every layer, its keys and values
cached), so the latency of any plan length can be read off: once + (M - 1) * per subgoal.

    .venv/bin/python benchmarks/planning_latency.py [--steps 8] [--repeats 20]
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

import relam  # noqa: F401
from relam.config import load_config
from relam.models.anticipation import AnticipationModel
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
    args = ap.parse_args()
    torch.set_num_threads(1)
    print(f"{'profile':8s} {'read-out':8s} {'d':>4s} {'layers':>6s} {'params M':>8s} {'encoder ms':>10s} "
          f"{'generate ms':>11s} {'once ms':>7s} {'per subgoal':>11s} target<50")
    for profile, readout in (("cpu", False), ("cpu", True), ("paper", False), ("paper", True)):
        mcfg = load_config(profile).anticipation.model
        mcfg.encoder = "cnn"  # DINOv2 weights are not available offline; the encoder is timed separately anyway
        for k, v in (IMAGE_READING_OPTIONS["model"] if readout else {}).items():
            setattr(mcfg, k, v)
        model = AnticipationModel(mcfg).eval()
        with torch.no_grad():
            model.head_stop.bias.fill_(-1e4)
        img = torch.randint(0, 256, (1, 128, 128, 3), dtype=torch.uint8)
        with torch.no_grad():
            feats = model.encode_images(img, img)
        enc = median_ms(lambda: model.encode_images(img, img), args.repeats)
        gen = median_ms(lambda: model.generate(feats, max_len=args.steps), args.repeats)
        once = median_ms(lambda: model.generate(feats, max_len=1), args.repeats)
        per = (gen - once) / max(args.steps - 1, 1)
        n = sum(p.numel() for p in model.parameters()) / 1e6
        print(f"{profile:8s} {str(readout):8s} {mcfg.d_model:4d} {mcfg.n_layers:6d} {n:8.1f} {enc:10.1f} {gen:11.1f} "
              f"{once:7.1f} {per:11.1f} {'OK' if gen < 50 else 'over'}")


if __name__ == "__main__":
    main()
