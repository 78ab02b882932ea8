"""Account API: sign up, get a token, who am I."""

from __future__ import annotations

from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import permissions, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from webserver.accounts import queries, services
from webserver.accounts.serializers import (
    AccountSerializer,
    SignupResultSerializer,
    SignupSerializer,
    TokenRequestSerializer,
    TokenSerializer,
)
from webserver.api_schema import ERROR_BODY

ERROR = OpenApiResponse(response=ERROR_BODY, description='`{"detail": "...", "<input>": ["..."]}`')


class SignupApi(APIView):
    # Anyone may sign up; no session means no CSRF check for scripts.
    authentication_classes: list[type] = []
    permission_classes = [permissions.AllowAny]

    @extend_schema(
        operation_id="auth_signup",
        summary="Create an account; the activation link goes to its e-mail address",
        request=SignupSerializer,
        responses={201: SignupResultSerializer, 400: ERROR, 503: ERROR},
        tags=["accounts"],
    )
    def post(self, request: Request) -> Response:
        serializer = SignupSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        user = services.user_signup(**serializer.validated_data)
        body = {
            **queries.account_summary(user=user),
            "detail": "Account created. Open the link we e-mailed to activate it, then ask for a token.",
        }
        return Response(SignupResultSerializer(body).data, status=status.HTTP_201_CREATED)


class TokenApi(APIView):
    authentication_classes: list[type] = []
    permission_classes = [permissions.AllowAny]

    @extend_schema(
        operation_id="auth_token",
        summary="Exchange a username and password for the account's API token",
        description="Refused for accounts not activated yet (403) and, after 5 failures within 15 minutes "
        "for one username or one address, for a while (429).",
        request=TokenRequestSerializer,
        responses={200: TokenSerializer, 400: ERROR, 403: ERROR, 429: ERROR},
        tags=["accounts"],
    )
    def post(self, request: Request) -> Response:
        serializer = TokenRequestSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        token = services.api_token_obtain(request=request._request, **serializer.validated_data)
        return Response(TokenSerializer({"token": token}).data)


class MeApi(APIView):
    permission_classes = [permissions.IsAuthenticated]

    @extend_schema(
        operation_id="me",
        summary="The account these credentials belong to",
        responses={200: AccountSerializer, 401: ERROR, 403: ERROR},
        tags=["accounts"],
    )
    def get(self, request: Request) -> Response:
        return Response(AccountSerializer(queries.account_summary(user=request.user)).data)
