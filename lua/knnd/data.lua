-- data.lua — datasets for scripts. Fashion-MNIST comes from Debian's dataset-fashion-mnist
-- (gzipped IDX under /usr/share/datasets/fashion-mnist); nothing is downloaded.
local knnd = require "knnd"
local C = knnd._cdata

local M = {}

M.read_idx = C.read_idx
M.fashion_mnist_dir = C.fashion_mnist_dir

-- Zalando's label order (fashion-mnist README)
M.fashion_mnist_classes = {
  "t-shirt/top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot",
}

local function exists(path)
  local f = io.open(path, "rb")
  if f then f:close() return true end
  return false
end

--- knnd.data.fashion_mnist{split="train"|"test", dir=..., limit=N}
--- -> {images = u8 [N,28,28], labels = i64 [N] (0-based class ids), classes = {...}, n = N}
function M.fashion_mnist(opts)
  opts = opts or {}
  for k in pairs(opts) do
    if not ({ split = 1, dir = 1, limit = 1 })[k] then
      error(("knnd.data.fashion_mnist: unknown option '%s' (expected split, dir, limit)"):format(k), 2)
    end
  end
  local split = opts.split or "train"
  local prefix = ({ train = "train", test = "t10k" })[split]
  if not prefix then
    error(("knnd.data.fashion_mnist: option 'split' expected \"train\" or \"test\", got %q"):format(tostring(split)), 2)
  end
  local dir = opts.dir or C.fashion_mnist_dir
  local img_path = ("%s/%s-images-idx3-ubyte.gz"):format(dir, prefix)
  local lbl_path = ("%s/%s-labels-idx1-ubyte.gz"):format(dir, prefix)
  if not exists(img_path) then
    error(("knnd.data.fashion_mnist: %s not found (install Debian's dataset-fashion-mnist or pass dir=)"):format(img_path), 2)
  end
  local images = C.read_idx(img_path)
  local labels = C.read_idx(lbl_path)
  if images:dim() ~= 3 or labels:dim() ~= 1 or images:size(1) ~= labels:size(1) then
    error(("knnd.data.fashion_mnist: %s and %s do not match (%d images, %d labels)")
      :format(img_path, lbl_path, images:size(1), labels:size(1)), 2)
  end
  local n = images:size(1)
  if opts.limit then
    if type(opts.limit) ~= "number" or opts.limit < 1 then
      error("knnd.data.fashion_mnist: option 'limit' expected a positive integer", 2)
    end
    n = math.min(n, math.tointeger(opts.limit))
    images = images:narrow(1, 1, n)
    labels = labels:narrow(1, 1, n)
  end
  return { images = images, labels = labels:to("i64"), classes = M.fashion_mnist_classes, n = n }
end

return M
