from protos.payload.v1 import payload_pb2 as _payload_pb2
from protos.selector.v1 import selector_pb2 as _selector_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Aggregation(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    AGGREGATION_UNSPECIFIED: _ClassVar[Aggregation]
    AGGREGATION_INDIVIDUAL: _ClassVar[Aggregation]
    AGGREGATION_WEIGHTED_MEAN: _ClassVar[Aggregation]

class RunStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RUN_STATUS_UNSPECIFIED: _ClassVar[RunStatus]
    RUN_STATUS_FINISHED: _ClassVar[RunStatus]
    RUN_STATUS_FAILED: _ClassVar[RunStatus]
    RUN_STATUS_STOPPED: _ClassVar[RunStatus]
AGGREGATION_UNSPECIFIED: Aggregation
AGGREGATION_INDIVIDUAL: Aggregation
AGGREGATION_WEIGHTED_MEAN: Aggregation
RUN_STATUS_UNSPECIFIED: RunStatus
RUN_STATUS_FINISHED: RunStatus
RUN_STATUS_FAILED: RunStatus
RUN_STATUS_STOPPED: RunStatus

class SelectorMessage(_message.Message):
    __slots__ = ("hello", "node_joined", "node_left", "progress", "heartbeat", "roster_request", "site_privacy")
    HELLO_FIELD_NUMBER: _ClassVar[int]
    NODE_JOINED_FIELD_NUMBER: _ClassVar[int]
    NODE_LEFT_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    ROSTER_REQUEST_FIELD_NUMBER: _ClassVar[int]
    SITE_PRIVACY_FIELD_NUMBER: _ClassVar[int]
    hello: Hello
    node_joined: NodeJoined
    node_left: NodeLeft
    progress: TaskProgress
    heartbeat: Heartbeat
    roster_request: RosterRequest
    site_privacy: SitePrivacy
    def __init__(self, hello: _Optional[_Union[Hello, _Mapping]] = ..., node_joined: _Optional[_Union[NodeJoined, _Mapping]] = ..., node_left: _Optional[_Union[NodeLeft, _Mapping]] = ..., progress: _Optional[_Union[TaskProgress, _Mapping]] = ..., heartbeat: _Optional[_Union[Heartbeat, _Mapping]] = ..., roster_request: _Optional[_Union[RosterRequest, _Mapping]] = ..., site_privacy: _Optional[_Union[SitePrivacy, _Mapping]] = ...) -> None: ...

class SitePrivacy(_message.Message):
    __slots__ = ("node_id", "report", "participant", "display_name")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    REPORT_FIELD_NUMBER: _ClassVar[int]
    PARTICIPANT_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    node_id: int
    report: _selector_pb2.PrivacyReport
    participant: str
    display_name: str
    def __init__(self, node_id: _Optional[int] = ..., report: _Optional[_Union[_selector_pb2.PrivacyReport, _Mapping]] = ..., participant: _Optional[str] = ..., display_name: _Optional[str] = ...) -> None: ...

class RosterRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Hello(_message.Message):
    __slots__ = ("selector_id", "token", "nodes")
    SELECTOR_ID_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    NODES_FIELD_NUMBER: _ClassVar[int]
    selector_id: str
    token: str
    nodes: _containers.RepeatedCompositeFieldContainer[NodeJoined]
    def __init__(self, selector_id: _Optional[str] = ..., token: _Optional[str] = ..., nodes: _Optional[_Iterable[_Union[NodeJoined, _Mapping]]] = ...) -> None: ...

class NodeJoined(_message.Message):
    __slots__ = ("node_id", "display_name", "participant")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    PARTICIPANT_FIELD_NUMBER: _ClassVar[int]
    node_id: int
    display_name: str
    participant: str
    def __init__(self, node_id: _Optional[int] = ..., display_name: _Optional[str] = ..., participant: _Optional[str] = ...) -> None: ...

class NodeLeft(_message.Message):
    __slots__ = ("node_id", "reason")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    node_id: int
    reason: str
    def __init__(self, node_id: _Optional[int] = ..., reason: _Optional[str] = ...) -> None: ...

class TaskProgress(_message.Message):
    __slots__ = ("batch_id", "message_id", "ok", "detail")
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    OK_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    batch_id: str
    message_id: str
    ok: bool
    detail: str
    def __init__(self, batch_id: _Optional[str] = ..., message_id: _Optional[str] = ..., ok: _Optional[bool] = ..., detail: _Optional[str] = ...) -> None: ...

class Heartbeat(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class CoordinatorMessage(_message.Message):
    __slots__ = ("welcome", "instructions", "flush", "cancel", "finished", "participants")
    WELCOME_FIELD_NUMBER: _ClassVar[int]
    INSTRUCTIONS_FIELD_NUMBER: _ClassVar[int]
    FLUSH_FIELD_NUMBER: _ClassVar[int]
    CANCEL_FIELD_NUMBER: _ClassVar[int]
    FINISHED_FIELD_NUMBER: _ClassVar[int]
    PARTICIPANTS_FIELD_NUMBER: _ClassVar[int]
    welcome: Welcome
    instructions: Instructions
    flush: Flush
    cancel: Cancel
    finished: RunFinished
    participants: Participants
    def __init__(self, welcome: _Optional[_Union[Welcome, _Mapping]] = ..., instructions: _Optional[_Union[Instructions, _Mapping]] = ..., flush: _Optional[_Union[Flush, _Mapping]] = ..., cancel: _Optional[_Union[Cancel, _Mapping]] = ..., finished: _Optional[_Union[RunFinished, _Mapping]] = ..., participants: _Optional[_Union[Participants, _Mapping]] = ...) -> None: ...

class Participants(_message.Message):
    __slots__ = ("open", "allowed")
    OPEN_FIELD_NUMBER: _ClassVar[int]
    ALLOWED_FIELD_NUMBER: _ClassVar[int]
    open: bool
    allowed: _containers.RepeatedCompositeFieldContainer[AllowedParticipant]
    def __init__(self, open: _Optional[bool] = ..., allowed: _Optional[_Iterable[_Union[AllowedParticipant, _Mapping]]] = ...) -> None: ...

class AllowedParticipant(_message.Message):
    __slots__ = ("participant", "credential_sha256")
    PARTICIPANT_FIELD_NUMBER: _ClassVar[int]
    CREDENTIAL_SHA256_FIELD_NUMBER: _ClassVar[int]
    participant: str
    credential_sha256: str
    def __init__(self, participant: _Optional[str] = ..., credential_sha256: _Optional[str] = ...) -> None: ...

class Welcome(_message.Message):
    __slots__ = ("run_id", "fab_sha256", "fab_size", "run_config_json")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    FAB_SHA256_FIELD_NUMBER: _ClassVar[int]
    FAB_SIZE_FIELD_NUMBER: _ClassVar[int]
    RUN_CONFIG_JSON_FIELD_NUMBER: _ClassVar[int]
    run_id: int
    fab_sha256: str
    fab_size: int
    run_config_json: str
    def __init__(self, run_id: _Optional[int] = ..., fab_sha256: _Optional[str] = ..., fab_size: _Optional[int] = ..., run_config_json: _Optional[str] = ...) -> None: ...

class Instruction(_message.Message):
    __slots__ = ("message_id", "node_id", "metadata", "content_id", "content_size", "content_sha256")
    MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    CONTENT_ID_FIELD_NUMBER: _ClassVar[int]
    CONTENT_SIZE_FIELD_NUMBER: _ClassVar[int]
    CONTENT_SHA256_FIELD_NUMBER: _ClassVar[int]
    message_id: str
    node_id: int
    metadata: bytes
    content_id: str
    content_size: int
    content_sha256: str
    def __init__(self, message_id: _Optional[str] = ..., node_id: _Optional[int] = ..., metadata: _Optional[bytes] = ..., content_id: _Optional[str] = ..., content_size: _Optional[int] = ..., content_sha256: _Optional[str] = ...) -> None: ...

class Instructions(_message.Message):
    __slots__ = ("batch_id", "aggregation", "weight_key", "items", "deadline_seconds", "trace_context", "contents")
    class TraceContextEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    AGGREGATION_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_KEY_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    TRACE_CONTEXT_FIELD_NUMBER: _ClassVar[int]
    CONTENTS_FIELD_NUMBER: _ClassVar[int]
    batch_id: str
    aggregation: Aggregation
    weight_key: str
    items: _containers.RepeatedCompositeFieldContainer[Instruction]
    deadline_seconds: float
    trace_context: _containers.ScalarMap[str, str]
    contents: _containers.RepeatedCompositeFieldContainer[InlineContent]
    def __init__(self, batch_id: _Optional[str] = ..., aggregation: _Optional[_Union[Aggregation, str]] = ..., weight_key: _Optional[str] = ..., items: _Optional[_Iterable[_Union[Instruction, _Mapping]]] = ..., deadline_seconds: _Optional[float] = ..., trace_context: _Optional[_Mapping[str, str]] = ..., contents: _Optional[_Iterable[_Union[InlineContent, _Mapping]]] = ...) -> None: ...

class InlineContent(_message.Message):
    __slots__ = ("content_id", "data")
    CONTENT_ID_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    content_id: str
    data: bytes
    def __init__(self, content_id: _Optional[str] = ..., data: _Optional[bytes] = ...) -> None: ...

class Flush(_message.Message):
    __slots__ = ("batch_id",)
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    batch_id: str
    def __init__(self, batch_id: _Optional[str] = ...) -> None: ...

class RunFinished(_message.Message):
    __slots__ = ("reason", "status")
    REASON_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    reason: str
    status: RunStatus
    def __init__(self, reason: _Optional[str] = ..., status: _Optional[_Union[RunStatus, str]] = ...) -> None: ...

class Cancel(_message.Message):
    __slots__ = ("message_ids", "reason")
    MESSAGE_IDS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    message_ids: _containers.RepeatedScalarFieldContainer[str]
    reason: str
    def __init__(self, message_ids: _Optional[_Iterable[str]] = ..., reason: _Optional[str] = ...) -> None: ...

class PullContentRequest(_message.Message):
    __slots__ = ("selector_id", "token", "content_id")
    SELECTOR_ID_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    CONTENT_ID_FIELD_NUMBER: _ClassVar[int]
    selector_id: str
    token: str
    content_id: str
    def __init__(self, selector_id: _Optional[str] = ..., token: _Optional[str] = ..., content_id: _Optional[str] = ...) -> None: ...

class ResultHeader(_message.Message):
    __slots__ = ("selector_id", "token", "batch_id", "aggregation", "payload", "message_ids", "node_ids", "total_weight")
    SELECTOR_ID_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    AGGREGATION_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_IDS_FIELD_NUMBER: _ClassVar[int]
    NODE_IDS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    selector_id: str
    token: str
    batch_id: str
    aggregation: Aggregation
    payload: _payload_pb2.PayloadHeader
    message_ids: _containers.RepeatedScalarFieldContainer[str]
    node_ids: _containers.RepeatedScalarFieldContainer[int]
    total_weight: float
    def __init__(self, selector_id: _Optional[str] = ..., token: _Optional[str] = ..., batch_id: _Optional[str] = ..., aggregation: _Optional[_Union[Aggregation, str]] = ..., payload: _Optional[_Union[_payload_pb2.PayloadHeader, _Mapping]] = ..., message_ids: _Optional[_Iterable[str]] = ..., node_ids: _Optional[_Iterable[int]] = ..., total_weight: _Optional[float] = ...) -> None: ...

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
    __slots__ = ("selector_id", "token")
    SELECTOR_ID_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    selector_id: str
    token: str
    def __init__(self, selector_id: _Optional[str] = ..., token: _Optional[str] = ...) -> None: ...
