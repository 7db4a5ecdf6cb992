#!/usr/bin/env python3
"""make_clip_fixture.py — reference outputs for knnd's CLIP (tests/core/test_clip*.c).

Writes tests/reference/clip/:
  small_openai.safetensors, small_hf.safetensors  the same random weights (f16 values) of a small
      CLIP, under OpenAI's state-dict names and under transformers CLIPModel's names
  small_io.safetensors   inputs (pixels, token ids) and CLIPModel's outputs for them; text
      embeddings under both pooling rules (eos_token_id 2 = argmax, and first-eos)
  b32_io.safetensors     CLIPModel outputs at ViT-B/32 shapes for weights and inputs that
      both sides generate from a formula (splitmix64 of the tensor name and element index), so
      only the outputs are stored
  vocab.json, merges.txt, bpe_merges.txt.gz   a BPE vocabulary trained on bpe_corpus.txt by the
      reference trainer below, in HF's and in OpenAI's format
  tokenizer_cases.txt    >= 200 strings and HF CLIPTokenizer's ids for them
  tokenizer_cases_openai_vocab.txt   the same strings with OpenAI's real vocabulary (optional
      test: needs bpe_simple_vocab_16e6.txt.gz, which the openai-clip package ships)
  preprocess.safetensors   images, and CLIPImageProcessor's resized+cropped pixels (PIL and
      torchvision backends) and one normalised output

Run: pip install torch torchvision transformers numpy safetensors pillow regex openai-clip ftfy
     python3 tests/reference/make_clip_fixture.py
(transformers 5.24 / tokenizers 0.23 / torch 2.15 made the committed files.) openai-clip is used
for its clip/model.py (loaded as a file: a cross-check that the OpenAI-named weights give the
same outputs in OpenAI's own model) and its merges file.
"""
import gzip
import importlib.util
import json
import os
import random
import sys
import tempfile

import numpy as np
import torch
from safetensors.numpy import save_file as save_np
from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "clip")
torch.set_num_threads(2)


# ---- OpenAI <-> HF names (the same pairs as transformers' convert_clip_original_pytorch_to_hf.py)
TOP = {
    "positional_embedding": ("text_model.embeddings.position_embedding.weight", False),
    "text_projection": ("text_projection.weight", True),
    "logit_scale": ("logit_scale", False),
    "visual.class_embedding": ("vision_model.embeddings.class_embedding", False),
    "visual.positional_embedding": ("vision_model.embeddings.position_embedding.weight", False),
    "visual.proj": ("visual_projection.weight", True),
    "visual.conv1.weight": ("vision_model.embeddings.patch_embedding.weight", False),
    "visual.ln_pre.weight": ("vision_model.pre_layrnorm.weight", False),
    "visual.ln_pre.bias": ("vision_model.pre_layrnorm.bias", False),
    "visual.ln_post.weight": ("vision_model.post_layernorm.weight", False),
    "visual.ln_post.bias": ("vision_model.post_layernorm.bias", False),
    "token_embedding.weight": ("text_model.embeddings.token_embedding.weight", False),
    "ln_final.weight": ("text_model.final_layer_norm.weight", False),
    "ln_final.bias": ("text_model.final_layer_norm.bias", False),
}
BLOCK = {
    "attn.out_proj.weight": "self_attn.out_proj.weight", "attn.out_proj.bias": "self_attn.out_proj.bias",
    "ln_1.weight": "layer_norm1.weight", "ln_1.bias": "layer_norm1.bias",
    "mlp.c_fc.weight": "mlp.fc1.weight", "mlp.c_fc.bias": "mlp.fc1.bias",
    "mlp.c_proj.weight": "mlp.fc2.weight", "mlp.c_proj.bias": "mlp.fc2.bias",
    "ln_2.weight": "layer_norm2.weight", "ln_2.bias": "layer_norm2.bias",
}
TOWERS = {"visual.transformer.resblocks.": "vision_model.encoder.layers.",
          "transformer.resblocks.": "text_model.encoder.layers."}


def hf_to_openai(hf):
    out = {}
    for oname, (hname, transpose) in TOP.items():
        t = hf[hname]
        out[oname] = t.t().contiguous() if transpose else t.clone()
    for opre, hpre in TOWERS.items():
        i = 0
        while f"{hpre}{i}.layer_norm1.weight" in hf:
            p = f"{hpre}{i}."
            for kind in ("weight", "bias"):
                out[f"{opre}{i}.attn.in_proj_{kind}"] = torch.cat(
                    [hf[f"{p}self_attn.{x}_proj.{kind}"] for x in "qkv"], 0)
            for osuf, hsuf in BLOCK.items():
                out[f"{opre}{i}.{osuf}"] = hf[p + hsuf].clone()
            i += 1
    return out


def openai_to_hf(oa):
    hf = {}
    for oname, (hname, transpose) in TOP.items():
        hf[hname] = oa[oname].t().contiguous() if transpose else oa[oname]
    for opre, hpre in TOWERS.items():
        i = 0
        while f"{opre}{i}.ln_1.weight" in oa:
            for kind in ("weight", "bias"):
                for j, x in enumerate(torch.chunk(oa[f"{opre}{i}.attn.in_proj_{kind}"], 3, 0)):
                    hf[f"{hpre}{i}.self_attn.{'qkv'[j]}_proj.{kind}"] = x.contiguous()
            for osuf, hsuf in BLOCK.items():
                hf[f"{hpre}{i}.{hsuf}"] = oa[f"{opre}{i}.{osuf}"]
            i += 1
    return hf


def openai_model_module():
    """OpenAI's clip/model.py from the openai-clip package, loaded as a file (its package
    __init__ wants ftfy and the network)."""
    spec = importlib.util.find_spec("clip")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = os.path.join(list(spec.submodule_search_locations)[0], "model.py")
    ms = importlib.util.spec_from_file_location("openai_clip_model", path)
    mod = importlib.util.module_from_spec(ms)
    ms.loader.exec_module(mod)
    return mod


def openai_reference(oa_sd, cfg):
    """OpenAI's own CLIP with the OpenAI-named weights (vision heads set explicitly: OpenAI's
    CLIP.__init__ fixes them at width/64)."""
    mod = openai_model_module()
    if mod is None:
        print("openai-clip not installed: skipping the OpenAI cross-check")
        return None
    base = mod.VisionTransformer

    class Visual(base):
        def __init__(self, input_resolution, patch_size, width, layers, heads, output_dim):
            super().__init__(input_resolution, patch_size, width, layers, cfg["vheads"], output_dim)

    mod.VisionTransformer = Visual  # CLIP.__init__ looks the class up in its module
    m = mod.CLIP(cfg["embed"], cfg["image"], cfg["vlayers"], cfg["vwidth"], cfg["patch"], cfg["ctx"], cfg["vocab"],
                 cfg["twidth"], cfg["theads"], cfg["tlayers"])
    m.load_state_dict(oa_sd, strict=True)
    return m.float().eval()


def hf_config(cfg, eos, act="quick_gelu"):
    return CLIPConfig(
        text_config=dict(vocab_size=cfg["vocab"], hidden_size=cfg["twidth"], intermediate_size=4 * cfg["twidth"],
                         num_hidden_layers=cfg["tlayers"], num_attention_heads=cfg["theads"],
                         max_position_embeddings=cfg["ctx"], hidden_act=act, eos_token_id=eos,
                         layer_norm_eps=1e-5),
        vision_config=dict(hidden_size=cfg["vwidth"], intermediate_size=4 * cfg["vwidth"],
                           num_hidden_layers=cfg["vlayers"], num_attention_heads=cfg["vheads"],
                           image_size=cfg["image"], patch_size=cfg["patch"], hidden_act=act,
                           layer_norm_eps=1e-5),
        projection_dim=cfg["embed"])


def hf_embeds(model, pixels, ids):
    with torch.no_grad():
        out = model(input_ids=ids, pixel_values=pixels)
        img = model.get_image_features(pixel_values=pixels).pooler_output
        txt = model.get_text_features(input_ids=ids).pooler_output
    return img, txt, out.logits_per_image


# ---- the small model ------------------------------------------------------------------------
def make_small(tok_vocab_size, sot, eot, tokenizer):
    # 6 ids above the tokenizer's (as added tokens would be): there the argmax rule and the
    # first-eos rule pick different positions
    vocab_size = tok_vocab_size + 6
    cfg = dict(embed=16, image=32, patch=8, vwidth=32, vlayers=2, vheads=4, ctx=77, vocab=vocab_size, twidth=32,
               tlayers=2, theads=2)
    torch.manual_seed(20240611)
    model = CLIPModel(hf_config(cfg, 2)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            # HF's init leaves biases and LayerNorms at 0/1; random ones test their mapping
            if name.endswith("bias") or "norm" in name:
                p.copy_(torch.randn_like(p) * 0.1 + (1.0 if name.endswith("weight") else 0.0))
            p.copy_(p.half().float())  # the files hold f16: compute with exactly those values
        model.logit_scale.fill_(float(np.float16(np.log(1 / 0.07))))
    hf_sd = {k: v.detach().clone() for k, v in model.state_dict().items() if "position_ids" not in k}
    oa_sd = hf_to_openai(hf_sd)
    assert set(openai_to_hf(oa_sd)) == set(hf_sd)

    g = torch.Generator().manual_seed(7)
    pixels = torch.randn(3, 3, cfg["image"], cfg["image"], generator=g)
    texts = ["a photo of a dog", "A PICTURE of two cats, sitting on a mat!", "", "x " * 100]
    rows = tokenizer(texts, padding="max_length", max_length=77, truncation=True, return_tensors="pt")["input_ids"]
    # random rows: the argmax rule and the first-eos rule pick different positions here (an id
    # above eot before the first eot; padding with 0 after it)
    rnd = torch.randint(0, vocab_size, (3, 77), generator=g)
    rnd[:, 30:] = 0
    rnd[0, 5], rnd[0, 9], rnd[0, 20] = vocab_size - 1, eot, eot
    rnd[1, 3], rnd[1, 50] = eot, vocab_size - 1
    rnd[2, 0], rnd[2, 1] = sot, eot
    ids = torch.cat([rows, rnd], 0)

    img, txt_argmax, logits = hf_embeds(model, pixels, ids)
    model_eos = CLIPModel(hf_config(cfg, eot)).eval()
    model_eos.load_state_dict(model.state_dict())
    _, txt_eos, _ = hf_embeds(model_eos, pixels, ids)
    assert not torch.allclose(txt_argmax[4:6], txt_eos[4:6]), "the two pooling rules should differ on the random rows"
    model_gelu = CLIPModel(hf_config(cfg, 2, "gelu")).eval()  # the same weights with the erf GELU
    model_gelu.load_state_dict(model.state_dict())
    img_gelu, txt_gelu, _ = hf_embeds(model_gelu, pixels, ids)

    ref = openai_reference(oa_sd, cfg)
    if ref is not None:
        with torch.no_grad():
            oimg, otxt = ref.encode_image(pixels), ref.encode_text(ids)
        d = max((oimg - img).abs().max().item(), (otxt - txt_argmax).abs().max().item())
        print(f"small: OpenAI's clip/model.py vs transformers CLIPModel: max |diff| {d:.2e}")
        assert d < 1e-5

    half = lambda sd: {k: v.half().contiguous().numpy() for k, v in sd.items()}
    hf_file = half(hf_sd)
    hf_file["text_model.embeddings.position_ids"] = np.arange(77, dtype=np.int64)[None]  # as older transformers saved
    save_np(half(oa_sd), os.path.join(OUT, "small_openai.safetensors"))
    save_np(hf_file, os.path.join(OUT, "small_hf.safetensors"), metadata={"format": "pt"})
    save_np({"pixels": pixels.numpy(), "input_ids": ids.numpy().astype(np.int64), "image_embeds": img.numpy(),
             "text_embeds_argmax": txt_argmax.numpy(), "text_embeds_eot": txt_eos.numpy(),
             "logits_per_image": logits.contiguous().numpy(), "image_embeds_gelu": img_gelu.numpy(),
             "text_embeds_gelu": txt_gelu.numpy(),
             "config": np.array([cfg["embed"], cfg["image"], cfg["patch"], cfg["vwidth"], cfg["vlayers"], cfg["vheads"],
                                 4 * cfg["vwidth"], cfg["ctx"], cfg["vocab"], cfg["twidth"], cfg["tlayers"],
                                 cfg["theads"], 4 * cfg["twidth"], eot], dtype=np.int64)},
            os.path.join(OUT, "small_io.safetensors"))
    print(f"small: vocab {vocab_size}, image embeds |max| {img.abs().max():.3f}")


# ---- ViT-B/32 shapes from a formula ----------------------------------------------------------
M64 = (1 << 64) - 1


def name_seed(name):
    """FNV-1a 64 of the name's bytes (the same in test_clip_b32.c)."""
    h = 0xCBF29CE484222325
    for b in name.encode():
        h = ((h ^ b) * 0x100000001B3) & M64
    return h


def formula(name, shape, lo, hi):
    """element i = lo + (hi - lo)·u, u = the top 24 bits of splitmix64(seed(name) + i) / 2^24,
    computed in double and rounded to f32"""
    n = int(np.prod(shape)) if len(shape) else 1
    with np.errstate(over="ignore"):
        z = np.arange(n, dtype=np.uint64) + np.uint64(name_seed(name))
        z = z + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    u = (z >> np.uint64(40)).astype(np.float64) / 16777216.0
    return (lo + (hi - lo) * u).astype(np.float32).reshape(shape)


def b32_value_range(name, shape):
    """the value range of each OpenAI-named tensor (see test_clip_b32.c: the same rule)"""
    if name == "logit_scale":
        return 4.6, 4.6
    if name.endswith(("ln_1.weight", "ln_2.weight", "ln_pre.weight", "ln_post.weight", "ln_final.weight")):
        return 0.8, 1.2
    if name.endswith("bias") or name.endswith("class_embedding") or "positional_embedding" in name:
        return -0.1, 0.1
    if name == "token_embedding.weight":
        return -0.05, 0.05
    fan_in = shape[0] if name in ("visual.proj", "text_projection") else int(np.prod(shape[1:]))
    a = float(np.sqrt(3.0 / fan_in))  # unit-variance outputs
    return -a, a


def b32_shapes():
    w, tw, e, mlp, tmlp = 768, 512, 512, 3072, 2048
    s = {"positional_embedding": (77, tw), "text_projection": (tw, e), "logit_scale": (),
         "visual.class_embedding": (w,), "visual.positional_embedding": (50, w), "visual.proj": (w, e),
         "visual.conv1.weight": (w, 3, 32, 32), "visual.ln_pre.weight": (w,), "visual.ln_pre.bias": (w,),
         "visual.ln_post.weight": (w,), "visual.ln_post.bias": (w,), "token_embedding.weight": (49408, tw),
         "ln_final.weight": (tw,), "ln_final.bias": (tw,)}
    for pre, width, m in (("visual.transformer.resblocks.", w, mlp), ("transformer.resblocks.", tw, tmlp)):
        for i in range(12):
            p = f"{pre}{i}."
            s.update({p + "attn.in_proj_weight": (3 * width, width), p + "attn.in_proj_bias": (3 * width,),
                      p + "attn.out_proj.weight": (width, width), p + "attn.out_proj.bias": (width,),
                      p + "ln_1.weight": (width,), p + "ln_1.bias": (width,), p + "mlp.c_fc.weight": (m, width),
                      p + "mlp.c_fc.bias": (m,), p + "mlp.c_proj.weight": (width, m), p + "mlp.c_proj.bias": (width,),
                      p + "ln_2.weight": (width,), p + "ln_2.bias": (width,)})
    return s


def b32_inputs():
    """2 images from the formula (pixels in [-2, 2]) and 3 token rows: ids from the formula, an
    end-of-text token (49407) at positions 5, 40 and 76, zeros after it"""
    pixels = formula("input.pixels", (2, 3, 224, 224), -2.0, 2.0)
    raw = formula("input.tokens", (3, 77), 0.0, 49406.0)
    ids = np.floor(raw).astype(np.int64)
    ids[:, 0] = 49406
    for r, end in enumerate((5, 40, 76)):
        ids[r, end] = 49407
        ids[r, end + 1:] = 0
    return torch.from_numpy(pixels), torch.from_numpy(ids)


def make_b32():
    cfg = dict(embed=512, image=224, patch=32, vwidth=768, vlayers=12, vheads=12, ctx=77, vocab=49408, twidth=512,
               tlayers=12, theads=8)
    oa = {k: torch.from_numpy(formula(k, s, *b32_value_range(k, s))) for k, s in b32_shapes().items()}
    model = CLIPModel(hf_config(cfg, 2)).eval()
    missing, unexpected = model.load_state_dict(openai_to_hf(oa), strict=False)
    assert not unexpected and all("position_ids" in k for k in missing), (missing, unexpected)
    pixels, ids = b32_inputs()
    img, txt, logits = hf_embeds(model, pixels, ids)
    ref = openai_reference(oa, cfg)
    if ref is not None:
        with torch.no_grad():
            d = max((ref.encode_image(pixels) - img).abs().max().item(), (ref.encode_text(ids) - txt).abs().max().item())
        print(f"ViT-B/32: OpenAI's clip/model.py vs transformers CLIPModel: max |diff| {d:.2e}")
    save_np({"image_embeds": img.numpy(), "text_embeds": txt.numpy(), "logits_per_image": logits.contiguous().numpy(),
             "probe_visual_proj": oa["visual.proj"][:2, :4].numpy().copy(),
             "probe_in_proj": oa["transformer.resblocks.3.attn.in_proj_weight"][-1, -4:].numpy().copy()},
            os.path.join(OUT, "b32_io.safetensors"))
    print(f"ViT-B/32: image embeds |max| {img.abs().max():.3f}, text embeds |max| {txt.abs().max():.3f}")


# ---- tokenizer --------------------------------------------------------------------------------
def bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def openai_vocab(merges):
    """clip/simple_tokenizer.py's vocabulary for a list of merges"""
    vocab = list(bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab]
    vocab += ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    return dict(zip(vocab, range(len(vocab))))


def write_tokenizer_dir(d, merges):
    with open(os.path.join(d, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump(openai_vocab(merges), f, ensure_ascii=False)
    with open(os.path.join(d, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))


def pretokenize(tok, text):
    """the byte-level words HF's CLIPTokenizer feeds its BPE model"""
    bt = tok.backend_tokenizer
    return [w for w, _ in bt.pre_tokenizer.pre_tokenize_str(bt.normalizer.normalize_str(text))]


def train_bpe(words, num_merges, min_frequency):
    """The reference trainer knnd_clip_bpe_train must reproduce: naive pair counts weighted by
    word counts; the most frequent pair first, ties to the smaller (a, b) (code point order =
    UTF-8 byte order); every occurrence merged left to right."""
    counts = {}
    for w in words:
        counts[w] = counts.get(w, 0) + 1
    seqs = {w: list(w[:-1]) + [w[-1] + "</w>"] for w in counts}
    merges = []
    while len(merges) < num_merges:
        pairs = {}
        for w, s in seqs.items():
            for a, b in zip(s, s[1:]):
                pairs[(a, b)] = pairs.get((a, b), 0) + counts[w]
        if not pairs:
            break
        best = min(pairs.items(), key=lambda kv: (-kv[1], kv[0]))
        if best[1] < min_frequency:
            break
        a, b = best[0]
        merges.append((a, b))
        for w, s in seqs.items():
            out, i = [], 0
            while i < len(s):
                if i + 1 < len(s) and s[i] == a and s[i + 1] == b:
                    out.append(a + b)
                    i += 2
                else:
                    out.append(s[i])
                    i += 1
            seqs[w] = out
    return merges


def corpus():
    rnd = random.Random(5)
    things = ["dog", "cat", "bird", "car", "tree", "house", "person", "woman", "man", "child", "horse", "boat",
              "train", "plane", "pizza", "cake", "shirt", "trouser", "pullover", "dress", "coat", "sandal", "sneaker",
              "bag", "ankle boot", "bicycle", "street", "beach", "mountain", "kitchen", "table", "chair"]
    adjs = ["small", "large", "red", "blue", "green", "white", "black", "old", "young", "happy", "wet", "bright",
            "dark", "striped", "wooden", "shiny"]
    templates = ["a photo of a {a} {t}.", "A {a} {t} sitting on the {u}", "two {t}s next to a {a} {u}",
                 "the {t} is {a} and the {u} is {b}", "there's a {t} near the {u}!", "{n} {t}s on a {a} {u}",
                 "a close-up of the {t}'s {u}", "an image of a {t}, {a}, in the {u}"]
    lines = []
    for _ in range(400):
        t = rnd.choice(templates)
        lines.append(t.format(a=rnd.choice(adjs), b=rnd.choice(adjs), t=rnd.choice(things), u=rnd.choice(things),
                              n=rnd.choice(["2", "3", "10", "many", "several"])))
    lines += ["un café à Paris", "naïve résumé", "Größe und Straße", "日本の猫", "😀 smiling dog 😀", "ΟΔΟΣ"]
    return lines


def tokenizer_strings():
    s = [
        "a photo of a dog", "A PHOTO OF A DOG", "a photo of a cat.", "", " ", "   \t\n  ", "hello", "hello world",
        "Hello, World!", "hello... world???", "(parenthesis) [brackets] {braces} <angles>", "x+y=z; a*b/c-d",
        "e-mail: someone@example.com, url: https://example.com/path?q=1&r=2#frag", "#hashtag @mention $100 50%",
        "it's", "It'S", "don't can't won't", "we're they've I'm she'll he'd", "'s 't 're 've 'm 'll 'd", "''", "'",
        "rock'n'roll", "o'clock", "the dog's bone", "5'11\"", "123", "3.14159", "1,000,000", "2nd 3rd 21st 100th",
        "0x1F", "007", "½ ¼ ¾", "x² y³", "Ⅻ Ⅳ", "١٢٣", "٣.١٤", "๑๒๓", "①②③",
        "<|startoftext|>", "<|endoftext|>", "a<|endoftext|>b", "a <|startoftext|> b <|endoftext|> c",
        "<|ENDOFTEXT|>", "<|endoftext", "|endoftext|>", "<|startoftext|><|startoftext|>", "<<|endoftext|>>",
        "café", "cafe\u0301", "naïve", "résumé", "Straße", "STRASSE", "İstanbul", "ISTANBUL", "ıi", "ΟΔΟΣ ΟΔΟΣ",
        "Ὀδυσσεύς", "Привет, мир!", "ПРИВЕТ", "日本語のテキスト", "中文测试，标点。", "한국어 텍스트", "ภาษาไทย",
        "العربية", "עברית", "हिन्दी भाषा", "ქართული", "Ελληνικά", "Việt Nam", "ǅ ǆ Ǆ", "ﬁ ﬂ ﬀ", "ＡＢＣ１２３",
        "😀", "😀😀😀", "👍🏽", "👨‍👩‍👧‍👦", "🇫🇷🇯🇵", "❤️", "©®™", "∑∫√∞≈≠", "→←↑↓", "♠♣♥♦", "★☆", "°C °F",
        "€£¥₹", "—–-", "“quotes” ‘single’ «guillemets»", "…", "\u00a0nbsp\u00a0", "ideographic\u3000space",
        "line\u2028separator", "next\x85line", "zero\u200bwidth", "joiner\u200dx", "soft\u00adhyphen",
        "\x00null", "bell\x07", "del\x7f", "tab\there", "new\nline", "cr\rlf\r\n", "vt\x0bff\x0c", "\x1c\x1d\x1e\x1f",
        "ſ's", "K Kelvin", "Å Angstrom", "ﬃ", "ǰ", "ΐ", "\ufffd", "\U0001d400\U0001d41a", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢",
        "a" * 300, "ab" * 200, "hello " * 100, "word " * 76, "word " * 75, "word " * 74, "😀" * 40,
        "a b c d e f g h i j k l m n o p q r s t u v w x y z " * 4, "0123456789" * 10,
        "Supercalifragilisticexpialidocious", "pneumonoultramicroscopicsilicovolcanoconiosis",
        "The quick brown fox jumps over the lazy dog.", "THE QUICK BROWN FOX", "tHe QuIcK bRoWn FoX",
        "a photo of a t-shirt/top", "a photo of an ankle boot", "a photo of a trouser", "a blurry photo of a sandal",
        "a pixelated photo of the sneaker", "   spaced    out   words   ", "trailing space ", " leading space",
        "multi\n\nline\n\ntext", "mixed日本語and English", "ascii😀emoji", "123abc456def", "abc123", "v1.2.3-beta",
        "C++ and C#", "snake_case_name", "camelCaseName", "kebab-case-name", "file.tar.gz", "~/path/to/file",
        "!!!", "???", "...", "---", "***", "@@@", "###", "$$$", "%%%", "^^^", "&&&", "|||", "\\\\", "``", "~~~",
    ]
    rnd = random.Random(11)
    words = ["dog", "cat", "The", "photo", "a", "of", "RED", "Blue", "green", "sitting", "on", "the", "mat", "café",
             "naïve", "Straße", "日本", "猫", "😀", "👍", "ΟΔΟΣ", "мир", "2024", "3.5", "it's", "don't", "ok!", "?!",
             "(x)", "[y]", "<|endoftext|>", "t-shirt", "—", "…", "½", "²"]
    pool = [chr(c) for c in list(range(0x20, 0x7F)) + list(range(0xA0, 0x180)) + list(range(0x370, 0x3FF))
            + list(range(0x400, 0x450)) + list(range(0x3040, 0x3097)) + list(range(0x4E00, 0x4E40))
            + list(range(0x1F600, 0x1F640)) + [0x2019, 0x201C, 0x2014, 0x2026, 0x00A0, 0x3000, 0x0301, 0x0308,
                                                 0x200D, 0x09, 0x0A]]
    for _ in range(110):
        s.append(" ".join(rnd.choice(words) for _ in range(rnd.randint(1, 12))))
    for _ in range(60):
        s.append("".join(rnd.choice(pool) for _ in range(rnd.randint(1, 40))))
    return s


def make_tokenizer():
    lines = corpus()
    with open(os.path.join(OUT, "bpe_corpus.txt"), "w", encoding="utf-8") as f:
        f.write("".join(line + "\n" for line in lines))
    # pre-tokenise with an HF tokenizer over an empty merge list (the pre-tokeniser does not
    # depend on the vocabulary)
    with tempfile.TemporaryDirectory() as d:
        write_tokenizer_dir(d, [])
        pre = CLIPTokenizer.from_pretrained(d)
        words = [w for line in lines for w in pretokenize(pre, line)]
    merges = train_bpe(words, 600, 2)
    write_tokenizer_dir(OUT, merges)
    with gzip.GzipFile(os.path.join(OUT, "bpe_merges.txt.gz"), "wb", mtime=0) as f:
        f.write(("\"bpe_merges.txt#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges)).encode())
    tok = CLIPTokenizer.from_pretrained(OUT)
    assert tok.bos_token_id == 512 + len(merges) and tok.eos_token_id == 513 + len(merges)
    strings = tokenizer_strings()
    assert len(strings) >= 200

    def cases(path, tk):
        with open(path, "w", encoding="ascii") as f:
            f.write(f"# {len(strings)} cases: UTF-8 text as hex, then CLIPTokenizer(text, truncation=True, "
                    f"max_length=77)['input_ids'] (transformers 5.24)\n")
            for text in strings:
                ids = tk(text, truncation=True, max_length=77)["input_ids"]
                f.write(text.encode("utf-8").hex() + "\t" + " ".join(map(str, ids)) + "\n")

    cases(os.path.join(OUT, "tokenizer_cases.txt"), tok)
    print(f"tokenizer: {len(merges)} merges, vocab {len(openai_vocab(merges))}, {len(strings)} cases")

    spec = importlib.util.find_spec("clip")
    real = spec and os.path.join(list(spec.submodule_search_locations)[0], "bpe_simple_vocab_16e6.txt.gz")
    if real and os.path.exists(real):
        lines = gzip.open(real).read().decode("utf-8").split("\n")[1:49152 - 256 - 2 + 1]
        with tempfile.TemporaryDirectory() as d:
            write_tokenizer_dir(d, [tuple(m.split()) for m in lines])
            cases(os.path.join(OUT, "tokenizer_cases_openai_vocab.txt"), CLIPTokenizer.from_pretrained(d))
        print("tokenizer: cases for OpenAI's vocabulary written")
    return tok, len(openai_vocab(merges))


# ---- preprocessing ----------------------------------------------------------------------------
def make_preprocess():
    from transformers import CLIPImageProcessor
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil
    rng = np.random.default_rng(3)
    # (channels, height, width, size): downscale by various factors, upscale (Fashion-MNIST's
    # 28×28 to 224 is the case knnd meets), gray and RGBA, odd crops
    cases = [(3, 40, 50, 24), (3, 150, 101, 32), (3, 17, 23, 32), (1, 28, 28, 224), (4, 64, 48, 20), (3, 33, 97, 16),
             (3, 48, 48, 48)]
    out = {}
    worst = 0
    for i, (c, h, w, size) in enumerate(cases):
        img = rng.integers(0, 256, (c, h, w), dtype=np.uint8)
        if i == 3:  # smooth-ish, like a real picture
            yy, xx = np.mgrid[0:h, 0:w]
            img[0] = (127 + 120 * np.sin(xx / 3.0) * np.cos(yy / 5.0)).astype(np.uint8)
        rgb = np.repeat(img, 3, 0) if c == 1 else img[:3]
        kw = dict(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
        pil = CLIPImageProcessorPil(**kw)(list([rgb]), do_rescale=False, do_normalize=False,
                                          input_data_format="channels_first", return_tensors="np")["pixel_values"][0]
        tv = CLIPImageProcessor(**kw)(torch.from_numpy(rgb)[None], do_rescale=False, do_normalize=False,
                                      return_tensors="pt")["pixel_values"][0].numpy()
        assert np.all(pil == np.round(pil)) and np.all(tv == np.round(tv))
        out[f"case{i}.image"] = img
        out[f"case{i}.size"] = np.array([size], dtype=np.int64)
        # one channel of a gray picture is enough
        out[f"case{i}.pil"] = pil[:1].astype(np.uint8) if c == 1 else pil.astype(np.uint8)
        out[f"case{i}.tv"] = tv[:1].astype(np.uint8) if c == 1 else tv.astype(np.uint8)
        d = np.abs(pil.astype(int) - tv.astype(int)).max()
        worst = max(worst, d)
        print(f"preprocess case {i} {c}x{h}x{w} -> {size}: PIL vs torchvision backend max |diff| {d} (of 255)")
        if i == 0:
            full = CLIPImageProcessorPil(**kw)(list([rgb]), input_data_format="channels_first",
                                               return_tensors="np")["pixel_values"][0]
            out["case0.normalized"] = full.astype(np.float32)
    out["pil_vs_tv_max"] = np.array([worst], dtype=np.int64)
    save_np(out, os.path.join(OUT, "preprocess.safetensors"))


def main():
    os.makedirs(OUT, exist_ok=True)
    tok, vocab_size = make_tokenizer()
    make_small(vocab_size, tok.bos_token_id, tok.eos_token_id, tok)
    make_preprocess()
    if "--no-b32" not in sys.argv:
        make_b32()
    for f in os.listdir(OUT):
        os.chmod(os.path.join(OUT, f), 0o644)
    total = sum(os.path.getsize(os.path.join(OUT, f)) for f in os.listdir(OUT))
    print(f"fixture: {total / 1024:.0f} KiB in {OUT}")


if __name__ == "__main__":
    main()
