"""API shapes. Serializers validate input types only; services decide."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from webserver.participation import queries
from webserver.participation.models import Participant
from webserver.participation.services import MAX_PARTITIONS, MESSAGE_MAX, NOTE_MAX, SITE_NAME_MAX


class ParticipantSerializer(serializers.ModelSerializer[Participant]):
    """A request to join, as its data holder or the problem's setter sees it."""

    problem_id = serializers.IntegerField(read_only=True)
    username = serializers.CharField(source="user.get_username", read_only=True)
    rounds_contributed = serializers.SerializerMethodField()
    bundle_partition_outdated = serializers.SerializerMethodField(
        help_text="The last join bundle carries another partition-id or num-partitions than the site has now."
    )

    class Meta:
        model = Participant
        fields = [
            "id",
            "problem_id",
            "username",
            "site_name",
            "contact_email",
            "message",
            "status",
            "decision_note",
            "created_at",
            "decided_at",
            "bundle_app_version",
            "bundle_issued_at",
            "partition_id",
            "bundle_partition_id",
            "bundle_num_partitions",
            "bundle_partition_outdated",
            "rounds_contributed",
        ]
        read_only_fields = fields

    def get_bundle_partition_outdated(self, obj: Participant) -> bool:
        return queries.bundle_partition_outdated(obj)

    def get_rounds_contributed(self, obj: Participant) -> int:
        counts: dict[int, int] = self.context.get("rounds_contributed") or {}
        if obj.pk in counts:
            return counts[obj.pk]
        return queries.rounds_contributed([obj.pk]).get(obj.pk, 0)


class JoinRequestSerializer(serializers.Serializer[Any]):
    """POST body of a join request; site name and e-mail default to the profile's."""

    site_name = serializers.CharField(required=False, allow_blank=True, max_length=SITE_NAME_MAX)
    contact_email = serializers.EmailField(required=False, allow_blank=True)
    message = serializers.CharField(required=False, allow_blank=True, max_length=MESSAGE_MAX)


class DecisionSerializer(serializers.Serializer[Any]):
    reason = serializers.CharField(required=False, allow_blank=True, max_length=NOTE_MAX)


class PartitionSerializer(serializers.Serializer[Any]):
    """POST body: the site's new partition-id (one another site holds is swapped with it)."""

    partition_id = serializers.IntegerField(min_value=0)


class NumPartitionsSerializer(serializers.Serializer[Any]):
    """PUT body and answer: num-partitions for every site of a problem."""

    num_partitions = serializers.IntegerField(
        min_value=1,
        max_value=MAX_PARTITIONS,
        allow_null=True,
        help_text="Fixed by the setter; null: one per approved site.",
    )
    effective = serializers.IntegerField(read_only=True, help_text="What new join bundles carry.")


class MyParticipationSerializer(ParticipantSerializer):
    """One of the caller's participations, with the problem and the rounds contributed per run."""

    problem_title = serializers.CharField(source="problem.title", read_only=True)
    problem_app_version = serializers.IntegerField(source="problem.app_version", read_only=True)
    bundle_stale = serializers.SerializerMethodField()
    contributions = serializers.SerializerMethodField()
    privacy = serializers.SerializerMethodField()

    class Meta(ParticipantSerializer.Meta):
        fields = [
            *ParticipantSerializer.Meta.fields,
            "problem_title",
            "problem_app_version",
            "bundle_stale",
            "contributions",
            "privacy",
        ]
        read_only_fields = fields

    def get_bundle_stale(self, obj: Participant) -> bool:
        return queries.bundle_is_stale(obj)

    @extend_schema_field(
        {
            "type": "array",
            "items": {"type": "object"},
            "description": "Per run of the problem, newest first: your site's latest differential-privacy report as "
            "your client sent it (`run`, `epsilon` spent over every run at `delta`, `epsilon_cap`, `noise_multiplier`, "
            "`clipping_norm`, `releases`, `run_releases`, `round`, `state`: active or exhausted, `reason`).",
        }
    )
    def get_privacy(self, obj: Participant) -> list[dict[str, Any]]:
        from webserver.monitoring.queries import participant_privacy

        return participant_privacy(participant=obj)

    def get_contributions(self, obj: Participant) -> list[dict[str, Any]]:
        return [
            {"run": entry.run_number, "rounds": entry.rounds_by_kind, "text": entry.text}
            for entry in queries.contributions_by_run(obj)
        ]


class JoinBundleSerializer(serializers.Serializer[Any]):
    """The join bundle (`fedota-join-bundle/1`) the client reads; for the schema only."""

    format = serializers.CharField()
    problem_id = serializers.IntegerField()
    problem_title = serializers.CharField()
    webserver_url = serializers.CharField()
    selectors = serializers.ListField(child=serializers.CharField())
    credential = serializers.CharField()
    participant_id = serializers.IntegerField()
    site_name = serializers.CharField()
    fab_sha256 = serializers.CharField()
    app_version = serializers.IntegerField()
    data_contract = serializers.JSONField()
    node_config = serializers.DictField(
        child=serializers.IntegerField(),
        required=False,
        help_text="`partition-id` and `num-partitions`, passed to the ClientApp in context.node_config.",
    )
    privacy = serializers.DictField(
        child=serializers.FloatField(),
        required=False,
        help_text="The problem's privacy requirement (min_noise_multiplier, clipping_norm, delta; all optional); "
        "absent when the problem has none.",
    )
    issued_at = serializers.DateTimeField()
    docker_run = serializers.CharField()
