-- dataset_spec.lua — knnd.dataset on real Fashion-MNIST (Debian's dataset-fashion-mnist) and on a
-- folder of PNGs: prepared values against an independent bilinear resize, captions, the loader's
-- coverage, reproducibility, exact resume and flips, and the errors of bad files and options.
local knnd = require "knnd"

local h = require "spec_helpers"
local flat, exists, write_file = h.flat, h.exists, h.write_file
local function tmp(name) return h.tmp("dataset_spec", name) end

local N = 500
local fm_path = tmp("fm32.h5")
local src = knnd.data.fashion_mnist { split = "train", limit = N }
knnd.dataset.prepare_fashion_mnist { out = fm_path, split = "train", size = 32, limit = N, progress = false }

-- PyTorch's bilinear interpolate (align_corners = false) of one 28 x 28 image, as doubles, rounded
local function naive_resize(img, size)
  local ih, iw = #img, #img[1]
  local function coord(d, in_n)
    local s = (d + 0.5) * in_n / size - 0.5
    if s < 0 then s = 0 end
    local i0 = math.floor(s)
    local i1 = math.min(i0 + 1, in_n - 1)
    return i0, i1, s - i0
  end
  local out = {}
  for y = 0, size - 1 do
    local y0, y1, ly = coord(y, ih)
    for x = 0, size - 1 do
      local x0, x1, lx = coord(x, iw)
      local v = (1 - ly) * ((1 - lx) * img[y0 + 1][x0 + 1] + lx * img[y0 + 1][x1 + 1])
        + ly * ((1 - lx) * img[y1 + 1][x0 + 1] + lx * img[y1 + 1][x1 + 1])
      out[#out + 1] = math.floor(v + 0.5)
    end
  end
  return out
end

describe("knnd.dataset.prepare_fashion_mnist", function()
  it("writes images, labels, captions and the format attributes", function()
    local f = knnd.io.h5open(fm_path)
    assert.are.same({ dtype = "u8", shape = { N, 1, 32, 32 } }, f:info("images"))
    assert.are.same({ dtype = "i64", shape = { N } }, f:info("labels"))
    assert.are.same({ dtype = "i64", shape = { N + 1 } }, f:info("captions/offsets"))
    assert.are.equal("knnd-image-dataset", f:attr("/", "format"))
    assert.are.equal(1, f:attr("/", "format_version"))
    assert.are.equal(N, f:attr("/", "count"))
    assert.are.equal(32, f:attr("/", "size"))
    assert.are.equal(1, f:attr("/", "channels"))
    assert.are.equal("fashion-mnist/train", f:attr("/", "source"))
    assert.are.equal(table.concat(knnd.data.fashion_mnist_classes, "\n"), f:attr("/", "classes"))
    f:close()
  end)

  it("stores each image as the bilinear resize of the original (PyTorch's formula, rounded)", function()
    local ds = knnd.dataset.open(fm_path)
    assert.are.equal(N, ds:count())
    assert.are.same({ 1, 32, 32 }, ds:image_shape())
    for _, r in ipairs({ 0, 1, 123, N - 1 }) do
      local want = naive_resize(src.images:select(1, r + 1):totable(), 32)
      local got = flat(ds:images({ r }))
      local worst = 0
      for k = 1, #want do worst = math.max(worst, math.abs(want[k] - got[k])) end
      assert.is_true(worst <= 1, ("row %d differs by %d from the reference resize"):format(r, worst))
    end
    -- the same rows through the uncached path
    local nc = knnd.dataset.open(fm_path, { cache = false })
    assert.are.same(flat(ds:images({ 5, 2, 400 })), flat(nc:images(knnd.tensor({ 5, 2, 400 }, { dtype = "i64" }))))
    nc:close()
    ds:close()
  end)

  it("keeps 28 x 28 exactly, pads centred, and repeats the gray channel for channels = 3", function()
    local p28, ppad, p3 = tmp("fm28.h5"), tmp("fmpad.h5"), tmp("fm3.h5")
    knnd.dataset.prepare_fashion_mnist { out = p28, size = 28, limit = 20, progress = false }
    knnd.dataset.prepare_fashion_mnist { out = ppad, size = 32, resize = "pad", limit = 20, progress = false }
    knnd.dataset.prepare_fashion_mnist { out = p3, size = 28, channels = 3, limit = 20, progress = false }
    local a, b, c = knnd.dataset.open(p28), knnd.dataset.open(ppad), knnd.dataset.open(p3)
    assert.are.same(flat(src.images:narrow(1, 1, 20)), flat(a:images(knnd.arange(0, 20, 1, { dtype = "i64" }))))
    local padded = b:images({ 7 }):view(32, 32)
    assert.are.same(flat(src.images:select(1, 8)), flat(padded:narrow(1, 3, 28):narrow(2, 3, 28)))
    assert.are.equal(0, knnd.sum(padded:narrow(1, 1, 2):float()):item())
    local rgb = c:images({ 3 }):view(3, 28, 28)
    for ch = 1, 3 do assert.are.same(flat(src.images:select(1, 4)), flat(rgb:select(1, ch))) end
    a:close() b:close() c:close()
  end)

  it("captions every image with a template naming its class", function()
    local ds = knnd.dataset.open(fm_path)
    local classes = knnd.data.fashion_mnist_classes
    local used = {}
    for r = 0, N - 1 do
      local label = math.tointeger(src.labels:get(r + 1))
      assert.are.equal(label, ds:label(r))
      assert.are.equal(classes[label + 1], ds:class_name(r))
      local cap = ds:caption(r)
      assert.is_truthy(cap:find(classes[label + 1], 1, true), ("row %d: '%s'"):format(r, cap))
      used[cap:gsub(classes[label + 1]:gsub("%p", "%%%0"), "")] = true
    end
    local n_templates = 0
    for _ in pairs(used) do n_templates = n_templates + 1 end
    assert.is_true(n_templates >= 4, "the templates should vary")
    -- the same seed draws the same captions; the ids of the labels come back as a tensor
    local again = tmp("fm_again.h5")
    knnd.dataset.prepare_fashion_mnist { out = again, limit = 30, size = 8, progress = false }
    local d2 = knnd.dataset.open(again)
    for r = 0, 29 do assert.are.equal(ds:caption(r), d2:caption(r)) end
    assert.are.same(flat(src.labels:narrow(1, 1, 3)), flat(ds:labels({ 0, 1, 2 })))
    d2:close()
    ds:close()
  end)
end)

describe("knnd.dataset loader", function()
  local ds
  before_each(function() ds = knnd.dataset.open(fm_path) end)
  after_each(function() ds:close() end)

  it("covers every row exactly once per epoch, in a new order each epoch", function()
    local it = ds:loader { batch = 64, shuffle = true, seed = 3, drop_last = false }
    assert.are.equal(8, it:batches_per_epoch())
    local orders = {}
    for epoch = 0, 1 do
      local seen, order = {}, {}
      for k = 1, 8 do
        local b = it:next()
        assert.are.equal(epoch, b.epoch)
        assert.are.equal(k - 1, b.index)
        assert.are.same({ k < 8 and 64 or N - 7 * 64, 1, 32, 32 }, b.x:shape())
        for j, r in ipairs(flat(b.rows)) do
          assert.is_nil(seen[r], ("row %d twice in epoch %d"):format(r, epoch))
          seen[r] = true
          order[#order + 1] = r
          assert.are.equal(ds:label(r), b.labels:get(j))
        end
      end
      for r = 0, N - 1 do assert.is_true(seen[r], ("row %d missing"):format(r)) end
      orders[epoch] = table.concat(order, ",")
    end
    assert.are_not.equal(orders[0], orders[1])
    -- drop_last: 7 full batches of distinct rows, then the next epoch
    local d = ds:loader { batch = 64, seed = 3 }
    local seen = {}
    for _ = 1, 7 do
      for _, r in ipairs(flat(d:next().rows)) do
        assert.is_nil(seen[r]); seen[r] = true
      end
    end
    assert.are.equal(1, d:next().epoch)
  end)

  it("scales to [-1, 1] and keeps file order without shuffle", function()
    local it = ds:loader { batch = 10, shuffle = false }
    local b = it:next()
    assert.are.same({ 0, 1, 2, 3, 4, 5, 6, 7, 8, 9 }, flat(b.rows))
    local want = ds:images(b.rows):float() * (2 / 255) - 1
    h.assert_close(b.x, want:totable(), 1e-6)
    assert.is_true(knnd.min(b.x):item() >= -1 and knnd.max(b.x):item() <= 1)
  end)

  it("gives the same batches for the same seed and others for another seed", function()
    local a = ds:loader { batch = 32, seed = 7, flip = true }
    local b = ds:loader { batch = 32, seed = 7, flip = true }
    local c = ds:loader { batch = 32, seed = 8, flip = true }
    local differ = false
    for _ = 1, 20 do -- crosses an epoch boundary (15 batches per epoch)
      local x, y, z = a:next(), b:next(), c:next()
      assert.are.same(flat(x.rows), flat(y.rows))
      assert.are.same(flat(x.x), flat(y.x))
      assert.are.same(flat(x.flipped), flat(y.flipped))
      if table.concat(flat(x.rows), ",") ~= table.concat(flat(z.rows), ",") then differ = true end
    end
    assert.is_true(differ)
  end)

  it("resumes exactly from state() mid-epoch and across epochs", function()
    for _, skip in ipairs({ 5, 17 }) do
      local a = ds:loader { batch = 32, seed = 11, flip = true }
      for _ = 1, skip do a:next() end
      local st = a:state()
      assert.are.equal(11, st.seed)
      local expected = {}
      for k = 1, 6 do expected[k] = a:next() end
      local b = ds:loader { batch = 32, seed = 99, flip = true } -- the seed comes from the state
      b:next()
      b:load_state(st)
      for k = 1, 6 do
        local got = b:next()
        assert.are.same(flat(expected[k].rows), flat(got.rows))
        assert.are.same(flat(expected[k].x), flat(got.x))
        assert.are.equal(expected[k].epoch, got.epoch)
      end
    end
  end)

  it("mirrors exactly the rows it marks as flipped", function()
    local a = ds:loader { batch = 64, seed = 5, flip = true }
    local b = ds:loader { batch = 64, seed = 5, flip = false }
    local n_flipped, n_kept = 0, 0
    for _ = 1, 3 do
      local x, y = a:next(), b:next()
      assert.are.same(flat(x.rows), flat(y.rows))
      local fl = flat(x.flipped)
      for j = 1, #fl do
        local xr = x.x:select(1, j):totable()[1]
        local yr = y.x:select(1, j):totable()[1]
        for row = 1, 32 do
          for col = 1, 32 do
            local other = fl[j] == 1 and yr[row][33 - col] or yr[row][col]
            if xr[row][col] ~= other then error(("batch row %d (flipped %d) differs at %d,%d"):format(j, fl[j], row, col)) end
          end
        end
        if fl[j] == 1 then n_flipped = n_flipped + 1 else n_kept = n_kept + 1 end
      end
    end
    assert.is_true(n_flipped > 50 and n_kept > 50, ("flipped %d, kept %d"):format(n_flipped, n_kept))
    -- a flipped image is not symmetric: flipping changed it
    assert.are_not.same(flat(a:next().x), flat(b:next().x))
  end)
end)

describe("knnd.dataset errors", function()
  it("explains missing, truncated and foreign files", function()
    h.errors_with(function() knnd.dataset.open(tmp("missing.h5")) end, "'dataset_spec_missing.h5' not found")
    local f = assert(io.open(fm_path, "rb"))
    local head = f:read(2000)
    f:close()
    local trunc = tmp("trunc.h5")
    write_file(trunc, head)
    h.errors_with(function() knnd.dataset.open(trunc) end, "cannot read 'dataset_spec_trunc.h5' as HDF5")
    local junk = tmp("junk.h5")
    write_file(junk, ("not an hdf5 file\n"):rep(100))
    h.errors_with(function() knnd.dataset.open(junk) end, "as HDF5")
    local foreign = tmp("foreign.h5")
    local g = knnd.io.h5open(foreign, "w")
    g:write("x", knnd.zeros(3))
    g:close()
    h.errors_with(function() knnd.dataset.open(foreign) end, "is not a knnd image dataset")
  end)

  it("names wrong options and bad values", function()
    local ds = knnd.dataset.open(fm_path)
    h.errors_with(function() ds:loader { batchsize = 4 } end, "unknown option 'batchsize'")
    h.errors_with(function() ds:loader { batch = 0 } end, "option 'batch' expected a positive integer, got 0")
    h.errors_with(function() ds:loader { batch = -3 } end, "option 'batch' expected a positive integer")
    h.errors_with(function() ds:loader { batch = 2.5 } end, "option 'batch' expected a positive integer")
    h.errors_with(function() ds:loader { batch = N + 1 } end, "larger than the dataset")
    h.errors_with(function() ds:loader { device = "tpu" } end, "option 'device' expected")
    if not knnd.cuda.available() then
      h.errors_with(function() ds:loader { device = "cuda" } end, "no CUDA device is available")
    end
    h.errors_with(function() ds:caption(N) end, "row 500 is out of range")
    h.errors_with(function() ds:images({ -1 }) end, "row -1 is out of range")
    local it = ds:loader { batch = 4 }
    h.errors_with(function() it:load_state({ epoch = 0, position = -1, seed = 0 }) end, "field 'position'")
    h.errors_with(function() it:load_state({ epoch = 0, position = N + 1, seed = 0 }) end, "past the end")
    h.errors_with(function() knnd.dataset.prepare_fashion_mnist { out = tmp("x.h5"), sise = 3 } end,
      "unknown option 'sise'")
    h.errors_with(function() knnd.dataset.prepare_fashion_mnist { out = tmp("x.h5"), channels = 2 } end,
      "option 'channels' expected 1 or 3")
    h.errors_with(function() knnd.dataset.prepare_fashion_mnist { size = 3 } end, "option 'out'")
    h.errors_with(function() knnd.dataset.prepare_folder { dir = tmp("nodir"), out = tmp("x.h5") } end, "nodir")
    assert.is_false(exists(tmp("x.h5")))
    ds:close()
  end)
end)

describe("knnd.dataset.prepare_folder", function()
  it("reads PNGs as RGB on white, centre-cropped and resized, with TSV or file-name captions", function()
    local dir = tmp("pngs")
    os.execute("rm -rf '" .. dir .. "' && mkdir -p '" .. dir .. "'")
    -- gray 10 x 20: the centred 10 x 10 square (columns 6..15) is 100, the rest 0
    local gray = knnd.zeros(1, 10, 20)
    gray:narrow(3, 6, 10):fill_(100 / 255)
    knnd.save_png(dir .. "/a_gray-image.png", gray)
    -- RGB 16 x 16 of one colour
    local rgb = knnd.zeros(3, 16, 16)
    rgb:select(1, 1):fill_(1)
    rgb:select(1, 3):fill_(0.2)
    knnd.save_png(dir .. "/b.png", rgb)
    -- RGBA: left half transparent (white after compositing), right half opaque black
    local rgba = knnd.zeros(4, 8, 8)
    rgba:select(1, 4):narrow(2, 5, 4):fill_(1)
    knnd.save_png(dir .. "/c.png", rgba)
    write_file(dir .. "/captions.tsv", "b.png\ta red square\nc.png\thalf white, half black\n")
    write_file(dir .. "/notes.txt", "not an image")
    local out = tmp("folder.h5")
    assert.are.equal(3, knnd.dataset.prepare_folder { dir = dir, out = out, size = 8, captions = "captions.tsv",
      progress = false })
    local ds = knnd.dataset.open(out)
    assert.are.equal(3, ds:count())
    assert.are.same({ 3, 8, 8 }, ds:image_shape())
    assert.are.same({ "a gray image", "a red square", "half white, half black" },
      { ds:caption(0), ds:caption(1), ds:caption(2) })
    assert.are.equal(-1, ds:label(0))
    for _, v in ipairs(flat(ds:images({ 0 }))) do assert.are.equal(100, v) end
    local b = ds:images({ 1 }):view(3, 8, 8)
    for _, v in ipairs(flat(b:select(1, 1))) do assert.are.equal(255, v) end
    for _, v in ipairs(flat(b:select(1, 2))) do assert.are.equal(0, v) end
    for _, v in ipairs(flat(b:select(1, 3))) do assert.are.equal(51, v) end
    local c = ds:images({ 2 }):view(3, 8, 8)
    for _, v in ipairs(flat(c:narrow(3, 1, 4))) do assert.are.equal(255, v) end
    for _, v in ipairs(flat(c:narrow(3, 5, 4))) do assert.are.equal(0, v) end
    local it = ds:loader { batch = 2, shuffle = true, seed = 1 }
    assert.are.same({ 2, 3, 8, 8 }, it:next().x:shape())
    ds:close()
    h.errors_with(function()
      knnd.dataset.prepare_folder { dir = dir, out = tmp("x.h5"), captions = "nope.tsv" }
    end, "cannot open the captions file")
  end)
end)
