#!/usr/bin/env bash
# test_notebook_cli.sh — `knnd export-notebook`: a results folder laid out as the quickstart's
# (made by a Lua script through knnd run) exported to a notebook that parses as JSON (and passes
# nbformat's validator where python3-nbformat is installed); the errors for a missing folder, an
# empty one and an unwritable output, which leave no file behind.
# Usage: test_notebook_cli.sh KNND_EXE  (run by ctest in a scratch directory)
set -u
knnd="$1"
. "$(dirname "$0")/lib.sh"
scratch notebook_cli

cat > make_results.lua <<'LUA'
os.execute("mkdir -p qs/knn qs/no_knn")
knnd.plot { path = "qs/loss.png", series = { { name = "knn", y = { 3, 2, 1 } } } }
knnd.save_png("qs/knn/samples.png", knnd.rand(3, 12, 12))
knnd.save_png("qs/no_knn/samples.png", knnd.rand(3, 12, 12))
local function write(path, text) local f = assert(io.open(path, "w")); f:write(text); f:close() end
write("qs/metrics.json", '{"config": {"k": 10}, "modes": {"knn": {"alignment": 0.625}}}')
write("qs/knn/log.csv", "step,loss\n1,0.5\n2,0.25\n")
print("results written")
LUA
out=$("$knnd" run make_results.lua 2>&1); rc=$?
[ $rc = 0 ] && contains "$out" "results written"; check "knnd run writes the results folder ($out)" $?

out=$("$knnd" --help 2>&1)
contains "$out" "export-notebook"; check "knnd --help lists export-notebook" $?
out=$("$knnd" export-notebook --help 2>&1); rc=$?
[ $rc = 0 ] && { contains "$out" "RESULTS_DIR" || contains "$out" "results_dir"; }; check "export-notebook --help ($out)" $?

out=$("$knnd" export-notebook qs -o report.ipynb 2>&1); rc=$?
[ $rc = 0 ] && [ -s report.ipynb ] && contains "$out" "wrote report.ipynb"; check "export-notebook writes the notebook ($out)" $?
out=$("$knnd" export-notebook qs/ 2>&1); rc=$?
[ $rc = 0 ] && [ -s qs/report.ipynb ]; check "without -o the notebook goes into the folder ($out)" $?
if command -v python3 >/dev/null; then
  python3 - report.ipynb <<'PY'
import json, sys
nb = json.load(open(sys.argv[1]))
assert nb["nbformat"] == 4, nb["nbformat"]
text = "\n".join(c["source"] if isinstance(c["source"], str) else "".join(c["source"]) for c in nb["cells"])
assert "# qs" in text and "## knn" in text and "## no_knn" in text, text
assert "| modes.knn.alignment | 0.625 |" in text, text
images = [c for c in nb["cells"] if c["cell_type"] == "code"]
assert len(images) == 3, len(images)
assert all(c["outputs"][0]["data"]["image/png"].startswith("iVBORw0KGgo") for c in images)  # PNG signature
PY
  check "the notebook parses as JSON with the sections, metrics and images" $?
  if python3 -c 'import nbformat' 2>/dev/null; then
    python3 -c 'import nbformat,sys; nbformat.validate(nbformat.read(sys.argv[1], as_version=4))' report.ipynb
    check "nbformat validates the notebook" $?
  else
    echo "# SKIP nbformat validation: python3-nbformat is not installed"
  fi
fi

# ---- errors ----
out=$("$knnd" export-notebook missing -o m.ipynb 2>&1); rc=$?
[ $rc != 0 ] && contains "$out" "export-notebook: 'missing' is not a folder" && [ ! -e m.ipynb ]
check "a missing folder is an error naming it ($out)" $?
mkdir -p empty
out=$("$knnd" export-notebook empty -o e.ipynb 2>&1); rc=$?
[ $rc != 0 ] && contains "$out" "'empty' is empty" && [ ! -e e.ipynb ]; check "an empty folder is an error ($out)" $?
out=$("$knnd" export-notebook qs -o /nonexistent/dir/r.ipynb 2>&1); rc=$?
[ $rc != 0 ] && contains "$out" "cannot write" && contains "$out" "/nonexistent/dir/r.ipynb"
check "an unwritable output is an error naming it ($out)" $?
mkdir -p ro && chmod 555 ro
if [ ! -w ro ]; then # root writes anywhere: the check means nothing then
  out=$("$knnd" export-notebook qs -o ro/r.ipynb 2>&1); rc=$?
  [ $rc != 0 ] && contains "$out" "cannot write" && [ -z "$(ls -A ro)" ]; check "a read-only folder leaves nothing behind ($out)" $?
fi
chmod 755 ro
out=$("$knnd" export-notebook 2>&1); rc=$?
[ $rc != 0 ] && contains "$out" "results_dir"; check "the folder argument is required ($out)" $?

finish
