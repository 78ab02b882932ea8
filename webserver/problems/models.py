"""Problems, their runs and the infrastructure each run has."""

from __future__ import annotations

from django.conf import settings
from django.db import models


class JoinPolicy(models.TextChoices):
    OPEN = "open", "Open: anyone may join"
    APPROVAL = "approval", "Approval required"


class ProblemState(models.TextChoices):
    DRAFT = "draft", "Draft"
    PUBLISHED = "published", "Published"
    ARCHIVED = "archived", "Archived"


class Problem(models.Model):
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="problems")
    title = models.CharField(max_length=200)
    description = models.TextField(blank=True, help_text="Markdown")
    # The data contract document (docs/data-contract.md): kind + schema.
    contract = models.JSONField()
    # The Flower app: a built-in template name (apps/<name>) or an uploaded FAB.
    # Either way the FAB bytes are stored under MEDIA_ROOT and pinned by hash.
    app_template = models.CharField(max_length=64, blank=True)
    fab = models.FileField(upload_to="fabs/")
    fab_sha256 = models.CharField(max_length=64)
    fab_name = models.CharField(max_length=200, blank=True)
    # Bumped whenever the app changes; join bundles of earlier versions are refused.
    app_version = models.PositiveIntegerField(default=1)
    # Platform-level run settings (validated by problems.runconfig).
    run_config = models.JSONField(default=dict)
    # The differential privacy every site must apply (validated by problems.privacy); {}: none,
    # each site decides. Fixed once the problem is published: its join bundles carry it.
    privacy = models.JSONField(default=dict, blank=True)
    join_policy = models.CharField(max_length=16, choices=JoinPolicy.choices, default=JoinPolicy.APPROVAL)
    # `num-partitions` in every site's context.node_config; None: as many as there are
    # approved sites (participation.partitions decides).
    num_partitions = models.PositiveIntegerField(null=True, blank=True)
    state = models.CharField(max_length=16, choices=ProblemState.choices, default=ProblemState.DRAFT)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    # The problem's own certificate authority (webserver/problems/pki.py): its
    # certificate goes into join bundles, its key signs the selectors' certificates.
    ca_certificate = models.TextField(blank=True, editable=False)
    ca_private_key = models.TextField(blank=True, editable=False)
    # Where runs are exported as MLflow runs (problems.mlflow_export); "" when not linked.
    mlflow_tracking_url = models.CharField(max_length=500, blank=True)
    # The MLflow token, sealed with SECRET_KEY (problems.mlflow_export): write-only, never shown back.
    mlflow_token = models.TextField(blank=True, editable=False)
    # The MLflow experiment the runs go to; "" means one named after the problem.
    mlflow_experiment = models.CharField(max_length=250, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return self.title


class RunStatus(models.TextChoices):
    QUEUED = "queued", "Queued"
    STARTING = "starting", "Starting"
    RUNNING = "running", "Running"
    STOPPING = "stopping", "Stopping"
    FINISHED = "finished", "Finished"
    FAILED = "failed", "Failed"
    STOPPED = "stopped", "Stopped"


ACTIVE_RUN_STATUSES = (RunStatus.QUEUED, RunStatus.STARTING, RunStatus.RUNNING, RunStatus.STOPPING)


class Run(models.Model):
    """One training of a problem: its own config snapshot, rounds, metrics and models."""

    problem = models.ForeignKey(Problem, on_delete=models.CASCADE, related_name="runs")
    number = models.PositiveIntegerField()
    config = models.JSONField(default=dict)  # snapshot of Problem.run_config at start
    fab_sha256 = models.CharField(max_length=64)
    app_version = models.PositiveIntegerField(default=1)
    status = models.CharField(max_length=16, choices=RunStatus.choices, default=RunStatus.QUEUED)
    status_detail = models.TextField(blank=True)
    backend = models.CharField(max_length=32, blank=True)
    # Hash of the per-run service credential the coordinator reports with.
    service_token_hash = models.CharField(max_length=64, blank=True)
    current_round = models.PositiveIntegerField(default=0)
    total_rounds = models.PositiveIntegerField(default=0)
    phase = models.CharField(max_length=32, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    # Every restart the reconciler made, oldest first: {"at": ISO time, "service":
    # "selector 1" | "coordinator" | "run" (launched whole), "reason": ...}. The restart
    # budget counts the ones within its window (problems.lifecycle).
    restarts = models.JSONField(default=list, blank=True)

    class Meta:
        ordering = ["problem", "-number"]
        constraints = [models.UniqueConstraint(fields=["problem", "number"], name="run_number_unique")]

    def __str__(self) -> str:
        return f"{self.problem} run {self.number}"

    @property
    def is_active(self) -> bool:
        return self.status in ACTIVE_RUN_STATUSES


class ServiceRole(models.TextChoices):
    COORDINATOR = "coordinator", "Coordinator"
    SELECTOR = "selector", "Selector"


class ServiceHealth(models.TextChoices):
    STARTING = "starting", "Starting"
    HEALTHY = "healthy", "Healthy"
    UNHEALTHY = "unhealthy", "Unhealthy"
    EXITED = "exited", "Exited"
    REMOVED = "removed", "Removed"


class Service(models.Model):
    """A coordinator or selector of a run, as the spawner reported it."""

    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="services")
    role = models.CharField(max_length=16, choices=ServiceRole.choices)
    index = models.PositiveIntegerField(default=0)
    handle = models.CharField(max_length=200, blank=True)  # pid or container id
    address = models.CharField(max_length=200, blank=True)  # host:port (selectors: what clients dial)
    health = models.CharField(max_length=16, choices=ServiceHealth.choices, default=ServiceHealth.STARTING)
    detail = models.TextField(blank=True)
    clients_connected = models.PositiveIntegerField(default=0)
    # host:port of its Prometheus metrics for the platform's own Prometheus; "" when not served.
    metrics = models.CharField(max_length=200, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["run", "role", "index"]
        constraints = [models.UniqueConstraint(fields=["run", "role", "index"], name="service_unique")]

    def __str__(self) -> str:
        return f"{self.role} {self.index} of {self.run}"


class MlflowExport(models.Model):
    """What the export of one run to its problem's MLflow tracking server has done so far.

    Written only by `problems.mlflow_export`. The MLflow run id is kept so that a retried or
    redelivered export never creates a second MLflow run; `key` is tagged on the MLflow run
    before its id is known here, so a worker that died between creating it and saving the id
    finds it again.
    """

    run = models.OneToOneField(Run, on_delete=models.CASCADE, primary_key=True, related_name="mlflow_export")
    key = models.CharField(max_length=32)
    # The server this run exports to (the problem's URL when the export began).
    tracking_url = models.CharField(max_length=500)
    experiment_id = models.CharField(max_length=64, blank=True)
    mlflow_run_id = models.CharField(max_length=64, blank=True)
    params_logged = models.BooleanField(default=False)
    # "attempt.round" of every round whose metrics were logged.
    rounds_logged = models.JSONField(default=list, blank=True)
    # Artifact path -> SHA-256 of the model file uploaded there.
    models_logged = models.JSONField(default=dict, blank=True)
    # The MLflow status the run was ended with (FINISHED, FAILED, KILLED); "" while it runs.
    status_logged = models.CharField(max_length=16, blank=True)
    last_error = models.TextField(blank=True)
    last_error_at = models.DateTimeField(null=True, blank=True)
    last_success_at = models.DateTimeField(null=True, blank=True)
    # One export of a run at a time: a task holds this lease while it talks to MLflow.
    lease_until = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"MLflow export of {self.run}"
