-- style_spec.lua — knnd.style on the real emoji (Noto Color Emoji and EmojiOne, the first of
-- emoji-test.txt's emoji at 32x32): the split holds out whole concepts, the classifier tells the
-- two drawings apart on concepts it never saw (a floor measured at this size), share() counts
-- what it calls a style, the names survive save/load, and the errors. Then the other judge of the
-- database swap, knnd.eval.caption_retrieval (the prompt's name among all names), against ranks
-- counted here.
local knnd = require "knnd"
local h = require "spec_helpers"
local function tmp(name) return h.tmp("style_spec", name) end

local noto_path, e1_path = tmp("emoji32.h5"), tmp("emojione32.h5")
knnd.dataset.prepare_emoji { out = noto_path, size = 32, limit = 300, progress = false }
knnd.dataset.prepare_emojione { out = e1_path, size = 32, limit = 150, progress = false }
local noto, noto_caps = knnd.style.images(noto_path)
local e1, e1_caps = knnd.style.images(e1_path)
local styles = { { name = "noto", images = noto, captions = noto_caps }, { name = "emojione", images = e1, captions = e1_caps } }

describe("knnd.style", function()
  local clf, report
  setup(function()
    clf, report = knnd.style.train { styles = styles, steps = 100, batch = 32, seed = 1 }
  end)

  it("trains on the concepts both styles draw and holds a seeded fifth of them out", function()
    assert.are.equal(150, report.concepts) -- every EmojiOne emoji of the first 150 is among Noto's first 300
    assert.are.equal(30, report.heldout_concepts)
    assert.are.equal(2 * 120, report.train_images)
    assert.are.equal(2 * 30, report.heldout_images)
    assert.are.same({ "noto", "emojione" }, clf.class_names)
  end)

  it("tells Noto from EmojiOne on concepts it never saw", function()
    print(("\n# style classifier: held-out accuracy %.3f (noto %.3f, emojione %.3f), train %.3f, %.1f s"):format(
      report.heldout_accuracy, report.per_style.noto, report.per_style.emojione, report.train_accuracy, report.seconds))
    -- measured 0.93 at this size for the seeds 1, 2 and 3 (0.92-0.95 on all 1,784 concepts); chance is 0.5
    assert.is_true(report.heldout_accuracy >= 0.83, ("held-out accuracy %.3f (floor 0.83)"):format(report.heldout_accuracy))
    assert.is_true(report.per_style.noto >= 0.7 and report.per_style.emojione >= 0.7)
    assert.are.equal(report.heldout_accuracy, clf.test_accuracy)
  end)

  it("counts the images it calls a style, from u8 or from a sampler's floats", function()
    local on_e1 = knnd.style.share(clf, e1, "emojione")
    assert.is_true(on_e1 > 0.85)
    h.assert_close(knnd.style.share(clf, e1, "noto"), 1 - on_e1, 1e-6)
    local floats = e1:to("f32") / 127.5 - 1
    h.assert_close(knnd.style.share(clf, floats, "emojione"), on_e1, 1e-6)
    assert.is_true(knnd.style.share(clf, noto, "emojione") < 0.15)
  end)

  it("keeps the style names through save and load", function()
    local path = tmp("style.h5")
    clf:save(path)
    local back = knnd.classifier.load(path)
    assert.are.same({ "noto", "emojione" }, back.class_names)
    h.assert_close(knnd.style.share(back, e1, "emojione"), knnd.style.share(clf, e1, "emojione"), 1e-6)
  end)

  it("holds out the same concepts for the same seed and others for another", function()
    local _, a = knnd.style.train { styles = styles, steps = 2, seed = 1 }
    local _, b = knnd.style.train { styles = styles, steps = 2, seed = 2 }
    assert.are.same(report.heldout_names, a.heldout_names)
    assert.are_not.same(a.heldout_names, b.heldout_names)
    local held = {}
    for _, c in ipairs(a.heldout_names) do held[c] = true end
    local e1_rows = {}
    for r, c in ipairs(e1_caps) do if held[c] then e1_rows[#e1_rows + 1] = r end end
    assert.are.equal(30, #e1_rows) -- both drawings of a held-out concept are held out
  end)

  it("names what is wrong", function()
    h.errors_with(function() knnd.style.train { styles = { styles[1] } } end, "option 'styles' expected two or more")
    h.errors_with(function() knnd.style.train { styles = styles, holdout = 1 } end, "option 'holdout'")
    h.errors_with(function() knnd.style.train { styles = styles, stepz = 1 } end, "unknown option 'stepz'")
    local small = { name = "small", images = noto:narrow(1, 1, 2):narrow(3, 1, 16):narrow(4, 1, 16):contiguous(),
      captions = { noto_caps[1], noto_caps[2] } }
    h.errors_with(function() knnd.style.train { styles = { styles[1], small } } end, "expected one size")
    local none = { name = "none", images = noto:narrow(1, 1, 1), captions = { "no such emoji" } }
    h.errors_with(function() knnd.style.train { styles = { styles[1], none } } end, "0 concepts are drawn by every style")
    h.errors_with(function() knnd.style.share(clf, e1, "openmoji") end, "'openmoji' is not a style")
  end)
end)

describe("knnd.eval.caption_retrieval", function()
  local tok = knnd.clip.tokenizer { train = noto_caps, num_merges = 200, min_frequency = 1 }
  local clip = knnd.clip.new { embed_dim = 16, image_size = 32, patch_size = 8, vision_width = 32, vision_layers = 1,
    vision_heads = 2, context_length = 16, text_width = 32, text_layers = 1, text_heads = 2, tokenizer = tok,
    gen = knnd.Generator(5) }
  local names = knnd.no_grad(function() return clip:encode_text(noto_caps, { normalize = true }) end)
  local row_of = {}
  for r, c in ipairs(noto_caps) do row_of[c] = row_of[c] or r - 1 end
  local images = e1:narrow(1, 1, 40)
  local targets = {}
  for i = 1, 40 do targets[i] = row_of[e1_caps[i]] end

  it("is the share of images whose own name is among the k names CLIP scores highest", function()
    local e = knnd.no_grad(function() return clip:encode_images(images, { normalize = true }) end):totable()
    local t = names:totable()
    local ks, hits = { 1, 10, 100, 200 }, { 0, 0, 0, 0 }
    for i, v in ipairs(e) do
      local function score(row)
        local s = 0
        for d = 1, #v do s = s + v[d] * t[row + 1][d] end
        return s
      end
      local own, above = score(targets[i]), 0
      for row = 0, #t - 1 do if score(row) > own + 1e-6 then above = above + 1 end end
      for j, k in ipairs(ks) do if above < k then hits[j] = hits[j] + 1 end end
    end
    local got = { knnd.eval.caption_retrieval { clip = clip, images = images, captions = names,
      targets = knnd.tensor(targets, { dtype = "i64" }), top = ks } }
    for j = 1, #ks do hits[j] = hits[j] / 40 end
    h.assert_close(got, hits, 1e-6)
    assert.is_true(hits[3] > 0 and hits[3] < 1, "a random CLIP ranks some names among its 100 best, not all")
    local top1, top10 = got[1], got[2]
    -- a sampler's floats in [-1, 1] are judged as the u8 images they round to
    local f1, f10 = knnd.eval.caption_retrieval { clip = clip, images = images:to("f32") / 127.5 - 1, captions = names,
      targets = knnd.tensor(targets, { dtype = "i64" }) }
    h.assert_close({ f1, f10 }, { top1, top10 }, 1e-6)
  end)

  it("names what is wrong", function()
    local tg = knnd.tensor(targets, { dtype = "i64" })
    h.errors_with(function() knnd.eval.caption_retrieval { images = images, captions = names, targets = tg } end,
      "option 'clip'")
    h.errors_with(function() knnd.eval.caption_retrieval { clip = clip, images = images, captions = names,
      targets = tg:narrow(1, 1, 3) } end, "expected 40 0-based caption rows")
    h.errors_with(function() knnd.eval.caption_retrieval { clip = clip, images = images, captions = names,
      targets = tg + 1000 } end, "expected 0 .. 299")
  end)
end)
