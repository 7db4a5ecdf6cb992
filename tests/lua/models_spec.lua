-- models_spec.lua — knnd.nn.unet / transformer / transformer_block from Lua: output shapes,
-- parameter counts against PyTorch's (the counts of tests/reference/unet_fixture.safetensors, as in
-- tests/core/test_unet.c), training with knnd.optim, state-dict round trips, and option errors.
local knnd = require "knnd"
local H = require "spec_helpers"

local here = debug.getinfo(1, "S").source:sub(2):match("(.*/)") or "./"
local FIXTURE = here .. "../reference/unet_fixture.safetensors"

local function shape(t) return table.concat(t:size(), "x") end

local function count(m)
  local n = 0
  for _, p in ipairs(m:parameters()) do n = n + p:numel() end
  return n
end

-- the brief's tiny configurations
local TINY_UNET = {in_channels = 3, out_channels = 3, channels = 32, channel_mult = {1, 2}, num_res_blocks = 1,
                   image_size = 8, attention_resolutions = {4}, context_dim = 16, seed = 1}
local TINY_TR = {dim = 16, num_heads = 2, context_dim = 12, num_blocks = 2, seed = 1}

local function unet_inputs()
  local g = knnd.Generator(5)
  return knnd.randn(2, 3, 8, 8, {gen = g}), knnd.tensor({3, 500}), knnd.randn(2, 4, 16, {gen = g})
end

local function tr_inputs()
  local g = knnd.Generator(6)
  return knnd.randn(2, 5, 16, {gen = g}), knnd.tensor({3, 50}), knnd.randn(2, 3, 12, {gen = g})
end

describe("knnd.nn.unet", function()
  it("is a Module: x [B,C,H,W], t [B], context [B,N,D] -> [B,out,H,W]", function()
    local m = knnd.nn.unet(TINY_UNET)
    assert.is_true(knnd.nn.is_module(m))
    assert.are.equal("UNetModel", m:type())
    local x, t, ctx = unet_inputs()
    assert.are.equal("2x3x8x8", shape(m(x, t, ctx)))
    assert.are.equal("2x3x8x8", shape(m:forward(x, t, ctx)))
    assert.are.equal(m:num_params(), count(m))
    -- guided-diffusion's names: attention at feature size 4 is input_blocks.3.1, GLIDE's encoder_kv
    assert.are.equal("192x64x1", shape(m.input_blocks[4][2].qkv.weight))
    assert.are.equal("128x16x1", shape(m.input_blocks[4][2].encoder_kv.weight))
    local plain = knnd.nn.unet{in_channels = 1, out_channels = 2, model_channels = 32, channel_mult = {1},
                               num_res_blocks = 1}
    assert.are.equal("1x2x4x4", shape(plain(knnd.randn(1, 1, 4, 4), knnd.tensor({7}), nil)))
  end)

  it("has PyTorch's parameter counts for the C test's configurations", function()
    local fx = knnd.io.load_safetensors(FIXTURE)
    local a = knnd.nn.unet{in_channels = 3, out_channels = 3, model_channels = 8, channel_mult = {1, 2},
                           num_res_blocks = 1, image_size = 8, attention_resolutions = {4}, num_head_channels = 4,
                           use_scale_shift_norm = true, context_dim = 12, cond_embed = true, norm_groups = 4,
                           skip_zero_init = true}
    local b = knnd.nn.unet{in_channels = 2, out_channels = 4, model_channels = 8, channel_mult = {1, 2},
                           num_res_blocks = 1, image_size = 8, attention_resolutions = {8, 4}, num_heads = 2,
                           context_dim = 12, separate_cross_attention = true, norm_groups = 4, skip_zero_init = true}
    local bench = knnd.nn.unet{in_channels = 3, out_channels = 3, channels = 64, channel_mult = {1, 2, 2},
                               num_res_blocks = 2, image_size = 32, attention_resolutions = {16, 8},
                               num_head_channels = 64, use_scale_shift_norm = true, context_dim = 512,
                               cond_embed = true}
    assert.are.equal(fx["count.unet_a"]:item(), count(a))
    assert.are.equal(fx["count.unet_b"]:item(), count(b))
    assert.are.equal(fx["count.unet_bench"]:item(), count(bench))
    assert.are.equal(fx["count.transformer"]:item(), count(knnd.nn.transformer(TINY_TR)))
  end)

  it("seed and gen make the initialisation reproducible", function()
    local opts = {in_channels = 3, out_channels = 3, channels = 32, channel_mult = {1}, num_res_blocks = 1,
                  skip_zero_init = true}
    opts.seed = 3
    local w1 = knnd.nn.unet(opts).out[3].weight
    local w2 = knnd.nn.unet(opts).out[3].weight
    opts.seed, opts.gen = nil, knnd.Generator(3)
    local w3 = knnd.nn.unet(opts).out[3].weight
    opts.gen = knnd.Generator(4)
    local w4 = knnd.nn.unet(opts).out[3].weight
    assert.are.same(H.flat(w1), H.flat(w2))
    assert.are.same(H.flat(w1), H.flat(w3))
    assert.are_not.same(H.flat(w1), H.flat(w4))
  end)

  it("trains with AdamW and round-trips its state dict through a file", function()
    local m = knnd.nn.unet(TINY_UNET)
    local x, t, ctx = unet_inputs()
    local target = knnd.randn(2, 3, 8, 8, {gen = knnd.Generator(9)})
    local opt = knnd.optim.AdamW(m:parameters(), {lr = 1e-3})
    local first, last
    for _ = 1, 4 do
      opt:zero_grad()
      local loss = knnd.mse_loss(m(x, t, ctx), target)
      loss:backward()
      opt:step()
      first = first or loss:item()
      last = loss:item()
    end
    assert.is_true(last < first, ("loss %g -> %g"):format(first, last))
    m:eval()
    local path = H.tmp("models_spec", "unet.safetensors")
    knnd.io.save_safetensors(path, m)
    local back = knnd.nn.unet(TINY_UNET)
    back:eval()
    back:load_state_dict(knnd.io.load_safetensors(path))
    assert.are.same(H.flat(m(x, t, ctx)), H.flat(back(x, t, ctx)))
    os.remove(path)
  end)

  it("names a wrong option", function()
    H.errors_with(function() knnd.nn.unet{in_channels = 3, out_channels = 3, channels = 32, chanel_mult = {1}} end,
      "knnd.nn.unet: unknown option 'chanel_mult'")
    H.errors_with(function() knnd.nn.unet{out_channels = 3, channels = 32} end,
      "knnd.nn.unet: option 'in_channels' is required")
    H.errors_with(function() knnd.nn.unet{in_channels = 3, out_channels = 3, channels = 32, channel_mult = {1, 0}} end,
      "knnd.nn.unet: option 'channel_mult' entry 2 expected a positive integer")
    H.errors_with(function() knnd.nn.unet{in_channels = 3, out_channels = 3, channels = 32, channel_mult = 2} end,
      "knnd.nn.unet: option 'channel_mult' expected a list of positive integers, got number")
    H.errors_with(function() knnd.nn.unet{in_channels = 3, out_channels = 3, channels = 32, num_heads = 0} end,
      "knnd.nn.unet: option 'num_heads' is 0 (expected a positive integer)")
    H.errors_with(function() knnd.nn.unet{in_channels = 3, out_channels = 3, channels = 32, model_channels = 32} end,
      "knnd.nn.unet: options 'model_channels' and 'channels' are the same")
    H.errors_with(function() knnd.nn.unet{in_channels = 3, out_channels = 3, channels = 32, seed = 1,
                                           gen = knnd.Generator(1)} end,
      "exclude each other")
    H.errors_with(function() knnd.nn.unet{in_channels = 3, out_channels = 3, channels = 32, dropout = 1.5} end,
      "opts.dropout")
    H.errors_with(function() knnd.nn.unet{in_channels = 3, out_channels = 3, channels = 32, use_scale_shift_norm = 1} end,
      "use_scale_shift_norm")
    H.errors_with(function() knnd.nn.unet(3) end, "knnd.nn.unet: argument 1 expected an options table, got number")
    local m = knnd.nn.unet(TINY_UNET)
    local x, t = unet_inputs()
    H.errors_with(function() m(x, t, nil) end, "context")
  end)
end)

describe("knnd.nn.transformer", function()
  it("a stack and a block map [B,L,dim] to [B,L,dim]", function()
    local x, t, ctx = tr_inputs()
    local m = knnd.nn.transformer(TINY_TR)
    assert.is_true(knnd.nn.is_module(m))
    assert.are.equal("2x5x16", shape(m(x, t, ctx)))
    assert.are.equal("2x5x16", shape(m:forward(x, t, ctx)))
    assert.is_not_nil(m.blocks[2])
    local blk = knnd.nn.transformer_block{dim = 16, num_heads = 2, context_dim = 12, mlp_ratio = 2,
                                          diffusion_steps = 100, gen = knnd.Generator(2)}
    assert.are.equal("Block", blk:type())
    assert.are.equal("2x5x16", shape(blk(x, t, ctx)))
    assert.are.equal("16x12", shape(blk.attn2.key.weight))
    assert.are.equal(blk:num_params(), count(blk))
  end)

  it("trains with AdamW and round-trips its state dict through a file", function()
    local m = knnd.nn.transformer(TINY_TR)
    local x, t, ctx = tr_inputs()
    local target = knnd.randn(2, 5, 16, {gen = knnd.Generator(9)})
    local opt = knnd.optim.AdamW(m:parameters(), {lr = 1e-2})
    local first, last
    for _ = 1, 5 do
      opt:zero_grad()
      local loss = knnd.mse_loss(m(x, t, ctx), target)
      loss:backward()
      opt:step()
      first = first or loss:item()
      last = loss:item()
    end
    assert.is_true(last < first, ("loss %g -> %g"):format(first, last))
    m:eval()
    local path = H.tmp("models_spec", "transformer.safetensors")
    m:save(path)
    local back = knnd.nn.transformer(TINY_TR)
    back:eval()
    back:load(path)
    assert.are.same(H.flat(m(x, t, ctx)), H.flat(back(x, t, ctx)))
    os.remove(path)
  end)

  it("names a wrong option", function()
    H.errors_with(function() knnd.nn.transformer{dim = 16, num_heads = 2, context_dim = 12, depth = 2} end,
      "knnd.nn.transformer: unknown option 'depth'")
    H.errors_with(function() knnd.nn.transformer_block{dim = 16, num_heads = 2, context_dim = 12, num_blocks = 2} end,
      "knnd.nn.transformer_block: unknown option 'num_blocks'")
    H.errors_with(function() knnd.nn.transformer{dim = 16, num_heads = 2} end,
      "knnd.nn.transformer: option 'context_dim' is required")
    H.errors_with(function() knnd.nn.transformer{dim = 15, num_heads = 2, context_dim = 12} end, "opts.dim")
    H.errors_with(function() knnd.nn.transformer{dim = 16, num_heads = 2, context_dim = 12, gen = 3} end,
      "knnd.nn.transformer: option 'gen' expected a knnd.Generator, got number")
  end)
end)
