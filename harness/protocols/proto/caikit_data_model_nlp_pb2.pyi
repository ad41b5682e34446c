from collections.abc import Iterable as _Iterable
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar
from typing import Optional as _Optional
from typing import Union as _Union

from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper

from harness.protocols.proto import caikit_data_model_common_pb2 as _caikit_data_model_common_pb2

DESCRIPTOR: _descriptor.FileDescriptor

class FinishReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    NOT_FINISHED: _ClassVar[FinishReason]
    MAX_TOKENS: _ClassVar[FinishReason]
    EOS_TOKEN: _ClassVar[FinishReason]
    CANCELLED: _ClassVar[FinishReason]
    TIME_LIMIT: _ClassVar[FinishReason]
    STOP_SEQUENCE: _ClassVar[FinishReason]
    TOKEN_LIMIT: _ClassVar[FinishReason]
    ERROR: _ClassVar[FinishReason]

NOT_FINISHED: FinishReason
MAX_TOKENS: FinishReason
EOS_TOKEN: FinishReason
CANCELLED: FinishReason
TIME_LIMIT: FinishReason
STOP_SEQUENCE: FinishReason
TOKEN_LIMIT: FinishReason
ERROR: FinishReason

class GeneratedToken(_message.Message):
    __slots__ = ("text", "logprob", "rank")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    LOGPROB_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    text: str
    logprob: float
    rank: int
    def __init__(
        self, text: str | None = ..., logprob: float | None = ..., rank: int | None = ...
    ) -> None: ...

class TokenStreamDetails(_message.Message):
    __slots__ = ("finish_reason", "generated_tokens", "seed", "input_token_count")
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    GENERATED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    INPUT_TOKEN_COUNT_FIELD_NUMBER: _ClassVar[int]
    finish_reason: FinishReason
    generated_tokens: int
    seed: int
    input_token_count: int
    def __init__(
        self,
        finish_reason: FinishReason | str | None = ...,
        generated_tokens: int | None = ...,
        seed: int | None = ...,
        input_token_count: int | None = ...,
    ) -> None: ...

class GeneratedTextStreamResult(_message.Message):
    __slots__ = ("generated_text", "tokens", "details", "producer_id", "input_tokens")
    GENERATED_TEXT_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    DETAILS_FIELD_NUMBER: _ClassVar[int]
    PRODUCER_ID_FIELD_NUMBER: _ClassVar[int]
    INPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    generated_text: str
    tokens: _containers.RepeatedCompositeFieldContainer[GeneratedToken]
    details: TokenStreamDetails
    producer_id: _caikit_data_model_common_pb2.ProducerId
    input_tokens: _containers.RepeatedCompositeFieldContainer[GeneratedToken]
    def __init__(
        self,
        generated_text: str | None = ...,
        tokens: _Iterable[GeneratedToken | _Mapping] | None = ...,
        details: TokenStreamDetails | _Mapping | None = ...,
        producer_id: _caikit_data_model_common_pb2.ProducerId | _Mapping | None = ...,
        input_tokens: _Iterable[GeneratedToken | _Mapping] | None = ...,
    ) -> None: ...
