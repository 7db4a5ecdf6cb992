-- dataset_import.lua — importers of published captioned-image datasets into the layout of knnd's
-- prepared datasets (the header of lua/knnd/dataset.lua): MS-COCO captions, Localized Narratives on
-- COCO (LN-COCO) and CUB-200-2011 with Reed et al.'s captions. Reached as knnd.dataset.prepare_coco,
-- prepare_lncoco and prepare_cub.
--
--   knnd.dataset.prepare_coco{annotations = "coco/annotations/captions_val2017.json", images = "coco/val2017",
--     out = "coco_val.h5", size = 64, captions = "all"}
--   knnd.dataset.prepare_lncoco{annotations = "coco_val_captions.jsonl", images = "coco/val2017", out = "ln.h5"}
--   knnd.dataset.prepare_cub{dir = "CUB_200_2011", text = "birds/text_c10", split = "test", bbox = true,
--     out = "cub_test.h5"}
--
-- Options every importer takes:
--   out        the dataset file (required; written atomically: a failed import leaves it as it was)
--   size       side of the square RGB images (default 64): the centred square crop, resized bilinearly
--   captions   "first" (default): one row per image with its first caption; "all": one row per
--              caption, the image repeated
--   limit      the first N images only (in the order of their ids)
--   split      COCO / LN-COCO: the name kept in the file's `split` attribute (default: read from the
--              file names or dataset_id, "train" / "val" / "test"); CUB: which images, "train",
--              "test" or "all" (default "train"), from train_test_split.txt
--   on_error   what a missing or unreadable image (or CUB caption file) does: "fail" (default) stops
--              with an error naming the file and nothing is written; "skip" leaves the image out,
--              warns on stderr with the count and the first reasons, and the importer returns the
--              number skipped as its second result
--   progress   a progress bar (default true)
-- Malformed annotations always fail, naming the file and the line (text formats) or the JSON field.
-- Each importer returns the number of rows written and the number of images skipped.
local knnd = require "knnd"
local dataset = require "knnd.dataset"

local M = {}

local COMMON_OPTS = { out = 1, size = 1, captions = 1, limit = 1, split = 1, on_error = 1, progress = 1 }

-- the options of one importer: COMMON_OPTS and its own
local function allowed(own)
  local t = {}
  for k in pairs(COMMON_OPTS) do t[k] = 1 end
  for _, k in ipairs(own) do t[k] = 1 end
  return t
end

local function fail(fname, fmt, ...)
  error(("knnd.dataset.%s: " .. fmt):format(fname, ...), 0)
end

local function show(v)
  if type(v) == "string" then return ("%q"):format(v) end
  return tostring(v)
end

-- checked common options -> {out, size, mode, limit, split, on_error, progress}
local function common_opts(fname, opts)
  if type(opts.out) ~= "string" or opts.out == "" then fail(fname, "option 'out' (a file path) is required") end
  local o = { out = opts.out, progress = opts.progress }
  o.size = dataset.positive_int(fname, "size", opts.size, 64)
  o.limit = dataset.positive_int(fname, "limit", opts.limit, nil)
  o.mode = opts.captions or "first"
  if o.mode ~= "first" and o.mode ~= "all" then
    fail(fname, "option 'captions' expected \"first\" or \"all\", got %s", show(opts.captions))
  end
  o.on_error = opts.on_error or "fail"
  if o.on_error ~= "fail" and o.on_error ~= "skip" then
    fail(fname, "option 'on_error' expected \"fail\" or \"skip\", got %s", show(opts.on_error))
  end
  if opts.split ~= nil and (type(opts.split) ~= "string" or not opts.split:match("^[%w_%-]+$")) then
    fail(fname, "option 'split' expected a name such as \"train\", got %s", show(opts.split))
  end
  o.split = opts.split
  return o
end

local function required_path(fname, opts, key, what)
  local v = opts[key]
  if type(v) ~= "string" or v == "" then fail(fname, "option '%s' (%s) is required", key, what) end
  return (v:gsub("/+$", ""))
end

-- an integer, from a JSON number or a string of digits (LN-COCO writes image ids as strings)
local function as_id(v)
  if type(v) == "number" then return math.tointeger(v) end
  if type(v) == "string" and v:match("^%d+$") and #v <= 18 then return math.tointeger(tonumber(v)) end
  return nil
end

-- one line of text per caption: whitespace runs (COCO's trailing newlines and double spaces) to one space
local function clean_caption(s)
  return (s:gsub("%s+", " "):gsub("^ ", ""):gsub(" $", ""))
end

local function read_file(fname, path, what)
  local f, err = io.open(path, "rb")
  if not f then fail(fname, "cannot open the %s: %s", what, err) end
  local text = f:read("a")
  f:close()
  return text
end

-- a whole JSON document; errors name the file, the line and the column (dkjson tolerates a missing
-- comma or colon between members, which loses nothing; anything else that is not JSON is an error)
local function decode_json(fname, path, text, where)
  local json = require "dkjson"
  local obj, pos, msg = json.decode(text, 1, nil)
  if msg then fail(fname, "%s%s: not valid JSON: %s", path, where or "", msg) end
  local extra = text:find("%S", pos)
  if extra then
    local line = select(2, text:sub(1, extra):gsub("\n", "")) + 1
    fail(fname, "%s%s: unexpected text after the JSON value at line %d", path, where or "", line)
  end
  return obj
end

-- ---- writing ---------------------------------------------------------------------------------
-- bounding box {x, y, w, h} (pixels) -> the square of side 1.5·max(w, h) around its centre, clamped
-- to the image: AttnGAN's crop of CUB birds (taoxugit/AttnGAN, code/datasets.py, get_imgs), which
-- then stretches that region to the output size; we centre-crop it square instead (square_rgb)
local function crop_box(img, box)
  local h, w = img:size(2), img:size(3)
  local r = math.floor(math.max(box[3], box[4]) * 0.75)
  local cx, cy = math.floor((2 * box[1] + box[3]) / 2), math.floor((2 * box[2] + box[4]) / 2)
  local x1, x2 = math.max(0, cx - r), math.min(w, cx + r)
  local y1, y2 = math.max(0, cy - r), math.min(h, cy + r)
  if x2 <= x1 or y2 <= y1 then
    error(("the bounding box (%g, %g, %g, %g) lies outside the %d x %d image"):format(box[1], box[2], box[3], box[4],
      w, h), 0)
  end
  return img:narrow(2, y1 + 1, y2 - y1):narrow(3, x1 + 1, x2 - x1)
end

-- the message of a failed read without knnd's "knnd.read_image: " prefix, naming the file once
local function image_error(item, err)
  local msg = tostring(err):gsub("^knnd%.read_image: ", "")
  if not msg:find(item.path, 1, true) then msg = ("'%s': %s"):format(item.path, msg) end
  return ("%s: %s"):format(item.what, msg)
end

-- items: {what = "image 42", path =, captions = {...}, label =, box = nil | {x, y, w, h},
-- err = nil | a message found while reading the annotations}, in row order
local function write_items(fname, source, o, items, attrs)
  local rows = 0
  for _, it in ipairs(items) do rows = rows + (o.mode == "all" and #it.captions or 1) end
  local w = dataset.writer.new(o.out, 3, o.size, math.max(rows, 1), "prepare " .. source, o.progress)
  local skipped = {}
  dataset.writer.run(w, function()
    for _, it in ipairs(items) do
      local ok, img = it.err == nil, it.err
      if ok then ok, img = pcall(knnd.read_image, it.path) end
      if ok and it.box then ok, img = pcall(crop_box, img, it.box) end
      if ok then ok, img = pcall(dataset.square_rgb, img, o.size) end
      local caps = o.mode == "all" and it.captions or { it.captions[1] }
      if ok then
        local k = #caps
        if k > 1 then img = img:expand(k, 3, o.size, o.size):contiguous() end
        dataset.writer.append(w, img, knnd.full({ k }, it.label, { dtype = "i64" }), caps)
      else
        local why = it.err and ("%s: %s"):format(it.what, it.err) or image_error(it, img)
        if o.on_error == "fail" then fail(fname, "%s", why) end
        skipped[#skipped + 1] = why
        if w.bar then w.bar:update(#caps) end
      end
    end
    if w.n == 0 then fail(fname, "no image could be read (%d skipped; the first: %s)", #skipped, skipped[1]) end
    dataset.writer.finish(w, attrs)
  end)
  if #skipped > 0 then
    local shown = {}
    for i = 1, math.min(5, #skipped) do shown[i] = "  " .. skipped[i] end
    io.stderr:write(("knnd.dataset.%s: skipped %d of %d images (on_error = \"skip\")%s:\n%s\n"):format(fname, #skipped,
      #items, #skipped > 5 and ", the first 5" or "", table.concat(shown, "\n")))
  end
  return w.n, #skipped
end

-- sort by id, drop the images without a caption, keep the first `limit`
local function finish_items(fname, items, limit, what)
  table.sort(items, function(a, b) return a.id < b.id end)
  local kept = {}
  for _, it in ipairs(items) do
    if #it.captions > 0 and (not limit or #kept < limit) then kept[#kept + 1] = it end
  end
  if #kept == 0 then fail(fname, "%s lists no image with a caption", what) end
  return kept
end

-- "train" / "val" / "test" from a name such as captions_val2017.json, mscoco_train2017, coco_val_captions
local function split_from_name(s)
  if type(s) ~= "string" then return nil end
  s = s:match("([^/]*)$"):lower()
  for _, name in ipairs({ "train", "val", "test" }) do
    if s:find("%f[%a]" .. name) or s:find("_" .. name) then return name end
  end
  return nil
end

-- ---- MS-COCO captions ---------------------------------------------------------------------------
--- knnd.dataset.prepare_coco{annotations = "captions_val2017.json", images = "val2017", out =, ...}:
--- COCO's caption annotations (images[]: id, file_name; annotations[]: image_id, caption) with the
--- images of the folder; labels -1. -> rows written, images skipped
function M.prepare_coco(opts)
  local fname = "prepare_coco"
  opts = dataset.check_opts(fname, opts, allowed({ "annotations", "images" }))
  local o = common_opts(fname, opts)
  local ann = required_path(fname, opts, "annotations", "a COCO captions_*.json file")
  local dir = required_path(fname, opts, "images", "the folder of the images")
  local data = decode_json(fname, ann, read_file(fname, ann, "annotations file"))
  local function is_array(t) return type(t) == "table" and (next(t) == nil or t[1] ~= nil) end
  if type(data) ~= "table" or not is_array(data.images) or not is_array(data.annotations) then
    fail(fname, "%s: expected a COCO captions file, an object with the arrays 'images' and 'annotations'", ann)
  end
  local items, by_id = {}, {}
  for i, im in ipairs(data.images) do
    local where = ("%s: images[%d]"):format(ann, i - 1)
    if type(im) ~= "table" then fail(fname, "%s: expected an object, got %s", where, show(im)) end
    local id = as_id(im.id)
    if not id then fail(fname, "%s: field 'id' expected an integer, got %s", where, show(im.id)) end
    if type(im.file_name) ~= "string" or im.file_name == "" then
      fail(fname, "%s: field 'file_name' expected a file name, got %s", where, show(im.file_name))
    end
    if by_id[id] then fail(fname, "%s: image id %d appears twice", where, id) end
    by_id[id] = { id = id, what = ("image %d"):format(id), path = dir .. "/" .. im.file_name, captions = {},
      label = -1 }
    items[#items + 1] = by_id[id]
  end
  for i, a in ipairs(data.annotations) do
    local where = ("%s: annotations[%d]"):format(ann, i - 1)
    if type(a) ~= "table" then fail(fname, "%s: expected an object, got %s", where, show(a)) end
    local id = as_id(a.image_id)
    if not id then fail(fname, "%s: field 'image_id' expected an integer, got %s", where, show(a.image_id)) end
    if type(a.caption) ~= "string" then
      fail(fname, "%s: field 'caption' expected a string, got %s", where, show(a.caption))
    end
    local item = by_id[id]
    if not item then fail(fname, "%s: image_id %d is not among the images", where, id) end
    item.captions[#item.captions + 1] = clean_caption(a.caption)
  end
  items = finish_items(fname, items, o.limit, ann)
  local split = o.split or split_from_name(ann) or split_from_name(dir)
  return write_items(fname, "coco", o, items, { source = "coco:" .. ann, size = o.size, channels = 3, classes = "",
    split = split })
end

-- ---- LN-COCO ------------------------------------------------------------------------------------
--- knnd.dataset.prepare_lncoco{annotations = "coco_val_captions.jsonl" or {files...}, images = "val2017",
--- out =, ...}: Localized Narratives (JSON Lines: dataset_id, image_id, annotator_id, caption, ...) of
--- COCO images, image_id -> <images>/<image_id as 12 digits>.jpg; labels -1. -> rows written, images skipped
function M.prepare_lncoco(opts)
  local fname = "prepare_lncoco"
  opts = dataset.check_opts(fname, opts, allowed({ "annotations", "images" }))
  local o = common_opts(fname, opts)
  local files = opts.annotations
  if type(files) == "string" then files = { files } end
  if type(files) ~= "table" or #files == 0 then
    fail(fname, "option 'annotations' (a .jsonl file or a list of them) is required")
  end
  local dir = required_path(fname, opts, "images", "the folder of the COCO images")
  local items, by_id, dataset_id = {}, {}, nil
  for _, path in ipairs(files) do
    if type(path) ~= "string" then fail(fname, "option 'annotations' expected file names, got %s", show(path)) end
    local f, err = io.open(path, "rb")
    if not f then fail(fname, "cannot open the annotations file: %s", err) end
    local lineno = 0
    -- line by line: the files with traces run to hundreds of MB
    for line in f:lines() do
      lineno = lineno + 1
      if line:find("%S") then
        local where = (" line %d"):format(lineno)
        local rec = decode_json(fname, path, line, where)
        if type(rec) ~= "table" then fail(fname, "%s%s: expected a JSON object, got %s", path, where, show(rec)) end
        local id = as_id(rec.image_id)
        if not id then
          fail(fname, "%s%s: field 'image_id' expected an integer or a string of digits, got %s", path, where,
            show(rec.image_id))
        end
        if type(rec.caption) ~= "string" then
          fail(fname, "%s%s: field 'caption' expected a string, got %s", path, where, show(rec.caption))
        end
        dataset_id = dataset_id or rec.dataset_id
        local item = by_id[id]
        if not item then
          item = { id = id, what = ("image %d"):format(id), path = ("%s/%012d.jpg"):format(dir, id), captions = {},
            label = -1 }
          by_id[id] = item
          items[#items + 1] = item
        end
        item.captions[#item.captions + 1] = clean_caption(rec.caption)
      end
    end
    f:close()
  end
  items = finish_items(fname, items, o.limit, table.concat(files, ", "))
  local split = o.split or split_from_name(dataset_id) or split_from_name(files[1])
  return write_items(fname, "lncoco", o, items, { source = "lncoco:" .. table.concat(files, ","), size = o.size,
    channels = 3, classes = "", split = split })
end

-- ---- CUB-200-2011 -------------------------------------------------------------------------------
local NUM = "(%-?[%d.]+[eE]?[-+]?%d*)"

-- call fn(captures...) for each non-empty line of dir/name matching pattern; errors name the line
local function each_line(fname, path, pattern, expected, fn)
  local text = read_file(fname, path, "file")
  local lineno = 0
  for line in text:gmatch("([^\n]*)\n?") do
    lineno = lineno + 1
    line = line:gsub("\r$", "")
    if line:find("%S") then
      local caps = { line:match(pattern) }
      if #caps == 0 then fail(fname, "%s line %d: expected '%s', got %s", path, lineno, expected, show(line)) end
      local err = fn(table.unpack(caps))
      if err then fail(fname, "%s line %d: %s", path, lineno, err) end
    end
  end
end

-- "001.Black_footed_Albatross" -> "Black footed Albatross"
local function cub_class_name(dir_name)
  return (dir_name:gsub("^%d+%.", ""):gsub("_+", " "))
end

--- knnd.dataset.prepare_cub{dir = "CUB_200_2011", text = "text_c10", split = "train", bbox = false, out =, ...}:
--- CUB-200-2011 (images.txt, image_class_labels.txt, classes.txt, train_test_split.txt, images/, and
--- bounding_boxes.txt when bbox) with Reed et al.'s captions (text/<class dir>/<image name>.txt, one
--- a line) or, without text, "a photo of a <class name>"; labels = class id - 1, the classes
--- attribute lists the class names. -> rows written, images skipped
function M.prepare_cub(opts)
  local fname = "prepare_cub"
  opts = dataset.check_opts(fname, opts, allowed({ "dir", "text", "bbox" }))
  local o = common_opts(fname, opts)
  local dir = required_path(fname, opts, "dir", "the CUB_200_2011 folder")
  local text_dir = opts.text and required_path(fname, opts, "text", "the text_c10 folder of captions")
  local which = o.split or "train"
  if which ~= "train" and which ~= "test" and which ~= "all" then
    fail(fname, "option 'split' expected \"train\", \"test\" or \"all\", got %s", show(which))
  end
  local images, order = {}, {}
  local function image(id)
    local it = images[id]
    if not it then return nil, ("image %d is not in %s/images.txt"):format(id, dir) end
    return it
  end
  each_line(fname, dir .. "/images.txt", "^%s*(%d+)%s+(%S+)%s*$", "<image_id> <path>", function(id, path)
    id = math.tointeger(tonumber(id))
    if images[id] then return ("image %d appears twice"):format(id) end
    images[id] = { id = id, what = ("image %d"):format(id), rel = path, path = dir .. "/images/" .. path,
      captions = {} }
    order[#order + 1] = images[id]
  end)
  local classes, n_classes = {}, 0
  each_line(fname, dir .. "/classes.txt", "^%s*(%d+)%s+(%S+)%s*$", "<class_id> <class_name>", function(id, name)
    id = math.tointeger(tonumber(id))
    if classes[id] then return ("class %d appears twice"):format(id) end
    classes[id], n_classes = name, n_classes + 1
  end)
  for id = 1, n_classes do
    if not classes[id] then
      fail(fname, "%s/classes.txt: class ids expected to run from 1 to %d, %d is missing", dir, n_classes, id)
    end
  end
  each_line(fname, dir .. "/image_class_labels.txt", "^%s*(%d+)%s+(%d+)%s*$", "<image_id> <class_id>",
    function(id, cls)
      local it, err = image(math.tointeger(tonumber(id)))
      if not it then return err end
      cls = math.tointeger(tonumber(cls))
      if not classes[cls] then return ("class %d is not in %s/classes.txt"):format(cls, dir) end
      it.label, it.class = cls - 1, classes[cls]
    end)
  each_line(fname, dir .. "/train_test_split.txt", "^%s*(%d+)%s+([01])%s*$", "<image_id> <is_training_image 0|1>",
    function(id, train)
      local it, err = image(math.tointeger(tonumber(id)))
      if not it then return err end
      it.split = train == "1" and "train" or "test"
    end)
  if opts.bbox then
    each_line(fname, dir .. "/bounding_boxes.txt", "^%s*(%d+)%s+" .. NUM .. "%s+" .. NUM .. "%s+" .. NUM .. "%s+" .. NUM
      .. "%s*$", "<image_id> <x> <y> <width> <height>", function(id, x, y, w, h)
      local it, err = image(math.tointeger(tonumber(id)))
      if not it then return err end
      local box = { tonumber(x), tonumber(y), tonumber(w), tonumber(h) }
      for _, v in ipairs(box) do
        if not v then return "expected numbers" end
      end
      if box[3] <= 0 or box[4] <= 0 then return ("the box of image %d is empty"):format(it.id) end
      it.box = box
    end)
  end
  local items = {}
  for _, it in ipairs(order) do
    for _, f in ipairs({ { "label", "image_class_labels.txt" }, { "split", "train_test_split.txt" },
      opts.bbox and { "box", "bounding_boxes.txt" } or nil }) do
      if it[f[1]] == nil then fail(fname, "%s/%s has no line for image %d (%s)", dir, f[2], it.id, it.rel) end
    end
    if which == "all" or it.split == which then items[#items + 1] = it end
  end
  table.sort(items, function(a, b) return a.id < b.id end)
  if o.limit then
    for i = #items, o.limit + 1, -1 do items[i] = nil end
  end
  if #items == 0 then fail(fname, "%s/train_test_split.txt: no image of the split '%s'", dir, which) end
  for _, it in ipairs(items) do
    if text_dir then
      local cap_path = ("%s/%s.txt"):format(text_dir, (it.rel:gsub("%.[^./]*$", "")))
      local f = io.open(cap_path, "rb")
      if f then
        for line in f:lines() do
          if line:find("%S") then it.captions[#it.captions + 1] = clean_caption(line) end
        end
        f:close()
      end
      if #it.captions == 0 then
        it.err = f and ("the caption file '%s' is empty"):format(cap_path) or ("no caption file '%s'"):format(cap_path)
        it.captions = { "" }
      end
    else
      local name = cub_class_name(it.class)
      it.captions = { ("a photo of %s %s"):format(name:match("^[AEIOUaeiou]") and "an" or "a", name) }
    end
  end
  local names = {}
  for i = 1, n_classes do names[i] = cub_class_name(classes[i]) end
  return write_items(fname, "cub", o, items, { source = "cub:" .. dir, size = o.size, channels = 3,
    classes = table.concat(names, "\n"), split = which })
end

return M
