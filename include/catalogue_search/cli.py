"""Command line: `python -m catalogue_search.cli search "a red flower" -k 5` or `search --image photo.jpg`.

Every error is one line on stderr (`error: ...`) and a non-zero exit status:
2 for a wrong command line, 1 for a query that cannot be answered.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import NoReturn

from catalogue_search import search
from catalogue_search.search import formatting
from catalogue_search.settings import Settings, SettingsError

# `--list product-types` -> the facet field `product_type`
LISTABLE = {name.replace("_", "-") + "s": name for name in search.FACETS}


class UsageError(Exception):
    """A wrong command line (exit status 2)."""


class OneLineParser(argparse.ArgumentParser):
    """argparse, with its errors as one line (no usage block) and no exit from inside the parser."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="catalogue-search", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    cmd = sub.add_parser("search", help="search the catalogue by text or by image")
    cmd.add_argument("query", nargs="?", help="free text, e.g. 'two people in front of a swimming pool'")
    cmd.add_argument("--image", type=Path, help="search by this image file instead of text")
    cmd.add_argument("--like", metavar="ITEM_ID", help="more like this product (its stored vector)")
    cmd.add_argument("-k", type=int, default=5, help="number of hits (default 5)")
    cmd.add_argument("--offset", type=int, default=0, help="skip this many hits (paging)")
    cmd.add_argument("--product-type", help="only products of this type, e.g. ANIMALS (any case)")
    cmd.add_argument("--brand", help="only products of this brand (any case)")
    cmd.add_argument("--prompt", help="wrap the text in a prompt, e.g. 'this is a {}' as the original sample did")
    cmd.add_argument("--alias", help="search this alias or index instead of the configured one")
    cmd.add_argument("--json", action="store_true", help="print hits (with their cosine similarity) as JSON lines")
    cmd.add_argument(
        "--list",
        choices=sorted(LISTABLE),
        help="list the values present in the index, with their counts (the valid filter values)",
    )
    ranking = cmd.add_argument_group("ranking (see docs/search-modes.md)")
    ranking.add_argument(
        "--mode",
        choices=search.MODES,
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
    except (search.SearchError, SettingsError) as exc:
        _error(str(exc))
        return 1
    except Exception as exc:  # noqa: BLE001 - the contract is one line, never a traceback
        logging.getLogger(__name__).debug("search failed", exc_info=True)
        _error(f"{type(exc).__name__}: {exc}")
        return 1


def _error(message: str) -> None:
    print(f"error: {search.one_line(message)}", file=sys.stderr)


def _main(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    modes = [m for m in (args.query is not None, args.image is not None, args.like is not None, args.list) if m]
    if len(modes) != 1:
        raise UsageError("give one of: a text query, --image PATH, --like ITEM_ID or --list WHAT")
    settings = Settings.from_env()
    if args.alias:
        settings = settings.replace(index_alias=args.alias)
    client = search.SearchClient(settings)
    if args.list:
        return _list(client, LISTABLE[args.list], args.json)
    page = search.Page(args.k, args.offset)  # the engine's fixed limits, before anything is asked
    filters = search.Filters(product_type=args.product_type, brand=args.brand)
    fold = search.Fold(args.fold_threshold) if args.fold else None
    if args.image is not None:
        page = client.fit(page)  # and the alias's, before reading a large file or loading the model
        try:
            data = args.image.read_bytes()
        except OSError as exc:
            raise UsageError(f"cannot read {args.image}: {exc.strerror or exc}") from exc
        hits = client.search_image(data, page, filters=filters, mode=args.mode, fusion=_fusion(args), fold=fold)
    elif args.like is not None:
        hits = client.more_like_this(args.like, page, filters=filters, fold=fold)
    else:
        hits = client.search_text(
            args.query, page, filters=filters, mode=args.mode, fusion=_fusion(args), fold=fold, prompt=args.prompt
        )
    if args.json:
        if hits:
            print(formatting.hits_as_json_lines(hits))
    else:
        print(search.format_hits(hits))
    return 0


def _fusion(args: argparse.Namespace) -> search.Fusion | None:
    if args.mode != search.HYBRID_MODE:
        return None
    return search.Fusion(
        rank_constant=args.rank_constant,
        lexical_weight=args.lexical_weight,
        name_weight=args.name_weight,
        image_weight=args.image_weight,
    )


def _list(client: search.SearchClient, facet: str, as_json: bool) -> int:
    values = client.facets()[facet]
    if as_json:
        if values:
            print(formatting.facet_as_json_lines(facet, values))
    else:
        print(formatting.format_facet(facet, values, client.alias))
    return 0


if __name__ == "__main__":
    sys.exit(main())
