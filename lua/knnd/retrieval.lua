-- retrieval.lua — looking at what retrieval returns: a neighbour grid PNG, one row per query
-- (the query image, or a caption tile for a text query) followed by its k neighbours' images.
--
--   local scores, rows = idx:search(q, 8)
--   knnd.retrieval.neighbor_grid{path = "nn.png", images = db_images, neighbor_rows = rows,
--     query_images = q_images, scores = scores, captions = db_captions, scale = 2}
local knnd = require "knnd"

local M = {}

local allowed = { path = 1, images = 1, neighbor_rows = 1, query_images = 1, query_texts = 1, scores = 1,
  captions = 1, query_captions = 1, range = 1, scale = 1, padding = 1, title = 1 }

-- images as f32 [N,C,H,W] in [0,1]: u8 is divided by 255, floats are mapped from range
local function as_unit_nchw(t, range, what)
  if not knnd.is_tensor(t) then error(("knnd.retrieval.neighbor_grid: option '%s' expected a tensor"):format(what), 3) end
  if t:dim() == 3 then t = t:unsqueeze(2) end -- [N,H,W] (grey, e.g. Fashion-MNIST)
  if t:dim() ~= 4 then
    error(("knnd.retrieval.neighbor_grid: option '%s' expected images [N,H,W] or [N,C,H,W], got %d dims")
      :format(what, t:dim()), 3)
  end
  if t:dtype() == "u8" then return t:to("f32") / 255 end
  local lo, hi = 0, 1
  if range then lo, hi = range[1], range[2] end
  return (t:to("f32") - lo) / (hi - lo)
end

local function caption_of(captions, row)
  if captions == nil then return nil end
  if type(captions) == "function" then return captions(row) end
  return captions[row + 1] -- 0-based row -> Lua list
end

--- knnd.retrieval.neighbor_grid{path=, images=, neighbor_rows=, query_images= | query_texts=, scores=,
---   captions=, query_captions=, range=, scale=, padding=, title=}
--- images: the database's images [N,H,W] or [N,C,H,W] (u8, or floats in `range`, default [0,1]);
--- neighbor_rows: i64 [Q,k], 0-based rows of images (idx:search's labels; -1 gives a blank tile);
--- query_images [Q,...] like images, or query_texts (Q strings: a white tile captioned with the
--- text); scores [Q,k] are printed under the neighbours; captions: a list indexed by row+1 or a
--- function(row) -> string. Writes the PNG at path and returns its [3,H,W] u8 picture.
function M.neighbor_grid(o)
  if type(o) ~= "table" then error("knnd.retrieval.neighbor_grid: expected an options table", 2) end
  for key in pairs(o) do
    if not allowed[key] then
      local names = {}
      for n in pairs(allowed) do names[#names + 1] = n end
      table.sort(names)
      error(("knnd.retrieval.neighbor_grid: unknown option '%s' (expected %s)"):format(key, table.concat(names, ", ")), 2)
    end
  end
  if o.images == nil or o.neighbor_rows == nil then
    error("knnd.retrieval.neighbor_grid: options 'images' and 'neighbor_rows' are required", 2)
  end
  if (o.query_images == nil) == (o.query_texts == nil) then
    error("knnd.retrieval.neighbor_grid: give exactly one of 'query_images' and 'query_texts'", 2)
  end
  local images = as_unit_nchw(o.images, o.range, "images")
  local rows = o.neighbor_rows
  if rows:dim() == 1 then rows = rows:unsqueeze(1) end
  local Q, k = rows:size(1), rows:size(2)
  local n_db = images:size(1)
  local C, H, W = images:size(2), images:size(3), images:size(4)
  local queries
  if o.query_images ~= nil then
    queries = as_unit_nchw(o.query_images, o.range, "query_images")
    if queries:size(1) ~= Q or queries:size(2) ~= C or queries:size(3) ~= H or queries:size(4) ~= W then
      error(("knnd.retrieval.neighbor_grid: query_images %s do not match %d queries of images [%d,%d,%d]")
        :format(table.concat(queries:shape(), "x"), Q, C, H, W), 2)
    end
  elseif type(o.query_texts) ~= "table" or #o.query_texts ~= Q then
    error(("knnd.retrieval.neighbor_grid: option 'query_texts' expected a list of %d strings"):format(Q), 2)
  end
  local blank = knnd.ones(1, C, H, W)
  local rows_t = rows:totable()
  local scores_t = o.scores and (o.scores:dim() == 1 and { o.scores:totable() } or o.scores:totable()) or nil
  -- every tile is a row of pool = [images; blank; queries], picked by one index_select
  local pool = knnd.cat(queries and { images, blank, queries } or { images, blank }, 1)
  local tiles, caps = {}, {}
  local any_caption = o.query_texts ~= nil or o.scores ~= nil or o.captions ~= nil or o.query_captions ~= nil
  for i = 1, Q do
    if queries then
      tiles[#tiles + 1] = n_db + i
      caps[#caps + 1] = (o.query_captions and o.query_captions[i]) or "query"
    else
      tiles[#tiles + 1] = n_db
      caps[#caps + 1] = tostring(o.query_texts[i])
    end
    for j = 1, k do
      local r = math.tointeger(rows_t[i][j])
      if r == nil or r < -1 or r >= n_db then
        error(("knnd.retrieval.neighbor_grid: neighbor_rows[%d][%d] is %s (expected 0 .. %d, or -1)")
          :format(i, j, tostring(rows_t[i][j]), n_db - 1), 2)
      end
      tiles[#tiles + 1] = r >= 0 and r or n_db
      local parts = {}
      local c = r >= 0 and caption_of(o.captions, r) or nil
      if c then parts[#parts + 1] = tostring(c) end
      if scores_t and r >= 0 then parts[#parts + 1] = ("%.3f"):format(scores_t[i][j]) end
      caps[#caps + 1] = table.concat(parts, " ")
    end
  end
  local grid = knnd.index_select(pool, 1, knnd.tensor(tiles, { dtype = "i64" }))
  local opts = { nrow = k + 1, scale = o.scale, padding = o.padding, title = o.title,
    captions = any_caption and caps or nil }
  if o.path then knnd.save_grid(o.path, grid, opts) end
  return knnd.image_grid(grid, opts)
end

return M
