// The catalogue search page: plain JS modules, no build step. Talks to the app's JSON API (same origin, the
// Airflow login cookie goes along). state.js keeps the search in the URL, messages.js says things plainly,
// cards.js draws the results.
import { renderCards, rovingFocus } from "./cards.js";
import {
  MODE_NAMES, NOT_AN_IMAGE, OFFLINE, WEIGHTS_ALL_ZERO, modelLine, sentenceFor, truncate,
} from "./messages.js";
import {
  WEIGHTS, apiParams, defaultWeights, emptyState, loadPreferences, mirrorToAirflow,
  remember, savePreferences, stateFromUrl,
} from "./state.js";

const FACETS = ["product_type", "brand"];
const FALLBACK_MODE = "hybrid"; // when /api/status cannot be read; the server's default otherwise
const QUERY_SHOWN = 60; // characters of a query the status line shows

const $ = (id) => document.getElementById(id);
const els = {
  form: $("search-form"), q: $("q"), file: $("file"), upload: $("upload-button"), results: $("results"),
  status: $("status"), error: $("error"), pager: $("pager"), prev: $("prev"), next: $("next"),
  pageInfo: $("page-info"), overlay: $("drop-overlay"), fold: $("fold"), weights: $("weights"),
  modelLine: $("model-line"), warmup: $("warmup"), preview: $("query-image"), thumb: $("query-thumb"),
  thumbName: $("query-name"), clearImage: $("clear-image"),
};
const files = new Map(); // fileId -> File: image searches in this tab's history
let server = null; // the last /api/status
let state = emptyState(FALLBACK_MODE);
let running = 0; // the latest search; an older answer that arrives late is dropped

class ApiError extends Error {}

function apiUrl(path, params) {
  const url = new URL(path, document.baseURI);
  for (const [key, value] of Object.entries(params || {})) {
    if (value !== null && value !== undefined && value !== "") url.searchParams.set(key, value);
  }
  return url;
}

async function api(path, params, init) {
  let response;
  try {
    response = await fetch(apiUrl(path, params), { credentials: "same-origin", ...init });
  } catch (_) {
    throw new ApiError(OFFLINE);
  }
  let body = null;
  try { body = await response.json(); } catch (_) { /* not JSON */ }
  if (!response.ok) throw new ApiError(sentenceFor(response.status, body));
  return body;
}

function showError(message) {
  els.error.textContent = message || "";
  els.error.hidden = !message;
}

// --- the controls -------------------------------------------------------------------------------------
function showControls() {
  for (const radio of document.querySelectorAll("input[name=mode]")) radio.checked = radio.value === state.mode;
  els.fold.checked = state.fold;
  for (const w of WEIGHTS) els.weights.elements[w].value = state.weights[w];
  els.weights.disabled = state.mode !== "hybrid";
  els.q.value = state.kind === "text" ? state.q : "";
  els.modelLine.textContent = modelLine(server, state.mode);
  showPreview();
}

function showPreview() {
  const file = state.kind === "image" ? state.file : null;
  if (els.thumb.dataset.src) URL.revokeObjectURL(els.thumb.dataset.src);
  els.preview.hidden = !file;
  if (!file) { els.thumb.removeAttribute("src"); delete els.thumb.dataset.src; return; }
  els.thumb.dataset.src = els.thumb.src = URL.createObjectURL(file);
  els.thumb.alt = `Your picture, ${truncate(file.name || "image", 60)}`;
  els.thumbName.textContent = `Your picture: ${truncate(file.name || "image", 40)}`;
}

/** A new search (or new options): page 1 unless told, a new history entry, then run it. */
function search(changes, { keepPage = false } = {}) {
  state = { ...state, ...changes };
  if (!keepPage) state.page = 1;
  showControls();
  remember(state);
  runQuery();
}

// --- running a search -----------------------------------------------------------------------------------
async function runQuery() {
  const mine = ++running;
  showError("");
  if (!state.kind) {
    els.status.textContent = "";
    els.results.replaceChildren();
    els.pager.hidden = true;
    loadFacets();
    return;
  }
  if (state.mode === "hybrid" && WEIGHTS.every((w) => !state.weights[w]) && state.kind !== "similar") {
    failed(WEIGHTS_ALL_ZERO);
    return;
  }
  els.status.textContent = warming() ? "Searching… the model is still warming up, the first search waits for it."
    : "Searching…";
  try {
    const page = await fetchPage();
    if (mine !== running) return;
    render(page);
  } catch (err) {
    if (mine !== running) return;
    failed(err.message);
  }
  loadFacets();
}

function fetchPage() {
  const params = apiParams(state);
  if (state.kind === "text") return api("api/search", { q: state.q, ...params });
  if (state.kind === "image") {
    const body = new FormData();
    body.append("image", state.file, state.file.name || "image");
    return api("api/search/image", params, { method: "POST", body });
  }
  return api(`api/products/${encodeURIComponent(state.itemId)}/similar`, params);
}

function failed(message) {
  els.status.textContent = "";
  els.results.replaceChildren();
  els.prev.disabled = els.next.disabled = true; // the pager stays where it was, but leads nowhere
  showError(message);
}

function describe(page) {
  const filters = Object.entries(state.filters).map(([k, v]) => `${k.replace("_", " ")} ${v}`).join(", ");
  const what = state.kind === "text" ? `“${truncate(state.q, QUERY_SHOWN)}”`
    : state.kind === "image" ? `the picture ${truncate(page.query || "", 40)}`.trim()
    : `products like ${state.itemName ? `“${truncate(state.itemName, QUERY_SHOWN)}”` : page.query}`;
  const how = state.kind === "similar" ? "" : ` in ${MODE_NAMES[state.mode]} mode`;
  const range = page.hits.length ? `results ${page.offset + 1}–${page.offset + page.hits.length}` : "no results";
  return `${what}${how}: ${range}${filters ? ` (${filters})` : ""}`;
}

function render(page) {
  els.status.textContent = describe(page);
  els.status.title = state.kind === "text" && state.q.length > QUERY_SHOWN ? state.q : "";
  const hybrid = state.mode === "hybrid" && state.kind !== "similar";
  const focusWasHere = els.results.contains(document.activeElement);
  renderCards(els.results, page, {
    hybrid,
    like: (hit) => search({ kind: "similar", itemId: hit.item_id, itemName: hit.item_name, file: null, fileId: null }),
    explain: hybrid ? explainFor(state, page) : null,
  });
  if (focusWasHere) els.results.querySelector(".card")?.focus(); // "more like this" from the keyboard
  const shown = page.hits.length > 0 || page.offset > 0;
  els.pager.hidden = !shown;
  els.prev.disabled = page.prev_offset === null;
  els.next.disabled = page.next_offset === null;
  els.pageInfo.textContent = `Page ${state.page}`;
}

function explainFor(searched, page) {
  const params = { ...apiParams(searched), depth: page.offset + page.k };
  delete params.k; delete params.offset; delete params.mode; delete params.fold;
  return (hit) => {
    if (searched.kind === "text") return api("api/explain", { ...params, q: searched.q, item_id: hit.item_id });
    const body = new FormData();
    body.append("image", searched.file, searched.file.name || "image");
    return api("api/explain/image", { ...params, item_id: hit.item_id }, { method: "POST", body });
  };
}

// --- filters -------------------------------------------------------------------------------------------
async function loadFacets() {
  let facets;
  try {
    facets = await api("api/facets", state.filters);
  } catch (err) {
    if (!state.kind) showError(err.message);
    return;
  }
  for (const facet of FACETS) {
    const box = document.querySelector(`.facet[data-facet="${facet}"] .chips`);
    const focused = box.contains(document.activeElement) ? document.activeElement.dataset.value : null;
    const chips = facets[facet].map(({ value, count }) => chip(facet, value, count));
    box.replaceChildren(...chips);
    const stop = chips.find((c) => c.getAttribute("aria-pressed") === "true") || chips[0];
    if (stop) stop.tabIndex = 0;
    if (focused) box.querySelector(`[data-value="${CSS.escape(focused)}"]`)?.focus();
  }
}

function chip(facet, value, count) {
  const button = document.createElement("button");
  button.type = "button";
  button.className = "chip";
  button.tabIndex = -1;
  button.dataset.facet = facet;
  button.dataset.value = value;
  const active = (state.filters[facet] || "").toLowerCase() === value.toLowerCase();
  button.setAttribute("aria-pressed", String(active));
  button.append(value);
  const badge = document.createElement("span");
  badge.className = "count";
  badge.textContent = count;
  button.append(badge);
  button.addEventListener("click", () => {
    const filters = { ...state.filters };
    if (active) delete filters[facet]; else filters[facet] = value;
    search({ filters });
  });
  return button;
}

// --- the model's warm-up and the index's model and quality ---------------------------------------------------
function warming() {
  return server?.warmup?.state === "warming";
}

async function loadStatus() {
  try {
    server = await api("api/status");
  } catch (_) {
    server = null;
  }
  els.warmup.hidden = !warming();
  if (warming()) {
    els.warmup.textContent = `Warming up the model… (${Math.round(server.warmup.seconds || 0)} s)`;
    setTimeout(loadStatus, 1000);
  }
  els.modelLine.textContent = modelLine(server, state.mode);
  return server;
}

// --- images: the file picker, drag and drop --------------------------------------------------------------------
function searchImage(file) {
  if (!file) return;
  if (file.type && !file.type.startsWith("image/")) {
    showError(NOT_AN_IMAGE(file.name));
    return;
  }
  const fileId = `f${files.size + 1}-${Date.now()}`;
  files.set(fileId, file);
  search({ kind: "image", file, fileId, q: "", itemId: null, itemName: null });
}

function wireInputs() {
  els.form.addEventListener("submit", (event) => {
    event.preventDefault();
    search({ kind: "text", q: els.q.value, file: null, fileId: null, itemId: null, itemName: null });
  });
  els.upload.addEventListener("click", () => els.file.click());
  els.file.addEventListener("change", () => { searchImage(els.file.files[0]); els.file.value = ""; });
  els.clearImage.addEventListener("click", () => {
    search({ kind: null, file: null, fileId: null });
    els.q.focus();
  });
  for (const radio of document.querySelectorAll("input[name=mode]")) {
    radio.addEventListener("change", () => {
      state.mode = radio.value;
      savePreferences(state);
      if (state.kind) search({}); else { showControls(); remember(state, { replace: true }); }
    });
  }
  els.fold.addEventListener("change", () => {
    state.fold = els.fold.checked;
    savePreferences(state);
    if (state.kind) search({}); else remember(state, { replace: true });
  });
  els.weights.addEventListener("change", () => {
    const weights = Object.fromEntries(WEIGHTS.map((w) => {
      const v = Number(els.weights.elements[w].value);
      return [w, Number.isFinite(v) && v >= 0 && v <= 10 ? v : 1];
    }));
    state.weights = weights;
    savePreferences(state);
    if (state.kind && state.mode === "hybrid") search({}); else remember(state, { replace: true });
  });
  $("weights-reset").addEventListener("click", () => {
    state.weights = defaultWeights();
    savePreferences(state);
    showControls();
    if (state.kind && state.mode === "hybrid") search({}); else remember(state, { replace: true });
  });
  els.prev.addEventListener("click", () => search({ page: Math.max(1, state.page - 1) }, { keepPage: true }));
  els.next.addEventListener("click", () => search({ page: state.page + 1 }, { keepPage: true }));
}

function wireDragAndDrop() {
  let depth = 0;
  const hasFiles = (event) => [...(event.dataTransfer?.types || [])].includes("Files");
  document.addEventListener("dragenter", (event) => {
    if (!hasFiles(event)) return;
    depth += 1;
    els.overlay.hidden = false;
  });
  document.addEventListener("dragleave", () => {
    depth = Math.max(0, depth - 1);
    if (!depth) els.overlay.hidden = true;
  });
  document.addEventListener("dragover", (event) => event.preventDefault());
  document.addEventListener("drop", (event) => {
    event.preventDefault();
    depth = 0;
    els.overlay.hidden = true;
    searchImage(event.dataTransfer?.files?.[0]);
  });
  document.addEventListener("keydown", (event) => {
    const typing = ["INPUT", "TEXTAREA"].includes(document.activeElement?.tagName);
    if (event.key === "/" && !typing) { event.preventDefault(); els.q.focus(); }
    if (event.key === "Escape" && !els.overlay.hidden) { els.overlay.hidden = true; depth = 0; }
  });
}

// --- start ----------------------------------------------------------------------------------------------------
function fromUrl() {
  const prefs = loadPreferences();
  const base = { ...emptyState(server?.default_mode || FALLBACK_MODE), ...prefs };
  state = stateFromUrl(location.search, base, history.state, files);
  showControls();
}

async function start() {
  wireInputs();
  wireDragAndDrop();
  rovingFocus(els.results, ".card", { grid: true });
  for (const box of document.querySelectorAll(".chips")) rovingFocus(box, ".chip");
  window.addEventListener("popstate", () => { fromUrl(); mirrorToAirflow(); runQuery(); });
  await loadStatus();
  fromUrl();
  remember(state, { replace: true });
  runQuery();
  if (!state.kind) els.q.focus();
}

start();
