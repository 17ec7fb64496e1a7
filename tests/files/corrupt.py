"""Hand-made broken .safetensors files, shared by the reader tests and the CLI tests."""

from __future__ import annotations

import struct
from pathlib import Path


def _with_header(header: bytes, data: bytes = b"") -> bytes:
    return struct.pack("<Q", len(header)) + header + data


# case name -> (file bytes, the phrase the one-line error must contain)
CORRUPT: dict[str, tuple[bytes, str]] = {
    "empty": (b"", "empty file (0 bytes)"),
    "too_short": (b"\x10\x00\x00", "only 3 bytes, too short for a safetensors header"),
    # 2**62 bytes of header: a naive reader allocates that much and dies with MemoryError.
    "absurd_length": (struct.pack("<Q", 2**62) + b'{"a": 1}', "header length field says 4,611,686,018,427,387,904 bytes"),
    "garbage_header": (_with_header(b"\xff\xfe\x00\x9c garbage \xc3\x28"), "header is not UTF-8 text"),
    "bad_json": (_with_header(b'{"w": {"dtype": "F32", "shape": [1]'), "header is not valid JSON"),
    "json_not_a_header": (_with_header(b'{"w": [1, 2, 3]}', b"\x00" * 4),
                          "header is JSON but not a safetensors header (entry 'w' lacks dtype, shape or data_offsets)"),
    "json_list": (_with_header(b"[1, 2]"), "header is JSON but not a safetensors header (a JSON list, not an object)"),
    "truncated_data": (_with_header(b'{"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}', b"\x00" * 8),
                       "truncated: tensor 'w' ends at byte 16 of the data but the file holds 8"),
    "wrong_size": (_with_header(b'{"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 8]}}', b"\x00" * 8),
                   "entry 'w' spans 8 bytes, its shape and dtype need 16"),
    "unknown_dtype": (_with_header(b'{"w": {"dtype": "Q7", "shape": [1], "data_offsets": [0, 1]}}', b"\x00"),
                      "entry 'w' has unknown dtype 'Q7'"),
}

# The four cases every command must turn into one line naming the file.
CLI_CASES = ("garbage_header", "absurd_length", "bad_json", "empty")


def write_corrupt(path: Path, case: str) -> Path:
    """Write the bytes of `case` to `path` and return it."""
    path.write_bytes(CORRUPT[case][0])
    return path
