// The style picker: one tile per style preset, with its preview picture (made by reverie-mini),
// beside the Style select. A tile chooses its preset in the select (toggles it when the select
// takes several), so the form sends what the select holds; the select stays the source of truth.
"use strict";

function styleThumbnails(styles) {
  const select = document.getElementById("style");
  if (!select) return;
  let picker = document.getElementById("style-picker");
  if (!picker) {
    picker = document.createElement("details");
    picker.id = "style-picker";
    picker.className = "style-picker";
    const summary = document.createElement("summary");
    summary.textContent = "Browse styles";
    picker.append(summary, Object.assign(document.createElement("div"), { className: "style-tiles" }));
    select.closest(".row")?.after(picker);
  }
  const tiles = picker.querySelector(".style-tiles");
  tiles.replaceChildren(...styles.map((style) => {
    const value = style.name === "None" ? "" : style.name;
    const tile = document.createElement("button");
    tile.type = "button";
    tile.className = "style-tile";
    tile.dataset.value = value;
    tile.title = style.prompt.replace("{prompt}", "…") + (style.negative ? `\nnot: ${style.negative}` : "");
    if (style.preview) {
      const img = Object.assign(document.createElement("img"), { src: style.preview, alt: "", loading: "lazy", width: 72, height: 72 });
      tile.append(img);
    }
    tile.append(Object.assign(document.createElement("span"), { textContent: style.name }));
    tile.addEventListener("click", () => chooseStyle(select, value));
    return tile;
  }));
  select.addEventListener("change", () => markChosen(select, tiles));
  markChosen(select, tiles);
}

function chooseStyle(select, value) {
  const option = [...select.options].find((o) => o.value === value);
  if (!option) return;
  if (select.multiple) {
    if (value === "") [...select.options].forEach((o) => { o.selected = false; });
    else option.selected = !option.selected;
  } else {
    select.value = value;
  }
  select.dispatchEvent(new Event("change", { bubbles: true }));
}

function markChosen(select, tiles) {
  const chosen = new Set([...select.selectedOptions].map((o) => o.value));
  for (const tile of tiles.children) tile.classList.toggle("chosen", chosen.has(tile.dataset.value));
}

window.styleThumbnails = styleThumbnails;
