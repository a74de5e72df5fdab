// Midjourney's actions on a picture (U, V subtle/strong, zoom out, pan, reroll): a row of buttons
// on every picture card and in the picture viewer. Each is POST /api/v1/images/{id}/actions/{name};
// the server builds the request from the picture's own settings, and the new job is followed
// like any other (app.js `submitJob`/`follow`). The list of actions comes from GET /api/v1/actions.
"use strict";

const pictureActions = fetch("/api/v1/actions", { credentials: "same-origin" })
  .then((response) => (response.ok ? response.json() : []))
  .catch(() => []);

// What the progress line says while the action's job runs.
const ACTION_PROGRESS = { upscale: "Upscaling", vary_subtle: "Varying (subtle)", vary_strong: "Varying (strong)",
  reroll: "Rerolling" };
const actionProgress = (action) => ACTION_PROGRESS[action.name] ||
  (action.name.startsWith("zoom") ? "Zooming out" : action.name.startsWith("pan") ? "Panning" : action.title);

function actionButton(image, action) {
  const button = document.createElement("button");
  button.type = "button"; button.className = "secondary";
  button.textContent = action.label;
  button.dataset.action = action.name;
  button.setAttribute("aria-label", action.title);
  button.title = `${action.title}: ${action.description}`;
  button.addEventListener("click", () => {
    document.querySelectorAll("dialog[open]").forEach((dialog) => dialog.close());
    submitJob(null, actionProgress(action), `/api/v1/images/${image.id}/actions/${encodeURIComponent(action.name)}`);
  });
  return button;
}

// The buttons for one picture, filled in as soon as the list of actions has arrived.
function actionBar(image) {
  const bar = document.createElement("div");
  bar.className = "actions mj-actions";
  bar.setAttribute("role", "group");
  bar.setAttribute("aria-label", "Midjourney's actions: upscale, vary, zoom out, pan, reroll");
  pictureActions.then((list) => {
    const pans = document.createElement("span");  // the four arrows stay together on one line
    pans.className = "pans"; pans.setAttribute("role", "group"); pans.setAttribute("aria-label", "Pan");
    for (const action of list) (action.name.startsWith("pan_") ? pans : bar).append(actionButton(image, action));
    if (pans.childNodes.length) bar.append(pans);
  });
  return bar;
}
