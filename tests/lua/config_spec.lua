-- config_spec.lua — knnd.config: documented defaults, overrides from the command line and from
-- Lua converted and checked, every error naming the key and what it accepts, JSON, and
-- knnd.options on top of it.
local knnd = require "knnd"
local h = require "spec_helpers"
local C = knnd.config

local function defaults()
  return {
    cond = C.param("knn", "conditioning mode", { values = { "knn", "no_knn", "lafite_noise" } }),
    k = C.param(10, "neighbours", { min = 1, max = 100 }),
    lr = 1e-3,
    name = "run",
    ema = true,
    model = { channels = C.param(32, "base width", { range = { 8, 512 } }), mult = { 1, 2 }, scales = { 0.5, 1.5 } },
    data = C.param(nil, "a dataset path", { type = "string" }),
    prompts = C.param({ "a", "b" }, "prompts"),
  }
end

describe("knnd.config", function()
  it("resolves the defaults to a plain table", function()
    local cfg = C.resolve(defaults())
    assert.are.same({ cond = "knn", k = 10, lr = 1e-3, name = "run", ema = true,
      model = { channels = 32, mult = { 1, 2 }, scales = { 0.5, 1.5 } }, prompts = { "a", "b" } }, cfg)
    assert.is_nil(getmetatable(cfg.model))
    assert.are.same({ "cond", "data", "ema", "k", "lr", "model.channels", "model.mult", "model.scales", "name", "prompts" },
      C.keys(defaults()))
  end)

  it("converts command-line strings to each key's type", function()
    local cfg = C.resolve(defaults(), { cond = "no_knn", k = "5", lr = "0.01", ema = "false", ["model.channels"] = "96",
      ["model.mult"] = "1,2,4", ["model.scales"] = "0.25, 2", data = "x.h5", prompts = "red apple,pizza", name = "42" })
    assert.are.equal("no_knn", cfg.cond)
    assert.are.equal(5, cfg.k)
    assert.are.equal("integer", math.type(cfg.k))
    assert.are.equal(0.01, cfg.lr)
    assert.is_false(cfg.ema)
    assert.are.equal(96, cfg.model.channels)
    assert.are.same({ 1, 2, 4 }, cfg.model.mult)
    assert.are.same({ 0.25, 2 }, cfg.model.scales)
    assert.are.equal("x.h5", cfg.data)
    assert.are.same({ "red apple", "pizza" }, cfg.prompts)
    assert.are.equal("42", cfg.name) -- a string key stays a string
  end)

  it("takes Lua values, flat or nested, and leaves the defaults untouched", function()
    local d = defaults()
    local cfg = C.resolve(d, { model = { channels = 64, mult = { 3 } }, k = 7.0, lr = 1 })
    assert.are.equal(64, cfg.model.channels)
    assert.are.same({ 3 }, cfg.model.mult)
    assert.are.equal("integer", math.type(cfg.k))
    assert.are.equal(1, cfg.lr)
    assert.are.same({ 1, 2 }, C.resolve(d).model.mult)
  end)

  it("names an unknown key with the allowed keys and the nearest one", function()
    h.errors_with(function() C.resolve(defaults(), { ["model.chanels"] = "3" }) end,
      "config: unknown key 'model.chanels' — did you mean 'model.channels'? (allowed: cond, data, ema, k, lr, model.channels, model.mult, model.scales, name, prompts)")
    h.errors_with(function() C.resolve(defaults(), { zzz = 1 }) end, "unknown key 'zzz' (allowed: cond, data,")
    h.errors_with(function() C.resolve(defaults(), { model = "3" }) end,
      "key 'model' is a group; set its keys (model.channels, model.mult, model.scales)")
  end)

  it("names the key and what it accepts on a wrong type or value", function()
    local d = defaults()
    h.errors_with(function() C.resolve(d, { k = "x" }) end, "config: key 'k' expects an integer in [1, 100]; got 'x'")
    h.errors_with(function() C.resolve(d, { k = "2.5" }) end, "key 'k' expects an integer in [1, 100]; got '2.5'")
    h.errors_with(function() C.resolve(d, { k = "0" }) end, "key 'k' expects an integer in [1, 100]; got 0")
    h.errors_with(function() C.resolve(d, { k = 101 }) end, "key 'k' expects an integer in [1, 100]; got 101")
    h.errors_with(function() C.resolve(d, { cond = "foo" }) end,
      "key 'cond' expects one of knn, no_knn, lafite_noise; got 'foo'")
    h.errors_with(function() C.resolve(d, { lr = "fast" }) end, "key 'lr' expects a number; got 'fast'")
    assert.are.equal(1, C.resolve(d, { lr = "1" }).lr)
  end)

  it("names list, boolean, string and range errors", function()
    local d = defaults()
    h.errors_with(function() C.resolve(d, { ["model.mult"] = "1,x" }) end,
      "key 'model.mult' expects a list of integers; got 'x' at position 2")
    h.errors_with(function() C.resolve(d, { ["model.mult"] = 3 }) end, "key 'model.mult' expects a list of integers")
    h.errors_with(function() C.resolve(d, { ema = "maybe" }) end, "key 'ema' expects true or false; got 'maybe'")
    h.errors_with(function() C.resolve(d, { name = 3 }) end, "key 'name' expects a string; got 3")
    h.errors_with(function() C.resolve(d, { ["model.channels"] = "4" }) end,
      "key 'model.channels' expects an integer in [8, 512]; got 4")
    h.errors_with(function() C.resolve({ f = print }, { f = "x" }) end, "key 'f' (a Lua value) cannot be set from the command line")
    -- error prefix and noun as knnd.options uses them
    h.errors_with(function() C.resolve({ n = 3 }, { n = "abc" }, { prefix = "knnd.options", noun = "option" }) end,
      "knnd.options: option 'n' expects an integer; got 'abc'")
  end)

  it("rejects bad schemas and defaults outside their own constraints", function()
    h.errors_with(function() C.param(nil, "x") end, "a nil default needs an explicit type")
    h.errors_with(function() C.param(1, "x", { typ = "integer" }) end, "unknown constraint 'typ'")
    h.errors_with(function() C.param(1, "x", { type = "float" }) end, "unknown type 'float'")
    h.errors_with(function() C.param(1, "x", { values = {} }) end, "values expected a non-empty list")
    h.errors_with(function() C.resolve({ k = C.param(0, "k", { min = 1 }) }) end,
      "config: the default of key 'k' expects an integer >= 1; got 0")
    -- the table form of param
    local p = C.param { default = 3, doc = "three", max = 5 }
    assert.are.equal(3, C.resolve({ x = p }).x)
    h.errors_with(function() C.resolve({ x = p }, { x = 6 }) end, "key 'x' expects an integer <= 5; got 6")
  end)

  it("serialises to deterministic JSON that reads back the same", function()
    local cfg = C.resolve(defaults(), { k = "5" })
    local s = C.to_json(cfg)
    assert.are.equal(s, C.to_json(C.resolve(defaults(), { k = 5 })))
    assert.are.same(cfg, require("dkjson").decode(s, 1, nil, nil, nil))
    assert.truthy(s:find('"cond": "knn"', 1, true))
    assert.truthy(s:find('"k": 5', 1, true) < s:find('"lr"', 1, true)) -- keys sorted
    local text = C.describe(defaults())
    assert.truthy(text:find("model.channels", 1, true) and text:find("base width", 1, true)
      and text:find("one of knn, no_knn, lafite_noise", 1, true))
  end)

  it("writes JSON with sorted keys, exact floats, escapes and dkjson's object/array marks", function()
    local files = require "knnd.files"
    local dk = require "dkjson"
    local v = { n = 3, x = 0.1 + 0.2, s = 'q"\\\n\1é', e = setmetatable({}, { __jsontype = "object" }), l = { 1, 2.5 },
      z = dk.null }
    local s = files.json_encode(v, true)
    assert.are.equal('{"e":{},"l":[1,2.5],"n":3,"s":"q\\"\\\\\\n\\u0001é","x":0.30000000000000004,"z":null}', s)
    local back = dk.decode(s, 1, nil, nil, nil)
    assert.are.equal(0.1 + 0.2, back.x)
    assert.are.equal(v.s, back.s)
    assert.are.equal(3, back.n) -- an object, not table.pack's array of 3 nulls
    local t = {}
    t.self = t
    h.errors_with(function() files.json_encode(t) end, "a table holds itself")
  end)

  it("parses --set lists and keeps one pool of command-line overrides", function()
    assert.are.same({ ["a.b"] = "1", c = "x=y" }, C.parse_sets { "a.b=1", "c=x=y" })
    h.errors_with(function() C.parse_sets { "novalue" } end, "--set expects key=value, got 'novalue'")
    local options = require "knnd.options"
    options.set_overrides { n = "5", ["model.width"] = "16" }
    local opt = knnd.options { n = 3, model = { width = 8, depth = 2 } }
    assert.are.same({ n = 5, model = { width = 16, depth = 2 } }, opt)
    options.check_unused()
    options.set_overrides { n = "5", steps = "9" }
    h.errors_with(function() knnd.options { n = 3 } end, "knnd.options: unknown option 'steps' (allowed: n)")
    -- lenient (knnd sweep): the script's options take their keys, the rest stays for the sweep
    options.set_overrides({ n = "5", steps = "9" }, { lenient = true })
    assert.are.same({ n = 5 }, knnd.options { n = 3 })
    assert.are.same({ "steps" }, C.unused_cli_overrides())
    h.errors_with(function() options.check_unused() end, "--set steps: the script declares no such option")
    options.set_overrides {}
  end)
end)
