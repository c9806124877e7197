"""The node's own OpenAPI document, held against the node by schemathesis: every operation, as a department,
an operator and an auditor, with generated valid and invalid requests. Each answer must not be a server
error, and its status, content type and body must be the ones the document describes.

Bounded so that the whole run stays within a minute on SQLite: 8 examples an operation, drawn once and sent
as each role, took 33 s for the three roles on a 2-core machine (GOVNODE_SCHEMATHESIS_EXAMPLES raises the
number for a longer run by hand)."""

from __future__ import annotations

import os

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.specs.openapi.checks import (content_type_conformance, response_schema_conformance,
                                               status_code_conformance)

from support import CIVIL, POLICE, ThreadedNode

EXAMPLES = int(os.environ.get("GOVNODE_SCHEMATHESIS_EXAMPLES", "8"))
CHECKS = [not_a_server_error, response_schema_conformance, status_code_conformance, content_type_conformance]
ACCOUNTS = {
    "dept": (POLICE, "桓台县公安局", "dept"),
    "operator": ("OPERATOR", "桓台县大数据中心", "operator"),
    "auditor": ("AUDITOR", "桓台县审计局", "auditor"),
    "civil": (CIVIL, "桓台县民政局", "dept"),
}


@pytest.fixture(scope="module")
def live_node(tmp_path_factory):
    # SQLite in the suite (the minute's budget); GOVNODE_SCHEMATHESIS_BACKEND=postgresql for a run by hand.
    backend = os.environ.get("GOVNODE_SCHEMATHESIS_BACKEND", "sqlite")
    node = ThreadedNode(tmp_path_factory.mktemp("schemathesis"), backend, ACCOUNTS)
    yield node
    node.close()


@pytest.fixture(scope="module")
def node_schema(live_node):
    return schemathesis.openapi.from_url(live_node.url + "/api/v1/openapi.json")


@pytest.fixture(scope="module")
def generated_cases(node_schema):
    """Each operation's cases, drawn once for every role. Drawing them is most of a run's CPU (schemathesis
    and Hypothesis building values for the document's patterns: 43 % of a role's run, profiled), and with a
    fixed seed each role drew the very same cases anyway; a role's run now only sends them."""
    drawn = []
    for result in node_schema.get_all_operations():
        operation = result.ok()  # the document itself must load: an invalid operation raises here
        cases = st.one_of(operation.as_strategy(GenerationMode.POSITIVE), operation.as_strategy(GenerationMode.NEGATIVE))
        kept: list[schemathesis.Case] = []

        @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck), phases=[Phase.generate])
        @given(case=cases)
        def keep(case: schemathesis.Case) -> None:
            kept.append(case)

        keep()
        drawn.append((operation, kept))
    return drawn


@pytest.mark.parametrize("role", ["dept", "operator", "auditor"])
def test_the_node_behaves_as_its_document_says(live_node, generated_cases, role):
    headers = {"Authorization": f"Bearer {live_node.tokens[role]}"}
    failures: list[str] = []
    for operation, cases in generated_cases:
        # A valid request too: the document must let a generator make one (a path parameter whose values hold
        # a slash, with no example of one, let it make none, and its operations ran with invalid requests only).
        assert any(case.meta.generation.mode is GenerationMode.POSITIVE for case in cases), \
            f"no valid request was drawn for {operation.label}"
        for case in cases:
            try:
                case.call_and_validate(base_url=live_node.url, headers=headers, checks=CHECKS, timeout=30)
            except (Exception, FailureGroup) as exc:  # noqa: BLE001 - every operation runs; failures reported together
                failures.append(f"{operation.label} ({role}): {exc}")  # its text holds the case as a curl command
                break  # the operation's first failure, as a run of its cases stops at it
    assert len(generated_cases) >= 40
    assert not failures, f"{len(failures)} operations failed:\n\n" + "\n\n".join(failures)
