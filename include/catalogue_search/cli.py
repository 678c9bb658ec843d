"""Command line: `python -m catalogue_search.cli search "a red flower" -k 5` or `search --image photo.jpg`.

Every error is one line on stderr (`error: ...`) and a non-zero exit status:
2 for a wrong command line, 1 for a query that cannot be answered.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import NoReturn

from catalogue_search.search import FACETS, MODES, Fusion, SearchClient, format_hits, one_line
from catalogue_search.settings import Settings

# `--list product-types` -> the facet field `product_type`
LISTABLE = {name.replace("_", "-") + "s": name for name in FACETS}


class UsageError(Exception):
    """A wrong command line (exit status 2)."""


class OneLineParser(argparse.ArgumentParser):
    """argparse, with its errors as one line (no usage block) and no exit from inside the parser."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="catalogue-search", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    search = sub.add_parser("search", help="search the catalogue by text or by image")
    search.add_argument("query", nargs="?", help="free text, e.g. 'two people in front of a swimming pool'")
    search.add_argument("--image", type=Path, help="search by this image file instead of text")
    search.add_argument("--like", metavar="ITEM_ID", help="more like this product (its stored vector)")
    search.add_argument("-k", type=int, default=5, help="number of hits (default 5)")
    search.add_argument("--offset", type=int, default=0, help="skip this many hits (paging)")
    search.add_argument("--product-type", help="only products of this type, e.g. ANIMALS (any case)")
    search.add_argument("--brand", help="only products of this brand (any case)")
    search.add_argument("--prompt", help="wrap the text in a prompt, e.g. 'this is a {}' as the original sample did")
    search.add_argument("--alias", help="search this alias or index instead of the configured one")
    search.add_argument("--json", action="store_true", help="print hits (with their cosine similarity) as JSON lines")
    search.add_argument(
        "--list",
        choices=sorted(LISTABLE),
        help="list the values present in the index, with their counts (the valid filter values)",
    )
    ranking = search.add_argument_group("ranking (see the README's 'Search modes')")
    ranking.add_argument(
        "--mode",
        choices=MODES,
        default="image",
        help="image: the product images' vectors (default); name: the titles' vectors; "
        "hybrid: BM25 on the title + both vector lists, fused by reciprocal rank",
    )
    ranking.add_argument("--hybrid", dest="mode", action="store_const", const="hybrid", help="same as --mode hybrid")
    ranking.add_argument("--lexical-weight", type=float, default=1.0, help="hybrid: weight of BM25 on the title")
    ranking.add_argument("--name-weight", type=float, default=1.0, help="hybrid: weight of the title vectors")
    ranking.add_argument("--image-weight", type=float, default=1.0, help="hybrid: weight of the image vectors")
    ranking.add_argument("--rank-constant", type=int, default=60, help="hybrid: RRF rank constant (default 60)")
    ranking.add_argument(
        "--fold", action="store_true", help="fold hits that show the same image (same image id or near-identical)"
    )
    ranking.add_argument(
        "--fold-threshold", type=float, help="cosine at or above which images count as the same (default: setting)"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(argv)
    except UsageError as exc:
        _error(str(exc))
        return 2
    except KeyboardInterrupt:
        _error("interrupted")
        return 130
    except Exception as exc:  # noqa: BLE001 - the contract is one line, never a traceback
        logging.getLogger(__name__).debug("search failed", exc_info=True)
        _error(str(exc) if _is_search_error(exc) else f"{type(exc).__name__}: {exc}")
        return 1


def _is_search_error(exc: Exception) -> bool:
    from catalogue_search.search import SearchError
    from catalogue_search.settings import SettingsError

    return isinstance(exc, (SearchError, SettingsError))


def _error(message: str) -> None:
    print(f"error: {one_line(message)}", file=sys.stderr)


def _main(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    modes = [m for m in (args.query is not None, args.image is not None, args.like is not None, args.list) if m]
    if len(modes) != 1:
        raise UsageError("give one of: a text query, --image PATH, --like ITEM_ID or --list WHAT")
    settings = Settings.from_env()
    if args.alias:
        settings = settings.replace(index_alias=args.alias)
    client = SearchClient(settings)
    if args.list:
        return _list(client, LISTABLE[args.list], args.json)
    options = {
        "offset": args.offset,
        "product_type": args.product_type,
        "brand": args.brand,
        "fold": args.fold,
        "fold_threshold": args.fold_threshold,
    }
    ranking: dict = {"mode": args.mode}
    if args.mode == "hybrid":
        ranking["fusion"] = Fusion(
            rank_constant=args.rank_constant,
            lexical_weight=args.lexical_weight,
            name_weight=args.name_weight,
            image_weight=args.image_weight,
        )
    if args.image is not None:
        client.check_page(args.k, args.offset)  # before reading a large file or loading the model
        try:
            data = args.image.read_bytes()
        except OSError as exc:
            raise UsageError(f"cannot read {args.image}: {exc.strerror or exc}") from exc
        hits = client.search_image(data, args.k, **ranking, **options)
    elif args.like is not None:
        hits = client.more_like_this(args.like, args.k, **options)
    else:
        hits = client.search_text(args.query, args.k, prompt=args.prompt, **ranking, **options)
    if args.json:
        for hit in hits:
            print(json.dumps(hit.as_dict(), ensure_ascii=False))
    else:
        print(format_hits(hits))
    return 0


def _list(client: SearchClient, facet: str, as_json: bool) -> int:
    values = client.facets()[facet]
    if as_json:
        for v in values:
            print(json.dumps({facet: v.value, "count": v.count}, ensure_ascii=False))
        return 0
    if not values:
        print(f"(no {FACETS[facet]} in {client.alias})")
        return 0
    width = max(len(facet), *(len(v.value) for v in values))
    print(f"{facet:<{width}}  {'count':>7}")
    for v in values:
        print(f"{v.value:<{width}}  {v.count:>7}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
