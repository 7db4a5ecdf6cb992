-- emoji_spec.lua — knnd.dataset.prepare_emoji (Noto Color Emoji, Debian's fonts-noto-color-emoji) and
-- prepare_emojione (ruby-gemojione's PNGs, unpacked by tests/deps.sh) on the real files: captions,
-- labels, groups and code points from Unicode's emoji-test.txt, the pixels against the renderer and an
-- independent area average, the skipping of unsupported sequences, and the errors.
local knnd = require "knnd"

local h = require "spec_helpers"
local flat, exists, write_file, errors_with = h.flat, h.exists, h.write_file, h.errors_with
local function tmp(name) return h.tmp("emoji_spec", name) end
local C = knnd._cdata

local GROUPS = { "Smileys & Emotion", "People & Body", "Animals & Nature", "Food & Drink", "Travel & Places",
  "Activities", "Objects", "Symbols", "Flags" }
local N = 200 -- the 166 smileys and the first people
local emoji_path = tmp("emoji32.h5")
local n_emoji, emoji_report = knnd.dataset.prepare_emoji { out = emoji_path, size = 32, limit = N, progress = false }
local M1 = 30
local one_path = tmp("emojione32.h5")
local n_one, one_report = knnd.dataset.prepare_emojione { out = one_path, size = 32, limit = M1, progress = false }

-- "1F469 200D 1F4BB" -> the UTF-8 text
local function text_of(codepoints)
  local chars = {}
  for hex in codepoints:gmatch("%x+") do chars[#chars + 1] = utf8.char(tonumber(hex, 16)) end
  return table.concat(chars)
end

describe("knnd.dataset.prepare_emoji", function()
  it("writes every emoji in emoji-test.txt's order with its name, group and subgroup", function()
    assert.are.equal(N, n_emoji)
    assert.are.same({ total = N, skipped = {} }, emoji_report)
    local ds = knnd.dataset.open(emoji_path)
    assert.are.equal(N, ds:count())
    assert.are.same({ 3, 32, 32 }, ds:image_shape())
    assert.are.equal("emoji", ds.source)
    assert.are.same(GROUPS, ds.classes)
    assert.are.equal("grinning face", ds:caption(0))
    assert.are.equal("grinning face with big eyes", ds:caption(1))
    assert.are.equal(0, ds:label(0))
    assert.are.equal("Smileys & Emotion", ds:class_name(165))
    -- the first of People & Body, then its skin tones (emoji-test.txt lists them after the base)
    assert.are.equal("waving hand", ds:caption(166))
    assert.are.equal("People & Body", ds:class_name(166))
    assert.are.equal("waving hand: light skin tone", ds:caption(167))
    local meta = knnd.dataset.emoji_meta(emoji_path)
    assert.are.equal(N, #meta)
    assert.are.same({ codepoints = "1F600", group = "Smileys & Emotion", subgroup = "face-smiling" }, meta[1])
    assert.are.same({ codepoints = "1F44B 1F3FB", group = "People & Body", subgroup = "hand-fingers-open" }, meta[168])
    -- "smiling face" is U+263A with the emoji presentation selector: the fully-qualified form is kept
    local found = false
    for r = 0, N - 1 do
      if ds:caption(r) == "smiling face" then
        assert.are.equal("263A FE0F", meta[r + 1].codepoints)
        found = true
      end
    end
    assert.is_true(found)
    ds:close()
  end)

  it("stores exactly what the font renders, on white", function()
    local ds = knnd.dataset.open(emoji_path)
    local font <close> = C.emoji_font_open()
    local meta = knnd.dataset.emoji_meta(emoji_path)
    for _, r in ipairs({ 0, 57, 166, 167, N - 1 }) do
      local want = font:render(text_of(meta[r + 1].codepoints), 32)
      assert.are.same(flat(want), flat(ds:images({ r })))
    end
    -- every row is a picture: a white corner and a good share of coloured pixels
    local imgs = ds:images(knnd.arange(0, N, 1, { dtype = "i64" })):float()
    local coloured = knnd.lt(imgs:min(2), 250):float():mean({ dim = { 2, 3 } }):totable()
    for r = 1, N do assert.is_true(coloured[r] > 0.1, ("row %d is nearly blank"):format(r - 1)) end
    assert.are.same({ 255, 255, 255 }, flat(ds:images({ 0 }):select(1, 1):select(2, 1):select(2, 1)))
    ds:close()
  end)

  it("skips and reports the sequences the font has no glyph for", function()
    local list = tmp("emoji-test.txt")
    write_file(list, table.concat({
      "# group: Smileys & Emotion",
      "# subgroup: face-smiling",
      "1F600 ; fully-qualified # 😀 E1.0 grinning face",
      "263A ; unqualified # ☺ E0.6 smiling face",
      "# subgroup: invented",
      "1F469 200D 1F355 ; fully-qualified # 👩‍🍕 E99.0 woman eating pizza",
      "# group: Flags",
      "# subgroup: country-flag",
      "1F1EF 1F1F5 ; fully-qualified # 🇯🇵 E2.0 flag: Japan",
      "",
    }, "\n"))
    local out = tmp("small.h5")
    local n, report = knnd.dataset.prepare_emoji { out = out, size = 16, emoji_test = list, progress = false }
    assert.are.equal(2, n)
    assert.are.equal(3, report.total)
    assert.are.equal(1, #report.skipped)
    assert.are.equal("woman eating pizza", report.skipped[1].name)
    assert.are.equal("1F469 200D 1F355", report.skipped[1].codepoints)
    assert.truthy(report.skipped[1].reason:find("no single glyph", 1, true))
    local ds = knnd.dataset.open(out)
    assert.are.same({ "grinning face", "flag: Japan" }, { ds:caption(0), ds:caption(1) })
    assert.are.same({ "Smileys & Emotion", "Flags" }, ds.classes)
    assert.are.same({ 0, 1 }, flat(ds:labels({ 0, 1 })))
    ds:close()
    local meta = knnd.dataset.emoji_meta(out)
    assert.are.same({ "face-smiling", "country-flag" }, { meta[1].subgroup, meta[2].subgroup })
  end)

  it("rejects missing files and bad options, leaving no file behind", function()
    local out = tmp("bad.h5")
    errors_with(function() knnd.dataset.prepare_emoji { out = out, emoji_test = "missing.txt", progress = false } end,
      "emoji list 'missing.txt' was not found")
    errors_with(function() knnd.dataset.prepare_emoji { out = out, font = "missing.ttf", limit = 2, progress = false } end,
      "cannot open the font 'missing.ttf'")
    errors_with(function()
      knnd.dataset.prepare_emoji { out = out, font = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf", limit = 2 }
    end, "no colour bitmap strikes")
    local junk = tmp("junk.txt")
    write_file(junk, "# group: x\nnot an emoji list\n")
    errors_with(function() knnd.dataset.prepare_emoji { out = out, emoji_test = junk } end, "no fully-qualified emoji")
    errors_with(function() knnd.dataset.prepare_emoji { out = out, sise = 32 } end, "unknown option 'sise'")
    errors_with(function() knnd.dataset.prepare_emoji { out = out, size = 0 } end, "option 'size' expected a positive")
    errors_with(function() knnd.dataset.prepare_emoji { size = 32 } end, "option 'out' (a file path) is required")
    assert.is_false(exists(out))
  end)
end)

describe("C.emoji_font_open / font:render", function()
  it("renders one emoji, returns nil and the reason for an unsupported one, and checks its arguments", function()
    local font <close> = C.emoji_font_open()
    local img = font:render("👩‍💻", 24)
    assert.are.same({ 3, 24, 24 }, img:shape())
    assert.are.equal("u8", img:dtype())
    local none, why = font:render("😀😀", 24)
    assert.is_nil(none)
    assert.truthy(why:find("2 glyphs", 1, true))
    errors_with(function() font:render("\xF0\x9F", 24) end, "knnd.data.emoji_render: argument 'text' is not valid UTF-8")
    errors_with(function() font:render("😀", 0) end, "argument 'size' expected 1 .. 4096")
    errors_with(function() font:render("a\0b", 8) end, "contains a NUL byte")
    font:close()
    errors_with(function() font:render("😀", 8) end, "the font is closed")
  end)
end)

-- the independent reference of a 64 -> size area resize (size divides 64): the mean of each block, after
-- compositing the PNG's alpha on white (in doubles)
local function reference(png, size)
  local t = png:float():totable()
  local c, f = #t, 64 // size
  local out = {}
  for ch = 1, 3 do
    for y = 0, size - 1 do
      for x = 0, size - 1 do
        local acc = 0
        for dy = 1, f do
          for dx = 1, f do
            local yy, xx = f * y + dy, f * x + dx
            local v = c >= 3 and t[ch][yy][xx] or t[1][yy][xx]
            local a = (c == 4 or c == 2) and t[c][yy][xx] / 255 or 1
            acc = acc + v * a + (1 - a) * 255
          end
        end
        out[#out + 1] = acc / (f * f)
      end
    end
  end
  return out
end

local function assert_matches_png(ds, r, path, size)
  local want = reference(knnd.read_png(path), size)
  local got = flat(ds:images({ r }))
  local worst = 0
  for k = 1, #want do worst = math.max(worst, math.abs(want[k] - got[k])) end
  assert.is_true(worst <= 1, ("row %d (%s) differs by %.2f from the reference"):format(r, path, worst))
end

describe("knnd.dataset.prepare_emojione", function()
  it("matches the PNGs to emoji-test.txt's names through their code points", function()
    assert.are.equal(M1, n_one)
    -- ruby-gemojione 3.3.0: 1,794 PNGs; the 5 skin-tone swatches and the 5 toned "wrestlers" (Unicode
    -- gives people wrestling no skin tones) name no fully-qualified emoji
    assert.are.equal(1784, one_report.matched)
    assert.are.equal(10, #one_report.unmatched)
    assert.are.equal("1F3FB.png", one_report.unmatched[1])
    local ds = knnd.dataset.open(one_path)
    assert.are.equal("emojione", ds.source)
    assert.are.same(GROUPS, ds.classes)
    assert.are.same({ 3, 32, 32 }, ds:image_shape())
    assert.are.equal("grinning face", ds:caption(0))
    -- concepts of the emoji dataset (EmojiOne 2 predates some, e.g. "melting face"), in its order
    local emoji = knnd.dataset.open(emoji_path)
    local a, b = knnd.dataset.emoji_meta(one_path), knnd.dataset.emoji_meta(emoji_path)
    local at = {}
    for r = 0, N - 1 do at[b[r + 1].codepoints] = r end
    local last = -1
    for r = 0, M1 - 1 do
      local e = at[a[r + 1].codepoints]
      assert.is_true(e ~= nil and e > last, ("emojione row %d (%s) out of order"):format(r, a[r + 1].codepoints))
      assert.are.equal(emoji:caption(e), ds:caption(r))
      assert.are.same(b[e + 1], a[r + 1])
      assert.are.equal(emoji:label(e), ds:label(r))
      last = e
    end
    assert.is_true(last > M1) -- some were missing from EmojiOne
    emoji:close()
    ds:close()
  end)

  it("stores each PNG composited on white and area-averaged to the size", function()
    local ds = knnd.dataset.open(one_path)
    local meta = knnd.dataset.emoji_meta(one_path)
    for _, r in ipairs({ 0, 7, M1 - 1 }) do
      local name = meta[r + 1].codepoints:gsub(" FE0F", ""):gsub(" 200D", ""):gsub(" ", "-") .. ".png"
      assert_matches_png(ds, r, C.gemojione_dir .. "/" .. name, 32)
    end
    ds:close()
    -- at 64 the PNGs are only composited on white
    local out64 = tmp("emojione64.h5")
    knnd.dataset.prepare_emojione { out = out64, limit = 3, progress = false }
    local d64 = knnd.dataset.open(out64)
    assert.are.same({ 3, 64, 64 }, d64:image_shape())
    assert_matches_png(d64, 0, C.gemojione_dir .. "/1F600.png", 64)
    d64:close()
  end)

  it("explains a missing folder and a folder without emoji PNGs", function()
    local out = tmp("bad1.h5")
    errors_with(function() knnd.dataset.prepare_emojione { out = out, dir = "no/such/dir", progress = false } end,
      "cannot read the directory 'no/such/dir'")
    os.execute("mkdir -p emoji_spec_pngs")
    knnd.save_png("emoji_spec_pngs/not-an-emoji.png", knnd.ones(3, 4, 4))
    errors_with(function() knnd.dataset.prepare_emojione { out = out, dir = "emoji_spec_pngs", progress = false } end,
      "no PNG of 'emoji_spec_pngs' is named by the code points of an emoji")
    assert.is_false(exists(out))
  end)
end)
