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

// A picker row: a button named `name` (data-KIND=name) that writes `text()` into the prompt,
// any `extras` (a weight box), and a hint.
function networkRow(kind, name, title, hint, text, ...extras) {
  const row = document.createElement("li");
  row.className = "network";
  const use = document.createElement("button");
  use.type = "button"; use.className = "secondary use"; use.textContent = name;
  use.dataset[kind] = name;
  use.title = title;
  use.addEventListener("click", () => insertIntoPrompt(text()));
  const about = document.createElement("span");
  about.className = "hint";
  about.textContent = hint;
  row.append(use, ...extras, about);
  return row;
}

function loraRow(lora) {
  const weight = document.createElement("input");
  Object.assign(weight, { type: "number", min: "-2", max: "2", step: "0.05", value: String(lora.weight) });
  weight.className = "weight"; weight.setAttribute("aria-label", `Weight of ${lora.name}`);
  const text = () => {
    const prompt = $("#prompt").value;
    const trigger = lora.trigger && !prompt.toLowerCase().includes(lora.trigger.toLowerCase()) ? `${lora.trigger} ` : "";
    return trigger + loraTag(lora, parseFloat(weight.value));
  };
  return networkRow("lora", lora.name, `Write ${lora.tag} into the prompt${lora.trigger ? ` (trigger: ${lora.trigger})` : ""}`,
    `${lora.own ? "yours · " : ""}for ${lora.base}${lora.trigger ? ` · trigger “${lora.trigger}”` : ""}`, text, weight);
}

function embeddingRow(embedding) {
  return networkRow("embedding", embedding.name, `Write ${embedding.name} into the prompt`,
    `embedding for ${embedding.base} · ${embedding.vectors} vector${embedding.vectors === 1 ? "" : "s"}`,
    () => embedding.name);
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
