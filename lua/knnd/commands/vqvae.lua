-- vqvae.lua — `knnd vqvae MODEL`: what a VQ-VAE file holds, and how well it reconstructs images.
--
--   knnd vqvae runs/vq/model.h5                                   # a knnd.vqvae model
--   knnd vqvae vqgan.safetensors                                  # a taming / VQ-Diffusion VQGAN
--   knnd vqvae vqgan.safetensors --token-map map.safetensors --dataset coco64.h5 --n 16 --grid recon.png
--
-- Prints the architecture (read from the tensors for a VQGAN: knnd.vqvae.load_taming), the token
-- count and grid, and with --dataset the PSNR of its first n images through the codes (images in
-- [-1, 1], as training sees them), their codebook usage, and --grid a picture: originals above
-- their reconstructions. Check a checkpoint this way before an experiment builds on it.
local knnd = require "knnd"
local cliutil = require "knnd.cliutil"

local M = { help = "Inspect a VQ-VAE or VQGAN file and measure its reconstructions." }

function M.setup(cmd)
  cmd:argument("model", "A knnd.vqvae model (.h5) or a VQGAN in safetensors (taming / latent-diffusion / VQ-Diffusion layout).")
  cmd:option("--token-map", "VQGAN: the code -> token map (one integer tensor in safetensors; VQ-Diffusion's full_to_quantize).")
  cmd:option("--prefix", "VQGAN: the prefix of its tensors when the file holds several models.")
  cmd:option("--dataset", "A knnd image dataset (.h5) to reconstruct.")
  cmd:option("--n", "Images of --dataset to reconstruct (the first n).", "16"):convert(cliutil.positive_int("--n"))
  cmd:option("--grid", "Write originals above their reconstructions to this PNG (needs --dataset).")
  cmd:flag("--json", "Print JSON instead of text.")
end

local function describe(cfg)
  local parts = {}
  local function add(k, v) if v ~= nil then parts[#parts + 1] = ("%s %s"):format(k, v) end end
  add("channels", cfg.channels)
  if cfg.channel_mult then add("channel_mult", "{" .. table.concat(cfg.channel_mult, ", ") .. "}") end
  add("res blocks", cfg.num_res_blocks)
  if cfg.attn_levels and #cfg.attn_levels > 0 then add("attention at levels", "{" .. table.concat(cfg.attn_levels, ", ") .. "}") end
  if cfg.mid_attn then parts[#parts + 1] = "middle attention" end
  if cfg.pad_taming then parts[#parts + 1] = "taming's padding" end
  add("z", cfg.z_channels)
  add("embed_dim", cfg.embed_dim)
  add("codebook", cfg.codebook or "loss")
  return table.concat(parts, ", ")
end

function M.run(a)
  if not cliutil.exists(a.model) then error(("'%s' not found"):format(a.model), 0) end
  local taming = a.model:match("%.safetensors$") ~= nil
  if not taming and (a.token_map or a.prefix) then
    error("--token-map and --prefix are for a VQGAN in safetensors", 0)
  end
  if a.grid and not a.dataset then error("--grid needs --dataset", 0) end
  local ok, m, cfg, info
  if taming then
    ok, m, cfg, info = pcall(knnd.vqvae.load_taming, a.model, { token_map = a.token_map, prefix = a.prefix })
  else
    ok, m, cfg = pcall(knnd.vqvae.load, a.model)
  end
  if not ok then error((tostring(m):gsub("^[^:]*:%d+: ", "")), 0) end -- the message, not where it was raised
  local levels = cfg.channel_mult and #cfg.channel_mult or 3
  local r = { model = a.model, kind = taming and "taming VQGAN" or "knnd VQ-VAE", config = cfg, tokens = m:num_codes(),
    downsampling = 2 ^ (levels - 1) // 1, in_channels = cfg.in_channels }
  if info then
    r.prefix, r.ignored, r.tensors = info.prefix, info.ignored, info.tensors
  end
  if a.dataset then
    if not cliutil.exists(a.dataset) then error(("--dataset: '%s' not found"):format(a.dataset), 0) end
    local ds = knnd.dataset.open(a.dataset)
    local shape = ds:image_shape()
    if shape[1] ~= cfg.in_channels then
      error(("--dataset: its images have %d channels, the model takes %d"):format(shape[1], cfg.in_channels), 0)
    end
    if shape[2] % r.downsampling ~= 0 or shape[3] % r.downsampling ~= 0 then
      error(("--dataset: its %dx%d images are not divisible by the model's downsampling %d"):format(shape[2], shape[3],
        r.downsampling), 0)
    end
    -- the numbers as knnd.vqvae.evaluate takes them everywhere else (training logs, testbed)
    local n = math.min(a.n, ds:count())
    local rows = knnd.arange(0, n, { dtype = "i64" })
    local e = knnd.vqvae.evaluate { model = m, dataset = ds, rows = rows }
    r.images, r.psnr, r.tokens_used, r.token_grid = n, e.psnr, e.used, e.token_grid
    if a.grid then
      local x = ds:images(rows):float() * (2 / 255) - 1
      local y = knnd.no_grad(function() return knnd.clamp(m:decode(m:encode(x)), -1, 1) end)
      knnd.save_grid(a.grid, knnd.cat({ x, y }, 1), { nrow = n, range = { -1, 1 }, scale = 2 })
      r.grid = a.grid
    end
  end
  if a.json then
    io.write(require("dkjson").encode(r, { indent = true }), "\n")
    return 0
  end
  io.write(("%s: %s, %d tokens, downsampling by %d\n"):format(a.model, r.kind, r.tokens, r.downsampling))
  io.write(("  %s\n"):format(describe(cfg)))
  if info then
    io.write(("  %d tensors under prefix '%s'; %d other tensors left out\n"):format(r.tensors, r.prefix, r.ignored))
  end
  if r.psnr then
    io.write(("  %s: %d images through %dx%d tokens: PSNR %.2f dB, %d of %d tokens used\n"):format(a.dataset, r.images,
      r.token_grid[1], r.token_grid[2], r.psnr, r.tokens_used, r.tokens))
  end
  if r.grid then io.write(("  wrote %s (originals above reconstructions)\n"):format(r.grid)) end
  return 0
end

return M
