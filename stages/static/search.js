// The search page: one form, one POST /api/search, one section of hits per indexed modality.
// Everything the server or the user supplies is put in the page as text (textContent, src of a
// /media URL the server built), never as HTML.
"use strict";

const $ = (id) => document.getElementById(id);
let info = null;

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = !message;
}

function mebibytes(bytes) {
  return bytes >= 2 ** 20 ? `${Math.round(bytes / 2 ** 20)} MiB` : `${Math.round(bytes / 1024)} KiB`;
}

async function loadInfo() {
  const response = await fetch("/api/info");
  info = await response.json();
  const indexed = Object.entries(info.indexed).map(([m, n]) => `${n} ${m}`).join(", ");
  $("about").textContent = `index: ${indexed} · queries: ${info.query_modalities.join(", ")} · `
    + `uploads up to ${mebibytes(info.max_upload_bytes)}`;
  $("report").hidden = !info.report;
  $("k").value = info.default_k;
  $("k").max = info.max_k;
  $("text").maxLength = info.max_text_chars;
  $("text").disabled = !info.query_modalities.includes("text");
  const suffixes = Object.values(info.extensions).flat();
  $("file").accept = suffixes.join(",");
  $("drop").hidden = suffixes.length === 0;
}

function chosenFile(file) {
  $("drop-label").textContent = file ? file.name : "drop or choose a sound, image or clip";
  if (file) $("text").value = "";
}

function media(tag, hit) {
  const element = document.createElement(tag);
  element.src = hit.play_url;
  if (tag === "img") {
    element.alt = hit.caption || hit.name;
    element.loading = "lazy";
  } else {
    element.controls = true;
    element.preload = "metadata";
  }
  return element;
}

function card(modality, hit) {
  const element = document.createElement("figure");
  element.className = "hit";
  element.dataset.modality = modality;
  if (modality === "text") {
    const text = document.createElement("div");
    text.className = "text";
    text.textContent = hit.text;
    element.append(text);
  } else {
    element.append(media({ image: "img", audio: "audio", video: "video" }[modality] || "a", hit));
  }
  const score = document.createElement("div");
  score.innerHTML = '<span class="score"></span> <span class="meta"></span>';
  score.querySelector(".score").textContent = `#${hit.rank} · ${hit.score.toFixed(3)}`;
  score.querySelector(".meta").textContent = hit.caption || hit.id;
  element.append(score);
  if (hit.url) {
    const file = document.createElement("a");
    file.className = "meta file";
    file.href = hit.url;
    file.textContent = hit.name;
    element.append(file);
  }
  return element;
}

function render(answer) {
  const results = $("results");
  results.replaceChildren();
  for (const [modality, hits] of Object.entries(answer.results)) {
    const section = document.createElement("section");
    section.dataset.modality = modality;
    const title = document.createElement("h2");
    title.textContent = modality;
    const count = document.createElement("small");
    count.textContent = ` top ${hits.length} of ${info ? info.indexed[modality] : "?"}`;
    title.append(count);
    const grid = document.createElement("div");
    grid.className = modality === "audio" || modality === "text" ? "hits wide" : "hits";
    grid.append(...hits.map((hit) => card(modality, hit)));
    section.append(title, grid);
    results.append(section);
  }
  const query = answer.query.text !== undefined ? `“${answer.query.text}”` : answer.query.file;
  $("status").textContent = `${answer.query.modality} query ${query}`;
}

async function search(event) {
  event.preventDefault();
  showError("");
  const file = $("file").files[0];
  const text = $("text").value.trim();
  if (!file && !text) return showError("Type a phrase or choose a sound, image or clip.");
  if (file && info && file.size > info.max_upload_bytes) {
    return showError(`${file.name} is ${mebibytes(file.size)}; this server takes uploads up to `
      + `${mebibytes(info.max_upload_bytes)}.`);
  }
  const form = new FormData();
  form.append("k", $("k").value);
  if (file) form.append("file", file); else form.append("text", text);
  $("go").disabled = true;
  $("status").textContent = "searching…";
  try {
    const response = await fetch("/api/search", { method: "POST", body: form });
    let answer = null;
    try { answer = await response.json(); } catch { answer = null; }
    if (!response.ok) {
      const detail = answer && typeof answer.detail === "string" ? answer.detail : `${response.status} ${response.statusText}`;
      $("status").textContent = "";
      return showError(detail);
    }
    render(answer);
  } catch (error) {
    $("status").textContent = "";
    showError(`the server did not answer (${error.message}); is oneencoder serve still running?`);
  } finally {
    $("go").disabled = false;
  }
}

function wireDrop() {
  const drop = $("drop");
  for (const name of ["dragenter", "dragover"]) {
    drop.addEventListener(name, (event) => { event.preventDefault(); drop.classList.add("over"); });
  }
  for (const name of ["dragleave", "drop"]) drop.addEventListener(name, () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    if (event.dataTransfer.files.length) {
      $("file").files = event.dataTransfer.files;
      chosenFile($("file").files[0]);
    }
  });
}

document.addEventListener("DOMContentLoaded", () => {
  $("query").addEventListener("submit", search);
  $("file").addEventListener("change", () => chosenFile($("file").files[0]));
  $("text").addEventListener("input", () => {
    if ($("text").value) { $("file").value = ""; chosenFile(null); }
  });
  wireDrop();
  loadInfo().catch((error) => showError(`could not read the index's description: ${error.message}`));
});
