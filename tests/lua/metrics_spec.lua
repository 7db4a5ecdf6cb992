-- metrics_spec.lua — knnd.metrics' statistics, Fréchet distance, KID and CLIP metrics from Lua, on
-- real numbers: FID of a set with itself, of shifted features, through a saved file, and the
-- named errors of misuse. (Parity with pytorch-fid, clean-fid and torchmetrics is the C test's,
-- tests/core/test_fid_stats.c.)
local knnd = require "knnd"

local h = require "spec_helpers"
local errors_with = h.errors_with
local function tmp(name) return h.tmp("metrics_spec", name) end

local M = knnd.metrics
local N, D = 400, 16
local EX = "spec/features"

-- relu of Gaussians: non-negative, like Inception's pool3 features
local function features(n, seed, shift)
  local x = knnd.relu(knnd.randn(n, D, { gen = knnd.Generator(seed) }))
  return shift and x + shift or x
end

local function stats_of(x, opts)
  return M.stats(D, opts or { extractor = EX, preprocess = "synthetic" }):add(x):finish()
end

describe("knnd.metrics.stats", function()
  it("accumulates mean and covariance over batches", function()
    local x = features(N, 1)
    local s = M.stats(D, { extractor = EX, preprocess = "synthetic" })
    for start = 1, N, 64 do s:add(x:narrow(1, start, math.min(64, N - start + 1))) end
    s:finish()
    assert.are.equal(N, s:n())
    assert.are.equal(D, s:dim())
    assert.are.equal(EX, s:extractor())
    assert.are.equal("synthetic", s:preprocess())
    assert.are.same({ D }, s:mean():shape())
    assert.are.same({ D, D }, s:cov():shape())
    h.assert_close(s:mean(), h.flat(knnd.mean(x, 1)), 1e-5)
    -- the covariance of the whole set at once: the same numbers
    h.assert_close(s:cov(), stats_of(x):cov():totable(), 1e-6)
    assert.matches("knnd.FidStats", tostring(s), 1, true)
  end)

  it("gives FID ~0 for a set with itself and |shift|^2 for shifted features", function()
    local x = features(N, 2)
    local a = stats_of(x)
    assert.is_true(math.abs(M.frechet(a, a)) < 1e-8)
    -- adding 0.5 to every feature moves the mean by 0.5 in each of D dims, covariance unchanged
    local b = stats_of(x + 0.5)
    assert.is_true(math.abs(M.frechet(a, b) - 0.25 * D) < 1e-4)
    -- the same on tensors
    local raw = M.frechet_raw(a:mean(), a:cov(), b:mean(), b:cov(), { eps = 1e-6 })
    assert.is_true(math.abs(raw - 0.25 * D) < 1e-3)
  end)

  it("saves and loads a statistics file that gives the same FID", function()
    local a, b = stats_of(features(N, 3)), stats_of(features(N, 4, 0.1))
    local path = tmp("a.h5")
    a:save(path)
    local l = M.load_stats(path)
    assert.are.equal(N, l:n())
    assert.are.equal(EX, l:extractor())
    assert.are.equal(M.frechet(a, b), M.frechet(l, b))
    assert.are.equal(M.frechet(a, b), M.frechet(M.load_stats(path, { extractor = EX }), b))
  end)

  it("reads pytorch-fid's .npz", function()
    local here = debug.getinfo(1, "S").source:sub(2):match("(.*/)") or "./"
    local path = here .. "../reference/fid/stats_d8.npz"
    local l = M.load_stats(path, { extractor = "test/x" })
    assert.are.equal(8, l:dim())
    assert.are.equal(0, l:n())
    errors_with(function() M.load_stats(path) end, "knnd.metrics.load_stats: ")
  end)

  it("names the error of misuse", function()
    local a = stats_of(features(N, 5))
    errors_with(function() M.stats(D) end, "knnd.metrics.stats: option 'extractor' is required")
    errors_with(function() M.stats(D, { extractor = EX, colour = 1 }) end, "unknown option 'colour'")
    errors_with(function() M.stats(D, { extractor = EX }):add(features(3, 1):narrow(2, 1, 4)) end,
      "knnd.FidStats:add: argument 'features' has 4 columns (expected 16")
    errors_with(function() M.stats(D, { extractor = EX }):add(features(1, 1)):finish() end, "at least 2")
    local nan = features(4, 1)
    nan:set(2, 3, 0 / 0)
    errors_with(function() M.stats(D, { extractor = EX }):add(nan) end, "NaN at row 1, column 2")
    local other = stats_of(features(N, 5), { extractor = "other/extractor" })
    errors_with(function() M.frechet(a, other) end, "different extractors")
    errors_with(function() M.frechet(a, 3) end, "knnd.metrics.frechet: argument 2 expected FID statistics")
    errors_with(function() M.stats(D, { extractor = EX }):save(tmp("unfinished.h5")) end, "not finished")
    errors_with(function() M.load_stats(tmp("missing.h5")) end, "knnd.metrics.load_stats: cannot open")
    errors_with(function() M.frechet_raw(a:mean(), a:cov(), a:mean(), knnd.ones(D, 3)) end,
      "argument 4 'sigma2'")
  end)
end)

describe("knnd.metrics.kid", function()
  it("is ~0 between samples of one distribution and larger for shifted ones, reproducibly", function()
    local x, y = features(300, 6), features(300, 7)
    local same, std = M.kid(x, y, { subsets = 20, subset_size = 100, seed = 1 })
    local shifted = M.kid(x, features(300, 8, 0.5), { subsets = 20, subset_size = 100, seed = 1 })
    assert.is_true(math.abs(same) < 0.05 * shifted)
    assert.is_true(std > 0)
    assert.are.equal(same, (M.kid(x, y, { subsets = 20, subset_size = 100, seed = 1 })))
    errors_with(function() M.kid(x, y, { subset = 3 }) end, "unknown option 'subset'")
    errors_with(function() M.kid(x, knnd.ones(10, 3)) end, "knnd.metrics.kid: arguments 'a' and 'b' have 16 and 3")
  end)
end)

describe("knnd.metrics CLIP metrics", function()
  it("scores matching and opposite embeddings", function()
    local img = knnd.randn(20, 8, { gen = knnd.Generator(9) })
    local mean, rows = M.clip_score(img, img * 2)
    assert.is_true(math.abs(mean - 100) < 1e-6)
    assert.are.same({ 20 }, rows:shape())
    assert.are.equal(0, (M.clip_score(img, -img)))
    assert.are.equal(1, M.r_precision(img, img, { negatives = 5, seed = 1 }))
    errors_with(function() M.r_precision(img, img, { negatives = 20 }) end, "n_negatives")
    errors_with(function() M.clip_score(img, knnd.randn(20, 4)) end, "knnd.metrics.clip_score: arguments 'image'")
  end)
end)
