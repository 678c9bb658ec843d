"""Runs that cost what changed: what the run's index would hold, compared with what the served index holds.

A run's **fingerprint** is what its index holds: the artifact version, a digest
of the mapping and settings (`index_body`), and one digest per product (the
indexed fields, the ETag its image vector was encoded from, whether its title
has a vector). It is recorded beside the index's catalogue state
(`state.write_catalogue`). `choose_build`, once the encode steps are done,
compares the run's with the served index's and picks the build:

- **noop**: the same products, artifact and mapping: nothing is built or
  published, the alias, the served index and the retention stay as they are;
- **incremental**: only products changed (added, updated or removed), by at
  most `CATSEARCH_INCREMENTAL_MAX_CHANGE_PERCENT` of the served catalogue: the
  run's index is a `_clone` of the served one, the removed products are deleted
  and the load parts upsert the added and updated ones only;
- **full**: a new artifact version, a new mapping, no served index (or one with
  no recorded fingerprint), a larger change, or the Param `full_rebuild`.

The decision is written to the run's prefix (`build.json`, and `delta.json.gz`
with the ids), where the load and the duplicate report read it.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
from typing import Any

from catalogue_search import encoding, index, state
from catalogue_search.contract import GZIP, JSON
from catalogue_search.ingest.lifecycle import served_indices
from catalogue_search.ingest.plan import RunPlan
from catalogue_search.ingest.steps import products
from catalogue_search.s3util import get_or_none, put_bytes
from catalogue_search.settings import Settings

log = logging.getLogger(__name__)

NOOP, INCREMENTAL, FULL = "noop", "incremental", "full"
FORMAT = 1


def mapping_digest(settings: Settings) -> str:
    """A digest of the index's settings and mapping as this code writes them (not its `_meta`)."""
    body = index.index_body(settings, alias="", dimension=0, run_key="")
    body["mappings"].pop("_meta")
    return hashlib.sha1(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]


def fingerprint(settings: Settings, s3, plan: RunPlan) -> dict[str, Any]:
    """What the run's index holds once loaded: every product that has an image vector, as digests."""
    image_store, title_store = encoding.Store(settings, encoding.IMAGE), encoding.Store(settings, encoding.TITLE)
    version = encoding.read_plan(s3, image_store, plan.prefix).version
    images = encoding.Catalogue.load(s3, image_store, version)
    titles = encoding.Catalogue.load(s3, title_store, version)
    digests = {}
    for product in products(settings, s3, plan):
        encoded = images.encoded.get(product["path"])
        if encoded is None:
            continue  # no image vector: not in the index (load_index drops it too)
        fields = index.document(product, [], settings.model_name)
        fields.pop(index.VECTOR_FIELD)
        title = product.get("item_name")
        titled = isinstance(title, str) and encoding.title_id(title) in titles.encoded
        line = json.dumps([fields, encoded[1], titled], sort_keys=True, ensure_ascii=False)
        digests[product["item_id"]] = hashlib.sha1(line.encode()).hexdigest()[:20]
    return {
        "format": FORMAT,
        "artifact_version": version,
        "mapping": mapping_digest(settings),
        "prefix": plan.prefix,
        "products": digests,
    }


def build_key(plan: RunPlan) -> str:
    return f"{plan.prefix}build.json"


def delta_key(plan: RunPlan) -> str:
    return f"{plan.prefix}delta.json.gz"


def read_build(settings: Settings, s3, plan: RunPlan) -> dict[str, Any] | None:
    """The run's build decision (None: `choose_build` did not run, e.g. a notebook loading directly: full)."""
    raw = get_or_none(s3, settings.bucket, build_key(plan))
    return None if raw is None else json.loads(raw)


def read_delta(settings: Settings, s3, plan: RunPlan) -> dict[str, list[str]]:
    """{"upsert": item ids added or updated, "delete": item ids removed} of an incremental run."""
    raw = get_or_none(s3, settings.bucket, delta_key(plan))
    return {"upsert": [], "delete": []} if raw is None else json.loads(gzip.decompress(raw))


def _decide(settings: Settings, s3, plan: RunPlan, current: dict, full_rebuild: bool) -> tuple[dict, dict]:
    """(the decision, the delta ids) of a run whose index would hold `current`."""
    base = plan.base_index
    decision: dict[str, Any] = {"base_index": base, "products": len(current["products"])}
    if full_rebuild:
        return {**decision, "mode": FULL, "reason": "the full_rebuild Param"}, {}
    if base is None:
        return {**decision, "mode": FULL, "reason": "the alias serves no index yet"}, {}
    served = state.read_catalogue(s3, settings, plan.alias, base)
    if served is None or served.get("format") != FORMAT:
        return {**decision, "mode": FULL, "reason": f"the served index {base} has no recorded fingerprint"}, {}
    if served["artifact_version"] != current["artifact_version"]:
        reason = f"a new artifact version ({served['artifact_version']} -> {current['artifact_version']})"
        return {**decision, "mode": FULL, "reason": reason}, {}
    if served["mapping"] != current["mapping"]:
        return {**decision, "mode": FULL, "reason": f"a new mapping ({served['mapping']} -> {current['mapping']})"}, {}
    old, new = served["products"], current["products"]
    added = sorted(set(new) - set(old))
    updated = sorted(i for i in set(new) & set(old) if new[i] != old[i])
    removed = sorted(set(old) - set(new))
    changed = len(added) + len(updated) + len(removed)
    percent = 100.0 * changed / max(1, len(old))
    decision.update(
        added=len(added),
        updated=len(updated),
        removed=len(removed),
        change_percent=round(percent, 3),
        base_prefix=served.get("prefix"),
    )
    if not changed:
        return {**decision, "mode": NOOP, "reason": "nothing changed"}, {}
    if percent > settings.incremental_max_change_percent:
        reason = f"{percent:.1f}% of the products changed, more than CATSEARCH_INCREMENTAL_MAX_CHANGE_PERCENT"
        return {**decision, "mode": FULL, "reason": f"{reason}={settings.incremental_max_change_percent}"}, {}
    return {**decision, "mode": INCREMENTAL, "reason": "only products changed"}, {
        "upsert": added + updated,
        "delete": removed,
    }


def choose_build(
    settings: Settings, s3, client, plan: RunPlan, *, full_rebuild: bool = False, logger: logging.Logger = log
) -> dict[str, Any]:
    """Step 4a: the build this run needs (`noop`, `incremental`, `full`), recorded for the load;
    an incremental run's index is cloned from the served one here and its removed products deleted."""
    current = fingerprint(settings, s3, plan)
    decision, delta = _decide(settings, s3, plan, current, full_rebuild)
    decision["index"] = plan.index
    own_served = plan.index in served_indices(settings, s3, client, plan.alias)
    if decision["mode"] == NOOP:
        if not own_served:  # the state record_copies wrote for an index that will never exist
            state.delete_index_state(s3, settings, plan.alias, plan.index)
        logger.info(
            "nothing changed since %s (%d products, artifact %s, mapping %s): no index is built, nothing is "
            "published; alias %s stays on %s",
            plan.base_index,
            len(current["products"]),
            current["artifact_version"],
            current["mapping"],
            plan.alias,
            plan.base_index,
        )
    elif not own_served:
        state.write_catalogue(s3, settings, plan.alias, plan.index, current)
    if decision["mode"] == INCREMENTAL and not own_served:
        if client.indices.exists(index=plan.index):  # an earlier attempt's clone: start again
            index.delete_index(client, plan.index, logger=logger)
        decision["clone_s"] = round(index.clone_index(client, plan.base_index, plan.index, logger=logger), 2)
        meta = index.index_body(settings, alias=plan.alias, dimension=0, run_key=plan.run_key)["mappings"]["_meta"]
        index.set_meta(
            client,
            plan.index,
            {**meta, "artifact_version": current["artifact_version"], "built_from": plan.base_index},
        )
        decision["deleted"] = index.delete_documents(client, plan.index, delta["delete"])
        body = gzip.compress(json.dumps(delta).encode(), mtime=0)
        put_bytes(s3, settings.bucket, delta_key(plan), body, GZIP)
    if decision["mode"] != NOOP:
        logger.info(
            "build: %s (%s)%s",
            decision["mode"],
            decision["reason"],
            ""
            if decision["mode"] == FULL
            else f": {decision['added']} added, {decision['updated']} updated, {decision['removed']} removed, "
            f"{plan.index} cloned from {plan.base_index} in {decision['clone_s']} s",
        )
    put_bytes(s3, settings.bucket, build_key(plan), json.dumps(decision).encode(), JSON)
    return decision
