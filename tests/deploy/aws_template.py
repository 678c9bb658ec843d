"""Read deploy/aws/catalogue-search.yaml the way CloudFormation would, for the tests.

`load()` parses the template with cfn-lint's decoder (short-form tags become
`{"Fn::Sub": ...}`); `Resolver` evaluates the intrinsic functions the template
uses against chosen parameter values and made-up physical names, so the IAM
policies can be given to a policy linter as plain JSON, and says which of the
template's Rules a set of parameters breaks (what CloudFormation refuses before
creating anything); `policies()` lists every policy document in the template
with where it sits and what kind it is.
"""

from __future__ import annotations

import copy
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
TEMPLATE = REPO / "deploy" / "aws" / "catalogue-search.yaml"

ACCOUNT = "123456789012"
REGION = "us-east-1"
NO_VALUE = object()

# Values for the parameters that have no default (a real deployment names its own).
REQUIRED_PARAMETERS = {
    "AirflowRoleName": "mwaa-catalogue-search-execution",
    "OpenSearchAdminRoleArn": f"arn:aws:iam::{ACCOUNT}:role/catalogue-search-admin",
}


def load(path: Path = TEMPLATE) -> dict[str, Any]:
    from cfnlint.decode import decode_str

    template, matches = decode_str(path.read_text())
    if matches:
        raise ValueError(f"{path} does not parse: {matches}")
    return template


def text(path: Path = TEMPLATE) -> str:
    return path.read_text()


class Resolver:
    """Evaluates Ref, Fn::Sub, Fn::GetAtt, Fn::If, Fn::Join, Fn::Equals, Fn::Not and Condition."""

    def __init__(self, template: dict[str, Any], parameters: dict[str, Any] | None = None):
        self.template = template
        self.params: dict[str, Any] = {}
        for name, spec in template.get("Parameters", {}).items():
            if "Default" in spec:
                value = spec["Default"]
                if spec.get("Type") == "CommaDelimitedList":
                    value = [v for v in str(value).split(",")] if value != "" else [""]
                self.params[name] = value
        self.params.update(REQUIRED_PARAMETERS)
        self.params.update(parameters or {})
        missing = [n for n in template.get("Parameters", {}) if n not in self.params]
        if missing:
            raise ValueError(f"no value for the parameters {missing}")
        self.params.update(
            {
                "AWS::AccountId": ACCOUNT,
                "AWS::Region": self.params.get("AWS::Region", REGION),
                "AWS::Partition": "aws",
                "AWS::StackName": "catalogue-search",
                "AWS::NoValue": NO_VALUE,
            }
        )

    # --- conditions ------------------------------------------------------------
    def condition(self, name: str) -> bool:
        return bool(self.resolve(self.template["Conditions"][name]))

    def broken_rules(self) -> list[str]:
        """The AssertDescription of every rule assertion these parameters fail (CloudFormation's refusal)."""
        out = []
        for rule in self.template.get("Rules", {}).values():
            if "RuleCondition" in rule and not self.resolve(rule["RuleCondition"]):
                continue
            out += [a["AssertDescription"] for a in rule["Assertions"] if not self.resolve(a["Assert"])]
        return out

    # --- physical names of the resources ------------------------------------
    def ref(self, logical_id: str) -> Any:
        if logical_id in self.params:
            return self.params[logical_id]
        resource = self.template["Resources"][logical_id]
        kind, props = resource["Type"], resource.get("Properties", {})
        if kind == "AWS::S3::Bucket":
            return self.resolve(props["BucketName"])
        if kind == "AWS::IAM::Role":
            return self.resolve(props["RoleName"])
        if kind == "AWS::IAM::ManagedPolicy":
            return f"arn:aws:iam::{ACCOUNT}:policy/{self.resolve(props['ManagedPolicyName'])}"
        if kind == "AWS::OpenSearchService::Domain":
            return self.resolve(props["DomainName"])
        if kind == "AWS::EC2::SecurityGroup":
            return "sg-0123456789abcdef0"
        if kind == "AWS::Logs::LogGroup":
            return self.resolve(props["LogGroupName"])
        if kind == "AWS::Logs::ResourcePolicy":
            return self.resolve(props["PolicyName"])
        raise KeyError(f"no Ref value for {logical_id} ({kind})")

    def get_att(self, logical_id: str, attribute: str) -> str:
        kind = self.template["Resources"][logical_id]["Type"]
        name = self.ref(logical_id)
        region = self.params["AWS::Region"]
        if (kind, attribute) == ("AWS::S3::Bucket", "Arn"):
            return f"arn:aws:s3:::{name}"
        if (kind, attribute) == ("AWS::IAM::Role", "Arn"):
            return f"arn:aws:iam::{ACCOUNT}:role/{name}"
        if (kind, attribute) == ("AWS::OpenSearchService::Domain", "Arn"):
            return f"arn:aws:es:{region}:{ACCOUNT}:domain/{name}"
        if (kind, attribute) == ("AWS::Logs::LogGroup", "Arn"):
            return f"arn:aws:logs:{region}:{ACCOUNT}:log-group:{name}:*"
        if (kind, attribute) == ("AWS::OpenSearchService::Domain", "DomainEndpoint"):
            return f"search-{name}-abcdefghijklmnop.{region}.es.amazonaws.com"
        raise KeyError(f"no GetAtt {logical_id}.{attribute} ({kind})")

    # --- intrinsic functions ---------------------------------------------------
    def _sub(self, pattern: str, extra: dict[str, Any]) -> str:
        def one(match: re.Match) -> str:
            name = match.group(1)
            if name in extra:
                return str(self.resolve(extra[name]))
            if "." in name and name.split(".", 1)[0] in self.template["Resources"]:
                return self.get_att(*name.split(".", 1))
            value = self.ref(name)
            if isinstance(value, list):
                raise ValueError(f"${{{name}}} is a list")
            return str(value)

        return re.sub(r"\$\{([^}!]+)\}", one, pattern)

    def resolve(self, node: Any) -> Any:
        if isinstance(node, dict):
            if len(node) == 1:
                ((key, arg),) = node.items()
                if key == "Ref":
                    return self.ref(arg)
                if key == "Fn::Sub":
                    return self._sub(arg, {}) if isinstance(arg, str) else self._sub(arg[0], arg[1])
                if key == "Fn::GetAtt":
                    logical_id, attribute = arg if isinstance(arg, list) else arg.split(".", 1)
                    return self.get_att(logical_id, attribute)
                if key == "Fn::If":
                    return self.resolve(arg[1] if self.condition(arg[0]) else arg[2])
                if key == "Fn::Join":
                    items = self.resolve(arg[1])
                    return str(arg[0]).join(str(i) for i in items)
                if key == "Fn::Equals":  # CloudFormation compares parameter values as strings
                    return str(self.resolve(arg[0])) == str(self.resolve(arg[1]))
                if key == "Fn::Not":
                    return not self.resolve(arg[0])
                if key == "Fn::And":
                    return all(self.resolve(a) for a in arg)
                if key == "Fn::Or":
                    return any(self.resolve(a) for a in arg)
                if key == "Fn::Contains":
                    return str(self.resolve(arg[1])) in [str(v) for v in self.resolve(arg[0])]
                if key == "Condition":
                    return self.condition(arg)
            out = {}
            for k, v in node.items():
                value = self.resolve(v)
                if value is not NO_VALUE:
                    out[str(k)] = value
            return out
        if isinstance(node, list):
            values = [self.resolve(v) for v in node]
            return [v for v in values if v is not NO_VALUE]
        if isinstance(node, str):
            return str(node)
        return node

    def resources(self) -> dict[str, dict[str, Any]]:
        """The resources the stack would create with these parameters, resolved."""
        out = {}
        for logical_id, resource in self.template["Resources"].items():
            condition = resource.get("Condition")
            if condition and not self.condition(condition):
                continue
            out[logical_id] = {"Type": resource["Type"], "Properties": self.resolve(resource.get("Properties", {}))}
        return out


@dataclass
class PolicyDoc:
    where: str  # e.g. "SageMakerExecutionRole.Policies[catalogue-search-inference]"
    kind: str  # "identity", "resource" or "trust"
    resource_id: str
    document: dict[str, Any]


def policies(resources: dict[str, dict[str, Any]]) -> list[PolicyDoc]:
    """Every policy document of the (resolved) resources."""
    out: list[PolicyDoc] = []
    for logical_id, resource in resources.items():
        kind, props = resource["Type"], resource["Properties"]
        if kind == "AWS::IAM::Role":
            out.append(
                PolicyDoc(
                    f"{logical_id}.AssumeRolePolicyDocument", "trust", logical_id, props["AssumeRolePolicyDocument"]
                )
            )
            for policy in props.get("Policies", []):
                out.append(
                    PolicyDoc(
                        f"{logical_id}.Policies[{policy['PolicyName']}]",
                        "identity",
                        logical_id,
                        policy["PolicyDocument"],
                    )
                )
        elif kind in ("AWS::IAM::ManagedPolicy", "AWS::IAM::Policy"):
            out.append(PolicyDoc(f"{logical_id}.PolicyDocument", "identity", logical_id, props["PolicyDocument"]))
        elif kind == "AWS::S3::BucketPolicy":
            out.append(PolicyDoc(f"{logical_id}.PolicyDocument", "resource", logical_id, props["PolicyDocument"]))
        elif kind == "AWS::OpenSearchService::Domain":
            out.append(PolicyDoc(f"{logical_id}.AccessPolicies", "resource", logical_id, props["AccessPolicies"]))
        elif kind == "AWS::Logs::ResourcePolicy":  # a JSON string
            document = json.loads(props["PolicyDocument"])
            out.append(PolicyDoc(f"{logical_id}.PolicyDocument", "resource", logical_id, document))
    return out


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def statements(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return as_list(doc["Statement"])


def statement_block(template_text: str, sid: str) -> str:
    """The template's lines of the statement `Sid: <sid>`, comments included (up to the next item)."""
    lines = template_text.splitlines()
    for i, line in enumerate(lines):
        if re.match(rf"^\s*(- )?Sid: {re.escape(sid)}\s*$", line):
            indent = len(line) - len(line.lstrip(" -"))
            block = [line]
            for nxt in lines[i + 1 :]:
                stripped = nxt.lstrip(" ")
                if stripped and not stripped.startswith("#") and len(nxt) - len(stripped) < indent:
                    break
                if stripped.startswith("- ") and len(nxt) - len(stripped) < indent:
                    break
                block.append(nxt)
            return "\n".join(block)
    raise KeyError(f"no statement with Sid {sid} in the template")


def moto_subset(template: dict[str, Any], supported_types: set[str]) -> tuple[dict[str, Any], set[str], set[str]]:
    """The template less the resources moto cannot create, what depends on them, and outputs naming them.

    Returns (subset, dropped resources, dropped outputs).
    """
    subset = copy.deepcopy(_plain(template))
    dropped = {rid for rid, r in subset["Resources"].items() if r["Type"] not in supported_types}
    changed = True
    while changed:
        changed = False
        for rid, resource in list(subset["Resources"].items()):
            if rid not in dropped and _names_any(resource, dropped):
                dropped.add(rid)
                changed = True
    for rid in dropped:
        subset["Resources"].pop(rid, None)
    dropped_outputs = {name for name, output in subset.get("Outputs", {}).items() if _names_any(output, dropped)}
    for name in dropped_outputs:
        subset["Outputs"].pop(name)
    # moto does not evaluate Rules; they only guard the VPC parameters, which the subset does not use.
    subset.pop("Rules", None)
    return subset, dropped, dropped_outputs


def _plain(node: Any) -> Any:
    if isinstance(node, dict):
        return {str(k): _plain(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_plain(v) for v in node]
    if isinstance(node, str):
        return str(node)
    return node


def _names_any(node: Any, logical_ids: set[str]) -> bool:
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("Ref", "DependsOn") and any(v in logical_ids for v in as_list(value)):
                return True
            if key == "Fn::GetAtt":
                target = value[0] if isinstance(value, list) else str(value).split(".", 1)[0]
                if target in logical_ids:
                    return True
            if key == "Fn::Sub":
                pattern = value if isinstance(value, str) else value[0]
                names = {m.split(".", 1)[0] for m in re.findall(r"\$\{([^}!]+)\}", pattern)}
                if names & logical_ids:
                    return True
            if _names_any(value, logical_ids):
                return True
    elif isinstance(node, list):
        return any(_names_any(v, logical_ids) for v in node)
    return False
