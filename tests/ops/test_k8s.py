"""The Kubernetes manifests as a cluster would get them: every overlay rendered by kustomize,
validated against the Kubernetes schemas, restricted pod security on every container, and
every LedgerFlux container's command line run against the real CLI with the rendered config
(``--check``), so a manifest cannot name a flag, a key or a plugin the code does not have."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml
from ops_support import ROOT, dev_tool

from ledgerflux.app import worst_case_stop_s
from ledgerflux.cli import build_parser
from ledgerflux.config import Config, load_config

OVERLAYS = ("base", "overlays/dev", "overlays/production")
WORKLOADS = ("Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob")
DAEMONS = ("ingest", "normalize", "snapshot", "gateway")
STOP_MARGIN_S = 10.0
"""Headroom above preStop plus the worst-case stop: process exit, a slow node."""
CONFIG_PATH = "/etc/ledgerflux/ledgerflux.toml"


@cache
def rendered(overlay: str) -> str:
    done = subprocess.run(
        [dev_tool("kubectl"), "kustomize", str(ROOT / "k8s" / overlay)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def resources(overlay: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(rendered(overlay)) if doc]


def workloads(overlay: str) -> Iterator[dict[str, Any]]:
    return (doc for doc in resources(overlay) if doc["kind"] in WORKLOADS)


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = workload["spec"]["template"]["spec"]
    return spec


def containers(workload: dict[str, Any]) -> list[dict[str, Any]]:
    spec = pod_spec(workload)
    return [*spec.get("initContainers", []), *spec["containers"]]


def is_ledgerflux(container: dict[str, Any]) -> bool:
    return str(container["image"]).split(":")[0].rsplit("/", 1)[-1] == "ledgerflux"


def ledgerflux_workloads(overlay: str) -> list[dict[str, Any]]:
    return [w for w in workloads(overlay) if any(map(is_ledgerflux, containers(w)))]


def find(overlay: str, kind: str, name_prefix: str) -> dict[str, Any]:
    found = [
        doc
        for doc in resources(overlay)
        if doc["kind"] == kind and doc["metadata"]["name"].startswith(name_prefix)
    ]
    assert len(found) == 1, (kind, name_prefix, [d["metadata"]["name"] for d in found])
    return found[0]


def rendered_config(overlay: str, tmp_path: Path) -> Path:
    """The ledgerflux.toml of the overlay's generated ConfigMap, written to a file."""
    configmap = find(overlay, "ConfigMap", "ledgerflux-config-")
    path = tmp_path / f"{overlay.replace('/', '-')}.toml"
    path.write_text(configmap["data"]["ledgerflux.toml"])
    return path


def config_of(overlay: str, tmp_path: Path) -> Config:
    return load_config(path=rendered_config(overlay, tmp_path), env={})


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_passes_strict_schema_validation(overlay: str, tmp_path: Path) -> None:
    manifest = tmp_path / "rendered.yaml"
    manifest.write_text(rendered(overlay))
    done = subprocess.run(
        [dev_tool("kubernetes-validate"), "--strict", "--quiet", str(manifest)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert (done.returncode, done.stdout + done.stderr) == (0, "")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_container_meets_the_restricted_pod_security_standard(overlay: str) -> None:
    names = resources(overlay)
    namespace = next(doc for doc in names if doc["kind"] == "Namespace")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    checked = 0
    for workload in workloads(overlay):
        where = workload["metadata"]["name"]
        pod = pod_spec(workload).get("securityContext", {})
        assert pod.get("runAsNonRoot") is True, where
        assert pod.get("runAsUser", 0) != 0, where
        assert pod.get("seccompProfile") == {"type": "RuntimeDefault"}, where
        assert pod_spec(workload).get("automountServiceAccountToken") is False, where
        for container in containers(workload):
            at = f"{where}/{container['name']}"
            context = container.get("securityContext", {})
            assert context.get("runAsNonRoot") is True, at
            assert context.get("allowPrivilegeEscalation") is False, at
            assert context.get("readOnlyRootFilesystem") is True, at
            assert context.get("capabilities") == {"drop": ["ALL"]}, at
            assert context.get("seccompProfile") == {"type": "RuntimeDefault"}, at
            assert context.get("privileged") in (None, False), at
            checked += 1
    assert checked >= 5  # nats + the four daemons, more in dev


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_container_has_resources_probes_and_every_workload_a_pdb(overlay: str) -> None:
    budgets = [doc for doc in resources(overlay) if doc["kind"] == "PodDisruptionBudget"]
    covered = [b["spec"]["selector"]["matchLabels"] for b in budgets]
    for workload in workloads(overlay):
        where = workload["metadata"]["name"]
        labels = workload["spec"]["template"]["metadata"]["labels"]
        assert any(all(labels.get(k) == v for k, v in sel.items()) for sel in covered), where
        for container in pod_spec(workload)["containers"]:
            at = f"{where}/{container['name']}"
            limits = container.get("resources", {})
            assert {"cpu", "memory"} <= set(limits.get("requests", {})), at
            assert "memory" in limits.get("limits", {}), at
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                assert probe in container, f"{at}: no {probe}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_grace_periods_exceed_prestop_plus_the_worst_case_stop(
    overlay: str, tmp_path: Path
) -> None:
    stop = worst_case_stop_s(config_of(overlay, tmp_path))
    found = []
    for workload in ledgerflux_workloads(overlay):
        spec = pod_spec(workload)
        pre_stop = spec["containers"][0]["lifecycle"]["preStop"]["sleep"]["seconds"]
        grace = spec["terminationGracePeriodSeconds"]
        assert grace >= pre_stop + stop + STOP_MARGIN_S, workload["metadata"]["name"]
        found.append(workload["metadata"]["name"])
    assert sorted(found) == [f"ledgerflux-{d}" for d in sorted(DAEMONS)]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_normalizer_shards_follow_the_pod_index(overlay: str, tmp_path: Path) -> None:
    config = config_of(overlay, tmp_path)
    normalize = find(overlay, "StatefulSet", "ledgerflux-normalize")
    assert normalize["spec"]["replicas"] == config.normalize.shards
    headless = find(overlay, "Service", normalize["spec"]["serviceName"])
    assert headless["spec"]["clusterIP"] == "None"
    assert headless["spec"]["selector"] == normalize["spec"]["selector"]["matchLabels"]
    env = {e["name"]: e for e in pod_spec(normalize)["containers"][0]["env"]}
    shard = env["LEDGERFLUX_NORMALIZE__SHARD"]["valueFrom"]["fieldRef"]["fieldPath"]
    assert shard == "metadata.labels['apps.kubernetes.io/pod-index']"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_streams_fit_the_nats_cluster(overlay: str, tmp_path: Path) -> None:
    config = config_of(overlay, tmp_path)
    nats = find(overlay, "StatefulSet", "nats")
    assert 1 <= config.nats.replicas <= nats["spec"]["replicas"]
    nats_conf = find(overlay, "ConfigMap", "nats-config-")["data"]["nats.conf"]
    # A cluster block exactly when there is more than one server.
    assert ("cluster {" in nats_conf) == (nats["spec"]["replicas"] > 1)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_config_and_secrets_are_generated_with_content_hashes(overlay: str) -> None:
    names = {doc["metadata"]["name"] for doc in resources(overlay)}
    for generated in ("ledgerflux-config-", "nats-config-"):
        assert any(n.startswith(generated) and len(n) > len(generated) for n in names)
    for workload in ledgerflux_workloads(overlay):
        volumes = {v["name"]: v for v in pod_spec(workload)["volumes"]}
        assert volumes["config"]["configMap"]["name"] in names
    if overlay == "overlays/dev":
        assert any(n.startswith("ledgerflux-secrets-") for n in names)


def _container_env(
    overlay: str, container: dict[str, Any], config_file: Path, pod_index: int
) -> dict[str, str]:
    """The container's environment as the kubelet would set it, with the mounted config
    file at *config_file*; a Secret the overlay does not render (production creates it
    outside the repository) is stood in for by placeholder URLs."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEDGERFLUX_")}
    for source in container.get("envFrom", []):
        name = source["secretRef"]["name"]
        secrets = [
            doc
            for doc in resources(overlay)
            if doc["kind"] == "Secret" and doc["metadata"]["name"] == name
        ]
        if secrets:
            for key, value in secrets[0].get("data", {}).items():
                env[key] = base64.b64decode(value).decode()
        else:
            env["LEDGERFLUX_DATABASE_URL"] = "postgresql://ledgerflux@db.invalid/ledgerflux"
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = item["value"]
        else:
            path = item["valueFrom"]["fieldRef"]["fieldPath"]
            assert path == "metadata.labels['apps.kubernetes.io/pod-index']", item
            env[item["name"]] = str(pod_index)
    assert env.pop("LEDGERFLUX_CONFIG") == CONFIG_PATH
    env["LEDGERFLUX_CONFIG"] = str(config_file)
    return env


def _command_lines(overlay: str) -> list[tuple[str, list[str], int]]:
    found = []
    for workload in ledgerflux_workloads(overlay):
        replicas = workload["spec"].get("replicas", 1)
        for container in pod_spec(workload)["containers"]:
            # No `command`: the image's ENTRYPOINT (`ledgerflux`) runs with these args.
            assert "command" not in container, workload["metadata"]["name"]
            for index in range(replicas if workload["kind"] == "StatefulSet" else 1):
                found.append((workload["metadata"]["name"], list(container["args"]), index))
    return found


@pytest.mark.slow  # one CLI process per pod: seconds each on a loaded machine
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_each_container_command_line_passes_the_cli_check(overlay: str, tmp_path: Path) -> None:
    config_file = rendered_config(overlay, tmp_path)
    config = load_config(path=config_file, env={})
    assert config.ingest.feed == "coinbase"  # the dev overlay once dropped [ingest] feed
    lines = _command_lines(overlay)
    assert sorted({args[0] for _, args, _ in lines}) == sorted(DAEMONS)
    for name, args, index in lines:
        parsed = build_parser().parse_args(args)
        assert parsed.command in DAEMONS, name
        container = pod_spec(_workload(overlay, name))["containers"][0]
        env = _container_env(overlay, container, config_file, index)
        done = subprocess.run(
            [sys.executable, "-m", "ledgerflux", *args, "--check"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert (done.returncode, done.stdout) == (0, f"ok: {args[0]}\n"), (
            f"{overlay} {name} (pod {index}): {done.stderr}"
        )


def _workload(overlay: str, name: str) -> dict[str, Any]:
    return next(w for w in workloads(overlay) if w["metadata"]["name"] == name)


def test_the_base_config_is_what_the_documentation_describes(tmp_path: Path) -> None:
    text = (ROOT / "k8s" / "base" / "config" / "ledgerflux.toml").read_text()
    assert tomllib.loads(text)["nats"]["replicas"] == 3
    config = config_of("base", tmp_path)
    assert (config.health_port, config.gateway.port) == (9000, 8000)
