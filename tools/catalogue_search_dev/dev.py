"""`./dev` subcommands: the main job, the tests, the local stack, search.

./dev demo                 index the sample catalogue and answer sample queries
./dev test [pytest args]   ruff, then the test suite (all but the cluster faults), then a check that it left no trace
./dev test -m cluster      the cluster fault tests: 3 OpenSearch nodes, Celery workers, kills (docs/cluster.md)
./dev test --quick [args]  ruff, then the unit tests and DAG integrity checks (marker `unit`): no stack, < 1 min
./dev test --update-docs   also write the browser test's screenshot over docs/search-page.png
./dev stack up|down|status the local OpenSearch node, moto server and SageMaker server
                           (up --secure: also a node with the security plugin, TLS and the AWS roles; docs/aws.md)
./dev stack up --cluster   3 OpenSearch nodes, Redis, Airflow with 2 Celery workers (docs/cluster.md)
./dev search "a red flower" [-k 5] | --image PATH
./dev rollback [--alias A] move the alias back to the previous served index
./dev eval [--compare INDEX] the served index's search quality (docs/quality.md)
./dev bench [NAME [args]]  benchmarks (BENCHMARKS.md; `./dev bench list` names them)
./dev generate-abo [args]  the full-size synthetic ABO catalogue (147,702 listings) in moto
./dev airflow ...          the Airflow CLI with the local configuration
./dev ui                   `airflow standalone` (UI on http://127.0.0.1:8080); Ctrl-C, SIGTERM or SIGHUP stops all of it
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from catalogue_search_dev import stack
from catalogue_search_dev.localenv import cache_home, repo_root


def _say(msg: str) -> None:
    try:
        print(f"\033[1m[dev]\033[0m {msg}", file=sys.stderr, flush=True)
    except (OSError, ValueError, AttributeError):  # stderr closed or gone (`./dev ui | tee` after Ctrl-C)
        pass


def stack_up() -> None:
    from catalogue_search_dev import cluster

    if cluster.enabled():
        return cluster_up()
    for name, what in stack.up().items():
        _say(f"{name}: {what}")


def cluster_up() -> None:
    """The cluster stack (docs/cluster.md): its nodes first (the first takes the light node's port), then
    Redis and Airflow's processes, then moto and the SageMaker server of the light stack."""
    from catalogue_search_dev import cluster, localenv

    os.environ.update(localenv.cluster_environment(dict(os.environ)))
    single = stack.services()[1]
    if stack._read_pid(single) is not None and not cluster.node_up(cluster.Layout.for_user(), 0):
        _say(f"opensearch (one node): {stack.stop(single)}, its port goes to the cluster's first node")
    ensure_airflow_db()
    _say("starting the cluster stack: 3 OpenSearch nodes, Redis, Airflow with 2 Celery workers (a few minutes)")
    for name, what in cluster.up(cluster.Layout.for_user(), dict(os.environ)).items():
        _say(f"{name}: {what}")
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


CHROMIUM = Path("/usr/bin/chromium")


def ensure_chromium() -> None:
    """Debian's chromium for the search page's browser test (browsers cannot be downloaded here); idempotent."""
    if CHROMIUM.exists():
        return
    if not shutil.which("apt-get"):
        _say(f"{CHROMIUM} is missing and there is no apt-get: install Chromium for the browser test")
        return
    sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
    _say("installing Debian's chromium package (for the search page's browser test)")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run([*sudo, "apt-get", "update", "-qq"], check=False, env=env, stdout=subprocess.DEVNULL)
    subprocess.run(
        [*sudo, "apt-get", "install", "-y", "-qq", "chromium"],
        check=True,
        env=env,
        stdout=subprocess.DEVNULL,
    )


def lint() -> int:
    """`ruff check` and `ruff format --check` on the whole repository: a finding fails the run."""
    for cmd in (["ruff", "check", "."], ["ruff", "format", "--check", "."]):
        if subprocess.run(cmd, cwd=repo_root()).returncode != 0:
            _say(f"`{' '.join(cmd)}` found problems (fix them; `ruff format .` formats)")
            return 1
    return 0


def cmd_test_quick(args: list[str]) -> int:
    """Lint, then the unit tests and the DAG integrity checks: no stack, no browser, no server.

    Without paths, the files run in two pytest processes side by side (`testkinds.quick_shards`), each
    printed when it ends; with paths, in one.
    """
    from catalogue_search_dev import testkinds

    if lint() != 0:
        return 1
    os.chdir(repo_root())
    env = dict(os.environ)
    env.setdefault("CATSEARCH_FUZZ_EXAMPLES", testkinds.QUICK_FUZZ_EXAMPLES)
    command = [sys.executable, "-m", "pytest", "-m", testkinds.QUICK_MARKS, *args]
    named = testkinds.names_tests(args)
    if named or (os.cpu_count() or 1) < 2:
        return subprocess.run(command + ([] if named else testkinds.QUICK_PATHS), env=env).returncode
    shards = testkinds.quick_shards(repo_root())
    _say(f"the unit lane in {len(shards)} processes side by side: " + " | ".join(f"{len(s)} files" for s in shards))
    with tempfile.TemporaryDirectory(prefix="catsearch-quick-") as tmp:
        outputs = [Path(tmp) / f"shard-{i}.log" for i in range(len(shards))]
        running = []
        for shard, log in zip(shards, outputs):
            with open(log, "wb") as out:
                running.append(subprocess.Popen(command + shard, env=env, stdout=out, stderr=subprocess.STDOUT))
        codes = []
        for proc, log in zip(running, outputs):
            codes.append(proc.wait())
            sys.stdout.write(log.read_text(errors="replace"))
            sys.stdout.flush()
    ran = [code for code in codes if code != 5] or [5]  # 5: that process's files had no test to run
    return max(ran)


def cmd_test(args: list[str]) -> int:
    """Lint, then pytest, then check that the run left the user's Airflow DB, moto and OpenSearch as they were.

    Pytest starts and collects while the stack (and chromium) comes up; its tests start once the stack is up
    and the "before" snapshot is taken (`testenv.StackGate`).

    The tests use their own AIRFLOW_HOME and name what they create with the
    session's token (tests/conftest.py), so the user's DB is never opened here.
    `--quick`: see `cmd_test_quick`.
    """
    from catalogue_search_dev import cluster, testenv, testkinds

    if "--update-docs" in args:  # the browser test writes docs/search-page.png instead of build/screenshots/
        os.environ[testkinds.UPDATE_DOCS_ENV] = "1"
        args = [a for a in args if a != "--update-docs"]
    if "--quick" in args:
        return cmd_test_quick([a for a in args if a != "--quick"])
    if cluster.enabled():
        _say(
            "the test suite runs on the light stack: `./dev stack down` first (the cluster tests, "
            "`./dev test -m cluster`, start a cluster of their own)"
        )
        return 2
    if lint() != 0:
        return 1
    os.chdir(repo_root())
    token = testenv.session_token()
    if not any(a == "-m" or a.startswith("-m") for a in args):
        # The cluster fault tests (3 nodes, Celery, kills) are their own command: `./dev test -m cluster`.
        args = ["-m", "not cluster", *args]
    workers = testkinds.test_workers(args, os.cpu_count() or 1, os.environ)
    if workers > 1:
        _say(f"the suite in {workers} pytest processes side by side, a test file at a time each")
        args = ["-n", str(workers), "--dist", "loadfile", "--no-loadscope-reorder", *args]
    with tempfile.TemporaryDirectory(prefix="catsearch-test-") as folder:
        # pytest starts and collects while the stack comes up; its tests wait at the gate (testenv.StackGate).
        gate = testenv.StackGate(Path(folder))
        suite = subprocess.Popen([sys.executable, "-m", "pytest", *args], env={**os.environ, **gate.env()})
        try:
            with ThreadPoolExecutor(1) as pool:  # apt-get waits on the disk and the network while the JVM starts
                browser = pool.submit(ensure_chromium)
                stack_up()
                browser.result()
            before = testenv.snapshot()
        except BaseException as exc:
            suite.terminate()  # its processes end at the gate when this one has gone
            suite.wait()
            if not isinstance(exc, Exception):  # Ctrl-C
                raise
            _say(f"the stack did not come up, so no test ran: {exc}")
            return 1
        gate.open()
        code = suite.wait()
    problems, notes = testenv.compare(before, testenv.snapshot(), token)
    if notes:
        _say("after the tests:\n" + testenv.report([], notes))
    if problems:
        _say(
            f"FAILED: the test run (token {token}) did not leave the user's Airflow DB, moto and OpenSearch "
            "as it found them:\n" + testenv.report(problems, [])
        )
        return code or 1
    _say(f"the user's Airflow DB, moto and OpenSearch hold what they held before the run (token {token})")
    return code


def cmd_demo(args: list[str]) -> int:
    from catalogue_search_dev import demo

    stack_up()
    ensure_airflow_db()
    return demo.main(args)


def cmd_stack(args: list[str]) -> int:
    from catalogue_search_dev import cluster, secure_stack

    action = args[0] if args else "status"
    if action == "up":
        if "--cluster" in args[1:]:
            cluster.mode_file().parent.mkdir(parents=True, exist_ok=True)
            cluster.mode_file().write_text("cluster\n")
        stack_up()
        if "--secure" in args[1:]:
            _say(f"opensearch-secure: {secure_stack.up()}")
    elif action == "down":
        layout = cluster.Layout.for_user()
        if cluster.enabled() or any(layout.pid_file(n).exists() for n in ("redis", "node-1", "scheduler")):
            for name, what in cluster.down(layout).items():
                _say(f"{name}: {what}")
        cluster.mode_file().unlink(missing_ok=True)
        for name, what in {**stack.down(), "opensearch-secure": secure_stack.down()}.items():
            _say(f"{name}: {what}")
    elif action == "status":
        for name, what in stack.status().items():
            print(f"{name}: {what}")
        print(f"opensearch-secure: {secure_stack.status()}")
        if cluster.enabled():
            for name, what in cluster.status(cluster.Layout.for_user()).items():
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


def cmd_eval(args: list[str]) -> int:
    from catalogue_search_dev import quality_eval

    return quality_eval.main(args)


def cmd_airflow(args: list[str]) -> int:
    ensure_airflow_db()
    return subprocess.run(["airflow", *args]).returncode


def cmd_ui(args: list[str]) -> int:
    from catalogue_search_dev import cluster, ui, ui_state

    stack_up()
    if cluster.enabled():  # the cluster's own API server, scheduler and workers: no `airflow standalone`
        _say(f"the cluster stack serves the Airflow UI on http://127.0.0.1:{cluster.Layout.for_user().api_port}")
        return 0
    ensure_airflow_db()
    home = Path(os.environ["AIRFLOW_HOME"])
    port = os.environ.get("AIRFLOW__API__PORT", "8080")
    passwords = home / "simple_auth_manager_passwords.json.generated"
    where = "in" if passwords.exists() else "printed below on this first start, and kept in"
    _say(f"Airflow UI on http://127.0.0.1:{port}: user admin, password {where} {passwords}")
    _say(f"LocalExecutor with {os.environ.get('AIRFLOW__CORE__PARALLELISM', '32')} task slots; Ctrl-C stops Airflow")
    _say(f"its output is also kept in {ui_state.log_file()}")
    return ui.run(["airflow", "standalone", *args], dict(os.environ))


# `./dev bench NAME` -> benchmarks/<script>; `./dev bench` runs them all, in this order.
BENCHMARKS = {
    "filter": "metadata_filter.py",
    "copy": "copy_skip.py",
    "encode": "encode_throughput.py",
    "bulk": "bulk_load.py",
    "load-index-memory": "load_index_memory.py",
    "knn": "knn_recall.py",
    "duplicates": "duplicates_scale.py",
    "id-scan": "id_scan.py",
    "knn-family": "knn_family.py",
    "e2e": "end_to_end.py",
    "search-api": "search_api.py",
    "page-warmup": "page_warmup.py",
    "hybrid": "hybrid_lists.py",
    "eval": "quality_eval.py",
    "finetune": "finetune.py",
    "full-dag": "full_dag_run.py",
    "torchserve": "torchserve.py",
    "cluster": "cluster_split.py",
}


def cmd_bench(args: list[str]) -> int:
    """`./dev bench [NAME [args]]`: one benchmark with its own arguments, or all of them."""
    bench_dir = repo_root() / "benchmarks"
    available = {name: script for name, script in BENCHMARKS.items() if (bench_dir / script).exists()}
    if args and args[0] in {"-h", "--help", "list"}:
        print("./dev bench [NAME [args]]   benchmarks: " + ", ".join(available))
        return 0
    if args and not args[0].startswith("-"):
        name, rest = args[0], args[1:]
        if name not in available:
            _say(f"unknown benchmark {name!r}: one of {', '.join(available)}")
            return 2
        todo = [(name, rest)]
    else:
        todo = [(name, list(args)) for name in available]
    stack_up()
    failed = []
    for name, rest in todo:
        _say(f"benchmark {name}: benchmarks/{available[name]} {' '.join(rest)}".rstrip())
        result = subprocess.run([sys.executable, str(bench_dir / available[name]), *rest], cwd=repo_root())
        if result.returncode != 0:
            failed.append(name)
    if failed:
        _say(f"failed: {', '.join(failed)}")
    return 1 if failed else 0


def cmd_generate_abo(args: list[str]) -> int:
    from catalogue_search_dev import abo_generator

    if "--upload" in args:
        stack_up()
    return abo_generator.main(args)


COMMANDS = {
    "bench": cmd_bench,
    "generate-abo": cmd_generate_abo,
    "demo": cmd_demo,
    "test": cmd_test,
    "stack": cmd_stack,
    "search": cmd_search,
    "airflow": cmd_airflow,
    "rollback": cmd_rollback,
    "eval": cmd_eval,
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
    try:
        return COMMANDS[argv[0]](argv[1:])
    except KeyboardInterrupt:  # Ctrl-C: the child got it too and stops; no traceback here
        _say("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
