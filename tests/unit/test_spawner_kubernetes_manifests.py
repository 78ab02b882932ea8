"""The platform's Kubernetes manifests (deploy/kubernetes), rendered offline and checked.

Each overlay is rendered with `kubectl kustomize` (Debian's kubectl 1.20 has kustomize
v2.0.3 built in, which is why the files use its syntax; scripts/system-deps.sh installs
it), and every object is validated against the Kubernetes API schemas that
kubernetes-validate bundles, strictly (unknown fields are errors). No cluster runs here:
what a live API server and kubelet would make of them is not tested (docs/kubernetes.md).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml

from webserver.spawner.kubernetes import KubernetesConfig

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy" / "kubernetes"
OVERLAYS = ("dev", "external-db")
SCHEMA_VERSIONS = ("1.31", "1.37")
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding"}
PSS_RESTRICTED_VOLUMES = {
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
}
SECRET_NAMED = re.compile(r"(SECRET|PASSWORD|TOKEN|_KEY$|DATABASE_URL|BROKER_URL|CACHE_URL)")


@cache
def render(overlay: str) -> tuple[dict[str, Any], ...]:
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl is missing: run scripts/system-deps.sh (Debian package kubernetes-client)"
    done = subprocess.run(
        [kubectl, "kustomize", str(DEPLOY / "overlays" / overlay)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, f"kubectl kustomize {overlay} failed:\n{done.stderr}"
    return tuple(d for d in yaml.safe_load_all(done.stdout) if d)


def find(objects: tuple[dict[str, Any], ...], kind: str, name: str) -> dict[str, Any]:
    (found,) = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    return found


def pod_templates(objects: tuple[dict[str, Any], ...]) -> dict[str, dict[str, Any]]:
    return {
        o["metadata"]["name"]: o["spec"]["template"]
        for o in objects
        if o["kind"] in ("Deployment", "StatefulSet", "Job", "DaemonSet")
    }


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_rendered_object_validates_against_the_kubernetes_schemas(overlay: str) -> None:
    objects = render(overlay)
    for obj in objects:
        for version in SCHEMA_VERSIONS:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                pytest.fail(f"{overlay}: {obj['kind']} {obj['metadata']['name']} is invalid in {version}: {exc}")
    assert all(o["metadata"].get("namespace") == "fedota" for o in objects if o["kind"] not in CLUSTER_SCOPED)


def test_the_overlays_bundle_postgres_and_redis_or_leave_them_out() -> None:
    dev = {(o["kind"], o["metadata"]["name"]) for o in render("dev")}
    external = {(o["kind"], o["metadata"]["name"]) for o in render("external-db")}
    platform = {
        ("Deployment", "fedota-web"),
        ("Deployment", "fedota-worker"),
        ("Deployment", "fedota-beat"),
        ("Service", "fedota-web"),
        ("Ingress", "fedota"),
        ("ServiceAccount", "fedota-worker"),
        ("ClusterRole", "fedota-worker"),
        ("ClusterRoleBinding", "fedota-worker"),
        ("PersistentVolumeClaim", "fedota-media"),
        ("ConfigMap", "fedota-config"),
    }
    bundled = {("StatefulSet", "fedota-postgres"), ("StatefulSet", "fedota-redis"), ("Secret", "fedota-secrets")}
    assert platform <= dev and platform <= external
    assert bundled <= dev
    assert not bundled & external  # its database, broker and secrets are the operator's own
    # The web pods migrate the database before they serve.
    web = pod_templates(render("external-db"))["fedota-web"]["spec"]
    assert web["initContainers"][0]["command"] == ["python", "manage.py", "migrate", "--noinput"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_platform_container_is_non_root_read_only_and_limited(overlay: str) -> None:
    templates = pod_templates(render(overlay))
    assert {"fedota-web", "fedota-worker", "fedota-beat"} <= set(templates)
    for name, template in templates.items():
        spec = template["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        assert spec["securityContext"]["runAsUser"] != 0, name
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, name
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        # The namespace enforces Pod Security "restricted": only these volume types, no host access.
        for volume in volumes.values():
            assert set(volume) - {"name"} <= PSS_RESTRICTED_VOLUMES, (name, volume)
        assert not {"hostNetwork", "hostPID", "hostIPC"} & set(spec), name
        claims = {t["metadata"]["name"] for t in _claim_templates(render(overlay), name)}
        for container in spec.get("initContainers", []) + spec["containers"]:
            sc = container["securityContext"]
            assert sc["runAsNonRoot"] is True and sc["readOnlyRootFilesystem"] is True, (name, container["name"])
            assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"] == {"drop": ["ALL"]}
            assert {"cpu", "memory"} <= set(container["resources"]["limits"]), (name, container["name"])
            # Never the default: with a :latest tag that is Always, and images loaded onto the
            # nodes rather than pushed to a registry would never start.
            assert container["imagePullPolicy"] in ("IfNotPresent", "Never"), (name, container["name"])
            # Whatever it writes to is a volume (the root filesystem is read-only).
            for mount in container.get("volumeMounts", []):
                assert mount["name"] in volumes or mount["name"] in claims, (name, mount)
            if container["image"].startswith("fedota/web") or container["image"].endswith("/fedota/web:latest"):
                mounted = {m["mountPath"] for m in container["volumeMounts"]}
                assert {"/tmp", "/var/lib/fedota"} <= mounted, (name, container["name"])
                # $HOME is the image's /home/fedota, on the read-only root: gunicorn's control
                # socket went there (seen running the image read-only with Docker).
                env = {e["name"]: e.get("value") for e in container.get("env", [])}
                assert env.get("HOME") == "/tmp", (name, container["name"])


def _claim_templates(objects: tuple[dict[str, Any], ...], workload: str) -> list[dict[str, Any]]:
    for obj in objects:
        if obj["kind"] == "StatefulSet" and obj["metadata"]["name"] == workload:
            return list(obj["spec"].get("volumeClaimTemplates", []))
    return []


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_no_secret_is_a_literal_in_a_pod_spec_and_only_the_worker_gets_an_api_token(overlay: str) -> None:
    templates = pod_templates(render(overlay))
    for name, template in templates.items():
        spec = template["spec"]
        for container in spec.get("initContainers", []) + spec["containers"]:
            for var in container.get("env", []):
                if SECRET_NAMED.search(var["name"]):
                    assert "value" not in var and "secretKeyRef" in var["valueFrom"], (name, var["name"])
            for source in container.get("envFrom", []):
                assert set(source) <= {"configMapRef", "secretRef"}
        if name == "fedota-worker":
            assert spec["serviceAccountName"] == "fedota-worker"
            assert spec["automountServiceAccountToken"] is True
        else:
            assert spec.get("serviceAccountName") in (None, "default"), name
            assert spec["automountServiceAccountToken"] is False, name
    # Settings are not where the secrets go.
    config = find(render(overlay), "ConfigMap", "fedota-config")["data"]
    assert not [key for key in config if SECRET_NAMED.search(key)]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_configured_setting_is_one_the_website_reads(overlay: str) -> None:
    settings_source = (REPO / "webserver" / "settings.py").read_text()
    config = find(render(overlay), "ConfigMap", "fedota-config")["data"]
    unknown = [key for key in config if f'"{key}"' not in settings_source]
    assert not unknown, f"fedota-config sets what webserver/settings.py never reads: {unknown}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_spawners_policies_and_report_url_point_at_the_rendered_website(overlay: str) -> None:
    objects = render(overlay)
    config = find(objects, "ConfigMap", "fedota-config")["data"]
    web_labels = dict(pair.split("=", 1) for pair in config["FEDOTA_KUBERNETES_WEB_POD_LABELS"].split(","))
    web = find(objects, "Deployment", "fedota-web")
    pod_labels = web["spec"]["template"]["metadata"]["labels"]
    # The problems' NetworkPolicies let coordinators reach pods with these labels in this namespace.
    assert web_labels.items() <= pod_labels.items()
    assert web_labels == KubernetesConfig().web_pod_labels
    assert config["FEDOTA_KUBERNETES_PLATFORM_NAMESPACE"] == web["metadata"]["namespace"]
    port = int(config["FEDOTA_KUBERNETES_WEB_PORT"])
    assert {"name": "http", "containerPort": port, "protocol": "TCP"} in web["spec"]["template"]["spec"]["containers"][
        0
    ]["ports"]
    # ... and their reports go to the web Service, by a name the website accepts.
    internal = urlsplit(config["FEDOTA_INTERNAL_URL"])
    service = find(objects, "Service", "fedota-web")
    assert internal.hostname == f"{service['metadata']['name']}.{service['metadata']['namespace']}.svc"
    assert internal.port == service["spec"]["ports"][0]["port"]
    assert internal.hostname in config["DJANGO_ALLOWED_HOSTS"].split(",")
    assert "localhost" in config["DJANGO_ALLOWED_HOSTS"].split(",")  # the probes' Host header


def _selected(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        assert expr["operator"] == "In"
        if labels.get(expr["key"]) not in expr["values"]:
            return False
    return True


def _admits(
    objects: tuple[dict[str, Any], ...], src: tuple[str, dict[str, str]], dst_labels: dict[str, str], port: int
) -> bool:
    """Ingress to a platform pod with `dst_labels` from `src` (namespace, labels) on `port`."""
    policies = [
        o
        for o in objects
        if o["kind"] == "NetworkPolicy"
        and "Ingress" in o["spec"]["policyTypes"]
        and _selected(o["spec"]["podSelector"], dst_labels)
    ]
    if not policies:
        return True
    for policy in policies:
        for rule in policy["spec"].get("ingress") or []:
            if rule.get("ports") is not None and not any(p["port"] == port for p in rule["ports"]):
                continue
            peers = rule.get("from")
            if peers is None:
                return True
            for peer in peers:
                assert "namespaceSelector" not in peer and "ipBlock" not in peer
                if src[0] == "fedota" and _selected(peer.get("podSelector") or {}, src[1]):
                    return True
    return False


def test_only_the_platforms_own_pods_reach_postgres_and_redis() -> None:
    objects = render("dev")

    def labels(component: str) -> dict[str, str]:
        return find(
            objects, "StatefulSet" if component in ("postgres", "redis") else "Deployment", f"fedota-{component}"
        )["spec"]["template"]["metadata"]["labels"]

    postgres, redis = labels("postgres"), labels("redis")
    for component in ("web", "worker", "beat"):
        assert _admits(objects, ("fedota", labels(component)), postgres, 5432)
        assert _admits(objects, ("fedota", labels(component)), redis, 6379)
    coordinator = ("fedota-p7", {"fedota.role": "coordinator", "app.kubernetes.io/component": "web"})
    assert not _admits(objects, coordinator, postgres, 5432)  # another namespace, whatever its labels
    assert not _admits(objects, ("fedota", labels("redis")), postgres, 5432)
    assert not _admits(objects, ("fedota", labels("web")), postgres, 22)
    # The website takes HTTP from anywhere (ingress controller, coordinators); worker and beat nothing.
    assert _admits(objects, coordinator, labels("web"), 8000)
    assert not _admits(objects, coordinator, labels("web"), 5432)
    assert not _admits(objects, ("fedota", labels("web")), labels("worker"), 8000)
    assert not _admits(objects, ("fedota", labels("web")), labels("beat"), 8000)


SETTINGS_PROBE = """
import json, django
django.setup()
from django.conf import settings
from webserver.spawner import get_spawner, selector_ports
spawner = get_spawner()
config = spawner.config
print(json.dumps({
    "name": spawner.name,
    "service": config.selector_service_type,
    "range": config.node_port_range,
    "annotations": config.load_balancer_annotations,
    "web_labels": config.web_pod_labels,
    "platform": config.platform_namespace,
    "first_ports": selector_ports(1, 8, base=settings.FEDOTA_SELECTOR_PORT_BASE),
    "debug": settings.DEBUG,
}))
"""


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_website_starts_with_each_overlays_settings_and_builds_the_kubernetes_spawner(
    overlay: str, tmp_path: Path
) -> None:
    """What every platform pod gets (fedota-config and fedota-secrets) is read by the real
    settings module in production mode, as the image runs it: a typo would stop every pod."""
    import base64
    import json
    import os
    import sys

    objects = render(overlay)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FEDOTA_", "DJANGO_", "DATABASE_", "CELERY_"))}
    env |= find(objects, "ConfigMap", "fedota-config")["data"]
    secrets = [o for o in objects if o["kind"] == "Secret" and o["metadata"]["name"] == "fedota-secrets"]
    if secrets:
        env |= {k: base64.b64decode(v).decode() for k, v in secrets[0]["data"].items()}
    else:  # the operator's own Secret (overlays/external-db/kustomization.yaml shows its keys)
        env |= {
            "DJANGO_SECRET_KEY": "a-test-value-standing-in-for-the-operators-secret-key",
            "DATABASE_URL": "postgres://fedota:pw@db.example.org:5432/fedota",
            "CELERY_BROKER_URL": "redis://redis.example.org:6379/0",
            "CACHE_URL": "redis://redis.example.org:6379/1",
        }
    env |= {"FEDOTA_ENV": "production", "DJANGO_SETTINGS_MODULE": "webserver.settings", "FEDOTA_VAR_DIR": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-c", SETTINGS_PROBE], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["name"] == "kubernetes" and seen["debug"] is False
    assert seen["platform"] == "fedota" and seen["web_labels"] == KubernetesConfig().web_pod_labels
    if seen["service"] == "NodePort":
        low, high = seen["range"]
        assert all(low <= port <= high for port in seen["first_ports"]), seen
    else:
        assert seen["service"] == "LoadBalancer" and seen["annotations"]
