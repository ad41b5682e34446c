from typing import ClassVar as _ClassVar
from typing import Optional as _Optional

from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message

DESCRIPTOR: _descriptor.FileDescriptor

class ExponentialDecayLengthPenalty(_message.Message):
    __slots__ = ("start_index", "decay_factor")
    START_INDEX_FIELD_NUMBER: _ClassVar[int]
    DECAY_FACTOR_FIELD_NUMBER: _ClassVar[int]
    start_index: int
    decay_factor: float
    def __init__(self, start_index: int | None = ..., decay_factor: float | None = ...) -> None: ...
