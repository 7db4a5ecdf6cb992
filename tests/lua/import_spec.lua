-- import_spec.lua — knnd.read_jpeg / read_image and the importers of knnd.dataset (folder with JPEGs,
-- MS-COCO captions, LN-COCO, CUB-200-2011) on COCO-, LN-COCO- and CUB-shaped trees built in the
-- scratch folder from real Fashion-MNIST test images written as JPEG and PNG: pixels (exact for PNG,
-- within JPEG's loss otherwise), centre crops, resizing, bounding-box crops, captions, labels, splits,
-- and the errors of missing and truncated images and malformed annotations.
local knnd = require "knnd"
local json = require "dkjson"

local h = require "spec_helpers"
local flat, exists, write_file = h.flat, h.exists, h.write_file
local function tmp(name) return h.tmp("import_spec", name) end

local fm = knnd.data.fashion_mnist { split = "test", limit = 12 }
-- Fashion-MNIST test image i (1-based) as u8 [1, 28, 28]
local function fm_image(i) return fm.images:narrow(1, i, 1):contiguous() end

local function mkdir(path) os.execute("rm -rf '" .. path .. "' && mkdir -p '" .. path .. "'") end

-- mean and max |a - b| of two u8 tensors of equal shape
local function diff(a, b)
  local d = (a:float() - b:float()):abs()
  return d:mean():item(), d:max():item()
end

local function rgb28(i) return fm_image(i):expand(3, 28, 28):contiguous() end

-- two images with the same shape and the same pixels
local function same_image(got, want)
  assert.are.same(want:shape(), got:shape())
  assert.are.same(flat(want), flat(got))
end

-- the image of 0-based row r as u8 [3, S, S]
local function row_image(ds, r)
  local s = ds:image_shape()
  return ds:images({ r }):view(s[1], s[2], s[3])
end

local function truncate(src, dst, keep)
  local f = assert(io.open(src, "rb"))
  local bytes = f:read("a")
  f:close()
  write_file(dst, bytes:sub(1, keep or #bytes // 2))
end

local function file_size(path)
  local f = assert(io.open(path, "rb"))
  local n = f:seek("end")
  f:close()
  return n
end

-- tolerance of a gray Fashion-MNIST image through JPEG at quality 95 (measured: mean 0.9, max 8)
local JPEG_MEAN, JPEG_MAX = 1.5, 24

describe("knnd.read_jpeg and knnd.read_image", function()
  it("read JPEGs written by knnd.save_jpeg within JPEG's loss, and PNGs exactly, by content", function()
    local img = fm_image(1)
    local jpg, png = tmp("one.jpg"), tmp("one_named.jpg")
    knnd.save_jpeg(jpg, img, { quality = 95 })
    local back = knnd.read_jpeg(jpg)
    assert.are.same({ 1, 28, 28 }, back:shape())
    assert.are.equal("u8", back:dtype())
    local mean, max = diff(back, img)
    assert.is_true(mean <= JPEG_MEAN and max <= JPEG_MAX, ("mean %.2f max %d"):format(mean, max))
    same_image(knnd.read_image(jpg), back)
    -- a PNG named .jpg is still read as a PNG, exactly
    knnd.save_png(png, rgb28(2))
    same_image(knnd.read_image(png), rgb28(2))
    h.errors_with(function() knnd.read_jpeg(png) end, "not a JPEG")
    -- lower quality: a smaller file
    local low = tmp("low.jpg")
    knnd.save_jpeg(low, img, { quality = 10 })
    assert.is_true(file_size(low) < file_size(jpg))
  end)

  it("fail with the file's name on truncated, garbage and missing files, and bad options", function()
    local jpg, bad = tmp("t.jpg"), tmp("bad.jpg")
    knnd.save_jpeg(jpg, rgb28(3))
    truncate(jpg, bad)
    h.errors_with(function() knnd.read_jpeg(bad) end, "corrupt JPEG")
    h.errors_with(function() knnd.read_image(bad) end, "import_spec_bad.jpg")
    write_file(bad, "\255\216\255 and then nothing a JPEG decoder wants")
    h.errors_with(function() knnd.read_image(bad) end, "corrupt JPEG")
    write_file(bad, "plain text")
    h.errors_with(function() knnd.read_image(bad) end, "neither a PNG nor a JPEG")
    h.errors_with(function() knnd.read_image(tmp("missing.jpg")) end, "import_spec_missing.jpg")
    h.errors_with(function() knnd.save_jpeg(jpg, knnd.zeros(4, 8, 8)) end, "no alpha")
    h.errors_with(function() knnd.save_jpeg(jpg, rgb28(1), { quality = 0 }) end, "option 'quality'")
    h.errors_with(function() knnd.save_jpeg(jpg, rgb28(1), { qualty = 90 }) end, "qualty")
  end)
end)

describe("knnd.dataset.prepare_folder", function()
  it("takes .jpg and .jpeg beside .png and keeps a split attribute", function()
    local dir = tmp("folder")
    mkdir(dir)
    knnd.save_png(dir .. "/a_png.png", rgb28(1))
    knnd.save_jpeg(dir .. "/b_jpg.JPG", fm_image(2), { quality = 95 })
    knnd.save_jpeg(dir .. "/c-jpeg.jpeg", rgb28(3), { quality = 95 })
    write_file(dir .. "/d.txt", "not an image")
    local out = tmp("folder.h5")
    assert.are.equal(3, knnd.dataset.prepare_folder { dir = dir, out = out, size = 28, split = "val",
      progress = false })
    local ds = knnd.dataset.open(out)
    assert.are.equal(3, ds:count())
    assert.are.equal("val", ds.split)
    assert.are.same({ "a png", "b jpg", "c jpeg" }, { ds:caption(0), ds:caption(1), ds:caption(2) })
    same_image(row_image(ds, 0), rgb28(1))
    for r = 1, 2 do
      local mean, max = diff(row_image(ds, r), rgb28(r + 1))
      assert.is_true(mean <= JPEG_MEAN and max <= JPEG_MAX, ("row %d: mean %.2f max %d"):format(r, mean, max))
    end
    ds:close()
    h.errors_with(function() knnd.dataset.prepare_folder { dir = dir, out = tmp("x.h5"), split = 3 } end,
      "option 'split'")
  end)
end)

-- ---- COCO ------------------------------------------------------------------------------------
-- val2017/<12 digits>.jpg for images 1..6 (image 4 a PNG under a .jpg name, image 5 a 28 x 40 RGB
-- PNG: the Fashion-MNIST image between two white bands), in images[] out of id order; image 6 has
-- no caption. ids are 100 + i.
local function coco_tree(root)
  mkdir(root .. "/val2017")
  mkdir(root .. "/annotations")
  local images, annotations = {}, {}
  local captions = {
    { "A photo of  a thing.\n", "second caption of one" },
    { "two" },
    { " three ", "three b", "three c" },
    { "four" },
    { "five" },
    {},
  }
  for _, i in ipairs({ 3, 1, 2, 6, 5, 4 }) do
    local id = 100 + i
    local name = ("%012d.jpg"):format(id)
    local path = root .. "/val2017/" .. name
    if i == 4 then
      knnd.save_png(path, rgb28(4))
    elseif i == 5 then
      local wide = knnd.full({ 3, 28, 40 }, 255, { dtype = "u8" })
      wide:narrow(3, 7, 28):copy_(rgb28(5))
      knnd.save_png(path, wide)
    else
      knnd.save_jpeg(path, fm_image(i), { quality = 95 })
    end
    images[#images + 1] = { id = id, file_name = name, width = i == 5 and 40 or 28, height = 28,
      license = 1, coco_url = "http://images.cocodataset.org/val2017/" .. name }
  end
  local ann_id = 1000
  for i, caps in ipairs(captions) do
    for _, c in ipairs(caps) do
      ann_id = ann_id + 1
      annotations[#annotations + 1] = { image_id = 100 + i, id = ann_id, caption = c }
    end
  end
  local doc = { info = { description = "COCO-shaped test tree" }, licenses = {}, images = images,
    annotations = annotations }
  write_file(root .. "/annotations/captions_val2017.json", json.encode(doc, { indent = true }))
  return root .. "/annotations/captions_val2017.json", root .. "/val2017"
end

describe("knnd.dataset.prepare_coco", function()
  local root = tmp("coco")
  local ann, images = coco_tree(root)

  it("writes one row per captioned image, in id order, with its first caption", function()
    local out = tmp("coco_first.h5")
    local n, skipped = knnd.dataset.prepare_coco { annotations = ann, images = images, out = out, size = 28,
      progress = false }
    assert.are.equal(5, n)
    assert.are.equal(0, skipped)
    local ds = knnd.dataset.open(out)
    assert.are.equal(5, ds:count())
    assert.are.same({ 3, 28, 28 }, ds:image_shape())
    assert.are.equal("val", ds.split)
    assert.are.equal("coco:" .. ann, ds.source)
    assert.are.same({}, ds.classes)
    assert.are.same({ "A photo of a thing.", "two", "three", "four", "five" },
      { ds:caption(0), ds:caption(1), ds:caption(2), ds:caption(3), ds:caption(4) })
    assert.are.same({ -1, -1, -1, -1, -1 }, flat(ds:labels({ 0, 1, 2, 3, 4 })))
    for _, r in ipairs({ 0, 1, 2 }) do
      local mean, max = diff(row_image(ds, r), rgb28(r + 1))
      assert.is_true(mean <= JPEG_MEAN and max <= JPEG_MAX, ("row %d: mean %.2f max %d"):format(r, mean, max))
    end
    same_image(row_image(ds, 3), rgb28(4)) -- PNG: exact
    same_image(row_image(ds, 4), rgb28(5)) -- the centred square of the wide PNG: exact
    ds:close()
  end)

  it("writes one row per caption with captions = \"all\", honours limit, split and size", function()
    local out = tmp("coco_all.h5")
    local n = knnd.dataset.prepare_coco { annotations = ann, images = images, out = out, size = 14, captions = "all",
      limit = 4, split = "minival", progress = false }
    assert.are.equal(7, n)
    local ds = knnd.dataset.open(out)
    assert.are.equal("minival", ds.split)
    local caps = {}
    for r = 0, 6 do caps[#caps + 1] = ds:caption(r) end
    assert.are.same({ "A photo of a thing.", "second caption of one", "two", "three", "three b", "three c", "four" },
      caps)
    same_image(row_image(ds, 0), row_image(ds, 1))
    same_image(row_image(ds, 3), row_image(ds, 5))
    -- halving by bilinear interpolation (align_corners false) averages each 2 x 2 block
    local want = {}
    local src = fm_image(4):view(28, 28):totable()
    for y = 1, 27, 2 do
      for x = 1, 27, 2 do
        want[#want + 1] = math.floor((src[y][x] + src[y][x + 1] + src[y + 1][x] + src[y + 1][x + 1]) / 4 + 0.5)
      end
    end
    assert.are.same(want, flat(row_image(ds, 6):select(1, 2)))
    ds:close()
  end)

  it("fails on a missing or truncated image naming it, or skips it with on_error = \"skip\"", function()
    local broken = tmp("coco_broken")
    local bann, bimages = coco_tree(broken)
    os.remove(bimages .. "/000000000102.jpg")
    local out = tmp("coco_x.h5")
    h.errors_with(function()
      knnd.dataset.prepare_coco { annotations = bann, images = bimages, out = out, progress = false }
    end, "image 102: image_read: cannot open '" .. bimages .. "/000000000102.jpg'")
    assert.is_false(exists(out))
    local n, skipped = knnd.dataset.prepare_coco { annotations = bann, images = bimages, out = out, size = 28,
      on_error = "skip", progress = false }
    assert.are.equal(4, n)
    assert.are.equal(1, skipped)
    local ds = knnd.dataset.open(out)
    assert.are.same({ "A photo of a thing.", "three" }, { ds:caption(0), ds:caption(1) })
    ds:close()
    truncate(images .. "/000000000103.jpg", bimages .. "/000000000103.jpg")
    h.errors_with(function()
      knnd.dataset.prepare_coco { annotations = bann, images = bimages, out = tmp("coco_y.h5"), on_error = "fail",
        progress = false }
    end, "image 102")
    os.remove(bimages .. "/000000000101.jpg")
    os.remove(bimages .. "/000000000104.jpg")
    os.remove(bimages .. "/000000000105.jpg")
    -- every image gone: an error even when skipping
    h.errors_with(function()
      knnd.dataset.prepare_coco { annotations = bann, images = bimages, out = tmp("coco_y.h5"), on_error = "skip",
        progress = false }
    end, "no image could be read")
    -- a fresh tree with only image 103 cut short
    bann, bimages = coco_tree(broken)
    truncate(images .. "/000000000103.jpg", bimages .. "/000000000103.jpg")
    h.errors_with(function()
      knnd.dataset.prepare_coco { annotations = bann, images = bimages, out = tmp("coco_y.h5"), progress = false }
    end, "image 103: jpeg_read: '" .. bimages .. "/000000000103.jpg' is a corrupt JPEG: Premature end of JPEG file")
    assert.is_false(exists(tmp("coco_y.h5")))
  end)

  it("names the file, the line or the field of malformed annotations", function()
    local bad = tmp("coco_bad.json")
    local out = tmp("coco_z.h5")
    local function prep(extra)
      local o = { annotations = bad, images = images, out = out, progress = false }
      for k, v in pairs(extra or {}) do o[k] = v end
      return knnd.dataset.prepare_coco(o)
    end
    write_file(bad, '{\n  "images": [\n    {"id": 1, "file_name": }\n  ],\n  "annotations": []\n}\n')
    h.errors_with(prep, "import_spec_coco_bad.json: not valid JSON: no valid JSON value at line 3")
    write_file(bad, '{"images": [], "annotations": []} trailing')
    h.errors_with(prep, "unexpected text after the JSON value at line 1")
    write_file(bad, '{"images": {"id": 1}, "annotations": []}')
    h.errors_with(prep, "expected a COCO captions file")
    write_file(bad, json.encode { images = { { id = 101, file_name = "000000000101.jpg" }, { id = "x" } },
      annotations = {} })
    h.errors_with(prep, "import_spec_coco_bad.json: images[1]: field 'id' expected an integer, got \"x\"")
    write_file(bad, json.encode { images = { { id = 101, file_name = "000000000101.jpg" } },
      annotations = { { image_id = 101, caption = "ok" }, { image_id = 101, caption = 5 } } })
    h.errors_with(prep, "annotations[1]: field 'caption' expected a string, got 5")
    write_file(bad, json.encode { images = { { id = 101, file_name = "000000000101.jpg" } },
      annotations = { { image_id = 7, caption = "who?" } } })
    h.errors_with(prep, "annotations[0]: image_id 7 is not among the images")
    write_file(bad, json.encode { images = { { id = 101, file_name = "000000000101.jpg" } }, annotations = {} })
    h.errors_with(prep, "lists no image with a caption")
    h.errors_with(function() prep { annotations = tmp("nope.json") } end, "cannot open the annotations file")
    h.errors_with(function() prep { captions = "some" } end, "option 'captions' expected \"first\" or \"all\"")
    h.errors_with(function() prep { on_error = "ignore" } end, "option 'on_error'")
    h.errors_with(function() prep { colour = true } end, "unknown option 'colour'")
    h.errors_with(function() knnd.dataset.prepare_coco { annotations = ann, out = out } end, "option 'images'")
    assert.is_false(exists(out))
  end)
end)

-- ---- LN-COCO ---------------------------------------------------------------------------------
describe("knnd.dataset.prepare_lncoco", function()
  local root = tmp("lncoco")
  mkdir(root .. "/val2017")
  for i = 1, 3 do knnd.save_jpeg(("%s/val2017/%012d.jpg"):format(root, 200 + i), fm_image(i + 6), { quality = 95 }) end
  local function narrative(id, caption, annotator)
    return json.encode { dataset_id = "mscoco_val2017", image_id = id, annotator_id = annotator or 61,
      caption = caption, timed_caption = { { utterance = "In", start_time = 0.1, end_time = 0.3 } },
      traces = { { { x = 0.1, y = 0.2, t = 0.5 } } }, voice_recording = "coco_val/x.ogg" }
  end
  local ann = root .. "/coco_val_localized_narratives.jsonl"
  write_file(ann, table.concat({
    narrative("203", "In this image we can see a bag."),
    narrative("201", "In this picture there is a shoe.  It is white."),
    "",
    narrative(202, "In the image we can see a shirt.", 12),
    narrative("201", "A second narrative of the shoe.", 77),
  }, "\n") .. "\n")

  it("reads JSON Lines, images by zero-padded id, one row per image or per narrative", function()
    local out = tmp("ln.h5")
    assert.are.equal(3, knnd.dataset.prepare_lncoco { annotations = ann, images = root .. "/val2017", out = out,
      size = 28, progress = false })
    local ds = knnd.dataset.open(out)
    assert.are.equal("val", ds.split)
    assert.are.same({ "In this picture there is a shoe. It is white.", "In the image we can see a shirt.",
      "In this image we can see a bag." }, { ds:caption(0), ds:caption(1), ds:caption(2) })
    for r = 0, 2 do
      local mean, max = diff(row_image(ds, r), rgb28(r + 7))
      assert.is_true(mean <= JPEG_MEAN and max <= JPEG_MAX, ("row %d: mean %.2f max %d"):format(r, mean, max))
    end
    ds:close()
    local all = tmp("ln_all.h5")
    assert.are.equal(4, knnd.dataset.prepare_lncoco { annotations = { ann }, images = root .. "/val2017", out = all,
      captions = "all", progress = false })
    ds = knnd.dataset.open(all)
    assert.are.equal("A second narrative of the shoe.", ds:caption(1))
    same_image(row_image(ds, 0), row_image(ds, 1))
    ds:close()
  end)

  it("names the file and line of a malformed narrative and the file of a missing image", function()
    local bad = tmp("ln_bad.jsonl")
    local function prep() return knnd.dataset.prepare_lncoco { annotations = bad, images = root .. "/val2017",
      out = tmp("ln_x.h5"), progress = false } end
    write_file(bad, narrative("201", "fine") .. "\n" .. '{"image_id": "202", "caption": "unterminated}\n')
    h.errors_with(prep, "import_spec_ln_bad.jsonl line 2: not valid JSON")
    write_file(bad, narrative("201", "fine") .. "\n\n" .. json.encode { image_id = "2x", caption = "c" } .. "\n")
    h.errors_with(prep, "import_spec_ln_bad.jsonl line 3: field 'image_id' expected an integer or a string of digits")
    write_file(bad, json.encode { image_id = 201 } .. "\n")
    h.errors_with(prep, "line 1: field 'caption' expected a string, got nil")
    write_file(bad, narrative("999", "no such image") .. "\n")
    h.errors_with(prep, "image 999: image_read: cannot open '" .. root .. "/val2017/000000000999.jpg'")
    assert.is_false(exists(tmp("ln_x.h5")))
  end)
end)

-- ---- CUB-200-2011 ----------------------------------------------------------------------------
-- 12 images of 3 classes (Fashion-MNIST's labels 0..2 as "bird" classes); images 1..4 train, the rest
-- test; each a 60 x 60 PNG or JPEG with the 28 x 28 garment at (x = 10 + i, y = 20) on black, and its
-- bounding box
local CUB_CLASSES = { "001.Black_footed_Albatross", "002.Laysan_Albatross", "003.Sooty_Albatross" }
local function cub_tree(root)
  mkdir(root .. "/images")
  mkdir(root .. "/text_c10")
  for _, c in ipairs(CUB_CLASSES) do
    mkdir(root .. "/images/" .. c)
    mkdir(root .. "/text_c10/" .. c)
  end
  local lines = { images = {}, labels = {}, split = {}, boxes = {}, classes = {} }
  for k, c in ipairs(CUB_CLASSES) do lines.classes[k] = ("%d %s"):format(k, c) end
  local canvases = {}
  for i = 1, 12 do
    local cls = i % 3 + 1
    local cdir = CUB_CLASSES[cls]
    local base = ("%s_%04d_%d"):format(cdir:gsub("^%d+%.", ""), i, 1000 + i)
    local ext = i % 2 == 0 and "png" or "jpg"
    local canvas = knnd.zeros(1, 60, 60, { dtype = "u8" })
    canvas:narrow(2, 21, 28):narrow(3, 11 + i, 28):copy_(fm_image(i))
    canvases[i] = canvas
    if ext == "png" then knnd.save_png(("%s/images/%s/%s.png"):format(root, cdir, base), canvas)
    else knnd.save_jpeg(("%s/images/%s/%s.jpg"):format(root, cdir, base), canvas, { quality = 95 }) end
    lines.images[i] = ("%d %s/%s.%s"):format(i, cdir, base, ext)
    lines.labels[i] = ("%d %d"):format(i, cls)
    lines.split[i] = ("%d %d"):format(i, i <= 4 and 1 or 0)
    lines.boxes[i] = ("%d %.1f %.1f %.1f %.1f"):format(i, 10 + i, 20, 28, 28)
    write_file(("%s/text_c10/%s/%s.txt"):format(root, cdir, base),
      ("a bird number %d with a long beak\nits wings are grey\n\nthe %d-th bird\n"):format(i, i))
  end
  write_file(root .. "/images.txt", table.concat(lines.images, "\n") .. "\n")
  write_file(root .. "/image_class_labels.txt", table.concat(lines.labels, "\n") .. "\n")
  write_file(root .. "/train_test_split.txt", table.concat(lines.split, "\r\n") .. "\r\n")
  write_file(root .. "/bounding_boxes.txt", table.concat(lines.boxes, "\n") .. "\n")
  write_file(root .. "/classes.txt", table.concat(lines.classes, "\n") .. "\n")
  return canvases
end

describe("knnd.dataset.prepare_cub", function()
  local root = tmp("cub")
  local canvases = cub_tree(root)

  it("writes the chosen split with labels, class names and Reed et al.'s captions", function()
    local out = tmp("cub_train.h5")
    assert.are.equal(4, knnd.dataset.prepare_cub { dir = root, text = root .. "/text_c10", out = out, size = 60,
      progress = false })
    local ds = knnd.dataset.open(out)
    assert.are.equal("train", ds.split)
    assert.are.same({ "Black footed Albatross", "Laysan Albatross", "Sooty Albatross" }, ds.classes)
    assert.are.same({ 1, 2, 0, 1 }, flat(ds:labels({ 0, 1, 2, 3 })))
    assert.are.equal("Laysan Albatross", ds:class_name(0))
    assert.are.equal("a bird number 1 with a long beak", ds:caption(0))
    assert.are.equal("a bird number 4 with a long beak", ds:caption(3))
    same_image(row_image(ds, 1), canvases[2]:expand(3, 60, 60)) -- image 2 is a PNG
    local mean, max = diff(row_image(ds, 0), canvases[1]:expand(3, 60, 60):contiguous())
    assert.is_true(mean <= JPEG_MEAN and max <= JPEG_MAX, ("mean %.2f max %d"):format(mean, max))
    ds:close()

    local test = tmp("cub_test.h5")
    assert.are.equal(8 * 3, knnd.dataset.prepare_cub { dir = root, text = root .. "/text_c10", out = test,
      split = "test", captions = "all", progress = false })
    ds = knnd.dataset.open(test)
    assert.are.equal("test", ds.split)
    assert.are.same({ "a bird number 5 with a long beak", "its wings are grey", "the 5-th bird" },
      { ds:caption(0), ds:caption(1), ds:caption(2) })
    assert.are.same({ 2, 2, 2, 0 }, flat(ds:labels({ 0, 1, 2, 3 })))
    ds:close()
  end)

  it("captions from the class name without text, all splits, limit and the bounding-box crop", function()
    local out = tmp("cub_all.h5")
    assert.are.equal(5, knnd.dataset.prepare_cub { dir = root, out = out, split = "all", limit = 5, bbox = true,
      size = 42, progress = false })
    local ds = knnd.dataset.open(out)
    assert.are.equal("all", ds.split)
    assert.are.equal("a photo of a Laysan Albatross", ds:caption(0))
    assert.are.equal("a photo of a Sooty Albatross", ds:caption(1))
    assert.are.equal("a photo of a Black footed Albatross", ds:caption(2))
    -- image 2's box (12, 20, 28, 28): the square of side 2·floor(0.75·28) = 42 around its centre (26, 34)
    -- is columns 5 .. 46 and rows 13 .. 54 (0-based), inside the 60 x 60 picture, so no resizing
    local want = canvases[2]:narrow(2, 14, 42):narrow(3, 6, 42):expand(3, 42, 42)
    same_image(row_image(ds, 1), want)
    ds:close()
  end)

  it("names the file and line of malformed lists, and the missing caption file", function()
    local broken = tmp("cub_broken")
    cub_tree(broken)
    local function prep(extra)
      local o = { dir = broken, text = broken .. "/text_c10", out = tmp("cub_x.h5"), progress = false }
      for k, v in pairs(extra or {}) do o[k] = v end
      return knnd.dataset.prepare_cub(o)
    end
    local first_txt
    for line in io.lines(broken .. "/images.txt") do
      first_txt = ("%s/text_c10/%s.txt"):format(broken, line:match("^1 (.*)%.jpg$"))
      break
    end
    os.remove(first_txt)
    h.errors_with(prep, "image 1: no caption file '" .. first_txt .. "'")
    local n, skipped = prep { on_error = "skip", out = tmp("cub_skip.h5") }
    assert.are.same({ 3, 1 }, { n, skipped })
    h.errors_with(function() prep { split = "val" } end, "option 'split' expected \"train\", \"test\" or \"all\"")
    write_file(broken .. "/image_class_labels.txt", "1 2\n2 3\nthree 1\n")
    h.errors_with(prep, "image_class_labels.txt line 3: expected '<image_id> <class_id>', got \"three 1\"")
    write_file(broken .. "/image_class_labels.txt", "1 2\n2 9\n")
    h.errors_with(prep, "image_class_labels.txt line 2: class 9 is not in")
    write_file(broken .. "/image_class_labels.txt", "1 2\n2 3\n")
    h.errors_with(prep, "image_class_labels.txt has no line for image 3")
    os.remove(broken .. "/bounding_boxes.txt")
    h.errors_with(function() prep { bbox = true } end, "cannot open the file: " .. broken .. "/bounding_boxes.txt")
    h.errors_with(function() knnd.dataset.prepare_cub { out = tmp("cub_x.h5") } end, "option 'dir'")
    assert.is_false(exists(tmp("cub_x.h5")))
  end)
end)
