"""`./dev eval`: the search quality of the index being served, as the ingestion run measured it.

./dev eval                        the table of the index behind the alias (its `_meta`)
./dev eval --compare INDEX        beside another index's (an index or alias name)
./dev eval --index NAME           any index of the project instead of the alias's
./dev eval --measure              measure it again now (the settings' model artifact must be the
                                  one that encoded the index); nothing is written
./dev eval --json                 the record(s) as JSON
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from catalogue_search import index, quality
from catalogue_search.settings import Settings


class EvalError(RuntimeError):
    """Something `./dev eval` cannot show, in one line."""


def resolve(client, name: str, where: str = "OpenSearch") -> str:
    """The index behind an alias, or the index itself."""
    if client.indices.exists_alias(name=name):
        targets = sorted(client.indices.get_alias(name=name))
        if len(targets) != 1:
            raise EvalError(f"alias {name} points at {len(targets)} indices: name one with --index")
        return targets[0]
    if client.indices.exists(index=name):
        return name
    raise EvalError(f"no index or alias {name!r} on {where}")


def recorded(client, name: str) -> dict[str, Any]:
    """The `quality` record in an index's `_meta`, with its index name."""
    meta = client.indices.get_mapping(index=name)[name]["mappings"].get("_meta") or {}
    record = meta.get("quality")
    if not record:
        raise EvalError(
            f"index {name} has no recorded quality (loaded before evaluate_index existed, or refused before it "
            "ran): `./dev eval --measure` measures it now"
        )
    return {"index": name, **record}


def main(argv: list[str] | None = None) -> int:
    settings = Settings.from_env()
    parser = argparse.ArgumentParser(
        prog="./dev eval", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--alias", default=settings.index_alias, help="the read alias (default %(default)s)")
    parser.add_argument("--index", default="", help="an index name instead of the alias's index")
    parser.add_argument("--compare", default="", metavar="INDEX", help="set the figures beside this index's")
    parser.add_argument("--measure", action="store_true", help="measure now instead of reading _meta")
    parser.add_argument("--json", action="store_true", help="print JSON")
    args = parser.parse_args(argv)
    client = index.client_from_settings(settings)
    try:
        name = resolve(client, args.index or args.alias, settings.opensearch_url)
        if args.measure:
            import boto3

            from catalogue_search import quality_gate

            s3 = boto3.client("s3", **settings.boto3_kwargs())
            record = quality_gate.measure(settings, s3, client, name)["quality"]
        else:
            record = recorded(client, name)
        other = recorded(client, resolve(client, args.compare, settings.opensearch_url)) if args.compare else None
    except EvalError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # e.g. OpenSearch is not running: one line, not a traceback
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps({"quality": record, "compared_with": other} if other else record, indent=1))
    else:
        print(quality.format_table(record, other))
    return 0


if __name__ == "__main__":
    sys.exit(main())
