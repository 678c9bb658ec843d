"""The read alias: which indices it serves, the atomic swap, and deleting an index that serves nothing.

Readers only ever see the alias, which moves to a new index in one atomic
`_aliases` call after the index passed validation.
"""

from __future__ import annotations

import logging
from typing import Any

from catalogue_search.errors import PermanentError

log = logging.getLogger(__name__)


def indices_for_alias(client, alias: str) -> list[dict[str, Any]]:
    """Indices this project created for `alias` (`<alias>-*` with `_meta.alias`), oldest first."""
    out = []
    found = client.indices.get(index=f"{alias}-*", expand_wildcards="open,closed", allow_no_indices=True)
    for name, info in found.items():
        meta = info.get("mappings", {}).get("_meta", {})
        if meta.get("alias") == alias:
            created = int(info["settings"]["index"]["creation_date"])
            out.append({"index": name, "created": created, "aliased": alias in info.get("aliases", {})})
    return sorted(out, key=lambda x: (x["created"], x["index"]))


def alias_targets(client, alias: str) -> list[str]:
    """The indices `alias` points at (none before the first publish)."""
    if client.indices.exists_alias(name=alias):
        return sorted(client.indices.get_alias(name=alias).keys())
    if client.indices.exists(index=alias):
        raise PermanentError(f"{alias!r} is a concrete index, not an alias: rename it before publishing")
    return []


def live_count(client, alias: str) -> int | None:
    """How many documents the alias serves now (None: the alias does not exist yet)."""
    if not alias_targets(client, alias):
        return None
    return int(client.count(index=alias)["count"])


def swap_alias(client, alias: str, index: str, logger: logging.Logger = log) -> list[str]:
    """Point `alias` at `index` and at nothing else, in one atomic `_aliases` call; return the old targets."""
    current = alias_targets(client, alias)
    actions: list[dict[str, Any]] = [{"remove": {"index": old, "alias": alias}} for old in current if old != index]
    actions.append({"add": {"index": index, "alias": alias}})
    client.indices.update_aliases(body={"actions": actions})
    logger.info("alias %s: %s -> %s", alias, ", ".join(current) or "(none)", index)
    return current


def delete_index(client, name: str, logger: logging.Logger = log) -> bool:
    """Delete an index that serves nothing (refuses one an alias points at)."""
    if not client.indices.exists(index=name):
        return False
    if client.indices.get_alias(index=name).get(name, {}).get("aliases"):
        raise PermanentError(f"index {name} is an alias target: it is never deleted")
    client.indices.delete(index=name)
    logger.info("deleted index %s", name)
    return True
