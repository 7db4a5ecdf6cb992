"""make_vqgan_fixture.py — two small VQGANs built from CompVis/taming-transformers' own modules
(taming/modules/diffusionmodules/model.py Encoder/Decoder, taming/modules/vqvae/quantize.py
VectorQuantizer2 and GumbelQuantize), their weights saved in the layouts a user brings, and what
taming computes with them, for tests/lua/vqgan_spec.lua (knnd.vqvae.load_taming).

  vq_model.safetensors      taming's VQModel state_dict (last.ckpt["state_dict"]): encoder.*,
                            quant_conv.*, quantize.embedding.weight, post_quant_conv.*, decoder.*,
                            plus a loss.* tensor as the discriminator's would be (to be skipped).
                            ch 32, ch_mult (1, 2), 1 res block, attention at resolution 8 of 16
                            (level 1), z 16, 64 codes of 16.
  gumbel_vqdiff.safetensors GumbelVQ inside a VQ-Diffusion checkpoint: content_codec.enc.encoder.*,
                            content_codec.enc.quant_conv.*, content_codec.enc.quantize.{proj,embed}.*,
                            content_codec.dec.decoder.*, content_codec.dec.post_quant_conv.*,
                            content_codec.dec.quantize.* (the same quantiser again), plus a
                            transformer.* tensor. ch 32, ch_mult (1, 1, 1), 2 res blocks, attention
                            at resolution 4 of 16 (level 2), z 16, 48 codes of 16.
  gumbel_token_map.safetensors  VQ-Diffusion's full_to_quantize for it: 48 codes to 20 tokens.
  vqgan_io.safetensors      per model (prefix vq. / gumbel.): x [2,3,16,16] in [-1, 1]; h, the
                            pre-quantisation latent quant_conv(encoder(x)); indices (VectorQuantizer2's
                            own argmin; for Gumbel the argmax of proj(h), the mode of the
                            distribution taming samples with Gumbel noise even in eval mode); z_q;
                            recon = decoder(post_quant_conv(get_codebook_entry(indices))); and
                            kl (Gumbel: taming's diff / kl_weight, which does not depend on the noise);
                            gumbel.tokens = full_to_quantize[indices] (VQ-Diffusion's get_tokens) and
                            gumbel.recon_mapped, their decoding through quantize_to_full (its decode).

The weights are PyTorch's default initialisation, then every GroupNorm's affine parameters
perturbed and each codebook set to latent vectors of the inputs plus noise (so that the codes in
use differ and a wrong layout shows). Nothing of taming's is copied here: its modules are imported.

  git -C /work/.mirror/CompVis+taming-transformers/repo archive HEAD taming | tar -x -C /tmp/taming
  python3 tests/reference/vqgan/make_vqgan_fixture.py /tmp/taming
Needs torch, numpy, einops and safetensors from PyPI (taming at 3ba01b2).
"""
import os
import sys

import torch
from safetensors.torch import save_file

HERE = os.path.dirname(os.path.abspath(__file__))


def build(Encoder, Decoder, ch_mult, num_res_blocks, attn_resolutions, z, embed_dim, seed):
    torch.manual_seed(seed)
    dd = dict(ch=32, out_ch=3, ch_mult=ch_mult, num_res_blocks=num_res_blocks, attn_resolutions=attn_resolutions,
              dropout=0.0, in_channels=3, resolution=16, z_channels=z, double_z=False)
    enc, dec = Encoder(**dd), Decoder(**dd)
    quant_conv = torch.nn.Conv2d(z, embed_dim, 1)
    post_quant_conv = torch.nn.Conv2d(embed_dim, z, 1)
    for mod in (enc, dec):
        for m in mod.modules():
            if isinstance(m, torch.nn.GroupNorm):
                with torch.no_grad():
                    m.weight.add_(0.2 * torch.randn_like(m.weight))
                    m.bias.add_(0.2 * torch.randn_like(m.bias))
    return enc.eval(), dec.eval(), quant_conv, post_quant_conv


def main():
    sys.path.insert(0, sys.argv[1])
    from taming.modules.diffusionmodules.model import Decoder, Encoder
    from taming.modules.vqvae.quantize import GumbelQuantize, VectorQuantizer2

    io = {}
    g = torch.Generator().manual_seed(5)

    # ---- VQModel: VectorQuantizer2 (legacy=True, beta 0.25) ----
    enc, dec, qc, pqc = build(Encoder, Decoder, (1, 2), 1, [8], 16, 16, seed=1)
    quant = VectorQuantizer2(64, 16, beta=0.25).eval()
    x = torch.rand(2, 3, 16, 16, generator=g) * 2 - 1
    with torch.no_grad():
        h = qc(enc(x))
        rows = h.permute(0, 2, 3, 1).reshape(-1, 16)
        pick = torch.randint(rows.shape[0], (64,), generator=g)
        quant.embedding.weight.copy_(rows[pick] + 0.05 * torch.randn(64, 16, generator=g))
        z_q, _, (_, _, ind) = quant(h)
        ind = ind.reshape(2, h.shape[2], h.shape[3])
        e = quant.get_codebook_entry(ind.reshape(-1), shape=(2, h.shape[2], h.shape[3], 16))
        recon = dec(pqc(e))
    sd = {}
    for prefix, m in (("encoder.", enc), ("decoder.", dec), ("quant_conv.", qc), ("post_quant_conv.", pqc),
                      ("quantize.", quant)):
        for k, v in m.state_dict().items():
            sd[prefix + k] = v.detach().clone().contiguous()
    sd["loss.discriminator.main.0.weight"] = torch.randn(64, 3, 4, 4, generator=g)
    save_file(sd, os.path.join(HERE, "vq_model.safetensors"))
    io.update({"vq.x": x, "vq.h": h, "vq.indices": ind.long(), "vq.z_q": z_q, "vq.recon": recon})

    # ---- GumbelVQ inside VQ-Diffusion's content_codec (TamingGumbelVQVAE's enc / dec) ----
    enc, dec, qc, pqc = build(Encoder, Decoder, (1, 1, 1), 2, [4], 16, 16, seed=2)
    quant = GumbelQuantize(16, 16, n_embed=48, kl_weight=5e-4).eval()
    x = torch.rand(2, 3, 16, 16, generator=g) * 2 - 1
    with torch.no_grad():
        h = qc(enc(x))
        rows = h.permute(0, 2, 3, 1).reshape(-1, 16)
        pick = torch.randint(rows.shape[0], (48,), generator=g)
        quant.embed.weight.copy_(rows[pick] + 0.05 * torch.randn(48, 16, generator=g))
        _, diff, _ = quant(h)  # its indices carry Gumbel noise; diff does not
        ind = quant.proj(h).argmax(dim=1)
        e = quant.get_codebook_entry(ind.reshape(-1), shape=(2, h.shape[2], h.shape[3], 16))
        recon = dec(pqc(e))
    sd = {}
    for prefix, m in (("content_codec.enc.encoder.", enc), ("content_codec.enc.quant_conv.", qc),
                      ("content_codec.enc.quantize.", quant), ("content_codec.dec.decoder.", dec),
                      ("content_codec.dec.post_quant_conv.", pqc), ("content_codec.dec.quantize.", quant)):
        for k, v in m.state_dict().items():
            sd[prefix + k] = v.detach().clone().contiguous()
    sd["transformer.content_emb.emb.weight"] = torch.randn(49, 8, generator=g)
    # VQ-Diffusion's token map (TamingGumbelVQVAE with quantize_number): full_to_quantize sends each of
    # the 48 codes to one of 20 tokens; quantize_to_full, built by the loop of its __init__ (first code
    # of each token), is what decode uses
    full_to_quantize = torch.cat([torch.randperm(20, generator=g), torch.randint(20, (28,), generator=g)])
    full_to_quantize = full_to_quantize[torch.randperm(48, generator=g)]
    quantize_to_full = torch.full((20,), -1, dtype=torch.long)
    for idx, i in enumerate(full_to_quantize.tolist()):
        if quantize_to_full[i] == -1:
            quantize_to_full[i] = idx
    tokens = full_to_quantize[ind]
    with torch.no_grad():
        full = quantize_to_full[tokens]
        e2 = quant.get_codebook_entry(full.reshape(-1), shape=(2, h.shape[2], h.shape[3], 16))
        recon_mapped = dec(pqc(e2))
    save_file({"full_to_quantize": full_to_quantize.contiguous()}, os.path.join(HERE, "gumbel_token_map.safetensors"))
    save_file(sd, os.path.join(HERE, "gumbel_vqdiff.safetensors"))
    io.update({"gumbel.x": x, "gumbel.h": h, "gumbel.indices": ind.long(), "gumbel.z_q": e, "gumbel.recon": recon,
               "gumbel.kl": (diff / quant.kl_weight).reshape(1), "gumbel.tokens": tokens.long(),
               "gumbel.recon_mapped": recon_mapped})

    save_file({k: v.detach().contiguous() for k, v in io.items()}, os.path.join(HERE, "vqgan_io.safetensors"))
    print("wrote", ", ".join(sorted(io)))


if __name__ == "__main__":
    main()
