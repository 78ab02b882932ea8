"""The kubernetes backend against a fake API server that speaks the official client's models.

No cluster runs here (none can on these machines): `FakeCluster` stores the objects the
spawner creates, plays the Job and Deployment controllers and a kubelet whose pod states
each test chooses, and answers with the client's own model objects (V1Pod, V1Job, ...) and
`ApiException`s, as the real API would. Everything it is given is checked against the
Kubernetes API schemas on the way in. What it cannot show is how a real cluster behaves;
docs/kubernetes.md says what was and was not validated.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import itertools
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from webserver.spawner.base import RunSpec, SpawnError
from webserver.spawner.kubernetes import (
    Apis,
    KubernetesConfig,
    KubernetesSpawner,
    build_network_policies,
    build_run_objects,
    service_state,
)

REPO = Path(__file__).resolve().parents[2]
RBAC = REPO / "deploy" / "kubernetes" / "base" / "rbac.yaml"
# The oldest Kubernetes the objects are meant for (podFailurePolicy is GA from 1.31) and the
# newest whose schemas kubernetes-validate bundles; strict: unknown fields are errors.
SCHEMA_VERSIONS = ("1.31", "1.37")
SERIALISE = k8s.ApiClient().sanitize_for_serialization
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


class _Built(Exception):
    """A request the client built, in place of sending it."""

    def __init__(self, method: str, url: str) -> None:
        super().__init__(method, url)
        self.method, self.url = method, url


class _Wire(k8s.ApiClient):
    """The official client up to the wire: its argument checks (pydantic) and request building run, nothing is sent."""

    def call_api(self, method: str, url: str, *args: Any, **kwargs: Any) -> Any:
        raise _Built(method, url)


_WIRE = _Wire(k8s.Configuration(host="https://kubernetes.invalid"))
REAL_APIS = {
    "core": k8s.CoreV1Api(_WIRE),
    "apps": k8s.AppsV1Api(_WIRE),
    "batch": k8s.BatchV1Api(_WIRE),
    "networking": k8s.NetworkingV1Api(_WIRE),
}


def rbac_rule(method: str, url: str) -> tuple[str, str, str, str, str]:
    """(API group, resource, verb, namespace, name) the API server authorizes an HTTP request as."""
    parts = urlsplit(url).path.strip("/").split("/")
    group, rest = ("", parts[2:]) if parts[0] == "api" else (parts[1], parts[3:])
    namespace = ""
    if rest[0] == "namespaces" and len(rest) >= 3:
        namespace, rest = rest[1], rest[2:]
    resource, name = rest[0], (rest[1] if len(rest) > 1 else "")
    if method == "GET":
        verb = "get" if name else "list"
    elif method == "DELETE":
        verb = "delete" if name else "deletecollection"
    else:
        verb = {"POST": "create", "PATCH": "patch", "PUT": "update"}[method]
    return group, resource, verb, namespace, name


class _Checked:
    """One API group of the fake, called only as the official client's method of that group can be called."""

    def __init__(self, real: Any, fake: FakeCluster) -> None:
        self._real, self._fake = real, fake

    def __getattr__(self, name: str) -> Any:
        real = getattr(self._real, name)  # AttributeError: this API group has no such method

        def call(*args: Any, **kwargs: Any) -> Any:
            try:
                real(*args, **kwargs)  # a wrong argument or type raises here, as against a cluster
            except _Built as built:
                self._fake.http.append((built.method, built.url))
            else:
                raise AssertionError(f"{name} built no request")
            return getattr(self._fake, name)(*args, **kwargs)

        return call


_VALID: set[str] = set()


def validate(obj: Any) -> dict[str, Any]:
    """`obj` as the API receives it, once it is valid in every schema version (or an error)."""
    data = SERIALISE(obj)
    text = json.dumps(data, sort_keys=True)
    if text not in _VALID:  # tests create the same objects many times; each check takes ~30 ms
        for version in SCHEMA_VERSIONS:
            kubernetes_validate.validate(data, version, strict=True)
        _VALID.add(text)
    return data


def api_error(status: int, message: str) -> ApiException:
    return ApiException(status=status, reason=message, body=json.dumps({"kind": "Status", "message": message}))


def _matches(labels: dict[str, str] | None, selector: str | None) -> bool:
    if not selector:
        return True
    wanted = dict(item.split("=", 1) for item in selector.split(","))
    return all((labels or {}).get(k) == v for k, v in wanted.items())


# ---- pod states the fake kubelet can give a pod ----------------------------------------------------

NOW = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)


def ready(container: str) -> k8s.V1PodStatus:
    state = k8s.V1ContainerState(running=k8s.V1ContainerStateRunning(started_at=NOW))
    return k8s.V1PodStatus(
        phase="Running",
        container_statuses=[
            k8s.V1ContainerStatus(name=container, image="img", image_id="", ready=True, restart_count=0, state=state)
        ],
    )


def exited(code: int, *, reason: str = "Error", message: str = "") -> Callable[[str], k8s.V1PodStatus]:
    def status(container: str) -> k8s.V1PodStatus:
        state = k8s.V1ContainerState(
            terminated=k8s.V1ContainerStateTerminated(exit_code=code, reason=reason, message=message or None)
        )
        return k8s.V1PodStatus(
            phase="Failed" if code else "Succeeded",
            container_statuses=[
                k8s.V1ContainerStatus(
                    name=container, image="img", image_id="", ready=False, restart_count=0, state=state
                )
            ],
        )

    return status


def crash_looping(code: int, restarts: int) -> Callable[[str], k8s.V1PodStatus]:
    def status(container: str) -> k8s.V1PodStatus:
        return k8s.V1PodStatus(
            phase="Running",
            container_statuses=[
                k8s.V1ContainerStatus(
                    name=container,
                    image="img",
                    image_id="",
                    ready=False,
                    restart_count=restarts,
                    state=k8s.V1ContainerState(waiting=k8s.V1ContainerStateWaiting(reason="CrashLoopBackOff")),
                    last_state=k8s.V1ContainerState(
                        terminated=k8s.V1ContainerStateTerminated(exit_code=code, reason="Error")
                    ),
                )
            ],
        )

    return status


def image_pull_backoff(container: str) -> k8s.V1PodStatus:
    waiting = k8s.V1ContainerStateWaiting(
        reason="ImagePullBackOff", message='Back-off pulling image "fedota/selector:latest"'
    )
    return k8s.V1PodStatus(
        phase="Pending",
        container_statuses=[
            k8s.V1ContainerStatus(
                name=container,
                image="fedota/selector:latest",
                image_id="",
                ready=False,
                restart_count=0,
                state=k8s.V1ContainerState(waiting=waiting),
            )
        ],
    )


def evicted(container: str) -> k8s.V1PodStatus:
    return k8s.V1PodStatus(phase="Failed", reason="Evicted", message="The node was low on resource: memory.")


class FakeCluster:
    """Namespaces, their objects, the Job/Deployment controllers and a kubelet; one object serves every API group."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str, str], Any] = {}
        self.calls: list[str] = []
        self.created: list[dict[str, Any]] = []
        # (role, index) -> the status the kubelet gives that service's next pod.
        self.kubelet: dict[tuple[str, int], Callable[[str], k8s.V1PodStatus]] = {}
        self.terminating_polls = 0  # how many reads a deleted namespace stays Terminating
        self._ids = itertools.count(1)
        self.node_ports: dict[int, tuple[str, str]] = {}
        self.secrets_read: list[tuple[str, str]] = []
        self.http: list[tuple[str, str]] = []  # (method, URL) of every request the client built

    @property
    def apis(self) -> Apis:
        # Each call goes through the official client's own method first (see _Checked).
        return Apis(**{group: _Checked(real, self) for group, real in REAL_APIS.items()})

    def __getattr__(self, name: str) -> Any:
        raise AttributeError(f"the fake API has no method {name}; the spawner called something new")

    def _log(self, method: str) -> None:
        self.calls.append(method)

    # ---- storage helpers

    def _uid(self) -> str:
        return f"uid-{next(self._ids)}"

    def _need_namespace(self, ns: str) -> None:
        namespace = self.objects.get(("Namespace", "", ns))
        if namespace is None:
            raise api_error(404, f'namespaces "{ns}" not found')
        if namespace.status.phase == "Terminating":
            raise api_error(403, f"unable to create new content in namespace {ns} because it is being terminated")

    def _create(self, kind: str, ns: str, body: Any) -> Any:
        self.created.append(validate(body))
        self._need_namespace(ns)
        key = (kind, ns, body.metadata.name)
        if key in self.objects:
            raise api_error(409, f'{kind.lower()}s "{body.metadata.name}" already exists')
        obj = body.model_copy(deep=True)
        obj.metadata.namespace = ns
        obj.metadata.uid = self._uid()
        obj.metadata.creation_timestamp = NOW + timedelta(seconds=next(self._ids))
        self.objects[key] = obj
        return obj

    def _read(self, kind: str, ns: str, name: str) -> Any:
        try:
            return self.objects[(kind, ns, name)]
        except KeyError:
            raise api_error(404, f'{kind.lower()}s "{name}" not found') from None

    def _list(self, kind: str, ns: str, selector: str | None) -> list[Any]:
        return [
            o
            for (k, n, _), o in self.objects.items()
            if k == kind and n == ns and _matches(o.metadata.labels, selector)
        ]

    def _delete(self, kind: str, ns: str, name: str) -> None:
        self._read(kind, ns, name)
        del self.objects[(kind, ns, name)]

    # ---- the kubelet and controllers

    def _make_pod(self, ns: str, template: k8s.V1PodTemplateSpec, owner: Any, role: str, index: int) -> k8s.V1Pod:
        name = f"{owner.metadata.name}-{next(self._ids)}"
        labels = dict(template.metadata.labels)
        if owner.kind == "Job":
            labels["batch.kubernetes.io/controller-uid"] = owner.metadata.uid
        container = template.spec.containers[0].name
        pod = k8s.V1Pod(
            api_version="v1",
            kind="Pod",
            metadata=k8s.V1ObjectMeta(
                name=name,
                namespace=ns,
                labels=labels,
                uid=self._uid(),
                creation_timestamp=NOW + timedelta(seconds=next(self._ids)),
                owner_references=[
                    k8s.V1OwnerReference(
                        api_version="v1", kind=owner.kind, name=owner.metadata.name, uid=owner.metadata.uid
                    )
                ],
            ),
            spec=template.spec.model_copy(deep=True),
            status=self.kubelet.get((role, index), ready)(container),
        )
        self.objects[("Pod", ns, name)] = pod
        return pod

    def _pods_of(self, ns: str, owner_uid: str) -> list[k8s.V1Pod]:
        return [
            p
            for (k, n, _), p in self.objects.items()
            if k == "Pod" and n == ns and p.metadata.owner_references[0].uid == owner_uid
        ]

    # ---- core/v1

    def create_namespace(self, body: k8s.V1Namespace) -> k8s.V1Namespace:
        self._log("create_namespace")
        self.created.append(validate(body))
        if ("Namespace", "", body.metadata.name) in self.objects:
            raise api_error(409, f'namespaces "{body.metadata.name}" already exists')
        obj = body.model_copy(deep=True)
        obj.status = k8s.V1NamespaceStatus(phase="Active")
        self.objects[("Namespace", "", body.metadata.name)] = obj
        return obj

    def read_namespace(self, name: str) -> k8s.V1Namespace:
        self._log("read_namespace")
        namespace = self._read("Namespace", "", name)
        if namespace.status.phase == "Terminating":
            if self.terminating_polls <= 0:
                self._gone_namespace(name)
                raise api_error(404, f'namespaces "{name}" not found')
            self.terminating_polls -= 1
        return namespace

    def list_namespace(self, label_selector: str | None = None) -> k8s.V1NamespaceList:
        self._log("list_namespace")
        return k8s.V1NamespaceList(items=self._list("Namespace", "", label_selector))

    def delete_namespace(self, name: str, body: Any = None) -> None:
        self._log("delete_namespace")
        namespace = self._read("Namespace", "", name)
        if self.terminating_polls:
            namespace.status = k8s.V1NamespaceStatus(phase="Terminating")
        else:
            self._gone_namespace(name)

    def _gone_namespace(self, name: str) -> None:
        for key in [k for k in self.objects if k[1] == name or k == ("Namespace", "", name)]:
            del self.objects[key]
        self.node_ports = {p: owner for p, owner in self.node_ports.items() if owner[0] != name}

    def create_namespaced_secret(self, namespace: str, body: k8s.V1Secret) -> Any:
        self._log("create_namespaced_secret")
        return self._create("Secret", namespace, body)

    def patch_namespaced_secret(self, name: str, namespace: str, body: k8s.V1Secret, _content_type: str = "") -> Any:
        self._log("patch_namespaced_secret")
        assert _content_type == "application/merge-patch+json", "lists must be replaced, not merged"
        self._read("Secret", namespace, name)
        self.objects[("Secret", namespace, name)] = body.model_copy(deep=True)

    def read_namespaced_secret(self, name: str, namespace: str) -> k8s.V1Secret:
        self._log("read_namespaced_secret")
        self.secrets_read.append((namespace, name))
        return self._read("Secret", namespace, name)

    def create_namespaced_config_map(self, namespace: str, body: k8s.V1ConfigMap) -> Any:
        self._log("create_namespaced_config_map")
        return self._create("ConfigMap", namespace, body)

    def delete_collection_namespaced_config_map(self, namespace: str, label_selector: str | None = None) -> None:
        self._log("delete_collection_namespaced_config_map")
        for cm in self._list("ConfigMap", namespace, label_selector):
            del self.objects[("ConfigMap", namespace, cm.metadata.name)]

    def create_namespaced_persistent_volume_claim(self, namespace: str, body: Any) -> Any:
        self._log("create_namespaced_persistent_volume_claim")
        return self._create("PersistentVolumeClaim", namespace, body)

    def _claim_node_port(self, namespace: str, body: k8s.V1Service) -> None:
        for port in body.spec.ports or []:
            if port.node_port is None:
                continue
            owner = self.node_ports.get(port.node_port)
            if owner is not None and owner != (namespace, body.metadata.name):
                raise api_error(
                    422,
                    f'Service "{body.metadata.name}" is invalid: spec.ports[0].nodePort: Invalid value: '
                    f"{port.node_port}: provided port is already allocated",
                )
            self.node_ports[port.node_port] = (namespace, body.metadata.name)

    def create_namespaced_service(self, namespace: str, body: k8s.V1Service) -> Any:
        self._log("create_namespaced_service")
        self._need_namespace(namespace)
        self._claim_node_port(namespace, body)
        return self._create("Service", namespace, body)

    def patch_namespaced_service(self, name: str, namespace: str, body: k8s.V1Service, _content_type: str = "") -> Any:
        self._log("patch_namespaced_service")
        assert _content_type == "application/merge-patch+json", "lists must be replaced, not merged"
        self._read("Service", namespace, name)
        self._claim_node_port(namespace, body)
        self.objects[("Service", namespace, name)] = body.model_copy(deep=True)

    def list_namespaced_service(self, namespace: str, label_selector: str | None = None) -> k8s.V1ServiceList:
        self._log("list_namespaced_service")
        return k8s.V1ServiceList(items=self._list("Service", namespace, label_selector))

    def delete_namespaced_service(self, name: str, namespace: str) -> None:
        self._log("delete_namespaced_service")
        self._delete("Service", namespace, name)
        self.node_ports = {p: owner for p, owner in self.node_ports.items() if owner != (namespace, name)}

    def list_namespaced_pod(self, namespace: str, label_selector: str | None = None) -> k8s.V1PodList:
        self._log("list_namespaced_pod")
        return k8s.V1PodList(items=self._list("Pod", namespace, label_selector))

    def delete_namespaced_pod(self, name: str, namespace: str) -> None:
        self._log("delete_namespaced_pod")
        pod = self._read("Pod", namespace, name)
        del self.objects[("Pod", namespace, name)]
        owner = pod.metadata.owner_references[0]
        if owner.kind == "Deployment" and ("Deployment", namespace, owner.name) in self.objects:
            deployment = self.objects[("Deployment", namespace, owner.name)]
            labels = deployment.metadata.labels
            self._make_pod(namespace, deployment.spec.template, deployment, "selector", int(labels["fedota.index"]))

    # ---- networking.k8s.io/v1

    def create_namespaced_network_policy(self, namespace: str, body: Any) -> Any:
        self._log("create_namespaced_network_policy")
        return self._create("NetworkPolicy", namespace, body)

    def patch_namespaced_network_policy(self, name: str, namespace: str, body: Any, _content_type: str = "") -> Any:
        self._log("patch_namespaced_network_policy")
        assert _content_type == "application/merge-patch+json", "lists must be replaced, not merged"
        self._read("NetworkPolicy", namespace, name)
        self.objects[("NetworkPolicy", namespace, name)] = body.model_copy(deep=True)

    # ---- batch/v1

    def create_namespaced_job(self, namespace: str, body: k8s.V1Job) -> k8s.V1Job:
        self._log("create_namespaced_job")
        for key in ("controller-uid", "batch.kubernetes.io/controller-uid", "job-name"):
            assert key not in (body.spec.template.metadata.labels or {}), "a new Job must not carry controller labels"
        job = self._create("Job", namespace, body)
        job.spec.template.metadata.labels["batch.kubernetes.io/controller-uid"] = job.metadata.uid
        pod = self._make_pod(namespace, body.spec.template, job, "coordinator", 0)
        if pod.status.phase == "Failed":
            job.status = k8s.V1JobStatus(
                conditions=[
                    k8s.V1JobCondition(
                        type="Failed",
                        status="True",
                        reason="BackoffLimitExceeded",
                        message="Job has reached the specified backoff limit",
                    )
                ]
            )
        return job

    def read_namespaced_job(self, name: str, namespace: str) -> k8s.V1Job:
        self._log("read_namespaced_job")
        return self._read("Job", namespace, name)

    def list_namespaced_job(self, namespace: str, label_selector: str | None = None) -> k8s.V1JobList:
        self._log("list_namespaced_job")
        if ("Namespace", "", namespace) not in self.objects:
            raise api_error(404, f'namespaces "{namespace}" not found')
        return k8s.V1JobList(items=self._list("Job", namespace, label_selector))

    def delete_namespaced_job(self, name: str, namespace: str, body: Any = None) -> None:
        self._log("delete_namespaced_job")
        job = self._read("Job", namespace, name)
        self._delete("Job", namespace, name)
        for pod in self._pods_of(namespace, job.metadata.uid):
            del self.objects[("Pod", namespace, pod.metadata.name)]

    # ---- apps/v1

    def create_namespaced_deployment(self, namespace: str, body: k8s.V1Deployment) -> Any:
        self._log("create_namespaced_deployment")
        deployment = self._create("Deployment", namespace, body)
        index = int(body.metadata.labels["fedota.index"])
        self._make_pod(namespace, body.spec.template, deployment, "selector", index)
        return deployment

    def read_namespaced_deployment(self, name: str, namespace: str) -> Any:
        self._log("read_namespaced_deployment")
        return self._read("Deployment", namespace, name)

    def list_namespaced_deployment(self, namespace: str, label_selector: str | None = None) -> Any:
        self._log("list_namespaced_deployment")
        if ("Namespace", "", namespace) not in self.objects:
            raise api_error(404, f'namespaces "{namespace}" not found')
        return k8s.V1DeploymentList(items=self._list("Deployment", namespace, label_selector))

    def delete_namespaced_deployment(self, name: str, namespace: str, body: Any = None) -> None:
        self._log("delete_namespaced_deployment")
        deployment = self._read("Deployment", namespace, name)
        self._delete("Deployment", namespace, name)
        for pod in self._pods_of(namespace, deployment.metadata.uid):
            del self.objects[("Pod", namespace, pod.metadata.name)]

    # ---- what tests look at

    def kinds(self, ns: str) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for kind, n, name in sorted(self.objects):
            if n == ns:
                out.setdefault(kind, []).append(name)
        return out

    def pod_of(self, ns: str, role: str, index: int = 0) -> k8s.V1Pod:
        (pod,) = [p for p in self._list("Pod", ns, f"fedota.role={role},fedota.index={index}")]
        return pod


# ---- fixtures ---------------------------------------------------------------------------------------

CONFIG = KubernetesConfig(selector_host="fl.example.org")
FAB = bytes(range(256)) * 5000  # 1.2 MiB: three ConfigMap chunks


def make_spec(
    tmp_path: Path, *, problem_id: int = 7, run_id: int = 3, ports: tuple[int, ...] = (30056, 30057), **kw: Any
) -> RunSpec:
    fab = tmp_path / "app.fab"
    fab.write_bytes(FAB)
    fields: dict[str, Any] = dict(
        problem_id=problem_id,
        run_id=run_id,
        run_number=1,
        fab_path=fab,
        fab_sha256=hashlib.sha256(FAB).hexdigest(),
        run_config={"num-server-rounds": 3},
        num_selectors=len(ports),
        round_timeout=60.0,
        min_clients=2,
        report_url=f"http://fedota-web.fedota.svc:8000/internal/v1/runs/{run_id}/",
        service_token="service-token-SECRET",
        selector_token="selector-token-SECRET",
        selector_ports=ports,
        tls_cert_pem="-----BEGIN CERTIFICATE-----\nSELECTOR-CERT\n-----END CERTIFICATE-----\n",
        tls_key_pem="fake selector key (a placeholder, not a key)\n",
        coordinator_tls_cert_pem="-----BEGIN CERTIFICATE-----\nCOORD-CERT\n-----END CERTIFICATE-----\n",
        coordinator_tls_key_pem="fake coordinator key (a placeholder, not a key)\n",
        ca_cert_pem="-----BEGIN CERTIFICATE-----\nCA\n-----END CERTIFICATE-----\n",
    )
    fields.update(kw)
    return RunSpec(**fields)


@pytest.fixture
def cluster() -> FakeCluster:
    return FakeCluster()


@pytest.fixture
def spawner(cluster: FakeCluster) -> KubernetesSpawner:
    return KubernetesSpawner(
        CONFIG, apis=cluster.apis, start_timeout=5.0, delete_timeout=5.0, poll=0.0, sleep=lambda _s: None
    )


# ---- start -----------------------------------------------------------------------------------------


def test_start_creates_the_problems_objects_and_reports_every_service_healthy(
    tmp_path: Path, cluster: FakeCluster, spawner: KubernetesSpawner
) -> None:
    states = spawner.start(make_spec(tmp_path))

    assert [(s.role, s.index, s.health) for s in states] == [
        ("coordinator", 0, "healthy"),
        ("selector", 0, "healthy"),
        ("selector", 1, "healthy"),
    ]
    # What clients dial is the configured public host at the problem's fixed ports.
    assert [s.address for s in states[1:]] == ["fl.example.org:30056", "fl.example.org:30057"]
    assert states[0].address == "coordinator.fedota-p7.svc:9091"
    kinds = cluster.kinds("fedota-p7")
    assert kinds["Job"] == ["coordinator"]
    assert kinds["Deployment"] == ["selector-0", "selector-1"]
    assert kinds["Service"] == ["coordinator", "selector-0", "selector-1"]
    assert kinds["ConfigMap"] == ["fab-000", "fab-001", "fab-002"]
    assert kinds["Secret"] == ["coordinator", "selector"]
    assert kinds["PersistentVolumeClaim"] == ["coordinator-state"]
    assert len(kinds["NetworkPolicy"]) == 5
    # NodePort: every node forwards, so the one address in the join bundles reaches any selector.
    for i in range(2):
        service = cluster.objects[("Service", "fedota-p7", f"selector-{i}")]
        assert (service.spec.type, service.spec.external_traffic_policy) == ("NodePort", "Cluster")
        assert service.spec.ports[0].node_port == 30056 + i
    assert spawner.problems() == {7}


def test_the_app_chunks_add_up_to_the_fab_the_init_container_checks(
    tmp_path: Path, cluster: FakeCluster, spawner: KubernetesSpawner
) -> None:
    spawner.start(make_spec(tmp_path))
    parts = [cluster.objects[("ConfigMap", "fedota-p7", f"fab-{i:03d}")] for i in range(3)]
    joined = b"".join(base64.b64decode(cm.binary_data["part"]) for cm in parts)
    assert joined == FAB
    for cm in parts:  # each object stays under the API server's 1 MiB
        assert len(json.dumps(SERIALISE(cm))) < 1024 * 1024
    job = cluster.objects[("Job", "fedota-p7", "coordinator")]
    (init,) = job.spec.template.spec.init_containers
    assert hashlib.sha256(FAB).hexdigest() in init.command
    sources = job.spec.template.spec.volumes[2].projected.sources
    assert [s.config_map.name for s in sources] == ["fab-000", "fab-001", "fab-002"]


def test_the_init_container_script_joins_checks_and_writes_the_app(tmp_path: Path) -> None:
    """The one piece of code that runs inside the cluster, run here on the chunks the spawner makes."""
    import subprocess
    import sys

    from webserver.spawner.kubernetes import JOIN_FAB, fab_chunks

    parts = tmp_path / "parts"
    parts.mkdir()
    for i, chunk in enumerate(fab_chunks(FAB)):
        (parts / f"part-{i:03d}").write_bytes(chunk)
    state = tmp_path / "state" / "fab"
    digest = hashlib.sha256(FAB).hexdigest()
    subprocess.run([sys.executable, "-c", JOIN_FAB, str(parts), digest, str(state)], check=True)
    assert (state / f"{digest}.fab").read_bytes() == FAB

    bad = subprocess.run(
        [sys.executable, "-c", JOIN_FAB, str(parts), "0" * 64, str(tmp_path / "other")], capture_output=True, text=True
    )
    assert bad.returncode != 0 and "not " + "0" * 64 in bad.stderr
    assert not (tmp_path / "other").exists()


def test_a_relaunch_replaces_the_workloads_and_keeps_the_state_volume(
    tmp_path: Path, cluster: FakeCluster, spawner: KubernetesSpawner
) -> None:
    first = spawner.start(make_spec(tmp_path))
    claim = cluster.objects[("PersistentVolumeClaim", "fedota-p7", "coordinator-state")]
    again = spawner.start(make_spec(tmp_path, run_id=4))
    assert cluster.objects[("PersistentVolumeClaim", "fedota-p7", "coordinator-state")] is claim
    assert {s.handle for s in again}.isdisjoint({s.handle for s in first})
    job = cluster.objects[("Job", "fedota-p7", "coordinator")]
    assert job.metadata.labels["fedota.run"] == "4"


def test_a_relaunch_with_fewer_selectors_removes_the_others_and_frees_their_ports(
    tmp_path: Path, cluster: FakeCluster, spawner: KubernetesSpawner
) -> None:
    spawner.start(make_spec(tmp_path, ports=(30056, 30057, 30058)))
    states = spawner.start(make_spec(tmp_path, run_id=4, ports=(30056,)))
    assert [(s.role, s.index) for s in states] == [("coordinator", 0), ("selector", 0)]
    assert cluster.kinds("fedota-p7")["Service"] == ["coordinator", "selector-0"]
    assert sorted(cluster.node_ports) == [30056]


def test_start_refuses_a_loopback_report_url_before_creating_anything(
    tmp_path: Path, cluster: FakeCluster, spawner: KubernetesSpawner
) -> None:
    spec = make_spec(tmp_path, report_url="http://127.0.0.1:8000/internal/v1/runs/3/")
    with pytest.raises(SpawnError, match="FEDOTA_INTERNAL_URL"):
        spawner.start(spec)
    assert cluster.objects == {}


def test_start_refuses_ports_outside_the_node_port_range_before_creating_anything(
    tmp_path: Path, cluster: FakeCluster, spawner: KubernetesSpawner
) -> None:
    with pytest.raises(SpawnError, match="FEDOTA_SELECTOR_PORT_BASE") as caught:
        spawner.start(make_spec(tmp_path, ports=(17056, 17057)))
    assert "17056" in str(caught.value) and "30000-32767" in str(caught.value)
    assert cluster.objects == {}


def test_load_balancer_selectors_may_use_any_port(tmp_path: Path, cluster: FakeCluster) -> None:
    config = KubernetesConfig(
        selector_host="fl.example.org",
        selector_service_type="LoadBalancer",
        load_balancer_annotations={"metallb.universe.tf/allow-shared-ip": "fedota"},
    )
    spawner = KubernetesSpawner(config, apis=cluster.apis, poll=0.0, sleep=lambda _s: None)
    states = spawner.start(make_spec(tmp_path, ports=(17056,)))
    assert states[1].address == "fl.example.org:17056"
    service = cluster.objects[("Service", "fedota-p7", "selector-0")]
    assert service.spec.type == "LoadBalancer"
    assert service.spec.ports[0].port == 17056 and service.spec.ports[0].node_port is None
    assert service.metadata.annotations == {"metallb.universe.tf/allow-shared-ip": "fedota"}
    # The balancer sends clients only to the node that runs the selector.
    assert service.spec.external_traffic_policy == "Local"


def test_a_port_held_by_another_problem_fails_the_publish_naming_it_and_leaves_that_problem_alone(
    tmp_path: Path, cluster: FakeCluster, spawner: KubernetesSpawner
) -> None:
    spawner.start(make_spec(tmp_path, problem_id=7))
    before = {k: v for k, v in cluster.objects.items() if k[1] == "fedota-p7"}
    with pytest.raises(SpawnError, match="30056.*already allocated.*FEDOTA_SELECTOR_PORT_BASE"):
        spawner.start(make_spec(tmp_path, problem_id=1007, ports=(30056, 30057)))
    assert {k: v for k, v in cluster.objects.items() if k[1] == "fedota-p7"} == before
    assert [s.health for s in spawner.status(7)] == ["healthy"] * 3
    # The failed problem's workloads are gone again (its namespace is the reconciler's to remove).
    assert "Job" not in cluster.kinds("fedota-p1007") and "Deployment" not in cluster.kinds("fedota-p1007")


def test_an_image_no_node_can_pull_fails_the_publish_at_once_saying_what_to_fix(
    tmp_path: Path, cluster: FakeCluster, spawner: KubernetesSpawner
) -> None:
    cluster.kubelet[("selector", 1)] = image_pull_backoff
    with pytest.raises(SpawnError) as caught:
        spawner.start(make_spec(tmp_path))
    message = str(caught.value)
    assert "selector 1 cannot start" in message and "ImagePullBackOff" in message
    assert "FEDOTA_SELECTOR_IMAGE" in message
    assert "Job" not in cluster.kinds("fedota-p7") and "Deployment" not in cluster.kinds("fedota-p7")


def test_a_coordinator_that_dies_while_starting_fails_the_publish_with_its_message(
    tmp_path: Path, cluster: FakeCluster, spawner: KubernetesSpawner
) -> None:
    cluster.kubelet[("coordinator", 0)] = exited(2, message="invalid settings: FEDOTA_APP")
    with pytest.raises(SpawnError, match="(?s)coordinator ended while starting.*exited with code 2.*FEDOTA_APP"):
        spawner.start(make_spec(tmp_path))


def test_services_that_never_answer_time_out_naming_them(tmp_path: Path, cluster: FakeCluster) -> None:
    def not_ready(container: str) -> k8s.V1PodStatus:
        status = ready(container)
        status.container_statuses[0].ready = False
        return status

    cluster.kubelet[("selector", 0)] = not_ready
    spawner = KubernetesSpawner(CONFIG, apis=cluster.apis, start_timeout=0.0, poll=0.0, sleep=lambda _s: None)
    with pytest.raises(SpawnError, match=r"did not answer within 0 s: selector 0"):
        spawner.start(make_spec(tmp_path))


def test_a_namespace_still_being_deleted_is_waited_for(
    tmp_path: Path, cluster: FakeCluster, spawner: KubernetesSpawner
) -> None:
    spawner.start(make_spec(tmp_path))
    cluster.terminating_polls = 3
    spawner.stop(7)
    assert spawner.problems() == set()  # Terminating: not running anything any more
    states = spawner.start(make_spec(tmp_path, run_id=4))
    assert [s.health for s in states] == ["healthy"] * 3


def test_forbidden_calls_say_which_rbac_to_apply(
    tmp_path: Path, cluster: FakeCluster, spawner: KubernetesSpawner
) -> None:
    def forbidden(body: Any) -> None:
        raise api_error(
            403, 'namespaces is forbidden: User "system:serviceaccount:fedota:default" cannot create resource'
        )

    cluster.create_namespace = forbidden  # type: ignore[method-assign]
    with pytest.raises(SpawnError, match=r"\(403\).*forbidden.*deploy/kubernetes/base/rbac.yaml"):
        spawner.start(make_spec(tmp_path))


def test_an_unreachable_api_server_is_a_spawn_error(tmp_path: Path) -> None:
    spawner = KubernetesSpawner(CONFIG, kubeconfig=str(tmp_path / "missing-kubeconfig"))
    with pytest.raises(SpawnError, match="FEDOTA_KUBERNETES_KUBECONFIG"):
        spawner.status(7)


def test_an_api_server_that_does_not_answer_fails_the_publish_naming_it(
    tmp_path: Path, cluster: FakeCluster, spawner: KubernetesSpawner
) -> None:
    import urllib3.exceptions

    def refused(name: str) -> None:
        raise urllib3.exceptions.MaxRetryError(None, "/api/v1/namespaces/fedota-p7", "Connection refused")  # type: ignore[arg-type]

    cluster.read_namespace = refused  # type: ignore[method-assign]
    with pytest.raises(SpawnError, match="creating the namespace fedota-p7: cannot reach the Kubernetes API server"):
        spawner.start(make_spec(tmp_path))


# ---- status, restart, reconcile -------------------------------------------------------------------


def test_status_of_a_problem_with_no_namespace_is_empty(spawner: KubernetesSpawner) -> None:
    assert spawner.status(99) == []


def test_a_crashed_coordinator_is_reported_exited_with_its_code_and_restarted_alone_on_its_volume(
    tmp_path: Path, cluster: FakeCluster, spawner: KubernetesSpawner
) -> None:
    before = spawner.start(make_spec(tmp_path))
    claim = cluster.objects[("PersistentVolumeClaim", "fedota-p7", "coordinator-state")]
    selectors = [cluster.pod_of("fedota-p7", "selector", i) for i in range(2)]
    # The coordinator's container dies: the Job (backoffLimit 0) fails, the kubelet leaves it.
    pod = cluster.pod_of("fedota-p7", "coordinator")
    pod.status = exited(1, message="Traceback ...")("coordinator")
    states = spawner.status(7)
    assert (states[0].health, states[0].exit_code) == ("exited", 1)
    assert "exited with code 1" in states[0].detail

    after = spawner.restart(7, "coordinator", 0)

    assert after.health == "healthy" and after.handle != before[0].handle
    # The same Job as it was created: same template, volume and secrets; the others untouched.
    job = cluster.objects[("Job", "fedota-p7", "coordinator")]
    assert job.spec.template.spec.volumes[0].persistent_volume_claim.claim_name == "coordinator-state"
    assert cluster.objects[("PersistentVolumeClaim", "fedota-p7", "coordinator-state")] is claim
    assert [cluster.pod_of("fedota-p7", "selector", i) for i in range(2)] == selectors


def test_a_coordinator_that_finished_says_exit_code_0(
    tmp_path: Path, cluster: FakeCluster, spawner: KubernetesSpawner
) -> None:
    spawner.start(make_spec(tmp_path))
    cluster.pod_of("fedota-p7", "coordinator").status = exited(0, reason="Completed")("coordinator")
    state = spawner.status(7)[0]
    assert (state.health, state.exit_code) == ("exited", 0)


def test_restarting_a_running_coordinator_leaves_it_alone(
    tmp_path: Path, cluster: FakeCluster, spawner: KubernetesSpawner
) -> None:
    before = spawner.start(make_spec(tmp_path))
    after = spawner.restart(7, "coordinator", 0)
    assert after.handle == before[0].handle
    assert cluster.calls.count("create_namespaced_job") == 1


def test_a_selector_the_kubelet_restarts_counts_its_restarts_and_says_why(
    tmp_path: Path, cluster: FakeCluster, spawner: KubernetesSpawner
) -> None:
    spawner.start(make_spec(tmp_path))
    cluster.pod_of("fedota-p7", "selector", 1).status = crash_looping(1, restarts=2)("selector")
    state = spawner.status(7)[2]
    assert (state.health, state.restarts) == ("starting", 2)
    assert "restarting it after exit code 1" in state.detail


def test_an_evicted_selector_is_exited_and_restart_gets_it_a_new_pod(
    tmp_path: Path, cluster: FakeCluster, spawner: KubernetesSpawner
) -> None:
    spawner.start(make_spec(tmp_path))
    coordinator = cluster.pod_of("fedota-p7", "coordinator")
    old = cluster.pod_of("fedota-p7", "selector", 0)
    old.status = evicted("selector")
    state = spawner.status(7)[1]
    assert state.health == "exited" and "Evicted" in state.detail

    after = spawner.restart(7, "selector", 0)

    assert after.health == "healthy" and after.handle != old.metadata.name
    assert after.address == "fl.example.org:30056"
    assert cluster.pod_of("fedota-p7", "coordinator") is coordinator


def test_restart_of_a_removed_service_says_it_cannot_and_the_run_must_be_launched_whole(
    tmp_path: Path, cluster: FakeCluster, spawner: KubernetesSpawner
) -> None:
    spawner.start(make_spec(tmp_path))
    cluster.delete_namespaced_deployment("selector-1", "fedota-p7")
    with pytest.raises(SpawnError, match="selector 1's Deployment .* is gone"):
        spawner.restart(7, "selector", 1)
    cluster.delete_namespaced_job("coordinator", "fedota-p7")
    with pytest.raises(SpawnError, match="coordinator's Job .* is gone"):
        spawner.restart(7, "coordinator", 0)
    # status shows what remains, so the reconciler sees the gap and relaunches.
    assert [(s.role, s.index) for s in spawner.status(7)] == [("selector", 0)]


def test_status_and_restart_feed_the_websites_reconcile_plan(
    tmp_path: Path, cluster: FakeCluster, spawner: KubernetesSpawner
) -> None:
    """The reconciler's decision (webserver.problems.lifecycle._plan) on what this backend reports."""
    from webserver.problems.lifecycle import _Plan

    spawner.start(make_spec(tmp_path))
    cluster.pod_of("fedota-p7", "selector", 1).status = exited(137, reason="OOMKilled")("selector")
    states = spawner.status(7)
    dead = [s for s in states if s.health == "exited"]
    plan = _Plan(dead=dead)
    assert plan.restarts == [{"service": "selector 1", "reason": "the container was killed (out of memory)"}]


def test_service_state_reads_a_pod_that_runs_but_never_became_ready_as_unhealthy() -> None:
    status = ready("selector")
    status.container_statuses[0].ready = False
    pod = k8s.V1Pod(metadata=k8s.V1ObjectMeta(name="selector-0-abc"), status=status)
    early = service_state(CONFIG, 7, "selector", 0, pod, port="30056", now=NOW + timedelta(seconds=30))
    late = service_state(CONFIG, 7, "selector", 0, pod, port="30056", now=NOW + timedelta(minutes=5))
    assert early.health == "starting"
    assert late.health == "unhealthy" and "health check" in late.detail


def test_a_coordinator_pod_the_cluster_moved_is_not_a_crash_its_job_replaces_it() -> None:
    status = exited(137, reason="Error")("coordinator")
    status.conditions = [
        k8s.V1PodCondition(type="DisruptionTarget", status="True", reason="TerminationByKubelet", message="drained")
    ]
    pod = k8s.V1Pod(metadata=k8s.V1ObjectMeta(name="coordinator-x"), status=status)
    state = service_state(CONFIG, 7, "coordinator", 0, pod)
    assert state.health == "starting" and "TerminationByKubelet" in state.detail
    # A selector's Deployment replaces its pods itself; a crashed coordinator is still a crash.
    crashed = k8s.V1Pod(metadata=k8s.V1ObjectMeta(name="coordinator-y"), status=exited(137)("coordinator"))
    assert service_state(CONFIG, 7, "coordinator", 0, crashed).health == "exited"


def test_an_app_that_does_not_add_up_fails_the_publish_naming_the_copy(
    tmp_path: Path, cluster: FakeCluster, spawner: KubernetesSpawner
) -> None:
    def fab_failed(container: str) -> k8s.V1PodStatus:
        failed = k8s.V1ContainerStateTerminated(
            exit_code=1, reason="Error", message="the app from the ConfigMaps has SHA-256 0123, not 4567"
        )
        return k8s.V1PodStatus(
            phase="Failed",
            init_container_statuses=[
                k8s.V1ContainerStatus(
                    name="fab",
                    image="img",
                    image_id="",
                    ready=False,
                    restart_count=0,
                    state=k8s.V1ContainerState(terminated=failed),
                )
            ],
        )

    cluster.kubelet[("coordinator", 0)] = fab_failed
    with pytest.raises(SpawnError, match="coordinator cannot start: copying the app .* SHA-256 0123, not 4567"):
        spawner.start(make_spec(tmp_path))


def test_a_pod_still_pulling_its_image_says_so() -> None:
    waiting = k8s.V1ContainerStateWaiting(reason="ContainerCreating")
    pod = k8s.V1Pod(
        metadata=k8s.V1ObjectMeta(name="selector-0-x"),
        status=k8s.V1PodStatus(
            phase="Pending",
            container_statuses=[
                k8s.V1ContainerStatus(
                    name="selector",
                    image="fedota/selector:latest",
                    image_id="",
                    ready=False,
                    restart_count=0,
                    state=k8s.V1ContainerState(waiting=waiting),
                )
            ],
        ),
    )
    state = service_state(CONFIG, 7, "selector", 0, pod, port="30056")
    assert (state.health, state.detail) == ("starting", "selector: ContainerCreating")


def test_a_pod_that_cannot_be_scheduled_says_why() -> None:
    pod = k8s.V1Pod(
        metadata=k8s.V1ObjectMeta(name="coordinator-x"),
        status=k8s.V1PodStatus(
            phase="Pending",
            conditions=[
                k8s.V1PodCondition(
                    type="PodScheduled",
                    status="False",
                    reason="Unschedulable",
                    message="0/3 nodes are available: 3 Insufficient memory.",
                )
            ],
        ),
    )
    state = service_state(CONFIG, 7, "coordinator", 0, pod)
    assert state.health == "starting" and "Insufficient memory" in state.detail


# ---- stop and orphans ------------------------------------------------------------------------------


def test_stop_deletes_the_namespace_coordinator_first_and_is_idempotent(
    tmp_path: Path, cluster: FakeCluster, spawner: KubernetesSpawner
) -> None:
    spawner.start(make_spec(tmp_path))
    spawner.start(make_spec(tmp_path, problem_id=8, ports=(30064,)))
    cluster.calls.clear()
    spawner.stop(7)
    assert cluster.calls.index("delete_namespaced_job") < cluster.calls.index("delete_namespace")
    assert cluster.kinds("fedota-p7") == {}
    assert spawner.problems() == {8}
    spawner.stop(7)  # nothing left: no error
    assert [s.health for s in spawner.status(8)] == ["healthy"] * 2


def test_stop_leaves_a_namespace_of_another_installation_alone(
    cluster: FakeCluster, spawner: KubernetesSpawner
) -> None:
    other = KubernetesSpawner(KubernetesConfig(prefix="fedota"), apis=cluster.apis)
    cluster.create_namespace(
        k8s.V1Namespace(
            api_version="v1",
            kind="Namespace",
            metadata=k8s.V1ObjectMeta(
                name="fedota-p5", labels={"fedota.install": "someone-else", "fedota.problem": "5"}
            ),
        )
    )
    with pytest.raises(SpawnError, match="not this installation's namespace"):
        other.stop(5)
    assert ("Namespace", "", "fedota-p5") in cluster.objects
    assert spawner.problems() == set()


# ---- what every object is --------------------------------------------------------------------------


def _pod_specs(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [o["spec"]["template"]["spec"] for o in objects if o["kind"] in ("Job", "Deployment")]


def test_every_object_validates_against_the_kubernetes_schemas(tmp_path: Path) -> None:
    spec = make_spec(tmp_path)
    objects = build_run_objects(CONFIG, spec, FAB, spec.selector_ports)
    kinds = [validate(o)["kind"] for o in objects]
    assert set(kinds) == {
        "Namespace",
        "NetworkPolicy",
        "Secret",
        "ConfigMap",
        "PersistentVolumeClaim",
        "Service",
        "Job",
        "Deployment",
    }
    # The validation can fail: an unknown field, or a port that is not a number, is refused.
    broken = SERIALISE(objects[-1])
    broken["spec"]["template"]["spec"]["containers"][0]["securityContext"]["readOnlyRootFs"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, SCHEMA_VERSIONS[0], strict=True)


def test_no_secret_is_ever_a_literal_in_a_pod_spec(
    tmp_path: Path, cluster: FakeCluster, spawner: KubernetesSpawner
) -> None:
    spec = make_spec(tmp_path)
    spawner.start(spec)
    secrets = [
        spec.service_token,
        spec.selector_token,
        spec.tls_key_pem,
        spec.coordinator_tls_key_pem,
        spec.tls_cert_pem,
    ]
    pods = _pod_specs(cluster.created)
    assert len(pods) == 3
    text = json.dumps(pods)
    for secret in secrets:
        assert secret not in text
    # ... and no secret in any object but the Secrets.
    for obj in cluster.created:
        if obj["kind"] != "Secret":
            assert not any(secret in json.dumps(obj) for secret in secrets), obj["kind"]
    # Every secret variable comes from a secretKeyRef, each role from its own Secret only.
    for pod in pods:
        for container in pod["containers"]:
            env = {e["name"]: e for e in container["env"]}
            role = container["name"]
            for name in ("FEDOTA_SELECTOR_TOKEN", "FEDOTA_TLS_CERT", "FEDOTA_TLS_KEY"):
                assert env[name]["valueFrom"]["secretKeyRef"]["name"] == role, (role, name)
                assert "value" not in env[name]
    coordinator_secret = cluster.objects[("Secret", "fedota-p7", "coordinator")].string_data
    selector_secret = cluster.objects[("Secret", "fedota-p7", "selector")].string_data
    assert spec.tls_key_pem not in coordinator_secret.values()
    assert spec.coordinator_tls_key_pem not in selector_secret.values()
    assert spec.service_token not in selector_secret.values()


def test_every_container_is_non_root_with_a_read_only_root_filesystem_and_limits(tmp_path: Path) -> None:
    spec = make_spec(tmp_path)
    objects = [SERIALISE(o) for o in build_run_objects(CONFIG, spec, FAB, spec.selector_ports)]
    pods = _pod_specs(objects)
    assert len(pods) == 3
    for pod in pods:
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] != 0
        assert pod["automountServiceAccountToken"] is False
        volumes = {v["name"]: v for v in pod["volumes"]}
        # Pod Security "restricted" (which the namespace enforces) allows these volume types only.
        for volume in volumes.values():
            assert set(volume) - {"name"} <= PSS_RESTRICTED_VOLUMES, volume
        assert not {"hostNetwork", "hostPID", "hostIPC"} & set(pod)
        for container in pod.get("initContainers", []) + pod["containers"]:
            assert not any("hostPort" in port for port in container.get("ports", []))
            sc = container["securityContext"]
            assert sc["runAsNonRoot"] is True and sc["readOnlyRootFilesystem"] is True
            assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"] == {"drop": ["ALL"]}
            assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
            assert {"cpu", "memory"} <= set(container["resources"]["limits"])
            # Whatever the images write to is a volume: /tmp (HOME) everywhere, /state for the coordinator.
            mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
            assert "emptyDir" in volumes[mounts["/tmp"]]
            if container["name"] in ("coordinator", "fab"):
                assert "persistentVolumeClaim" in volumes[mounts["/state"]]
    namespace = objects[0]
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


def _peers_allow(
    peers: list[dict[str, Any]] | None, labels: dict[str, str], namespace: str, own_namespace: str
) -> bool:
    """Does a policy rule's peer list admit a pod with `labels` in `namespace`? (No ipBlocks are used.)"""
    if peers is None:
        return True
    for peer in peers:
        assert "ipBlock" not in peer
        ns_sel = peer.get("namespaceSelector")
        if ns_sel is None:
            ns_ok = namespace == own_namespace
        else:
            ns_ok = all(
                {"kubernetes.io/metadata.name": namespace}.get(k) == v for k, v in ns_sel.get("matchLabels", {}).items()
            )
        pod_ok = all(labels.get(k) == v for k, v in (peer.get("podSelector") or {}).get("matchLabels", {}).items())
        if ns_ok and pod_ok:
            return True
    return False


def allowed(
    policies: list[dict[str, Any]],
    src: tuple[str, dict[str, str]],
    dst: tuple[str, dict[str, str]],
    port: int,
    protocol: str = "TCP",
) -> bool:
    """Whether the policies admit a connection from src (namespace, pod labels) to dst, as the
    NetworkPolicy semantics say: a side that policies select must be allowed by one of them."""
    ns = policies[0]["metadata"]["namespace"]

    def selects(policy: dict[str, Any], labels: dict[str, str]) -> bool:
        match = policy["spec"]["podSelector"].get("matchLabels") or {}
        return all(labels.get(k) == v for k, v in match.items())

    def port_ok(rule: dict[str, Any]) -> bool:
        ports = rule.get("ports")
        return ports is None or any(p["port"] == port and p.get("protocol", "TCP") == protocol for p in ports)

    egress_ok = True
    if src[0] == ns:
        egress = [p for p in policies if "Egress" in p["spec"]["policyTypes"] and selects(p, src[1])]
        if egress:
            egress_ok = any(
                port_ok(rule) and _peers_allow(rule.get("to"), dst[1], dst[0], ns)
                for p in egress
                for rule in p["spec"].get("egress") or []
            )
    ingress_ok = True
    if dst[0] == ns:
        ingress = [p for p in policies if "Ingress" in p["spec"]["policyTypes"] and selects(p, dst[1])]
        if ingress:
            ingress_ok = any(
                port_ok(rule) and _peers_allow(rule.get("from"), src[1], src[0], ns)
                for p in ingress
                for rule in p["spec"].get("ingress") or []
            )
    return egress_ok and ingress_ok


def test_network_policies_allow_only_the_intended_flows(tmp_path: Path) -> None:
    policies = [SERIALISE(p) for p in build_network_policies(CONFIG, 7)]
    ns = "fedota-p7"
    coordinator = (
        ns,
        {"fedota.install": "fedota", "fedota.problem": "7", "fedota.role": "coordinator", "fedota.index": "0"},
    )
    selector = (ns, {"fedota.install": "fedota", "fedota.problem": "7", "fedota.role": "selector", "fedota.index": "1"})
    client = ("internet", {})
    web = ("fedota", {"app.kubernetes.io/name": "fedota", "app.kubernetes.io/component": "web"})
    postgres = ("fedota", {"app.kubernetes.io/name": "fedota", "app.kubernetes.io/component": "postgres"})
    dns = ("kube-system", {"k8s-app": "kube-dns"})
    other_coordinator = ("fedota-p8", {**coordinator[1], "fedota.problem": "8"})

    # The intended flows.
    assert allowed(policies, client, selector, 9092)
    assert allowed(policies, selector, coordinator, 9091)
    assert allowed(policies, coordinator, web, 8000)
    assert allowed(policies, coordinator, dns, 53, "UDP") and allowed(policies, selector, dns, 53, "UDP")
    # Nothing else.
    assert not allowed(policies, client, coordinator, 9091)
    assert not allowed(policies, client, selector, 9093)  # the health port
    assert not allowed(policies, selector, web, 8000)
    assert not allowed(policies, coordinator, postgres, 5432)
    assert not allowed(policies, selector, postgres, 5432)
    assert not allowed(policies, coordinator, selector, 9092)
    assert not allowed(policies, coordinator, ("internet", {}), 443)
    assert not allowed(policies, selector, ("internet", {}), 443)
    assert not allowed(policies, selector, other_coordinator, 9091)
    assert not allowed(policies, other_coordinator, coordinator, 9091)
    assert not allowed(policies, coordinator, web, 5432)


def test_with_metrics_on_only_the_platforms_prometheus_reaches_each_pods_metrics_port(tmp_path: Path) -> None:
    config = dataclasses.replace(CONFIG, metrics=True, prometheus_namespace="monitoring")
    policies = [SERIALISE(p) for p in build_network_policies(config, 7)]
    ns = "fedota-p7"
    coordinator = (ns, {"fedota.install": "fedota", "fedota.problem": "7", "fedota.role": "coordinator"})
    selector = (ns, {"fedota.install": "fedota", "fedota.problem": "7", "fedota.role": "selector", "fedota.index": "1"})
    prometheus = ("monitoring", {"app.kubernetes.io/name": "prometheus"})
    assert allowed(policies, prometheus, coordinator, 9094) and allowed(policies, prometheus, selector, 9094)
    # Nobody else, and Prometheus nowhere else.
    assert not allowed(policies, ("internet", {}), selector, 9094)
    assert not allowed(policies, ("fedota", {"app.kubernetes.io/name": "prometheus"}), selector, 9094)
    assert not allowed(policies, ("monitoring", {"app.kubernetes.io/name": "grafana"}), selector, 9094)
    assert not allowed(policies, ("fedota-p8", coordinator[1]), coordinator, 9094)
    assert not allowed(policies, selector, coordinator, 9094)
    assert not allowed(policies, prometheus, coordinator, 9091) and not allowed(policies, prometheus, selector, 9093)
    # Off (the builders' default): no such policy.
    assert len(build_network_policies(CONFIG, 7)) == len(policies) - 1


def test_with_metrics_on_each_service_serves_them_and_reports_its_pods_address(
    tmp_path: Path, cluster: FakeCluster
) -> None:
    def ready_at(ip: str) -> Callable[[str], k8s.V1PodStatus]:
        def status(container: str) -> k8s.V1PodStatus:
            return ready(container).model_copy(update={"pod_ip": ip})

        return status

    cluster.kubelet[("coordinator", 0)] = ready_at("10.42.0.7")
    cluster.kubelet[("selector", 0)] = ready_at("10.42.1.3")
    cluster.kubelet[("selector", 1)] = ready_at("10.42.2.9")
    config = dataclasses.replace(CONFIG, metrics=True)
    spawner = KubernetesSpawner(
        config, apis=cluster.apis, start_timeout=5.0, delete_timeout=5.0, poll=0.0, sleep=lambda _s: None
    )
    states = spawner.start(make_spec(tmp_path))  # every object passes the schemas (the fake validates)
    assert [s.metrics for s in states] == ["10.42.0.7:9094", "10.42.1.3:9094", "10.42.2.9:9094"]
    for pod in _pod_specs([o for o in cluster.created if o["kind"] in ("Job", "Deployment")]):
        (main,) = pod["containers"]
        assert {"name": "FEDOTA_METRICS_LISTEN", "value": "0.0.0.0:9094"} in main["env"]
        assert {"name": "metrics", "containerPort": 9094, "protocol": "TCP"} in main["ports"]
    assert "metrics-from-prometheus" in cluster.kinds("fedota-p7")["NetworkPolicy"]

    # Off: nothing served, nothing reported, no port.
    off = KubernetesSpawner(
        CONFIG, apis=FakeCluster().apis, start_timeout=5.0, delete_timeout=5.0, poll=0.0, sleep=lambda _s: None
    )
    assert [s.metrics for s in off.start(make_spec(tmp_path))] == ["", "", ""]
    for pod in _pod_specs(validate(o) for o in build_run_objects(CONFIG, make_spec(tmp_path), FAB, (30056, 30057))):
        assert all(e["name"] != "FEDOTA_METRICS_LISTEN" for e in pod["containers"][0]["env"])
        assert [p["name"] for p in pod["containers"][0]["ports"]] == ["grpc"]


# ---- RBAC ------------------------------------------------------------------------------------------


def _rbac_rules(kind: str) -> set[tuple[str, str, str, str]]:
    """(group, resource, verb, resource name or "") of every rule of the one `kind` object in rbac.yaml."""
    docs = [d for d in yaml.safe_load_all(RBAC.read_text()) if d]
    (role,) = [d for d in docs if d["kind"] == kind]
    out: set[tuple[str, str, str, str]] = set()
    for rule in role["rules"]:
        assert "nonResourceURLs" not in rule
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                for verb in rule["verbs"]:
                    assert "*" not in (group, resource, verb)
                    for name in rule.get("resourceNames") or [""]:
                        out.add((group, resource, verb, name))
    return out


def platform_pull_secret(cluster: FakeCluster) -> None:
    """The namespace the website runs in, with the private registry's pull Secret."""
    cluster.create_namespace(
        k8s.V1Namespace(api_version="v1", kind="Namespace", metadata=k8s.V1ObjectMeta(name="fedota"))
    )
    config = base64.b64encode(b'{"auths": {"registry.example.org": {"auth": "dXNlcjpwdw=="}}}').decode()
    cluster.objects[("Secret", "fedota", "fedota-registry")] = k8s.V1Secret(
        api_version="v1",
        kind="Secret",
        type="kubernetes.io/dockerconfigjson",
        metadata=k8s.V1ObjectMeta(name="fedota-registry", namespace="fedota"),
        data={".dockerconfigjson": config},
    )


def test_the_workers_roles_grant_exactly_the_calls_the_spawner_makes(tmp_path: Path, cluster: FakeCluster) -> None:
    platform_pull_secret(cluster)
    config = KubernetesConfig(selector_host="fl.example.org", image_pull_secret="fedota-registry")
    spawner = KubernetesSpawner(config, apis=cluster.apis, poll=0.0, sleep=lambda _s: None)
    # Every path through the backend: start, relaunch (with a selector fewer), status, restarts
    # of both roles, stop, orphans.
    spawner.start(make_spec(tmp_path, ports=(30056, 30057, 30058)))
    spawner.start(make_spec(tmp_path, run_id=4))
    cluster.pod_of("fedota-p7", "coordinator").status = exited(1)("coordinator")
    spawner.restart(7, "coordinator", 0)
    cluster.pod_of("fedota-p7", "selector", 0).status = evicted("selector")
    spawner.restart(7, "selector", 0)
    spawner.problems()
    spawner.stop(7)
    spawner.stop(7)

    # What the API server would authorize, from the HTTP requests the official client built.
    requests = {rbac_rule(method, url) for method, url in cluster.http}
    # The one Secret it reads is the pull Secret in the platform's namespace: a namespaced Role
    # naming it allows that; everything else is the ClusterRole, without resource names.
    reads = {r for r in requests if r[:3] == ("", "secrets", "get")}
    assert reads == {("", "secrets", "get", "fedota", "fedota-registry")}
    assert _rbac_rules("Role") == {("", "secrets", "get", "fedota-registry")}
    assert {(*r[:3], "") for r in requests - reads} == _rbac_rules("ClusterRole")
    # Every method the spawner's source calls on an API group was exercised above.
    import re

    source = (REPO / "webserver" / "spawner" / "kubernetes.py").read_text()
    called = set(re.findall(r"self\.apis\.(?:core|apps|batch|networking)\.(\w+)", source))
    assert called == set(cluster.calls)


def test_a_private_registrys_pull_secret_is_copied_into_the_problem_and_named_by_its_pods(
    tmp_path: Path, cluster: FakeCluster
) -> None:
    config = KubernetesConfig(selector_host="fl.example.org", image_pull_secret="fedota-registry")
    spawner = KubernetesSpawner(config, apis=cluster.apis, poll=0.0, sleep=lambda _s: None)
    with pytest.raises(SpawnError, match="fedota-registry .* is not in the namespace fedota: create it there"):
        spawner.start(make_spec(tmp_path))
    assert ("Namespace", "", "fedota-p7") not in cluster.objects  # nothing created

    platform_pull_secret(cluster)
    spawner.start(make_spec(tmp_path))
    copy = cluster.objects[("Secret", "fedota-p7", "fedota-registry")]
    original = cluster.objects[("Secret", "fedota", "fedota-registry")]
    assert (copy.type, copy.data) == (original.type, original.data)
    pods = _pod_specs(cluster.created)
    assert pods and all(pod["imagePullSecrets"] == [{"name": "fedota-registry"}] for pod in pods)


def test_the_rbac_objects_validate_and_bind_the_role_to_the_workers_account() -> None:
    docs = [d for d in yaml.safe_load_all(RBAC.read_text()) if d]
    for doc in docs:
        for version in SCHEMA_VERSIONS:
            kubernetes_validate.validate(doc, version, strict=True)
    (account,) = [d for d in docs if d["kind"] == "ServiceAccount"]
    for role_kind, binding_kind in (("ClusterRole", "ClusterRoleBinding"), ("Role", "RoleBinding")):
        (binding,) = [d for d in docs if d["kind"] == binding_kind]
        (role,) = [d for d in docs if d["kind"] == role_kind]
        assert (binding["roleRef"]["kind"], binding["roleRef"]["name"]) == (role_kind, role["metadata"]["name"])
        subjects = [{"kind": "ServiceAccount", "name": account["metadata"]["name"], "namespace": "fedota"}]
        assert binding["subjects"] == subjects


# ---- choosing the backend ----------------------------------------------------------------------------


def test_the_kubernetes_backend_is_chosen_by_one_setting_and_reads_its_settings(settings: Any) -> None:
    from webserver.spawner import get_spawner

    settings.FEDOTA_SPAWNER = "kubernetes"
    settings.FEDOTA_SELECTOR_HOST = "fl.example.org"
    settings.FEDOTA_KUBERNETES_SELECTOR_SERVICE = "LoadBalancer"
    settings.FEDOTA_KUBERNETES_PLATFORM_NAMESPACE = "fl-platform"
    settings.FEDOTA_KUBERNETES_DNS_POD_LABELS = {"k8s-app": "coredns"}
    spawner = get_spawner()
    assert isinstance(spawner, KubernetesSpawner)
    assert spawner.config.selector_host == "fl.example.org"
    assert spawner.config.selector_service_type == "LoadBalancer"
    # The coordinator's reports are allowed into the namespace the website really runs in.
    policies = [SERIALISE(p) for p in build_network_policies(spawner.config, 7)]
    website = next(p for p in policies if p["metadata"]["name"] == "coordinator-to-website")
    peer = website["spec"]["egress"][0]["to"][0]
    assert peer["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "fl-platform"}
    dns = website["spec"]["egress"][1]["to"][0]
    assert dns["podSelector"]["matchLabels"] == {"k8s-app": "coredns"}

    settings.FEDOTA_KUBERNETES_SELECTOR_SERVICE = "HostPort"
    with pytest.raises(SpawnError, match="NodePort or LoadBalancer"):
        get_spawner()


def test_bad_kubernetes_settings_say_what_is_expected(monkeypatch: pytest.MonkeyPatch) -> None:
    from django.core.exceptions import ImproperlyConfigured

    from webserver import settings as site

    monkeypatch.setenv("FEDOTA_KUBERNETES_NODE_PORT_RANGE", "32767-30000")
    with pytest.raises(ImproperlyConfigured, match="port range such as 30000-32767"):
        site._kubernetes_port_range("FEDOTA_KUBERNETES_NODE_PORT_RANGE", "30000-32767")
    monkeypatch.setenv("FEDOTA_KUBERNETES_NODE_PORT_RANGE", "20000-29999")
    assert site._kubernetes_port_range("FEDOTA_KUBERNETES_NODE_PORT_RANGE", "30000-32767") == (20000, 29999)
    monkeypatch.setenv("FEDOTA_KUBERNETES_WEB_POD_LABELS", "app=fedota,component")
    with pytest.raises(ImproperlyConfigured, match="key=value"):
        site._kubernetes_labels("FEDOTA_KUBERNETES_WEB_POD_LABELS", "a=b")
    monkeypatch.setenv("FEDOTA_KUBERNETES_LOAD_BALANCER_ANNOTATIONS", '{"shared": 1}')
    with pytest.raises(ImproperlyConfigured, match="JSON object of strings"):
        site._kubernetes_annotations("FEDOTA_KUBERNETES_LOAD_BALANCER_ANNOTATIONS")
    monkeypatch.setenv("FEDOTA_KUBERNETES_LOAD_BALANCER_ANNOTATIONS", '{"metallb.universe.tf/allow-shared-ip": "x"}')
    assert site._kubernetes_annotations("FEDOTA_KUBERNETES_LOAD_BALANCER_ANNOTATIONS") == {
        "metallb.universe.tf/allow-shared-ip": "x"
    }
