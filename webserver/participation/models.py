"""Data holders joining problems and what their sites contributed."""

from __future__ import annotations

from django.conf import settings
from django.db import models

from webserver.problems.models import Problem, Run


class ParticipantStatus(models.TextChoices):
    PENDING = "pending", "Waiting for approval"
    APPROVED = "approved", "Approved"
    REJECTED = "rejected", "Rejected"
    REVOKED = "revoked", "Revoked"


class Participant(models.Model):
    problem = models.ForeignKey(Problem, on_delete=models.CASCADE, related_name="participants")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="participations")
    site_name = models.CharField(max_length=120)
    contact_email = models.EmailField()
    message = models.TextField(blank=True)
    status = models.CharField(max_length=16, choices=ParticipantStatus.choices, default=ParticipantStatus.PENDING)
    # The credential is shown once (in the join bundle); only its SHA-256 is kept.
    credential_hash = models.CharField(max_length=64, blank=True, db_index=True)
    # The app version the last bundle was issued for.
    bundle_app_version = models.PositiveIntegerField(default=0)
    # When the last bundle (and so the current credential) was issued.
    bundle_issued_at = models.DateTimeField(null=True, blank=True)
    # The site's `partition-id` in the ClientApp's context.node_config, as a Flower
    # SuperNode's `--node-config "partition-id=0 num-partitions=3"`: given at approval
    # in order, editable by the setter; None while not approved.
    partition_id = models.PositiveIntegerField(null=True, blank=True)
    # What the last bundle carried (None: issued before bundles carried them); a
    # difference from today's values means the data holder needs a new bundle.
    bundle_partition_id = models.PositiveIntegerField(null=True, blank=True)
    bundle_num_partitions = models.PositiveIntegerField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    decided_at = models.DateTimeField(null=True, blank=True)
    # Why the setter rejected or revoked, shown to the data holder.
    decision_note = models.TextField(blank=True)

    class Meta:
        ordering = ["problem", "site_name"]
        constraints = [
            models.UniqueConstraint(fields=["problem", "user"], name="participant_unique"),
            models.UniqueConstraint(
                fields=["problem", "partition_id"],
                condition=models.Q(partition_id__isnull=False),
                name="participant_partition_unique",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.site_name} in {self.problem}"


class Contribution(models.Model):
    """A site's reply counted in a round (train or evaluate)."""

    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="contributions")
    participant = models.ForeignKey(Participant, on_delete=models.SET_NULL, null=True, related_name="contributions")
    site_name = models.CharField(max_length=120)
    round = models.PositiveIntegerField()
    kind = models.CharField(max_length=16, default="train")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["run", "round", "site_name"]
        constraints = [
            models.UniqueConstraint(fields=["run", "site_name", "round", "kind"], name="contribution_unique")
        ]
