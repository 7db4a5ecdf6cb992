"""gen_unet_fixture.py — writes tests/reference/unet_fixture.safetensors for tests/core/test_unet.c:
the tiny UNets (TINY_UNET_A: GLIDE concat cross-attention, scale-shift norm, cond_embed, int64
timesteps; TINY_UNET_B: separate cross-attention, attention at two resolutions) and a 2-block
VQ-Diffusion transformer stack, each with random weights (no zero init, so every path counts),
inputs, the output, and the gradients of sum(out·w) with respect to x and the context; plus the
parameter counts of the tiny and the benchmark configurations.
    python3 tests/reference/gen_unet_fixture.py        (torch >= 2.0, safetensors)
Tensor names: <model>.<state-dict name>, <model>.in.{x,t,context,w}, <model>.out,
<model>.grad.{x,context}, count.<config> (i64)."""
import os
import sys

import torch
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import unet_reference as ref  # noqa: E402


def randomise(model, gen):
    """norm weights ~ 1 + 0.1·N, norm biases ~ 0.1·N, everything else ~ N / sqrt(fan_in)"""
    with torch.no_grad():
        for mod in model.modules():
            norm = isinstance(mod, (torch.nn.GroupNorm, torch.nn.LayerNorm))
            for name, p in mod.named_parameters(recurse=False):
                r = torch.randn(p.shape, generator=gen)
                if norm:
                    p.copy_(1 + 0.1 * r if name == "weight" else 0.1 * r)
                else:
                    p.copy_(r / (p[0].numel() if p.dim() > 1 else 16) ** 0.5)


def case(out, prefix, model, x, t, ctx, gen):
    model.eval()
    x = x.clone().requires_grad_(True)
    ctx = ctx.clone().requires_grad_(True)
    y = model(x, t, ctx)
    w = torch.randn(y.shape, generator=gen)
    (y * w).sum().backward()
    for name, v in model.state_dict().items():
        out[f"{prefix}.{name}"] = v.detach().clone().contiguous()
    out[f"{prefix}.in.x"] = x.detach()
    out[f"{prefix}.in.t"] = t
    out[f"{prefix}.in.context"] = ctx.detach()
    out[f"{prefix}.in.w"] = w
    out[f"{prefix}.out"] = y.detach()
    out[f"{prefix}.grad.x"] = x.grad
    out[f"{prefix}.grad.context"] = ctx.grad
    print(prefix, "params", sum(p.numel() for p in model.parameters()), "out", tuple(y.shape),
          "|out| max", float(y.detach().abs().max()))


def main():
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1234)
    out = {}
    a = ref.UNetModel(**ref.TINY_UNET_A)
    randomise(a, gen)
    case(out, "unet_a", a, torch.randn(2, 3, 8, 8, generator=gen), torch.tensor([3, 917], dtype=torch.int64),
         torch.randn(2, 3, 12, generator=gen), gen)
    b = ref.UNetModel(**ref.TINY_UNET_B)
    randomise(b, gen)
    case(out, "unet_b", b, torch.randn(2, 2, 8, 8, generator=gen), torch.tensor([0.0, 499.0]),
         torch.randn(2, 5, 12, generator=gen), gen)
    tr = ref.TransformerStack(**ref.TINY_TRANSFORMER)
    randomise(tr, gen)
    case(out, "transformer", tr, torch.randn(2, 7, 16, generator=gen), torch.tensor([1, 87], dtype=torch.int64),
         torch.randn(2, 4, 12, generator=gen), gen)
    counts = {"unet_a": ref.UNetModel(**ref.TINY_UNET_A), "unet_b": ref.UNetModel(**ref.TINY_UNET_B),
              "transformer": ref.TransformerStack(**ref.TINY_TRANSFORMER),
              "unet_bench": ref.UNetModel(**ref.BENCH_UNET),
              "transformer_bench": ref.TransformerStack(**ref.BENCH_TRANSFORMER)}
    for k, m in counts.items():
        n = sum(p.numel() for p in m.parameters())
        out[f"count.{k}"] = torch.tensor([n], dtype=torch.int64)
        print("count", k, n)
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "unet_fixture.safetensors")
    save_file({k: v.contiguous() for k, v in out.items()}, path)
    print(path, os.path.getsize(path), "bytes")


if __name__ == "__main__":
    main()
