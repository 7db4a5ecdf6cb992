-- style.lua — knnd.style: a classifier that tells two artists' drawings of the same concepts apart
-- (Noto Color Emoji against EmojiOne), the judge of the database swap: how many samples drawn with
-- the EmojiOne index look like EmojiOne?
--
--   local clf, report = knnd.style.train { styles = {
--     { name = "noto", images = noto_u8, captions = noto_names },
--     { name = "emojione", images = e1_u8, captions = e1_names } } }
--   print(report.heldout_accuracy)                     -- on concepts the classifier never saw
--   local share = knnd.style.share(clf, samples, "emojione")
--
-- Only the concepts every style draws are used, one image of each per style, so the classes are
-- balanced and a concept alone tells nothing: the classifier must learn the drawing. A seeded
-- share of those concepts (both drawings) is held out, and the held-out accuracy is the mean of
-- each style's accuracy on them.
local knnd = require "knnd"
local options = require "knnd.options"
local classifier = require "knnd.classifier"

local M = {}

local function fail(fname, fmt, ...) error(("knnd.style.%s: " .. fmt):format(fname, ...), 0) end

local function check_keys(fname, o, allowed) options.check_keys("knnd.style." .. fname, o, allowed) end

--- knnd.style.images(path) -> u8 images [N,C,H,W] and their captions (a list) of a knnd image dataset
function M.images(path)
  local ds = knnd.dataset.open(path)
  local n = ds:count()
  local captions = {}
  for r = 0, n - 1 do captions[r + 1] = ds:caption(r) end
  return ds:images(knnd.arange(0, n, { dtype = "i64" })), captions
end

-- the concepts every style draws, in the first style's order, split by a seeded draw: the 0-based
-- rows of each style's training and held-out images
local function split(fname, styles, holdout, seed)
  local row_of = {}
  for s, st in ipairs(styles) do
    row_of[s] = {}
    for r, c in ipairs(st.captions) do
      if row_of[s][c] == nil then row_of[s][c] = r - 1 end -- a repeated caption: its first row
    end
  end
  local concepts, seen = {}, {}
  for _, c in ipairs(styles[1].captions) do
    local everywhere = not seen[c]
    for s = 2, #styles do everywhere = everywhere and row_of[s][c] ~= nil end
    if everywhere then
      seen[c] = true
      concepts[#concepts + 1] = c
    end
  end
  local n_held = math.floor(#concepts * holdout + 0.5)
  if #concepts - n_held < 1 or n_held < 1 then
    fail(fname, "%d concepts are drawn by every style: too few to hold out %g of them and train on the rest",
      #concepts, holdout)
  end
  local perm = knnd.randperm(#concepts, { gen = knnd.Generator(seed) }):totable()
  local parts = { train = {}, heldout = {}, heldout_names = {} }
  for s = 1, #styles do parts.train[s], parts.heldout[s] = {}, {} end
  for i, p in ipairs(perm) do
    local c = concepts[p + 1]
    local part = i <= n_held and parts.heldout or parts.train
    for s = 1, #styles do table.insert(part[s], row_of[s][c]) end
    if i <= n_held then table.insert(parts.heldout_names, c) end
  end
  return parts, #concepts, n_held
end

-- the images of the rows of each style and their labels (the style's 0-based position)
local function gather(styles, rows)
  local imgs, labels = {}, {}
  for s, st in ipairs(styles) do
    imgs[s] = st.images:index_select(1, knnd.tensor(rows[s], { dtype = "i64" }))
    for _ = 1, #rows[s] do labels[#labels + 1] = s - 1 end
  end
  return knnd.cat(imgs, 1), knnd.tensor(labels, { dtype = "i64" })
end

--- knnd.style.train{styles = {{name=, images= u8 [N,C,H,W], captions= {...}}, ...} (two or more),
---   holdout = 0.2, seed = 0, steps = 300, batch = 64, width = 16, lr = 2e-3, progress = false}
--- -> the classifier (a knnd.classifier whose class i-1 is styles[i]; clf.class_names the names,
---   clf.test_accuracy the held-out accuracy) and a report {heldout_accuracy (the mean over styles),
---   per_style = {name = accuracy on its held-out images}, train_accuracy, concepts, heldout_concepts,
---   heldout_names (the held-out captions), train_images, heldout_images, seconds}
function M.train(o)
  local fname = "train"
  check_keys(fname, o, { styles = 1, holdout = 1, seed = 1, steps = 1, batch = 1, width = 1, lr = 1, progress = 1 })
  local styles = o.styles
  if type(styles) ~= "table" or #styles < 2 then fail(fname, "option 'styles' expected two or more {name=, images=, captions=}") end
  local shape
  for i, st in ipairs(styles) do
    if type(st) ~= "table" or type(st.name) ~= "string" or not knnd.is_tensor(st.images) or type(st.captions) ~= "table" then
      fail(fname, "style %d expected {name= (a string), images= (u8 [N,C,H,W]), captions= (a list)}", i)
    end
    local s = st.images:shape()
    if #s ~= 4 or s[1] ~= #st.captions then
      fail(fname, "style '%s' has images %s and %d captions (expected [N,C,H,W] and N captions)", st.name,
        table.concat(s, "x"), #st.captions)
    end
    if shape and (s[2] ~= shape[2] or s[3] ~= shape[3] or s[4] ~= shape[4]) then
      fail(fname, "style '%s' has images %s, style '%s' %s (expected one size)", st.name, table.concat(s, "x"),
        styles[1].name, table.concat(shape, "x"))
    end
    shape = shape or s
  end
  local holdout = o.holdout or 0.2
  if type(holdout) ~= "number" or holdout <= 0 or holdout >= 1 then
    fail(fname, "option 'holdout' expected a share in (0, 1), got %s", tostring(holdout))
  end
  local seed = o.seed or 0
  local parts, n_concepts, n_held = split(fname, styles, holdout, seed)
  local t0 = knnd.wall_time()
  local clf = classifier.new { channels = shape[2], image_size = shape[3], classes = #styles, width = o.width or 16,
    seed = seed }
  local x, y = gather(styles, parts.train)
  knnd.classifier.train { model = clf, images = x, labels = y, steps = o.steps or 300, batch = o.batch or 64,
    lr = o.lr, seed = seed, progress = o.progress == true, desc = "style classifier" }
  local names = {}
  for i, st in ipairs(styles) do names[i] = st.name end
  clf.class_names = names
  local report = { per_style = {}, concepts = n_concepts, heldout_concepts = n_held, train_images = x:size(1),
    heldout_images = n_held * #styles, train_accuracy = clf:accuracy(x, y), heldout_names = parts.heldout_names }
  local sum = 0
  for s, st in ipairs(styles) do
    local rows = knnd.tensor(parts.heldout[s], { dtype = "i64" })
    local acc = clf:accuracy(st.images:index_select(1, rows), knnd.full({ rows:numel() }, s - 1, { dtype = "i64" }))
    report.per_style[st.name] = acc
    sum = sum + acc
  end
  report.heldout_accuracy = sum / #styles
  report.seconds = knnd.wall_time() - t0
  clf.test_accuracy = report.heldout_accuracy
  return clf, report
end

--- knnd.style.share(clf, images, name) -> the share of images (u8, or floats in [-1, 1]: a
--- sampler's output) that the style classifier calls `name` (one of clf.class_names)
function M.share(clf, images, name)
  local fname = "share"
  if getmetatable(clf) ~= classifier.Classifier then fail(fname, "argument 1 expected a knnd.classifier") end
  local names = clf.class_names or {}
  local class
  for i, n in ipairs(names) do if n == name then class = i - 1 end end
  if not class then
    fail(fname, "argument 3: '%s' is not a style of this classifier (its styles: %s)", tostring(name),
      #names > 0 and table.concat(names, ", ") or "none recorded: train it with knnd.style.train")
  end
  local pred = clf:predict(images)
  return knnd.eq(pred, knnd.full({ pred:numel() }, class, { dtype = "i64" })):to("f32"):mean():item()
end

return M
