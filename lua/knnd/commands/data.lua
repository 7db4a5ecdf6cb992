-- data.lua — `knnd data prepare|info`: prepared image datasets (lua/knnd/dataset.lua) from the shell.
--
--   knnd data prepare fashion-mnist --out fm.h5 [--split train] [--size 32] [--channels 1] [--limit N]
--   knnd data prepare folder DIR --out imgs.h5 [--size 64] [--captions captions.tsv]
--   knnd data prepare emoji --out emoji.h5 [--size 32] [--font NotoColorEmoji.ttf] [--emoji-test emoji-test.txt]
--   knnd data prepare emojione [DIR] --out emojione.h5 [--size 64] [--emoji-test emoji-test.txt]
--   knnd data prepare coco --annotations captions_val2017.json --images val2017 --out coco.h5 [--captions-mode all]
--   knnd data prepare lncoco --annotations coco_val_captions.jsonl --images val2017 --out ln.h5
--   knnd data prepare cub CUB_200_2011 --out cub.h5 [--captions text_c10] [--split train|test|all] [--bbox]
--     (importers: [--size 64] [--limit N] [--split NAME] [--on-error fail|skip], lua/knnd/dataset_import.lua)
--   knnd data info fm.h5 [--captions 5]
local knnd = require "knnd"
local cliutil = require "knnd.cliutil"
local positive_int, exists = cliutil.positive_int, cliutil.exists

local M = { help = "Prepare image datasets (HDF5) for training and describe them." }

function M.setup(cmd)
  cmd:command_target("data_command")
  cmd:require_command(true)
  local p = cmd:command("prepare", "Write a prepared dataset: images u8 [N,C,H,W], labels, captions.")
  p:argument("source", "fashion-mnist (Debian's dataset-fashion-mnist), folder, emoji (Noto Color Emoji), "
    .. "emojione (ruby-gemojione's PNGs), or an import of coco (MS-COCO captions), lncoco (Localized Narratives "
    .. "on COCO) or cub (CUB-200-2011).")
    :choices({ "fashion-mnist", "folder", "emoji", "emojione", "coco", "lncoco", "cub" })
  p:argument("dir", "The folder of .png/.jpg images (folder; emojione: default " .. knnd._cdata.gemojione_dir
    .. "; cub: the CUB_200_2011 folder)."):args("?")
  p:option("--out", "The dataset file to write (written atomically)."):count(1)
  p:option("--split", "fashion-mnist: train (default) or test; cub: train (default), test or all; folder, coco, "
    .. "lncoco: the name kept in the file (coco, lncoco: default from the file names)."):choices({ "train", "val",
    "test", "all" })
  p:option("--size", "Side of the square images (default 32 for fashion-mnist and emoji, 64 for the others).")
    :convert(positive_int("--size"))
  p:option("--channels", "fashion-mnist: 1 or 3 channels.", "1"):choices({ "1", "3" })
  p:option("--limit", "fashion-mnist, emoji, emojione, coco, lncoco, cub: the first N images only.")
    :convert(positive_int("--limit"))
  p:option("--seed", "fashion-mnist: seed of the caption templates.", "0"):convert(function(v)
    local n = math.tointeger(tonumber(v))
    if not n or n < 0 then return nil, ("--seed expects a non-negative integer, got '%s'"):format(v) end
    return n
  end)
  p:option("--captions", "folder: a TSV of filename<TAB>caption; cub: the text_c10 folder of Reed et al.'s captions.")
  p:option("--annotations", "coco: the captions_*.json file; lncoco: a .jsonl file (repeat for several)."):count("*")
  p:option("--images", "coco, lncoco: the folder of the COCO images.")
  p:option("--captions-mode", "coco, lncoco, cub: one row per image with its first caption, or one per caption.")
    :choices({ "first", "all" })
  p:option("--on-error", "coco, lncoco, cub: a missing or unreadable image stops the import (fail, the default) or "
    .. "is left out and counted (skip)."):choices({ "fail", "skip" })
  p:flag("--bbox", "cub: crop each bird around its bounding box (bounding_boxes.txt).")
  p:option("--font", "emoji: the colour emoji font (default " .. knnd._cdata.emoji_font_path .. ").")
  p:option("--emoji-test", "emoji, emojione: Unicode's list of emoji names (default " .. knnd._cdata.emoji_test_path .. ").")
  p:flag("-q --quiet", "No progress bar.")

  local i = cmd:command("info", "Print a dataset's count, shape, classes and a few captions.")
  i:argument("file", "The dataset file.")
  i:option("--captions", "How many captions to show.", "5"):convert(tonumber)
end

-- strip the "knnd.<fn>: " prefix of library errors for the command's own message
local function call(what, fn, ...)
  local res = table.pack(pcall(fn, ...))
  if not res[1] then error(("%s: %s"):format(what, tostring(res[2]):gsub("^knnd%.[%w_.:]+: ", "")), 0) end
  return table.unpack(res, 2, res.n)
end

-- one preparer per source: checks the options that do not apply to it, writes, returns the count
local preparers = {}

preparers["fashion-mnist"] = function(a)
  if a.dir then error("knnd data prepare fashion-mnist takes no directory argument", 0) end
  if a.captions then error("--captions applies to the folder and cub sources only", 0) end
  return call("cannot prepare fashion-mnist", knnd.dataset.prepare_fashion_mnist, {
    out = a.out, split = a.split, size = a.size or 32, channels = math.tointeger(tonumber(a.channels)),
    limit = a.limit, seed = a.seed, progress = not a.quiet,
  })
end

preparers.folder = function(a)
  if not a.dir then error("knnd data prepare folder: the directory argument is missing", 0) end
  if a.limit or a.channels ~= "1" then
    error("--limit and --channels do not apply to the folder source", 0)
  end
  if a.captions and not exists(a.captions) and not exists(a.dir .. "/" .. a.captions) then
    error(("captions file '%s' not found"):format(a.captions), 0)
  end
  return call("cannot prepare the folder", knnd.dataset.prepare_folder, {
    dir = a.dir, out = a.out, size = a.size or 64, captions = a.captions, split = a.split, progress = not a.quiet,
  })
end

-- emoji and emojione: their own options only; the list of emoji names must exist
local function emoji_args(a, source)
  if a.captions or a.channels ~= "1" or a.split then
    error(("--captions, --channels and --split do not apply to the %s source"):format(source), 0)
  end
  if a.emoji_test and not exists(a.emoji_test) then error(("emoji list '%s' not found"):format(a.emoji_test), 0) end
end

-- "a, b, c and 7 more"
local function some(list, k)
  local shown = table.move(list, 1, math.min(#list, k), 1, {})
  return table.concat(shown, ", ") .. (#list > k and (" and %d more"):format(#list - k) or "")
end

preparers.emoji = function(a)
  if a.dir then error("knnd data prepare emoji takes no directory argument (--font names the font)", 0) end
  emoji_args(a, "emoji")
  if a.font and not exists(a.font) then error(("font '%s' not found"):format(a.font), 0) end
  local n, rep = call("cannot prepare emoji", knnd.dataset.prepare_emoji, {
    out = a.out, size = a.size or 32, font = a.font, emoji_test = a.emoji_test, limit = a.limit, progress = not a.quiet,
  })
  local names = {}
  for i, e in ipairs(rep.skipped) do names[i] = e.name end
  return n, #names > 0 and ("skipped %d of %d emoji the font has no glyph for: %s"):format(#names, rep.total,
    some(names, 5)) or nil
end

preparers.emojione = function(a)
  emoji_args(a, "emojione")
  if a.font then error("--font applies to the emoji source only", 0) end
  local n, rep = call("cannot prepare emojione", knnd.dataset.prepare_emojione, {
    out = a.out, size = a.size or 64, dir = a.dir, emoji_test = a.emoji_test, limit = a.limit, progress = not a.quiet,
  })
  return n, ("%d of %d PNGs name an emoji of the list; %d do not and were left out%s"):format(rep.matched,
    rep.matched + #rep.unmatched, #rep.unmatched, #rep.unmatched > 0 and (": " .. some(rep.unmatched, 5)) or "")
end

-- coco, lncoco and cub (lua/knnd/dataset_import.lua): the options every importer takes
local function import_opts(a, source)
  if a.channels ~= "1" or a.font or a.emoji_test then
    error(("--channels, --font and --emoji-test do not apply to the %s source"):format(source), 0)
  end
  return { out = a.out, size = a.size or 64, captions = a.captions_mode, limit = a.limit, split = a.split,
    on_error = a.on_error, progress = not a.quiet }
end

-- the importers' results: rows written, and a note of the images left out
local function import_result(n, skipped)
  return n, skipped > 0 and ("skipped %d image(s) that could not be read (--on-error skip)"):format(skipped) or nil
end

local function coco_args(a, source)
  if a.dir then error(("knnd data prepare %s takes no directory argument (--images names it)"):format(source), 0) end
  if a.captions or a.bbox then error("--captions and --bbox do not apply to the " .. source .. " source", 0) end
  if #a.annotations == 0 or not a.images then
    error(("knnd data prepare %s needs --annotations and --images"):format(source), 0)
  end
  local o = import_opts(a, source)
  o.images = a.images
  return o
end

preparers.coco = function(a)
  local o = coco_args(a, "coco")
  if #a.annotations > 1 then error("knnd data prepare coco takes one --annotations file", 0) end
  o.annotations = a.annotations[1]
  return import_result(call("cannot prepare coco", knnd.dataset.prepare_coco, o))
end

preparers.lncoco = function(a)
  local o = coco_args(a, "lncoco")
  o.annotations = a.annotations
  return import_result(call("cannot prepare lncoco", knnd.dataset.prepare_lncoco, o))
end

preparers.cub = function(a)
  if not a.dir then error("knnd data prepare cub: the directory argument (CUB_200_2011) is missing", 0) end
  if #a.annotations > 0 or a.images then error("--annotations and --images do not apply to the cub source", 0) end
  local o = import_opts(a, "cub")
  o.dir, o.text, o.bbox = a.dir, a.captions, a.bbox
  return import_result(call("cannot prepare cub", knnd.dataset.prepare_cub, o))
end

-- the options only the importers take
local function check_import_only(a)
  if #a.annotations > 0 or a.images or a.captions_mode or a.on_error or a.bbox then
    error(("--annotations, --images, --captions-mode, --on-error and --bbox do not apply to the %s source")
      :format(a.source), 0)
  end
end

local function cmd_prepare(a)
  if not (a.source == "coco" or a.source == "lncoco" or a.source == "cub") then check_import_only(a) end
  local t0 = knnd.wall_time and knnd.wall_time() or os.clock()
  local n, note = preparers[a.source](a)
  local dt = (knnd.wall_time and knnd.wall_time() or os.clock()) - t0
  if note then io.write(note, "\n") end
  io.write(("wrote %s: %d images in %.2f s\n"):format(a.out, n, dt))
  return 0
end

local function cmd_info(a)
  if not exists(a.file) then error(("dataset '%s' not found"):format(a.file), 0) end
  local ds = call("cannot read the dataset", knnd.dataset.open, a.file, { cache = false })
  local s = ds:image_shape()
  local function show(k, v) io.write(("%-9s %s\n"):format(k .. ":", tostring(v))) end
  show("dataset", a.file)
  show("source", ds.source)
  if ds.split then show("split", ds.split) end
  show("count", ds:count())
  show("shape", ("%d x %d x %d (C x H x W), u8"):format(s[1], s[2], s[3]))
  show("classes", #ds.classes > 0 and table.concat(ds.classes, ", ") or "(none)")
  local k = math.min(ds:count(), math.max(0, math.tointeger(a.captions) or 5))
  if k > 0 then io.write("captions:\n") end
  for r = 0, k - 1 do
    local label = ds:label(r)
    io.write(("  %5d  %s%s\n"):format(r, ds:caption(r), label >= 0 and (" [%d]"):format(label) or ""))
  end
  ds:close()
  return 0
end

function M.run(a)
  if a.prepare then return cmd_prepare(a) end
  if a.info then return cmd_info(a) end
  error("knnd data: expected a subcommand (prepare, info)", 0)
end

return M
