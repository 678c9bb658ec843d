"""`./dev` subcommands: the main job, the tests, the local stack, search.

./dev demo                 index the sample catalogue and answer sample queries
./dev test [pytest args]   run the whole test suite
./dev stack up|down|status the local OpenSearch node and moto server
./dev search "a red flower" [-k 5] | --image PATH
./dev rollback [--alias A] move the alias back to the previous served index
./dev airflow ...          the Airflow CLI with the local configuration
./dev ui                   `airflow standalone` (UI on http://127.0.0.1:8080)
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

from catalogue_search_dev import stack
from catalogue_search_dev.localenv import cache_home, repo_root


def _say(msg: str) -> None:
    print(f"\033[1m[dev]\033[0m {msg}", file=sys.stderr, flush=True)


def stack_up() -> None:
    for name, what in stack.up().items():
        _say(f"{name}: {what}")


def ensure_airflow_db() -> None:
    """Create Airflow's SQLite metadata DB once (it lives outside the repo)."""
    home = Path(os.environ["AIRFLOW_HOME"])
    home.mkdir(parents=True, exist_ok=True)
    import airflow  # noqa: F401  (version marker below)

    marker = home / f".db-migrated-{airflow.__version__}"
    if marker.exists():
        return
    _say(f"initialising Airflow's metadata DB in {home}")
    subprocess.run(["airflow", "db", "migrate"], check=True, stdout=subprocess.DEVNULL)
    marker.touch()


def cmd_test(args: list[str]) -> int:
    stack_up()
    ensure_airflow_db()
    os.chdir(repo_root())
    result = subprocess.run([sys.executable, "-m", "pytest", *args])
    return result.returncode


def cmd_demo(args: list[str]) -> int:
    from catalogue_search_dev import demo

    stack_up()
    ensure_airflow_db()
    return demo.main(args)


def cmd_stack(args: list[str]) -> int:
    action = args[0] if args else "status"
    if action == "up":
        stack_up()
    elif action == "down":
        for name, what in stack.down().items():
            _say(f"{name}: {what}")
    elif action == "status":
        for name, what in stack.status().items():
            print(f"{name}: {what}")
    else:
        _say(f"unknown stack action {action!r}: use up, down or status")
        return 2
    return 0


def cmd_search(args: list[str]) -> int:
    from catalogue_search import cli

    return cli.main(["search", *args])


def cmd_rollback(args: list[str]) -> int:
    """The catalogue_rollback DAG's step, run directly against the configured stack."""
    import argparse

    import boto3

    from catalogue_search import index, ingest
    from catalogue_search.errors import PermanentError
    from catalogue_search.settings import Settings

    settings = Settings.from_env()
    parser = argparse.ArgumentParser(
        prog="./dev rollback", description="Move the alias back to the previous served index."
    )
    parser.add_argument(
        "--alias", default=settings.index_alias, help=f"the read alias (default {settings.index_alias})"
    )
    alias = parser.parse_args(args).alias
    s3 = boto3.client("s3", **settings.boto3_kwargs())
    try:
        result = ingest.rollback(settings, s3, index.client_from_settings(settings), alias)
    except PermanentError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # e.g. the project bucket or OpenSearch is not there: one line, not a traceback
        print(f"error: rollback of alias {alias} failed: {exc}", file=sys.stderr)
        return 1
    print(f"alias {result['alias']}: {result['from']} -> {result['to']}")
    return 0


def cmd_airflow(args: list[str]) -> int:
    ensure_airflow_db()
    return subprocess.run(["airflow", *args]).returncode


def cmd_ui(args: list[str]) -> int:
    stack_up()
    ensure_airflow_db()
    _say("Airflow UI on http://127.0.0.1:8080 (the admin password is printed below)")
    env = dict(os.environ, AIRFLOW__API__HOST="127.0.0.1", AIRFLOW__API__PORT="8080")
    return subprocess.run(["airflow", "standalone", *args], env=env).returncode


def cmd_bench(args: list[str]) -> int:
    script = repo_root() / "benchmarks" / "encode_throughput.py"
    return subprocess.run([sys.executable, str(script), *args]).returncode


COMMANDS = {
    "bench": cmd_bench,
    "demo": cmd_demo,
    "test": cmd_test,
    "stack": cmd_stack,
    "search": cmd_search,
    "airflow": cmd_airflow,
    "rollback": cmd_rollback,
    "ui": cmd_ui,
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    quiet = argv[:1] == ["search"]  # a table on stdout, only warnings around it
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if not argv or argv[0] in {"-h", "--help", "help"} or argv[0] not in COMMANDS:
        print(__doc__)
        print(f"cache: {cache_home()}")
        return 0 if not argv or argv[0] in {"-h", "--help", "help"} else 2
    return COMMANDS[argv[0]](argv[1:])


if __name__ == "__main__":
    sys.exit(main())
