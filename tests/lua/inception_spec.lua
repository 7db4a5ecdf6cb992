-- inception_spec.lua — knnd.metrics.inception from Lua: pytorch-fid's InceptionV3 on random
-- weights by the formula of tests/reference/inception/make_inception_fixture.py. The weights file
-- (87 MB) is written by the C test binary (`test_inception --write-weights PATH`, beside the
-- specs' working folder build/tests/tmp), since Lua has no SHA-256 for the converter's digest;
-- without that binary the parity cases are pending and only the refusals run.
local knnd = require "knnd"
local H = require "spec_helpers"

local here = debug.getinfo(1, "S").source:sub(2):match("(.*/)") or "./"
local FIXTURE = here .. "../reference/inception/inception_fixture.safetensors"
local WRITER = os.getenv("KNND_TEST_INCEPTION") or "../test_inception"

local function rel_error(a, b)
  return math.sqrt(((a - b) ^ 2):sum():item() / (b ^ 2):sum():item())
end

describe("knnd.metrics.inception", function()
  local weights = H.tmp("inception", "random.safetensors")
  local have_weights = H.exists(WRITER) and os.execute(WRITER .. " --write-weights " .. weights .. " >/dev/null")
  local fx = knnd.io.load_safetensors(FIXTURE)

  teardown(function() os.remove(weights) end)

  local function net()
    if not have_weights then pending("no " .. WRITER .. " to write the random weights") end
    return knnd.metrics.inception(weights, { reference = false })
  end

  it("matches pytorch-fid's four taps", function()
    local m = net()
    if not m then return end
    for i = 0, 2 do
      for _, dims in ipairs { 64, 192, 768, 2048 } do
        local f = m:features(fx["img" .. i], { dims = dims })
        assert.are.same({ fx["img" .. i]:size(1), dims }, f:shape())
        assert.is_true(rel_error(f, fx[("out%d_%d"):format(i, dims)]) < 1e-4)
      end
    end
  end)

  it("gives the same features in any batch size, and for u8 images", function()
    local m = net()
    if not m then return end
    local img = knnd.rand { 5, 3, 20, 24 }
    local all = m:features(img)
    assert.are.same({ 5, 2048 }, all:shape())
    assert.is_true(rel_error(m:features(img, { batch = 2 }), all) < 1e-5)
    local u8 = (img * 255):to("u8")
    local as_float = u8:to("f32") / 255
    assert.is_true(rel_error(m:features(u8, { batch = 3, dims = 768 }), m:features(as_float, { dims = 768 })) < 1e-6)
    assert.are.equal(m, m:to("cpu"))
    assert.has_error(function() m:to("gpu") end)
    assert.is_truthy(tostring(m):find("Inception"))
  end)

  it("refuses bad options and images", function()
    local m = net()
    if not m then return end
    local img = knnd.rand { 1, 3, 8, 8 }
    H.errors_with(function() m:features(img, { dims = 100 }) end, "option 'dims' is 100")
    H.errors_with(function() m:features(img, { batch = 0 }) end, "option 'batch' is 0")
    H.errors_with(function() m:features(img, { dimz = 64 }) end, "unknown option 'dimz'")
    H.errors_with(function() m:features(knnd.rand { 3, 8, 8 }) end, "expected [N, C, H, W]")
    H.errors_with(function() m:features(knnd.rand { 1, 2, 8, 8 }) end, "C = 1 or 3")
    H.errors_with(function() m:features(knnd.zeros({ 1, 3, 8, 8 }, { dtype = "i64" })) end, "'images' is i64")
    H.errors_with(function() knnd.metrics.inception(weights) end, "6726825d") -- reference = true by default
  end)

  it("refuses missing and garbage files", function()
    H.errors_with(function() knnd.metrics.inception("/nonexistent/inception.safetensors") end, "cannot open")
    local garbage = H.tmp("inception", "garbage.safetensors")
    H.write_file(garbage, "not a safetensors file")
    H.errors_with(function() knnd.metrics.inception(garbage, { reference = false }) end, "knnd.metrics.inception:")
    os.remove(garbage)
    H.errors_with(function() knnd.metrics.inception(FIXTURE, { reference = false }) end, "knnd-inception-fid")
    H.errors_with(function() knnd.metrics.inception(FIXTURE, { device = "tpu" }) end, "option 'device' is 'tpu'")
    H.errors_with(function() knnd.metrics.inception(FIXTURE, { refrence = false }) end, "unknown option 'refrence'")
  end)

  it("names the extractors", function()
    assert.are.equal("inception-v3-fid/pool3", knnd.metrics.inception_id(2048))
    assert.are.equal("inception-v3-fid/mixed6e", knnd.metrics.inception_id(768))
    assert.are.equal("inception-v3-fid/pool2", knnd.metrics.inception_id(192))
    assert.are.equal("inception-v3-fid/pool1", knnd.metrics.inception_id(64))
    H.errors_with(function() knnd.metrics.inception_id(1000) end, "'dims' is 1000")
  end)
end)
