"""Django settings, read from the environment in this one module (twelve-factor).

Development needs nothing set: SQLite in `var/`, an embedded Celery broker
(kombu's SQLAlchemy transport on SQLite), e-mails printed to the console.
Production (`FEDOTA_ENV=production`) refuses to start without a secret key and
turns on secure cookies. Any variable may instead be given as `<NAME>_FILE`,
the path of a file holding the value (Docker secrets).
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent


def env(name: str, default: str | None = None) -> str | None:
    """The value of `name`, or of the file `<name>_FILE` points at."""
    file_path = os.environ.get(f"{name}_FILE")
    if file_path:
        try:
            return Path(file_path).read_text().strip()
        except OSError as exc:
            raise ImproperlyConfigured(f"{name}_FILE={file_path} cannot be read: {exc}") from exc
    return os.environ.get(name, default)


def _is_ipv6(value: str) -> bool:
    try:
        return ipaddress.ip_address(value).version == 6
    except ValueError:
        return False


def env_bool(name: str, default: bool) -> bool:
    value = env(name)
    if value is None or value == "":
        return default
    if value.lower() in ("1", "true", "yes", "on"):
        return True
    if value.lower() in ("0", "false", "no", "off"):
        return False
    raise ImproperlyConfigured(f"{name}={value!r} must be true or false")


def env_int(name: str, default: int) -> int:
    value = env(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError as exc:
        raise ImproperlyConfigured(f"{name}={value!r} must be an integer") from exc


def env_float(name: str, default: float) -> float:
    value = env(name)
    if value is None or value == "":
        return default
    try:
        return float(value)
    except ValueError as exc:
        raise ImproperlyConfigured(f"{name}={value!r} must be a number") from exc


def database_from_url(url: str) -> dict[str, object]:
    """`sqlite:///path` or `postgres://user:password@host:port/name` as a DATABASES entry."""
    parts = urlsplit(url)
    if parts.scheme == "sqlite":
        path = unquote(parts.path[1:] if parts.path.startswith("//") else parts.path.lstrip("/") or "")
        name = Path(path) if path.startswith("/") else BASE_DIR / path
        # IMMEDIATE: a transaction takes the write lock when it begins, so two writers
        # queue (up to `timeout` s) instead of one failing at once with "database is
        # locked" when it upgrades from reading to writing (coordinators report while
        # people use the site).
        return {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": name,
            "OPTIONS": {"timeout": 20, "transaction_mode": "IMMEDIATE"},
        }
    if parts.scheme in ("postgres", "postgresql", "pgsql"):
        return {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": unquote(parts.path.lstrip("/")),
            "USER": unquote(parts.username or ""),
            "PASSWORD": unquote(parts.password or ""),
            "HOST": parts.hostname or "",
            "PORT": str(parts.port or ""),
            "CONN_MAX_AGE": 60,
        }
    raise ImproperlyConfigured(f"DATABASE_URL scheme {parts.scheme!r} is not supported; use sqlite:/// or postgres://")


PRODUCTION = (env("FEDOTA_ENV") or "development") == "production"
DEBUG = env_bool("DJANGO_DEBUG", not PRODUCTION)

VAR_DIR = Path(env("FEDOTA_VAR_DIR") or BASE_DIR / "var")
VAR_DIR.mkdir(parents=True, exist_ok=True)

SECRET_KEY = env("DJANGO_SECRET_KEY") or ""
if not SECRET_KEY:
    if PRODUCTION:
        raise ImproperlyConfigured(
            "DJANGO_SECRET_KEY (or DJANGO_SECRET_KEY_FILE) must be set in production; "
            'generate one with: python -c "import secrets; print(secrets.token_urlsafe(50))"'
        )
    # Development only: a key kept beside the database, never committed.
    key_file = VAR_DIR / "dev-secret-key"
    if not key_file.exists():
        import secrets

        key_file.write_text(secrets.token_urlsafe(50))
        key_file.chmod(0o600)
    SECRET_KEY = key_file.read_text().strip()
elif PRODUCTION and (SECRET_KEY.startswith("django-insecure") or SECRET_KEY == "change-me"):
    raise ImproperlyConfigured("DJANGO_SECRET_KEY is a placeholder; set a real secret")

# Earlier keys still accepted after a rotation (comma-separated): sessions and signed
# values made with them stay valid, and problems' sealed CA keys are opened and sealed
# again with SECRET_KEY (webserver/problems/pki.py).
SECRET_KEY_FALLBACKS = [k for k in (env("DJANGO_SECRET_KEY_FALLBACKS") or "").split(",") if k]


def _own_hosts() -> str:
    """With DEBUG off and no DJANGO_ALLOWED_HOSTS (the demo of scripts/start.sh): this machine's
    names, the hosts of FEDOTA_PUBLIC_URL and FEDOTA_INTERNAL_URL, and host.docker.internal,
    the name the docker backend's coordinators report to."""
    hosts = ["localhost", "127.0.0.1", "[::1]", "host.docker.internal"]
    for name in ("FEDOTA_PUBLIC_URL", "FEDOTA_INTERNAL_URL"):
        host = urlsplit(env(name) or "").hostname
        if host:
            hosts.append(f"[{host}]" if ":" in host else host)
    return ",".join(dict.fromkeys(hosts))


ALLOWED_HOSTS = [h for h in (env("DJANGO_ALLOWED_HOSTS") or ("*" if DEBUG else _own_hosts())).split(",") if h]
CSRF_TRUSTED_ORIGINS = [o for o in (env("DJANGO_CSRF_TRUSTED_ORIGINS") or "").split(",") if o]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "drf_spectacular",
    # Swagger UI and ReDoc as the site's own static files: /api/docs/ works with no internet.
    "drf_spectacular_sidecar",
    "webserver.accounts",
    "webserver.problems",
    "webserver.participation",
    "webserver.monitoring",
    "webserver.demo",
]

MIDDLEWARE = [
    # First, so a request's time covers every other middleware (webserver/metrics.py).
    "webserver.metrics.RequestMetricsMiddleware",
    "django.middleware.security.SecurityMiddleware",
    # Static files straight from the app server (gunicorn), no separate web server needed.
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "webserver.urls"
WSGI_APPLICATION = "webserver.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "webserver" / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASES = {"default": database_from_url(env("DATABASE_URL") or f"sqlite:///{VAR_DIR / 'fedota.sqlite3'}")}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "home"

LANGUAGE_CODE = "en-gb"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "webserver" / "static"]
STATICFILES_FINDERS = [
    "django.contrib.staticfiles.finders.FileSystemFinder",
    "django.contrib.staticfiles.finders.AppDirectoriesFinder",
    # plotly.js for the dashboard's charts, from the installed `plotly` package (no CDN, no copy).
    "webserver.monitoring.finders.PlotlyFinder",
]
STATIC_ROOT = VAR_DIR / "static"
STATIC_ROOT.mkdir(exist_ok=True)  # WhiteNoise warns on every request while it is missing
# Development serves static files from the source folders; production from collectstatic's output.
WHITENOISE_USE_FINDERS = DEBUG
# collectstatic writes a gzip copy beside each file, which WhiteNoise sends to browsers that
# accept it: plotly.min.js goes from 4.8 MB to 1.4 MB on a data holder's slow link. File
# names stay as they are (no hashed manifest), so links and the Docker image are unchanged.
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}
# Files served at the site's root (/favicon.ico), from the source folder in every mode.
WHITENOISE_ROOT = BASE_DIR / "webserver" / "site-root"
MEDIA_ROOT = Path(env("FEDOTA_MEDIA_ROOT") or VAR_DIR / "media")
MEDIA_URL = "media/"

# Cache (the log-in rate limit counts live here): shared by every web worker.
# Redis when CACHE_URL is set (production), else a folder under var/.
if env("CACHE_URL"):
    CACHES: dict[str, dict[str, Any]] = {
        "default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": env("CACHE_URL")}
    }
else:
    CACHES = {
        "default": {"BACKEND": "django.core.cache.backends.filebased.FileBasedCache", "LOCATION": VAR_DIR / "cache"}
    }

# Uploads: a FAB may be large, but not unbounded; Django spools big files to disk.
FEDOTA_MAX_FAB_BYTES = env_int("FEDOTA_MAX_FAB_MB", 50) * 1024 * 1024
# Any one uploaded file: the rest of a bigger one is dropped as it streams in
# (webserver/uploads.py) and the form says how big it was. A FAB is the largest file taken.
FEDOTA_MAX_UPLOAD_BYTES = FEDOTA_MAX_FAB_BYTES
FILE_UPLOAD_HANDLERS = [
    "webserver.uploads.BoundedUploadHandler",
    "django.core.files.uploadhandler.MemoryFileUploadHandler",
    "django.core.files.uploadhandler.TemporaryFileUploadHandler",
]
# A request body besides its files (JSON, form fields): bigger is refused (API: 413).
DATA_UPLOAD_MAX_MEMORY_SIZE = 5 * 1024 * 1024
FILE_UPLOAD_MAX_MEMORY_SIZE = 5 * 1024 * 1024
# Checkpoints uploaded by coordinators (a round's model as .npz and .pt).
FEDOTA_MAX_CHECKPOINT_BYTES = env_int("FEDOTA_MAX_CHECKPOINT_MB", 2048) * 1024 * 1024

# E-mail: console in development, SMTP when EMAIL_HOST is set, a folder with EMAIL_FILE_PATH.
EMAIL_HOST = env("EMAIL_HOST") or ""
if EMAIL_HOST:
    EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    EMAIL_PORT = env_int("EMAIL_PORT", 587)
    EMAIL_HOST_USER = env("EMAIL_HOST_USER") or ""
    EMAIL_HOST_PASSWORD = env("EMAIL_HOST_PASSWORD") or ""
    EMAIL_USE_TLS = env_bool("EMAIL_USE_TLS", True)
elif env("EMAIL_FILE_PATH"):
    EMAIL_BACKEND = "django.core.mail.backends.filebased.EmailBackend"
    EMAIL_FILE_PATH = env("EMAIL_FILE_PATH")
else:
    EMAIL_BACKEND = env("EMAIL_BACKEND") or "django.core.mail.backends.console.EmailBackend"
DEFAULT_FROM_EMAIL = env("DEFAULT_FROM_EMAIL") or "Fedota <noreply@localhost>"

# The address this site is reached at, for links in e-mails and join bundles.
FEDOTA_PUBLIC_URL = (env("FEDOTA_PUBLIC_URL") or "http://127.0.0.1:8000").rstrip("/")
# The address coordinators report to (internal API); same host by default.
FEDOTA_INTERNAL_URL = (env("FEDOTA_INTERNAL_URL") or FEDOTA_PUBLIC_URL).rstrip("/")

# Spawner: process | docker | swarm | kubernetes | auto (docker when an engine answers and
# has the coordinator image, else process; auto never picks swarm or kubernetes).
FEDOTA_SPAWNER = env("FEDOTA_SPAWNER") or "auto"
FEDOTA_STATE_DIR = Path(env("FEDOTA_STATE_DIR") or VAR_DIR / "problems")
# The name or IP address data holders' clients dial the selectors at (join bundles, the
# selectors' TLS certificates). Empty or loopback: the host of FEDOTA_PUBLIC_URL if it is
# not loopback, else this machine's Docker host gateway (webserver/spawner/addresses.py).
# Several, comma-separated: every machine a selector may run on when its port opens on its
# own machine only (a swarm's nodes, docs/swarm.md); bundles list each selector at each.
FEDOTA_SELECTOR_HOST = ",".join(
    host.strip().strip("[]") for host in (env("FEDOTA_SELECTOR_HOST") or "").split(",") if host.strip()
)
for _host in filter(None, FEDOTA_SELECTOR_HOST.split(",")):
    if not (all(c.isalnum() or c in ".-" for c in _host) or _is_ipv6(_host)):
        raise ImproperlyConfigured(
            f"FEDOTA_SELECTOR_HOST={env('FEDOTA_SELECTOR_HOST')!r}: {_host!r} must be a host name or an IP address "
            "alone (no scheme, port or path), e.g. fl.example.org or 203.0.113.7; several are comma-separated"
        )
# Selector ports: problem p's selectors listen on base + (p % 1000) * 8 + index, the same for every run.
FEDOTA_SELECTOR_PORT_BASE = env_int("FEDOTA_SELECTOR_PORT_BASE", 17000)
# Niceness of coordinators and selectors started by the process backend (0-19): the
# website stays responsive while a federation keeps the CPU busy.
FEDOTA_SERVICE_NICE = env_int("FEDOTA_SERVICE_NICE", 10)
# The reconciler restarts a running run's dead services (only those) at most
# FEDOTA_RESTART_BUDGET times within any FEDOTA_RESTART_WINDOW seconds; one more fails the
# run, naming the last failure. A window, not a run's whole life: a long run may lose a
# service now and then and go on.
FEDOTA_RESTART_BUDGET = env_int("FEDOTA_RESTART_BUDGET", 5)
FEDOTA_RESTART_WINDOW = env_float("FEDOTA_RESTART_WINDOW", 600.0)
if FEDOTA_RESTART_BUDGET < 0 or FEDOTA_RESTART_WINDOW <= 0:
    raise ImproperlyConfigured(
        "FEDOTA_RESTART_BUDGET must be 0 or more and FEDOTA_RESTART_WINDOW (seconds) more than 0"
    )
FEDOTA_CLIENT_IMAGE = env("FEDOTA_CLIENT_IMAGE") or "fedota/client:latest"
# The docker backend (webserver/spawner/docker.py). Everything it creates is named
# `<prefix>-p<problem id>...` and labelled fedota.install=<prefix>, so two installations
# (or a test run) on one engine never touch each other's containers.
FEDOTA_DOCKER_PREFIX = env("FEDOTA_DOCKER_PREFIX") or "fedota"
FEDOTA_COORDINATOR_IMAGE = env("FEDOTA_COORDINATOR_IMAGE") or "fedota/coordinator:latest"
FEDOTA_SELECTOR_IMAGE = env("FEDOTA_SELECTOR_IMAGE") or "fedota/selector:latest"
# Host address selector ports are published on; empty: the selectors' address if it is an
# IP address (the Docker host gateway keeps them on this machine), else every interface.
FEDOTA_DOCKER_PUBLISH_HOST = env("FEDOTA_DOCKER_PUBLISH_HOST") or ""
# Limits of each problem container (docker's units: 512m, 8g; CPUs may be fractional).
FEDOTA_DOCKER_COORDINATOR_MEMORY = env("FEDOTA_DOCKER_COORDINATOR_MEMORY") or "8g"
FEDOTA_DOCKER_SELECTOR_MEMORY = env("FEDOTA_DOCKER_SELECTOR_MEMORY") or "4g"
FEDOTA_DOCKER_CPUS = env_float("FEDOTA_DOCKER_CPUS", 2.0)
# Their CPU weight against the engine's default of 1024 (the website's container): when both
# want the CPU, pages come first, as FEDOTA_SERVICE_NICE does for the process backend.
FEDOTA_DOCKER_CPU_SHARES = env_int("FEDOTA_DOCKER_CPU_SHARES", 256)

# The swarm backend (webserver/spawner/swarm.py, docs/swarm.md): services on a Docker Swarm,
# named and labelled as the docker backend's (FEDOTA_DOCKER_PREFIX), with its images and
# limits (FEDOTA_COORDINATOR_IMAGE, FEDOTA_SELECTOR_IMAGE, FEDOTA_DOCKER_*_MEMORY and _CPUS).
# A manager's Docker API (unix:///..., tcp://host:2376); empty: DOCKER_HOST or the local socket.
FEDOTA_SWARM_MANAGER = env("FEDOTA_SWARM_MANAGER") or ""
# Encrypt each problem's overlay network between nodes (IPsec ESP, AES-GCM). Turn it off on
# nodes whose kernel lacks ESP or GCM: their cross-node traffic on it is dropped.
FEDOTA_SWARM_ENCRYPTED = env_bool("FEDOTA_SWARM_ENCRYPTED", True)
# Placement constraints of the selectors, comma-separated (node.labels.fedota-selectors==yes):
# the nodes FEDOTA_SELECTOR_HOST reaches, as selectors publish their ports on their own node.
FEDOTA_SWARM_SELECTOR_CONSTRAINTS = [
    c.strip() for c in (env("FEDOTA_SWARM_SELECTOR_CONSTRAINTS") or "").split(",") if c.strip()
]
# Seconds a start may take until every service passed its health check. Many problems
# starting at once on a small manager need more: 20 took 130-163 s on 2 cores (bench/README.md).
FEDOTA_SWARM_START_TIMEOUT = env_float("FEDOTA_SWARM_START_TIMEOUT", 120.0)
# The platform's Prometheus, a container on the manager's engine (name or id): with
# FEDOTA_PROBLEM_METRICS on, it is connected to each problem's overlay network while the
# problem runs, the only way to reach the services' metrics (docs/metrics.md). Empty: none.
FEDOTA_SWARM_PROMETHEUS_CONTAINER = env("FEDOTA_SWARM_PROMETHEUS_CONTAINER") or ""


# The kubernetes backend (webserver/spawner/kubernetes.py, docs/kubernetes.md). Validated
# offline only; it has not run on a live cluster here. Images: FEDOTA_COORDINATOR_IMAGE and
# FEDOTA_SELECTOR_IMAGE above, which every node must be able to pull.
def _kubernetes_labels(name: str, default: str) -> dict[str, str]:
    text = env(name) or default
    pairs = [item.split("=", 1) for item in text.split(",") if item.strip()]
    if not pairs or any(len(pair) != 2 or not pair[0].strip() for pair in pairs):
        raise ImproperlyConfigured(f"{name}={text!r} must be labels as key=value,key2=value2")
    return {key.strip(): value.strip() for key, value in pairs}


def _kubernetes_port_range(name: str, default: str) -> tuple[int, int]:
    text = env(name) or default
    try:
        low, high = (int(part) for part in text.split("-"))
    except ValueError as exc:
        raise ImproperlyConfigured(f"{name}={text!r} must be a port range such as 30000-32767") from exc
    if not 1 <= low <= high <= 65535:
        raise ImproperlyConfigured(f"{name}={text!r} must be a port range such as 30000-32767")
    return low, high


def _kubernetes_annotations(name: str) -> dict[str, str]:
    import json

    text = env(name) or "{}"
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise ImproperlyConfigured(f"{name} must be a JSON object of strings: {exc}") from exc
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise ImproperlyConfigured(f'{name} must be a JSON object of strings, e.g. {{"key": "value"}}')
    return {str(k): v for k, v in value.items()}


# Every problem's namespace is `<prefix>-p<id>`, labelled fedota.install=<prefix>: two
# installations on one cluster never touch each other's namespaces.
FEDOTA_KUBERNETES_PREFIX = env("FEDOTA_KUBERNETES_PREFIX") or "fedota"
# A kubeconfig file for the worker; empty: the pod's service account (running in the cluster).
FEDOTA_KUBERNETES_KUBECONFIG = env("FEDOTA_KUBERNETES_KUBECONFIG") or ""
# How nodes get the images: IfNotPresent, Always or Never (images loaded onto every node).
FEDOTA_KUBERNETES_IMAGE_PULL_POLICY = env("FEDOTA_KUBERNETES_IMAGE_PULL_POLICY") or "IfNotPresent"
# An image pull Secret (kubernetes.io/dockerconfigjson) in the platform's namespace for a
# private registry; the spawner copies it into each problem namespace. The worker may read
# only the Secret its Role names (deploy/kubernetes/base/rbac.yaml: fedota-registry). Empty: none.
FEDOTA_KUBERNETES_IMAGE_PULL_SECRET = env("FEDOTA_KUBERNETES_IMAGE_PULL_SECRET") or ""
# How data holders reach the selectors from outside: NodePort (every node's address, at the
# problem's fixed port, which must lie in the node-port range below) or LoadBalancer.
FEDOTA_KUBERNETES_SELECTOR_SERVICE = env("FEDOTA_KUBERNETES_SELECTOR_SERVICE") or "NodePort"
# The API server's --service-node-port-range; the selectors' ports (FEDOTA_SELECTOR_PORT_BASE ..
# +7999) are checked against it before a publish creates anything.
FEDOTA_KUBERNETES_NODE_PORT_RANGE = _kubernetes_port_range("FEDOTA_KUBERNETES_NODE_PORT_RANGE", "30000-32767")
# Annotations (a JSON object) on each LoadBalancer selector Service, e.g. to put a
# problem's selectors on one shared address of the cluster's load balancer.
FEDOTA_KUBERNETES_LOAD_BALANCER_ANNOTATIONS = _kubernetes_annotations("FEDOTA_KUBERNETES_LOAD_BALANCER_ANNOTATIONS")
# Where the website's pods run and their labels: coordinators may reach only them (NetworkPolicy).
FEDOTA_KUBERNETES_PLATFORM_NAMESPACE = env("FEDOTA_KUBERNETES_PLATFORM_NAMESPACE") or "fedota"
FEDOTA_KUBERNETES_WEB_POD_LABELS = _kubernetes_labels(
    "FEDOTA_KUBERNETES_WEB_POD_LABELS", "app.kubernetes.io/name=fedota,app.kubernetes.io/component=web"
)
# The port the website's pods listen on (the coordinators' reports go there).
FEDOTA_KUBERNETES_WEB_PORT = env_int("FEDOTA_KUBERNETES_WEB_PORT", 8000)
# The cluster's DNS pods (namespace and labels): the only other place problem pods may reach
# (port 53), to resolve the coordinator's and the website's names.
FEDOTA_KUBERNETES_DNS_NAMESPACE = env("FEDOTA_KUBERNETES_DNS_NAMESPACE") or "kube-system"
FEDOTA_KUBERNETES_DNS_POD_LABELS = _kubernetes_labels("FEDOTA_KUBERNETES_DNS_POD_LABELS", "k8s-app=kube-dns")
# The coordinator's state volume: storage class (empty: the cluster's default) and size.
FEDOTA_KUBERNETES_STORAGE_CLASS = env("FEDOTA_KUBERNETES_STORAGE_CLASS") or ""
FEDOTA_KUBERNETES_STATE_SIZE = env("FEDOTA_KUBERNETES_STATE_SIZE") or "10Gi"
# Limits of each problem pod (Kubernetes quantities: 512Mi, 8Gi; CPUs such as 2 or 500m).
FEDOTA_KUBERNETES_COORDINATOR_MEMORY = env("FEDOTA_KUBERNETES_COORDINATOR_MEMORY") or "8Gi"
FEDOTA_KUBERNETES_SELECTOR_MEMORY = env("FEDOTA_KUBERNETES_SELECTOR_MEMORY") or "4Gi"
FEDOTA_KUBERNETES_CPUS = env("FEDOTA_KUBERNETES_CPUS") or "2"
# The platform's Prometheus pods (namespace, empty: the platform's; labels): with
# FEDOTA_PROBLEM_METRICS on, the only pods a problem's NetworkPolicy lets reach its metrics port.
FEDOTA_KUBERNETES_PROMETHEUS_NAMESPACE = env("FEDOTA_KUBERNETES_PROMETHEUS_NAMESPACE") or ""
FEDOTA_KUBERNETES_PROMETHEUS_POD_LABELS = _kubernetes_labels(
    "FEDOTA_KUBERNETES_PROMETHEUS_POD_LABELS", "app.kubernetes.io/name=prometheus"
)

REST_FRAMEWORK = {
    # Token first: a request without credentials is then answered 401 with `WWW-Authenticate: Token`
    # (with session authentication first, DRF says 403, which means "known, but not allowed").
    # A browser's session still authenticates when no token is sent.
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticatedOrReadOnly"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "webserver.errors.api_exception_handler",
    # Bounded ?limit= and ?offset=, and a JSON parser that refuses too deep nesting (both were 500s).
    "DEFAULT_PAGINATION_CLASS": "webserver.api_bounds.BoundedLimitOffsetPagination",
    "DEFAULT_PARSER_CLASSES": [
        "webserver.api_bounds.JSONParser",
        "rest_framework.parsers.FormParser",
        "rest_framework.parsers.MultiPartParser",
    ],
    "PAGE_SIZE": 100,
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Fedota API",
    "DESCRIPTION": "Publish and join federated-learning problems; coordinators report through /internal/. "
    "No text, in a field or anywhere in a JSON document (keys too), may hold a NUL character (U+0000): "
    "such input is refused with 400 naming the input.",
    "VERSION": "1",
    # Request bodies get their own components, so a file input is an upload (`format: binary`), not a URI.
    "COMPONENT_SPLIT_REQUEST": True,
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "webserver.api_schema.declare_generic_errors",
    ],
    # Two models have a `status` with other choices: each enum is named by its model's.
    "ENUM_NAME_OVERRIDES": {
        "RunStatusEnum": "webserver.problems.models.RunStatus",
        "ParticipantStatusEnum": "webserver.participation.models.ParticipantStatus",
    },
    "SERVE_INCLUDE_SCHEMA": False,
    # Served from STATIC_URL (drf-spectacular-sidecar), never from a CDN.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
}

# Prometheus metrics at /metrics (webserver/metrics.py, docs/metrics.md), for a scraper that
# sends `Authorization: Bearer <FEDOTA_METRICS_TOKEN>` or comes from FEDOTA_METRICS_NETWORKS
# (comma-separated CIDRs, matched against REMOTE_ADDR); with neither, /metrics is a 404.
FEDOTA_METRICS_TOKEN = env("FEDOTA_METRICS_TOKEN") or ""
FEDOTA_METRICS_NETWORKS = [n.strip() for n in (env("FEDOTA_METRICS_NETWORKS") or "").split(",") if n.strip()]
for _net in FEDOTA_METRICS_NETWORKS:
    try:
        ipaddress.ip_network(_net, strict=False)
    except ValueError as _exc:
        raise ImproperlyConfigured(f"FEDOTA_METRICS_NETWORKS: {_net!r} is not a network ({_exc})") from _exc
# Problems' coordinators and selectors serve metrics too, listed for Prometheus's HTTP service
# discovery at /metrics/targets (same access as /metrics). The process backend serves them
# on loopback ports, the Docker and Swarm backends on the problem's own network (never
# published), Kubernetes to the Prometheus pods its NetworkPolicy admits (docs/metrics.md).
FEDOTA_PROBLEM_METRICS = env_bool("FEDOTA_PROBLEM_METRICS", True)
# MLflow export (docs/mlflow.md): a problem setter's tracking URL may lead only to public
# addresses unless this is on (an MLflow server on this host or the organisation's own network:
# loopback, private, link-local addresses). Off, the worker dials nothing a setter should not reach.
FEDOTA_MLFLOW_ALLOW_LOCAL_NETWORK = env_bool("FEDOTA_MLFLOW_ALLOW_LOCAL_NETWORK", False)
# OpenTelemetry tracing (fedota_common/tracing.py, docs/tracing.md), off unless a collector is
# named: the OTLP/gRPC endpoint this site's spans go to (publish, launch, spawn), and the one
# handed to problems' coordinators and selectors (by default the same; a container may need
# another name for it). FEDOTA_TRACE_FILE appends every span as JSON lines instead (debugging,
# tests; the process backend's services share it).
FEDOTA_OTLP_ENDPOINT = (
    env("FEDOTA_OTLP_ENDPOINT") or env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env("OTEL_EXPORTER_OTLP_ENDPOINT") or ""
)
FEDOTA_PROBLEM_OTLP_ENDPOINT = env("FEDOTA_PROBLEM_OTLP_ENDPOINT") or FEDOTA_OTLP_ENDPOINT
FEDOTA_TRACE_FILE = env("FEDOTA_TRACE_FILE") or ""
# prometheus_client's multiprocess mode: a folder every gunicorn worker and Celery process of
# this host writes its numbers to, so /metrics adds them up (empty: each process its own).
PROMETHEUS_MULTIPROC_DIR = env("PROMETHEUS_MULTIPROC_DIR") or ""

# Celery: Redis when CELERY_BROKER_URL is set, otherwise an embedded broker on SQLite.
CELERY_BROKER_URL = env("CELERY_BROKER_URL") or f"sqla+sqlite:///{VAR_DIR / 'celery-broker.sqlite3'}"
CELERY_RESULT_BACKEND = None
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_ACKS_LATE = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_TASK_ALWAYS_EAGER = env_bool("CELERY_TASK_ALWAYS_EAGER", False)
CELERY_BEAT_SCHEDULE = {
    "reconcile-infrastructure": {"task": "problems.reconcile", "schedule": 15.0},
}

SESSION_COOKIE_HTTPONLY = True
CSRF_COOKIE_HTTPONLY = False
if PRODUCTION:
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_CONTENT_TYPE_NOSNIFF = True
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env("DJANGO_LOG_LEVEL") or "INFO"},
    "loggers": {"django.db.backends": {"level": "WARNING"}},
}
