"""Conversions between domain values and protobuf well-known types."""

from __future__ import annotations

from datetime import datetime

from google.protobuf import timestamp_pb2

__all__ = ["timestamp_of"]


def timestamp_of(moment: datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(moment)
    return stamp
