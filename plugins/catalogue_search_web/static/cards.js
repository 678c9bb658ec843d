// Result cards, the "why it matched" panel, and arrow-key navigation of the cards and the filter chips.

const FACETS = ["product_type", "brand"];

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

/** One card per hit. `actions.like(hit)` runs "more like this"; `actions.explain(hit)` (hybrid only)
 *  resolves to the API's explanation. */
export function renderCards(list, page, actions) {
  const cards = page.hits.map((hit, i) => {
    const li = el("li", "card");
    li.dataset.itemId = hit.item_id;
    li.tabIndex = i === 0 ? 0 : -1;
    li.setAttribute("aria-label", `${hit.rank}. ${hit.item_name}`);
    const img = el("img");
    img.src = hit.image_url;
    img.alt = hit.item_name;
    img.loading = "lazy";
    const body = el("div", "body");
    const sim = el("p", "similarity");
    sim.dataset.similarity = hit.similarity;
    sim.textContent = actions.hybrid
      ? `#${hit.rank} · fused score ${hit.score.toFixed(4)}`
      : `#${hit.rank} · similarity ${hit.similarity.toFixed(3)}`;
    const meta = el("div", "meta");
    for (const facet of FACETS) {
      if (!hit[facet]) continue;
      const tag = el("span", "tag", hit[facet]);
      tag.dataset.facet = facet;
      meta.append(tag);
    }
    body.append(el("p", "name", hit.item_name), sim, meta);
    if (hit.duplicates) {
      const dup = el("p", "duplicates", `+${hit.duplicates} more with the same picture`);
      dup.title = hit.duplicate_ids.join(", ");
      body.append(dup);
    }
    const buttons = el("div", "buttons");
    const more = el("button", "more", "More like this");
    more.type = "button";
    more.setAttribute("aria-label", `More like this: ${hit.item_name}`); // the visible words first (WCAG 2.5.3)
    more.addEventListener("click", () => actions.like(hit));
    buttons.append(more);
    if (actions.explain) buttons.append(whyButton(hit, body, actions.explain));
    body.append(buttons);
    li.append(img, body);
    return li;
  });
  list.replaceChildren(...cards);
}

function whyButton(hit, body, explain) {
  const button = el("button", "why", "Why this result?");
  button.type = "button";
  button.setAttribute("aria-label", `Why this result? ${hit.item_name}`);
  const panel = el("div", "why-panel");
  panel.id = `why-${hit.item_id}`;
  panel.hidden = true;
  button.setAttribute("aria-expanded", "false");
  button.setAttribute("aria-controls", panel.id);
  button.addEventListener("click", async () => {
    const open = button.getAttribute("aria-expanded") !== "true";
    button.setAttribute("aria-expanded", String(open));
    panel.hidden = !open;
    if (!open || panel.dataset.loaded) return;
    panel.textContent = "Looking it up…";
    try {
      showExplanation(panel, await explain(hit));
      panel.dataset.loaded = "1";
    } catch (err) {
      panel.textContent = err.message;
    }
  });
  body.append(panel);
  return button;
}

function showExplanation(panel, why) {
  const rows = why.lists.map((l) => {
    const li = el("li");
    li.dataset.list = l.list;
    li.dataset.rank = l.rank ?? "";
    let what;
    if (!l.used && l.list === "lexical" && l.weight > 0) what = "not used for a picture";
    else if (!l.used) what = "left out (weight 0)";
    else if (l.rank === null) what = `not in the first ${why.depth}`;
    else what = `rank ${l.rank} (+${l.contribution.toFixed(4)})`;
    li.textContent = `${l.label}: ${what}`;
    return li;
  });
  const list = el("ul");
  list.append(...rows);
  panel.replaceChildren(list, el("p", "", `Fused score ${why.score.toFixed(4)} = Σ weight / (${why.rank_constant} + rank)`));
}

/** Arrow keys, Home and End move the focus between `selector` items inside `container` (one tab stop:
 *  the focused item has tabindex 0). With `grid`, Up and Down move a row. */
export function rovingFocus(container, selector, { grid = false } = {}) {
  container.addEventListener("keydown", (event) => {
    const items = [...container.querySelectorAll(selector)];
    const current = items.indexOf(event.target);
    if (current < 0) return;
    const columns = grid ? columnsOf(items) : 1;
    const moves = {
      ArrowRight: current + 1, ArrowLeft: current - 1, Home: 0, End: items.length - 1,
      ArrowDown: grid ? current + columns : current + 1, ArrowUp: grid ? current - columns : current - 1,
    };
    if (!(event.key in moves)) {
      if (grid && event.key === "Enter" && event.target.matches(selector)) {
        event.target.querySelector("button")?.click();
      }
      return;
    }
    event.preventDefault();
    const next = items[Math.max(0, Math.min(items.length - 1, moves[event.key]))];
    for (const item of items) item.tabIndex = item === next ? 0 : -1;
    next.focus();
  });
}

function columnsOf(items) {
  if (items.length < 2) return 1;
  const top = items[0].offsetTop;
  const n = items.findIndex((item) => item.offsetTop !== top);
  return n < 0 ? items.length : n;
}
