"""What AWS refuses or bills that a linter of IAM cannot see: the domain's zones and subnets, the
bucket's lifecycle, the logs; and checkov over the whole template, every skip with its reason.

The template's Rules are what CloudFormation checks before it creates anything: a
set of parameters that breaks one fails the deployment at once with the rule's
message. `Resolver.broken_rules()` evaluates them as CloudFormation does.
"""

from __future__ import annotations

import json
import subprocess

import aws_template as t
import pytest

from catalogue_search.settings import Settings

DEFAULTS = Settings()
VPC = {"VpcId": "vpc-0123456789abcdef0", "ClientSecurityGroupId": "sg-0123456789abcdef1"}
SUBNETS = ("subnet-0123456789abcdef1", "subnet-0123456789abcdef2", "subnet-0123456789abcdef3")
# checkov findings left on purpose; the reason sits beside each skip in the template.
CHECKOV_SKIPS = {"CKV_AWS_18", "CKV_AWS_158", "CKV_AWS_317"}


@pytest.fixture(scope="module")
def template():
    return t.load()


def _vpc(zones: int, subnets: int, nodes: int | None = None) -> dict:
    params = {**VPC, "AvailabilityZoneCount": str(zones), "DataNodeCount": nodes or zones}
    params.update({f"SubnetId{i + 1}": SUBNETS[i] for i in range(subnets)})
    return params


# --- zones and subnets ------------------------------------------------------------------
@pytest.mark.parametrize("zones", [1, 2, 3])
def test_one_subnet_per_zone_is_accepted_and_goes_to_the_domain(template, zones):
    resolver = t.Resolver(template, _vpc(zones, zones))
    assert resolver.broken_rules() == []
    cluster = resolver.resources()["Domain"]["Properties"]["ClusterConfig"]
    vpc = resolver.resources()["Domain"]["Properties"]["VPCOptions"]
    assert vpc["SubnetIds"] == list(SUBNETS[:zones])
    assert cluster["ZoneAwarenessEnabled"] is (zones > 1)
    if zones > 1:
        assert cluster["ZoneAwarenessConfig"] == {"AvailabilityZoneCount": str(zones)}
    else:
        assert "ZoneAwarenessConfig" not in cluster


@pytest.mark.parametrize(
    "zones, subnets, message",
    [
        (1, 2, "AvailabilityZoneCount=1 takes exactly one subnet"),
        (1, 3, "AvailabilityZoneCount=1 takes exactly one subnet"),
        (2, 1, "AvailabilityZoneCount=2 takes exactly two subnets"),
        (2, 3, "AvailabilityZoneCount=2 takes exactly two subnets"),
        (3, 2, "AvailabilityZoneCount=3 takes exactly three subnets"),
    ],
)
def test_a_subnet_count_other_than_the_zone_count_is_refused_with_its_reason(template, zones, subnets, message):
    """The guide's old advice (MWAA's two subnets with one node) is the first case."""
    broken = t.Resolver(template, _vpc(zones, subnets, nodes=zones)).broken_rules()
    assert len(broken) == 1 and broken[0].startswith(message), broken


def test_subnets_need_the_vpc_the_security_group_and_the_first_subnet(template):
    assert t.Resolver(template, {"SubnetId1": SUBNETS[0]}).broken_rules() == [
        "VpcId is required when SubnetId1 is given.",
        "ClientSecurityGroupId is required when SubnetId1 is given.",
    ]
    assert t.Resolver(template, {"SubnetId2": SUBNETS[1]}).broken_rules() == [
        "SubnetId2 and SubnetId3 need SubnetId1 (give the subnets in order, one per zone)."
    ]


@pytest.mark.parametrize("zones, nodes, ok", [(2, 2, True), (2, 4, True), (2, 3, False), (3, 6, True), (3, 4, False)])
def test_the_zones_must_share_the_nodes_evenly(template, zones, nodes, ok):
    broken = t.Resolver(template, {"AvailabilityZoneCount": str(zones), "DataNodeCount": nodes}).broken_rules()
    assert (broken == []) is ok, broken


def test_the_default_is_one_zone_one_node_and_a_public_endpoint(template):
    resolver = t.Resolver(template)
    assert resolver.broken_rules() == []
    props = resolver.resources()["Domain"]["Properties"]
    assert props["ClusterConfig"]["ZoneAwarenessEnabled"] is False and "VPCOptions" not in props


def test_in_a_vpc_only_the_airflow_workers_reach_the_domain(template):
    resources = t.Resolver(template, _vpc(2, 2)).resources()
    assert resources["Domain"]["Properties"]["VPCOptions"]["SecurityGroupIds"] == ["sg-0123456789abcdef0"]
    sg = resources["DomainSecurityGroup"]["Properties"]
    assert sg["SecurityGroupIngress"] == [
        {
            "IpProtocol": "tcp",
            "FromPort": 443,
            "ToPort": 443,
            "SourceSecurityGroupId": VPC["ClientSecurityGroupId"],
            "Description": "Airflow workers",
        }
    ]
    assert "0.0.0.0/0" not in json.dumps(sg)


# --- the bucket ---------------------------------------------------------------------------
def _rules(template) -> list[dict]:
    return t.Resolver(template).resources()["ProjectBucket"]["Properties"]["LifecycleConfiguration"]["Rules"]


def test_lifecycle_rules_do_not_overlap_and_clear_stray_delete_markers(template):
    """For each kind of action, no two rules whose prefixes overlap (S3 would apply whichever is shortest)."""
    rules = _rules(template)
    actions = ("ExpirationInDays", "NoncurrentVersionExpiration", "AbortIncompleteMultipartUpload")
    for action in (*actions, "ExpiredObjectDeleteMarker"):
        prefixes = [r.get("Prefix", "") for r in rules if action in r and r["Status"] == "Enabled"]
        for i, a in enumerate(prefixes):
            for b in prefixes[i + 1 :]:
                assert not (a.startswith(b) or b.startswith(a)), (action, a, b)
    (markers,) = [r for r in rules if r.get("ExpiredObjectDeleteMarker")]
    assert "Prefix" not in markers and "ExpirationInDays" not in markers  # S3 refuses both in one rule


def test_lifecycle_expires_old_manifests_but_never_live_embeddings_images_or_models(template):
    rules = _rules(template)
    (expiring,) = [r for r in rules if "ExpirationInDays" in r]
    assert expiring["Prefix"] == DEFAULTS.manifests_prefix and expiring["ExpirationInDays"] == 30
    (noncurrent,) = [r for r in rules if "NoncurrentVersionExpiration" in r]
    assert noncurrent["NoncurrentVersionExpiration"] == {"NoncurrentDays": 7}


def test_plain_http_is_refused_for_every_s3_action(template):
    resources = t.Resolver(template).resources()
    (deny,) = t.statements(resources["ProjectBucketPolicy"]["Properties"]["PolicyDocument"])
    assert deny["Effect"] == "Deny" and deny["Principal"] == "*" and deny["Action"] == "s3:*"
    bucket = f"arn:aws:s3:::{resources['ProjectBucket']['Properties']['BucketName']}"
    assert deny["Resource"] == [bucket, f"{bucket}/*"]
    assert deny["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}


# --- the domain's logs ------------------------------------------------------------------------
def test_the_domain_publishes_its_logs_to_groups_only_it_may_write(template):
    resources = t.Resolver(template).resources()
    domain = resources["Domain"]
    options = domain["Properties"]["LogPublishingOptions"]
    assert set(options) == {"ES_APPLICATION_LOGS", "SEARCH_SLOW_LOGS", "INDEX_SLOW_LOGS"}
    groups = {o["CloudWatchLogsLogGroupArn"] for o in options.values() if o["Enabled"]}
    (policy,) = [p for p in t.policies(resources) if p.resource_id == "DomainLogsPolicy"]
    (stmt,) = t.statements(policy.document)
    assert stmt["Principal"] == {"Service": "es.amazonaws.com"}
    assert set(stmt["Resource"]) == groups and all(g.endswith(":*") for g in groups)
    assert stmt["Condition"] == {"StringEquals": {"aws:SourceAccount": t.ACCOUNT}}
    assert template["Resources"]["Domain"]["DependsOn"] == "DomainLogsPolicy"  # else creation fails


# --- checkov --------------------------------------------------------------------------------
@pytest.mark.slow  # checkov scans for about 15 s (its own virtualenv is built on the first run)
def test_template_passes_checkov_and_every_skip_gives_its_reason():
    from catalogue_search_dev import lint_env

    result = subprocess.run(
        [str(lint_env.checkov()), "-f", str(t.TEMPLATE), "--framework", "cloudformation", "--output", "json"]
        + ["--skip-download"],  # no network: the built-in checks only
        capture_output=True,
        text=True,
        timeout=300,
    )
    report = json.loads(result.stdout)
    results = report["results"]
    failed = [f"{c['check_id']} {c['check_name']} ({c['resource']})" for c in results["failed_checks"]]
    assert not failed, "\n".join(failed)
    assert report["summary"]["passed"] >= 30 and report["summary"]["parsing_errors"] == 0
    skipped = results["skipped_checks"]
    assert {c["check_id"] for c in skipped} == CHECKOV_SKIPS
    for check in skipped:
        assert len(check["check_result"].get("suppress_comment", "")) > 60, f"{check['check_id']}: no reason given"
