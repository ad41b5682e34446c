from collections.abc import Iterable as _Iterable
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar
from typing import Optional as _Optional
from typing import Union as _Union

from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from google.protobuf.internal import containers as _containers

from harness.protocols.proto import caikit_data_model_caikit_nlp_pb2 as _caikit_data_model_caikit_nlp_pb2
from harness.protocols.proto import caikit_data_model_nlp_pb2 as _caikit_data_model_nlp_pb2

DESCRIPTOR: _descriptor.FileDescriptor

class ServerStreamingTextGenerationTaskRequest(_message.Message):
    __slots__ = (
        "text",
        "max_new_tokens",
        "min_new_tokens",
        "truncate_input_tokens",
        "decoding_method",
        "top_k",
        "top_p",
        "typical_p",
        "temperature",
        "repetition_penalty",
        "max_time",
        "exponential_decay_length_penalty",
        "stop_sequences",
        "seed",
        "preserve_input_text",
        "input_tokens",
        "generated_tokens",
        "token_logprobs",
        "token_ranks",
        "include_stop_sequence",
    )
    TEXT_FIELD_NUMBER: _ClassVar[int]
    MAX_NEW_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MIN_NEW_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TRUNCATE_INPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    DECODING_METHOD_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    TOP_P_FIELD_NUMBER: _ClassVar[int]
    TYPICAL_P_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    REPETITION_PENALTY_FIELD_NUMBER: _ClassVar[int]
    MAX_TIME_FIELD_NUMBER: _ClassVar[int]
    EXPONENTIAL_DECAY_LENGTH_PENALTY_FIELD_NUMBER: _ClassVar[int]
    STOP_SEQUENCES_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    PRESERVE_INPUT_TEXT_FIELD_NUMBER: _ClassVar[int]
    INPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    GENERATED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TOKEN_LOGPROBS_FIELD_NUMBER: _ClassVar[int]
    TOKEN_RANKS_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_STOP_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    text: str
    max_new_tokens: int
    min_new_tokens: int
    truncate_input_tokens: int
    decoding_method: str
    top_k: int
    top_p: float
    typical_p: float
    temperature: float
    repetition_penalty: float
    max_time: float
    exponential_decay_length_penalty: _caikit_data_model_caikit_nlp_pb2.ExponentialDecayLengthPenalty
    stop_sequences: _containers.RepeatedScalarFieldContainer[str]
    seed: int
    preserve_input_text: bool
    input_tokens: bool
    generated_tokens: bool
    token_logprobs: bool
    token_ranks: bool
    include_stop_sequence: bool
    def __init__(
        self,
        text: str | None = ...,
        max_new_tokens: int | None = ...,
        min_new_tokens: int | None = ...,
        truncate_input_tokens: int | None = ...,
        decoding_method: str | None = ...,
        top_k: int | None = ...,
        top_p: float | None = ...,
        typical_p: float | None = ...,
        temperature: float | None = ...,
        repetition_penalty: float | None = ...,
        max_time: float | None = ...,
        exponential_decay_length_penalty: _caikit_data_model_caikit_nlp_pb2.ExponentialDecayLengthPenalty
        | _Mapping
        | None = ...,
        stop_sequences: _Iterable[str] | None = ...,
        seed: int | None = ...,
        preserve_input_text: bool | None = ...,
        input_tokens: bool | None = ...,
        generated_tokens: bool | None = ...,
        token_logprobs: bool | None = ...,
        token_ranks: bool | None = ...,
        include_stop_sequence: bool | None = ...,
    ) -> None: ...
