"""REST API for participation; errors come back as JSON via `webserver.errors`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

from django.http import Http404
from drf_spectacular.utils import extend_schema
from rest_framework import generics, status
from rest_framework.permissions import IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from webserver import permissions
from webserver.api_schema import errors
from webserver.participation import queries, services
from webserver.participation.models import Participant
from webserver.participation.serializers import (
    DecisionSerializer,
    JoinBundleSerializer,
    JoinRequestSerializer,
    MyParticipationSerializer,
    NumPartitionsSerializer,
    ParticipantSerializer,
    PartitionSerializer,
)
from webserver.problems.models import Problem

if TYPE_CHECKING:
    from django.contrib.auth.models import User

_ERRORS = errors(
    400,
    403,
    404,
    409,
    _404="No such problem or participant (or not visible to you).",
    _409="Not possible in the current state (e.g. already asked, not published).",
)


def _visible_problem(user: Any, problem_id: int) -> Problem:
    problem = Problem.objects.filter(pk=problem_id).first()
    if problem is None or not permissions.can_view_problem(user, problem):
        raise Http404("No such problem.")
    return problem


def _participant(user: Any, participant_id: int) -> Participant:
    participant = queries.participant_in_visible_problem(pk=participant_id, user=user)
    if participant is None:
        raise Http404("No such participant.")
    return participant


class ProblemParticipantsApi(generics.GenericAPIView[Participant]):
    """A problem's participants: its setter and site admins see all, anyone else only their own request."""

    permission_classes = [IsAuthenticated]
    serializer_class = ParticipantSerializer

    def get_queryset(self) -> Any:
        problem = _visible_problem(self.request.user, self.kwargs["problem_id"])
        return queries.participants_visible_to(problem=problem, user=self.request.user)

    @extend_schema(
        operation_id="problem_participants_list", responses={200: ParticipantSerializer(many=True), **_ERRORS}
    )
    def get(self, request: Request, problem_id: int) -> Response:
        rows = self.paginate_queryset(self.get_queryset())
        assert rows is not None  # the project sets a default paginator
        counts = queries.rounds_contributed(p.pk for p in rows)
        data = ParticipantSerializer(rows, many=True, context={"rounds_contributed": counts}).data
        return self.get_paginated_response(data)

    @extend_schema(
        operation_id="problem_participants_request",
        request=JoinRequestSerializer,
        responses={201: ParticipantSerializer, **_ERRORS},
        description="Ask to join (data holders). Approved at once under the open join policy, pending otherwise.",
    )
    def post(self, request: Request, problem_id: int) -> Response:
        problem = _visible_problem(request.user, problem_id)
        body = JoinRequestSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        profile = getattr(request.user, "profile", None)
        participant = services.participant_request(
            problem=problem,
            user=request.user,
            site_name=body.validated_data.get("site_name") or getattr(profile, "organisation", ""),
            # IsAuthenticated: never AnonymousUser here
            contact_email=body.validated_data.get("contact_email") or cast("User", request.user).email,
            message=body.validated_data.get("message", ""),
        )
        return Response(ParticipantSerializer(participant).data, status=status.HTTP_201_CREATED)


class _DecisionApi(APIView):
    permission_classes = [IsAuthenticated]
    verb = ""

    def post(self, request: Request, participant_id: int) -> Response:
        participant = _participant(request.user, participant_id)
        body = DecisionSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        reason = body.validated_data.get("reason", "")
        row = services.participant_decide(participant=participant, by=request.user, verb=self.verb, reason=reason)
        return Response(ParticipantSerializer(row).data)


@extend_schema(
    request=None,
    responses={200: ParticipantSerializer, **_ERRORS},
    description="Approve a pending (or rejected) request. Problem setter or site admin.",
)
class ParticipantApproveApi(_DecisionApi):
    verb = "approve"


@extend_schema(
    request=DecisionSerializer,
    responses={200: ParticipantSerializer, **_ERRORS},
    description="Reject a pending request, with an optional reason shown to the data holder.",
)
class ParticipantRejectApi(_DecisionApi):
    verb = "reject"


@extend_schema(
    request=DecisionSerializer,
    responses={200: ParticipantSerializer, **_ERRORS},
    description="Revoke an approved participant: its credential stops verifying at once.",
)
class ParticipantRevokeApi(_DecisionApi):
    verb = "revoke"


class ParticipantPartitionApi(APIView):
    permission_classes = [IsAuthenticated]

    @extend_schema(
        operation_id="participant_partition",
        request=PartitionSerializer,
        responses={200: ParticipantSerializer, **_ERRORS},
        description="Give an approved site another partition-id (0 ≤ id < num-partitions); a site holding it is "
        "swapped. Problem setter or site admin. The site sees it only in a new join bundle.",
    )
    def post(self, request: Request, participant_id: int) -> Response:
        participant = _participant(request.user, participant_id)
        body = PartitionSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        row = services.participant_set_partition(
            participant=participant, by=request.user, partition_id=body.validated_data["partition_id"]
        )
        return Response(ParticipantSerializer(row).data)


class ProblemPartitionsApi(APIView):
    permission_classes = [IsAuthenticated]

    @staticmethod
    def _answer(problem: Problem) -> Response:
        return Response(
            {"num_partitions": problem.num_partitions, "effective": queries.problem_num_partitions(problem)}
        )

    @extend_schema(operation_id="problem_partitions_get", responses={200: NumPartitionsSerializer, **_ERRORS})
    def get(self, request: Request, problem_id: int) -> Response:
        return self._answer(_visible_problem(request.user, problem_id))

    @extend_schema(
        operation_id="problem_partitions_set",
        # JSON only: its null ("one per approved site") has no form-data spelling, so a form body
        # the schema offered could not say it (schemathesis sent the text "null" and was refused).
        request={"application/json": NumPartitionsSerializer},
        responses={200: NumPartitionsSerializer, **_ERRORS},
        description="Fix num-partitions for every site (null: one per approved site). Problem setter or site "
        "admin. Sites see it only in new join bundles.",
    )
    def put(self, request: Request, problem_id: int) -> Response:
        problem = _visible_problem(request.user, problem_id)
        body = NumPartitionsSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        row = services.problem_set_num_partitions(
            problem=problem, by=request.user, num_partitions=body.validated_data["num_partitions"]
        )
        return self._answer(row)


class ParticipantBundleApi(APIView):
    permission_classes = [IsAuthenticated]

    @extend_schema(
        operation_id="participant_bundle",
        request=None,
        responses={200: JoinBundleSerializer, **_ERRORS},
        description="Issue a new credential and return the join bundle. The previous bundle stops working.",
    )
    def post(self, request: Request, participant_id: int) -> Response:
        participant = _participant(request.user, participant_id)
        bundle = services.participant_issue_bundle(participant=participant, by=request.user)
        return Response(bundle, headers={"Cache-Control": "no-store"})


class MyParticipationsApi(generics.ListAPIView[Participant]):
    """Every problem the caller asked to join, with status, last bundle and rounds contributed."""

    permission_classes = [IsAuthenticated]
    serializer_class = MyParticipationSerializer

    def get_queryset(self) -> Any:
        return queries.participations_of_user(user=self.request.user)

    @extend_schema(
        operation_id="my_participations_list", responses={200: MyParticipationSerializer(many=True), **errors(400, 403)}
    )
    def get(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return super().get(request, *args, **kwargs)
