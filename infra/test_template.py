#!/usr/bin/env python3
"""Checks of infra/template.yaml's permissions (issue 10, L6): least-privilege IAM.

- every function lists exactly the DynamoDB actions it uses, on the table and (only where it
  queries it) the `due` index; no broad SAM policy template (DynamoDBCrudPolicy, ...), no
  `dynamodb:*`, Scan, BatchWriteItem, DeleteItem or table administration;
- the granted actions are the ones the Rust code sends (functions/blepay-dynamodb/src and
  functions/blepay-lambda/src, read for their SDK calls), so a new call without its permission, or
  a permission left after its call went, fails here;
- a dedicated operator role and managed policy exist, and that policy is the only statement of
  the template that grants execute-api:Invoke, on /v1/ops/* of this API only; the ops function
  accepts only that role (BLEPAY_OPERATOR_ROLE_ID); every ops route requires AWS_IAM;
- the phone and machine routes keep their authorization; every parameter but the secret ARN has
  a default (infra/local-stack.sh and CI deploy nothing, but a stack update must not need new
  values).

Run by .ci/infra.sh with the tools virtualenv's python (cfn-lint parses the YAML and its
intrinsics): `python3 infra/test_template.py` from the repository root, or with a template path.
"""

import os
import re
import sys
import unittest

from cfnlint.decode import decode

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEMPLATE = os.environ.get("BLEPAY_TEMPLATE", os.path.join(ROOT, "infra", "template.yaml"))

TABLE = "table"
INDEX = "index:due"
# The back office's lists (docs/dynamodb.md "The back office's lists").
PHONE_LIST_INDEXES = {INDEX, "index:sessions_by_user", "index:ledger_by_user"}
OPS_LIST_INDEXES = PHONE_LIST_INDEXES | {
    "index:sessions_by_device",
    "index:sessions_by_time",
    "index:refunds",
    "index:topups_by_user",
}

# function -> {action -> resources}; the reasons are in infra/README.md "Permissions".
EXPECTED = {
    "VerifyFunction": {
        "dynamodb:GetItem": {TABLE},
        "dynamodb:PutItem": {TABLE},
        "dynamodb:UpdateItem": {TABLE},
        "dynamodb:Query": PHONE_LIST_INDEXES,
    },
    "OpsFunction": {
        "dynamodb:GetItem": {TABLE},
        "dynamodb:BatchGetItem": {TABLE},
        "dynamodb:PutItem": {TABLE},
        "dynamodb:UpdateItem": {TABLE},
        "dynamodb:DeleteItem": {TABLE},
        "dynamodb:ConditionCheckItem": {TABLE},
        "dynamodb:Query": OPS_LIST_INDEXES | {TABLE},
    },
    "DeviceFunction": {
        "dynamodb:GetItem": {TABLE},
        "dynamodb:BatchGetItem": {TABLE},
        "dynamodb:Query": {TABLE},
        "dynamodb:PutItem": {TABLE},
        "dynamodb:UpdateItem": {TABLE},
    },
    "SweeperFunction": {
        "dynamodb:PutItem": {TABLE},
        "dynamodb:UpdateItem": {TABLE},
        "dynamodb:Query": {INDEX},
    },
}

FORBIDDEN = {
    "dynamodb:*",
    "dynamodb:Scan",
    "dynamodb:BatchWriteItem",
    "dynamodb:DeleteTable",
    "dynamodb:CreateTable",
    "dynamodb:UpdateTable",
    "dynamodb:PartiQLSelect",
    "dynamodb:PartiQLInsert",
    "dynamodb:PartiQLUpdate",
    "dynamodb:PartiQLDelete",
}

# SDK client method -> the IAM actions it needs. Transactions need the action of each item kind
# (`Put::builder()` etc., below); TransactWriteItems / TransactGetItems are not IAM actions.
SDK_ACTIONS = {
    "get_item": {"dynamodb:GetItem"},
    "put_item": {"dynamodb:PutItem"},
    "update_item": {"dynamodb:UpdateItem"},
    "delete_item": {"dynamodb:DeleteItem"},
    "query": {"dynamodb:Query"},
    "scan": {"dynamodb:Scan"},
    "batch_get_item": {"dynamodb:BatchGetItem"},
    "batch_write_item": {"dynamodb:BatchWriteItem"},
    "describe_table": {"dynamodb:DescribeTable"},
    "create_table": {"dynamodb:CreateTable"},
    "delete_table": {"dynamodb:DeleteTable"},
    "update_table": {"dynamodb:UpdateTable"},
    "update_time_to_live": {"dynamodb:UpdateTimeToLive"},
    "describe_time_to_live": {"dynamodb:DescribeTimeToLive"},
    "list_tables": {"dynamodb:ListTables"},
    "execute_statement": {"dynamodb:PartiQLSelect"},
    "transact_write_items": set(),
    "transact_get_items": set(),
}
TRANSACT_ITEM_ACTIONS = {
    "Put": "dynamodb:PutItem",
    "Update": "dynamodb:UpdateItem",
    "Delete": "dynamodb:DeleteItem",
    "ConditionCheck": "dynamodb:ConditionCheckItem",
    "Get": "dynamodb:GetItem",
}
# Code the functions never run: the CLI's table creation and audit scan, the test helpers.
CLI_ONLY = {
    os.path.join("functions", "blepay-dynamodb", "src", "table.rs"),
    os.path.join("functions", "blepay-dynamodb", "src", "ops", "audit.rs"),
    os.path.join("functions", "blepay-dynamodb", "src", "testing.rs"),
}
CODE_DIRS = [
    os.path.join("functions", "blepay-dynamodb", "src"),
    os.path.join("functions", "blepay-lambda", "src"),
]


def load():
    template, matches = decode(TEMPLATE)
    if template is None or matches:
        raise SystemExit(f"{TEMPLATE} does not parse: {matches}")
    return template


def listify(x):
    return x if isinstance(x, list) else [x]


def resource_kind(r):
    """The table, its `due` index, or what the resource is (anything else fails the checks)."""
    if r == {"Fn::GetAtt": ["Table", "Arn"]} or r == {"Fn::GetAtt": "Table.Arn"}:
        return TABLE
    if isinstance(r, dict) and isinstance(r.get("Fn::Sub"), str):
        prefix = "${Table.Arn}/index/"
        name = r["Fn::Sub"]
        if name.startswith(prefix) and name[len(prefix):].replace("_", "").isalnum():
            return "index:" + name[len(prefix):]
    return repr(r)


def statements(policies):
    """The statements of a SAM function's `Policies` (inline documents only; anything else is
    returned as a pseudo-statement naming it so that the checks fail on it)."""
    out = []
    for p in listify(policies or []):
        if isinstance(p, dict) and "Statement" in p:
            out.extend(listify(p["Statement"]))
        elif isinstance(p, dict):
            # A SAM policy template (DynamoDBCrudPolicy: {...}, AWSSecretsManagerGetSecretValuePolicy: ...).
            for name in p:
                out.append({"PolicyTemplate": name})
        else:
            out.append({"ManagedPolicy": p})
    return out


def dynamodb_grants(function):
    """{action -> {resource kinds}} of a function's Allow statements on DynamoDB."""
    grants = {}
    for st in statements(function["Properties"].get("Policies")):
        if "PolicyTemplate" in st or "ManagedPolicy" in st:
            continue
        if st.get("Effect") != "Allow":
            continue
        for action in listify(st.get("Action", [])):
            if not str(action).lower().startswith("dynamodb:"):
                continue
            grants.setdefault(action, set()).update(
                resource_kind(r) for r in listify(st.get("Resource", []))
            )
    return grants


def walk_statements(node, path):
    """Every IAM statement-like dict (has Effect and Action) anywhere under `node`."""
    if isinstance(node, dict):
        if "Effect" in node and ("Action" in node or "NotAction" in node):
            yield path, node
        for k, v in node.items():
            yield from walk_statements(v, path + [str(k)])
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from walk_statements(v, path + [str(i)])


def code_actions():
    """The IAM actions the functions' Rust code needs, from its SDK calls."""
    found, unknown = set(), set()
    call = re.compile(r"client(?:\(\))?\s*\.\s*([a-z_]+)\s*\(\s*\)")
    item = re.compile(r"\b(Put|Update|Delete|ConditionCheck|Get)::builder\(\)")
    for d in CODE_DIRS:
        for dirpath, _, files in os.walk(os.path.join(ROOT, d)):
            for f in files:
                if not f.endswith(".rs"):
                    continue
                path = os.path.join(dirpath, f)
                rel = os.path.relpath(path, ROOT)
                if rel in CLI_ONLY:
                    continue
                with open(path, encoding="utf-8") as fh:
                    text = fh.read()
                # Unit tests at the end of a file run against DynamoDB Local, not in AWS.
                text = text.split("#[cfg(test)]")[0]
                for m in call.finditer(text):
                    name = m.group(1)
                    if name in ("config", "clone"):
                        continue
                    if name not in SDK_ACTIONS:
                        unknown.add(f"{rel}: client.{name}()")
                        continue
                    found |= SDK_ACTIONS[name]
                for m in item.finditer(text):
                    found.add(TRANSACT_ITEM_ACTIONS[m.group(1)])
    return found, unknown


class Permissions(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.t = load()
        cls.res = cls.t["Resources"]
        cls.functions = {
            k: v for k, v in cls.res.items() if v.get("Type") == "AWS::Serverless::Function"
        }

    def test_functions_are_the_expected_ones(self):
        self.assertEqual(set(self.functions), set(EXPECTED))

    def test_no_function_uses_a_broad_policy_template_or_managed_policy(self):
        for name, fn in self.functions.items():
            for st in statements(fn["Properties"].get("Policies")):
                if "PolicyTemplate" in st:
                    self.assertNotIn(
                        "DynamoDB", st["PolicyTemplate"], f"{name} uses {st['PolicyTemplate']}"
                    )
                    self.assertEqual(
                        st["PolicyTemplate"],
                        "AWSSecretsManagerGetSecretValuePolicy",
                        f"{name} uses policy template {st['PolicyTemplate']}",
                    )
                self.assertNotIn("ManagedPolicy", st, f"{name} attaches {st.get('ManagedPolicy')}")

    def test_no_function_is_granted_a_forbidden_or_wildcard_dynamodb_action(self):
        for name, fn in self.functions.items():
            for action, resources in dynamodb_grants(fn).items():
                self.assertNotIn(action, FORBIDDEN, f"{name} is granted {action}")
                if action == "dynamodb:DeleteItem":
                    # Only the ops function deletes, and only a resolved problem's open marker.
                    self.assertEqual(name, "OpsFunction", f"{name} is granted {action}")
                self.assertNotIn("*", action, f"{name} is granted {action}")
                for r in resources:
                    self.assertIn(r, {TABLE} | OPS_LIST_INDEXES, f"{name}: {action} on {r}")
            for st in statements(fn["Properties"].get("Policies")):
                self.assertNotIn("NotAction", st, f"{name} has a NotAction statement")
                self.assertNotIn("NotResource", st, f"{name} has a NotResource statement")

    def test_each_function_has_exactly_the_dynamodb_actions_it_uses(self):
        granted = {name: dynamodb_grants(self.functions[name]) for name in EXPECTED}
        self.assertEqual(granted, EXPECTED)

    def test_the_granted_actions_are_the_ones_the_code_sends(self):
        used, unknown = code_actions()
        self.assertEqual(unknown, set(), "SDK calls this test does not know the IAM action of")
        granted = set()
        for grants in EXPECTED.values():
            granted |= set(grants)
        self.assertEqual(
            used,
            granted,
            "the functions' code and the template disagree: add the permission to the function "
            "that makes the new call (and to EXPECTED and infra/README.md), or drop the unused one",
        )

    def test_only_the_secret_readers_read_the_secret(self):
        readers = {
            name
            for name, fn in self.functions.items()
            for st in statements(fn["Properties"].get("Policies"))
            if st.get("PolicyTemplate") == "AWSSecretsManagerGetSecretValuePolicy"
        }
        self.assertEqual(readers, {"VerifyFunction", "OpsFunction", "DeviceFunction"})


class Operators(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.t = load()
        cls.res = cls.t["Resources"]

    def test_the_operator_role_and_policy_exist(self):
        role = self.res.get("OperatorRole")
        self.assertIsNotNone(role, "no OperatorRole")
        self.assertEqual(role["Type"], "AWS::IAM::Role")
        trust = listify(role["Properties"]["AssumeRolePolicyDocument"]["Statement"])
        self.assertEqual(len(trust), 1)
        self.assertEqual(trust[0]["Action"], "sts:AssumeRole")
        self.assertIn("AWS", trust[0]["Principal"])
        self.assertNotEqual(trust[0]["Principal"]["AWS"], "*")
        policy = self.res.get("OperatorPolicy")
        self.assertIsNotNone(policy, "no OperatorPolicy")
        self.assertEqual(policy["Type"], "AWS::IAM::ManagedPolicy")
        self.assertEqual(policy["Properties"]["Roles"], [{"Ref": "OperatorRole"}])
        self.assertIn("OperatorRoleArn", self.t["Outputs"])
        self.assertEqual(
            self.t["Outputs"]["OperatorRoleArn"]["Value"], {"Fn::GetAtt": ["OperatorRole", "Arn"]}
        )

    def test_only_the_operator_policy_grants_execute_api_invoke_and_only_on_ops_routes(self):
        grants = []
        for path, st in walk_statements(self.res, []):
            actions = [str(a).lower() for a in listify(st.get("Action", st.get("NotAction", [])))]
            if "NotAction" in st or any(
                a in ("*", "execute-api:*", "execute-api:invoke") for a in actions
            ):
                grants.append((path, st))
        self.assertEqual(
            [p[0] for p, _ in grants], ["OperatorPolicy"], f"execute-api grants: {grants}"
        )
        (_, st), = grants
        self.assertEqual(st["Effect"], "Allow")
        self.assertEqual(listify(st["Action"]), ["execute-api:Invoke"])
        self.assertEqual(
            listify(st["Resource"]),
            [
                {
                    "Fn::Sub": "arn:${AWS::Partition}:execute-api:${AWS::Region}:"
                    "${AWS::AccountId}:${HttpApi}/*/*/v1/ops/*"
                }
            ],
        )

    def test_the_ops_function_accepts_only_the_operator_role(self):
        env = self.res["OpsFunction"]["Properties"]["Environment"]["Variables"]
        self.assertEqual(
            env.get("BLEPAY_OPERATOR_ROLE_ID"), {"Fn::GetAtt": ["OperatorRole", "RoleId"]}
        )


class Routes(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.t = load()
        cls.res = cls.t["Resources"]
        cls.routes = {}
        for name, r in cls.res.items():
            if r.get("Type") != "AWS::Serverless::Function":
                continue
            for ev in (r["Properties"].get("Events") or {}).values():
                if ev.get("Type") != "HttpApi":
                    continue
                p = ev["Properties"]
                auth = (p.get("Auth") or {}).get("Authorizer")
                cls.routes[(p["Method"], p["Path"])] = (name, auth)

    def test_the_api_enables_iam_authorization(self):
        auth = self.res["HttpApi"]["Properties"]["Auth"]
        self.assertIs(auth.get("EnableIamAuthorizer"), True)
        self.assertEqual(auth.get("DefaultAuthorizer"), "CognitoJwt")

    def test_every_ops_route_requires_iam_and_goes_to_the_ops_function(self):
        ops = {k: v for k, v in self.routes.items() if k[1].startswith("/v1/ops")}
        # 5 before issue 11; + the fleet list, PATCH, decommission, the spending limit; the
        # session list, a user's statement, the sales report; refund, close, problems (2), key
        # revoke and rotate, operators (3), the audit trail; issue 12: top-ups list and refund.
        self.assertEqual(len(ops), 24, ops)
        for route, (fn, auth) in ops.items():
            self.assertEqual(auth, "AWS_IAM", route)
            self.assertEqual(fn, "OpsFunction", route)
        for route, (fn, _) in self.routes.items():
            if fn == "OpsFunction" and not route[1].startswith("/ops"):
                self.assertTrue(route[1].startswith("/v1/ops/"), route)

    def test_the_console_is_public_and_served_by_the_ops_function(self):
        # Its own sign-in (an operator token, a server-side session): no authorizer.
        console = {k: v for k, v in self.routes.items() if k[1] == "/ops" or k[1].startswith("/ops/")}
        self.assertEqual(
            console,
            {("ANY", "/ops/{proxy+}"): ("OpsFunction", "NONE"), ("GET", "/ops"): ("OpsFunction", "NONE")},
        )

    def test_phone_and_machine_routes_are_unchanged(self):
        for route, (fn, auth) in self.routes.items():
            if route[1].startswith("/v1/ops") or route[1].startswith("/ops"):
                continue
            if route == ("POST", "/v1/device"):
                self.assertEqual((fn, auth), ("DeviceFunction", "NONE"))
            elif route[1].startswith("/v1/webhooks/"):
                # The providers' signature is the authentication (docs/topups.md).
                self.assertEqual((fn, auth), ("VerifyFunction", "NONE"), route)
                self.assertIn(route[0], ("POST",), route)
            else:
                self.assertEqual((fn, auth), ("VerifyFunction", "CognitoJwt"), route)

    def test_topups_and_the_provider_webhooks_are_routed(self):
        for route in [("POST", "/v1/topups"), ("GET", "/v1/topups/{topUpId}")]:
            self.assertEqual(self.routes[route], ("VerifyFunction", "CognitoJwt"), route)
        for route in [("POST", "/v1/webhooks/stripe"), ("POST", "/v1/webhooks/wechatpay")]:
            self.assertEqual(self.routes[route], ("VerifyFunction", "NONE"), route)
        for fn in ("VerifyFunction", "OpsFunction"):
            env = self.res[fn]["Properties"]["Environment"]["Variables"]
            self.assertIn("BLEPAY_STRIPE_SECRET_ID", env, fn)
            self.assertIn("BLEPAY_WECHATPAY_SECRET_ID", env, fn)
            sids = [
                st.get("Sid")
                for pol in self.res[fn]["Properties"]["Policies"]
                if isinstance(pol, dict) and "Statement" in pol
                for st in pol["Statement"]
            ]
            self.assertIn("ProviderSecrets", sids, fn)

    def test_every_parameter_but_the_secret_has_a_default(self):
        for name, p in self.t["Parameters"].items():
            if name != "MasterKeysSecretArn":  # the provider secrets default to "" (not offered)
                self.assertIn("Default", p, name)


if __name__ == "__main__":
    if len(sys.argv) > 1:
        TEMPLATE = sys.argv.pop(1)
    result = unittest.main(exit=False, verbosity=2).result
    failed = len(result.failures) + len(result.errors)
    print(f"{result.testsRun - failed} passed, {failed} failed")
    sys.exit(1 if failed else 0)
