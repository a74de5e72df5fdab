// The Train view: "train on my pictures". The pictures of a folder (or chosen one by one) are
// made at most TRAIN_SIDE pixels on their longer side here, in the browser, and sent with the
// base model, the trigger word and the steps as one job (mode "train_lora") that is queued,
// charged (one request per 50 steps) and followed like any other: its preview is the latest grid
// of samples, so the pictures can be watched getting closer to the concept. When it is done the
// LoRA is in the Create page's picker (loras.js), for this user only.
// Loaded after app.js and loras.js: uses $, api, toast, follow, showWhenDone, loadAccount, loadLoras.
"use strict";

const TRAIN_SIDE = 1024;  // pictures are trained at the model's size (mini: 128): larger ones only cost upload time
const TRAIN_MIN = 10, TRAIN_MAX = 50;
const TRAIN_GRIDS = 5;  // grids of samples per run (the studio allows 10)
const PICTURE_TYPES = ["image/png", "image/jpeg", "image/webp"];

function trainFiles() {
  return [...$("#train-pictures").files].filter((file) => PICTURE_TYPES.includes(file.type));
}

// A picture file as JPEG data at most TRAIN_SIDE on its longer side (a phone photo is megabytes).
async function shrunk(file) {
  const bitmap = await createImageBitmap(file);
  const scale = Math.min(1, TRAIN_SIDE / Math.max(bitmap.width, bitmap.height));
  const canvas = document.createElement("canvas");
  canvas.width = Math.round(bitmap.width * scale); canvas.height = Math.round(bitmap.height * scale);
  canvas.getContext("2d").drawImage(bitmap, 0, 0, canvas.width, canvas.height);
  bitmap.close?.();
  return canvas.toDataURL("image/jpeg", 0.92);
}

function showTrainFiles() {
  const files = trainFiles();
  $("#train-count").textContent = files.length ? `${files.length} picture${files.length === 1 ? "" : "s"}` +
    (files.length < TRAIN_MIN ? ` — at least ${TRAIN_MIN} are needed` : files.length > TRAIN_MAX ? ` — at most ${TRAIN_MAX}` : "") : "";
  const thumbs = files.slice(0, 12).map((file) => {
    const img = document.createElement("img");
    img.className = "thumb"; img.alt = file.name; img.src = URL.createObjectURL(file);
    img.onload = () => URL.revokeObjectURL(img.src);
    return img;
  });
  $("#train-thumbs").replaceChildren(...thumbs);
}

// The base models a LoRA can be trained on: the diffusion models the studio lists.
function trainChoices(models) {
  const bases = models.filter((m) => ["builtin", "diffusers", "single-file"].includes(m.kind));
  $("#train-model").replaceChildren(...bases.map((m) => new Option(m.name, m.name)));
}

async function trainRequest() {
  const files = trainFiles();
  if (files.length < TRAIN_MIN || files.length > TRAIN_MAX) throw new Error(`choose ${TRAIN_MIN} to ${TRAIN_MAX} pictures of what the LoRA should learn`);
  const trigger = $("#train-trigger").value.trim();
  if (!trigger) throw new Error("give a trigger word, e.g. sks: the prompt calls up the concept with it");
  const steps = parseInt($("#train-steps").value, 10);
  const fields = { mode: "train_lora", model: $("#train-model").value || undefined, trigger, steps,
    rank: parseInt($("#train-rank").value, 10), sample_every: Math.max(1, Math.ceil(steps / TRAIN_GRIDS)) };
  const name = $("#train-name").value.trim(); if (name) fields.name = name;
  fields.pictures = await Promise.all(files.map(shrunk));
  return fields;
}

function initTrain() {
  $("#train-folder").addEventListener("change", () => {  // a whole folder, where the browser can
    $("#train-pictures").webkitdirectory = $("#train-folder").checked;
    $("#train-pictures").value = ""; showTrainFiles();
  });
  $("#train-pictures").addEventListener("change", showTrainFiles);
  $("#train-stop").addEventListener("click", async () => { if (currentJob) await api(`/api/v1/jobs/${currentJob}`, { method: "DELETE" }); });
  $("#train-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const go = $("#train-go");
    go.disabled = true;
    try {
      const job = await api("/api/v1/jobs", { method: "POST", body: JSON.stringify(await trainRequest()) });
      follow(job, "Training", { view: "train", box: "#train-job", bar: "#train-bar", status: "#train-status",
        preview: "#train-preview", results: "#train-results" });
      showWhenDone(job.id, $("#train-done"), () => true, () => {
        const tag = `<lora:${job.request.name}:0.8>`;
        $("#train-done-text").textContent = `Done: write “${job.request.trigger} ${tag}” in a prompt (the Create page's LoRA list has it).`;
        loadLoras();
      });
      loadAccount().catch(() => {});
    } catch (error) { toast(error.message); }
    finally { go.disabled = false; }
  });
}

window.trainChoices = trainChoices;
initTrain();
