"""make_fixtures.py — reference values for tests/core/test_vqdiffusion.c from microsoft/VQ-Diffusion's
own code (image_synthesis/modeling/transformers/diffusion_transformer.py and models/dalle.py).

The reference's DiffusionTransformer is built by its real __init__ (alpha_schedule, the float32
log buffers) with instantiate_from_config replaced by a stand-in transformer that returns fixed
logits, so predict_start, q_pred, q_posterior, _train_loss / forward (vb_stochastic loss with
mask_weight and the adaptive auxiliary loss), p_sample (Gumbel) and sample_fast (skip steps) all
run the reference's own lines. Truncation is DALLE.predict_start_with_truncation ("top<r>r") and
classifier-free guidance is the cf_predict_start closure of DALLE.generate_content, rebuilt from
its code object with stand-in cells, so their lines run too. Nothing of theirs is copied here.

K (knnd's num_classes) = 7 codebook entries, [MASK] = 7; B = 4 sequences of N = 6 tokens.

  git -C /work/.mirror/microsoft+VQ-Diffusion/repo archive HEAD | tar -x -C /tmp/vqd
  python3 tests/reference/vqdiffusion/make_fixtures.py /tmp/vqd
      ->  tests/reference/vqdiffusion/vqdiffusion_fixture.safetensors
Needs torch, numpy, einops, pillow and safetensors from PyPI.
"""
import os
import sys
import types
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

K, B, N = 7, 4, 6
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "vqdiffusion_fixture.safetensors")


class FixedLogits(torch.nn.Module):
    """Stands in for Text2ImageTransformer: returns self.logits [B, K, N] whatever the input."""

    def __init__(self, k):
        super().__init__()
        self.content_emb = types.SimpleNamespace(num_embed=k + 1)  # the reference counts [MASK]
        self.logits = None
        self.calls = []

    def forward(self, x_t, cond_emb, t):
        self.calls.append(int(t[0]))
        return self.logits


def build(dt, T, aux=0.0, adaptive=False, mask_weight=(1, 1), K_=K):
    dt.instantiate_from_config = lambda config: FixedLogits(K_)
    m = dt.DiffusionTransformer(transformer_config={"params": {"content_seq_len": N}}, diffusion_step=T,
                                alpha_init_type="alpha1", auxiliary_loss_weight=aux,
                                adaptive_auxiliary_loss=adaptive, mask_weight=list(mask_weight))
    return m


TABLES = ("log_at", "log_bt", "log_ct", "log_cumprod_at", "log_cumprod_bt", "log_cumprod_ct", "log_1_min_ct",
          "log_1_min_cumprod_ct")


def main():
    ref = sys.argv[1] if len(sys.argv) > 1 else "/tmp/vqd"
    sys.path.insert(0, ref)
    warnings.filterwarnings("ignore")
    import image_synthesis.modeling.transformers.diffusion_transformer as dt
    import image_synthesis.modeling.models.dalle as dalle

    g = torch.Generator().manual_seed(20240610)
    fx = {}

    # ---- the schedule: the reference's float64 alpha_schedule and its float32 log buffers -------
    for T, k, name in ((100, K, "T100"), (10, K, "T10"), (100, 2887, "coco")):
        at, bt, ct, att, btt, ctt = dt.alpha_schedule(T, N=k)
        for key, v in zip(("at", "bt", "ct", "att", "btt", "ctt"), (at, bt, ct, att, btt, ctt)):
            fx[f"sched.{name}.{key}"] = torch.from_numpy(np.asarray(v, dtype=np.float64))
        m = build(dt, T, K_=k)
        for key in TABLES:
            fx[f"sched.{name}.{key}"] = getattr(m, key).clone()

    m = build(dt, 100)

    # ---- q_pred: random log distributions (not one-hot) at random t ------------------------------
    log_x0 = F.log_softmax(torch.randn(B, K + 1, N, generator=g) * 2, dim=1)
    t = torch.tensor([0, 37, 99, 5])
    fx["q_pred.log_x0"], fx["q_pred.t"] = log_x0, t
    fx["q_pred.out"] = m.q_pred(log_x0, t)

    # ---- predict_start (knnd's log_x0), then q_posterior with it and a partly masked x_t ---------
    logits = torch.randn(B, K, N, generator=g) * 3
    logits[0, 0, 0] = -200.0  # a log-probability below -70: predict_start clamps it
    m.transformer.logits = logits
    x_t = torch.randint(0, K + 1, (B, N), generator=g)
    x_t[:, 0] = K  # some masked positions in every row, some not
    x_t[:, 1] = 2
    log_x_t = dt.index_to_log_onehot(x_t, K + 1)
    lx0 = m.predict_start(log_x_t, None, torch.zeros(B, dtype=torch.long))
    fx["post.logits"], fx["post.x_t"], fx["post.log_x0"] = logits, x_t, lx0
    for T, name in ((100, "T100"), (10, "T10")):
        mm = build(dt, T)
        tt = torch.tensor([0, 1, T // 2, T - 1])
        fx[f"post.{name}.t"] = tt
        fx[f"post.{name}.out"] = mm.q_posterior(lx0, log_x_t, tt)
        # the posterior of a one-hot x0 (the loss's true posterior)
        x0 = torch.randint(0, K, (B, N), generator=g)
        fx[f"post.{name}.x0"] = x0
        fx[f"post.{name}.onehot_out"] = mm.q_posterior(dt.index_to_log_onehot(x0, K + 1), log_x_t, tt)

    # ---- the loss: forward(return_loss) with t, pt and x_t fixed -------------------------------
    for case, (aux, adaptive, mw, pt) in {
        "coco": (5e-4, True, (1, 1), None),
        "weighted": (0.1, False, (1.5, 0.5), torch.tensor([0.02, 0.01, 0.005, 0.03])),
    }.items():
        x0 = torch.randint(0, K, (B, N), generator=g)
        xt = torch.where(torch.rand(B, N, generator=g) < 0.4, torch.full_like(x0, K), x0)
        xt[1, 2] = (x0[1, 2] + 3) % K  # a replaced token
        xt[2, :] = K
        tt = torch.tensor([0, 12, 99, 50])
        ptt = pt if pt is not None else torch.ones(B) / 100
        for with_aux in (True, False):
            mm = build(dt, 100, aux=aux if with_aux else 0.0, adaptive=adaptive, mask_weight=mw)
            lg = (torch.randn(B, K, N, generator=torch.Generator().manual_seed(5)) * 2).requires_grad_(True)
            mm.transformer.logits = lg
            mm.sample_time = lambda b, device, method, tt=tt, ptt=ptt: (tt, ptt)
            mm.q_sample = lambda log_x_start, t, xt=xt: dt.index_to_log_onehot(xt, K + 1)
            out = mm({"content_token": x0}, return_loss=True, return_logits=True)
            if with_aux:
                out["loss"].backward()
                fx[f"loss.{case}.grad"] = lg.grad.clone()
                fx[f"loss.{case}.loss"] = out["loss"].detach().reshape(1)
                # Lt_history[t] = 0.1·kl_loss² (t distinct, history zero before)
                fx[f"loss.{case}.kl"] = (mm.Lt_history.gather(0, tt) / 0.1).sqrt()
                fx[f"loss.{case}.logits"] = lg.detach().clone()
            else:
                fx[f"loss.{case}.vb"] = out["loss"].detach().reshape(1)
        fx[f"loss.{case}.x0"], fx[f"loss.{case}.x_t"], fx[f"loss.{case}.t"] = x0, xt, tt
        fx[f"loss.{case}.pt"] = ptt.float()
        fx[f"loss.{case}.params"] = torch.tensor([aux, float(adaptive), mw[0], mw[1]], dtype=torch.float64)

    # ---- one p_sample step: its distribution, and the tokens for the uniform noise it drew -------
    m.transformer.logits = logits
    tt = torch.tensor([0, 1, 40, 99])
    model_log_prob, _ = m.p_pred(log_x_t, None, tt)
    torch.manual_seed(77)
    with torch.no_grad():
        sampled = m.p_sample(log_x_t, None, tt)
    torch.manual_seed(77)
    uniform = torch.rand_like(model_log_prob)  # what log_sample_categorical drew
    fx["p_sample.t"], fx["p_sample.log_probs"] = tt, model_log_prob
    fx["p_sample.uniform"], fx["p_sample.tokens"] = uniform, dt.log_onehot_to_index(sampled)

    # ---- truncation (DALLE.predict_start_with_truncation, "top<r>r") -----------------------------
    peaked = F.log_softmax(torch.randn(B, K, N, generator=g) * 3, dim=1)
    peaked = torch.cat((peaked, torch.full((B, 1, N), -70.0)), dim=1)
    fx["trunc.log_x0"] = peaked
    for r in ("0.85", "0.5", "1.0"):
        wrap = dalle.DALLE.predict_start_with_truncation(None, lambda *a, **k: peaked, f"top{r}r")
        fx[f"trunc.{r}"] = wrap()

    # ---- classifier-free guidance: the cf_predict_start closure of generate_content --------------
    code = next(c for c in dalle.DALLE.generate_content.__wrapped__.__code__.co_consts
                if isinstance(c, types.CodeType) and c.co_name == "cf_predict_start")
    cond_emb, cf_emb = torch.zeros(1), torch.ones(1)
    lc = F.log_softmax(torch.randn(B, K, N, generator=g) * 2, dim=1)
    lu = F.log_softmax(torch.randn(B, K, N, generator=g) * 2, dim=1)
    zero = torch.full((B, 1, N), -70.0)
    pad = lambda lx: torch.cat((lx, zero), dim=1)
    stand_in = types.SimpleNamespace(
        transformer=types.SimpleNamespace(zero_vector=zero,
                                          predict_start=lambda x, c, t: pad(lc) if c is cond_emb else pad(lu)),
        guidance_scale=1.0)
    cells = {"self": stand_in, "cf_cond_emb": cf_emb}
    cf = types.FunctionType(code, dalle.__dict__, "cf_predict_start", None,
                            tuple(types.CellType(cells[v]) for v in code.co_freevars))
    fx["cfg.cond"], fx["cfg.uncond"] = pad(lc), pad(lu)
    for s in ("1.0", "3.0", "0.5"):
        stand_in.guidance_scale = float(s)
        fx[f"cfg.{s}"] = cf(None, cond_emb, None)

    # ---- sample_fast: which t the model sees and which t the posterior uses ----------------------
    for T, skip in ((100, 1), (100, 2), (100, 3), (10, 2), (10, 0)):
        mm = build(dt, T)
        mm.transformer.logits = logits
        post = []
        orig = mm.q_posterior
        mm.q_posterior = lambda log_x_start, log_x_t, t, post=post, orig=orig: (post.append(int(t[0])),
                                                                                orig(log_x_start, log_x_t, t))[1]
        mm.sample_fast(condition_token=torch.zeros(B, 1), condition_mask=None, condition_embed=torch.zeros(B, 1), filter_ratio=0,
                       skip_step=skip)
        fx[f"fast.T{T}.skip{skip}.model_t"] = torch.tensor(mm.transformer.calls)
        fx[f"fast.T{T}.skip{skip}.posterior_t"] = torch.tensor(post)

    # knnd's safetensors reader takes f32 and i64: floats are stored as float32
    fx = {k: (v.float() if v.is_floating_point() else v.long()).contiguous() for k, v in fx.items()}
    save_file(fx, OUT, metadata={"generator": "make_fixtures.py", "reference": "microsoft/VQ-Diffusion",
                                 "torch": torch.__version__})
    print(OUT, os.path.getsize(OUT), "bytes")


if __name__ == "__main__":
    main()
