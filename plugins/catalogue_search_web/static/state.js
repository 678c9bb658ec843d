// The search state and where it lives: the URL (query, mode, filters, page, "like" item, fold, weights),
// this browser's local storage (the user's mode, fold and weights), and the history (back/forward).

export const PAGE_SIZE = 12;
export const MODES = ["image", "name", "hybrid"];
export const WEIGHTS = ["lexical_weight", "name_weight", "image_weight"];
const URL_WEIGHTS = { lexical_weight: "lw", name_weight: "nw", image_weight: "iw" };
const FILTERS = { product_type: "type", brand: "brand" };
const STORE = "catalogue-search.preferences";

export function defaultWeights() {
  return Object.fromEntries(WEIGHTS.map((w) => [w, 1]));
}

/** A fresh state: nothing searched, the given mode. */
export function emptyState(mode) {
  return {
    kind: null, q: "", itemId: null, itemName: null, file: null, fileId: null,
    mode, fold: false, weights: defaultWeights(), filters: {}, page: 1,
  };
}

/** The user's saved choices (mode, fold, weights), or {} when none or storage is blocked. */
export function loadPreferences() {
  try {
    const saved = JSON.parse(localStorage.getItem(STORE) || "{}");
    const out = {};
    if (MODES.includes(saved.mode)) out.mode = saved.mode;
    if (typeof saved.fold === "boolean") out.fold = saved.fold;
    if (saved.weights && WEIGHTS.every((w) => validWeight(saved.weights[w]))) out.weights = saved.weights;
    return out;
  } catch (_) {
    return {};
  }
}

export function savePreferences(state) {
  try {
    localStorage.setItem(STORE, JSON.stringify({ mode: state.mode, fold: state.fold, weights: state.weights }));
  } catch (_) { /* private mode: the choice lasts for this page only */ }
}

function validWeight(v) {
  return typeof v === "number" && Number.isFinite(v) && v >= 0 && v <= 10;
}

/** The state a URL describes, on top of `base` (preferences and defaults). An image search cannot be in a
 *  URL; `history.state` brings its file back within this tab. */
export function stateFromUrl(search, base, historyState, files) {
  const params = new URLSearchParams(search);
  const state = { ...base, weights: { ...base.weights }, filters: {} };
  if (MODES.includes(params.get("mode"))) state.mode = params.get("mode");
  if (params.has("fold")) state.fold = params.get("fold") === "1";
  for (const [name, key] of Object.entries(URL_WEIGHTS)) {
    const v = Number(params.get(key));
    if (params.has(key) && validWeight(v)) state.weights[name] = v;
  }
  for (const [name, key] of Object.entries(FILTERS)) {
    if (params.get(key)) state.filters[name] = params.get(key);
  }
  const page = parseInt(params.get("page") || "1", 10);
  state.page = Number.isFinite(page) && page >= 1 && page <= 1000 ? page : 1;
  const fileId = historyState && historyState.fileId;
  if (params.get("like")) {
    Object.assign(state, { kind: "similar", itemId: params.get("like"), itemName: historyState?.itemName || null });
  } else if (params.get("q")) {
    Object.assign(state, { kind: "text", q: params.get("q") });
  } else if (fileId && files.has(fileId)) {
    Object.assign(state, { kind: "image", fileId, file: files.get(fileId) });
  }
  return state;
}

/** The query string of a state (only what differs from the defaults, besides the mode). */
export function urlFor(state) {
  const params = new URLSearchParams();
  if (state.kind === "text") params.set("q", state.q);
  if (state.kind === "similar") params.set("like", state.itemId);
  params.set("mode", state.mode);
  if (state.fold) params.set("fold", "1");
  for (const [name, key] of Object.entries(URL_WEIGHTS)) {
    if (state.weights[name] !== 1) params.set(key, String(state.weights[name]));
  }
  for (const [name, key] of Object.entries(FILTERS)) {
    if (state.filters[name]) params.set(key, state.filters[name]);
  }
  if (state.page > 1) params.set("page", String(state.page));
  return `?${params}`;
}

/** Record the state in the history: a new entry for a new search, the same entry otherwise. */
export function remember(state, { replace = false } = {}) {
  const url = urlFor(state);
  const entry = { fileId: state.fileId, itemName: state.itemName };
  if (replace || url === location.search) history.replaceState(entry, "", url);
  else history.pushState(entry, "", url);
  mirrorToAirflow();
}

/** Inside Airflow's UI the page is an iframe under /plugin/<route>/...: keep the address bar in step, so a
 *  reload or a copied link of the Airflow page opens this search (Airflow loads that path into the iframe). */
export function mirrorToAirflow() {
  try {
    if (window.parent === window) return;
    const top = window.parent.location;
    const base = top.pathname.match(/^(.*?\/plugin\/[^/]+)/);
    if (!base) return;
    const wanted = `${base[1]}${location.pathname}${location.search}`;
    if (`${top.pathname}${top.search}` !== wanted) {
      window.parent.history.replaceState(window.parent.history.state, "", wanted);
    }
  } catch (_) { /* another origin: nothing to mirror */ }
}

/** The API's query parameters for a state. */
export function apiParams(state) {
  const params = { k: PAGE_SIZE, offset: (state.page - 1) * PAGE_SIZE, ...state.filters };
  if (state.kind !== "similar") {
    params.mode = state.mode;
    if (state.fold) params.fold = "true";
    if (state.mode === "hybrid") {
      for (const w of WEIGHTS) if (state.weights[w] !== 1) params[w] = state.weights[w];
    }
  }
  return params;
}
