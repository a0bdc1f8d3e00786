"""The container image and the GitHub Actions workflow pass their linters, and keep the
shape the deploy docs promise."""

from __future__ import annotations

import json
import re
import subprocess

from ops_support import ROOT, dev_tool


def test_containerfile_passes_hadolint() -> None:
    done = subprocess.run(
        [dev_tool("hadolint"), "--no-color", str(ROOT / "Containerfile")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (done.returncode, done.stdout + done.stderr) == (0, "")


def test_containerfile_is_multi_stage_non_root_with_ledgerflux_as_entrypoint() -> None:
    text = (ROOT / "Containerfile").read_text()
    stages = re.findall(r"^FROM\s+(\S+)(?:\s+AS\s+(\S+))?", text, re.MULTILINE)
    assert [name for _, name in stages] == ["build", ""], stages
    assert "COPY --from=build /opt/ledgerflux /opt/ledgerflux" in text
    users = re.findall(r"^USER\s+(\S+)", text, re.MULTILINE)
    assert users == ["${LEDGERFLUX_UID}:${LEDGERFLUX_UID}"]
    uid = re.search(r"^ARG LEDGERFLUX_UID=(\d+)$", text, re.MULTILINE)
    assert uid is not None
    assert int(uid.group(1)) >= 1000
    entrypoint = re.search(r"^ENTRYPOINT\s+(.+)$", text, re.MULTILINE)
    assert entrypoint is not None
    assert json.loads(entrypoint.group(1)) == ["ledgerflux"]


def test_dockerignore_sends_only_what_the_build_copies() -> None:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    assert lines[lines.index("*") + 1 :][:5] == [
        "!pyproject.toml",
        "!README.md",
        "!LICENSE",
        "!ledgerflux/",
        "!plugins/coinbase/",
    ]


def test_workflows_pass_actionlint() -> None:
    workflows = sorted((ROOT / ".github" / "workflows").glob("*.yml"))
    assert workflows
    done = subprocess.run(
        [dev_tool("actionlint"), "-no-color", *map(str, workflows)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (done.returncode, done.stdout + done.stderr) == (0, "")


def test_the_workflow_runs_what_ci_runs() -> None:
    text = (ROOT / ".github" / "workflows" / "ci.yml").read_text()
    assert re.search(r"^\s+run: bash \.ci/run$", text, re.MULTILINE)
