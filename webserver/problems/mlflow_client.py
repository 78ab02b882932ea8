"""A small client of an MLflow tracking server's REST API, on the standard library.

The website does not import mlflow (a large dependency for a handful of calls): it speaks
the REST API that MLflow's own client speaks (`/api/2.0/mlflow/...`) and uploads files
through the server's artifact proxy (`/api/2.0/mlflow-artifacts/artifacts/...`, what
`mlflow server` serves unless started with `--no-serve-artifacts`). A token is sent as
`Authorization: Bearer <token>`, as MLflow's client does with MLFLOW_TRACKING_TOKEN.

Every failure leaves as `MlflowError`, whose message says what was asked and why it failed
and never holds the token.

The URL is a problem setter's, and the website's worker dials it: unless the installation
allows it (FEDOTA_MLFLOW_ALLOW_LOCAL_NETWORK), an address that is not on the public
internet (loopback, the platform's private networks, link-local such as a cloud's metadata
service) is refused before any connection is made, also when a redirect or a DNS answer
leads there: the check is made on the addresses actually dialled.
"""

from __future__ import annotations

import http.client
import ipaddress
import json
import re
import socket
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any, BinaryIO

# A tracking server that does not answer within this is taken as unreachable; the export retries.
TIMEOUT = 30.0
# Artifacts stream through in blocks: a 1 GB model never sits in memory.
UPLOAD_BLOCK = 1 << 20
ARTIFACTS_ROOT = "/api/2.0/mlflow-artifacts/artifacts"
# MLflow's limits on one runs/log-batch call (mlflow/utils/validation.py).
MAX_BATCH_METRICS = 1000
MAX_BATCH_PARAMS = 100
MAX_BATCH_TAGS = 100
MAX_PARAM_VALUE = 6000
MAX_KEY = 250
_BAD_KEY_CHARS = re.compile(r"[^A-Za-z0-9_\-. /]")


class LocalAddressRefused(OSError):
    """The tracking server's name leads to an address this installation does not let problem setters dial."""


def _public(address: str) -> bool:
    return ipaddress.ip_address(address.split("%", 1)[0]).is_global


def _guarded_connection(address: tuple[str, int], timeout: Any = None, source_address: Any = None) -> socket.socket:
    """`socket.create_connection`, refusing a name with any address off the public internet before dialling."""
    host, port = address
    infos = socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)
    for *_, sockaddr in infos:
        if not _public(str(sockaddr[0])):
            named = f"{host} is" if host == sockaddr[0] else f"{host} is {sockaddr[0]},"
            raise LocalAddressRefused(
                f"{named} an address off the public internet, which problem settings may not reach here "
                "(an administrator allows them with FEDOTA_MLFLOW_ALLOW_LOCAL_NETWORK=1)"
            )
    error: OSError | None = None
    for family, kind, proto, _name, sockaddr in infos:
        sock = socket.socket(family, kind, proto)
        try:
            if isinstance(timeout, int | float):  # else http.client's "no timeout given" marker
                sock.settimeout(timeout)
            if source_address:
                sock.bind(source_address)
            sock.connect(sockaddr)
            return sock
        except OSError as exc:
            sock.close()
            error = exc
    raise error or OSError(f"{host} has no address")


class _GuardedHTTP(http.client.HTTPConnection):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._create_connection = _guarded_connection


class _GuardedHTTPS(http.client.HTTPSConnection):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._create_connection = _guarded_connection


class _GuardedHTTPHandler(urllib.request.HTTPHandler):
    def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(_GuardedHTTP, req)


class _GuardedHTTPSHandler(urllib.request.HTTPSHandler):
    def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(_GuardedHTTPS, req, context=self._context)  # type: ignore[attr-defined]


# No proxy from the environment: a proxy would dial the address for us, past the check.
_PUBLIC_ONLY = urllib.request.build_opener(
    urllib.request.ProxyHandler({}), _GuardedHTTPHandler(), _GuardedHTTPSHandler()
)
_ANY = urllib.request.build_opener()


class MlflowError(Exception):
    """The tracking server could not be reached, or refused a call; `message` says which and why."""

    def __init__(self, message: str, *, status: int | None = None, error_code: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.error_code = error_code


def mlflow_key(name: str) -> str:
    """`name` as an MLflow metric, param or tag key (letters, digits, `_-. /` only; at most 250 characters)."""
    return _BAD_KEY_CHARS.sub("_", name)[:MAX_KEY] or "_"


@dataclass(frozen=True)
class MlflowClient:
    """The REST calls the export needs, against `tracking_url` (http or https, no trailing slash needed)."""

    tracking_url: str
    token: str = ""
    timeout: float = TIMEOUT
    # Whether addresses off the public internet may be dialled (FEDOTA_MLFLOW_ALLOW_LOCAL_NETWORK).
    local_network: bool = False

    # ---- plumbing ------------------------------------------------------------------------------

    def _url(self, path: str) -> str:
        return self.tracking_url.rstrip("/") + path

    def _headers(self, content_type: str | None = "application/json") -> dict[str, str]:
        headers = {"Accept": "application/json", "User-Agent": "fedota-mlflow-export"}
        if content_type:
            headers["Content-Type"] = content_type
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        return headers

    def _send(self, request: urllib.request.Request, what: str) -> bytes:
        try:
            opener = _ANY if self.local_network else _PUBLIC_ONLY
            with opener.open(request, timeout=self.timeout) as response:
                body: bytes = response.read()
                return body
        except urllib.error.HTTPError as exc:
            detail, code = _error_detail(exc)
            raise MlflowError(
                f"{what}: the MLflow server answered HTTP {exc.code}{': ' + detail if detail else ''}",
                status=exc.code,
                error_code=code,
            ) from None
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            if isinstance(reason, LocalAddressRefused):
                raise MlflowError(f"{what}: refused: {reason}") from None
            raise MlflowError(
                f"{what}: the MLflow server at {self.tracking_url} cannot be reached ({reason})"
            ) from None

    def _call(self, method: str, endpoint: str, what: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        url = self._url(f"/api/2.0/mlflow/{endpoint}")
        data = None
        if body is not None and method == "GET":
            url += "?" + urllib.parse.urlencode(body)
        elif body is not None:
            data = json.dumps(body).encode()
        raw = self._send(urllib.request.Request(url, data=data, method=method, headers=self._headers()), what)
        try:
            doc = json.loads(raw or b"{}")
        except ValueError:
            raise MlflowError(
                f"{what}: the server's answer is not JSON; is {self.tracking_url} an MLflow server?"
            ) from None
        if not isinstance(doc, dict):
            raise MlflowError(f"{what}: the server's answer is not a JSON object")
        return doc

    # ---- experiments and runs ------------------------------------------------------------------

    def experiment_id(self, name: str) -> str:
        """The id of the experiment `name`, created if there is none."""
        try:
            found = self._call(
                "GET", "experiments/get-by-name", f"finding experiment {name!r}", {"experiment_name": name}
            )
            return str(found["experiment"]["experiment_id"])
        except MlflowError as exc:
            if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
        except (KeyError, TypeError):
            raise MlflowError(f"finding experiment {name!r}: the server's answer has no experiment id") from None
        try:
            made = self._call("POST", "experiments/create", f"creating experiment {name!r}", {"name": name})
        except MlflowError as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            # Another exporter created it meanwhile.
            return self.experiment_id(name)
        return str(made.get("experiment_id", ""))

    def run_find(self, *, experiment_id: str, tag: str, value: str) -> dict[str, Any] | None:
        """The run of the experiment tagged `tag` = `value`, if there is one (its `info`)."""
        doc = self._call(
            "POST",
            "runs/search",
            "looking for the run",
            {
                "experiment_ids": [experiment_id],
                "filter": f"tags.`{tag}` = '{value}'",
                "max_results": 1,
            },
        )
        runs = doc.get("runs") or []
        return dict(runs[0].get("info") or {}) if runs else None

    def run_create(
        self, *, experiment_id: str, run_name: str, start_time_ms: int, tags: dict[str, str]
    ) -> dict[str, Any]:
        """A new run (its `info`: run_id, artifact_uri, ...)."""
        doc = self._call(
            "POST",
            "runs/create",
            "creating the run",
            {
                "experiment_id": experiment_id,
                "run_name": run_name,
                "start_time": start_time_ms,
                "tags": [{"key": k, "value": v} for k, v in tags.items()],
            },
        )
        info = (doc.get("run") or {}).get("info") or {}
        if not info.get("run_id"):
            raise MlflowError("creating the run: the server's answer has no run id")
        return dict(info)

    def run_get(self, run_id: str) -> dict[str, Any]:
        doc = self._call("GET", "runs/get", "reading the run", {"run_id": run_id})
        return dict((doc.get("run") or {}).get("info") or {})

    def log_batch(
        self,
        run_id: str,
        *,
        metrics: list[dict[str, Any]] | None = None,
        params: dict[str, str] | None = None,
        tags: dict[str, str] | None = None,
    ) -> None:
        """Log metrics ({key, value, timestamp, step}), params and tags, split into calls MLflow accepts."""
        metrics = metrics or []
        param_items = [{"key": k, "value": v[:MAX_PARAM_VALUE]} for k, v in (params or {}).items()]
        tag_items = [{"key": k, "value": v} for k, v in (tags or {}).items()]
        while metrics or param_items or tag_items:
            body: dict[str, Any] = {"run_id": run_id}
            body["metrics"], metrics = metrics[:MAX_BATCH_METRICS], metrics[MAX_BATCH_METRICS:]
            body["params"], param_items = param_items[:MAX_BATCH_PARAMS], param_items[MAX_BATCH_PARAMS:]
            body["tags"], tag_items = tag_items[:MAX_BATCH_TAGS], tag_items[MAX_BATCH_TAGS:]
            self._call("POST", "runs/log-batch", "logging to the run", body)

    def run_end(self, run_id: str, *, status: str, end_time_ms: int) -> None:
        self._call(
            "POST",
            "runs/update",
            f"ending the run as {status}",
            {"run_id": run_id, "status": status, "end_time": end_time_ms},
        )

    # ---- artifacts -----------------------------------------------------------------------------

    def artifact_url(self, artifact_uri: str, path: str) -> str:
        """Where the artifact proxy takes `path` of a run whose artifact_uri is `artifact_uri`.

        As MLflow's own client resolves `mlflow-artifacts:` URIs (mlflow/store/artifact/
        mlflow_artifacts_repo.py): the tracking URL's path, the proxy's root, the URI's path.
        A run whose artifacts live elsewhere (s3://, dbfs:/, a local path) cannot be written
        through the tracking server: that is an MlflowError naming the URI.
        """
        parsed = urllib.parse.urlparse(artifact_uri)
        if parsed.scheme != "mlflow-artifacts":
            raise MlflowError(
                f"the run's artifacts are stored at {artifact_uri!r}, not behind the tracking server's artifact proxy; "
                "start `mlflow server` with its artifact proxy (the default, --serve-artifacts) to receive models"
            )
        tracking = urllib.parse.urlparse(self.tracking_url)
        joined = re.sub(r"//+", "/", f"{tracking.path}/{ARTIFACTS_ROOT}/{parsed.path}/{path}")
        return urllib.parse.urlunparse(
            (tracking.scheme, parsed.netloc or tracking.netloc, urllib.parse.quote(joined), "", "", "")
        )

    def artifact_put(self, *, artifact_uri: str, path: str, stream: BinaryIO, size: int) -> None:
        """Upload `size` bytes of `stream` as the run's artifact `path` (a retry overwrites it)."""
        url = self.artifact_url(artifact_uri, path)
        headers = self._headers("application/octet-stream")
        headers["Content-Length"] = str(size)
        request = urllib.request.Request(url, data=stream, method="PUT", headers=headers)
        self._send(request, f"uploading {path}")


def _error_detail(exc: urllib.error.HTTPError) -> tuple[str, str]:
    """(MLflow's message, its error_code) out of an error answer, both "" when it has none."""
    try:
        raw = exc.read(4096)
    except OSError:
        return "", ""
    try:
        doc = json.loads(raw)
    except ValueError:
        return raw.decode("utf-8", "replace").strip()[:300], ""
    if not isinstance(doc, dict):
        return "", ""
    return str(doc.get("message", ""))[:300], str(doc.get("error_code", ""))
