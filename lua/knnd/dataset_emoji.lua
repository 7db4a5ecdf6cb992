-- dataset_emoji.lua — the emoji datasets of the stickers experiments, in the layout of dataset.lua:
-- every fully-qualified emoji of Unicode's emoji-test.txt rendered from Noto Color Emoji (prepare_emoji),
-- and the same concepts drawn by another artist, EmojiOne 2's PNGs (prepare_emojione, the database
-- swapped in at inference). Both take captions, groups and subgroups from emoji-test.txt, so their
-- rows share names, labels and code points.
--
--   knnd.dataset.prepare_emoji{out = "emoji32.h5", size = 32}
--   knnd.dataset.prepare_emojione{out = "emojione32.h5", size = 32}
--   knnd.dataset.emoji_meta("emoji32.h5")[1]  -- {codepoints = "1F600", group = "Smileys & Emotion", subgroup = "face-smiling"}
--
-- Besides dataset.lua's images, labels and captions (caption = the emoji's name: "grinning face",
-- "woman technologist: medium skin tone"; label = its group, classes = the 9 group names in file
-- order) both files hold:
--   /subgroups             i64 [N]   0-based subgroup of each row; root attribute `subgroups`: the
--                                    subgroup names joined by "\n"
--   /codepoints/bytes      u8, /codepoints/offsets i64 [N + 1]: each row's fully-qualified sequence as
--                                    emoji-test.txt writes it ("1F469 200D 1F4BB"), stored like the captions
-- Groups and subgroups are numbered over the whole emoji-test.txt, so both datasets (and any limit)
-- agree on them.
local knnd = require "knnd"
local D = require "knnd.dataset"
local C = knnd._cdata

local M = {}

-- an error of a public function (level 3: at its caller), or of a file it reads (level 0: no position)
local function fail(fname, fmt, ...)
  error(("knnd.dataset.%s: " .. fmt):format(fname, ...), 3)
end

local function bad_file(fname, fmt, ...)
  error(("knnd.dataset.%s: " .. fmt):format(fname, ...), 0)
end

-- Unicode's emoji-test.txt (Debian's unicode-data): the fully-qualified lines, in file (CLDR) order.
-- -> {entries = {{codepoints =, text =, name =, group =, subgroup =}, ...}, groups = {...}, subgroups = {...}}
-- with group/subgroup the 1-based positions in groups/subgroups (those with fully-qualified emoji only)
local function read_emoji_test(fname, path)
  local f = io.open(path, "rb")
  if not f then
    bad_file(fname, "the emoji list '%s' was not found (install Debian's unicode-data, or pass emoji_test=)", path)
  end
  local entries, groups, subgroups = {}, {}, {}
  local group_name, subgroup_name
  local lineno = 0
  for line in f:lines() do
    lineno = lineno + 1
    local g = line:match("^# group: (.-)%s*$")
    local sg = line:match("^# subgroup: (.-)%s*$")
    if g then group_name = g end
    if sg then subgroup_name = sg end
    local cps, comment = line:match("^(%x[%x ]*);%s*fully%-qualified%s*#(.*)$")
    if cps then
      -- "# 😀 E1.0 grinning face": the emoji, the version it came in, the name
      local name = comment:match("^%s*%S+%s+E%d+%.%d+%s+(.-)%s*$") or comment:match("^%s*%S+%s+(.-)%s*$")
      if not name or name == "" or not group_name or not subgroup_name then
        f:close()
        bad_file(fname, "%s line %d: expected 'code points ; fully-qualified # emoji E<version> name' under a "
          .. "'# group:' and a '# subgroup:' header", path, lineno)
      end
      if groups[#groups] ~= group_name then groups[#groups + 1] = group_name end
      if subgroups[#subgroups] ~= subgroup_name then subgroups[#subgroups + 1] = subgroup_name end
      local chars, hex = {}, {}
      for h in cps:gmatch("%x+") do
        chars[#chars + 1] = utf8.char(tonumber(h, 16))
        hex[#hex + 1] = h:upper()
      end
      entries[#entries + 1] = { codepoints = table.concat(hex, " "), text = table.concat(chars), name = name,
        group = #groups, subgroup = #subgroups }
    end
  end
  f:close()
  if #entries == 0 then bad_file(fname, "no fully-qualified emoji in '%s' (is it Unicode's emoji-test.txt?)", path) end
  return { entries = entries, groups = groups, subgroups = subgroups }
end

-- the code points of a sequence without the variation selector and the joiner, as EmojiOne names its
-- files ("1F469 200D 1F4BB" -> "1F469-1F4BB", "2764 FE0F" -> "2764")
local function file_key(codepoints)
  local keep = {}
  for h in codepoints:gmatch("%x+") do
    h = h:upper()
    if h ~= "FE0F" and h ~= "200D" then keep[#keep + 1] = h end
  end
  return table.concat(keep, "-")
end

-- a list of strings as a bytes + offsets pair of datasets (like the captions)
local function write_strings(f, name, list)
  local bytes, offsets = {}, { 0 }
  for _, s in ipairs(list) do
    for i = 1, #s do bytes[#bytes + 1] = s:byte(i) end
    offsets[#offsets + 1] = #bytes
  end
  f:write(name .. "/bytes", knnd.tensor(bytes, { dtype = "u8" }))
  f:write(name .. "/offsets", knnd.tensor(offsets, { dtype = "i64" }))
end

-- write the rows of `rows` (entries of read_emoji_test, in order) with image(entry) -> u8 [3,S,S]
-- or nil, reason (skipped); -> the number written and the skipped entries (each with .reason)
local function write_rows(fname, opts, source, size, list, rows, image)
  local w = D.writer.new(opts.out, 3, size, #rows, "prepare " .. source, opts.progress)
  local skipped, written = {}, {}
  D.writer.run(w, function()
    local batch = knnd.zeros(256, 3, size, size, { dtype = "u8" })
    local labels, caps = {}, {}
    local function flush()
      if #caps == 0 then return end
      D.writer.append(w, batch:narrow(1, 1, #caps), knnd.tensor(labels, { dtype = "i64" }), caps)
      labels, caps = {}, {}
      collectgarbage() -- each image leaves tensors behind whose size the Lua GC cannot see
    end
    for _, e in ipairs(rows) do
      local img, reason = image(e)
      if img then
        labels[#labels + 1], caps[#caps + 1] = e.group - 1, e.name
        batch:select(1, #caps):copy_(img)
        written[#written + 1] = e
        if #caps == batch:size(1) then flush() end
      else
        e.reason = reason
        skipped[#skipped + 1] = e
        if w.bar then w.bar:update(1) end
      end
    end
    flush()
    if #written == 0 then
      error(("knnd.dataset.%s: none of the %d emoji could be drawn (the first: %s)"):format(fname, #rows,
        tostring(skipped[1] and skipped[1].reason)), 0)
    end
    local subgroup_ids, codepoints = {}, {}
    for i, e in ipairs(written) do subgroup_ids[i], codepoints[i] = e.subgroup - 1, e.codepoints end
    w.f:write("subgroups", knnd.tensor(subgroup_ids, { dtype = "i64" }))
    write_strings(w.f, "codepoints", codepoints)
    D.writer.finish(w, { source = source, size = size, channels = 3, classes = table.concat(list.groups, "\n"),
      subgroups = table.concat(list.subgroups, "\n") })
  end)
  return #written, skipped
end

--- knnd.dataset.prepare_emoji{out=, size=32, font=, emoji_test=, limit=N, progress=true}
--- -> the number of images written, and {total =, skipped = {{codepoints =, name =, reason =}, ...}}:
--- every fully-qualified emoji of emoji_test (default Debian's unicode-data) rendered from the colour
--- font (default Debian's Noto Color Emoji), RGB on white; sequences the font has no glyph for are skipped.
function M.prepare_emoji(opts)
  local fname = "prepare_emoji"
  opts = D.check_opts(fname, opts, { out = 1, size = 1, font = 1, emoji_test = 1, limit = 1, progress = 1 })
  if type(opts.out) ~= "string" then fail(fname, "option 'out' (a file path) is required") end
  local size = D.positive_int(fname, "size", opts.size, 32)
  local limit = D.positive_int(fname, "limit", opts.limit, nil)
  local list = read_emoji_test(fname, opts.emoji_test or C.emoji_test_path)
  local rows = table.move(list.entries, 1, math.min(#list.entries, limit or #list.entries), 1, {})
  local ok, opened = pcall(C.emoji_font_open, opts.font or C.emoji_font_path)
  if not ok then error(("knnd.dataset.%s: %s"):format(fname, tostring(opened):gsub("^knnd%.[%w_.]+: ", "")), 2) end
  local font <close> = opened
  local n, skipped = write_rows(fname, opts, "emoji", size, list, rows, function(e) return font:render(e.text, size) end)
  return n, { total = #rows, skipped = skipped }
end

--- knnd.dataset.prepare_emojione{out=, size=64, dir=, emoji_test=, limit=N, progress=true}
--- -> the number of images written, and {total = (rows tried), matched = (PNGs that name an emoji, before
--- the limit), skipped = {}, unmatched = {file names}}: the PNGs of dir (default where tests/deps.sh
--- unpacks ruby-gemojione) whose file name, their code points, names a fully-qualified emoji of emoji_test,
--- in emoji_test's order, on white, area-resized to size. Files that name no fully-qualified emoji
--- (skin-tone swatches, sequences Unicode dropped) are left out and listed.
function M.prepare_emojione(opts)
  local fname = "prepare_emojione"
  opts = D.check_opts(fname, opts, { out = 1, size = 1, dir = 1, emoji_test = 1, limit = 1, progress = 1 })
  if type(opts.out) ~= "string" then fail(fname, "option 'out' (a file path) is required") end
  local size = D.positive_int(fname, "size", opts.size, 64)
  local limit = D.positive_int(fname, "limit", opts.limit, nil)
  local dir = opts.dir or C.gemojione_dir
  local list = read_emoji_test(fname, opts.emoji_test or C.emoji_test_path)
  local by_key = {}
  for _, e in ipairs(list.entries) do by_key[file_key(e.codepoints)] = e end
  local lfs = require "lfs"
  local iter_ok, iter, state = pcall(lfs.dir, dir)
  if not iter_ok then
    fail(fname, "cannot read the directory '%s' (run tests/deps.sh to unpack ruby-gemojione there, or pass dir=)", dir)
  end
  local files, unmatched = {}, {}
  for name in iter, state do
    local stem = name:match("^([%x%-]+)%.[Pp][Nn][Gg]$")
    local e = stem and by_key[file_key(stem)]
    if e then
      files[e] = name
    elseif name:lower():match("%.png$") then
      unmatched[#unmatched + 1] = name
    end
  end
  table.sort(unmatched)
  local rows = {}
  for _, e in ipairs(list.entries) do
    if files[e] and #rows < (limit or math.huge) then rows[#rows + 1] = e end
  end
  if #rows == 0 then fail(fname, "no PNG of '%s' is named by the code points of an emoji in the list", dir) end
  local n, skipped = write_rows(fname, opts, "emojione", size, list, rows, function(e)
    local path = dir .. "/" .. files[e]
    local ok, img = pcall(knnd.read_png, path)
    if ok then
      local s = math.min(img:size(2), img:size(3))
      ok, img = pcall(D.square_rgb, img, s)
      if ok then img = img:view(3, s, s) end
      if ok and s ~= size then img = C.resize_area(img, size, size) end
    end
    if not ok then error(("knnd.dataset.%s: %s: %s"):format(fname, path, tostring(img)), 0) end
    return img
  end)
  local matched = 0
  for _ in pairs(files) do matched = matched + 1 end
  return n, { total = #rows, matched = matched, skipped = skipped, unmatched = unmatched }
end

--- knnd.dataset.emoji_meta(path) -> one {codepoints =, group =, subgroup =} per row (row r at [r + 1])
--- of a file written by prepare_emoji or prepare_emojione
function M.emoji_meta(path)
  local ds = D.open(path, { cache = false })
  local f = ds.f
  if not (f:exists("subgroups") and f:exists("codepoints/bytes") and f:exists("codepoints/offsets")) then
    ds:close()
    error(("knnd.dataset.emoji_meta: '%s' was not written by prepare_emoji or prepare_emojione (no subgroups, "
      .. "codepoints)"):format(path), 2)
  end
  local subgroup_names = {}
  for s in (f:attr("/", "subgroups") or ""):gmatch("[^\n]+") do subgroup_names[#subgroup_names + 1] = s end
  local sub = f:read("subgroups"):totable()
  local offsets = f:read("codepoints/offsets"):totable()
  local bytes = f:read("codepoints/bytes"):totable()
  local rows = {}
  for r = 1, ds.n do
    local cps = string.char(table.unpack(bytes, offsets[r] + 1, offsets[r + 1]))
    rows[r] = { codepoints = cps, group = ds.classes[ds:label(r - 1) + 1], subgroup = subgroup_names[sub[r] + 1] }
  end
  ds:close()
  return rows
end

return M
