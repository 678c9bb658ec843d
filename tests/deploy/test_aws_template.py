"""The AWS deployment template (deploy/aws/catalogue-search.yaml): lint, least privilege, outputs, moto.

- cfn-lint passes (errors, warnings and informational checks).
- Every IAM policy passes parliament with nothing above LOW; its community
  auditors' findings are allowed only where listed below, with the reason.
- No "*" action in an Allow, and a "*" resource only in the statements listed in
  `STAR_RESOURCE_ALLOWED`, each carrying an `AWS requires "*"` comment.
- The SageMaker and S3 permissions cover exactly the names the code builds
  (checked with the code's own name functions), and nothing of another prefix.
- The outputs name every required production setting (from `settings.REQUIRED`;
  the backend choices of `settings.CHOICES` are a deployment's decision, not a stack value).
- The stack is created in the moto server, less what moto cannot create (the
  OpenSearch domain and the bucket policy: moto's CloudFormation has no model
  for either), and its outputs and resources are read back.
"""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import aws_template as t
import pytest

from catalogue_search import transform
from catalogue_search.contract import ENCODE_TYPES, IMAGE
from catalogue_search.settings import CHOICES, REQUIRED, Settings

DEFAULTS = Settings()

# Statements whose Resource must be "*" because the actions have no resource type.
STAR_RESOURCE_ALLOWED = {
    "EcrAuthorizationToken": "ecr:GetAuthorizationToken is account-wide: it has no resource type",
    "PutMetrics": "cloudwatch:PutMetricData has no resource type (a namespace condition limits it)",
    "SageMakerList": "SageMaker's List* actions have no resource type",
}

# parliament's community auditors flag these; each is what the feature needs, scoped as far as IAM allows.
COMMUNITY_FINDINGS_ALLOWED = {
    (
        "SageMakerExecutionRole.Policies[catalogue-search-inference]",
        "CREDENTIALS_EXPOSURE",
        "ecr:getauthorizationtoken",
    ): "pulling the inference image from ECR needs an authorization token",
    (
        "AirflowWorkerPolicy.PolicyDocument",
        "PERMISSIONS_MANAGEMENT_ACTIONS",
        "iam:passrole",
    ): "CreateModel passes the execution role; limited to that one role and to sagemaker.amazonaws.com",
}

SEVERITY_ORDER = ["MUTE", "INFO", "LOW", "MEDIUM", "HIGH", "CRITICAL"]


@pytest.fixture(scope="module")
def template():
    return t.load()


@pytest.fixture(scope="module")
def resolved(template):
    return t.Resolver(template).resources()


def _documents(resolved, kinds=("identity", "resource")):
    return [p for p in t.policies(resolved) if p.kind in kinds]


def _iam_match(pattern: str, value: str) -> bool:
    """IAM's wildcard match: `*` any run of characters, `?` one character, case-sensitive."""
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, value) is not None


def _allowed(doc, action: str, arn: str) -> bool:
    """Whether some Allow statement of `doc` grants `action` on `arn` (conditions aside)."""
    for stmt in t.statements(doc):
        if stmt["Effect"] != "Allow":
            continue
        actions = [a.lower() for a in t.as_list(stmt["Action"])]
        if action.lower() in actions and any(_iam_match(r, arn) for r in t.as_list(stmt["Resource"])):
            return True
    return False


def _policy(resolved, where_prefix: str):
    (doc,) = [p.document for p in t.policies(resolved) if p.where.startswith(where_prefix)]
    return doc


# --- lint ---------------------------------------------------------------------------
def test_template_passes_cfn_lint():
    from cfnlint.api import ManualArgs, lint

    matches = lint(
        t.text(), regions=["us-east-1", "eu-west-1"], config=ManualArgs(include_checks=["I"], regions=["us-east-1"])
    )
    assert not matches, "\n".join(f"{m.rule.id} line {m.linenumber}: {m.message}" for m in matches)


def _parliament(document: dict, community: bool):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pkg_resources' deprecation warning
        import parliament

    if community:
        parliament.override_config(Path(parliament.__file__).parent / "community_auditors" / "config_override.yaml")
    policy = parliament.analyze_policy_string(json.dumps(document), include_community_auditors=community)
    return [parliament.enhance_finding(f) for f in policy.findings]


def _above_low(findings):
    return [f for f in findings if SEVERITY_ORDER.index(f.severity) > SEVERITY_ORDER.index("LOW")]


def test_every_policy_passes_parliament_with_nothing_above_low(resolved):
    docs = _documents(resolved)
    assert {p.where for p in docs} >= {
        "SageMakerExecutionRole.Policies[catalogue-search-inference]",
        "AirflowWorkerPolicy.PolicyDocument",
        "SearchRole.Policies[catalogue-search-read]",
        "ProjectBucketPolicy.PolicyDocument",
        "Domain.AccessPolicies",
    }
    problems = []
    for p in docs:
        # Stricter than "nothing above LOW": parliament's own auditors find nothing at all.
        problems += [f"{p.where}: {f.severity} {f.issue} {f.location}" for f in _parliament(p.document, False)]
        for f in _above_low(_parliament(p.document, True)):
            actions = (f.location or {}).get("actions", [])
            if not actions or any((p.where, f.issue, a) not in COMMUNITY_FINDINGS_ALLOWED for a in actions):
                problems.append(f"{p.where}: {f.severity} {f.issue} {f.detail} (community auditor)")
    assert not problems, "\n".join(problems)


def test_parliament_flags_what_the_template_must_not_do():
    """The linter is wired right: a typo, a "*" resource and a mismatched resource type are all reported."""
    bad = {
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Action": ["sagemaker:CreateModel", "s3:GetObject"], "Resource": "*"},
            {"Effect": "Allow", "Action": "sagemaker:CreateModle", "Resource": "*"},
            {
                "Effect": "Allow",
                "Action": "s3:GetObject",
                "Resource": f"arn:aws:sagemaker:us-east-1:{t.ACCOUNT}:model/x",
            },
        ],
    }
    findings = _parliament(bad, False)
    assert {"RESOURCE_STAR", "UNKNOWN_ACTION"} <= {f.issue for f in findings}
    assert "RESOURCE_MISMATCH" in {f.issue for f in _above_low(findings)}


# --- wildcards -------------------------------------------------------------------------
def test_no_star_action_and_star_resources_only_where_aws_requires_one(resolved):
    text = t.text()
    found_star = set()
    for p in _documents(resolved):
        for stmt in t.statements(p.document):
            where = f"{p.where} {stmt.get('Sid', '(no Sid)')}"
            for action in t.as_list(stmt.get("Action", [])):
                # A wildcard widens a Deny (the TLS-only bucket policy's s3:*), never what is granted.
                assert "*" not in action or stmt["Effect"] == "Deny", f"{where}: wildcard action {action}"
            assert "NotAction" not in stmt and "NotResource" not in stmt, where
            if stmt["Effect"] == "Allow":
                principal = stmt.get("Principal")
                assert principal != "*" and "*" not in json.dumps(principal or {}), f"{where}: any principal"
            for resource in t.as_list(stmt.get("Resource", [])):
                if resource == "*":
                    assert stmt.get("Sid") in STAR_RESOURCE_ALLOWED, f"{where}: Resource '*' is not on the allow-list"
                    found_star.add(stmt["Sid"])
                    assert 'AWS requires "*"' in t.statement_block(text, stmt["Sid"]), (
                        f"{where}: Resource '*' without an `# AWS requires \"*\": <why>` comment"
                    )
                    continue
                parts = resource.split(":", 5)
                assert len(parts) == 6 and "*" not in "".join(parts[:5]), f"{where}: wildcard ARN field in {resource}"
                assert not parts[5].startswith("*"), f"{where}: every resource of the service: {resource}"
    assert found_star == set(STAR_RESOURCE_ALLOWED), "the allow-list names statements that are gone"


# --- trust ---------------------------------------------------------------------------
def test_roles_trust_only_their_callers(resolved):
    trust = {p.resource_id: p.document for p in t.policies(resolved) if p.kind == "trust"}
    (sm,) = t.statements(trust["SageMakerExecutionRole"])
    assert sm["Principal"] == {"Service": "sagemaker.amazonaws.com"} and sm["Action"] == "sts:AssumeRole"
    assert sm["Condition"] == {"StringEquals": {"aws:SourceAccount": t.ACCOUNT}}
    (search,) = t.statements(trust["SearchRole"])
    assert search["Principal"] == {"AWS": f"arn:aws:iam::{t.ACCOUNT}:root"}
    named = t.Resolver(t.load(), {"SearchRoleTrustedPrincipal": f"arn:aws:iam::{t.ACCOUNT}:role/search-api"})
    (search,) = t.statements(
        [p for p in t.policies(named.resources()) if p.where.startswith("SearchRole.Assume")][0].document
    )
    assert search["Principal"] == {"AWS": f"arn:aws:iam::{t.ACCOUNT}:role/search-api"}


def _transform_output_key(s: Settings) -> str:
    """A key batch transform writes, from the code (the embedding store's layout)."""
    from catalogue_search import encoding

    return encoding.Store(s).output_prefix("v1", s.run_prefix("manual__r")) + "00000.jsonl.out"


# --- the SageMaker execution role ------------------------------------------------------------
def test_execution_role_reads_inputs_and_writes_only_embeddings(resolved):
    doc = _policy(resolved, "SageMakerExecutionRole.Policies")
    bucket = resolved["ProjectBucket"]["Properties"]["BucketName"]
    s = DEFAULTS.replace(bucket=bucket)
    obj = f"arn:aws:s3:::{bucket}/"
    for key in (
        f"{s.images_prefix}0a/0a1b2c3d.jpg",
        f"{s.run_prefix('manual__2026-01-01')}transform.manifest",
        s.artifact_uri.split(f"{bucket}/", 1)[1],
    ):
        assert _allowed(doc, "s3:GetObject", obj + key), key
        assert not _allowed(doc, "s3:PutObject", obj + key), key
    assert _allowed(doc, "s3:PutObject", obj + _transform_output_key(s))
    assert not _allowed(doc, "s3:GetObject", obj + "other/secret.csv")
    assert not _allowed(doc, "s3:PutObject", obj + "other/file")
    granted = {a for stmt in t.statements(doc) for a in t.as_list(stmt["Action"])}
    assert not {
        a
        for a in granted
        if a.startswith("s3:") and a not in {"s3:GetObject", "s3:ListBucket", "s3:PutObject", "s3:AbortMultipartUpload"}
    }
    repo = "arn:aws:ecr:us-east-1:763104351884:repository/pytorch-inference"
    assert _allowed(doc, "ecr:BatchGetImage", repo)
    assert not _allowed(doc, "ecr:BatchGetImage", "arn:aws:ecr:us-east-1:111111111111:repository/anything")
    logs = f"arn:aws:logs:us-east-1:{t.ACCOUNT}:log-group:/aws/sagemaker/"
    # Log-group actions are evaluated against "log-group:<name>:*".
    for group in ("TransformJobs", f"Endpoints/{s.endpoint_name('IMAGE')}"):
        for action in ("logs:CreateLogGroup", "logs:DescribeLogStreams"):
            assert _allowed(doc, action, f"{logs}{group}:*"), (action, group)
    assert _allowed(doc, "logs:PutLogEvents", logs + f"TransformJobs:log-stream:{transform.job_name(s, 'r')}/i-0")
    assert _allowed(doc, "logs:PutLogEvents", logs + f"Endpoints/{s.endpoint_name('TEXT')}:log-stream:AllTraffic/i-0")
    assert not _allowed(doc, "logs:PutLogEvents", logs + "Endpoints/someone-else:log-stream:x")


# --- the Airflow workers' policy -----------------------------------------------------------
def _code_names(s: Settings) -> dict[str, list[str]]:
    """The SageMaker resource names the code builds, by ARN resource type."""
    from catalogue_search import endpoints

    run_job = transform.job_name(s, "scheduled__2026-11-23T00:00:00+00:00")
    names = {
        "model": [s.sagemaker_model_name(IMAGE)],
        "endpoint-config": [],
        "endpoint": [],
        "transform-job": [run_job, f"{run_job}-1764000000"],  # the operator's timestamped retry name
    }
    for encode_type in ENCODE_TYPES:
        # The name is `<endpoint>-<digest of the model>`: any model dict shows its shape.
        model = {"ModelName": s.sagemaker_model_name(encode_type), "PrimaryContainer": {"Image": "image:tag"}}
        digest_name = endpoints.resource_name(s, encode_type, model, "etag")
        names["model"].append(digest_name)
        names["endpoint-config"].append(digest_name)
        names["endpoint"].append(s.endpoint_name(encode_type))
    return names


def test_airflow_policy_covers_the_names_the_code_builds_and_no_others(resolved):
    doc = _policy(resolved, "AirflowWorkerPolicy")
    arn = f"arn:aws:sagemaker:us-east-1:{t.ACCOUNT}:"
    verbs = {
        "model": "Model",
        "endpoint-config": "EndpointConfig",
        "endpoint": "Endpoint",
        "transform-job": "TransformJob",
    }
    for kind, names in _code_names(DEFAULTS.replace(model_name="ViT-B-32")).items():
        for name in names:
            for verb in ("Create", "Describe"):
                action = f"sagemaker:{verb}{verbs[kind]}"
                assert _allowed(doc, action, f"{arn}{kind}/{name.lower()}"), f"{action} on {kind}/{name}"
            for foreign in (f"other-team-{name}", "catalogue-searcher-x", f"x{name}"):
                assert not _allowed(doc, f"sagemaker:Create{verbs[kind]}", f"{arn}{kind}/{foreign}"), foreign
    for name in _code_names(DEFAULTS)["endpoint"]:
        assert _allowed(doc, "sagemaker:InvokeEndpoint", f"{arn}endpoint/{name}")
        assert _allowed(doc, "sagemaker:DeleteEndpoint", f"{arn}endpoint/{name}")
    # Grants the code never uses are gone (the tear-down lists models and configs, never endpoints or jobs).
    granted = {a for stmt in t.statements(doc) for a in t.as_list(stmt["Action"])}
    unused = {"sagemaker:StopTransformJob", "sagemaker:ListEndpoints", "sagemaker:ListTransformJobs"}
    assert not granted & (unused | {"s3:GetBucketLocation", "s3:AbortMultipartUpload"})


def test_search_role_reads_and_encodes_but_changes_nothing(resolved):
    doc = _policy(resolved, "SearchRole.Policies")
    arn = f"arn:aws:sagemaker:us-east-1:{t.ACCOUNT}:"
    names = _code_names(DEFAULTS)
    for name in names["endpoint"]:
        assert _allowed(doc, "sagemaker:InvokeEndpoint", f"{arn}endpoint/{name}")
        assert _allowed(doc, "sagemaker:DescribeEndpoint", f"{arn}endpoint/{name}")
    for name in names["endpoint-config"]:
        assert _allowed(doc, "sagemaker:DescribeEndpointConfig", f"{arn}endpoint-config/{name}")
        assert _allowed(doc, "sagemaker:DescribeModel", f"{arn}model/{name}")
    actions = {a for s in t.statements(doc) for a in t.as_list(s["Action"])}
    writes = {a for a in actions if not a.split(":")[1].startswith(("Describe", "Invoke", "ESHttpGet", "ESHttpHead"))}
    assert writes == {"es:ESHttpPost"}, "searches are POSTs; FGAC's reader role keeps them read-only"


def test_airflow_policy_passes_only_the_execution_role_only_to_sagemaker(resolved):
    doc = _policy(resolved, "AirflowWorkerPolicy")
    (stmt,) = [s for s in t.statements(doc) if "iam:PassRole" in t.as_list(s["Action"])]
    role = resolved["SageMakerExecutionRole"]["Properties"]["RoleName"]
    assert stmt["Resource"] == f"arn:aws:iam::{t.ACCOUNT}:role/{role}"
    assert stmt["Condition"] == {"StringEquals": {"iam:PassedToService": "sagemaker.amazonaws.com"}}
    iam_actions = {a for s in t.statements(doc) for a in t.as_list(s["Action"]) if a.startswith("iam:")}
    assert iam_actions == {"iam:PassRole"}


def test_airflow_policy_s3_and_opensearch_scope(resolved):
    doc = _policy(resolved, "AirflowWorkerPolicy")
    bucket = resolved["ProjectBucket"]["Properties"]["BucketName"]
    assert _allowed(doc, "s3:PutObject", f"arn:aws:s3:::{bucket}/manifests/run/products.jsonl")
    assert _allowed(doc, "s3:ListBucket", f"arn:aws:s3:::{bucket}")
    src = DEFAULTS.source_bucket
    assert _allowed(doc, "s3:GetObject", f"arn:aws:s3:::{src}/listings/metadata/listings_0.json.gz")
    assert not _allowed(doc, "s3:PutObject", f"arn:aws:s3:::{src}/x")
    assert not _allowed(doc, "s3:GetObject", "arn:aws:s3:::another-bucket/x")
    # Only the catalogue state's per-shard lists are ever deleted.
    assert _allowed(doc, "s3:DeleteObject", f"arn:aws:s3:::{bucket}/{DEFAULTS.state_prefix}products/shard-0.json")
    for key in (f"{DEFAULTS.images_prefix}0a/0a.jpg", f"{DEFAULTS.embeddings_prefix}v1/0.out", "models/x.tar.gz"):
        assert not _allowed(doc, "s3:DeleteObject", f"arn:aws:s3:::{bucket}/{key}"), key
    domain = f"arn:aws:es:us-east-1:{t.ACCOUNT}:domain/{resolved['Domain']['Properties']['DomainName']}"
    for verb in ("Get", "Head", "Post", "Put", "Delete"):
        assert _allowed(doc, f"es:ESHttp{verb}", f"{domain}/products/_search")
    assert not _allowed(doc, "es:ESHttpGet", f"arn:aws:es:us-east-1:{t.ACCOUNT}:domain/other/x")
    assert resolved["AirflowWorkerPolicy"]["Properties"]["Roles"] == [t.REQUIRED_PARAMETERS["AirflowRoleName"]]


# --- the domain (its VPC layout, the bucket's rules and the logs: test_aws_layout.py) -------------
def test_opensearch_domain_is_2_19_encrypted_https_only_with_fgac(resolved):
    props = resolved["Domain"]["Properties"]
    assert props["EngineVersion"] == "OpenSearch_2.19"
    assert props["EncryptionAtRestOptions"]["Enabled"] is True
    assert props["NodeToNodeEncryptionOptions"]["Enabled"] is True
    assert props["DomainEndpointOptions"]["EnforceHTTPS"] is True
    assert props["DomainEndpointOptions"]["TLSSecurityPolicy"].startswith("Policy-Min-TLS-1-2")
    security = props["AdvancedSecurityOptions"]
    assert security["Enabled"] is True and security["InternalUserDatabaseEnabled"] is False
    assert security["MasterUserOptions"] == {"MasterUserARN": t.REQUIRED_PARAMETERS["OpenSearchAdminRoleArn"]}
    writer, reader = t.statements(props["AccessPolicies"])
    assert set(writer["Principal"]["AWS"]) == {
        f"arn:aws:iam::{t.ACCOUNT}:role/{t.REQUIRED_PARAMETERS['AirflowRoleName']}",
        t.REQUIRED_PARAMETERS["OpenSearchAdminRoleArn"],
    }
    assert (
        reader["Principal"]["AWS"]
        == f"arn:aws:iam::{t.ACCOUNT}:role/{resolved['SearchRole']['Properties']['RoleName']}"
    )
    # The search role never sends a PUT or a DELETE: the domain refuses them before FGAC is asked.
    assert sorted(reader["Action"]) == ["es:ESHttpGet", "es:ESHttpHead", "es:ESHttpPost"]
    assert "VPCOptions" not in props and "DomainSecurityGroup" not in resolved


# --- outputs and settings -----------------------------------------------------------------
def _output_settings(template) -> dict[str, str]:
    """Output name -> the CATSEARCH_ variable its description says it is the value of."""
    out = {}
    for name, output in template["Outputs"].items():
        match = re.match(r"^(CATSEARCH_[A-Z0-9_]+)\b", str(output.get("Description", "")))
        if match:
            out[name] = match.group(1)
    return out


def test_outputs_cover_every_required_production_setting(template):
    named = _output_settings(template)
    unknown = set(named.values()) - Settings.env_names()
    assert not unknown, f"outputs name settings that do not exist: {unknown}"
    needed = {f"CATSEARCH_{n.upper()}" for n in REQUIRED if n not in CHOICES}
    assert needed, "settings.REQUIRED names no stack value"
    assert needed <= set(named.values()), f"no output for {needed - set(named.values())}"


def test_parameter_defaults_are_the_settings_defaults(template):
    """An output that echoes a parameter carries the setting's value: its default must be the code's default."""
    field_of = {f"CATSEARCH_{f.upper()}": f for f in Settings.__dataclass_fields__}
    checked = 0
    for name, env in _output_settings(template).items():
        value = template["Outputs"][name]["Value"]
        if isinstance(value, dict) and set(value) == {"Ref"} and value["Ref"] in template["Parameters"]:
            default = template["Parameters"][value["Ref"]].get("Default")
            assert str(default) == str(getattr(DEFAULTS, field_of[env])), f"{value['Ref']} default vs {env}"
            checked += 1
    assert checked >= 6
    assert transform.job_name(DEFAULTS, "x").startswith("catsearch-encode-")
    assert "transform-job/catsearch-encode-*" in t.text()


# --- moto ---------------------------------------------------------------------------------
# Resource types of the template that moto 5.2's CloudFormation cannot create (it has no model for them;
# importing moto's model map to ask costs 12 s, so they are named here).
MOTO_UNSUPPORTED = {"AWS::OpenSearchService::Domain", "AWS::S3::BucketPolicy"}


def test_stack_creates_in_moto_and_its_outputs_read_back(moto_url, unique):
    import boto3

    kwargs = {"endpoint_url": moto_url, "region_name": "us-east-1"}
    cf, iam, s3 = (boto3.client(n, **kwargs) for n in ("cloudformation", "iam", "s3"))
    template = t.load()
    types = {r["Type"] for r in template["Resources"].values()}
    subset, dropped, dropped_outputs = t.moto_subset(template, types - MOTO_UNSUPPORTED)
    assert dropped == {"Domain", "ProjectBucketPolicy"}, "only what moto cannot create is left out"
    assert dropped_outputs == {"OpenSearchUrl", "OpenSearchHost", "OpenSearchDomainArn"}

    airflow_role = f"test-airflow-{unique}"
    iam.create_role(
        RoleName=airflow_role, AssumeRolePolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": []})
    )
    stack = f"test-catsearch-{unique}"
    params = {
        "ProjectName": f"test-cs-{unique}",
        "AirflowRoleName": airflow_role,
        "OpenSearchAdminRoleArn": f"arn:aws:iam::{t.ACCOUNT}:role/admin-{unique}",
        "DomainName": f"test-cs-{unique}",
    }
    bucket = None
    try:
        cf.create_stack(
            StackName=stack,
            TemplateBody=json.dumps(subset),
            Capabilities=["CAPABILITY_NAMED_IAM"],
            Parameters=[{"ParameterKey": k, "ParameterValue": v} for k, v in params.items()],
        )
        described = cf.describe_stacks(StackName=stack)["Stacks"][0]
        assert described["StackStatus"] == "CREATE_COMPLETE", described.get("StackStatusReason")
        outputs = {o["OutputKey"]: o["OutputValue"] for o in described["Outputs"]}
        bucket = outputs["Bucket"]
        assert bucket.startswith(f"test-cs-{unique}-") and bucket.endswith("-us-east-1")
        s3.head_bucket(Bucket=bucket)
        role = iam.get_role(RoleName=outputs["SageMakerRoleArn"].rsplit("/", 1)[1])["Role"]
        assert role["Arn"] == outputs["SageMakerRoleArn"]
        assert "sagemaker.amazonaws.com" in json.dumps(role["AssumeRolePolicyDocument"])
        attached = iam.list_attached_role_policies(RoleName=airflow_role)["AttachedPolicies"]
        assert [p["PolicyArn"] for p in attached] == [outputs["AirflowPolicyArn"]]
        version = iam.get_policy(PolicyArn=outputs["AirflowPolicyArn"])["Policy"]["DefaultVersionId"]
        document = iam.get_policy_version(PolicyArn=outputs["AirflowPolicyArn"], VersionId=version)["PolicyVersion"][
            "Document"
        ]
        document = json.loads(document) if isinstance(document, str) else document
        pass_role = [s for s in document["Statement"] if s["Action"] == "iam:PassRole"]
        assert pass_role[0]["Resource"] == outputs["SageMakerRoleArn"]
        assert outputs["SearchRoleArn"].endswith(f"role/test-cs-{unique}-search-us-east-1")
        # The values a deployment exports, as the guide's helper prints them.
        env = stack_env_lines(outputs)
        assert (
            f"CATSEARCH_BUCKET={bucket}" in env and f"CATSEARCH_SAGEMAKER_ROLE_ARN={outputs['SageMakerRoleArn']}" in env
        )
        assert "CATSEARCH_REGION=us-east-1" in env and "CATSEARCH_IMAGES_PREFIX=images/small/" in env
    finally:
        cf.delete_stack(StackName=stack)
        if bucket:  # DeletionPolicy: Retain keeps the bucket (and so does moto)
            s3.delete_bucket(Bucket=bucket)
        for p in iam.list_attached_role_policies(RoleName=airflow_role)["AttachedPolicies"]:
            iam.detach_role_policy(RoleName=airflow_role, PolicyArn=p["PolicyArn"])
        iam.delete_role(RoleName=airflow_role)
        # moto's stack deletion leaves managed policies behind (AWS deletes them).
        for page in iam.get_paginator("list_policies").paginate(Scope="Local"):
            for p in page["Policies"]:
                if p["PolicyName"].startswith(f"test-cs-{unique}-"):
                    iam.delete_policy(PolicyArn=p["Arn"])
        left = [
            r["RoleName"]
            for page in iam.get_paginator("list_roles").paginate()
            for r in page["Roles"]
            if r["RoleName"].startswith(f"test-cs-{unique}-")
        ]
        for role_name in left:  # the stack's roles, should moto keep them too
            for name in iam.list_role_policies(RoleName=role_name)["PolicyNames"]:
                iam.delete_role_policy(RoleName=role_name, PolicyName=name)
            iam.delete_role(RoleName=role_name)


def stack_env_lines(outputs: dict[str, str]) -> list[str]:
    import importlib.util

    spec = importlib.util.spec_from_file_location("stack_env", t.REPO / "deploy" / "aws" / "stack_env.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    descriptions = {k: str(v.get("Description", "")) for k, v in t.load()["Outputs"].items()}
    return [
        f"{k}={v}"
        for k, v in module.settings_from_outputs(
            [{"OutputKey": k, "OutputValue": v, "Description": descriptions[k]} for k, v in outputs.items()]
        ).items()
    ]
