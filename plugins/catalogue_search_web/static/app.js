// The catalogue search page: plain JS, no build step. Talks to the app's JSON API (same origin, the
// Airflow login cookie goes along).
"use strict";

const PAGE_SIZE = 12;
const FACETS = ["product_type", "brand"];
const state = { kind: null, q: "", file: null, itemId: null, itemName: null, offset: 0, filters: {} };

const $ = (id) => document.getElementById(id);
const els = {
  form: $("search-form"), q: $("q"), file: $("file"), upload: $("upload-button"), results: $("results"),
  status: $("status"), error: $("error"), pager: $("pager"), prev: $("prev"), next: $("next"),
  pageInfo: $("page-info"), overlay: $("drop-overlay"),
};

function apiUrl(path, params) {
  const url = new URL(path, document.baseURI);
  for (const [key, value] of Object.entries(params || {})) {
    if (value !== null && value !== undefined && value !== "") url.searchParams.set(key, value);
  }
  return url;
}

async function api(path, params, init) {
  const response = await fetch(apiUrl(path, params), { credentials: "same-origin", ...init });
  let body = null;
  try { body = await response.json(); } catch (_) { /* not JSON */ }
  if (!response.ok) {
    if (response.status === 401 || response.status === 403) {
      throw new Error("Your Airflow login is missing or has expired: log in again and reload this page.");
    }
    const detail = body && (body.detail || body.error);
    throw new Error(typeof detail === "string" ? detail : `request failed (HTTP ${response.status})`);
  }
  return body;
}

function showError(message) {
  els.error.textContent = message;
  els.error.hidden = !message;
}

function queryParams() {
  return { k: PAGE_SIZE, offset: state.offset, ...state.filters };
}

async function runQuery() {
  if (!state.kind) return;
  showError("");
  els.status.textContent = "Searching…";
  try {
    let page;
    if (state.kind === "text") {
      page = await api("api/search", { q: state.q, ...queryParams() });
    } else if (state.kind === "image") {
      const body = new FormData();
      body.append("image", state.file, state.file.name || "image");
      page = await api("api/search/image", queryParams(), { method: "POST", body });
    } else {
      page = await api(`api/products/${encodeURIComponent(state.itemId)}/similar`, queryParams());
    }
    render(page);
  } catch (err) {
    els.status.textContent = "";
    els.results.replaceChildren();
    els.pager.hidden = true;
    showError(err.message);
  }
  loadFacets();
}

function describe(page) {
  const filters = Object.entries(state.filters).map(([k, v]) => `${k.replace("_", " ")} ${v}`).join(", ");
  const what = page.kind === "text" ? `“${page.query}”`
    : page.kind === "image" ? `the image ${page.query || ""}`.trim()
    : `products like ${state.itemName ? `“${state.itemName}”` : page.query}`;
  const range = page.hits.length ? `results ${page.offset + 1}–${page.offset + page.hits.length}` : "no results";
  return `${what}: ${range}${filters ? ` (${filters})` : ""}`;
}

function render(page) {
  els.status.textContent = describe(page);
  const cards = page.hits.map((hit) => {
    const li = document.createElement("li");
    li.className = "card";
    li.dataset.itemId = hit.item_id;
    const img = document.createElement("img");
    img.src = hit.image_url;
    img.alt = hit.item_name;
    img.loading = "lazy";
    const body = document.createElement("div");
    body.className = "body";
    const name = document.createElement("p");
    name.className = "name";
    name.textContent = hit.item_name;
    const sim = document.createElement("p");
    sim.className = "similarity";
    sim.dataset.similarity = hit.similarity;
    sim.textContent = `#${hit.rank} · similarity ${hit.similarity.toFixed(3)}`;
    const meta = document.createElement("div");
    meta.className = "meta";
    for (const facet of FACETS) {
      if (!hit[facet]) continue;
      const tag = document.createElement("span");
      tag.className = "tag";
      tag.dataset.facet = facet;
      tag.textContent = hit[facet];
      meta.append(tag);
    }
    const more = document.createElement("button");
    more.type = "button";
    more.className = "more";
    more.textContent = "More like this";
    more.setAttribute("aria-label", `More like ${hit.item_name}`);
    more.addEventListener("click", () => {
      Object.assign(state, { kind: "similar", itemId: hit.item_id, itemName: hit.item_name, offset: 0 });
      runQuery().then(() => els.results.querySelector("button.more")?.focus());
    });
    body.append(name, sim, meta, more);
    li.append(img, body);
    return li;
  });
  els.results.replaceChildren(...cards);
  els.pager.hidden = page.prev_offset === null && page.next_offset === null;
  els.prev.disabled = page.prev_offset === null;
  els.next.disabled = page.next_offset === null;
  els.prev.onclick = () => { state.offset = page.prev_offset; runQuery(); };
  els.next.onclick = () => { state.offset = page.next_offset; runQuery(); };
  els.pageInfo.textContent = `page ${Math.floor(page.offset / page.k) + 1}`;
}

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
    const focused = document.activeElement?.dataset?.value;
    const chips = facets[facet].map(({ value, count }) => {
      const chip = document.createElement("button");
      chip.type = "button";
      chip.className = "chip";
      chip.dataset.facet = facet;
      chip.dataset.value = value;
      const active = (state.filters[facet] || "").toLowerCase() === value.toLowerCase();
      chip.setAttribute("aria-pressed", String(active));
      chip.append(value);
      const badge = document.createElement("span");
      badge.className = "count";
      badge.textContent = count;
      chip.append(badge);
      chip.addEventListener("click", () => {
        if (active) delete state.filters[facet]; else state.filters[facet] = value;
        state.offset = 0;
        if (state.kind) runQuery(); else loadFacets();
      });
      return chip;
    });
    box.replaceChildren(...chips);
    if (focused) box.querySelector(`[data-value="${CSS.escape(focused)}"]`)?.focus();
  }
}

function searchImage(file) {
  if (!file) return;
  if (file.type && !file.type.startsWith("image/")) {
    showError(`${file.name} is not an image`);
    return;
  }
  els.q.value = "";
  Object.assign(state, { kind: "image", file, offset: 0 });
  runQuery();
}

els.form.addEventListener("submit", (event) => {
  event.preventDefault();
  Object.assign(state, { kind: "text", q: els.q.value, offset: 0 });
  runQuery();
});
els.upload.addEventListener("click", () => els.file.click());
els.file.addEventListener("change", () => { searchImage(els.file.files[0]); els.file.value = ""; });

let dragDepth = 0;
document.addEventListener("dragenter", (event) => {
  if (![...(event.dataTransfer?.types || [])].includes("Files")) return;
  dragDepth += 1;
  els.overlay.hidden = false;
});
document.addEventListener("dragleave", () => {
  dragDepth = Math.max(0, dragDepth - 1);
  if (!dragDepth) els.overlay.hidden = true;
});
document.addEventListener("dragover", (event) => event.preventDefault());
document.addEventListener("drop", (event) => {
  event.preventDefault();
  dragDepth = 0;
  els.overlay.hidden = true;
  searchImage(event.dataTransfer?.files?.[0]);
});
document.addEventListener("keydown", (event) => {
  const typing = ["INPUT", "TEXTAREA"].includes(document.activeElement?.tagName);
  if (event.key === "/" && !typing) { event.preventDefault(); els.q.focus(); }
  if (event.key === "Escape" && !els.overlay.hidden) { els.overlay.hidden = true; dragDepth = 0; }
});

loadFacets();
els.q.focus();
