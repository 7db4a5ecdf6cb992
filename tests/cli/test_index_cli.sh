#!/usr/bin/env bash
# test_index_cli.sh — `knnd index build|search|info` on a store of random clustered vectors made
# by a Lua script (knnd run), and the errors for a missing file and mismatched dimensions.
# Usage: test_index_cli.sh KNND_EXE  (run by ctest in a scratch directory)
set -u
knnd="$1"
. "$(dirname "$0")/lib.sh"
scratch index_cli

# 3000 vectors around 30 centres (16-d), ids 1000.., plus stores of another dim and encoder
cat > make_stores.lua <<'LUA'
local N, D = 3000, 16
local gen = knnd.Generator(3)
local centres = knnd.randn(30, D, { gen = gen })
local pick = knnd.randint(0, 30, { N }, { gen = gen })
local x = knnd.index_select(centres, 1, pick) + knnd.randn(N, D, { gen = gen }) * 0.3
local meta = { encoder = "cli-test-encoder", encoder_hash = "feedbeef", source = "synthetic" }
local ids = knnd.arange(1000, 1000 + N, 1, { dtype = "i64" })
knnd.embeddings.save("db.h5", x, { ids = ids, encoder = meta.encoder, encoder_hash = meta.encoder_hash,
  source = meta.source })
knnd.embeddings.save("q8.h5", knnd.randn(4, 8, { gen = gen }), { encoder = meta.encoder,
  encoder_hash = meta.encoder_hash })
knnd.embeddings.save("other_enc.h5", knnd.randn(4, D, { gen = gen }), { encoder = "another", encoder_hash = "0" })
print("stores written")
LUA
out=$("$knnd" run make_stores.lua 2>&1); rc=$?
[ $rc = 0 ] && contains "$out" "stores written" && [ -s db.h5 ]; check "knnd run writes the stores ($out)" $?

out=$("$knnd" index --help 2>&1); rc=$?
[ $rc = 0 ] && contains "$out" "build" && contains "$out" "search" && contains "$out" "info"
check "index --help lists build, search, info ($out)" $?
out=$("$knnd" --help 2>&1)
contains "$out" "index"; check "knnd --help lists the index command" $?

# ---- build ----
out=$(KNND_PROGRESS=plain "$knnd" index build db.h5 flat.index 2>&1); rc=$?
[ $rc = 0 ] && [ -s flat.index ] && contains "$out" '"Flat" over 3000 x 16'; check "build Flat ($out)" $?
contains "$out" "index add"; check "build shows a progress bar ($out)" $?
out=$(KNND_PROGRESS=plain "$knnd" index build db.h5 ivf.index --factory IVF32,Flat --train-sample 2000 --nprobe 8 \
  --batch-rows 500 2>&1); rc=$?
[ $rc = 0 ] && [ -s ivf.index ] && contains "$out" '"IVF32,Flat" over 3000 x 16'; check "build IVF with options ($out)" $?
out=$("$knnd" index build db.h5 hnsw.index --factory HNSW16,Flat --ef-search 32 -q 2>&1); rc=$?
[ $rc = 0 ] && [ -s hnsw.index ] && ! contains "$out" "index add"; check "build HNSW quietly ($out)" $?

# ---- info ----
out=$("$knnd" index info ivf.index 2>&1); rc=$?
[ $rc = 0 ] && contains "$out" "IVF32,Flat" && contains "$out" "3000" && contains "$out" "cli-test-encoder" \
  && contains "$out" "feedbeef" && grep -qE "dim: +16" <<<"$out" && grep -qE "store uid: +[0-9a-f]{16}" <<<"$out"
check "info prints factory, dim, ntotal, encoder, store uid ($out)" $?
out=$("$knnd" index info flat.index --json 2>&1); rc=$?
[ $rc = 0 ] && contains "$out" '"factory":"Flat"' && contains "$out" '"ntotal":3000' && contains "$out" '"dim":16'
check "info --json ($out)" $?
if command -v python3 >/dev/null; then
  python3 -c 'import json,sys; d=json.load(sys.stdin); assert d["encoder"]=="cli-test-encoder"' <<<"$out"
  check "info --json parses as JSON" $?
fi

# ---- search ----
out=$("$knnd" index search flat.index --rows 0,5 -k 3 2>&1); rc=$?
[ $rc = 0 ] && contains "$out" "query row 0 (id 1000)" && contains "$out" "query row 5 (id 1005)"
check "search prints each query ($out)" $?
# the nearest neighbour of a stored row under exact search is the row itself (cosine 1)
first=$(grep -A1 "query row 5 " <<<"$out" | tail -1)
grep -qE "^ +1 +row 5 +id 1005 +score 1\.0000" <<<"$first"; check "row 5 finds itself first with score 1 ($first)" $?
n=$(grep -cE "^ +[0-9]+ +row " <<<"$out"); [ "$n" = 6 ]; check "k=3 for 2 queries gives 6 lines (got $n)" $?
out=$("$knnd" index search ivf.index --rows 10-19 -k 10 --nprobe 32 --json 2>&1); rc=$?
[ $rc = 0 ] && contains "$out" '"factory":"IVF32,Flat"' && contains "$out" '"query_row":19'; check "search --json ($out)" $?
if command -v python3 >/dev/null; then
  python3 -c '
import json,sys
d = json.load(sys.stdin)
assert len(d["results"]) == 10
for r in d["results"]:
    assert len(r["neighbors"]) == 10
    assert r["neighbors"][0]["row"] == r["query_row"], r  # nprobe = all lists: exact
    s = [h["score"] for h in r["neighbors"]]
    assert s == sorted(s, reverse=True)
' <<<"$out"
  check "search --json: 10 queries x 10 neighbours, self first, scores descending" $?
fi
# the same neighbours from the Flat and the full-probe IVF index
a=$("$knnd" index search flat.index --rows 7 -k 5 2>&1 | grep -oE "row [0-9]+ " | tr -d '\n')
b=$("$knnd" index search ivf.index --rows 7 -k 5 --nprobe 32 2>&1 | grep -oE "row [0-9]+ " | tr -d '\n')
[ -n "$a" ] && [ "$a" = "$b" ]; check "IVF with nprobe = nlist equals Flat ($a | $b)" $?
out=$("$knnd" index search hnsw.index --store db.h5 --rows 1 -k 4 --ef-search 64 2>&1); rc=$?
[ $rc = 0 ] && contains "$out" "query row 1 (id 1001)"; check "search HNSW with --store and --ef-search ($out)" $?

# ---- errors ----
out=$("$knnd" index info missing.index 2>&1); rc=$?
[ $rc = 1 ] && contains "$out" "index 'missing.index' not found"; check "info on a missing file ($out)" $?
out=$("$knnd" index build missing.h5 x.index 2>&1); rc=$?
[ $rc = 1 ] && contains "$out" "embedding store 'missing.h5' not found" && [ ! -e x.index ]
check "build from a missing store ($out)" $?
out=$("$knnd" index search flat.index --queries q8.h5 --rows 0 2>&1); rc=$?
[ $rc = 1 ] && contains "$out" "dimension mismatch" && contains "$out" "16-d" && contains "$out" "8-d"
check "queries of another dimension ($out)" $?
out=$("$knnd" index search flat.index --store q8.h5 --rows 0 2>&1); rc=$?
[ $rc = 1 ] && contains "$out" "dim 16" && contains "$out" "dim 8"; check "a store of another dimension ($out)" $?
out=$("$knnd" index search flat.index --queries other_enc.h5 --rows 0 2>&1); rc=$?
[ $rc = 1 ] && contains "$out" "encoder mismatch" && contains "$out" "another"; check "queries of another encoder ($out)" $?
out=$("$knnd" index search flat.index --rows 3000 2>&1); rc=$?
[ $rc = 1 ] && contains "$out" "row 3000 is out of range"; check "a query row out of range ($out)" $?
out=$("$knnd" index search flat.index --rows x 2>&1); rc=$?
[ $rc = 1 ] && contains "$out" "--rows expects"; check "malformed --rows ($out)" $?
out=$("$knnd" index build db.h5 bad.index --factory NotAFactory -q 2>&1); rc=$?
[ $rc = 1 ] && contains "$out" "NotAFactory" && [ ! -e bad.index ]; check "an unknown factory string ($out)" $?
out=$("$knnd" index build db.h5 y.index --nprobe 0 2>&1); rc=$?
[ $rc = 2 ] && contains "$out" "--nprobe expects a positive integer"; check "a bad --nprobe is a usage error ($out)" $?
head -c 1000 flat.index > truncated.index
out=$("$knnd" index info truncated.index 2>&1); rc=$?
[ $rc = 1 ] && contains "$out" "cannot read the index"; check "a truncated index file ($out)" $?
out=$("$knnd" index 2>&1); rc=$?
[ $rc = 2 ]; check "index without a subcommand is a usage error ($out)" $?

finish
