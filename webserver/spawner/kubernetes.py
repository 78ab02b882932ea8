"""The `kubernetes` backend: a run's coordinator and selectors as objects of a Kubernetes cluster.

Validated offline only: every object below is checked against the Kubernetes API
schemas and the reconcile logic against the official client's models with a fake
API (tests/unit/test_spawner_kubernetes*.py). It has never run against a live
cluster here (docs/kubernetes.md).

Per problem, in its own namespace `<prefix>-p<id>` (Pod Security "restricted"):

- Secrets `coordinator` and `selector`: the run's tokens and TLS material, each
  service getting only its own key. Containers read them through `secretKeyRef`;
  no secret is ever a literal in a pod spec. With a private registry, a copy of the
  platform's image pull Secret too (pods can name Secrets of their own namespace only);
- ConfigMaps `fab-000`, `fab-001`, ...: the problem's app in chunks (an object
  holds at most 1 MiB). An init container joins them, checks the SHA-256 and
  writes the app into the coordinator's volume, so the worker shares no path
  with the cluster (as `put_archive` does for the Docker backend);
- a PersistentVolumeClaim `coordinator-state` for the coordinator's state (the
  app, its checkpoints), kept across restarts and relaunches of the run;
- a Job `coordinator` (one pod, `restartPolicy: Never`, no retries except when
  the cluster itself disrupted the pod, e.g. a drained node), and a ClusterIP
  Service `coordinator` the selectors dial (the name its certificate carries).
  Not a StatefulSet or a Deployment: those restart every container that ends,
  also a coordinator whose run completed (exit 0) or failed, and only the
  website knows which; as on Docker the reconciler decides (`restart`);
- per selector a Deployment `selector-<i>` (one replica; the kubelet restarts a
  crashed selector at once, like Docker's on-failure policy) and a Service
  `selector-<i>` that data holders reach from outside, NodePort or LoadBalancer
  (a setting), on the problem's fixed port (`RunSpec.selector_ports`);
- NetworkPolicies: everything denied but clients → selectors (their port),
  selectors → coordinator (its port), coordinator → the website's pods (its
  reports) and DNS.

Containers run as the images' non-root user (uid 10001) with every capability
dropped, no privilege escalation, the runtime's seccomp profile, a read-only root
filesystem (an emptyDir at /tmp, the HOME the services write to) and CPU and
memory limits; pods get no service-account token.

Everything carries the labels `fedota.install=<prefix>` and `fedota.problem=<id>`
and is found again by label alone. `stop()` deletes the namespace, which takes
everything in it along.

The API server's errors become `SpawnError` here, with what it said and what to fix.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import urllib3.exceptions
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from fedota_common.hosts import is_loopback
from webserver.spawner.base import METRICS_PORT, RunSpec, ServiceState, SpawnError, metrics_env

log = logging.getLogger(__name__)

COORDINATOR_PORT = 9091
SELECTOR_PORT = 9092
# Each service's plaintext health port, on the pod's loopback only (its gRPC port speaks TLS).
HEALTH_PORT = 9093
STATE_MOUNT = "/state"
FAB_PARTS_MOUNT = "/fab-parts"
# Raw bytes per app chunk: base64 makes 683 KiB of it, well under an object's 1 MiB.
FAB_CHUNK = 512 * 1024
# Every service answering, as on Docker: the publish task's own soft limit (170 s,
# webserver/problems/tasks.py) must leave time to say which service did not and why.
# Nodes pull the images on first use; a large image pulled slowly can need a second publish.
START_TIMEOUT = 120.0
# How long a deleted object may take to go before its name is needed again.
DELETE_TIMEOUT = 60.0
STOP_GRACE = 10
UID = 10001
LABEL = "fedota"
WRITABLE_TMP = "512Mi"
# Kubelet's "cannot start this container" reasons that waiting longer never cures.
HOPELESS = {"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "CreateContainerConfigError", "ErrImageNeverPull"}
# The same question as the images' HEALTHCHECK: grpc.health.v1 Check("") answering SERVING.
PROBE = ["python", "-m", "fedota_common.healthprobe", str(HEALTH_PORT)]
# The init container: join the app's chunks, check its SHA-256, write it into the state volume.
JOIN_FAB = (
    "import hashlib, os, sys; d = sys.argv[1]; want = sys.argv[2]; "
    "data = b''.join(open(os.path.join(d, p), 'rb').read() for p in sorted(os.listdir(d)) if p.startswith('part-')); "
    "got = hashlib.sha256(data).hexdigest(); "
    "got == want or sys.exit(f'the app from the ConfigMaps has SHA-256 {got}, not {want}: start the run again'); "
    "os.makedirs(sys.argv[3], exist_ok=True); tmp = os.path.join(sys.argv[3], '.' + want); "
    "open(tmp, 'wb').write(data); os.replace(tmp, os.path.join(sys.argv[3], want + '.fab'))"
)


@dataclass(frozen=True)
class KubernetesConfig:
    """What an installation chooses (settings.FEDOTA_KUBERNETES_*); the object builders read only this."""

    prefix: str = "fedota"
    coordinator_image: str = "fedota/coordinator:latest"
    selector_image: str = "fedota/selector:latest"
    image_pull_policy: str = "IfNotPresent"
    image_pull_secret: str = ""
    # What clients dial (join bundles): a node's or the load balancer's public name.
    selector_host: str = "127.0.0.1"
    # NodePort | LoadBalancer.
    selector_service_type: str = "NodePort"
    # The API server's --service-node-port-range; checked before anything is created.
    node_port_range: tuple[int, int] = (30000, 32767)
    # Annotations on every selector Service of type LoadBalancer (e.g. to share one IP).
    load_balancer_annotations: dict[str, str] = field(default_factory=dict)
    # Where the website's pods run, and how they are labelled: the coordinator may reach them.
    platform_namespace: str = "fedota"
    web_pod_labels: dict[str, str] = field(
        default_factory=lambda: {"app.kubernetes.io/name": "fedota", "app.kubernetes.io/component": "web"}
    )
    web_port: int = 8000
    # Where the cluster's DNS runs (kube-dns / CoreDNS); every pod needs it to resolve names.
    dns_namespace: str = "kube-system"
    dns_pod_labels: dict[str, str] = field(default_factory=lambda: {"k8s-app": "kube-dns"})
    storage_class: str = ""
    state_size: str = "10Gi"
    coordinator_memory: str = "8Gi"
    selector_memory: str = "4Gi"
    cpus: str = "2"
    # Coordinators and selectors serve Prometheus metrics on METRICS_PORT (FEDOTA_PROBLEM_METRICS),
    # which only the platform's Prometheus pods may reach (namespace "": platform_namespace).
    metrics: bool = False
    prometheus_namespace: str = ""
    prometheus_pod_labels: dict[str, str] = field(default_factory=lambda: {"app.kubernetes.io/name": "prometheus"})

    def __post_init__(self) -> None:
        if self.selector_service_type not in ("NodePort", "LoadBalancer"):
            raise SpawnError(
                f"FEDOTA_KUBERNETES_SELECTOR_SERVICE={self.selector_service_type!r}: use NodePort or LoadBalancer"
            )


# ---- names and labels ---------------------------------------------------------------------------


def namespace_name(config: KubernetesConfig, problem_id: int) -> str:
    return f"{config.prefix}-p{problem_id}"


def workload_name(role: str, index: int = 0) -> str:
    return "coordinator" if role == "coordinator" else f"selector-{index}"


def labels(config: KubernetesConfig, problem_id: int, **extra: str) -> dict[str, str]:
    return {f"{LABEL}.install": config.prefix, f"{LABEL}.problem": str(problem_id), **extra}


def role_labels(config: KubernetesConfig, problem_id: int, role: str, index: int = 0) -> dict[str, str]:
    """The labels that pick one service's pods (its Service and Deployment select on them)."""
    return labels(config, problem_id, **{f"{LABEL}.role": role, f"{LABEL}.index": str(index)})


def coordinator_hosts(config: KubernetesConfig, problem_id: int) -> list[str]:
    """The names the coordinator Service answers to inside the cluster (its certificate's names)."""
    ns = namespace_name(config, problem_id)
    return ["coordinator", f"coordinator.{ns}", f"coordinator.{ns}.svc", f"coordinator.{ns}.svc.cluster.local"]


def _meta(config: KubernetesConfig, problem_id: int, name: str, **extra: str) -> k8s.V1ObjectMeta:
    return k8s.V1ObjectMeta(
        name=name, namespace=namespace_name(config, problem_id), labels=labels(config, problem_id, **extra)
    )


# ---- the objects, as pure functions of the config and the run spec ------------------------------


def build_namespace(config: KubernetesConfig, problem_id: int) -> k8s.V1Namespace:
    enforced = {f"pod-security.kubernetes.io/{mode}": "restricted" for mode in ("enforce", "audit", "warn")}
    return k8s.V1Namespace(
        api_version="v1",
        kind="Namespace",
        metadata=k8s.V1ObjectMeta(
            name=namespace_name(config, problem_id),
            labels={**labels(config, problem_id, **{f"{LABEL}.role": "namespace"}), **enforced},
        ),
    )


def build_secrets(config: KubernetesConfig, spec: RunSpec) -> list[k8s.V1Secret]:
    """One Secret per role: the selectors never hold the coordinator's key or report token, nor it theirs."""
    coordinator = {"selector-token": spec.selector_token, "report-token": spec.service_token}
    selector = {"selector-token": spec.selector_token}
    if spec.tls:
        coordinator |= {"tls.crt": spec.coordinator_tls_cert_pem, "tls.key": spec.coordinator_tls_key_pem}
        selector |= {"tls.crt": spec.tls_cert_pem, "tls.key": spec.tls_key_pem, "ca.crt": spec.ca_cert_pem}
    return [
        k8s.V1Secret(
            api_version="v1",
            kind="Secret",
            type="Opaque",
            metadata=_meta(config, spec.problem_id, role, **{f"{LABEL}.role": role}),
            string_data=data,
        )
        for role, data in (("coordinator", coordinator), ("selector", selector))
    ]


def build_pull_secret(config: KubernetesConfig, problem_id: int, source: k8s.V1Secret) -> k8s.V1Secret:
    """A problem namespace's copy of the platform's image pull Secret (pods name Secrets of their own namespace only)."""
    return k8s.V1Secret(
        api_version="v1",
        kind="Secret",
        type=source.type,
        metadata=_meta(config, problem_id, config.image_pull_secret, **{f"{LABEL}.role": "pull-secret"}),
        data=dict(source.data or {}),
    )


def fab_chunks(fab: bytes) -> list[bytes]:
    return [fab[i : i + FAB_CHUNK] for i in range(0, len(fab), FAB_CHUNK)] or [b""]


def build_fab_configmaps(config: KubernetesConfig, problem_id: int, fab: bytes) -> list[k8s.V1ConfigMap]:
    return [
        k8s.V1ConfigMap(
            api_version="v1",
            kind="ConfigMap",
            metadata=_meta(config, problem_id, f"fab-{i:03d}", **{f"{LABEL}.role": "fab"}),
            binary_data={"part": base64.b64encode(chunk).decode("ascii")},
            immutable=True,
        )
        for i, chunk in enumerate(fab_chunks(fab))
    ]


def build_state_claim(config: KubernetesConfig, problem_id: int) -> k8s.V1PersistentVolumeClaim:
    return k8s.V1PersistentVolumeClaim(
        api_version="v1",
        kind="PersistentVolumeClaim",
        metadata=_meta(config, problem_id, "coordinator-state", **{f"{LABEL}.role": "state"}),
        spec=k8s.V1PersistentVolumeClaimSpec(
            access_modes=["ReadWriteOnce"],
            resources=k8s.V1VolumeResourceRequirements(requests={"storage": config.state_size}),
            storage_class_name=config.storage_class or None,
        ),
    )


def _secret_env(name: str, secret: str, key: str) -> k8s.V1EnvVar:
    return k8s.V1EnvVar(
        name=name, value_from=k8s.V1EnvVarSource(secret_key_ref=k8s.V1SecretKeySelector(name=secret, key=key))
    )


def _plain_env(values: dict[str, str]) -> list[k8s.V1EnvVar]:
    return [k8s.V1EnvVar(name=name, value=value) for name, value in values.items()]


def _container_security() -> k8s.V1SecurityContext:
    return k8s.V1SecurityContext(
        run_as_non_root=True,
        run_as_user=UID,
        run_as_group=UID,
        read_only_root_filesystem=True,
        allow_privilege_escalation=False,
        privileged=False,
        capabilities=k8s.V1Capabilities(drop=["ALL"]),
        seccomp_profile=k8s.V1SeccompProfile(type="RuntimeDefault"),
    )


def _resources(config: KubernetesConfig, memory: str) -> k8s.V1ResourceRequirements:
    # Requests below the limits: a federation idles between rounds; the limits are what it may burst to.
    return k8s.V1ResourceRequirements(
        limits={"cpu": config.cpus, "memory": memory, "ephemeral-storage": "1Gi"},
        requests={"cpu": "100m", "memory": "256Mi", "ephemeral-storage": "64Mi"},
    )


def _probe(*, period: int, failures: int) -> k8s.V1Probe:
    return k8s.V1Probe(
        _exec=k8s.V1ExecAction(command=list(PROBE)),
        period_seconds=period,
        timeout_seconds=10,
        failure_threshold=failures,
    )


def _pod_spec(
    config: KubernetesConfig,
    containers: list[k8s.V1Container],
    volumes: list[k8s.V1Volume],
    *,
    restart_policy: str,
    init_containers: list[k8s.V1Container] | None = None,
) -> k8s.V1PodSpec:
    return k8s.V1PodSpec(
        containers=containers,
        init_containers=init_containers,
        volumes=volumes,
        restart_policy=restart_policy,
        # The services never talk to the Kubernetes API: no token, no service variables.
        automount_service_account_token=False,
        enable_service_links=False,
        termination_grace_period_seconds=STOP_GRACE + 5,
        security_context=k8s.V1PodSecurityContext(
            run_as_non_root=True,
            run_as_user=UID,
            run_as_group=UID,
            fs_group=UID,  # the state volume writable by the images' user
            seccomp_profile=k8s.V1SeccompProfile(type="RuntimeDefault"),
        ),
        image_pull_secrets=(
            [k8s.V1LocalObjectReference(name=config.image_pull_secret)] if config.image_pull_secret else None
        ),
    )


def _metrics_ports(config: KubernetesConfig) -> list[k8s.V1ContainerPort]:
    return [k8s.V1ContainerPort(name="metrics", container_port=METRICS_PORT, protocol="TCP")] if config.metrics else []


def _tmp_volume() -> k8s.V1Volume:
    return k8s.V1Volume(name="tmp", empty_dir=k8s.V1EmptyDirVolumeSource(size_limit=WRITABLE_TMP))


def report_url(url: str) -> str:
    """The coordinator's report URL, refused when no pod could reach it."""
    host = urlsplit(url).hostname or ""
    if not host or is_loopback(host) or host == "0.0.0.0":
        raise SpawnError(
            f"the coordinator cannot report to {url}: inside the cluster that is the pod itself. Set "
            "FEDOTA_INTERNAL_URL to the website's in-cluster address, e.g. http://fedota-web.fedota.svc:8000"
        )
    return url


def build_coordinator_job(config: KubernetesConfig, spec: RunSpec, fab_parts: int) -> k8s.V1Job:
    fab_dir = f"{STATE_MOUNT}/fab"
    env = {
        "HOME": "/tmp",
        "FEDOTA_APP": f"{fab_dir}/{spec.fab_sha256}.fab",
        "FEDOTA_STATE_DIR": f"{STATE_MOUNT}/run_{spec.run_number:03d}",
        "FEDOTA_LISTEN": f"0.0.0.0:{COORDINATOR_PORT}",
        "FEDOTA_HEALTH_LISTEN": f"127.0.0.1:{HEALTH_PORT}",
        "FEDOTA_RUN_ID": str(spec.run_id),
        "FEDOTA_RUN_CONFIG": json.dumps(spec.run_config),
        "FEDOTA_ROUND_TIMEOUT": str(spec.round_timeout),
        "FEDOTA_WAIT_FOR_NODES": str(spec.min_clients),
        **({"FEDOTA_REPLY_POLICY": spec.reply_policy} if spec.reply_policy else {}),
        "FEDOTA_REPORT_URL": report_url(spec.report_url),
        **({} if spec.tls else {"FEDOTA_INSECURE": "1"}),
        **metrics_env(config.metrics),
        **spec.extra_env,
    }
    secret_env = [
        _secret_env("FEDOTA_SELECTOR_TOKEN", "coordinator", "selector-token"),
        _secret_env("FEDOTA_REPORT_TOKEN", "coordinator", "report-token"),
    ]
    if spec.tls:
        secret_env += [
            _secret_env("FEDOTA_TLS_CERT", "coordinator", "tls.crt"),
            _secret_env("FEDOTA_TLS_KEY", "coordinator", "tls.key"),
        ]
    state = k8s.V1VolumeMount(name="state", mount_path=STATE_MOUNT)
    tmp = k8s.V1VolumeMount(name="tmp", mount_path="/tmp")
    join = k8s.V1Container(
        name="fab",
        image=config.coordinator_image,
        image_pull_policy=config.image_pull_policy,
        command=["python", "-c", JOIN_FAB, FAB_PARTS_MOUNT, spec.fab_sha256, fab_dir],
        volume_mounts=[state, tmp, k8s.V1VolumeMount(name="fab", mount_path=FAB_PARTS_MOUNT, read_only=True)],
        security_context=_container_security(),
        resources=k8s.V1ResourceRequirements(
            limits={"cpu": "1", "memory": "512Mi", "ephemeral-storage": "64Mi"},
            requests={"cpu": "100m", "memory": "128Mi", "ephemeral-storage": "16Mi"},
        ),
    )
    coordinator = k8s.V1Container(
        name="coordinator",
        image=config.coordinator_image,
        image_pull_policy=config.image_pull_policy,
        env=_plain_env(env) + secret_env,
        ports=[k8s.V1ContainerPort(name="grpc", container_port=COORDINATOR_PORT, protocol="TCP")]
        + _metrics_ports(config),
        volume_mounts=[state, tmp],
        security_context=_container_security(),
        resources=_resources(config, config.coordinator_memory),
        readiness_probe=_probe(period=10, failures=3),
    )
    parts = k8s.V1Volume(
        name="fab",
        projected=k8s.V1ProjectedVolumeSource(
            default_mode=0o444,
            sources=[
                k8s.V1VolumeProjection(
                    config_map=k8s.V1ConfigMapProjection(
                        name=f"fab-{i:03d}", items=[k8s.V1KeyToPath(key="part", path=f"part-{i:03d}")]
                    )
                )
                for i in range(fab_parts)
            ],
        ),
    )
    volumes = [
        k8s.V1Volume(
            name="state",
            persistent_volume_claim=k8s.V1PersistentVolumeClaimVolumeSource(claim_name="coordinator-state"),
        ),
        _tmp_volume(),
        parts,
    ]
    pod_labels = {**role_labels(config, spec.problem_id, "coordinator"), f"{LABEL}.run": str(spec.run_id)}
    return k8s.V1Job(
        api_version="batch/v1",
        kind="Job",
        metadata=_meta(
            config,
            spec.problem_id,
            "coordinator",
            **{f"{LABEL}.role": "coordinator", f"{LABEL}.index": "0", f"{LABEL}.run": str(spec.run_id)},
        ),
        spec=k8s.V1JobSpec(
            # One pod: a coordinator that ends is the reconciler's to judge (see the module docstring).
            backoff_limit=0,
            completions=1,
            parallelism=1,
            # ... except a pod the cluster took away (a drained or lost node): not the run's fault.
            pod_failure_policy=k8s.V1PodFailurePolicy(
                rules=[
                    k8s.V1PodFailurePolicyRule(
                        action="Ignore",
                        on_pod_conditions=[
                            k8s.V1PodFailurePolicyOnPodConditionsPattern(type="DisruptionTarget", status="True")
                        ],
                    )
                ]
            ),
            template=k8s.V1PodTemplateSpec(
                metadata=k8s.V1ObjectMeta(labels=pod_labels),
                spec=_pod_spec(config, [coordinator], volumes, restart_policy="Never", init_containers=[join]),
            ),
        ),
    )


def build_coordinator_service(config: KubernetesConfig, problem_id: int) -> k8s.V1Service:
    return k8s.V1Service(
        api_version="v1",
        kind="Service",
        metadata=_meta(config, problem_id, "coordinator", **{f"{LABEL}.role": "coordinator"}),
        spec=k8s.V1ServiceSpec(
            type="ClusterIP",
            selector=role_labels(config, problem_id, "coordinator"),
            ports=[k8s.V1ServicePort(name="grpc", port=COORDINATOR_PORT, target_port=COORDINATOR_PORT, protocol="TCP")],
        ),
    )


def build_selector_deployment(
    config: KubernetesConfig, spec: RunSpec, index: int, port: int | None
) -> k8s.V1Deployment:
    env = {
        "HOME": "/tmp",
        # The coordinator Service, by the name its certificate carries.
        "FEDOTA_COORDINATOR": f"coordinator:{COORDINATOR_PORT}",
        "FEDOTA_LISTEN": f"0.0.0.0:{SELECTOR_PORT}",
        "FEDOTA_SELECTOR_ID": f"p{spec.problem_id}-r{spec.run_number}-s{index}",
        "FEDOTA_HEALTH_LISTEN": f"127.0.0.1:{HEALTH_PORT}",
        **({} if spec.tls else {"FEDOTA_INSECURE": "1"}),
        **metrics_env(config.metrics),
        **spec.extra_env,
    }
    secret_env = [_secret_env("FEDOTA_SELECTOR_TOKEN", "selector", "selector-token")]
    if spec.tls:
        secret_env += [
            _secret_env("FEDOTA_TLS_CERT", "selector", "tls.crt"),
            _secret_env("FEDOTA_TLS_KEY", "selector", "tls.key"),
            _secret_env("FEDOTA_COORDINATOR_CA", "selector", "ca.crt"),
        ]
    selector = k8s.V1Container(
        name="selector",
        image=config.selector_image,
        image_pull_policy=config.image_pull_policy,
        env=_plain_env(env) + secret_env,
        ports=[k8s.V1ContainerPort(name="grpc", container_port=SELECTOR_PORT, protocol="TCP")] + _metrics_ports(config),
        volume_mounts=[k8s.V1VolumeMount(name="tmp", mount_path="/tmp")],
        security_context=_container_security(),
        resources=_resources(config, config.selector_memory),
        readiness_probe=_probe(period=10, failures=3),
        # A selector that stops answering is restarted by the kubelet (its clients fail over meanwhile).
        liveness_probe=_probe(period=20, failures=6),
    )
    match = role_labels(config, spec.problem_id, "selector", index)
    extra = {f"{LABEL}.role": "selector", f"{LABEL}.index": str(index), f"{LABEL}.run": str(spec.run_id)}
    meta = _meta(config, spec.problem_id, workload_name("selector", index), **extra)
    # Where clients dial it, for status() (the Service may not be read back).
    meta.annotations = {f"{LABEL}.port": str(port or "")}
    return k8s.V1Deployment(
        api_version="apps/v1",
        kind="Deployment",
        metadata=meta,
        spec=k8s.V1DeploymentSpec(
            replicas=1,
            selector=k8s.V1LabelSelector(match_labels=match),
            # Never two pods of one selector (one id, one port): the old one goes first.
            strategy=k8s.V1DeploymentStrategy(type="Recreate"),
            template=k8s.V1PodTemplateSpec(
                metadata=k8s.V1ObjectMeta(labels={**match, f"{LABEL}.run": str(spec.run_id)}),
                spec=_pod_spec(config, [selector], [_tmp_volume()], restart_policy="Always"),
            ),
        ),
    )


def build_selector_service(config: KubernetesConfig, problem_id: int, index: int, port: int | None) -> k8s.V1Service:
    node_port = config.selector_service_type == "NodePort"
    meta = _meta(
        config,
        problem_id,
        workload_name("selector", index),
        **{f"{LABEL}.role": "selector", f"{LABEL}.index": str(index)},
    )
    if not node_port and config.load_balancer_annotations:
        meta.annotations = dict(config.load_balancer_annotations)
    return k8s.V1Service(
        api_version="v1",
        kind="Service",
        metadata=meta,
        spec=k8s.V1ServiceSpec(
            type=config.selector_service_type,
            selector=role_labels(config, problem_id, "selector", index),
            # NodePort: Cluster, so that the one address in the join bundles (any node's)
            # reaches the selector wherever its pod runs. LoadBalancer: Local, the balancer
            # sends clients only to the node that runs it, which keeps the client's address
            # and saves a hop. Either way a client's stream stays on its selector: each
            # Service has exactly one pod behind it.
            external_traffic_policy="Cluster" if node_port else "Local",
            ports=[
                k8s.V1ServicePort(
                    name="grpc",
                    port=port or SELECTOR_PORT,
                    target_port=SELECTOR_PORT,
                    node_port=port if node_port else None,
                    protocol="TCP",
                )
            ],
        ),
    )


def build_network_policies(config: KubernetesConfig, problem_id: int) -> list[k8s.V1NetworkPolicy]:
    """Deny everything, then allow clients → selectors, selectors → coordinator, coordinator → website, DNS,
    and, with metrics on, the platform's Prometheus → every pod's metrics port."""

    def policy(name: str, pods: dict[str, str], **rules: Any) -> k8s.V1NetworkPolicy:
        types = [t for t, key in (("Ingress", "ingress"), ("Egress", "egress")) if key in rules]
        return k8s.V1NetworkPolicy(
            api_version="networking.k8s.io/v1",
            kind="NetworkPolicy",
            metadata=_meta(config, problem_id, name, **{f"{LABEL}.role": "network-policy"}),
            spec=k8s.V1NetworkPolicySpec(
                pod_selector=k8s.V1LabelSelector(match_labels=pods or None), policy_types=types, **rules
            ),
        )

    def tcp(port: int) -> list[k8s.V1NetworkPolicyPort]:
        return [k8s.V1NetworkPolicyPort(port=port, protocol="TCP")]

    coordinator = {f"{LABEL}.role": "coordinator"}
    selector = {f"{LABEL}.role": "selector"}
    dns = k8s.V1NetworkPolicyEgressRule(
        to=[
            k8s.V1NetworkPolicyPeer(
                namespace_selector=k8s.V1LabelSelector(
                    match_labels={"kubernetes.io/metadata.name": config.dns_namespace}
                ),
                pod_selector=k8s.V1LabelSelector(match_labels=config.dns_pod_labels),
            )
        ],
        ports=[k8s.V1NetworkPolicyPort(port=53, protocol="UDP"), k8s.V1NetworkPolicyPort(port=53, protocol="TCP")],
    )
    return [
        policy("default-deny", {}, ingress=[], egress=[]),
        # Data holders connect from anywhere, to the selectors' port only.
        policy(
            "clients-to-selectors",
            selector,
            ingress=[k8s.V1NetworkPolicyIngressRule(ports=tcp(SELECTOR_PORT))],
        ),
        policy(
            "selectors-to-coordinator",
            selector,
            egress=[
                k8s.V1NetworkPolicyEgressRule(
                    to=[k8s.V1NetworkPolicyPeer(pod_selector=k8s.V1LabelSelector(match_labels=coordinator))],
                    ports=tcp(COORDINATOR_PORT),
                ),
                dns,
            ],
        ),
        policy(
            "coordinator-from-selectors",
            coordinator,
            ingress=[
                k8s.V1NetworkPolicyIngressRule(
                    _from=[k8s.V1NetworkPolicyPeer(pod_selector=k8s.V1LabelSelector(match_labels=selector))],
                    ports=tcp(COORDINATOR_PORT),
                )
            ],
        ),
        policy(
            "coordinator-to-website",
            coordinator,
            egress=[
                k8s.V1NetworkPolicyEgressRule(
                    to=[
                        k8s.V1NetworkPolicyPeer(
                            namespace_selector=k8s.V1LabelSelector(
                                match_labels={"kubernetes.io/metadata.name": config.platform_namespace}
                            ),
                            pod_selector=k8s.V1LabelSelector(match_labels=config.web_pod_labels),
                        )
                    ],
                    ports=tcp(config.web_port),
                ),
                dns,
            ],
        ),
    ] + ([_metrics_policy(config, policy, tcp)] if config.metrics else [])


def _metrics_policy(config: KubernetesConfig, policy: Any, tcp: Any) -> k8s.V1NetworkPolicy:
    # Every pod of the namespace is the problem's coordinator or one of its selectors.
    prometheus = k8s.V1NetworkPolicyPeer(
        namespace_selector=k8s.V1LabelSelector(
            match_labels={"kubernetes.io/metadata.name": config.prometheus_namespace or config.platform_namespace}
        ),
        pod_selector=k8s.V1LabelSelector(match_labels=config.prometheus_pod_labels),
    )
    return policy(  # type: ignore[no-any-return]
        "metrics-from-prometheus",
        {},
        ingress=[k8s.V1NetworkPolicyIngressRule(_from=[prometheus], ports=tcp(METRICS_PORT))],
    )


def build_run_objects(config: KubernetesConfig, spec: RunSpec, fab: bytes, ports: Sequence[int | None]) -> list[Any]:
    """Every object `start` creates for `spec`, in creation order (the namespace first)."""
    maps = build_fab_configmaps(config, spec.problem_id, fab)
    return [
        build_namespace(config, spec.problem_id),
        *build_network_policies(config, spec.problem_id),
        *build_secrets(config, spec),
        *maps,
        build_state_claim(config, spec.problem_id),
        build_coordinator_service(config, spec.problem_id),
        *(build_selector_service(config, spec.problem_id, i, port) for i, port in enumerate(ports)),
        build_coordinator_job(config, spec, len(maps)),
        *(build_selector_deployment(config, spec, i, port) for i, port in enumerate(ports)),
    ]


# ---- reading state back --------------------------------------------------------------------------


def _newest_pod(pods: list[k8s.V1Pod]) -> k8s.V1Pod | None:
    """The pod that counts now: not on its way out, the most recently created."""
    alive = [p for p in pods if p.metadata is not None and p.metadata.deletion_timestamp is None]
    if not alive:
        return None
    epoch = datetime.min.replace(tzinfo=UTC)
    return max(alive, key=lambda p: (p.metadata.creation_timestamp if p.metadata else None) or epoch)


def _main_status(pod: k8s.V1Pod, container: str) -> k8s.V1ContainerStatus | None:
    statuses = (pod.status.container_statuses if pod.status else None) or []
    return next((s for s in statuses if s.name == container), None)


def _hopeless_wait(pod: k8s.V1Pod) -> str:
    """Why a container of `pod` will never start without someone fixing something, or ""."""
    statuses = [
        *((pod.status.init_container_statuses if pod.status else None) or []),
        *((pod.status.container_statuses if pod.status else None) or []),
    ]
    for status in statuses:
        waiting = status.state.waiting if status.state else None
        if waiting is not None and waiting.reason in HOPELESS:
            said = f"{status.name}: {waiting.reason}: {waiting.message or ''}".strip()
            if waiting.reason == "CreateContainerConfigError":
                return f"{said} (a Secret or ConfigMap of the problem is missing: start the run again)"
            return (
                f"{said}. Check that the image exists in a registry every node can pull from "
                "(FEDOTA_COORDINATOR_IMAGE, FEDOTA_SELECTOR_IMAGE, FEDOTA_KUBERNETES_IMAGE_PULL_SECRET)"
            )
        terminated = status.state.terminated if status.state else None
        if terminated is not None and status.name == "fab" and terminated.exit_code != 0:
            said = (terminated.message or terminated.reason or "").strip()
            return f"copying the app into its state volume failed (exit code {terminated.exit_code}): {said}"
    return ""


def _disrupted(pod: k8s.V1Pod) -> str:
    """Why the cluster itself took `pod` away (drain, preemption, a lost node), or ""."""
    for condition in (pod.status.conditions if pod.status else None) or []:
        if condition.type == "DisruptionTarget" and condition.status == "True":
            return condition.reason or condition.message or "disrupted"
    return ""


def _waiting(pod: k8s.V1Pod, container: str) -> str:
    """What the kubelet says it is doing before `container` runs (pulling, initialising), or ""."""
    statuses = [
        *((pod.status.init_container_statuses if pod.status else None) or []),
        *((pod.status.container_statuses if pod.status else None) or []),
    ]
    for status in statuses:
        waiting = status.state.waiting if status.state else None
        if waiting is not None and waiting.reason:
            return f"{status.name}: {waiting.reason}" + (f": {waiting.message}" if waiting.message else "")
    return ""


def _unschedulable(pod: k8s.V1Pod) -> str:
    for condition in (pod.status.conditions if pod.status else None) or []:
        if condition.type == "PodScheduled" and condition.status == "False":
            return condition.message or condition.reason or "not scheduled yet"
    return ""


def service_state(
    config: KubernetesConfig,
    problem_id: int,
    role: str,
    index: int,
    pod: k8s.V1Pod | None,
    *,
    port: str = "",
    job_failed: str = "",
    now: datetime | None = None,
) -> ServiceState:
    """One service as the website shows it, from its newest pod (None: no pod exists now).

    `job_failed`: the coordinator Job's failure message when it has failed (its pod may be gone).
    """
    ns = namespace_name(config, problem_id)
    address = (
        f"{config.selector_host}:{port}"
        if role == "selector" and port
        else (f"coordinator.{ns}.svc:{COORDINATOR_PORT}" if role == "coordinator" else "")
    )
    container = "coordinator" if role == "coordinator" else "selector"
    if pod is None or pod.metadata is None:
        if job_failed:
            return ServiceState(role, index, workload_name(role, index), address, "exited", job_failed)
        return ServiceState(role, index, workload_name(role, index), address, "starting", "no pod is running it yet")
    handle = pod.metadata.name or workload_name(role, index)
    status = _main_status(pod, container)
    restarts = status.restart_count if status else 0
    state = status.state if status else None
    phase = pod.status.phase if pod.status else None
    if role == "coordinator" and not job_failed and _disrupted(pod):
        # The Job's podFailurePolicy ignores this failure and makes a new pod by itself.
        detail = f"the cluster moved it ({_disrupted(pod)}); its Job starts it again"
        return ServiceState(role, index, handle, address, "starting", detail, None, restarts)
    if state is not None and state.terminated is not None:
        code = state.terminated.exit_code
        how = (
            "was killed (out of memory)"
            if state.terminated.reason == "OOMKilled"
            else ("was killed" if code in (137, 143) else f"exited with code {code}")
        )
        message = (state.terminated.message or "").strip()
        detail = f"the container {how}" + (f":\n{message}" if message and code else "")
        return ServiceState(role, index, handle, address, "exited", detail, code, restarts)
    if phase == "Failed":  # evicted, or the node went away, before the container said anything
        reason = (pod.status.reason or "") if pod.status else ""
        message = (pod.status.message or "") if pod.status else ""
        detail = _hopeless_wait(pod) or f"the pod failed: {reason} {message}".strip()
        return ServiceState(role, index, handle, address, "exited", detail, None, restarts)
    if state is not None and state.running is not None:
        pod_ip = (pod.status.pod_ip or "") if pod.status else ""
        # Dialled at the pod's own address: a Service would pick any pod, and the metrics policy admits Prometheus.
        metrics = f"{pod_ip}:{METRICS_PORT}" if config.metrics and pod_ip else ""
        if status is not None and status.ready:
            return ServiceState(role, index, handle, address, "healthy", "", None, restarts, metrics)
        started = state.running.started_at
        now = now or datetime.now(UTC)
        if started is not None and (now - started).total_seconds() > 120:
            detail = "the gRPC health check did not answer SERVING"
            return ServiceState(role, index, handle, address, "unhealthy", detail, None, restarts, metrics)
        return ServiceState(role, index, handle, address, "starting", "", None, restarts, metrics)
    detail = _hopeless_wait(pod) or _unschedulable(pod) or _waiting(pod, container)
    if state is not None and state.waiting is not None and status is not None and status.last_state is not None:
        last = status.last_state.terminated
        if last is not None:
            detail = f"the cluster is restarting it after exit code {last.exit_code}"
    return ServiceState(role, index, handle, address, "starting", detail, None, restarts)


# ---- the API -------------------------------------------------------------------------------------


@dataclass
class Apis:
    """The client's API groups the backend calls (a fake in unit tests)."""

    core: Any
    apps: Any
    batch: Any
    networking: Any

    @classmethod
    def connect(cls, kubeconfig: str = "") -> Apis:
        """In-cluster service account credentials, or the kubeconfig file given."""
        from kubernetes import config as kube_config

        try:
            if kubeconfig:
                api = kube_config.new_client_from_config(config_file=kubeconfig)
            else:
                kube_config.load_incluster_config()
                api = k8s.ApiClient()
        except (kube_config.ConfigException, OSError) as exc:
            where = f"the kubeconfig {kubeconfig}" if kubeconfig else "the pod's service account (in-cluster)"
            raise SpawnError(
                f"cannot load Kubernetes credentials from {where}: {exc}. Run the worker in the cluster with the "
                "fedota-worker service account, or set FEDOTA_KUBERNETES_KUBECONFIG to a kubeconfig file"
            ) from exc
        return cls(k8s.CoreV1Api(api), k8s.AppsV1Api(api), k8s.BatchV1Api(api), k8s.NetworkingV1Api(api))


def _api_message(exc: ApiException) -> str:
    try:
        body = json.loads(exc.body or "")
        return str(body.get("message") or exc.reason)
    except (TypeError, ValueError, AttributeError):
        return str(exc.reason or exc)


@contextmanager
def _api(what: str) -> Iterator[None]:
    """Turn the API server's (and its transport's) errors into SpawnError naming what failed and what to fix."""
    try:
        yield
    except ApiException as exc:
        message = _api_message(exc)
        if exc.status == 403:
            hint = (
                " (the worker's service account lacks this permission: apply deploy/kubernetes/base/rbac.yaml,"
                " or bind the fedota-worker ClusterRole to the account the worker runs as)"
            )
        elif exc.status == 401:
            hint = " (the worker's credentials were refused: check FEDOTA_KUBERNETES_KUBECONFIG or its service account)"
        else:
            hint = ""
        raise SpawnError(f"{what}: the Kubernetes API said ({exc.status}): {message}{hint}") from exc
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        raise SpawnError(f"{what}: cannot reach the Kubernetes API server ({exc})") from exc


def _absent(exc: ApiException) -> bool:
    return exc.status == 404


class KubernetesSpawner:
    name = "kubernetes"

    def __init__(
        self,
        config: KubernetesConfig | None = None,
        *,
        apis: Apis | None = None,
        kubeconfig: str = "",
        start_timeout: float = START_TIMEOUT,
        delete_timeout: float = DELETE_TIMEOUT,
        poll: float = 1.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.config = config or KubernetesConfig()
        self._apis = apis
        self.kubeconfig = kubeconfig
        self.start_timeout = start_timeout
        self.delete_timeout = delete_timeout
        self.poll = poll
        self._sleep = sleep

    @classmethod
    def from_settings(cls) -> KubernetesSpawner:
        from django.conf import settings

        from webserver.spawner.addresses import selector_host

        return cls(
            KubernetesConfig(
                prefix=settings.FEDOTA_KUBERNETES_PREFIX,
                coordinator_image=settings.FEDOTA_COORDINATOR_IMAGE,
                selector_image=settings.FEDOTA_SELECTOR_IMAGE,
                image_pull_policy=settings.FEDOTA_KUBERNETES_IMAGE_PULL_POLICY,
                image_pull_secret=settings.FEDOTA_KUBERNETES_IMAGE_PULL_SECRET,
                selector_host=selector_host(),
                selector_service_type=settings.FEDOTA_KUBERNETES_SELECTOR_SERVICE,
                node_port_range=settings.FEDOTA_KUBERNETES_NODE_PORT_RANGE,
                load_balancer_annotations=settings.FEDOTA_KUBERNETES_LOAD_BALANCER_ANNOTATIONS,
                platform_namespace=settings.FEDOTA_KUBERNETES_PLATFORM_NAMESPACE,
                web_pod_labels=settings.FEDOTA_KUBERNETES_WEB_POD_LABELS,
                web_port=settings.FEDOTA_KUBERNETES_WEB_PORT,
                dns_namespace=settings.FEDOTA_KUBERNETES_DNS_NAMESPACE,
                dns_pod_labels=settings.FEDOTA_KUBERNETES_DNS_POD_LABELS,
                storage_class=settings.FEDOTA_KUBERNETES_STORAGE_CLASS,
                state_size=settings.FEDOTA_KUBERNETES_STATE_SIZE,
                coordinator_memory=settings.FEDOTA_KUBERNETES_COORDINATOR_MEMORY,
                selector_memory=settings.FEDOTA_KUBERNETES_SELECTOR_MEMORY,
                cpus=settings.FEDOTA_KUBERNETES_CPUS,
                metrics=settings.FEDOTA_PROBLEM_METRICS,
                prometheus_namespace=settings.FEDOTA_KUBERNETES_PROMETHEUS_NAMESPACE,
                prometheus_pod_labels=settings.FEDOTA_KUBERNETES_PROMETHEUS_POD_LABELS,
            ),
            kubeconfig=settings.FEDOTA_KUBERNETES_KUBECONFIG,
        )

    @property
    def apis(self) -> Apis:
        if self._apis is None:
            self._apis = Apis.connect(self.kubeconfig)
        return self._apis

    def _ns(self, problem_id: int) -> str:
        return namespace_name(self.config, problem_id)

    def _selector(self, problem_id: int | None = None, **extra: str) -> str:
        wanted = {f"{LABEL}.install": self.config.prefix, **extra}
        if problem_id is not None:
            wanted[f"{LABEL}.problem"] = str(problem_id)
        return ",".join(f"{key}={value}" for key, value in wanted.items())

    # ---- Spawner interface -------------------------------------------------------------------------

    def coordinator_hosts(self, problem_id: int) -> list[str]:
        return coordinator_hosts(self.config, problem_id)

    def start(self, spec: RunSpec) -> list[ServiceState]:
        if spec.num_selectors < 1:
            raise SpawnError("a run needs at least one selector")
        ports: tuple[int | None, ...] = spec.selector_ports or (None,) * spec.num_selectors
        if len(ports) != spec.num_selectors:
            raise SpawnError(f"{spec.num_selectors} selectors need {spec.num_selectors} ports, got {len(ports)}")
        self._check_ports(ports)
        report_url(spec.report_url)
        try:
            fab = spec.fab_path.read_bytes()
        except OSError as exc:
            raise SpawnError(f"cannot read the problem's app {spec.fab_path}: {exc}") from exc
        if hashlib.sha256(fab).hexdigest() != spec.fab_sha256:
            raise SpawnError(f"the app {spec.fab_path} does not match the run's SHA-256; start a new run")
        objects = build_run_objects(self.config, spec, fab, ports)
        if self.config.image_pull_secret:
            objects.insert(1, build_pull_secret(self.config, spec.problem_id, self._read_pull_secret()))
        ns = self._ns(spec.problem_id)
        self._ensure_namespace(objects[0])
        # A relaunch replaces the workloads (and the app, secrets); the volume and Services stay.
        self._remove_workloads(spec.problem_id)
        with _api(f"removing the old app of problem {spec.problem_id}"):
            self.apis.core.delete_collection_namespaced_config_map(
                ns, label_selector=self._selector(spec.problem_id, **{f"{LABEL}.role": "fab"})
            )
        try:
            for obj in objects[1:]:
                self._apply(obj)
            self._remove_stale_services(spec.problem_id, len(ports))
            self._wait_ready(spec.problem_id, len(ports))
        except BaseException:
            self._remove_workloads(spec.problem_id, wait=False)
            raise
        return self.status(spec.problem_id)

    def status(self, problem_id: int) -> list[ServiceState]:
        ns = self._ns(problem_id)
        with _api(f"listing the workloads of problem {problem_id}"):
            try:
                jobs = self.apis.batch.list_namespaced_job(ns, label_selector=self._selector(problem_id)).items
                deployments = self.apis.apps.list_namespaced_deployment(
                    ns, label_selector=self._selector(problem_id)
                ).items
                pods = self.apis.core.list_namespaced_pod(ns, label_selector=self._selector(problem_id)).items
            except ApiException as exc:
                if _absent(exc):
                    return []
                raise
        out: list[ServiceState] = []
        for job in jobs:
            if job.metadata is None or job.metadata.deletion_timestamp is not None:
                continue
            uid = job.metadata.uid
            mine = [p for p in pods if _pod_role(p) == ("coordinator", 0) and _owned_by(p, uid)]
            out.append(
                service_state(
                    self.config, problem_id, "coordinator", 0, _newest_pod(mine), job_failed=_job_failure(job)
                )
            )
        for deployment in deployments:
            if deployment.metadata is None or deployment.metadata.deletion_timestamp is not None:
                continue
            dlabels = deployment.metadata.labels or {}
            try:
                index = int(dlabels.get(f"{LABEL}.index", ""))
            except ValueError:
                continue
            port = (deployment.metadata.annotations or {}).get(f"{LABEL}.port", "")
            mine = [p for p in pods if _pod_role(p) == ("selector", index)]
            out.append(service_state(self.config, problem_id, "selector", index, _newest_pod(mine), port=port))
        out.sort(key=lambda s: (s.role != "coordinator", s.index))
        return out

    def restart(self, problem_id: int, role: str, index: int) -> ServiceState:
        """Run one dead service again as it was: the same Job (a new pod on the same volume) or Deployment."""
        ns = self._ns(problem_id)
        what = f"selector {index}" if role == "selector" else "coordinator"
        name = workload_name(role, index)
        if role == "coordinator":
            with _api(f"restarting the coordinator of problem {problem_id}"):
                try:
                    job = self.apis.batch.read_namespaced_job(name, ns)
                except ApiException as exc:
                    if _absent(exc):
                        raise SpawnError(
                            f"the coordinator's Job {ns}/{name} is gone; it cannot be restarted as it was"
                        ) from None
                    raise
                self._check_ours(job.metadata, problem_id, what)
                current = self._current(problem_id, role, index)
                if current.health == "exited" or _job_failure(job):
                    log.info("creating the coordinator Job of %s again: %s", ns, current.detail or "it failed")
                    self.apis.batch.delete_namespaced_job(
                        name, ns, body=k8s.V1DeleteOptions(propagation_policy="Background")
                    )
                    self._wait_gone(lambda: self.apis.batch.read_namespaced_job(name, ns), f"the Job {ns}/{name}")
                    self.apis.batch.create_namespaced_job(ns, _job_again(job))
        else:
            with _api(f"restarting {what} of problem {problem_id}"):
                try:
                    deployment = self.apis.apps.read_namespaced_deployment(name, ns)
                except ApiException as exc:
                    if _absent(exc):
                        raise SpawnError(
                            f"the {what}'s Deployment {ns}/{name} is gone; it cannot be restarted as it was"
                        ) from None
                    raise
                self._check_ours(deployment.metadata, problem_id, what)
                # The kubelet restarts a crashed selector itself; a pod that failed for good
                # (evicted, its node lost) is deleted so that the Deployment makes a new one.
                current = self._current(problem_id, role, index)
                if current.health == "exited":
                    log.info("deleting the failed pod %s/%s for a new one: %s", ns, current.handle, current.detail)
                    try:
                        self.apis.core.delete_namespaced_pod(current.handle, ns)
                    except ApiException as exc:
                        if not _absent(exc):
                            raise
        return self._current(problem_id, role, index)

    def stop(self, problem_id: int, *, remove_data: bool = False) -> None:
        """Delete the problem's namespace and with it everything in it, the state volume included.

        The coordinator goes first: on SIGTERM it tells its selectors the run was stopped and they
        tell their clients, which then exit instead of looking for a selector for minutes.
        """
        ns = self._ns(problem_id)
        with _api(f"stopping the coordinator of problem {problem_id}"):
            try:
                self.apis.batch.delete_namespaced_job(
                    "coordinator", ns, body=k8s.V1DeleteOptions(propagation_policy="Foreground")
                )
            except ApiException as exc:
                if not _absent(exc):
                    raise
            else:
                self._wait_pods_gone(problem_id, "coordinator", timeout=STOP_GRACE + 5)
        with _api(f"deleting the namespace {ns}"):
            try:
                namespace = self.apis.core.read_namespace(ns)
            except ApiException as exc:
                if _absent(exc):
                    return
                raise
            self._check_ours(namespace.metadata, problem_id, "namespace")
            try:
                self.apis.core.delete_namespace(ns, body=k8s.V1DeleteOptions(propagation_policy="Background"))
            except ApiException as exc:
                if not _absent(exc):
                    raise

    def problems(self) -> set[int]:
        with _api("listing this installation's namespaces"):
            namespaces = self.apis.core.list_namespace(label_selector=self._selector()).items
        found: set[int] = set()
        for namespace in namespaces:
            if namespace.status is not None and namespace.status.phase == "Terminating":
                continue  # already on its way out
            try:
                found.add(int(((namespace.metadata.labels if namespace.metadata else None) or {})[f"{LABEL}.problem"]))
            except (KeyError, ValueError):
                continue
        return found

    # ---- internals --------------------------------------------------------------------------------

    def _read_pull_secret(self) -> k8s.V1Secret:
        """The image pull Secret in the platform's namespace (the worker may read that one Secret only)."""
        name, ns = self.config.image_pull_secret, self.config.platform_namespace
        with _api(f"reading the image pull Secret {ns}/{name}"):
            try:
                secret: k8s.V1Secret = self.apis.core.read_namespaced_secret(name, ns)
            except ApiException as exc:
                if _absent(exc):
                    raise SpawnError(
                        f"the image pull Secret {name} (FEDOTA_KUBERNETES_IMAGE_PULL_SECRET) is not in the namespace "
                        f"{ns}: create it there (kubectl -n {ns} create secret docker-registry {name} ...) or unset "
                        "the setting"
                    ) from None
                raise
        return secret

    def _check_ports(self, ports: Sequence[int | None]) -> None:
        if self.config.selector_service_type != "NodePort":
            return
        low, high = self.config.node_port_range
        outside = [p for p in ports if p is not None and not low <= p <= high]
        if outside:
            raise SpawnError(
                f"selector port {outside[0]} is outside the cluster's NodePort range {low}-{high}: set "
                "FEDOTA_SELECTOR_PORT_BASE so that every problem's ports (base .. base + 7999) fall inside it, "
                "widen the API server's --service-node-port-range (and FEDOTA_KUBERNETES_NODE_PORT_RANGE), or "
                "use FEDOTA_KUBERNETES_SELECTOR_SERVICE=LoadBalancer"
            )

    def _check_ours(self, meta: k8s.V1ObjectMeta | None, problem_id: int, what: str) -> None:
        found = (meta.labels if meta else None) or {}
        if found.get(f"{LABEL}.install") != self.config.prefix or found.get(f"{LABEL}.problem") != str(problem_id):
            name = meta.name if meta else "?"
            raise SpawnError(f"{name} is not this installation's {what} of problem {problem_id}; left alone")

    def _current(self, problem_id: int, role: str, index: int) -> ServiceState:
        for state in self.status(problem_id):
            if (state.role, state.index) == (role, index):
                return state
        what = f"selector {index}" if role == "selector" else "coordinator"
        raise SpawnError(f"the {what} of problem {problem_id} is gone; it cannot be restarted as it was")

    def _ensure_namespace(self, namespace: k8s.V1Namespace) -> None:
        assert namespace.metadata is not None and namespace.metadata.name is not None
        name = namespace.metadata.name
        problem_id = int((namespace.metadata.labels or {})[f"{LABEL}.problem"])
        deadline = time.monotonic() + self.delete_timeout
        with _api(f"creating the namespace {name}"):
            while True:
                try:
                    existing = self.apis.core.read_namespace(name)
                except ApiException as exc:
                    if not _absent(exc):
                        raise
                    try:
                        self.apis.core.create_namespace(namespace)
                        return
                    except ApiException as again:
                        if again.status != 409:
                            raise
                        continue  # someone else created it meanwhile: look again
                self._check_ours(existing.metadata, problem_id, "namespace")
                if existing.status is None or existing.status.phase != "Terminating":
                    return
                # The last run's stop is still deleting it: its name is needed again.
                if time.monotonic() > deadline:
                    raise SpawnError(
                        f"the namespace {name} of the last run is still being deleted after "
                        f"{self.delete_timeout:.0f} s (look for finalizers: kubectl get namespace {name} -o yaml)"
                    )
                self._sleep(self.poll)

    def _apply(self, obj: Any) -> None:
        """Create `obj`, or bring an existing one of the same name to what `obj` says."""
        kind = obj.kind
        ns = obj.metadata.namespace
        name = obj.metadata.name
        create, patch = {
            "Secret": (self.apis.core.create_namespaced_secret, self.apis.core.patch_namespaced_secret),
            "ConfigMap": (self.apis.core.create_namespaced_config_map, None),
            "PersistentVolumeClaim": (self.apis.core.create_namespaced_persistent_volume_claim, None),
            "Service": (self.apis.core.create_namespaced_service, self.apis.core.patch_namespaced_service),
            "NetworkPolicy": (
                self.apis.networking.create_namespaced_network_policy,
                self.apis.networking.patch_namespaced_network_policy,
            ),
            "Job": (self.apis.batch.create_namespaced_job, None),
            "Deployment": (self.apis.apps.create_namespaced_deployment, None),
        }[kind]
        with _api(f"creating the {kind} {ns}/{name}"):
            try:
                create(ns, obj)
            except ApiException as exc:
                if exc.status == 422 and kind == "Service" and "port" in _api_message(exc):
                    raise SpawnError(
                        f"the {kind} {ns}/{name} cannot take its port: {_api_message(exc)}. Another Service "
                        "(another problem 1000 ids apart, or something else in the cluster) holds it: stop that, "
                        "or move this installation's selector ports with FEDOTA_SELECTOR_PORT_BASE"
                    ) from exc
                if exc.status != 409:
                    raise
                # PVC: kept as it is (the checkpoints). The rest was removed first or is patched.
                # A JSON merge patch replaces lists whole: a strategic merge (the client's default
                # for an object) would keep a Service's old port beside a new one, or a policy's
                # old rules beside the new ones.
                if patch is not None:
                    patch(name, ns, obj, _content_type="application/merge-patch+json")

    def _remove_stale_services(self, problem_id: int, selectors: int) -> None:
        """Delete the Services of selectors a previous run had and this one has not (their ports too)."""
        ns = self._ns(problem_id)
        with _api(f"removing the old selector Services of problem {problem_id}"):
            services = self.apis.core.list_namespaced_service(
                ns, label_selector=self._selector(problem_id, **{f"{LABEL}.role": "selector"})
            ).items
            for service in services:
                index = (service.metadata.labels or {}).get(f"{LABEL}.index", "")
                if index.isdigit() and int(index) < selectors:
                    continue
                log.info("deleting %s/%s: this run has %d selectors", ns, service.metadata.name, selectors)
                try:
                    self.apis.core.delete_namespaced_service(service.metadata.name, ns)
                except ApiException as exc:
                    if not _absent(exc):
                        raise

    def _remove_workloads(self, problem_id: int, *, wait: bool = True) -> None:
        """Delete the run's Job and Deployments (their pods go with them); keep volume, Services, policies."""
        ns = self._ns(problem_id)
        background = k8s.V1DeleteOptions(propagation_policy="Background")
        with _api(f"removing the workloads of problem {problem_id}"):
            try:
                self.apis.batch.delete_namespaced_job("coordinator", ns, body=background)
            except ApiException as exc:
                if not _absent(exc):
                    raise
            deployments = self.apis.apps.list_namespaced_deployment(
                ns, label_selector=self._selector(problem_id, **{f"{LABEL}.role": "selector"})
            ).items
            for deployment in deployments:
                try:
                    self.apis.apps.delete_namespaced_deployment(deployment.metadata.name, ns, body=background)
                except ApiException as exc:
                    if not _absent(exc):
                        raise
            if not wait:
                return
            self._wait_gone(lambda: self.apis.batch.read_namespaced_job("coordinator", ns), f"the Job {ns}/coordinator")
            for deployment in deployments:
                name: str = deployment.metadata.name
                self._wait_gone(
                    functools.partial(self.apis.apps.read_namespaced_deployment, name, ns),
                    f"the Deployment {ns}/{name}",
                )

    def _wait_gone(self, read: Callable[[], Any], what: str) -> None:
        deadline = time.monotonic() + self.delete_timeout
        while True:
            try:
                read()
            except ApiException as exc:
                if _absent(exc):
                    return
                raise
            if time.monotonic() > deadline:
                raise SpawnError(f"{what} is still being deleted after {self.delete_timeout:.0f} s")
            self._sleep(self.poll)

    def _wait_pods_gone(self, problem_id: int, role: str, *, timeout: float) -> None:
        ns = self._ns(problem_id)
        deadline = time.monotonic() + timeout
        selector = self._selector(problem_id, **{f"{LABEL}.role": role})
        while self.apis.core.list_namespaced_pod(ns, label_selector=selector).items:
            if time.monotonic() > deadline:
                return  # the namespace's deletion ends it anyway
            self._sleep(self.poll)

    def _wait_ready(self, problem_id: int, selectors: int) -> None:
        """Until every service answers its health check; SpawnError at once when one cannot start at all."""
        deadline = time.monotonic() + self.start_timeout
        ns = self._ns(problem_id)
        while True:
            states = self.status(problem_id)
            with _api(f"listing the pods of problem {problem_id}"):
                pods = self.apis.core.list_namespaced_pod(ns, label_selector=self._selector(problem_id)).items
            for pod in pods:
                why = _hopeless_wait(pod)
                if why and pod.metadata is not None and pod.metadata.deletion_timestamp is None:
                    role, index = _pod_role(pod)
                    what = f"selector {index}" if role == "selector" else role
                    raise SpawnError(f"the {what} cannot start: {why}")
            for state in states:
                if state.health == "exited":
                    what = f"selector {state.index}" if state.role == "selector" else state.role
                    raise SpawnError(f"the {what} ended while starting: {state.detail}")
            healthy = [s for s in states if s.health == "healthy"]
            if len(healthy) == selectors + 1:
                return
            if time.monotonic() > deadline:
                waiting = "; ".join(
                    f"{s.role} {s.index}: {s.health}" + (f" ({s.detail})" if s.detail else "")
                    for s in states
                    if s.health != "healthy"
                )
                raise SpawnError(
                    f"the services of problem {problem_id} did not answer within {self.start_timeout:.0f} s: "
                    f"{waiting or 'no pods'}"
                )
            self._sleep(self.poll)


def _pod_role(pod: k8s.V1Pod) -> tuple[str, int]:
    found = (pod.metadata.labels if pod.metadata else None) or {}
    try:
        return found.get(f"{LABEL}.role", ""), int(found.get(f"{LABEL}.index", "0"))
    except ValueError:
        return found.get(f"{LABEL}.role", ""), -1


def _owned_by(pod: k8s.V1Pod, uid: str | None) -> bool:
    refs = (pod.metadata.owner_references if pod.metadata else None) or []
    return uid is None or not refs or any(ref.uid == uid for ref in refs)


def _job_failure(job: k8s.V1Job) -> str:
    for condition in (job.status.conditions if job.status else None) or []:
        if condition.type == "Failed" and condition.status == "True":
            return f"the coordinator's Job failed: {condition.reason or ''} {condition.message or ''}".strip()
    return ""


# Labels and fields the Job controller adds to what it was given; a new Job must not carry them.
_JOB_CONTROLLER_LABELS = (
    "controller-uid",
    "job-name",
    "batch.kubernetes.io/controller-uid",
    "batch.kubernetes.io/job-name",
)


def _job_again(job: k8s.V1Job) -> k8s.V1Job:
    """A Job like `job` as it was created: its template, without what the Job controller added."""
    assert job.metadata is not None and job.spec is not None
    template = job.spec.template.model_copy(deep=True)
    if template.metadata is not None and template.metadata.labels:
        template.metadata.labels = {
            key: value for key, value in template.metadata.labels.items() if key not in _JOB_CONTROLLER_LABELS
        }
    return k8s.V1Job(
        api_version="batch/v1",
        kind="Job",
        metadata=k8s.V1ObjectMeta(
            name=job.metadata.name,
            namespace=job.metadata.namespace,
            labels=dict(job.metadata.labels or {}),
            annotations=dict(job.metadata.annotations or {}) or None,
        ),
        spec=k8s.V1JobSpec(
            backoff_limit=job.spec.backoff_limit,
            completions=job.spec.completions,
            parallelism=job.spec.parallelism,
            pod_failure_policy=job.spec.pod_failure_policy,
            template=template,
        ),
    )
