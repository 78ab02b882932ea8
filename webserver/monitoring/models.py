"""What coordinators report: rounds, metrics, checkpoints, log lines."""

from __future__ import annotations

from django.db import models

from webserver.problems.models import Run


class RoundRecord(models.Model):
    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="rounds")
    # Each (re)start of the run's coordinator is an attempt; a round of a later attempt never
    # overwrites an earlier one's (a run that could not resume counts rounds from 1 again).
    attempt = models.PositiveIntegerField(default=1)
    number = models.PositiveIntegerField()
    phase = models.CharField(max_length=32, blank=True)  # train | evaluate | done
    clients = models.PositiveIntegerField(default=0)
    train_loss = models.FloatField(null=True, blank=True)
    eval_loss = models.FloatField(null=True, blank=True)
    eval_acc = models.FloatField(null=True, blank=True)
    metrics = models.JSONField(default=dict)
    # Client replies the coordinator refused as malformed or hostile (NaN/Inf, wrong shapes, ...).
    rejected = models.PositiveIntegerField(default=0)
    # Why, as the coordinator reported it: reason text -> count (its 10 most common reasons).
    rejected_reasons = models.JSONField(default=dict, blank=True)
    # Replies delivered to the ServerApp with content; None when an older coordinator did not say.
    results = models.PositiveIntegerField(null=True, blank=True)
    # Replies were asked for and none was accepted.
    no_results = models.BooleanField(default=False)
    seconds = models.FloatField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["run", "attempt", "number"]
        constraints = [models.UniqueConstraint(fields=["run", "attempt", "number"], name="round_unique_per_attempt")]
        # The dashboard sums a run's rejected replies on every poll: only rounds that had any are read.
        indexes = [models.Index(fields=["run"], name="round_rejected", condition=models.Q(rejected__gt=0))]


class RunReport(models.Model):
    """What the coordinator said about the run as a whole (rounds and log lines have their own rows)."""

    run = models.OneToOneField(Run, on_delete=models.CASCADE, primary_key=True, related_name="report")
    # The reply policy the coordinator applies (flower | strict); "" until a coordinator says.
    reply_policy = models.CharField(max_length=16, blank=True)


class Checkpoint(models.Model):
    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="checkpoints")
    # The coordinator's attempt that uploaded it, as for rounds: an attempt that could not resume
    # counts rounds from 1 again and has a final model of its own, and neither overwrites another's.
    attempt = models.PositiveIntegerField(default=1)
    round = models.PositiveIntegerField()  # 0 = final model
    npz = models.FileField(upload_to="checkpoints/", blank=True)
    pt = models.FileField(upload_to="checkpoints/", blank=True)
    # For provenance manifests (monitoring/provenance.py): each file's SHA-256 as uploaded, and the
    # hash of the problem's data contract then (a problem's contract may be edited later). Blank for
    # files stored before they were recorded: the first manifest hashes the file, and says so.
    npz_sha256 = models.CharField(max_length=64, blank=True)
    pt_sha256 = models.CharField(max_length=64, blank=True)
    contract_sha256 = models.CharField(max_length=64, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["run", "attempt", "round"]
        # Round before attempt: the dashboard reads a run's rounds after n (and round 0) as index
        # ranges, and a download without an attempt takes a round's latest attempt from the same index.
        constraints = [
            models.UniqueConstraint(fields=["run", "round", "attempt"], name="checkpoint_unique_per_attempt")
        ]


class LogLine(models.Model):
    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="log_lines")
    event_id = models.CharField(max_length=64)  # from the coordinator, makes retries idempotent
    ts = models.DateTimeField()
    level = models.CharField(max_length=16, default="INFO")
    source = models.CharField(max_length=64, blank=True)
    message = models.TextField()

    class Meta:
        ordering = ["run", "ts", "id"]
        constraints = [models.UniqueConstraint(fields=["run", "event_id"], name="logline_unique")]
        # The dashboard reads a run's last 50 lines on every poll; without it, every line is sorted.
        indexes = [models.Index(fields=["run", "ts", "id"], name="logline_run_ts")]


class PrivacyState(models.TextChoices):
    ACTIVE = "active", "active"
    EXHAUSTED = "exhausted", "stopped for budget"


class PrivacyReport(models.Model):
    """What one site said of its differential-privacy spending, as the coordinator passed it on (issue 18).

    Self-reported: the site adds its noise before the update leaves it, so the platform
    cannot check any of it. Append-only: every report is a row of its own (a retry of the
    same event is not), and readers take each site's latest.
    """

    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="privacy_reports")
    # The participant the coordinator named, when it is one of the problem's; else only the site name.
    participant = models.ForeignKey(
        "participation.Participant", on_delete=models.SET_NULL, null=True, blank=True, related_name="privacy_reports"
    )
    site_name = models.CharField(max_length=120)
    event_id = models.CharField(max_length=64)  # from the coordinator, makes retries idempotent
    node_id = models.PositiveBigIntegerField()
    state = models.CharField(max_length=16, choices=PrivacyState.choices)
    # Cumulative ε the site has spent on this problem (every run), at `delta`.
    epsilon = models.FloatField()
    delta = models.FloatField()
    # The site's own cap; None when it set none (DP only because the problem requires it).
    epsilon_cap = models.FloatField(null=True, blank=True)
    noise_multiplier = models.FloatField()
    clipping_norm = models.FloatField()
    # Noised updates released for this problem: over every run, and in this run.
    releases = models.PositiveIntegerField()
    run_releases = models.PositiveIntegerField()
    # The server round of the latest release, when known.
    round = models.PositiveIntegerField(null=True, blank=True)
    # Why the site stopped, for `exhausted`.
    reason = models.TextField(blank=True)
    reported_at = models.DateTimeField()
    received_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["run", "site_name", "id"]
        constraints = [models.UniqueConstraint(fields=["run", "event_id"], name="privacyreport_unique_event")]
        # The dashboard reads each site's latest report of a run on every poll.
        indexes = [models.Index(fields=["run", "site_name", "id"], name="privacyreport_run_site")]

    def __str__(self) -> str:
        return f"{self.site_name} in {self.run}: ε {self.epsilon:g} ({self.state})"
