"""torch_clip_peer.py — the PyTorch CPU peer of bench_clip.c: transformers' CLIPModel at ViT-B/32
shapes (random weights), the same batch and token rows, timed the same way (best of REPS after a
warm-up) with the same thread count (KNND_BENCH_THREADS, default 2). Prints ROW lines.

Usage: python3 tests/bench/torch_clip_peer.py [batch] [reps]   (pip install torch transformers)
"""
import os
import sys
import time

import torch
from transformers import CLIPConfig, CLIPModel

torch.set_num_threads(int(os.environ.get("KNND_BENCH_THREADS", "2")))
batch = int(sys.argv[1]) if len(sys.argv) > 1 else 64
reps = int(sys.argv[2]) if len(sys.argv) > 2 else 3
device = os.environ.get("KNND_BENCH_DEVICE", "cpu")
cfg = CLIPConfig(text_config=dict(hidden_act="quick_gelu", eos_token_id=2),
                 vision_config=dict(patch_size=32, hidden_act="quick_gelu"), projection_dim=512)
model = CLIPModel(cfg).eval().to(device)
pixels = torch.randn(batch, 3, 224, 224, device=device)
ids = torch.zeros(batch, 77, dtype=torch.long)
for i in range(batch):
    ids[i, 0] = 49406
    for j in range(1, 21):
        ids[i, j] = (i * 131 + j * 7919) % 49000
    ids[i, 21] = 49407
ids = ids.to(device)


def best(step):
    times = []
    for r in range(reps + 1):
        if device != "cpu":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        step()
        if device != "cpu":
            torch.cuda.synchronize()
        if r:
            times.append(time.perf_counter() - t0)
    return min(times)


print(f"# torch_clip_peer: transformers CLIPModel ViT-B/32 on {device}, torch {torch.__version__}, "
      f"{torch.get_num_threads()} threads, batch {batch}")
with torch.no_grad():
    for name, step in (("clip_b32_image", lambda: model.get_image_features(pixel_values=pixels)),
                       ("clip_b32_text", lambda: model.get_text_features(input_ids=ids))):
        t = best(step)
        print(f"ROW {name} {t * 1e3:.2f} {batch / t:.1f}")
