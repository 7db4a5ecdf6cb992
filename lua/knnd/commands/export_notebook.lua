-- export_notebook.lua — `knnd export-notebook RESULTS_DIR [-o report.ipynb]`: a results folder
-- (metrics, config, CSV tables, plots and sample grids, one level of run subfolders) as a Jupyter
-- notebook; the logic is knnd.notebook.
local notebook = require "knnd.notebook"
local positive_int = require("knnd.cliutil").positive_int

local M = { help = "Export a results folder (metrics, tables, plots, sample grids) as a Jupyter notebook." }

function M.setup(cmd)
  cmd:argument("results_dir", "The results folder, e.g. runs/quickstart.")
  cmd:option("-o --output", "The notebook to write (default: RESULTS_DIR/report.ipynb; written atomically).")
  cmd:option("--title", "The notebook's title (default: the folder's name).")
  cmd:option("--max-rows", "CSV rows shown per table (the first and last half of them).", "40")
    :convert(positive_int("--max-rows"))
  cmd:epilog("Example:\n  knnd export-notebook runs/quickstart -o quickstart.ipynb")
end

function M.run(a)
  local out = a.output or (a.results_dir:gsub("/+$", "") .. "/report.ipynb")
  local ok, path, cells = pcall(notebook.export, a.results_dir, out, { title = a.title, max_rows = a.max_rows })
  if not ok then error((tostring(path):gsub("^knnd%.notebook%.export: ", "export-notebook: ")), 0) end
  io.write(("wrote %s (%d cells)\n"):format(path, cells))
  return 0
end

return M
