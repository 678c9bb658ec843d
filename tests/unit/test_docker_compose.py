"""docker-compose.yaml, checked statically: CI has no Docker engine to run it.

Each rule is a checker function that returns the problems it finds. A test runs
it on the real file (no problems) and on a deliberately broken copy (problems
found), so no rule can pass by accident.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from catalogue_search.settings import Settings
from catalogue_search_dev import localenv, stack

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker-compose.yaml"

# CATSEARCH_* names read outside Settings: localenv.repo_root() and
# localenv.cache_home() (test_localenv_reads_its_own_names proves it).
LOCALENV_NAMES = {"CATSEARCH_REPO", "CATSEARCH_HOME"}

# Names neither the project's settings nor Airflow's config: each is read by a
# well-known third party, and each is set in docker-compose.yaml (a test keeps
# this list from going stale).
THIRD_PARTY_NAMES = {
    # boto3's credential chain (and localenv.py's moto credentials).
    "AWS_ACCESS_KEY_ID": "boto3",
    "AWS_SECRET_ACCESS_KEY": "boto3",
    "AWS_DEFAULT_REGION": "boto3",
    # The postgres image creates this user and database on first start.
    "POSTGRES_USER": "postgres image",
    "POSTGRES_PASSWORD": "postgres image",
    "POSTGRES_DB": "postgres image",
    # The opensearch image: dotted names become node settings (three nodes of one
    # cluster); DISABLE_* skip the security plugin and its demo certificates;
    # JAVA_OPTS sets the heap.
    "cluster.name": "opensearch image",
    "node.name": "opensearch image",
    "discovery.seed_hosts": "opensearch image",
    "cluster.initial_cluster_manager_nodes": "opensearch image",
    "DISABLE_SECURITY_PLUGIN": "opensearch image",
    "DISABLE_INSTALL_DEMO_CONFIG": "opensearch image",
    "OPENSEARCH_JAVA_OPTS": "opensearch image",
    # Python itself: include/ and plugins/ importable, as ./dev does on the host.
    "PYTHONPATH": "python",
    # Hugging Face tokenizers (via open_clip); localenv.py sets it too.
    "TOKENIZERS_PARALLELISM": "tokenizers",
    # The official Airflow image's entrypoint: 0 skips its wait for the Airflow DB (local SageMaker).
    "CONNECTION_CHECK_MAX_COUNT": "airflow image",
    # The official Airflow image's entrypoint: the Celery worker gets a warm shutdown (Airflow's compose file).
    "DUMB_INIT_SETSID": "airflow image",
    # The official Airflow image's convention for the admin user; airflow-init reads them.
    "_AIRFLOW_WWW_USER_USERNAME": "airflow-init",
    "_AIRFLOW_WWW_USER_PASSWORD": "airflow-init",
}

# The Airflow connections the project uses, and the type each must have.
EXPECTED_CONN_TYPES = {Settings().aws_conn_id: "aws", Settings().opensearch_conn_id: "opensearch"}

# Variables whose value addresses a backing service another container provides.
ADDRESS_VARS = (
    "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN",
    "CATSEARCH_AWS_ENDPOINT_URL",
    "CATSEARCH_OPENSEARCH_URL",
    "CATSEARCH_SAGEMAKER_ENDPOINT_URL",
)

_INTERPOLATION = re.compile(r"\$\{[A-Za-z_][A-Za-z0-9_]*(?::?-([^}]*))?\}")
_PINNED_TAG = re.compile(r"\d+\.\d+")


# --- Reading the file -------------------------------------------------------------


def load_compose(path: Path = COMPOSE_FILE) -> dict:
    """The parsed file, with YAML aliases unshared (so a test can break one service only)."""
    with open(path) as fh:
        data = yaml.safe_load(fh)
    return json.loads(json.dumps(data))


@pytest.fixture
def compose() -> dict:
    return load_compose()


def resolve(text: str) -> str:
    """Compose interpolation as it is with nothing set on the host: `${X:-d}` -> `d`, `$$` -> `$`."""
    return _INTERPOLATION.sub(lambda m: m.group(1) or "", text).replace("$$", "$")


def services(compose: dict) -> dict[str, dict]:
    return compose.get("services") or {}


def environment(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {name: resolve("" if value is None else str(value)) for name, value in env.items()}


def airflow_services(compose: dict) -> dict[str, dict]:
    return {name: svc for name, svc in services(compose).items() if "AIRFLOW__CORE__EXECUTOR" in environment(svc)}


def mounts(service: dict) -> list[tuple[str, str]]:
    """(source, target) of each volume; source is a host path or a named volume."""
    out = []
    for volume in service.get("volumes") or []:
        if isinstance(volume, dict):
            out.append((resolve(str(volume.get("source", ""))), str(volume.get("target", ""))))
        else:
            source, target = resolve(volume).split(":")[:2]
            out.append((source, target))
    return out


def is_host_path(source: str) -> bool:
    return source.startswith((".", "/", "~"))


def requirement_pin(name: str) -> str:
    for line in (REPO / "requirements.txt").read_text().splitlines():
        match = re.match(rf"{re.escape(name)}(\[[^\]]*\])?==(\S+)", line.strip())
        if match:
            return match.group(2)
    raise AssertionError(f"{name} is not pinned in requirements.txt")


def image_tag(image: str) -> str:
    """The tag of an image reference ("" if none; a registry port is not a tag)."""
    image = image.split("@", 1)[0]
    name_end = image.rfind("/")
    colon = image.rfind(":")
    return image[colon + 1 :] if colon > name_end else ""


def dockerfile_bases(dockerfile: Path) -> list[str]:
    """The images a Dockerfile's FROM lines name, with ARG defaults substituted."""
    args: dict[str, str] = {}
    stages: set[str] = set()
    bases = []
    for line in dockerfile.read_text().splitlines():
        words = line.split()
        if not words or words[0].startswith("#"):
            continue
        if words[0].upper() == "ARG" and len(words) > 1:
            key, _, default = words[1].partition("=")
            args[key] = default.strip("\"'")
        elif words[0].upper() == "FROM":
            words = [w for w in words[1:] if not w.startswith("--")]
            image = re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), ""), words[0])
            if len(words) >= 3 and words[1].upper() == "AS":
                stages.add(words[2])
            if image not in stages and image != "scratch":
                bases.append(image)
    return bases


# --- The rules --------------------------------------------------------------------


def unpinned_images(compose: dict, repo: Path = REPO) -> list[str]:
    """Every image is pinned to a version (x.y at least, never `latest`); built images by their FROM lines."""
    problems = []
    for name, svc in services(compose).items():
        build = svc.get("build")
        if build is not None:
            build = {"context": build} if isinstance(build, str) else build
            dockerfile = repo / build.get("context", ".") / build.get("dockerfile", "Dockerfile")
            if not dockerfile.is_file():
                problems.append(f"{name}: no Dockerfile at {dockerfile}")
                continue
            images = dockerfile_bases(dockerfile)
            if not images:
                problems.append(f"{name}: {dockerfile} has no FROM image")
        else:
            images = [resolve(str(svc.get("image", "")))]
        for image in images:
            tag = image_tag(image)
            if "@sha256:" in image:
                continue
            if not tag or "latest" in tag or not _PINNED_TAG.search(tag):
                problems.append(f"{name}: image {image!r} is not pinned to a version")
    return problems


def mount_problems(compose: dict, repo: Path = REPO) -> list[str]:
    """Host paths exist inside the repository; named volumes are declared."""
    problems = []
    declared = set(compose.get("volumes") or {})
    for name, svc in services(compose).items():
        for source, target in mounts(svc):
            if is_host_path(source):
                path = (repo / Path(source).expanduser()).resolve()
                if not path.exists():
                    problems.append(f"{name}: host path {source} does not exist")
                elif not path.is_relative_to(repo.resolve()):
                    problems.append(f"{name}: host path {source} is outside the repository")
            elif source not in declared:
                problems.append(f"{name}: named volume {source!r} (for {target}) is not declared")
    return problems


def airflow_option_exists(section: str, key: str) -> bool:
    from airflow.configuration import conf

    # has_option() is False for options without a default (core.execution_api_server_url),
    # so the documented option list is asked too. Deprecated names do not count.
    if conf.has_option(section, key, lookup_from_deprecated=False):
        return True
    return key in conf.configuration_description.get(section, {}).get("options", {})


def unknown_env_names(compose: dict) -> list[str]:
    """Every variable set is read by the project, by Airflow, or by a listed third party."""
    problems = []
    for name, svc in services(compose).items():
        for var in environment(svc):
            if var.startswith("CATSEARCH_"):
                known = var in Settings.env_names() | LOCALENV_NAMES
            elif var.startswith("AIRFLOW__"):
                parts = var.split("__")
                known = len(parts) == 3 and airflow_option_exists(parts[1].lower(), parts[2].lower())
            elif var.startswith("AIRFLOW_CONN_"):
                known = True  # checked by connection_problems
            else:
                known = var in THIRD_PARTY_NAMES
            if not known:
                problems.append(f"{name}: {var} is read by nothing the project knows")
    return problems


def unsafe_ports(compose: dict) -> list[str]:
    """Every published port is bound to 127.0.0.1."""
    problems = []
    for name, svc in services(compose).items():
        for port in svc.get("ports") or []:
            if isinstance(port, dict):
                host_ip = port.get("host_ip", "")
            else:
                parts = str(port).split("/")[0].rsplit(":", 2)
                host_ip = parts[0] if len(parts) == 3 else ""
            if host_ip != "127.0.0.1":
                problems.append(f"{name}: port {port!r} is not bound to 127.0.0.1")
    return problems


def dev_exports() -> set[str]:
    """CATSEARCH_* names `./dev` exports itself (outside localenv.local_environment())."""
    return set(re.findall(r"^export (CATSEARCH_\w+)=", (REPO / "dev").read_text(), re.MULTILINE))


def catsearch_name_problems(compose: dict) -> list[str]:
    """Each Airflow container gets exactly the CATSEARCH_* names the local cluster stack sets."""
    local = {k for k in localenv.local_environment({"CATSEARCH_STACK": "cluster"}) if k.startswith("CATSEARCH_")}
    problems = []
    for name, svc in airflow_services(compose).items():
        names = {k for k in environment(svc) if k.startswith("CATSEARCH_")}
        missing, extra = local - names, names - local - dev_exports()
        if missing or extra:
            problems.append(f"{name}: missing {sorted(missing)}, not set locally {sorted(extra)}")
    return problems


def connection_problems(compose: dict) -> list[str]:
    """AIRFLOW_CONN_* are valid JSON, name a connection the project uses, with its type,
    and say what localenv.py would build from the container's own addresses."""
    problems = []
    for name, svc in services(compose).items():
        env = environment(svc)
        conns = {k: v for k, v in env.items() if k.startswith("AIRFLOW_CONN_")}
        built = localenv.local_environment({k: v for k, v in env.items() if k not in conns})
        for var, value in conns.items():
            conn_id = var.removeprefix("AIRFLOW_CONN_").lower()
            try:
                conn = json.loads(value)
            except ValueError as exc:
                problems.append(f"{name}: {var} is not JSON ({exc})")
                continue
            if conn_id not in EXPECTED_CONN_TYPES:
                problems.append(f"{name}: {var} is a connection the project does not use")
            elif not isinstance(conn, dict) or conn.get("conn_type") != EXPECTED_CONN_TYPES[conn_id]:
                problems.append(f"{name}: {var} must have conn_type {EXPECTED_CONN_TYPES[conn_id]!r}")
            elif var in built and conn != json.loads(built[var]):
                problems.append(f"{name}: {var} differs from localenv.py's {built[var]}")
    return problems


def layout_problems(compose: dict) -> list[str]:
    """The containers mirror the repository under CATSEARCH_REPO, as localenv.repo_root() assumes:
    Airflow and Python point where localenv.py and ./dev point on the host, and each of those
    folders is the mount of the repository folder of the same name."""
    problems = []
    for name, svc in airflow_services(compose).items():
        env = environment(svc)
        repo = env.get("CATSEARCH_REPO", "")
        expected = {
            "PYTHONPATH": f"{repo}/include:{repo}/plugins:{repo}/tools",  # as ./dev sets it
            "AIRFLOW__CORE__DAGS_FOLDER": f"{repo}/dags",  # as localenv.py sets them
            "AIRFLOW__CORE__PLUGINS_FOLDER": f"{repo}/plugins",
        }
        for var, value in expected.items():
            if not repo or env.get(var) != value:
                problems.append(f"{name}: {var}={env.get(var)!r}, expected {value!r}")
        targets = {target: source for source, target in mounts(svc)}
        for folder in ("dags", "plugins", "include", "inference_code"):
            if targets.get(f"{repo}/{folder}", "").rstrip("/") != f"./{folder}":
                problems.append(f"{name}: ./{folder} is not mounted at {repo}/{folder}")
    return problems


def dependency_problems(compose: dict) -> list[str]:
    """Dependencies wait for health (or completion); a long-running Airflow service starts
    only once every backing service it addresses is healthy, the init only once the DB is."""
    problems = []
    all_services = services(compose)
    for name, svc in all_services.items():
        deps = svc.get("depends_on") or {}
        if isinstance(deps, list):
            problems.append(f"{name}: depends_on without conditions")
            continue
        for target, spec in deps.items():
            condition = (spec or {}).get("condition")
            if target not in all_services:
                problems.append(f"{name}: depends on unknown service {target}")
            elif condition == "service_healthy" and "healthcheck" not in all_services[target]:
                problems.append(f"{name}: waits for {target} to be healthy, but it has no healthcheck")
            elif condition not in {"service_healthy", "service_completed_successfully"}:
                problems.append(f"{name}: depends on {target} with condition {condition!r}")
        env = environment(svc)
        address_vars = ADDRESS_VARS if "restart" in svc else ADDRESS_VARS[:1]
        for var in address_vars:
            if var not in env:
                continue
            for host in [urlsplit(url).hostname for url in env[var].split(",")]:  # a cluster: every node
                if host not in all_services:
                    problems.append(f"{name}: {var} addresses {host!r}, which is no service here")
                elif (deps.get(host) or {}).get("condition") != "service_healthy":
                    problems.append(f"{name}: does not wait for {host} ({var}) to be healthy")
    return problems


# --- Tests: the real file ---------------------------------------------------------


def test_compose_file_parses_and_shares_one_airflow_definition(compose):
    assert services(compose), "no services"
    assert "&airflow-common" in COMPOSE_FILE.read_text(), "the Airflow parts should come from one YAML anchor"
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
    assert "airflow users create" in str(airflow["airflow-init"]["command"])
    for name, svc in airflow.items():
        env = environment(svc)
        assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor", name
        assert urlsplit(env["AIRFLOW__CELERY__BROKER_URL"]).hostname == "redis", name
        assert env["AIRFLOW__CELERY__TASK_ACKS_LATE"] == "true", name
        longest = max(Settings().timeout(kind).total_seconds() for kind in ("copy", "load"))
        assert int(env["AIRFLOW__CELERY_BROKER_TRANSPORT_OPTIONS__VISIBILITY_TIMEOUT"]) > longest, name
        assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql"), name
        api_host = urlsplit(env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"]).hostname
        assert services(compose)[api_host]["command"] == "api-server", name
        assert env["AIRFLOW__API_AUTH__JWT_SECRET"], f"{name}: components must share a JWT secret"


def test_images_are_pinned_to_the_project_versions(compose):
    assert unpinned_images(compose) == []
    svc = services(compose)
    bases = dockerfile_bases(REPO / svc["airflow-scheduler"]["build"]["dockerfile"])
    assert bases == [f"apache/airflow:{requirement_pin('apache-airflow')}-python3.11"]
    assert image_tag(svc["opensearch"]["image"]) == stack.OPENSEARCH_VERSION
    assert image_tag(svc["moto"]["image"]) == requirement_pin("moto")
    assert image_tag(svc["postgres"]["image"]).startswith("16.")


def test_mounted_host_paths_exist_in_the_repository(compose):
    assert mount_problems(compose) == []


def test_every_variable_is_read_by_the_project_airflow_or_a_listed_third_party(compose):
    assert unknown_env_names(compose) == []


def test_third_party_allow_list_names_only_what_the_file_sets(compose):
    used = {var for svc in services(compose).values() for var in environment(svc)}
    assert set(THIRD_PARTY_NAMES) - used == set()


def test_localenv_reads_its_own_names(monkeypatch, tmp_path):
    monkeypatch.setenv("CATSEARCH_REPO", str(tmp_path / "repo"))
    monkeypatch.setenv("CATSEARCH_HOME", str(tmp_path / "home"))
    assert localenv.repo_root() == tmp_path / "repo"
    assert localenv.cache_home() == tmp_path / "home"
    assert "CATSEARCH_REPO" in dev_exports()


def test_published_ports_are_loopback_only(compose):
    assert unsafe_ports(compose) == []
    published = {str(p) for svc in services(compose).values() for p in svc.get("ports") or []}
    assert published == {"127.0.0.1:8080:8080", "127.0.0.1:9200:9200", "127.0.0.1:5000:5000", "127.0.0.1:5100:5100"}


def test_catsearch_names_match_the_local_stack(compose):
    assert catsearch_name_problems(compose) == []


def test_connections_are_json_as_localenv_builds_them(compose):
    assert connection_problems(compose) == []
    env = environment(services(compose)["airflow-scheduler"])
    assert set(EXPECTED_CONN_TYPES) == {k.removeprefix("AIRFLOW_CONN_").lower() for k in env if "_CONN_" in k}


def test_containers_mirror_the_repository_layout(compose):
    assert layout_problems(compose) == []


def test_services_wait_for_healthy_dependencies(compose):
    assert dependency_problems(compose) == []
    for name in ("postgres", "opensearch", "moto", "sagemaker"):
        assert "healthcheck" in services(compose)[name], name


def test_the_local_sagemaker_serves_the_address_the_airflow_containers_use(compose):
    """It listens where CATSEARCH_SAGEMAKER_ENDPOINT_URL points, in front of the same moto, and it alone
    mounts tools/: the Airflow containers run the production code without the local tooling."""
    sagemaker = services(compose)["sagemaker"]
    command = [str(part) for part in sagemaker["command"]]
    assert command[:4] == ["python", "-m", "catalogue_search_dev.sagemaker_local", "serve"]
    port = command[command.index("--port") + 1]
    for name, svc in airflow_services(compose).items():
        env = environment(svc)
        assert urlsplit(env["CATSEARCH_SAGEMAKER_ENDPOINT_URL"]).netloc == f"sagemaker:{port}", name
        assert environment(sagemaker)["CATSEARCH_AWS_ENDPOINT_URL"] == env["CATSEARCH_AWS_ENDPOINT_URL"], name
        assert not any(source.rstrip("/") == "./tools" for source, _ in mounts(svc)), name
    assert ("./tools", "/opt/airflow/tools") in mounts(sagemaker)
    assert f"127.0.0.1:{port}:{port}" in sagemaker["ports"]


# --- Tests: broken copies are rejected -----------------------------------------------


@pytest.mark.parametrize(
    "image",
    ["postgres", "postgres:latest", "postgres:16", "localhost:5000/postgres", "opensearchproject/opensearch:2"],
)
def test_unpinned_image_is_rejected(compose, image):
    compose["services"]["postgres"]["image"] = image
    assert unpinned_images(compose)


@pytest.mark.parametrize("base", ["apache/airflow", "apache/airflow:latest", "${BASE}", "apache/airflow:3"])
def test_unpinned_dockerfile_base_is_rejected(compose, tmp_path, base):
    (tmp_path / "Dockerfile").write_text(f"ARG BASE=apache/airflow:latest\nFROM {base}\nRUN true\n")
    compose["services"]["airflow-scheduler"]["build"] = {"context": str(tmp_path)}
    assert unpinned_images(compose)


def test_multi_stage_dockerfile_checks_every_base(compose, tmp_path):
    (tmp_path / "Dockerfile").write_text(
        "FROM --platform=linux/amd64 python:3.11.9 AS build\nFROM debian:latest\nCOPY --from=build /a /a\n"
    )
    compose["services"]["airflow-scheduler"]["build"] = {"context": str(tmp_path)}
    assert unpinned_images(compose) == ["airflow-scheduler: image 'debian:latest' is not pinned to a version"]


@pytest.mark.parametrize("volume", ["./no_such_dir:/opt/airflow/x", "../:/opt/airflow/x", "undeclared:/opt/airflow/x"])
def test_bad_mount_is_rejected(compose, volume):
    compose["services"]["airflow-scheduler"]["volumes"].append(volume)
    assert mount_problems(compose)


@pytest.mark.parametrize(
    "var",
    ["CATSEARCH_OPENSEARCH_ULR", "AIRFLOW__CORE__EXECUTER", "AIRFLOW__NOSUCH__THING", "AIRFLOW__CORE", "MY_TOKEN"],
)
def test_unknown_variable_is_rejected(compose, var):
    compose["services"]["airflow-scheduler"]["environment"][var] = "x"
    assert unknown_env_names(compose) == [f"airflow-scheduler: {var} is read by nothing the project knows"]


def test_deprecated_airflow_option_is_rejected(compose):
    compose["services"]["airflow-scheduler"]["environment"]["AIRFLOW__CORE__SQL_ALCHEMY_CONN"] = "sqlite://"
    assert unknown_env_names(compose)


@pytest.mark.parametrize("port", ["9200:9200", "0.0.0.0:9200:9200", 9200, "9200", {"target": 9200, "published": 9200}])
def test_port_open_beyond_loopback_is_rejected(compose, port):
    compose["services"]["opensearch"]["ports"] = [port]
    assert unsafe_ports(compose)


def test_catsearch_name_missing_or_extra_is_rejected(compose):
    del compose["services"]["airflow-scheduler"]["environment"]["CATSEARCH_QUERY_ENCODER"]
    compose["services"]["airflow-triggerer"]["environment"]["CATSEARCH_INDEX_ALIAS"] = "products"
    assert [p.split(":")[0] for p in catsearch_name_problems(compose)] == ["airflow-scheduler", "airflow-triggerer"]


@pytest.mark.parametrize(
    "var, value",
    [
        ("AIRFLOW_CONN_AWS_DEFAULT", "aws://testing:testing@"),
        ("AIRFLOW_CONN_AWS_DEFAULT", '{"conn_type": "s3"}'),
        ("AIRFLOW_CONN_OPENSEARCH_DEFAULT", '{"conn_type": "opensearch", "host": "127.0.0.1", "port": 9200}'),
        ("AIRFLOW_CONN_SEARCH", '{"conn_type": "opensearch"}'),
    ],
)
def test_bad_connection_is_rejected(compose, var, value):
    compose["services"]["airflow-scheduler"]["environment"][var] = value
    assert connection_problems(compose)


def test_connection_pointing_away_from_the_containers_address_is_rejected(compose):
    env = compose["services"]["airflow-scheduler"]["environment"]
    env["AIRFLOW_CONN_AWS_DEFAULT"] = env["AIRFLOW_CONN_AWS_DEFAULT"].replace(
        "http://moto:5000", "http://127.0.0.1:5000"
    )
    assert connection_problems(compose)


@pytest.mark.parametrize(
    "var, value",
    [
        ("PYTHONPATH", "/opt/airflow/src:/opt/airflow/plugins"),
        ("AIRFLOW__CORE__DAGS_FOLDER", "/opt/airflow/include"),
        ("CATSEARCH_REPO", "/srv/catalogue-search"),
    ],
)
def test_path_outside_the_mirrored_repository_is_rejected(compose, var, value):
    compose["services"]["airflow-scheduler"]["environment"][var] = value
    assert layout_problems(compose)


def test_missing_code_mount_is_rejected(compose):
    volumes = compose["services"]["airflow-scheduler"]["volumes"]
    volumes[:] = [v for v in volumes if "inference_code" not in v]
    assert layout_problems(compose)


@pytest.mark.parametrize(
    "break_it",
    [
        lambda c: c["services"]["airflow-scheduler"]["depends_on"].pop("moto"),
        lambda c: c["services"]["airflow-init"]["depends_on"].pop("postgres"),
        lambda c: c["services"]["airflow-scheduler"]["depends_on"]["opensearch"].update(condition="service_started"),
        lambda c: c["services"]["opensearch"].pop("healthcheck"),
        lambda c: c["services"]["airflow-triggerer"].update(depends_on=["postgres", "moto", "opensearch"]),
        lambda c: c["services"]["airflow-scheduler"]["environment"].update(
            CATSEARCH_OPENSEARCH_URL="http://search:9200"
        ),
    ],
)
def test_unsafe_start_order_is_rejected(compose, break_it):
    break_it(compose)
    assert dependency_problems(compose)
