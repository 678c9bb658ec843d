"""The CLI's output: hits as a table or JSON lines, facet values with their counts."""

from __future__ import annotations

import json

from catalogue_search.search.query import FACETS, FacetValue, Hit


def format_hits(hits: list[Hit]) -> str:
    """A readable table: rank, score, item name, item id, image path."""
    if not hits:
        return "(no hits)"
    name_width = min(60, max(9, *(len(h.item_name) for h in hits)))
    lines = [f"{'rank':>4}  {'score':>7}  {'item name':<{name_width}}  {'item id':<12}  image path"]
    for h in hits:
        name = h.item_name if len(h.item_name) <= name_width else h.item_name[: name_width - 1] + "…"
        folded = f"  (+{h.duplicates} with the same image: {', '.join(h.duplicate_ids)})" if h.duplicates else ""
        lines.append(f"{h.rank:>4}  {h.score:>7.4f}  {name:<{name_width}}  {h.item_id:<12}  {h.image_path}{folded}")
    return "\n".join(lines)


def hits_as_json_lines(hits: list[Hit]) -> str:
    """One JSON object per hit (with its cosine similarity), one per line."""
    return "\n".join(json.dumps(hit.as_dict(), ensure_ascii=False) for hit in hits)


def format_facet(facet: str, values: list[FacetValue], alias: str) -> str:
    """A facet's values and counts as a two-column table."""
    if not values:
        return f"(no {FACETS[facet]} in {alias})"
    width = max(len(facet), *(len(v.value) for v in values))
    return "\n".join([f"{facet:<{width}}  {'count':>7}"] + [f"{v.value:<{width}}  {v.count:>7}" for v in values])


def facet_as_json_lines(facet: str, values: list[FacetValue]) -> str:
    return "\n".join(json.dumps({facet: v.value, "count": v.count}, ensure_ascii=False) for v in values)
