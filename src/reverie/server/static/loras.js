// The LoRA and embedding picker on the Create page: the LoRAs this user may use (their own,
// trained in the Train view, and the studio's shared ones: GET /api/v1/loras) and the studio's
// embeddings (GET /api/v1/embeddings). Clicking a LoRA writes `<lora:NAME:W>` into the prompt at
// the cursor, with its weight from the field beside it (and its trigger word, when it has one
// that the prompt lacks, as A1111's "activation text" does); clicking an embedding writes its
// name. The page only ever writes names the server listed.
// Loaded after app.js: uses its $, api and toast; app.js calls loadLoras() with its other choices.
"use strict";

// Write `text` into the prompt at the cursor (replacing a selection), spaced from its neighbours.
function insertIntoPrompt(text) {
  const box = $("#prompt");
  const start = box.selectionStart ?? box.value.length, end = box.selectionEnd ?? start;
  const before = box.value.slice(0, start), after = box.value.slice(end);
  const lead = before && !/\s$/.test(before) ? " " : "";
  const tail = after && !/^\s/.test(after) ? " " : "";
  box.value = before + lead + text + tail + after;
  const cursor = (before + lead + text + tail).length;
  box.focus();
  box.setSelectionRange(cursor, cursor);
}

function loraTag(lora, weight) {
  const w = Number.isFinite(weight) ? weight : lora.weight;
  return `<lora:${lora.name}:${Number(w.toFixed(2))}>`;
}

function loraRow(lora) {
  const row = document.createElement("li");
  row.className = "network";
  const use = document.createElement("button");
  use.type = "button"; use.className = "secondary use"; use.textContent = lora.name;
  use.dataset.lora = lora.name;
  use.title = `Write ${lora.tag} into the prompt${lora.trigger ? ` (trigger: ${lora.trigger})` : ""}`;
  const weight = document.createElement("input");
  Object.assign(weight, { type: "number", min: "-2", max: "2", step: "0.05", value: String(lora.weight) });
  weight.className = "weight"; weight.setAttribute("aria-label", `Weight of ${lora.name}`);
  const about = document.createElement("span");
  about.className = "hint";
  about.textContent = `${lora.own ? "yours · " : ""}for ${lora.base}${lora.trigger ? ` · trigger “${lora.trigger}”` : ""}`;
  use.addEventListener("click", () => {
    const prompt = $("#prompt").value;
    const trigger = lora.trigger && !prompt.toLowerCase().includes(lora.trigger.toLowerCase()) ? `${lora.trigger} ` : "";
    insertIntoPrompt(trigger + loraTag(lora, parseFloat(weight.value)));
  });
  row.append(use, weight, about);
  return row;
}

function embeddingRow(embedding) {
  const row = document.createElement("li");
  row.className = "network";
  const use = document.createElement("button");
  use.type = "button"; use.className = "secondary use"; use.textContent = embedding.name;
  use.dataset.embedding = embedding.name;
  use.title = `Write ${embedding.name} into the prompt`;
  const about = document.createElement("span");
  about.className = "hint";
  about.textContent = `embedding for ${embedding.base} · ${embedding.vectors} vector${embedding.vectors === 1 ? "" : "s"}`;
  use.addEventListener("click", () => insertIntoPrompt(embedding.name));
  row.append(use, about);
  return row;
}

async function loadLoras() {
  try {
    const [loras, embeddings] = await Promise.all([api("/api/v1/loras"), api("/api/v1/embeddings")]);
    $("#lora-list").replaceChildren(...loras.map(loraRow));
    $("#embedding-list").replaceChildren(...embeddings.map(embeddingRow));
    $("#lora-empty").hidden = loras.length + embeddings.length > 0;
    $("#lora-count").textContent = `(${loras.length} LoRA${loras.length === 1 ? "" : "s"}, ${embeddings.length} embedding${embeddings.length === 1 ? "" : "s"})`;
  } catch (error) { if (error.message !== "please log in") toast(error.message); }
}
window.loadLoras = loadLoras;
