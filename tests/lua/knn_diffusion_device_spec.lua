-- knn_diffusion_device_spec.lua — the device option of knnd.knn_diffusion (train, generate, load, Model:sample,
-- Model:to) on both backbones: device = "cpu" is the default exactly, the losses read back in groups
-- (log_every) are those read every step, bad devices are named; on a GPU a few training steps and a short sample
-- on "cuda" match the CPU's with the same seed (pending without a device: never reported as passed).
local knnd = require "knnd"
local h = require "spec_helpers"
local kd = knnd.knn_diffusion
local function tmp(name) return h.tmp("knn_diffusion_device_spec", name) end
local function rundir(name) return h.rundir("knn_diffusion_device_spec", name) end

local has_gpu = knnd.cuda.available()

local N, D, S = 300, 24, 16
local fx = h.fmnist_retrieval("knn_diffusion_device_spec", { n = N, size = S, dim = D, k = 4 })

local function tiny(mode, extra)
  local cfg = { image_size = S, channels = 1, seed = 3,
    unet = { channels = 32, channel_mult = { 1, 2 }, num_res_blocks = 1, attention_resolutions = { 8 } },
    cond = { mode = mode or "knn", k = 4, dim = D, p_uncond = 0.3 }, diffusion = { T = 100 } }
  for k, v in pairs(extra or {}) do cfg[k] = v end
  return kd.new(cfg)
end

-- a small VQ-VAE for the discrete backbone, trained once (only when a discrete case runs)
local vq_path
local function tiny_discrete(mode)
  if not vq_path then
    local dir = rundir("vq")
    knnd.vqvae.train { dataset = fx.ds_path, out = dir, steps = 5, batch = 16, lr = 2e-3, seed = 1, progress = false,
      model = { channels = 16, channel_mult = { 1, 2, 2 }, num_res_blocks = 1, norm_groups = 8, num_codes = 32,
        embed_dim = 8 } }
    vq_path = dir .. "/model.h5"
  end
  return kd.new { image_size = S, channels = 1, seed = 3, backbone = "discrete",
    cond = { mode = mode or "knn", k = 4, dim = D, p_uncond = 0.3 },
    discrete = { vqvae = vq_path, dim = 32, heads = 2, layers = 2, T = 8, time_sampling = "importance" } }
end

local function train(model, dir, extra)
  local o = { model = model, dataset = fx.ds_path, embeddings = fx.emb_path, cache = fx.cache_path, out = dir,
    steps = 5, batch = 8, checkpoint_every = 3, progress = false, seed = 5 }
  for k, v in pairs(extra or {}) do o[k] = v end
  return kd.train(o)
end

local function same(a, b) return knnd.eq(a, b):to("f32"):min():item() == 1 end

local function same_weights(a, b)
  local sa, sb = a:state_dict(), b:state_dict()
  for k, v in pairs(sa) do
    if not same(v, sb[k]) then return false, k end
  end
  return true
end

-- the largest |a - b| / (1 + |b|) over the state dicts (a's on any device)
local function weights_gap(a, b)
  local sa, sb, worst = a:state_dict(), b:state_dict(), 0
  for k, v in pairs(sa) do
    if v:dtype() == "f32" then
      local w = sb[k]:to("cpu")
      local gap = ((v:to("cpu") - w):abs() / (w:abs() + 1)):max():item()
      if gap > worst then worst = gap end
    end
  end
  return worst
end

local function gen_opts(m, extra)
  local o = { model = m, prompts = { "a", "b" }, query = fx.emb:narrow(1, 1, 2), index = fx.index, n = 2, steps = 3,
    seed = 4, progress = false }
  for k, v in pairs(extra or {}) do o[k] = v end
  return o
end

describe("knn_diffusion: device = \"cpu\"", function()
  it("trains exactly as the default (losses, checkpoint, EMA model) on the continuous backbone", function()
    local da, db = rundir("cpu_default"), rundir("cpu_explicit")
    local a = train(tiny("knn"), da)
    local m = tiny("knn")
    local b = train(m, db, { device = "cpu" })
    assert.are.same(a.log.loss, b.log.loss)
    assert.are.equal(a.loss, b.loss)
    assert.are.equal("cpu", m:device())
    assert.is_true(same_weights(kd.load(da .. "/model.h5"), kd.load(db .. "/model.h5")))
    assert.is_true(same_weights(kd.load(da .. "/checkpoint.h5", { weights = "live" }),
      kd.load(db .. "/checkpoint.h5", { weights = "live" })))
  end)

  it("trains exactly as the default on the discrete backbone (importance-sampled t)", function()
    local da, db = rundir("disc_default"), rundir("disc_explicit")
    local a = train(tiny_discrete("knn"), da, { steps = 12, batch = 4 })
    local b = train(tiny_discrete("knn"), db, { steps = 12, batch = 4, device = "cpu" })
    assert.are.same(a.log.loss, b.log.loss)
    assert.is_true(same_weights(kd.load(da .. "/model.h5"), kd.load(db .. "/model.h5")))
    local ga = kd.generate(gen_opts(kd.load(da .. "/model.h5")))
    local gb = kd.generate(gen_opts(kd.load(db .. "/model.h5"), { device = "cpu" }))
    assert.is_true(same(ga.images, gb.images))
  end)

  it("reads the losses back in groups (log_every) with the same log, checkpoints and resume", function()
    local da, db = rundir("every1"), rundir("every4")
    local a = train(tiny("lafite_noise"), da, { steps = 7 })
    local part = train(tiny("lafite_noise"), db, { steps = 7, log_every = 4, until_step = 5 })
    assert.are.equal(5, part.steps)
    assert.are.same({ table.unpack(a.log.loss, 1, 5) }, part.log.loss)
    local b = train(tiny("lafite_noise"), db, { steps = 7, log_every = 4 })
    assert.are.equal(5, b.resumed_from)
    assert.are.same(a.log.loss, b.log.loss)
    assert.are.equal(a.loss, b.loss)
    assert.is_true(same_weights(kd.load(da .. "/model.h5"), kd.load(db .. "/model.h5")))
    h.errors_with(function() train(tiny("knn"), tmp("x"), { log_every = 0 }) end,
      "option 'log_every' expected a positive integer, got 0")
  end)

  it("samples and generates exactly as the default, and m:to(\"cpu\") on a CPU model changes nothing", function()
    local m = tiny("knn")
    local tokens = m:condition(fx.emb:narrow(1, 1, 2), fx.store:gather(knnd.tensor({ { 1, 2, 3, 4 }, { 5, 6, 7, 8 } },
      { dtype = "i64" })))
    local null = m.null
    assert.are.equal(m, m:to("cpu"))
    assert.are.equal(null, m.null)
    assert.are.equal("cpu", m:device())
    for _, sampler in ipairs { "dpmpp", "ddpm" } do
      local a = m:sample { tokens = tokens, steps = 3, seed = 1, sampler = sampler }
      local b = m:sample { tokens = tokens, steps = 3, seed = 1, sampler = sampler, device = "cpu" }
      assert.is_true(same(a, b))
      assert.are.equal("cpu", b:device())
    end
    assert.is_true(same(kd.generate(gen_opts(m)).images, kd.generate(gen_opts(m, { device = "cpu" })).images))
    local path = tmp("saved.h5")
    m:save(path)
    assert.are.equal("cpu", kd.load(path, { device = "cpu" }):device())
  end)
end)

describe("knn_diffusion: bad devices", function()
  local m = tiny("no_knn")
  local tokens = m:null_tokens(1):contiguous()
  local function calls(device)
    return {
      { function() train(m, tmp("bad"), { device = device }) end, "knnd.knn_diffusion.train: option 'device'" },
      { function() kd.generate(gen_opts(m, { device = device })) end, "knnd.knn_diffusion.generate: option 'device'" },
      { function() m:sample { tokens = tokens, steps = 1, device = device } end,
        "knnd.knn_diffusion.Model:sample: option 'device'" },
      { function() m:to(device) end, "knnd.knn_diffusion.Model:to: argument 'device'" },
      { function() kd.load(tmp("nothing.h5"), { device = device }) end, "knnd.knn_diffusion.load: option 'device'" },
    }
  end

  it("an unknown device string or value is an error naming the option", function()
    for _, device in ipairs { "gpu", "CUDA", "cuda:", "cuda:x", "cuda0", "cuda:-1", " cpu" } do
      for _, c in ipairs(calls(device)) do
        h.errors_with(c[1], c[2] .. " is '" .. device .. "' (expected \"cpu\", \"cuda\" or \"cuda:N\")")
      end
    end
    for _, c in ipairs(calls(0)) do h.errors_with(c[1], c[2] .. " expected \"cpu\", \"cuda\" or \"cuda:N\", got a number") end
    h.errors_with(function() kd.check_device("experiments/x.lua", "tpu") end,
      "experiments/x.lua: option 'device' is 'tpu' (expected")
    assert.are.equal("cpu", m:device()) -- nothing moved
  end)

  it("a CUDA device that is not there is an error naming the option", function()
    if has_gpu then
      local n = knnd.cuda.device_count()
      local name = ("cuda:%d"):format(n)
      for _, c in ipairs(calls(name)) do
        h.errors_with(c[1], ("%s is '%s' but %d CUDA device(s) are present"):format(c[2], name, n))
      end
      assert.are.equal("cuda:0", kd.check_device("train", "cuda"))
    else
      for _, device in ipairs { "cuda", "cuda:0", "cuda:1" } do
        for _, c in ipairs(calls(device)) do
          h.errors_with(c[1], ("%s is '%s' but no CUDA device is available (knnd.cuda.available() is false"):format(c[2],
            device))
        end
      end
      assert.are.equal("cpu", m:device())
    end
    assert.are.equal("cpu", kd.check_device("train", "cpu"))
    assert.is_nil(kd.check_device("train", nil))
  end)
end)

describe("knn_diffusion on a GPU", function()
  local tf32
  before_each(function() if has_gpu then tf32 = knnd.cuda.allow_tf32(false) end end)
  after_each(function() if has_gpu then knnd.cuda.allow_tf32(tf32) end end)

  it("a few training steps on cuda give the CPU's losses and weights (continuous backbone)", function()
    if not has_gpu then pending("needs a CUDA device") return end
    local dref, dir = rundir("gpu_ref"), rundir("gpu_run")
    local cpu = train(tiny("knn"), dref, { steps = 3, checkpoint_every = 2 })
    local m = tiny("knn")
    local gpu = train(m, dir, { steps = 3, checkpoint_every = 2, device = "cuda" })
    assert.are.equal("cuda:0", m:device())
    assert.are.equal("cuda:0", m.null:device())
    assert.are.equal(3, #gpu.log.loss)
    h.assert_close(gpu.log.loss, cpu.log.loss, 1e-4)
    -- the saved files come from the device's tensors; the live and EMA weights as the CPU run's
    local gap = weights_gap(kd.load(dir .. "/model.h5"), kd.load(dref .. "/model.h5"))
    assert.is_true(gap < 1e-3, ("EMA weights differ by %g"):format(gap))
    gap = weights_gap(kd.load(dir .. "/checkpoint.h5", { weights = "live" }), kd.load(dref .. "/checkpoint.h5",
      { weights = "live" }))
    assert.is_true(gap < 1e-3, ("live weights differ by %g"):format(gap))
    local back = kd.load(dir .. "/model.h5", { device = "cuda" })
    assert.are.equal("cuda:0", back:device())
  end)

  it("resumes onto cuda (from its own checkpoint and from a CPU one) with the CPU's losses", function()
    if not has_gpu then pending("needs a CUDA device") return end
    local ref = train(tiny("knn"), rundir("gpu_resume_ref"), { steps = 4, checkpoint_every = 2 })
    local dg = rundir("gpu_resume")
    train(tiny("knn"), dg, { steps = 4, checkpoint_every = 2, device = "cuda", until_step = 2, log_every = 1 })
    local rg = train(tiny("knn"), dg, { steps = 4, checkpoint_every = 2, device = "cuda" })
    assert.are.equal(2, rg.resumed_from)
    h.assert_close(rg.log.loss, ref.log.loss, 1e-4)
    local dc = rundir("cpu_then_gpu")
    train(tiny("knn"), dc, { steps = 4, checkpoint_every = 2, until_step = 2 })
    local rc = train(tiny("knn"), dc, { steps = 4, checkpoint_every = 2, device = "cuda" })
    assert.are.equal(2, rc.resumed_from)
    h.assert_close(rc.log.loss, ref.log.loss, 1e-4)
    -- and back: the CUDA run's checkpoint resumes on the CPU
    local back = train(tiny("knn"), dg, { steps = 5, checkpoint_every = 2, device = "cpu" })
    assert.are.equal(4, back.resumed_from)
    assert.are.equal(5, #back.log.loss)
  end)

  it("a short sample and generate on cuda give the CPU's images", function()
    if not has_gpu then pending("needs a CUDA device") return end
    local m, g = tiny("knn"), tiny("knn")
    local tokens = m:condition(fx.emb:narrow(1, 1, 2), fx.store:gather(knnd.tensor({ { 1, 2, 3, 4 }, { 5, 6, 7, 8 } },
      { dtype = "i64" })))
    g:to("cuda")
    for _, sampler in ipairs { "dpmpp", "ddim", "ddpm" } do
      local a = m:sample { tokens = tokens, steps = 3, seed = 1, sampler = sampler }
      local b = g:sample { tokens = tokens, steps = 3, seed = 1, sampler = sampler }
      assert.are.equal("cuda:0", b:device())
      h.assert_close(b:to("cpu"), a:totable(), 1e-3)
    end
    local ga = kd.generate(gen_opts(m))
    local gb = kd.generate(gen_opts(tiny("knn"), { device = "cuda" }))
    assert.are.equal("cpu", gb.images:device())
    h.assert_close(gb.images, ga.images:totable(), 1e-3)
  end)

  it("the discrete backbone trains and samples on cuda as on the CPU", function()
    if not has_gpu then pending("needs a CUDA device") return end
    local cpu = train(tiny_discrete("knn"), rundir("gpu_disc_ref"), { steps = 3, batch = 4 })
    local m = tiny_discrete("knn")
    local gpu = train(m, rundir("gpu_disc"), { steps = 3, batch = 4, device = "cuda" })
    assert.are.equal("cuda:0", m:device())
    h.assert_close(gpu.log.loss, cpu.log.loss, 1e-4)
    local ga = kd.generate(gen_opts(tiny_discrete("knn")))
    local gb = kd.generate(gen_opts(tiny_discrete("knn"), { device = "cuda" }))
    -- the tokens are drawn from the same uniforms; a probability within rounding of a threshold may flip one
    local diff = knnd.ne(ga.images, gb.images):to("f32"):mean():item()
    assert.is_true(diff < 0.05, ("%.3f of the pixels differ"):format(diff))
  end)
end)
