"""Reads an offline W&B run file (``wandb/offline-run-*/run-*.wandb``) back: history, summary, config.

The file is W&B's record log: a 7-byte header, then LevelDB-log framed records (4-byte checksum, 2-byte
length, 1-byte type; 32 KiB blocks) each holding a ``wandb_internal_pb2.Record`` protobuf.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

BLOCK, HEADER = 32768, 7


def _payloads(data: bytes) -> list[bytes]:
    out, parts, pos = [], [], HEADER
    while pos + 7 <= len(data):
        left = BLOCK - pos % BLOCK
        if left < 7:
            pos += left
            continue
        length, kind = int.from_bytes(data[pos + 4 : pos + 6], "little"), data[pos + 6]
        if pos + 7 + length > len(data):  # the service is still appending this record: a torn read, not corruption
            break
        payload, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind == 1:
            out.append(payload)
        elif kind == 2:
            parts = [payload]
        elif kind == 3:
            parts.append(payload)
        elif kind == 4:
            out.append(b"".join([*parts, payload]))
    return out


def read_run(run_dir: Path, timeout: float = 30.0) -> dict:
    """The run's records, once W&B's service has written the run's ``exit`` record (it writes after
    ``finish()`` returns, so the file is re-read until then, up to ``timeout`` seconds)."""
    deadline = time.monotonic() + timeout
    while True:
        run = _read(run_dir)
        if run["exited"] or time.monotonic() > deadline:
            return run
        time.sleep(0.2)


def _read(run_dir: Path) -> dict:
    from wandb.proto import wandb_internal_pb2

    path = next(Path(run_dir).glob("run-*.wandb"))
    history, summary, config, exited = [], {}, {}, False
    for payload in _payloads(path.read_bytes()):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(payload)
        kind = record.WhichOneof("record_type")
        if kind == "history":
            history.append({_key(i): json.loads(i.value_json) for i in record.history.item})
        elif kind == "summary":
            summary.update({_key(i): json.loads(i.value_json) for i in record.summary.update})
        elif kind == "config":
            config.update({_key(i): json.loads(i.value_json) for i in record.config.update})
        elif kind == "exit":
            exited = True
    return {"history": history, "summary": summary, "config": config, "exited": exited}


def _key(item) -> str:
    return item.key or "/".join(item.nested_key)
