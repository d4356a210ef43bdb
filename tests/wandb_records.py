"""Read an offline W&B run file (run-<id>.wandb): a LevelDB-style log of protobuf Records.

Format, as wandb writes it: a 7-byte header (":W&B", magic, version), then 32 KiB blocks of
chunks, each with a 7-byte header (crc32c, little-endian length, type FULL/FIRST/MIDDLE/LAST).
"""

from __future__ import annotations

import struct
from pathlib import Path

from wandb.proto import wandb_internal_pb2 as pb

HEADER, BLOCK, CHUNK_HEADER = 7, 32768, 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: Path):
    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B run file"
    pos, buffer = HEADER, b""
    while pos + CHUNK_HEADER <= len(data):
        left = BLOCK - pos % BLOCK
        if left < CHUNK_HEADER:
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + CHUNK_HEADER])
        if kind == 0:
            pos += left
            continue
        chunk = data[pos + CHUNK_HEADER : pos + CHUNK_HEADER + length]
        pos += CHUNK_HEADER + length
        if kind == FULL:
            yield _parse(chunk)
        elif kind == FIRST:
            buffer = chunk
        elif kind == MIDDLE:
            buffer += chunk
        elif kind == LAST:
            yield _parse(buffer + chunk)


def _parse(data: bytes) -> pb.Record:
    record = pb.Record()
    record.ParseFromString(data)
    return record


def history(path: Path) -> list[dict]:
    """Every logged history row as {key: value}."""
    import json

    rows = []
    for r in records(path):
        if r.WhichOneof("record_type") == "history":
            rows.append({item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in r.history.item})
    return rows


def exit_code(path: Path) -> int | None:
    for r in records(path):
        if r.WhichOneof("record_type") == "exit":
            return r.exit.exit_code
    return None
