"""A local OpenSearch node with the security plugin: the domain's fine-grained access control, on loopback.

    ./dev stack up --secure                                  # beside the plain node
    eval "$(python -m catalogue_search_dev.secure_stack env search)"   # act as the search role

- A copy of the plain install (`stack.install_opensearch`, with k-NN) plus
  `org.opensearch.plugin:opensearch-security:2.19.1.0` from Maven Central, on
  the plain node's HTTP port + 1, with its own data directory: the plain node
  is never touched.
- TLS on transport and HTTP, with a CA and a node certificate made here.
- The internal user `admin` (all_access) stands for the domain's master role:
  it applies the roles and role mappings of `deploy/aws/opensearch_roles.py`,
  as they are, through the security REST API, as step 2 of docs/aws.md does.
- Internal users stand for the IAM roles through backend roles, as AWS maps a
  signed request: `airflow` carries the Airflow role's ARN as an assumed-role
  session presents it (no path), `airflow-path` the same ARN with the path
  `/service-role/` an MWAA role has, `search` the search role's ARN.
  Passwords are random, made once, in `<cache>/stack/secure-opensearch.json` (0600).
"""

from __future__ import annotations

import importlib.util
import json
import os
import secrets
import shlex
import shutil
import ssl
import sys
import urllib.request
import zipfile
from base64 import b64encode
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from catalogue_search_dev import stack
from catalogue_search_dev.localenv import cache_home, exclusive, repo_root

SECURITY_ARTIFACT = f"org.opensearch.plugin:opensearch-security:{stack.KNN_VERSION}:zip"
ACCOUNT = "123456789012"
# The roles a deployment names (CloudFormation's AirflowRoleArn with AirflowRolePath=/service-role/, SearchRoleArn).
AIRFLOW_ROLE_ARN = f"arn:aws:iam::{ACCOUNT}:role/service-role/catalogue-search-airflow"
SEARCH_ROLE_ARN = f"arn:aws:iam::{ACCOUNT}:role/catalogue-search-search-us-east-1"
# Internal user -> the backend role it carries (what the domain sees of the IAM principal).
USERS = {
    "airflow": f"arn:aws:iam::{ACCOUNT}:role/catalogue-search-airflow",
    "airflow-path": AIRFLOW_ROLE_ARN,
    "search": SEARCH_ROLE_ARN,
}
ADMIN = "admin"
NODE_DN = "CN=catsearch-node,OU=local,O=catalogue-search"


@dataclass(frozen=True)
class SecureService(stack.Service):
    """The secured node: its pid beside its data, health asked over TLS as the admin."""

    @property
    def pid_file(self) -> Path:
        return root() / "run" / "opensearch.pid"

    def healthy(self) -> bool:
        if not credentials_file().exists() or not ca_file().exists():
            return False  # never installed here
        try:
            return request("GET", "/_cluster/health", timeout=3).get("status") in {"green", "yellow"}
        except Exception:
            return False


def root() -> Path:
    return stack.opensearch_root() / "secure"


def home() -> Path:
    return root() / f"opensearch-{stack.OPENSEARCH_VERSION}"


def url() -> str:
    """https on the plain node's port + 1 (each helper's plain ports are 10 apart)."""
    plain = urlsplit(os.environ.get("CATSEARCH_OPENSEARCH_URL", "http://127.0.0.1:9200"))
    return f"https://127.0.0.1:{(plain.port or 9200) + 1}"


def service() -> SecureService:
    return SecureService("opensearch-secure", url(), "/_cluster/health")


def ca_file() -> Path:
    return stack.state_dir() / "secure-opensearch-ca.pem"


def credentials_file() -> Path:
    return stack.state_dir() / "secure-opensearch.json"


def credentials() -> dict[str, str]:
    """User -> password, made once (the node keeps them in its security index)."""
    path = credentials_file()
    if path.exists():
        return json.loads(path.read_text())
    made = {user: secrets.token_urlsafe(18) + "-Aa1" for user in (ADMIN, *USERS)}
    path.touch(mode=0o600)
    path.write_text(json.dumps(made, indent=1))
    return made


def request(method: str, path: str, body: Any = None, user: str = ADMIN, timeout: float = 30) -> Any:
    """One REST call to the secured node as `user`; an HTTP error raises (urllib.error.HTTPError)."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url() + path, data=data, method=method)
    req.add_header("Content-Type", "application/json")
    token = b64encode(f"{user}:{credentials()[user]}".encode()).decode()
    req.add_header("Authorization", f"Basic {token}")
    context = ssl.create_default_context(cafile=str(ca_file()))
    with urllib.request.urlopen(req, timeout=timeout, context=context) as resp:
        return json.load(resp)


# --- install -----------------------------------------------------------------------
def install() -> Path:
    """Copy the plain install, add the security plugin, certificates and its configuration (once)."""
    target = home()
    marker = target / ".catsearch-secure-installed"
    if not (marker.exists() and ca_file().exists()):
        with exclusive(root() / ".install.lock"):
            if not (marker.exists() and ca_file().exists()):
                _install(target, marker)
    return target


def _install(target: Path, marker: Path) -> None:
    plain = stack.install_opensearch()
    plugin_zip = stack._maven_fetch(SECURITY_ARTIFACT, cache_home() / "downloads")
    if target.exists():
        shutil.rmtree(target)
    shutil.rmtree(root() / "data", ignore_errors=True)  # a security index from other certificates or users
    shutil.copytree(plain, target, symlinks=True)
    plugin_dir = target / "plugins" / "opensearch-security"
    with zipfile.ZipFile(plugin_zip) as zf:
        zf.extractall(plugin_dir, [n for n in zf.namelist() if not n.startswith("config/")])
    for script in (plugin_dir / "tools").glob("*.sh"):
        script.chmod(0o755)
    config = target / "config"
    from catalogue_search_dev import certificates

    certificates.write(config, NODE_DN)
    shutil.copyfile(config / "root-ca.pem", ca_file())
    (config / "opensearch.yml").write_text(NODE_CONFIG)
    write_security_config(config / "opensearch-security")
    marker.write_text(f"{stack.OPENSEARCH_VERSION} + k-NN + security {stack.KNN_VERSION}\n")


NODE_CONFIG = f"""\
# The secured node (catalogue_search_dev.secure_stack): TLS everywhere, fine-grained access control.
plugins.security.ssl.transport.pemcert_filepath: node.pem
plugins.security.ssl.transport.pemkey_filepath: node-key.pem
plugins.security.ssl.transport.pemtrustedcas_filepath: root-ca.pem
plugins.security.ssl.transport.enforce_hostname_verification: false
plugins.security.ssl.http.enabled: true
plugins.security.ssl.http.pemcert_filepath: node.pem
plugins.security.ssl.http.pemkey_filepath: node-key.pem
plugins.security.ssl.http.pemtrustedcas_filepath: root-ca.pem
plugins.security.nodes_dn: ["{NODE_DN}"]
# The security index is made from config/opensearch-security/ on the first start (no securityadmin run).
plugins.security.allow_default_init_securityindex: true
plugins.security.restapi.roles_enabled: ["all_access"]
plugins.security.audit.type: noop
plugins.security.system_indices.enabled: true
"""


def write_security_config(folder: Path) -> None:
    """Basic authentication against the internal users; only `admin` exists at first (all_access)."""
    import bcrypt

    folder.mkdir(parents=True, exist_ok=True)
    admin_hash = bcrypt.hashpw(credentials()[ADMIN].encode(), bcrypt.gensalt(12)).decode()

    def meta(kind: str) -> str:
        return f'_meta:\n  type: "{kind}"\n  config_version: 2\n'

    files = {
        "config.yml": meta("config")
        + "config:\n  dynamic:\n    http:\n      anonymous_auth_enabled: false\n    authc:\n"
        + "      basic_internal_auth_domain:\n        http_enabled: true\n        transport_enabled: true\n"
        + "        order: 0\n        http_authenticator: {type: basic, challenge: true}\n"
        + "        authentication_backend: {type: intern}\n",
        "internal_users.yml": meta("internalusers") + f'{ADMIN}:\n  hash: "{admin_hash}"\n  reserved: true\n',
        "roles_mapping.yml": meta("rolesmapping") + f'all_access:\n  reserved: false\n  users: ["{ADMIN}"]\n',
        "roles.yml": meta("roles"),
        "action_groups.yml": meta("actiongroups"),
        "tenants.yml": meta("tenants"),
        "nodes_dn.yml": meta("nodesdn"),
        "allowlist.yml": meta("allowlist") + "config:\n  enabled: false\n",
        "audit.yml": meta("audit") + "config:\n  enabled: false\n",
    }
    for name, text in files.items():
        (folder / name).write_text(text)


# --- run -----------------------------------------------------------------------------
def roles_module():
    """deploy/aws/opensearch_roles.py, the module the guide runs against the domain."""
    path = repo_root() / "deploy" / "aws" / "opensearch_roles.py"
    spec = importlib.util.spec_from_file_location("opensearch_roles", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def apply_access(alias: str) -> None:
    """The internal users, then the roles and role mappings exactly as opensearch_roles.py sends them."""
    passwords = credentials()
    for user, backend_role in USERS.items():
        body = {"password": passwords[user], "backend_roles": [backend_role]}
        request("PUT", f"/_plugins/_security/api/internalusers/{user}", body)
    for method, path, body in roles_module().requests(alias, AIRFLOW_ROLE_ARN, SEARCH_ROLE_ARN):
        request(method, path, body)


def up(alias: str | None = None) -> str:
    """Start (or reuse) the secured node and apply the roles for `alias` (default: the settings' alias)."""
    from catalogue_search.settings import Settings

    service().log_file.parent.mkdir(parents=True, exist_ok=True)
    names = {"cluster.name": "catsearch-secure", "node.name": "catsearch-secure"}
    # The secured node answers a test module or a check of the access roles, minutes at most: its JVM compiles
    # with C1 alone, which starts it with about a third less CPU (measured over the secured tests: 27 to 18 CPU
    # s). The plain node keeps both compilers: over a whole suite C1 alone saved it nothing (113 against 114 s).
    started = stack.start_opensearch(
        service(), home=install(), root=root(), extra=names, java_options="-XX:TieredStopAtLevel=1"
    )
    apply_access(alias or Settings.from_env().index_alias)
    return f"{started} at {url()} (TLS, fine-grained access control)"


def down() -> str:
    return stack.stop(service())


def status() -> str:
    health = "healthy" if service().healthy() else "down"
    return f"{health} at {url()} (`./dev stack up --secure`; users: {', '.join(USERS)}, admin)"


def client_env(user: str) -> dict[str, str]:
    """The settings (and the Airflow connection) that make the code talk to the secured node as `user`."""
    password = credentials()[user]
    port = urlsplit(url()).port
    connection = {"conn_type": "opensearch", "host": "127.0.0.1", "port": port, "schema": "https"}
    connection.update(login=user, password=password)
    return {
        "CATSEARCH_OPENSEARCH_URL": url(),
        "CATSEARCH_OPENSEARCH_AUTH": "basic",
        "CATSEARCH_OPENSEARCH_USER": user,
        "CATSEARCH_OPENSEARCH_PASSWORD": password,
        "CATSEARCH_OPENSEARCH_CA_CERTS": str(ca_file()),
        "AIRFLOW_CONN_OPENSEARCH_DEFAULT": json.dumps(connection),
    }


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2 or args[0] != "env" or args[1] not in (ADMIN, *USERS):
        print(f"usage: python -m catalogue_search_dev.secure_stack env {{{'|'.join((ADMIN, *USERS))}}}")
        return 2
    for key, value in client_env(args[1]).items():
        print(f"export {key}={shlex.quote(value)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
