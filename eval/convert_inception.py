#!/usr/bin/env python3
"""convert_inception.py — pytorch-fid's Inception weights (pt_inception-2015-12-05-6726825d.pth,
from https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/) to the safetensors
file knnd reads (knnd_inception_load, knnd.metrics.inception). A user-side tool: torch is needed
here only, never by knnd.

Every float tensor of the state dict is kept under its own name as little-endian f32 (fc.* too,
which knnd ignores; num_batches_tracked, an integer, is dropped). The metadata:
  format          "knnd-inception-fid"
  source          the .pth file's name
  source_sha256   the .pth file's SHA-256 (hex); torch hub names a file by its first 8 hex
                  digits, so the reference file's starts with 6726825d — anything else is refused
                  unless --allow-other
  content_sha256  SHA-256 over the tensors' data: each tensor's elements in row-major order as
                  little-endian f32 bytes, the tensors concatenated in the order of their names
                  sorted bytewise (Python's sorted() on the names), nothing else (no names, no
                  shapes). eval/inception.c recomputes it (OpenSSL) and refuses a mismatch.

Usage: python3 eval/convert_inception.py pt_inception-2015-12-05-6726825d.pth inception-fid.safetensors
"""
import argparse
import hashlib
import os
import sys

import numpy as np
import torch
from safetensors.numpy import save_file

REFERENCE_PREFIX = "6726825d"


def file_sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def content_sha256(tensors):
    h = hashlib.sha256()
    for name in sorted(tensors):
        h.update(np.ascontiguousarray(tensors[name], dtype="<f4").tobytes())
    return h.hexdigest()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("pth", help="pytorch-fid's pt_inception-2015-12-05-6726825d.pth")
    ap.add_argument("out", help="the safetensors file to write")
    ap.add_argument("--allow-other", action="store_true",
                    help="convert a file whose SHA-256 does not start with " + REFERENCE_PREFIX)
    a = ap.parse_args()
    digest = file_sha256(a.pth)
    if not digest.startswith(REFERENCE_PREFIX) and not a.allow_other:
        sys.exit(f"convert_inception.py: {a.pth} has SHA-256 {digest[:16]}..., not pytorch-fid's "
                 f"pt_inception-2015-12-05-6726825d.pth (starts with {REFERENCE_PREFIX}); "
                 "pass --allow-other to convert it anyway (its FIDs are not comparable to published ones)")
    sd = torch.load(a.pth, map_location="cpu", weights_only=True)
    if "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    tensors = {name: t.detach().to(torch.float32).contiguous().numpy().astype("<f4")
               for name, t in sd.items() if torch.is_tensor(t) and t.is_floating_point()}
    missing = [n for n in ("Conv2d_1a_3x3.conv.weight", "Mixed_7c.branch_pool.bn.running_var") if n not in tensors]
    if missing:
        sys.exit(f"convert_inception.py: {a.pth} is not an InceptionV3 state dict (no {missing[0]})")
    meta = {"format": "knnd-inception-fid", "source": os.path.basename(a.pth), "source_sha256": digest,
            "content_sha256": content_sha256(tensors)}
    tmp = a.out + ".tmp"
    save_file(tensors, tmp, metadata=meta)
    os.replace(tmp, a.out)  # a crash leaves no half-written file under the final name
    print(f"convert_inception.py: {len(tensors)} tensors -> {a.out} (source sha256 {digest[:16]}...)")


if __name__ == "__main__":
    main()
