"""Command line: `python -m catalogue_search.cli search "a red flower" -k 5` or `search --image photo.jpg`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from catalogue_search.search import MODES, Fusion, SearchClient, SearchError, format_hits
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
    args = build_parser().parse_args(argv)
    if (args.query is None) == (args.image is None):
        print("error: give either a text query or --image PATH", file=sys.stderr)
        return 2
    settings = Settings.from_env()
    if args.alias:
        settings = settings.replace(index_alias=args.alias)
    options = {
        "offset": args.offset,
        "product_type": args.product_type,
        "brand": args.brand,
        "fold": args.fold,
        "fold_threshold": args.fold_threshold,
    }
    try:
        ranking = {"mode": args.mode}
        if args.mode == "hybrid":
            ranking["fusion"] = Fusion(
                rank_constant=args.rank_constant,
                lexical_weight=args.lexical_weight,
                name_weight=args.name_weight,
                image_weight=args.image_weight,
            )
        client = SearchClient(settings)
        if args.image is not None:
            try:
                data = args.image.read_bytes()
            except OSError as exc:
                print(f"error: cannot read {args.image}: {exc.strerror}", file=sys.stderr)
                return 2
            hits = client.search_image(data, args.k, **ranking, **options)
        else:
            hits = client.search_text(args.query, args.k, prompt=args.prompt, **ranking, **options)
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
