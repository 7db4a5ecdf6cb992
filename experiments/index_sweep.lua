-- index_sweep.lua — exact vs approximate retrieval: FAISS Flat, IVF, IVF-PQ and HNSW indexes at
-- training (the neighbour cache the condition comes from) and at inference (the text's
-- neighbours), crossed, on the Fashion-MNIST testbed. How much does retrieval's approximation cost
-- in FID[fmnist-cnn] and text alignment? A model is trained once per training index (shared by
-- the runs that differ only in the inference index); the recall of each index against Flat is
-- logged with the run.
--
--   knnd sweep experiments/index_sweep.lua [--resume] [--set train_index=flat,hnsw] [--set infer_index=flat,ivfpq]
local knnd = require "knnd"
local C = knnd.config

-- the indexes by short name (run names and --set lists stay free of the factories' commas)
local INDEXES = {
  flat = { factory = "Flat" },
  ivf = { factory = "IVF256,Flat", params = { nprobe = 8 } },
  ivfpq = { factory = "IVF256,PQ16", params = { nprobe = 8 } },
  hnsw = { factory = "HNSW32,Flat", params = { efSearch = 32 } },
}
local NAMES = { "flat", "ivf", "ivfpq", "hnsw" }

-- recall@k of an index against the exact one on the class prompts' embeddings
local function recall(tb, idx, k)
  local q = knnd.no_grad(function() return tb.clip:encode_text(tb.eval_prompts, { normalize = true }) end)
  local exact, approx = tb.index:knn(q, { k = k }).rows, idx:knn(q, { k = k }).rows
  local hits, total = 0, 0
  for i = 1, exact:size(1) do
    local want = {}
    for j = 1, k do want[exact:get(i, j)] = true end
    for j = 1, k do if want[approx:get(i, j)] then hits = hits + 1 end end
    total = total + k
  end
  return hits / total
end

knnd.sweep {
  name = "index_sweep",
  base = knnd.testbed.base({
    train_index = C.param("flat", "the index behind the training neighbours (flat: exact; ivf: IVF256,Flat; "
      .. "ivfpq: IVF256,PQ16; hnsw: HNSW32,Flat)", { values = NAMES }),
    infer_index = C.param("flat", "the index searched at sampling (the same names)", { values = NAMES }),
  }),
  grid = { train_index = NAMES, infer_index = NAMES, seed = { 1 } },
  run = function(cfg, run)
    local tb = knnd.testbed.open(cfg.testbed)
    local ti, ii = INDEXES[cfg.train_index], INDEXES[cfg.infer_index]
    local infer = tb:index_for(ii.factory, ii.params)
    local r = recall(tb, infer, cfg.k)
    run:log("recall of the inference index against Flat", { recall = r, factory = ii.factory })
    -- one model per training index, shared by the runs that differ only in the inference index
    -- (shards running two of them at once would train it twice, each write atomic)
    local model_dir = ("%s/index_sweep_models/%s_k%d_steps%d_seed%d"):format(cfg.testbed, cfg.train_index, cfg.k,
      cfg.steps, cfg.seed)
    local m = tb:train_and_score(cfg, run, { model_dir = model_dir, index = infer,
      cache = tb:cache_for(ti.factory, cfg.k, ti.params) })
    m.infer_recall = r
    return m
  end,
}
