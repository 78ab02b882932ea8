from protos.payload.v1 import payload_pb2 as _payload_pb2
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RunStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RUN_STATUS_UNSPECIFIED: _ClassVar[RunStatus]
    RUN_STATUS_FINISHED: _ClassVar[RunStatus]
    RUN_STATUS_FAILED: _ClassVar[RunStatus]
    RUN_STATUS_STOPPED: _ClassVar[RunStatus]
RUN_STATUS_UNSPECIFIED: RunStatus
RUN_STATUS_FINISHED: RunStatus
RUN_STATUS_FAILED: RunStatus
RUN_STATUS_STOPPED: RunStatus

class JoinRequest(_message.Message):
    __slots__ = ("credential", "fab_sha256", "client_version", "display_name", "inline_tasks")
    CREDENTIAL_FIELD_NUMBER: _ClassVar[int]
    FAB_SHA256_FIELD_NUMBER: _ClassVar[int]
    CLIENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    INLINE_TASKS_FIELD_NUMBER: _ClassVar[int]
    credential: str
    fab_sha256: str
    client_version: str
    display_name: str
    inline_tasks: bool
    def __init__(self, credential: _Optional[str] = ..., fab_sha256: _Optional[str] = ..., client_version: _Optional[str] = ..., display_name: _Optional[str] = ..., inline_tasks: _Optional[bool] = ...) -> None: ...

class JoinResponse(_message.Message):
    __slots__ = ("session_id", "node_id", "run", "heartbeat_interval", "inline_results")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    RUN_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_FIELD_NUMBER: _ClassVar[int]
    INLINE_RESULTS_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    node_id: int
    run: RunInfo
    heartbeat_interval: float
    inline_results: bool
    def __init__(self, session_id: _Optional[str] = ..., node_id: _Optional[int] = ..., run: _Optional[_Union[RunInfo, _Mapping]] = ..., heartbeat_interval: _Optional[float] = ..., inline_results: _Optional[bool] = ...) -> None: ...

class RunInfo(_message.Message):
    __slots__ = ("run_id", "fab_sha256", "run_config_json", "fab_size")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    FAB_SHA256_FIELD_NUMBER: _ClassVar[int]
    RUN_CONFIG_JSON_FIELD_NUMBER: _ClassVar[int]
    FAB_SIZE_FIELD_NUMBER: _ClassVar[int]
    run_id: int
    fab_sha256: str
    run_config_json: str
    fab_size: int
    def __init__(self, run_id: _Optional[int] = ..., fab_sha256: _Optional[str] = ..., run_config_json: _Optional[str] = ..., fab_size: _Optional[int] = ...) -> None: ...

class ClientEvent(_message.Message):
    __slots__ = ("session_id", "heartbeat", "privacy")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    PRIVACY_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    heartbeat: Heartbeat
    privacy: PrivacyReport
    def __init__(self, session_id: _Optional[str] = ..., heartbeat: _Optional[_Union[Heartbeat, _Mapping]] = ..., privacy: _Optional[_Union[PrivacyReport, _Mapping]] = ...) -> None: ...

class Heartbeat(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class PrivacyReport(_message.Message):
    __slots__ = ("state", "epsilon", "delta", "epsilon_cap", "noise_multiplier", "clipping_norm", "releases", "run_releases", "round", "reason")
    STATE_FIELD_NUMBER: _ClassVar[int]
    EPSILON_FIELD_NUMBER: _ClassVar[int]
    DELTA_FIELD_NUMBER: _ClassVar[int]
    EPSILON_CAP_FIELD_NUMBER: _ClassVar[int]
    NOISE_MULTIPLIER_FIELD_NUMBER: _ClassVar[int]
    CLIPPING_NORM_FIELD_NUMBER: _ClassVar[int]
    RELEASES_FIELD_NUMBER: _ClassVar[int]
    RUN_RELEASES_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    state: str
    epsilon: float
    delta: float
    epsilon_cap: float
    noise_multiplier: float
    clipping_norm: float
    releases: int
    run_releases: int
    round: int
    reason: str
    def __init__(self, state: _Optional[str] = ..., epsilon: _Optional[float] = ..., delta: _Optional[float] = ..., epsilon_cap: _Optional[float] = ..., noise_multiplier: _Optional[float] = ..., clipping_norm: _Optional[float] = ..., releases: _Optional[int] = ..., run_releases: _Optional[int] = ..., round: _Optional[int] = ..., reason: _Optional[str] = ...) -> None: ...

class SelectorEvent(_message.Message):
    __slots__ = ("welcome", "task", "cancelled", "shutdown")
    WELCOME_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    CANCELLED_FIELD_NUMBER: _ClassVar[int]
    SHUTDOWN_FIELD_NUMBER: _ClassVar[int]
    welcome: Welcome
    task: TaskAvailable
    cancelled: TaskCancelled
    shutdown: Shutdown
    def __init__(self, welcome: _Optional[_Union[Welcome, _Mapping]] = ..., task: _Optional[_Union[TaskAvailable, _Mapping]] = ..., cancelled: _Optional[_Union[TaskCancelled, _Mapping]] = ..., shutdown: _Optional[_Union[Shutdown, _Mapping]] = ...) -> None: ...

class Welcome(_message.Message):
    __slots__ = ("node_id",)
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    node_id: int
    def __init__(self, node_id: _Optional[int] = ...) -> None: ...

class TaskAvailable(_message.Message):
    __slots__ = ("task_id", "content_size", "header", "content")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    CONTENT_SIZE_FIELD_NUMBER: _ClassVar[int]
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    content_size: int
    header: _payload_pb2.PayloadHeader
    content: bytes
    def __init__(self, task_id: _Optional[str] = ..., content_size: _Optional[int] = ..., header: _Optional[_Union[_payload_pb2.PayloadHeader, _Mapping]] = ..., content: _Optional[bytes] = ...) -> None: ...

class TaskCancelled(_message.Message):
    __slots__ = ("task_id", "reason")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    reason: str
    def __init__(self, task_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class Shutdown(_message.Message):
    __slots__ = ("reason", "status", "rejoin")
    REASON_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    REJOIN_FIELD_NUMBER: _ClassVar[int]
    reason: str
    status: RunStatus
    rejoin: bool
    def __init__(self, reason: _Optional[str] = ..., status: _Optional[_Union[RunStatus, str]] = ..., rejoin: _Optional[bool] = ...) -> None: ...

class PullTaskRequest(_message.Message):
    __slots__ = ("session_id", "task_id")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    task_id: str
    def __init__(self, session_id: _Optional[str] = ..., task_id: _Optional[str] = ...) -> None: ...

class TaskPart(_message.Message):
    __slots__ = ("header", "chunk")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    header: _payload_pb2.PayloadHeader
    chunk: _payload_pb2.Chunk
    def __init__(self, header: _Optional[_Union[_payload_pb2.PayloadHeader, _Mapping]] = ..., chunk: _Optional[_Union[_payload_pb2.Chunk, _Mapping]] = ...) -> None: ...

class ResultHeader(_message.Message):
    __slots__ = ("session_id", "task_id", "payload", "content")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    task_id: str
    payload: _payload_pb2.PayloadHeader
    content: bytes
    def __init__(self, session_id: _Optional[str] = ..., task_id: _Optional[str] = ..., payload: _Optional[_Union[_payload_pb2.PayloadHeader, _Mapping]] = ..., content: _Optional[bytes] = ...) -> None: ...

class ResultPart(_message.Message):
    __slots__ = ("header", "chunk")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    header: ResultHeader
    chunk: _payload_pb2.Chunk
    def __init__(self, header: _Optional[_Union[ResultHeader, _Mapping]] = ..., chunk: _Optional[_Union[_payload_pb2.Chunk, _Mapping]] = ...) -> None: ...

class PushResultResponse(_message.Message):
    __slots__ = ("accepted", "detail")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    accepted: bool
    detail: str
    def __init__(self, accepted: _Optional[bool] = ..., detail: _Optional[str] = ...) -> None: ...

class GetFabRequest(_message.Message):
    __slots__ = ("session_id",)
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    def __init__(self, session_id: _Optional[str] = ...) -> None: ...

class LeaveRequest(_message.Message):
    __slots__ = ("session_id", "reason", "privacy")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    PRIVACY_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    reason: str
    privacy: PrivacyReport
    def __init__(self, session_id: _Optional[str] = ..., reason: _Optional[str] = ..., privacy: _Optional[_Union[PrivacyReport, _Mapping]] = ...) -> None: ...

class LeaveResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...
