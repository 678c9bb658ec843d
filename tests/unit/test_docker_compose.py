"""docker-compose.yaml, checked statically: CI has no Docker engine to run it.

The file is read with a strict YAML loader that refuses duplicate keys, as
Compose does (PyYAML alone keeps the last value silently). Each test asserts one
property of the real file that `docker compose up` would trip over, and names
what is wrong when it fails.
"""

from __future__ import annotations

import json
import re
import textwrap
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from catalogue_search.settings import Settings
from catalogue_search_dev import localenv, stack

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker-compose.yaml"

# CATSEARCH_* names read outside Settings: localenv.repo_root() and localenv.cache_home().
LOCALENV_NAMES = {"CATSEARCH_REPO", "CATSEARCH_HOME"}
# Names neither the project's settings nor Airflow's config, each read by a well-known third party.
THIRD_PARTY_NAMES = {
    "AWS_ACCESS_KEY_ID": "boto3",
    "AWS_SECRET_ACCESS_KEY": "boto3",
    "AWS_DEFAULT_REGION": "boto3",
    "POSTGRES_USER": "postgres image",
    "POSTGRES_PASSWORD": "postgres image",
    "POSTGRES_DB": "postgres image",
    "cluster.name": "opensearch image (three nodes of one cluster; dotted names are node settings)",
    "node.name": "opensearch image",
    "discovery.seed_hosts": "opensearch image",
    "cluster.initial_cluster_manager_nodes": "opensearch image",
    "DISABLE_SECURITY_PLUGIN": "opensearch image",
    "DISABLE_INSTALL_DEMO_CONFIG": "opensearch image",
    "OPENSEARCH_JAVA_OPTS": "opensearch image",
    "PYTHONPATH": "python",
    "TOKENIZERS_PARALLELISM": "tokenizers (open_clip)",
    "CONNECTION_CHECK_MAX_COUNT": "airflow image entrypoint: 0 skips its wait for the Airflow DB",
    "DUMB_INIT_SETSID": "airflow image entrypoint: a warm shutdown for the Celery worker",
    "_AIRFLOW_WWW_USER_USERNAME": "airflow-init",
    "_AIRFLOW_WWW_USER_PASSWORD": "airflow-init",
}
EXPECTED_CONN_TYPES = {Settings().aws_conn_id: "aws", Settings().opensearch_conn_id: "opensearch"}
ADDRESS_VARS = ("CATSEARCH_AWS_ENDPOINT_URL", "CATSEARCH_OPENSEARCH_URL", "CATSEARCH_SAGEMAKER_ENDPOINT_URL")
_INTERPOLATION = re.compile(r"\$\{[A-Za-z_][A-Za-z0-9_]*(?::?-([^}]*))?\}")


class StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key written twice in one mapping (a key over a `<<` merge overrides it)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:  # as written: before the merges are flattened in
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping", node.start_mark, f"found duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def strict_load(text: str) -> dict:
    """Parsed YAML with anchors unshared (json round trip)."""
    return json.loads(json.dumps(yaml.load(text, Loader=StrictLoader)))


@pytest.fixture(scope="module")
def compose() -> dict:
    return strict_load(COMPOSE_FILE.read_text())


def resolve(text: str) -> str:
    """Compose interpolation with nothing set on the host: `${X:-d}` -> `d`, `$$` -> `$`."""
    return _INTERPOLATION.sub(lambda m: m.group(1) or "", text).replace("$$", "$")


def environment(service: dict) -> dict[str, str]:
    return {k: resolve("" if v is None else str(v)) for k, v in (service.get("environment") or {}).items()}


def airflow_services(compose: dict) -> dict[str, dict]:
    return {n: s for n, s in compose["services"].items() if "AIRFLOW__CORE__EXECUTOR" in environment(s)}


def mounts(service: dict) -> list[tuple[str, str]]:
    return [tuple(resolve(v).split(":")[:2]) for v in service.get("volumes") or []]


def requirement_pin(name: str) -> str:
    match = re.search(rf"^{re.escape(name)}(\[[^\]]*\])?==(\S+)", (REPO / "requirements.txt").read_text(), re.M)
    assert match, f"{name} is not pinned in requirements.txt"
    return match.group(2)


def known_variable(var: str) -> bool:
    if var.startswith("CATSEARCH_"):
        return var in Settings.env_names() | LOCALENV_NAMES
    if var.startswith("AIRFLOW__"):
        from airflow.configuration import conf

        parts = var.lower().split("__")
        if len(parts) != 3:
            return False
        # has_option() is False for options without a default, so the documented list is asked too.
        return conf.has_option(parts[1], parts[2], lookup_from_deprecated=False) or parts[2] in (
            conf.configuration_description.get(parts[1], {}).get("options", {})
        )
    return var.startswith("AIRFLOW_CONN_") or var in THIRD_PARTY_NAMES


# --- the file as Compose reads it ---------------------------------------------------
def test_the_strict_loader_refuses_a_duplicate_key_and_keeps_merges():
    with pytest.raises(yaml.constructor.ConstructorError, match="duplicate key 'A'"):
        strict_load("env:\n  A: '1'\n  B: '2'\n  A: '3'\n")
    merged = strict_load("base: &b {A: '1'}\nsvc:\n  <<: *b\n  A: '2'\n")
    assert merged["svc"] == {"A": "2"}  # an explicit key over a merged one is an override, not a duplicate


def test_the_file_has_no_duplicate_key_and_one_airflow_definition(compose):
    assert "&airflow-common" in COMPOSE_FILE.read_text()
    assert set(airflow_services(compose)) == {
        "airflow-init",
        "airflow-apiserver",
        "airflow-scheduler",
        "airflow-dag-processor",
        "airflow-triggerer",
        "airflow-worker",
    }


def test_airflow_runs_the_official_3x_components_with_the_celery_executor(compose):
    """The cluster stack's shape (docs/cluster.md): Celery workers with Redis, late acks, a visibility
    timeout above the longest task's time limit."""
    airflow = airflow_services(compose)
    commands = {str(svc.get("command")) for svc in airflow.values()}
    assert {"api-server", "scheduler", "dag-processor", "triggerer", "celery worker"} <= commands
    assert "airflow db migrate" in str(airflow["airflow-init"]["command"])
    for name, svc in airflow.items():
        env = environment(svc)
        assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor", name
        assert urlsplit(env["AIRFLOW__CELERY__BROKER_URL"]).hostname == "redis", name
        assert env["AIRFLOW__CELERY__TASK_ACKS_LATE"] == "true", name
        longest = max(Settings().timeout(kind).total_seconds() for kind in ("copy", "load"))
        assert int(env["AIRFLOW__CELERY_BROKER_TRANSPORT_OPTIONS__VISIBILITY_TIMEOUT"]) > longest, name
        assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql"), name
        api_host = urlsplit(env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"]).hostname
        assert compose["services"][api_host]["command"] == "api-server", name
        assert env["AIRFLOW__API_AUTH__JWT_SECRET"], f"{name}: components must share a JWT secret"


def test_images_are_pinned_to_the_project_versions(compose):
    svc = compose["services"]
    dockerfile = (REPO / svc["airflow-scheduler"]["build"]["dockerfile"]).read_text()
    assert re.findall(r"^FROM (\S+)", dockerfile, re.M) == [
        f"apache/airflow:{requirement_pin('apache-airflow')}-python3.11"
    ]
    assert svc["opensearch"]["image"] == f"opensearchproject/opensearch:{stack.OPENSEARCH_VERSION}"
    assert svc["moto"]["image"] == f"motoserver/moto:{requirement_pin('moto')}"
    assert re.fullmatch(r"postgres:16\.\d+", svc["postgres"]["image"])


def test_host_mounts_exist_in_the_repository_and_named_volumes_are_declared(compose):
    for name, svc in compose["services"].items():
        for source, target in mounts(svc):
            if source.startswith((".", "/")):
                path = (REPO / source).resolve()
                assert path.exists() and path.is_relative_to(REPO), f"{name}: {source}"
            else:
                assert source in compose["volumes"], f"{name}: undeclared volume {source} for {target}"


def test_every_variable_is_read_by_the_project_airflow_or_a_listed_third_party(compose):
    used = {var for svc in compose["services"].values() for var in environment(svc)}
    assert sorted(v for v in used if not known_variable(v)) == []
    assert set(THIRD_PARTY_NAMES) <= used, "the allow-list names variables the file no longer sets"


def test_published_ports_are_loopback_only(compose):
    published = {str(p) for svc in compose["services"].values() for p in svc.get("ports") or []}
    assert published == {"127.0.0.1:8080:8080", "127.0.0.1:9200:9200", "127.0.0.1:5000:5000", "127.0.0.1:5100:5100"}


def test_airflow_gets_the_local_stacks_names_and_connections(compose):
    """The same CATSEARCH_* names as localenv.py's cluster stack (the file's shape: replicas, shards, the
    work in parts) plus what ./dev exports, and the connections it builds."""
    local = {k for k in localenv.local_environment({"CATSEARCH_STACK": "cluster"}) if k.startswith("CATSEARCH_")}
    dev_exports = set(re.findall(r"^export (CATSEARCH_\w+)=", (REPO / "dev").read_text(), re.M))
    for name, svc in airflow_services(compose).items():
        env = environment(svc)
        names = {k for k in env if k.startswith("CATSEARCH_")}
        assert local <= names and names - local <= dev_exports, name
        built = localenv.local_environment({k: v for k, v in env.items() if not k.startswith("AIRFLOW_CONN_")})
        for conn_id, conn_type in EXPECTED_CONN_TYPES.items():
            var = f"AIRFLOW_CONN_{conn_id.upper()}"
            assert json.loads(env[var])["conn_type"] == conn_type, (name, var)
            assert json.loads(env[var]) == json.loads(built[var]), (name, var)


def test_containers_mirror_the_repository_layout(compose):
    for name, svc in airflow_services(compose).items():
        env = environment(svc)
        repo = env["CATSEARCH_REPO"]
        assert env["PYTHONPATH"] == f"{repo}/include:{repo}/plugins:{repo}/tools", name  # as ./dev sets it
        assert env["AIRFLOW__CORE__DAGS_FOLDER"] == f"{repo}/dags", name
        assert env["AIRFLOW__CORE__PLUGINS_FOLDER"] == f"{repo}/plugins", name
        targets = {target: source for source, target in mounts(svc)}
        for folder in ("dags", "plugins", "include", "inference_code"):
            assert targets.get(f"{repo}/{folder}") == f"./{folder}", (name, folder)


def test_services_start_only_once_what_they_address_is_healthy(compose):
    services = compose["services"]
    for name, svc in services.items():
        deps = svc.get("depends_on") or {}
        assert isinstance(deps, dict), f"{name}: depends_on without conditions"
        for target, spec in deps.items():
            assert spec["condition"] in {"service_healthy", "service_completed_successfully"}, (name, target)
            if spec["condition"] == "service_healthy":
                assert "healthcheck" in services[target], f"{name} waits for {target}, which has no healthcheck"
        if "restart" not in svc:
            continue
        env = environment(svc)
        for var in ("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", *ADDRESS_VARS):
            if var in env:
                host = urlsplit(env[var]).hostname
                assert deps.get(host, {}).get("condition") == "service_healthy", f"{name}: {var} -> {host}"


def test_the_local_sagemaker_serves_the_address_the_airflow_containers_use(compose):
    """In front of the same moto; it alone mounts tools/ (production code never imports it)."""
    sagemaker = compose["services"]["sagemaker"]
    command = [str(part) for part in sagemaker["command"]]
    assert command[:4] == ["python", "-m", "catalogue_search_dev.sagemaker_local", "serve"]
    port = command[command.index("--port") + 1]
    for name, svc in airflow_services(compose).items():
        env = environment(svc)
        assert urlsplit(env["CATSEARCH_SAGEMAKER_ENDPOINT_URL"]).netloc == f"sagemaker:{port}", name
        assert environment(sagemaker)["CATSEARCH_AWS_ENDPOINT_URL"] == env["CATSEARCH_AWS_ENDPOINT_URL"], name
        assert "./tools" not in dict(mounts(svc)), name
    assert ("./tools", "/opt/airflow/tools") in mounts(sagemaker)


# --- the real-AWS example in the header ----------------------------------------------------
def real_aws_example() -> dict:
    """The docker-compose.override.yaml the header shows, read as Compose would read it."""
    lines = COMPOSE_FILE.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() == "#   x-real-aws: &real-aws")
    block = []
    for line in lines[start:]:
        if not line.startswith("#  "):
            break
        block.append(line[1:])
    return strict_load(textwrap.dedent("\n".join(block)))


def test_the_real_aws_example_sets_one_region_everywhere():
    example = real_aws_example()
    env = example["x-real-aws"]
    region = env["CATSEARCH_REGION"]  # else the image lookup and request signing go to us-east-1
    assert region != Settings().region
    assert env["AWS_DEFAULT_REGION"] == region
    assert json.loads(env["AIRFLOW_CONN_AWS_DEFAULT"])["extra"]["region_name"] == region
    assert json.loads(env["AIRFLOW_CONN_OPENSEARCH_DEFAULT"])["extra"]["region"] == region
    assert env["CATSEARCH_AWS_ENDPOINT_URL"] == env["CATSEARCH_SAGEMAKER_ENDPOINT_URL"] == ""
    assert sorted(v for v in env if not known_variable(v)) == []
    assert set(example["services"]) == set(airflow_services(strict_load(COMPOSE_FILE.read_text()))) - {"airflow-init"}
