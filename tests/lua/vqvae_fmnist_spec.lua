-- vqvae_fmnist_spec.lua — does the VQ-VAE learn? A small one (downsampling by 4, 64 EMA codes,
-- dead-code restarts) trained for 150 steps on 2000 real Fashion-MNIST images at 16x16
-- reconstructs 500 held-out images through its 4x4 tokens with a PSNR above the floor, well
-- above the PSNR of the dataset's mean image, and uses most of its codebook. The same on the
-- emoji (Noto Color Emoji at 32x32, RGB): trained on 90% of the emoji, judged on the other 10%,
-- concepts it never saw. Release build only (tests/CMakeLists.txt): under ASan it takes minutes
-- and reaches no code vqvae_spec does not.
local knnd = require "knnd"
local h = require "spec_helpers"
local function tmp(name) return h.tmp("vqvae_fmnist_spec", name) end

local S, TRAIN, HELD = 16, 2000, 500
-- measured when written: 17.4 dB held-out after 150 steps (the mean image: 11.6 dB), 100% of the
-- codes used, perplexity 53.6; about 20 s of training on 2 cores
local PSNR_FLOOR = 16.0
-- the emoji case (below): measured when written: 19.55 dB on the 365 held-out emoji after 300 steps
-- (their training mean: 12.0 dB), 99% of the 128 codes used, perplexity 96; 74 s on 2 shared cores
local EMOJI_STEPS, EMOJI_PSNR_FLOOR = 300, 18.0

describe("knnd.vqvae on real Fashion-MNIST", function()
  it("reconstructs held-out images through its codes", function()
    local ds_path, out = tmp("fm.h5"), tmp("run")
    os.execute(("rm -rf '%s'"):format(out))
    knnd.dataset.prepare_fashion_mnist { out = ds_path, split = "train", size = S, limit = TRAIN + HELD, progress = false }
    local r = knnd.vqvae.train { dataset = ds_path, out = out, steps = 150, batch = 32, lr = 2e-3, seed = 2,
      rows = knnd.arange(0, TRAIN, { dtype = "i64" }), checkpoint_every = 150, progress = false,
      model = { channels = 8, channel_mult = { 1, 2, 4 }, num_res_blocks = 1, norm_groups = 8, num_codes = 64,
        embed_dim = 16, codebook = "ema", dead_after = 20, seed = 1 } }
    local held = knnd.arange(TRAIN, TRAIN + HELD, { dtype = "i64" })
    local e = knnd.vqvae.evaluate { model = r.model, dataset = ds_path, rows = held }

    -- the baseline: every held-out image replaced by the training images' mean
    local ds = knnd.dataset.open(ds_path)
    local mean = (ds:images(knnd.arange(0, TRAIN, { dtype = "i64" })):float() * (2 / 255) - 1):mean { dim = 1, keepdim = true }
    local x = ds:images(held):float() * (2 / 255) - 1
    local baseline = knnd.vqvae.psnr(mean:expand(HELD, 1, S, S), x)
    print(("\nvqvae_fmnist_spec: held-out PSNR %.2f dB (mean image %.2f dB), codebook usage %.0f%%, perplexity %.1f, "
      .. "train %.1f s"):format(e.psnr, baseline, 100 * e.usage, e.perplexity, r.seconds))
    assert.is_true(e.psnr > PSNR_FLOOR, ("held-out PSNR %.2f dB (floor %.1f)"):format(e.psnr, PSNR_FLOOR))
    assert.is_true(e.psnr > baseline + 4, ("PSNR %.2f vs the mean image's %.2f"):format(e.psnr, baseline))
    assert.is_true(e.usage >= 0.5, ("codebook usage %.2f"):format(e.usage))
    assert.is_true(e.perplexity >= 16, ("perplexity %.1f"):format(e.perplexity))
  end)

  it("reconstructs held-out emoji (concepts it never trained on) through its codes", function()
    local ds_path, out = tmp("emoji32.h5"), tmp("run_emoji")
    os.execute(("rm -rf '%s'"):format(out))
    local n = knnd.dataset.prepare_emoji { out = ds_path, size = 32, progress = false }
    -- a seeded 10% of the emoji held out
    local perm = knnd.randperm(n, { gen = knnd.Generator(5) })
    local n_held = n // 10
    local held, train = perm:narrow(1, 1, n_held), perm:narrow(1, n_held + 1, n - n_held)
    local r = knnd.vqvae.train { dataset = ds_path, out = out, steps = EMOJI_STEPS, batch = 32, lr = 2e-3, seed = 2,
      rows = train, checkpoint_every = EMOJI_STEPS, progress = false,
      model = { channels = 16, channel_mult = { 1, 2, 2 }, num_res_blocks = 1, norm_groups = 8, num_codes = 128,
        embed_dim = 16, codebook = "ema", dead_after = 20, seed = 1 } }
    local e = knnd.vqvae.evaluate { model = r.model, dataset = ds_path, rows = held }
    local ds = knnd.dataset.open(ds_path)
    local mean = (ds:images(train):float() * (2 / 255) - 1):mean { dim = 1, keepdim = true }
    local x = ds:images(held):float() * (2 / 255) - 1
    local baseline = knnd.vqvae.psnr(mean:expand(n_held, 3, 32, 32), x)
    print(("\nvqvae_fmnist_spec (emoji): held-out PSNR %.2f dB on %d emoji (mean image %.2f dB), codebook usage %.0f%%, "
      .. "perplexity %.1f, train %.1f s"):format(e.psnr, n_held, baseline, 100 * e.usage, e.perplexity, r.seconds))
    assert.is_true(e.psnr > EMOJI_PSNR_FLOOR, ("held-out PSNR %.2f dB (floor %.1f)"):format(e.psnr, EMOJI_PSNR_FLOOR))
    assert.is_true(e.psnr > baseline + 3, ("PSNR %.2f vs the mean image's %.2f"):format(e.psnr, baseline))
    assert.is_true(e.usage >= 0.5, ("codebook usage %.2f"):format(e.usage))
  end)
end)
