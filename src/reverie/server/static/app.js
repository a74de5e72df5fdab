// reverie studio page: plain JavaScript over the native API (/api/v1). No build step.
"use strict";

const $ = (selector) => document.querySelector(selector);
const api = async (path, options = {}) => {
  const response = await fetch(path, { credentials: "same-origin", ...options,
    headers: { "Content-Type": "application/json", ...(options.headers || {}) } });
  if (response.status === 401) { showLogin(); throw new Error("please log in"); }
  if (response.status === 204) return null;
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error((body.error && body.error.message) || response.statusText);
  return body;
};

function toast(message) {
  const box = $("#toast");
  box.textContent = message;
  box.classList.add("show");
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => box.classList.remove("show"), 4000);
}

// ---------------------------------------------------------------- views
function showView(name) {
  document.querySelectorAll(".view").forEach((view) => { view.hidden = view.id !== `view-${name}`; });
  document.querySelectorAll(".tab").forEach((tab) => {
    if (tab.dataset.view === name) tab.setAttribute("aria-current", "page"); else tab.removeAttribute("aria-current");
  });
  if (name === "gallery") loadGallery();
}
document.querySelectorAll(".tab").forEach((tab) => tab.addEventListener("click", () => showView(tab.dataset.view)));

// ---------------------------------------------------------------- account, credits and login
function smallButton(text, handler, title) {
  const b = document.createElement("button");
  b.type = "button"; b.className = "secondary"; b.textContent = text; b.title = title || text;
  b.addEventListener("click", handler);
  return b;
}
async function loadAccount() {
  const me = await api("/api/v1/me");
  const box = $("#account");
  box.replaceChildren();
  if (!me.multi_user) return;
  const name = document.createElement("span"); name.textContent = me.name;
  const credits = smallButton(`${me.credits} credits`, openCredits, "Your credits: balance, free credits, packs and history");
  credits.id = "credits-button";
  const out = smallButton("Log out", async () => { await api("/api/v1/logout", { method: "POST" }); location.reload(); });
  box.append(name, credits, out);
}

const LEDGER_WHAT = { charge: "request", refund: "refund", purchase: "bought", grant: "granted" };
function money(cents, currency) {
  try { return new Intl.NumberFormat(undefined, { style: "currency", currency: currency.toUpperCase() }).format(cents / 100); }
  catch { return `${(cents / 100).toFixed(2)} ${currency.toUpperCase()}`; }
}
async function openCredits() {
  const info = await api("/api/v1/credits");
  $("#credits-balance").textContent = `${info.balance} credits`;
  $("#credits-schedule").textContent = `${info.schedule.first_month} free credits in your first month, ` +
    `${info.schedule.monthly} each month after; a request costs ${info.cost_per_request}.`;
  $("#credits-packs").replaceChildren(...info.packs.map((pack) => {
    const li = document.createElement("li"); li.textContent = `${pack.credits} credits for ${money(pack.price_cents, pack.currency)}`;
    return li;
  }));
  $("#credits-history tbody").replaceChildren(...info.history.map((entry) => {
    const row = document.createElement("tr");
    const what = entry.reason === "monthly" ? entry.note : `${LEDGER_WHAT[entry.reason] || entry.reason}${entry.note ? ` · ${entry.note}` : ""}`;
    for (const [text, kind] of [[new Date(entry.created).toLocaleString(), ""], [`${entry.amount > 0 ? "+" : ""}${entry.amount}`, "amount"], [what, ""]]) {
      const cell = document.createElement("td"); cell.textContent = text; if (kind) cell.className = kind; row.append(cell);
    }
    return row;
  }));
  $("#credits-button").textContent = `${info.balance} credits`;
  const dialog = $("#credits"); if (!dialog.open) dialog.showModal();
}
function showLogin() { const dialog = $("#login"); if (!dialog.open) dialog.showModal(); $("#login-name").focus(); }
$("#login-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  try {
    await api("/api/v1/login", { method: "POST", body: JSON.stringify({ username: $("#login-name").value, password: $("#login-password").value }) });
    $("#login").close();
    init();
  } catch (error) { $("#login-error").textContent = error.message; }
});

// ---------------------------------------------------------------- choices from the server
async function fillChoices() {
  const [styles, samplers, models] = await Promise.all([api("/api/v1/styles"), api("/api/v1/samplers"), api("/api/v1/models")]);
  $("#style").replaceChildren(...styles.map((s) => new Option(s.name, s.name === "None" ? "" : s.name)));
  window.styleThumbnails?.(styles);  // the picture picker (styles.js)
  $("#sampler").replaceChildren(new Option("model default", ""), ...samplers.map((s) => new Option(s.label, s.name)));
  const drawing = models.filter((m) => m.kind !== "style");
  modelKinds = Object.fromEntries(drawing.map((m) => [m.name, m.kind]));
  $("#model").replaceChildren(new Option("default", ""),
    ...drawing.map((m) => new Option(m.kind === "gan" ? `${m.name} (GAN: the prompt picks its class)` : m.name, m.name)));
  $("#style-choice").replaceChildren(new Option("a style picture…", ""),
    ...models.filter((m) => m.kind === "style").map((m) => new Option(`${m.name} (trained network)`, m.name)));
  $("#video-network").replaceChildren(new Option("the model, with the prompts", ""),  // a restyle's painter (video.js)
    ...models.filter((m) => m.kind === "style").map((m) => new Option(`${m.name} (trained style network)`, m.name)));
  window.trainChoices?.(models);  // the Train view's base models (train.js)
  window.loadLoras?.();  // the LoRA and embedding picker (loras.js)
}

// ---------------------------------------------------------------- jobs
let currentJob = null;
let modelKinds = {};  // model name -> kind (builtin, diffusers, single-file, gan), from /api/v1/models

// A GAN draws without a prompt: the prompt, when given, names one of its classes.
function ganRequest(model) {
  const fields = { mode: "gan", model, n_samples: 4 };
  const prompt = $("#prompt").value.trim(); if (prompt) fields.class_name = prompt;
  const seed = $("#seed").value; if (seed !== "") fields.seed = parseInt(seed, 10);
  return fields;
}

function requestFromForm() {
  if (modelKinds[$("#model").value] === "gan") return ganRequest($("#model").value);
  const fields = { prompt: $("#prompt").value.trim(), negative_prompt: $("#negative_prompt").value };
  const style = $("#style").value; if (style) fields.styles = [style];
  if ($("#expand").checked) fields.expand = true;
  for (const name of ["width", "height", "steps", "seed"]) { const v = $(`#${name}`).value; if (v !== "") fields[name] = parseInt(v, 10); }
  const cfg = $("#cfg_scale").value; if (cfg !== "") fields.cfg_scale = parseFloat(cfg);
  if ($("#sampler").value) fields.sampler = $("#sampler").value;
  if ($("#model").value) fields.model = $("#model").value;
  fields.n_samples = 4;
  const rerank = parseInt($("#rerank").value, 10); if (rerank > 1) fields.rerank = rerank;
  return { ...fields, ...speedFields() };
}

// The Speed panel's choices that differ from the defaults (an unset field keeps the server's own).
function speedFields() {
  const fields = {};
  for (const [name, fallback] of [["runtime", "auto"], ["quantize", "none"], ["decoder", "vae"]]) {
    if ($(`#${name}`).value !== fallback) fields[name] = $(`#${name}`).value;
  }
  if ($("#step_cache").value) fields.step_cache = parseInt($("#step_cache").value, 10);
  return fields;
}

async function submitJob(body, label, path = "/api/v1/jobs") {
  try {
    const job = await api(path, { method: "POST", body: body === null ? undefined : JSON.stringify(body) });
    follow(job, label);
    loadAccount().catch(() => {});
  } catch (error) { toast(error.message); }
}

// The model and sampling settings a picture was made with: edits of it are made the same way
// (a GAN's picture is edited with the default diffusion model: a GAN has no edit modes).
function madeWith(settings) {
  if (settings.mode === "gan") return {};
  return { model: settings.model || undefined, steps: settings.steps || undefined,
    cfg_scale: settings.cfg_scale ?? undefined, sampler: settings.sampler || undefined,
    step_cache: settings.step_cache || undefined, decoder: settings.decoder || undefined,
    quantize: settings.quantize || undefined };
}

function follow(job, label, target = { box: "#job", bar: "#bar", status: "#job-status", preview: "#preview", results: "#results" }) {
  currentJob = job.id;
  showView(target.view || (target.results === "#results" ? "create" : "dream"));
  const box = $(target.box);
  box.hidden = false;
  $(target.bar).style.width = "0";
  $(target.status).textContent = `${label}: queued`;
  $(target.preview).hidden = true;
  const source = new EventSource(`/api/v1/jobs/${job.id}/events`);
  let lastPreview = null;
  source.addEventListener("progress", (event) => {
    const view = JSON.parse(event.data);
    const p = view.progress;
    $(target.bar).style.width = `${Math.round(100 * p.fraction)}%`;
    const where = view.status === "queued" ? `queued (${view.position} ahead)` :
      view.status === "running" ? `${p.stage}${p.total ? ` ${p.step}/${p.total}` : ""}${p.images_total ? ` · ${p.images_done}/${p.images_total} pictures` : ""}${p.message ? ` · ${p.message}` : ""}` : view.status;
    $(target.status).textContent = `${label}: ${where}${view.error ? ` — ${view.error}` : ""}`;
    if (p.preview_version !== null && p.preview_version !== lastPreview && view.status === "running") {
      lastPreview = p.preview_version;
      const img = $(target.preview);
      // Shown once a picture has arrived: never a broken-image icon while the first one loads.
      img.onload = () => { if (currentJob === view.id) img.hidden = false; };
      img.src = `/api/v1/jobs/${view.id}/preview.png?v=${p.preview_version}`;
    }
    if (view.images.length) showResults(view.images, target.results);
    if (!["queued", "running"].includes(view.status)) {
      source.close();
      if (currentJob === view.id) currentJob = null;
      box.hidden = view.status === "done";
      $(target.preview).hidden = true;
      if (view.status === "failed") toast(view.error || "the job failed");
    }
  });
  source.onerror = () => { source.close(); };
}

// When a job ends, `render` the images of it that `pick` keeps and show `box` (kept hidden when none).
function showWhenDone(jobId, box, pick, render) {
  box.hidden = true;
  const source = new EventSource(`/api/v1/jobs/${jobId}/events`);
  source.addEventListener("progress", (event) => {
    const view = JSON.parse(event.data);
    if (["queued", "running"].includes(view.status)) return;
    source.close();
    const chosen = view.images.filter(pick);
    if (!chosen.length) return;
    render(chosen);
    box.hidden = false;
  });
  source.onerror = () => source.close();
}

$("#cancel").addEventListener("click", async () => { if (currentJob) await api(`/api/v1/jobs/${currentJob}`, { method: "DELETE" }); });
$("#style-stop").addEventListener("click", async () => { if (currentJob) await api(`/api/v1/jobs/${currentJob}`, { method: "DELETE" }); });
$("#dream-stop").addEventListener("click", async () => { if (currentJob) await api(`/api/v1/jobs/${currentJob}`, { method: "DELETE" }); });

$("#create-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const fields = requestFromForm();
  if (fields.mode !== "gan" && !fields.prompt) { toast("type what the picture should show"); return; }
  submitJob(fields, "Generating");
});
$("#prompt").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey) { event.preventDefault(); $("#create-form").requestSubmit(); }
});

// ---------------------------------------------------------------- pictures
// Picture links expire (an hour by default): one about to expire is asked for anew.
const linkFresh = (url) => Number(new URL(url, location.href).searchParams.get("exp")) * 1000 - Date.now() > 60_000;
const fresh = async (image) => (linkFresh(image.url) ? image : api(`/api/v1/images/${image.id}`));

function card(image) {
  const item = document.createElement("article");
  item.className = "card";
  item.dataset.imageId = image.id;
  const img = document.createElement("img");
  // A video's card shows its poster with a play badge, and opens the video.
  img.src = image.poster_url || image.url; img.alt = image.prompt || (image.video ? "a video" : "a picture");
  img.loading = "lazy"; img.tabIndex = 0;
  img.addEventListener("click", () => openDetails(image));
  img.addEventListener("keydown", (e) => { if (e.key === "Enter") openDetails(image); });
  const meta = document.createElement("div");
  meta.className = "meta"; meta.textContent = `${image.prompt} · seed ${image.seed}${image.score != null ? ` · score ${image.score.toFixed(2)}` : ""}`;
  let shown = img;
  if (image.video) {
    item.classList.add("video");
    shown = document.createElement("div"); shown.className = "poster";
    const badge = document.createElement("span"); badge.className = "play"; badge.setAttribute("aria-hidden", "true"); badge.textContent = "▶";
    shown.append(img, badge);
    meta.textContent = `${image.prompt} · ${image.settings.frames} frames · seed ${image.seed}`;
    item.append(shown, actions(image), meta);  // Midjourney's actions redraw pictures, not videos
    return item;
  }
  item.append(shown, actions(image), actionBar(image), meta);  // actionBar: actions.js (U, V, zoom, pan, reroll)
  return item;
}

function actions(image) {
  const bar = document.createElement("div");
  bar.className = "actions";
  const add = (text, handler, title) => {
    const b = document.createElement("button");
    b.type = "button"; b.className = "secondary"; b.textContent = text; b.title = title || text;
    b.addEventListener("click", handler); bar.append(b); return b;
  };
  const settings = image.settings || {};
  if (!image.video) {  // edits redraw a picture; a video is made again (Re-run) or downloaded
    add("Variations", () => submitJob({ mode: "variations", init_image: `image:${image.id}`, prompt: image.prompt, n_samples: 4, ...madeWith(settings) }, "Variations"));
    add("Inpaint", () => openInpaint(image));
    add("Style", () => useAsStyleContent(image), "Restyle this picture (Style view)");
    add("Outpaint", () => openOutpaint(image));
  } else {
    add("Restyle", () => restyleVideo(image), "Paint this video again with a prompt (Video view)");  // video.js
  }
  const download = document.createElement("a");
  const suffix = image.video ? new URL(image.url, location.href).pathname.split(".").pop() : "png";
  download.href = image.url; download.download = `reverie-${image.seed}.${suffix}`; download.textContent = "Download"; download.className = "button";
  download.addEventListener("click", async (event) => {
    if (linkFresh(download.href)) return;
    event.preventDefault();
    download.href = (await api(`/api/v1/images/${image.id}`)).url;
    download.click();
  });
  bar.append(download);
  add("Copy settings", async () => {
    const text = JSON.stringify(settings, null, 2);
    try { await navigator.clipboard.writeText(text); toast("settings copied"); } catch { toast("copy failed: the browser refused clipboard access"); }
  });
  add("Re-run", () => submitJob(null, "Re-running", `/api/v1/images/${image.id}/again`),
    `Make this ${image.video ? "video" : "picture"} again with its own settings and seed`);
  return bar;
}

function showResults(images, where) { $(where).replaceChildren(...images.map(card)); }

async function openDetails(image) {
  image = await fresh(image);
  const dialog = $("#details");
  $("#details-image").hidden = image.video; $("#details-video").hidden = !image.video;
  if (image.video) $("#details-video").replaceChildren(videoPlayer(image));  // video.js
  else { $("#details-image").src = image.url; $("#details-image").alt = image.prompt; }
  const list = $("#details-settings");
  list.replaceChildren();
  const settings = { prompt: image.prompt, seed: image.seed, size: `${image.width}x${image.height}`, ...(image.settings || {}) };
  for (const [key, value] of Object.entries(settings)) {
    if (value === null || value === "" || typeof value === "object") continue;
    const dt = document.createElement("dt"); dt.textContent = key;
    const dd = document.createElement("dd"); dd.textContent = value;
    list.append(dt, dd);
  }
  const bar = actions(image);
  const del = document.createElement("button");
  del.type = "button"; del.textContent = "Delete"; del.className = "danger";
  del.addEventListener("click", async () => {
    if (!confirm(`Delete this ${image.video ? "video" : "picture"} for good?`)) return;
    await api(`/api/v1/images/${image.id}`, { method: "DELETE" });
    dialog.close();
    document.querySelectorAll(`[data-image-id="${image.id}"]`).forEach((n) => n.remove());
    toast("deleted");
  });
  bar.append(del);
  $("#details-actions").replaceChildren(...bar.childNodes, ...(image.video ? [] : [actionBar(image)]));
  dialog.showModal();
}
document.querySelectorAll("[data-close]").forEach((b) => b.addEventListener("click", () => b.closest("dialog").close()));
$("#details").addEventListener("close", () => $("#details-video").replaceChildren());  // a closed video stops

// ---------------------------------------------------------------- gallery
let galleryAsked = 0;  // the latest search wins: an older answer arriving late is dropped
async function loadGallery() {
  const asked = ++galleryAsked;
  const q = encodeURIComponent($("#search").value.trim());
  const images = await api(`/api/v1/gallery?q=${q}&limit=120`);
  if (asked !== galleryAsked) return;
  const box = $("#gallery");
  if (!images.length) { box.textContent = q ? "Nothing matches that search." : "Nothing made yet."; return; }
  showResults(images, "#gallery");
}
$("#search-form").addEventListener("submit", (event) => { event.preventDefault(); loadGallery(); });

// ---------------------------------------------------------------- inpaint: paint a mask with a brush
let inpaintImage = null;
async function openInpaint(image) {
  image = await fresh(image);
  inpaintImage = image;
  document.querySelectorAll("dialog[open]").forEach((d) => d.close());
  const canvas = $("#inpaint-canvas");
  const picture = new Image();
  picture.onload = () => {
    canvas.width = picture.naturalWidth; canvas.height = picture.naturalHeight;
    canvas.mask = document.createElement("canvas");
    canvas.mask.width = canvas.width; canvas.mask.height = canvas.height;
    canvas.picture = picture;
    redrawInpaint();
  };
  picture.src = image.url;
  $("#inpaint-prompt").value = image.prompt;
  $("#inpaint").showModal();
}
function redrawInpaint() {
  const canvas = $("#inpaint-canvas"); const ctx = canvas.getContext("2d");
  ctx.drawImage(canvas.picture, 0, 0);
  ctx.globalAlpha = 0.55; ctx.drawImage(tinted(canvas.mask), 0, 0); ctx.globalAlpha = 1;
}
function tinted(mask) {
  const t = document.createElement("canvas"); t.width = mask.width; t.height = mask.height;
  const c = t.getContext("2d"); c.drawImage(mask, 0, 0); c.globalCompositeOperation = "source-in"; c.fillStyle = "#ff3b3b"; c.fillRect(0, 0, t.width, t.height);
  return t;
}
(function brush() {
  const canvas = $("#inpaint-canvas");
  let drawing = false;
  const point = (event) => {
    const box = canvas.getBoundingClientRect();
    return [(event.clientX - box.left) * canvas.width / box.width, (event.clientY - box.top) * canvas.height / box.height];
  };
  const paint = (event) => {
    if (!drawing || !canvas.mask) return;
    const [x, y] = point(event);
    const radius = parseInt($("#brush").value, 10) * canvas.width / 512;
    const m = canvas.mask.getContext("2d");
    m.fillStyle = "#fff"; m.beginPath(); m.arc(x, y, Math.max(1, radius), 0, Math.PI * 2); m.fill();
    redrawInpaint();
  };
  canvas.addEventListener("pointerdown", (e) => { drawing = true; canvas.setPointerCapture(e.pointerId); paint(e); });
  canvas.addEventListener("pointermove", paint);
  canvas.addEventListener("pointerup", () => { drawing = false; });
  $("#inpaint-clear").addEventListener("click", () => { canvas.mask.getContext("2d").clearRect(0, 0, canvas.width, canvas.height); redrawInpaint(); });
})();
$("#inpaint-go").addEventListener("click", () => {
  const canvas = $("#inpaint-canvas");
  const mask = document.createElement("canvas"); mask.width = canvas.width; mask.height = canvas.height;
  const m = mask.getContext("2d"); m.fillStyle = "#000"; m.fillRect(0, 0, mask.width, mask.height); m.drawImage(canvas.mask, 0, 0);
  const settings = inpaintImage.settings || {};
  $("#inpaint").close();
  submitJob({ mode: "inpaint", prompt: $("#inpaint-prompt").value, init_image: `image:${inpaintImage.id}`,
    mask_image: mask.toDataURL("image/png"), n_samples: 4, ...madeWith(settings) }, "Inpainting");
});

// ---------------------------------------------------------------- outpaint: drag the canvas edges out
let outpaintImage = null;
const outpaintFields = { left: "#out-left", right: "#out-right", up: "#out-up", down: "#out-down" };
async function openOutpaint(image) {
  image = await fresh(image);
  outpaintImage = image;
  document.querySelectorAll("dialog[open]").forEach((d) => d.close());
  for (const selector of Object.values(outpaintFields)) $(selector).value = 0;
  $("#outpaint-image").src = image.url;
  $("#outpaint-prompt").value = image.prompt;
  $("#outpaint").showModal();
  layoutOutpaint();
}
function outpaintScale() { return Math.min(1, 360 / Math.max(outpaintImage.width, outpaintImage.height)) * 1; }
function layoutOutpaint() {
  const s = outpaintScale();
  const v = Object.fromEntries(Object.entries(outpaintFields).map(([k, sel]) => [k, Math.max(0, parseInt($(sel).value || "0", 10))]));
  const frame = $("#outpaint-frame");
  frame.style.width = `${(outpaintImage.width + v.left + v.right) * s}px`;
  frame.style.height = `${(outpaintImage.height + v.up + v.down) * s}px`;
  const img = $("#outpaint-image");
  img.style.left = `${v.left * s}px`; img.style.top = `${v.up * s}px`;
  img.style.width = `${outpaintImage.width * s}px`; img.style.height = `${outpaintImage.height * s}px`;
}
Object.values(outpaintFields).forEach((sel) => $(sel).addEventListener("input", layoutOutpaint));
document.querySelectorAll(".handle").forEach((handle) => {
  handle.addEventListener("pointerdown", (event) => {
    event.preventDefault();
    handle.setPointerCapture(event.pointerId);
    const side = handle.dataset.side; const field = $(outpaintFields[side]);
    const start = { x: event.clientX, y: event.clientY, value: parseInt(field.value || "0", 10) };
    const move = (e) => {
      const delta = side === "left" ? start.x - e.clientX : side === "right" ? e.clientX - start.x : side === "up" ? start.y - e.clientY : e.clientY - start.y;
      field.value = Math.max(0, Math.round((start.value + delta / outpaintScale()) / 8) * 8);
      layoutOutpaint();
    };
    const up = () => { handle.removeEventListener("pointermove", move); handle.removeEventListener("pointerup", up); };
    handle.addEventListener("pointermove", move); handle.addEventListener("pointerup", up);
  });
});
$("#outpaint-go").addEventListener("click", () => {
  const body = { mode: "outpaint", prompt: $("#outpaint-prompt").value, init_image: `image:${outpaintImage.id}`, n_samples: 4,
    ...madeWith(outpaintImage.settings || {}) };
  for (const [side, sel] of Object.entries(outpaintFields)) body[`outpaint_${side}`] = parseInt($(sel).value || "0", 10);
  if (!Object.keys(outpaintFields).some((side) => body[`outpaint_${side}`] > 0)) { toast("drag an edge out first"); return; }
  $("#outpaint").close();
  submitJob(body, "Outpainting");
});

// ---------------------------------------------------------------- dreaming
$("#dream-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const size = parseInt($("#dream-size").value, 10) || undefined;  // undefined: the generator's own size
  const body = { prompt: $("#dream-prompt").value, generator: $("#dream-generator").value,
    iterations: parseInt($("#dream-iterations").value, 10), width: size, height: size, save_every: 10,
    prior: $("#dream-prior").value };
  try {
    const job = await api("/api/v1/dreams", { method: "POST", body: JSON.stringify(body) });
    follow(job, "Dreaming", { box: "#dream-job", bar: "#dream-bar", status: "#dream-status", preview: "#dream-preview", results: "#dream-results" });
  } catch (error) { toast(error.message); }
});

// ---------------------------------------------------------------- style transfer
// The content is an upload or a gallery picture (`image:ID`); the style is a trained network by
// the name the server lists, or an uploaded picture: the page never names a file on the server.
let styleContent = null;
const readAsDataURL = (file) => new Promise((resolve, reject) => {
  const reader = new FileReader(); reader.onload = () => resolve(reader.result); reader.onerror = reject; reader.readAsDataURL(file);
});
async function useAsStyleContent(image) {
  image = await fresh(image);
  document.querySelectorAll("dialog[open]").forEach((d) => d.close());
  styleContent = `image:${image.id}`;
  $("#style-content").value = "";
  $("#style-content-preview").src = image.url; $("#style-content-preview").hidden = false;
  showView("style");
}
$("#style-content").addEventListener("change", async () => {
  const file = $("#style-content").files[0];
  if (!file) return;
  styleContent = await readAsDataURL(file);
  $("#style-content-preview").src = styleContent; $("#style-content-preview").hidden = false;
});
$("#style-choice").addEventListener("change", () => { $("#style-picture-label").hidden = $("#style-choice").value !== ""; });
$("#style-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  if (!styleContent) { toast("choose a content picture (or use Style on a gallery picture)"); return; }
  const body = { mode: "style", content_image: styleContent, size: parseInt($("#style-size").value, 10),
    preserve_colour: $("#style-preserve").checked };
  const network = $("#style-choice").value;
  if (network) body.network = network;
  else {
    const file = $("#style-picture").files[0];
    if (!file) { toast("choose a style picture, or a trained style network"); return; }
    body.style_images = [await readAsDataURL(file)];
    body.steps = parseInt($("#style-steps").value, 10);
    body.save_every = 10;
    const strength = $("#style-strength").value; if (strength !== "") body.strength = parseFloat(strength);
  }
  try {
    const job = await api("/api/v1/jobs", { method: "POST", body: JSON.stringify(body) });
    follow(job, "Styling", { view: "style", box: "#style-job", bar: "#style-bar", status: "#style-status", preview: "#style-preview", results: "#style-results" });
  } catch (error) { toast(error.message); }
});

// ---------------------------------------------------------------- start
async function init() {
  try {
    await loadAccount();
    await fillChoices();
  } catch (error) { if (error.message !== "please log in") toast(error.message); }
}
// Once every deferred script has run: the choices fill the other views' lists too (train.js,
// loras.js), which a busy machine may still be loading when the server answers.
document.addEventListener("DOMContentLoaded", init);
