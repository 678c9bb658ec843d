"""Command line: `python -m catalogue_search.cli search "a red flower" -k 5` or `search --image photo.jpg`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from catalogue_search.search import SearchClient, SearchError, format_hits
from catalogue_search.settings import Settings


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="catalogue-search", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    search = sub.add_parser("search", help="search the catalogue by text or by image")
    search.add_argument("query", nargs="?", help="free text, e.g. 'two people in front of a swimming pool'")
    search.add_argument("--image", type=Path, help="search by this image file instead of text")
    search.add_argument("-k", type=int, default=5, help="number of hits (default 5)")
    search.add_argument("--offset", type=int, default=0, help="skip this many hits (paging)")
    search.add_argument("--product-type", help="only products of this type, e.g. ANIMALS")
    search.add_argument("--brand", help="only products of this brand")
    search.add_argument("--prompt", help="wrap the text in a prompt, e.g. 'this is a {}' as the original sample did")
    search.add_argument("--alias", help="search this alias or index instead of the configured one")
    search.add_argument("--json", action="store_true", help="print hits as JSON lines")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if (args.query is None) == (args.image is None):
        print("error: give either a text query or --image PATH", file=sys.stderr)
        return 2
    settings = Settings.from_env()
    if args.alias:
        settings = settings.replace(index_alias=args.alias)
    options = {"offset": args.offset, "product_type": args.product_type, "brand": args.brand}
    try:
        client = SearchClient(settings)
        if args.image is not None:
            try:
                data = args.image.read_bytes()
            except OSError as exc:
                print(f"error: cannot read {args.image}: {exc.strerror}", file=sys.stderr)
                return 2
            hits = client.search_image(data, args.k, **options)
        else:
            hits = client.search_text(args.query, args.k, prompt=args.prompt, **options)
    except (SearchError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.json:
        for hit in hits:
            print(json.dumps(hit.as_dict(), ensure_ascii=False))
    else:
        print(format_hits(hits))
    return 0


if __name__ == "__main__":
    sys.exit(main())
