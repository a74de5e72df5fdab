// The Video view: walks between prompts, Deforum-style animations, restyled videos (a gallery
// video's Restyle button picks one, or an upload) and dream videos (mode "video"). The form is
// one request; its progress (frames done, the latest frame) is followed like any job (app.js
// `follow`), and the finished video plays here. Gallery cards of videos show the
// poster with a play badge (app.js `card`) and open the video (`videoPlayer`).
// Loaded after app.js: uses its $, api, toast, follow and currentJob.
"use strict";

const VIDEO_PROMPT_HINTS = {
  walk: ["one stop per line", "a forest at dawn\na city at night"],
  animate: ["a timeline: frame: prompt, separated by |", "0: a forest | 48: a city"],
  restyle: ["a timeline: frame: prompt, separated by |", "0: an oil painting | 48: a watercolour"],
  dream: ["a timeline: frame: prompt, separated by |", "0: a cozy cabin | 48: a lighthouse"],
};

// The player for a video item: <video> for MP4, <img> for GIF and WebP (browsers animate them).
function videoPlayer(image) {
  if (image.content_type !== "video/mp4") {
    const img = document.createElement("img");
    img.src = image.url; img.alt = image.prompt || "a video";
    return img;
  }
  const video = document.createElement("video");
  Object.assign(video, { controls: true, loop: true, autoplay: true, muted: true, playsInline: true });
  video.poster = image.poster_url; video.src = image.url;
  video.setAttribute("aria-label", image.prompt || "a video");
  return video;
}

function showMotionFields() {
  const motion = $("#video-motion").value;
  document.querySelectorAll("#video-form [data-motion]").forEach((box) => {
    box.hidden = !box.dataset.motion.split(" ").includes(motion);
  });
  const [hint, example] = VIDEO_PROMPT_HINTS[motion];
  $("#video-prompts-hint").textContent = `(${hint})`;
  $("#video-prompts").placeholder = example;
}

// The form as a video request: only the fields of the chosen motion.
function videoRequest() {
  const motion = $("#video-motion").value;
  const text = $("#video-prompts").value.trim();
  const number = (selector, parse = parseInt) => { const v = $(selector).value; return v === "" ? undefined : parse(v, 10); };
  const fields = { mode: "video", motion, formats: [$("#video-format").value], frames: number("#video-frames"),
    fps: motion === "restyle" ? undefined : number("#video-fps", parseFloat), width: number("#video-width"), height: number("#video-height"),
    steps: number("#video-steps"), interpolate: number("#video-interpolate") || undefined };
  if (fields.interpolate) fields.interpolation = $("#video-interpolation").value;
  // A walk's stops are lines; a timeline stays one text (its own `|` splits it at frame keys).
  fields.prompts = motion === "walk" ? text.split("\n").map((line) => line.trim()).filter(Boolean) : [text];
  if (motion === "walk") {
    const seeds = $("#video-seeds").value.split(/[\s,]+/).filter(Boolean).map((s) => parseInt(s, 10));
    if (seeds.some(Number.isNaN)) throw new Error("seeds are whole numbers, separated by commas");
    if (seeds.length) fields.seeds = seeds;
    if ($("#video-loop").checked) fields.loop = true;
  } else if (motion === "restyle") {  // the input's own camera and frame rate
    if (!$("#video-input").value) throw new Error("press Restyle on a video in the gallery, or upload one, to paint it again");
    fields.video_input = $("#video-input").value;
    if ($("#video-network").value) {  // a trained style network paints the frames: no prompt
      fields.network = $("#video-network").value;
      fields.prompts = [];
    }
    fields.strength = $("#video-restyle-strength").value.trim() || undefined;
    fields.coherence = $("#video-coherence").value.trim() || undefined;
    fields.flow = $("#video-flow").value;
    fields.extract_every = number("#video-every");
    if (!$("#video-sound").checked) fields.sound = false;
  } else {
    for (const name of ["zoom", "angle", "translation_x", "translation_y"]) fields[name] = $(`#video-${name}`).value.trim() || undefined;
  }
  if (motion === "animate") {
    fields.strength = $("#video-strength").value.trim() || undefined;
    fields.cadence = number("#video-cadence");
    fields.colour_coherence = $("#video-colour").value;
    fields.noise = $("#video-noise").value.trim() || undefined;
    fields.cfg = $("#video-cfg").value.trim() || undefined;
    fields.seed_behavior = $("#video-seed-behavior").value;
    fields.border = $("#video-border").value;
    if ($("#video-prompt-cut").checked) fields.prompt_blend = false;
  }
  if (motion === "dream") fields.iterations_per_frame = number("#video-iterations");
  return fields;
}

// A gallery video's Restyle button: the Video view, set to paint it again.
function restyleVideo(image) {
  document.querySelectorAll("dialog[open]").forEach((d) => d.close());
  $("#video-motion").value = "restyle";
  $("#video-input").value = `image:${image.id}`;
  $("#video-upload").value = "";
  $("#video-input-name").textContent = `Video: ${image.prompt} (${image.settings.frames} frames)`;
  showMotionFields();
  showView("video");
  $("#video-prompts").focus();
}

// The finished video, once its job is done.
function watchVideo(jobId) {
  showWhenDone(jobId, $("#video-result"), (image) => image.video,
    (videos) => $("#video-result").replaceChildren(videoPlayer(videos[0])));
}

function initVideo() {
  $("#video-motion").addEventListener("change", showMotionFields);
  $("#video-upload").addEventListener("change", async () => {  // an upload to restyle, sent as a data URL
    const file = $("#video-upload").files[0];
    if (!file) return;
    $("#video-input").value = await readAsDataURL(file);
    $("#video-input-name").textContent = `Video: ${file.name} (uploaded)`;
  });
  showMotionFields();
  $("#video-stop").addEventListener("click", async () => { if (currentJob) await api(`/api/v1/jobs/${currentJob}`, { method: "DELETE" }); });
  $("#video-prompts").addEventListener("keydown", (event) => {  // Enter adds a stop; Ctrl+Enter makes the video
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) { event.preventDefault(); $("#video-form").requestSubmit(); }
  });
  $("#video-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    let fields;
    try { fields = videoRequest(); } catch (error) { toast(error.message); return; }
    if (!fields.network && (!fields.prompts.length || !fields.prompts[0])) { toast("type what the video should show"); return; }
    try {
      const job = await api("/api/v1/jobs", { method: "POST", body: JSON.stringify(fields) });
      follow(job, "Video", { view: "video", box: "#video-job", bar: "#video-bar", status: "#video-status",
        preview: "#video-preview", results: "#video-results" });
      watchVideo(job.id);
      loadAccount().catch(() => {});
    } catch (error) { toast(error.message); }
  });
}

initVideo();
