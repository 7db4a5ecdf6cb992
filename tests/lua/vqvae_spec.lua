-- vqvae_spec.lua — the VQ-VAE from Lua: knnd.nn.vqvae and knnd.nn.vector_quantizer (shapes,
-- codes, the straight-through gradient, argument errors), and knnd.vqvae.train / load / evaluate
-- on a few tiny Fashion-MNIST images (checkpoint, resume, log.csv). Whether it learns is
-- vqvae_fmnist_spec's question (release build only).
local knnd = require "knnd"
local h = require "spec_helpers"
local function tmp(name) return h.tmp("vqvae_spec", name) end

local tiny = { in_channels = 1, channels = 8, channel_mult = { 1, 2 }, num_res_blocks = 1, norm_groups = 4,
  num_codes = 16, embed_dim = 4, seed = 1 }

describe("knnd.nn.vqvae", function()
  it("encodes to tokens and decodes them; forward gives the reconstruction and the losses", function()
    local m = knnd.nn.vqvae(tiny)
    assert.are.equal("VQVAE", m:type())
    local x = knnd.randn(2, 1, 8, 8, { gen = knnd.Generator(2) })
    local tokens, z_q = m:encode(x)
    assert.are.same({ 2, 4, 4 }, tokens:shape())
    assert.are.equal("i64", tokens:dtype())
    assert.are.same({ 2, 4, 4, 4 }, z_q:shape())
    local a, b = m:decode(tokens), m:decode_latent(z_q)
    assert.are.same({ 2, 1, 8, 8 }, a:shape())
    h.assert_close(a, b:totable(), 1e-5)
    local recon, info = m:forward(x)
    assert.are.same({ 2, 1, 8, 8 }, recon:shape())
    for _, k in ipairs { "loss", "recon_loss", "vq_loss", "codebook_loss", "commitment_loss", "tokens" } do
      assert.is_true(knnd.is_tensor(info[k]), k)
    end
    assert.is_true(math.abs(info.loss:item() - info.recon_loss:item() - info.vq_loss:item()) < 1e-6)
    assert.is_true(info.usage > 0 and info.usage <= 1)
    assert.is_true(info.perplexity >= 1 and info.perplexity <= 16)
    assert.are.equal(0, info.restarted)
    info.loss:backward()
    assert.is_not_nil(m.encoder.conv_in.weight.grad)
    assert.are.same({ 2, 1, 8, 8 }, m(x):shape()) -- the plain call: the reconstruction alone
    local sd = m:state_dict()
    for _, name in ipairs { "encoder.down.0.downsample.conv.weight", "decoder.up.1.upsample.conv.weight",
      "quantize.embedding.weight", "quant_conv.weight", "post_quant_conv.bias" } do
      assert.is_not_nil(sd[name], name)
    end
  end)

  it("has an EMA codebook as buffers, not parameters", function()
    local o = {}
    for k, v in pairs(tiny) do o[k] = v end
    o.codebook = "ema"
    local m = knnd.nn.vqvae(o)
    local sd = m:state_dict()
    assert.is_not_nil(sd["quantize.embedding.cluster_size"])
    for _, p in ipairs(m:named_parameters()) do assert.is_nil(p.name:find("quantize", 1, true), p.name) end
  end)

  it("rejects wrong options and inputs with messages naming them", function()
    h.errors_with(function() knnd.nn.vqvae { chanels = 8 } end, "unknown option 'chanels'")
    h.errors_with(function() knnd.nn.vqvae { codebook = "kmeans" } end, "codebook")
    h.errors_with(function() knnd.nn.vqvae { channels = 8, norm_groups = 3 } end, "norm_groups")
    local m = knnd.nn.vqvae(tiny)
    h.errors_with(function() m:encode(knnd.randn(1, 1, 7, 7)) end, "divisible by 2")
    h.errors_with(function() m:decode(knnd.tensor({ { { 0, 16 } } }, { dtype = "i64" })) end, "expected values in [0, 16)")
    local lin = knnd.nn.Linear(2, 3)
    h.errors_with(function() lin:encode(knnd.randn(1, 2)) end, "expected a VQVAE module")
    assert.are.same({ 1, 3 }, lin:forward(knnd.randn(1, 2)):shape()) -- other modules' forward is unchanged
  end)
end)

describe("knnd.nn.vector_quantizer", function()
  it("gives each vector its nearest code, passes the gradient straight through, reports usage", function()
    local q = knnd.nn.vector_quantizer { num_codes = 3, dim = 2, seed = 1 }
    knnd.no_grad(function() q.embedding.weight:copy_(knnd.tensor { { 0, 0 }, { 10, 0 }, { 0, 10 } }) end)
    local z = knnd.tensor({ { 1, 1 }, { 9, 1 }, { 8, -1 }, { -1, 0.5 } }):requires_grad_()
    local z_q, info = q:quantize(z)
    assert.are.same({ 0, 1, 1, 0 }, info.tokens:totable())
    h.assert_close(z_q, { { 0, 0 }, { 10, 0 }, { 10, 0 }, { 0, 0 } }, 1e-6)
    assert.are.equal(2 / 3, info.usage)
    h.assert_close(info.perplexity, 2, 1e-12)
    local w = knnd.tensor { { 1, 2 }, { 3, 4 }, { 5, 6 }, { 7, 8 } }
    local s = (z_q * w):sum()
    s:backward()
    h.assert_close(z.grad, w:totable(), 0)
    h.errors_with(function() q:quantize(knnd.randn(4, 3)) end, "argument 'z'")
  end)
end)

describe("knnd.vqvae.train", function()
  local ds_path = tmp("fm.h5")
  knnd.dataset.prepare_fashion_mnist { out = ds_path, split = "train", size = 8, limit = 48, progress = false }

  it("checkpoints, resumes where it stopped, and saves a model that load and evaluate read", function()
    local out = tmp("run")
    os.execute(("rm -rf '%s'"):format(out))
    local o = { dataset = ds_path, out = out, steps = 4, batch = 8, lr = 1e-3, checkpoint_every = 2, progress = false,
      model = { channels = 8, channel_mult = { 1, 2 }, norm_groups = 4, num_codes = 8, embed_dim = 4,
        codebook = "ema", dead_after = 1 } }
    o.until_step = 2
    local r1 = knnd.vqvae.train(o)
    assert.are.equal(2, r1.steps)
    o.until_step = nil
    local r2 = knnd.vqvae.train(o)
    assert.are.equal(2, r2.resumed_from)
    assert.are.equal(4, r2.steps)
    local log = knnd.vqvae.read_log(out .. "/log.csv")
    assert.are.same({ 1, 2, 3, 4 }, log.steps)
    for i = 1, 4 do assert.is_true(log.usage[i] > 0 and log.perplexity[i] >= 1) end
    local m = knnd.vqvae.load(r2.model_path)
    local x = knnd.dataset.open(ds_path):images(knnd.arange(0, 4, { dtype = "i64" })):float() * (2 / 255) - 1
    assert.are.same(r2.model:encode(x):totable(), m:encode(x):totable())
    local e = knnd.vqvae.evaluate { model = m, dataset = ds_path, rows = { 0, 1, 2, 3 } }
    assert.are.equal(4, e.count)
    assert.is_true(e.psnr > 0 and e.usage > 0 and e.perplexity >= 1)
    -- the reconstructions are clamped to the images' range before PSNR, the tokens counted: a decoder
    -- whose output bias is raised by 3 draws outside [-1, 1]
    local sd = m:state_dict()
    assert.is_not_nil(sd["decoder.conv_out.bias"])
    sd["decoder.conv_out.bias"] = sd["decoder.conv_out.bias"] + 3
    m:load_state_dict(sd)
    e = knnd.vqvae.evaluate { model = m, dataset = ds_path, rows = { 0, 1, 2, 3 } }
    local t = m:encode(x)
    local y = knnd.no_grad(function() return m:decode(t) end)
    assert.is_true(y:max():item() > 1, "the raised decoder leaves [-1, 1]")
    local want = knnd.vqvae.psnr(knnd.clamp(y, -1, 1), x)
    assert.is_true(math.abs(e.psnr - want) < 1e-4 * math.abs(want), ("psnr %g, clamped %g"):format(e.psnr, want))
    assert.is_true(math.abs(e.psnr - knnd.vqvae.psnr(y, x)) > 1e-3, "evaluate clamps")
    local seen, used = {}, 0
    for _, v in ipairs(t:reshape(-1):totable()) do
      if not seen[v] then seen[v], used = true, used + 1 end
    end
    assert.are.equal(used, e.used)
    assert.are.equal(used / m:num_codes(), e.usage)
    assert.are.same({ t:size(2), t:size(3) }, e.token_grid)
    h.errors_with(function() knnd.vqvae.train { dataset = ds_path } end, "option 'out'")
    h.errors_with(function() knnd.vqvae.train { dataset = ds_path, out = out, stepz = 1 } end, "unknown option 'stepz'")
    h.errors_with(function() knnd.vqvae.load(ds_path) end, "as a knnd.vqvae model")
  end)
end)
