"""SARIF 2.1.0 rendering of findings, so code-scanning UIs can show them.

Pure data in, a JSON-ready dict out; the CLI decides where it goes.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from trainguard import __version__
from trainguard.core.findings import FINDING_KINDS, Finding, Severity

_SARIF_SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"

_LEVEL = {
    Severity.LOW: "note",
    Severity.MEDIUM: "warning",
    Severity.HIGH: "error",
    Severity.CRITICAL: "error",
}


def _location(finding: Finding) -> dict[str, Any] | None:
    uri: str | None = None
    line: int | None = None
    if finding.location:
        file_part, _, line_part = finding.location.rpartition(":")
        if file_part and line_part.isdigit():
            uri, line = file_part, int(line_part)
        else:
            uri = finding.location
    elif finding.path:
        uri = finding.path
    if uri is None:
        return None
    physical: dict[str, Any] = {"artifactLocation": {"uri": uri}}
    if line is not None:
        physical["region"] = {"startLine": line}
    elif finding.offset is not None:
        physical["region"] = {"byteOffset": finding.offset}
    location: dict[str, Any] = {"physicalLocation": physical}
    if finding.member:
        location["logicalLocations"] = [{"name": finding.member, "kind": "member"}]
    return location


def to_sarif(findings: Iterable[Finding], *, tool_command: str) -> dict[str, Any]:
    """One SARIF run holding ``findings``; rules are the distinct finding ids."""
    rules: dict[str, dict[str, Any]] = {}
    results: list[dict[str, Any]] = []
    for finding in findings:
        if finding.rule not in rules:
            kind = FINDING_KINDS.get(finding.rule)
            rule: dict[str, Any] = {"id": finding.rule, "name": finding.rule}
            if kind is not None:
                rule["shortDescription"] = {"text": kind.meaning}
                rule["help"] = {"text": kind.action}
            rules[finding.rule] = rule
        result: dict[str, Any] = {
            "ruleId": finding.rule,
            "level": _LEVEL[finding.severity],
            "message": {"text": finding.message},
            "properties": {
                key: value
                for key, value in finding.to_dict().items()
                if value not in (None, {}) and key not in ("kind", "message")
            },
        }
        location = _location(finding)
        if location is not None:
            result["locations"] = [location]
        results.append(result)
    return {
        "$schema": _SARIF_SCHEMA,
        "version": "2.1.0",
        "runs": [
            {
                "tool": {
                    "driver": {
                        "name": "trainguard",
                        "version": __version__,
                        "informationUri": "https://github.com/trainguard/trainguard",
                        "rules": list(rules.values()),
                    }
                },
                "invocations": [{"commandLine": tool_command, "executionSuccessful": True}],
                "results": results,
            }
        ],
    }
