"""Print the settings and Airflow connections of a deployed catalogue-search stack as `export` lines.

    python deploy/aws/stack_env.py --stack catalogue-search [--region eu-west-1] > catalogue-search.env

Every stack output whose description starts with `CATSEARCH_<NAME>:` is the
value of that setting; the AWS choice of each backend setting
(`CATSEARCH_QUERY_ENCODER=endpoint`) and the two Airflow connections
(`AIRFLOW_CONN_AWS_DEFAULT`, `AIRFLOW_CONN_OPENSEARCH_DEFAULT` with SigV4) are
added. No secret is printed: the workers' credentials come from their role.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "include"))

from catalogue_search.settings import CHOICES, Settings  # noqa: E402

# The value each backend setting takes on AWS (only those the settings still have are printed).
AWS_CHOICES = {"query_encoder": "endpoint"}
_SETTING = re.compile(r"^(CATSEARCH_[A-Z0-9_]+)\b")


def settings_from_outputs(outputs: list[dict[str, Any]]) -> dict[str, str]:
    """CATSEARCH_* name -> value, from the stack outputs (DescribeStacks' `Outputs`)."""
    known = Settings.env_names()
    env: dict[str, str] = {}
    for output in outputs:
        match = _SETTING.match(str(output.get("Description", "")))
        if match and match.group(1) in known:
            env[match.group(1)] = str(output["OutputValue"])
    for name, value in AWS_CHOICES.items():
        if name in CHOICES and value in CHOICES[name]:
            env[f"CATSEARCH_{name.upper()}"] = value
    return env


def connections(outputs: list[dict[str, Any]]) -> dict[str, str]:
    """AIRFLOW_CONN_AWS_DEFAULT and AIRFLOW_CONN_OPENSEARCH_DEFAULT for the stack's region and domain."""
    values = {o["OutputKey"]: str(o["OutputValue"]) for o in outputs}
    region = values["Region"]
    env = {"AIRFLOW_CONN_AWS_DEFAULT": json.dumps({"conn_type": "aws", "extra": {"region_name": region}})}
    if "OpenSearchHost" in values:
        env["AIRFLOW_CONN_OPENSEARCH_DEFAULT"] = json.dumps(
            {
                "conn_type": "opensearch",
                "host": values["OpenSearchHost"],
                "port": 443,
                "schema": "https",
                "extra": {"auth": "sigv4", "region": region},
            }
        )
    return env


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stack", default="catalogue-search", help="stack name (%(default)s)")
    parser.add_argument("--region", default=None, help="the stack's region (default: your AWS configuration's)")
    args = parser.parse_args(argv)
    import boto3

    stack = boto3.client("cloudformation", region_name=args.region).describe_stacks(StackName=args.stack)
    outputs = stack["Stacks"][0].get("Outputs", [])
    for key, value in {**settings_from_outputs(outputs), **connections(outputs)}.items():
        print(f"export {key}={shlex.quote(value)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
