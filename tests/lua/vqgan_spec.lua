-- vqgan_spec.lua — knnd.vqvae.load_taming against taming-transformers' own modules
-- (tests/reference/vqgan, made by make_vqgan_fixture.py): a VQModel state_dict with a
-- discriminator tensor to leave out, and a GumbelVQ inside a VQ-Diffusion checkpoint
-- (content_codec.enc / .dec). The architecture read from the tensors, the pre-quantisation latent,
-- the codes, z_q, the decoded images and Gumbel's KL term against taming's; the discrete backbone
-- on a loaded VQGAN; and every way a checkpoint can be wrong, each named in the error.
local knnd = require "knnd"
local H = require "spec_helpers"
local function tmp(name) return H.tmp("vqgan_spec", name) end

local here = debug.getinfo(1, "S").source:sub(2):match("(.*/)") or "./"
local FIX = here .. "../reference/vqgan/"
local IO = knnd.io.load_safetensors(FIX .. "vqgan_io.safetensors")

local function max_abs(a, b) return (a - b):abs():max():item() end

local function check_against_taming(m, prefix)
  local x = IO[prefix .. "x"]
  knnd.no_grad(function()
    local h = m.quant_conv(m.encoder(x))
    assert.is_true(max_abs(h, IO[prefix .. "h"]) < 1e-4, "pre-quantisation latent: " .. max_abs(h, IO[prefix .. "h"]))
    local tokens, z_q = m:encode(x)
    assert.are.same(IO[prefix .. "indices"]:totable(), tokens:totable())
    assert.is_true(max_abs(z_q, IO[prefix .. "z_q"]) < 1e-5)
    local y = m:decode(IO[prefix .. "indices"])
    assert.is_true(max_abs(y, IO[prefix .. "recon"]) < 1e-4, "decoded: " .. max_abs(y, IO[prefix .. "recon"]))
  end)
end

describe("knnd.vqvae.load_taming", function()
  it("loads taming's VQModel (attention at one level, its padding) and computes what taming does", function()
    local m, cfg, info = knnd.vqvae.load_taming(FIX .. "vq_model.safetensors")
    assert.are.equal("VQVAE", m:type())
    assert.is_false(m.training)
    assert.are.same({ 1, 2 }, cfg.channel_mult)
    assert.are.same({ 1 }, cfg.attn_levels)
    assert.are.equal(32, cfg.channels)
    assert.are.equal(1, cfg.num_res_blocks)
    assert.is_true(cfg.mid_attn)
    assert.is_true(cfg.pad_taming)
    assert.are.equal("loss", cfg.codebook)
    assert.are.equal(64, cfg.num_codes)
    assert.are.equal(16, cfg.embed_dim)
    assert.are.equal("", info.prefix)
    assert.are.equal(1, info.ignored) -- loss.discriminator.main.0.weight
    check_against_taming(m, "vq.")
  end)

  it("loads a GumbelVQ from a VQ-Diffusion checkpoint; codes are the argmax of its logits, KL as taming's", function()
    local m, cfg, info = knnd.vqvae.load(FIX .. "gumbel_vqdiff.safetensors") -- load dispatches .safetensors
    assert.are.equal("content_codec.", info.prefix)
    assert.are.equal(1, info.ignored) -- transformer.content_emb.emb.weight (dec.quantize is the same quantiser)
    assert.are.equal("gumbel", cfg.codebook)
    assert.are.same({ 1, 1, 1 }, cfg.channel_mult)
    assert.are.same({ 2 }, cfg.attn_levels)
    assert.are.equal(2, cfg.num_res_blocks)
    assert.are.equal(48, cfg.num_codes)
    check_against_taming(m, "gumbel.")
    local quantizer
    for _, c in ipairs(m:named_children()) do
      if c.name == "quantize" then quantizer = c.module end -- (m.quantize is the VQVAE's method)
    end
    local _, q = quantizer:quantize(IO["gumbel.h"])
    assert.is_true(math.abs(q.loss:item() - IO["gumbel.kl"]:item()) < 1e-5 * (1 + math.abs(IO["gumbel.kl"]:item())))
    m:train()
    H.errors_with(function() m:forward(IO["gumbel.x"]) end, "eval mode")
    -- the options returned rebuild the same model (how the discrete backbone stores it)
    local again = knnd.nn.vqvae(cfg)
    again:load_state_dict((m:state_dict()))
    again:eval()
    assert.are.same(IO["gumbel.indices"]:totable(), (again:encode(IO["gumbel.x"])):totable())
  end)

  it("maps codes to fewer tokens as VQ-Diffusion's codec does (full_to_quantize / quantize_to_full)", function()
    local path = FIX .. "gumbel_vqdiff.safetensors"
    local m, cfg = knnd.vqvae.load_taming(path, { token_map = FIX .. "gumbel_token_map.safetensors" })
    assert.are.equal(20, cfg.token_codes)
    assert.are.equal(20, m:num_codes())
    knnd.no_grad(function()
      local tokens = m:encode(IO["gumbel.x"])
      assert.are.same(IO["gumbel.tokens"]:totable(), tokens:totable())
      local y = m:decode(IO["gumbel.tokens"])
      assert.is_true(max_abs(y, IO["gumbel.recon_mapped"]) < 1e-4)
      H.errors_with(function() m:decode(knnd.full({ 1, 4, 4 }, 20, { dtype = "i64" })) end, "[0, 20)")
    end)
    -- the map travels in the state dict: a rebuilt model from the options and weights maps the same
    local again = knnd.nn.vqvae(cfg)
    again:load_state_dict((m:state_dict()))
    again:eval()
    assert.are.same(IO["gumbel.tokens"]:totable(), (again:encode(IO["gumbel.x"])):totable())
    -- a map that leaves a token without a code, or of the wrong length, or without the option
    local bad = knnd.io.load_safetensors(FIX .. "gumbel_token_map.safetensors").full_to_quantize:clone()
    local hole = bad:clone()
    local v = hole:totable()
    local gap = v[1]
    for i = 1, #v do if v[i] == gap then v[i] = (gap + 1) % 20 end end
    local m2 = knnd.vqvae.load_taming(path, { token_map = knnd.tensor(v, { dtype = "i64" }) })
    H.errors_with(function() m2:decode(knnd.zeros(1, 4, 4, { dtype = "i64" })) end, "maps no code to token " .. gap)
    H.errors_with(function() knnd.vqvae.load_taming(path, { token_map = bad:narrow(1, 1, 40) }) end,
      "expected [48]: a token for each code")
    H.errors_with(function() knnd.vqvae.load_taming(path, { token_map = bad:float() }) end, "expected i64 or i32")
    H.errors_with(function() knnd.vqvae.load_taming(path, { model = { token_codes = 20 } }) end, "needs option 'token_map'")
  end)

  it("gives the discrete backbone a loaded VQGAN (either quantiser): tokens, a loss, a decoded sample", function()
    for _, case in ipairs { { "vq_model.safetensors", "vq.", 64 }, { "gumbel_vqdiff.safetensors", "gumbel.", 48 } } do
      local path, prefix, K = FIX .. case[1], case[2], case[3]
      local model = knnd.knn_diffusion.new { backbone = "discrete", image_size = 16, channels = 3, seed = 3,
        cond = { mode = "knn", k = 2, dim = 8 }, discrete = { vqvae = path, dim = 32, heads = 2, layers = 1, T = 10 } }
      assert.are.equal(K, model.net.K)
      assert.are.equal(K, model.net.vqvae:num_codes())
      local g = knnd.Generator(4)
      local tokens = model:condition(knnd.randn(2, 8, { gen = g }), knnd.randn(2, 2, 8, { gen = g }))
      local loss = model:loss(IO[prefix .. "x"], tokens, { gen = knnd.Generator(1) })
      assert.is_true(loss:item() > 0 and loss:item() < 1e3)
      local img = model:sample { tokens = tokens, steps = 2, seed = 5 }
      assert.are.same({ 2, 3, 16, 16 }, img:shape())
    end
  end)

  describe("names what is wrong", function()
    local base = knnd.io.load_safetensors(FIX .. "vq_model.safetensors")
    local function variant(name, edit)
      local t = {}
      for k, v in pairs(base) do t[k] = v end
      edit(t)
      local p = tmp(name .. ".safetensors")
      knnd.io.save_safetensors(p, t)
      return p
    end

    it("a missing tensor", function()
      local p = variant("missing", function(t) t["encoder.mid.attn_1.q.bias"] = nil end)
      H.errors_with(function() knnd.vqvae.load_taming(p) end, "has no tensor for encoder.mid.attn_1.q.bias")
      os.remove(p)
    end)

    it("a mis-shaped tensor", function()
      local p = variant("shape", function(t) t["quant_conv.bias"] = knnd.zeros(15) end)
      H.errors_with(function() knnd.vqvae.load_taming(p) end,
        "tensor quant_conv.bias of '" .. p .. "' (quant_conv.bias) is [15], the model expects [16]")
      os.remove(p)
    end)

    it("a tensor the model has no place for (taming's remap of the codes)", function()
      local p = variant("extra", function(t) t["quantize.used"] = knnd.zeros(10, { dtype = "i64" }) end)
      H.errors_with(function() knnd.vqvae.load_taming(p) end, "no place for: quantize.used (quantize.used)")
      os.remove(p)
    end)

    it("a KL autoencoder (double_z), another model, two encoders, a bad prefix", function()
      local p = variant("double_z", function(t) t["encoder.conv_out.weight"] = knnd.zeros(32, 64, 3, 3) end)
      H.errors_with(function() knnd.vqvae.load_taming(p) end, "double_z")
      os.remove(p)
      H.errors_with(function() knnd.vqvae.load_taming(here .. "../reference/clip/small_hf.safetensors") end,
        "is not a VQGAN checkpoint")
      p = variant("two", function(t)
        for k, v in pairs(base) do t["first_stage_model." .. k] = v end
      end)
      H.errors_with(function() knnd.vqvae.load_taming(p) end, "several encoders (prefixes '', 'first_stage_model.')")
      local m, _, info = knnd.vqvae.load_taming(p, { prefix = "first_stage_model." })
      assert.are.equal("first_stage_model.", info.prefix)
      local n = 0
      for _ in pairs(base) do n = n + 1 end
      assert.are.equal(n + 1, info.ignored) -- the copy at the root and first_stage_model.loss.*
      assert.are.same(IO["vq.indices"]:totable(), (m:encode(IO["vq.x"])):totable())
      H.errors_with(function() knnd.vqvae.load_taming(p, { prefix = "model." }) end, "option 'prefix' is 'model.'")
      os.remove(p)
    end)

    it("knnd's own VQ-VAE saved as safetensors (its options are not in the tensors)", function()
      local m = knnd.nn.vqvae { in_channels = 3, channels = 8, channel_mult = { 1, 2 }, norm_groups = 4, num_codes = 8,
        embed_dim = 4, seed = 1 }
      local p = tmp("knnd_own.safetensors")
      m:save(p)
      H.errors_with(function() knnd.vqvae.load(p) end, "holds a knnd VQ-VAE's weights")
      os.remove(p)
    end)

    it("a truncated file, a wrong argument, an override that does not fit", function()
      local f = assert(io.open(FIX .. "vq_model.safetensors", "rb"))
      local bytes = f:read(5000)
      f:close()
      local p = tmp("truncated.safetensors")
      H.write_file(p, bytes)
      H.errors_with(function() knnd.vqvae.load_taming(p) end, "cannot read '" .. p .. "' as safetensors")
      os.remove(p)
      H.errors_with(function() knnd.vqvae.load_taming(42) end, "argument 1 'path'")
      H.errors_with(function() knnd.vqvae.load_taming(FIX .. "vq_model.safetensors", { bogus = 1 }) end, "bogus")
      H.errors_with(function() knnd.vqvae.load_taming(FIX .. "vq_model.safetensors", { model = { num_codes = 32 } }) end,
        "the model expects [32, 16]")
    end)
  end)
end)
