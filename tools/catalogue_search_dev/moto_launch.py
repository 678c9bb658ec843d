"""moto's server, as `moto_server` starts it, with the names of its service modules read once.

For every request moto's dispatcher asks whether the request's host names one of
its service modules, and answers by listing its package directory (about 170
entries, each checked with `stat`) while it holds the lock that every request
takes. That was 18% of the server's CPU time during an ingest run (py-spy), and
the directory does not change while the server runs: here the list is read at
the first request and kept.

    python -m catalogue_search_dev.moto_launch -H 127.0.0.1 -p 5000
"""

from __future__ import annotations

import functools
import sys

from moto import backends


def _modules_read_once() -> None:
    read = backends.list_of_moto_modules
    backends.list_of_moto_modules = functools.cache(lambda: tuple(read()))


def main(argv: list[str] | None = None) -> None:
    from moto import server

    _modules_read_once()
    server.main(sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    main()
