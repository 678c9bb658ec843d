"""The alias lifecycle: publish a validated index (shrink guard, retention), clean up, roll back.

Readers only ever see the alias; it moves in one atomic `_aliases` call. The
indices that served are recorded in the bucket (`state.served`): they are the
rollback targets and are never removed by a clean-up.
"""

from __future__ import annotations

import logging
from typing import Any

from catalogue_search import index, state
from catalogue_search.errors import PermanentError
from catalogue_search.ingest.plan import RunPlan
from catalogue_search.settings import Settings

log = logging.getLogger(__name__)


def served_indices(settings: Settings, s3, client, alias: str) -> set[str]:
    """Indices that serve or have served `alias` (recorded in the bucket, plus the alias's targets)."""
    indices = set(state.served(s3, settings, alias))
    if client is not None:
        indices.update(index.alias_targets(client, alias))
    return indices


def check_shrink(settings: Settings, client, plan: RunPlan, logger: logging.Logger = log) -> dict[str, Any]:
    """Refuse to publish an index much smaller than what the alias serves now (unless allowed for this run)."""
    new = int(client.count(index=plan.index)["count"])
    live = index.live_count(client, plan.alias)
    out = {"new_count": new, "live_count": live}
    if not live or new >= live:
        return out
    shrink = 100.0 * (live - new) / live
    out["shrink_percent"] = round(shrink, 2)
    if shrink <= settings.shrink_guard_percent:
        logger.info("catalogue shrinks by %.1f%% (%d -> %d): within the guard", shrink, live, new)
        return out
    if plan.allow_shrink:
        logger.warning("catalogue shrinks by %.1f%% (%d -> %d): allowed for this run (allow_shrink)", shrink, live, new)
        return out
    raise PermanentError(
        f"shrink guard: index {plan.index} holds {new} products, alias {plan.alias} serves {live} now; "
        f"publishing would shrink the catalogue by {shrink:.1f}%, more than the {settings.shrink_guard_percent}% "
        "allowed (CATSEARCH_SHRINK_GUARD_PERCENT). The alias stays where it is. If the shrink is intended, "
        'trigger the run again with {"allow_shrink": true}.'
    )


def publish(settings: Settings, s3, client, plan: RunPlan, logger: logging.Logger = log) -> dict[str, Any]:
    """Step 6: move the read alias to the validated index, record it as served, apply the retention.

    Refused (alias untouched) when the catalogue would shrink too much, when the
    alias moved since the run was planned, or when this run's index already served
    and was superseded (a cleared old run must not roll the catalogue back: use the
    rollback DAG).
    """
    targets = index.alias_targets(client, plan.alias)
    served = state.served(s3, settings, plan.alias)
    if targets != [plan.index]:
        if plan.index in served:
            raise PermanentError(
                f"index {plan.index} already served alias {plan.alias} and was superseded by {', '.join(targets)}: "
                "a rerun of an old run does not move the alias back (use the catalogue_rollback DAG)"
            )
        base = [plan.base_index] if plan.base_index else []
        if targets != base:
            raise PermanentError(
                f"alias {plan.alias} moved to {', '.join(targets) or '(none)'} after this run was planned on "
                f"{plan.base_index or '(none)'}: its catalogue is stale; trigger a new run"
            )
    guard = check_shrink(settings, client, plan, logger)
    previous = index.swap_alias(client, plan.alias, plan.index, logger=logger)
    served = [name for name in served if name != plan.index] + [plan.index]
    keep = served[-(settings.index_retention + 1) :]
    retired = [name for name in served if name not in keep]
    state.write_served(s3, settings, plan.alias, keep)
    for name in retired:
        index.delete_index(client, name, logger=logger)
        state.delete_index_state(s3, settings, plan.alias, name)
        logger.info("retention %d: removed the older served index %s", settings.index_retention, name)
    return {
        "alias": plan.alias,
        "index": plan.index,
        "previous": previous,
        "kept": keep[:-1],
        "deleted": retired,
        **guard,
    }


def clean_up(settings: Settings, s3, client, alias: str, logger: logging.Logger = log) -> dict[str, Any]:
    """Remove the indices of `alias` that never served (failed or refused runs, this one included).

    Runs whatever happened to the run. Lists only `<alias>-*`; never touches an
    index the alias points at or one recorded as served (the rollback targets).
    """
    keep = served_indices(settings, s3, client, alias)
    removed = []
    for info in index.indices_for_alias(client, alias):
        name = info["index"]
        if name in keep or info["aliased"]:
            continue
        index.delete_index(client, name, logger=logger)
        state.delete_index_state(s3, settings, alias, name)
        removed.append(name)
    logger.info(
        "clean-up of alias %s: removed %s; kept the served %s",
        alias,
        ", ".join(removed) or "nothing",
        ", ".join(sorted(keep)) or "none",
    )
    return {"alias": alias, "removed": removed, "kept": sorted(keep)}


def rollback(settings: Settings, s3, client, alias: str, logger: logging.Logger = log) -> dict[str, Any]:
    """Move `alias` back to the previous served index in one atomic `_aliases` call.

    The index rolled back from is no longer a rollback target: the next run's
    clean-up removes it. Its per-shard state goes with it; the previous index's
    state becomes the published one again.
    """
    targets = index.alias_targets(client, alias)
    served = state.served(s3, settings, alias)
    current = targets[0] if targets else None
    earlier = served[: served.index(current)] if current in served else [n for n in served if n != current]
    previous = next((n for n in reversed(earlier) if client.indices.exists(index=n)), None)
    if previous is None:
        raise PermanentError(
            f"alias {alias} serves {current or '(nothing)'} and has no earlier served index to roll back to "
            f"(served: {', '.join(served) or 'none recorded'})"
        )
    index.swap_alias(client, alias, previous, logger=logger)
    state.write_served(s3, settings, alias, served[: served.index(previous) + 1])
    logger.info("rolled back alias %s: %s -> %s", alias, current, previous)
    return {"alias": alias, "from": current, "to": previous}
