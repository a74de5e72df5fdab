// The studio's grids (A1111's X/Y plot): the create form's settings are the base request, each
// axis varies one setting; the cells land in the gallery, the labelled grid is shown here.
// Loaded after app.js: uses its $, api, toast, follow, requestFromForm and card.
"use strict";

const GRID_AXES = [
  ["", "none", ""], ["cfg", "CFG scale", "2,4,7"], ["steps", "Steps", "10,20,30"],
  ["sampler", "Sampler", "euler,dpmpp_2m"], ["seed", "Seed", "1,2,3"],
  ["prompt", "Prompt S/R", "apple,pear,plum (the first is the words replaced)"],
  ["style", "Style", "None,Pixel art,Watercolour"], ["model", "Model", "mini"],
  ["step_cache", "Step cache", "1,2,3"], ["quantize", "Quantize", "none,int8"], ["decoder", "Decoder", "vae,tiny"],
];

function gridAxis(which) {
  const name = $(`#grid-${which}-axis`).value;
  const values = $(`#grid-${which}-values`).value.trim();
  return name && values ? `${name}=${values}` : null;
}

// The form's request as the base every cell starts from: one picture per cell, the style as a list.
function gridRequest() {
  const base = requestFromForm();
  if (base.mode === "gan") throw new Error("a grid compares diffusion settings: choose a diffusion model");
  base.n_samples = 1;
  delete base.rerank;
  if (base.style) { base.styles = [base.style]; }
  delete base.style;
  const fields = { mode: "grid", base };
  for (const which of ["x", "y"]) { const axis = gridAxis(which); if (axis) fields[which] = axis; }
  if (!fields.x && !fields.y) throw new Error("choose an axis and its values, e.g. CFG scale 2,4,7");
  return fields;
}

// The labelled grid, once the job is done: the picture whose settings are the grid's own.
function watchGrid(jobId) {
  showWhenDone(jobId, $("#grid-result"), (image) => image.settings && image.settings.mode === "grid",
    (sheets) => $("#grid-sheets").replaceChildren(...sheets.map(card)));
}

function initGrid() {
  for (const which of ["x", "y"]) {
    const select = $(`#grid-${which}-axis`);
    select.replaceChildren(...GRID_AXES.map(([name, text]) => new Option(text, name)));
    select.addEventListener("change", () => {
      const axis = GRID_AXES.find(([name]) => name === select.value);
      $(`#grid-${which}-values`).placeholder = axis ? axis[2] : "";
    });
  }
  $("#grid-go").addEventListener("click", async () => {
    let fields;
    try { fields = gridRequest(); } catch (error) { toast(error.message); return; }
    if (!fields.base.prompt) { toast("type what the pictures should show"); return; }
    try {
      const job = await api("/api/v1/jobs", { method: "POST", body: JSON.stringify(fields) });
      follow(job, "Grid");
      watchGrid(job.id);
    } catch (error) { toast(error.message); }
  });
}

initGrid();
