"""Map the Airflow role (writer) and the search role (reader) in the domain's fine-grained access control.

CloudFormation can name the FGAC master user but not create roles or role
mappings, so this runs once after the stack, as the master role
(`OpenSearchAdminRoleArn`), with requests signed by SigV4:

    python deploy/aws/opensearch_roles.py --stack catalogue-search [--region eu-west-1] [--dry-run]

- `catalogue_search_writer` (backend role: the Airflow workers' role): every
  action on the indices starting with the alias (create the versioned index,
  bulk-load, validate, swap the alias, report duplicates, delete superseded
  indices), and `_analyze` with no index.
- `catalogue_search_reader` (backend role: the search role): search the alias
  and its indices, and read their settings and mapping; nothing else.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "include"))

WRITER = "catalogue_search_writer"
READER = "catalogue_search_reader"
SECURITY_API = "/_plugins/_security/api"


def roles(alias: str) -> dict[str, dict[str, Any]]:
    """The two FGAC roles, scoped to the indices whose names start with `alias`.

    The least set the pipeline and the search clients need, found by running them
    against the security plugin (tests/deploy/test_secured_opensearch.py). Each
    grant outside the alias's indices says why.
    """
    pattern = f"{alias}*"
    return {
        WRITER: {
            "description": "catalogue-search ingest (Airflow workers)",
            "cluster_permissions": [
                "indices:data/write/bulk",  # the bulk load (a cluster action to the plugin)
                "indices:data/read/scroll",  # the duplicate report scans the index ...
                "indices:data/read/scroll/clear",  # ... and helpers.scan always clears its scroll
                # The quality evaluation reads stored title vectors (_mget) and asks each product's
                # queries in one _msearch, as do the duplicate report's index neighbours.
                "indices:data/read/mget",
                "indices:data/read/msearch",
            ],
            "index_permissions": [
                {"index_patterns": [pattern], "allowed_actions": ["indices_all"]},
                # Checked against every index, though they read nothing of the others: `GET/HEAD
                # _alias/<alias>` (which index serves?) and `_analyze` with no index (does the node
                # have the asciifolding filter?), which tokenizes the text it is given.
                {"index_patterns": ["*"], "allowed_actions": ["indices:admin/aliases/get", "indices:admin/analyze"]},
            ],
        },
        READER: {
            "description": "catalogue-search queries (search role)",
            "cluster_permissions": [],
            "index_permissions": [
                {
                    "index_patterns": [pattern],
                    # read: search, get, count; the settings (result window) and mapping (the
                    # index's model version) every query checks first.
                    "allowed_actions": ["read", "indices:monitor/settings/get", "indices:admin/mappings/get"],
                }
            ],
        },
    }


def without_path(role_arn: str) -> str:
    """arn:aws:iam::1:role/service-role/x -> arn:aws:iam::1:role/x (what an assumed-role session carries)."""
    head, _, name = role_arn.partition(":role/")
    return f"{head}:role/{name.rsplit('/', 1)[-1]}" if name else role_arn


def role_mappings(writer_role_arn: str, reader_role_arn: str) -> dict[str, dict[str, Any]]:
    """Each role mapped by its IAM role's ARN in both forms: with the path (as IAM names the role) and
    without (as the domain sees a request signed by an assumed-role session of it)."""

    def both(arn: str) -> list[str]:
        return list(dict.fromkeys([arn, without_path(arn)]))

    return {WRITER: {"backend_roles": both(writer_role_arn)}, READER: {"backend_roles": both(reader_role_arn)}}


def requests(alias: str, writer_role_arn: str, reader_role_arn: str) -> list[tuple[str, str, dict[str, Any]]]:
    """The security API calls, in order: (method, path, body)."""
    out = [("PUT", f"{SECURITY_API}/roles/{name}", body) for name, body in roles(alias).items()]
    out += [
        ("PUT", f"{SECURITY_API}/rolesmapping/{name}", body)
        for name, body in role_mappings(writer_role_arn, reader_role_arn).items()
    ]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stack", default="catalogue-search")
    parser.add_argument("--region", default=None)
    parser.add_argument("--dry-run", action="store_true", help="print the requests, send nothing")
    args = parser.parse_args(argv)
    import boto3

    session = boto3.Session(region_name=args.region)
    stack = session.client("cloudformation").describe_stacks(StackName=args.stack)["Stacks"][0]
    outputs = {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])}
    calls = requests(outputs["IndexAlias"], outputs["AirflowRoleArn"], outputs["SearchRoleArn"])
    if args.dry_run:
        for method, path, body in calls:
            print(method, path, json.dumps(body))
        return 0
    from catalogue_search import index

    client = index.make_client(
        outputs["OpenSearchUrl"], auth="sigv4", region=outputs["Region"], credentials=session.get_credentials()
    )
    for method, path, body in calls:
        print(method, path, client.transport.perform_request(method, path, body=body))
    return 0


if __name__ == "__main__":
    sys.exit(main())
