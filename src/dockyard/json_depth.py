"""The bound on how deeply a JSON document a client sends may nest, checked on its bytes before any parser sees it.

Python's `json` recurses once per level: a body nested a few thousand deep raised RecursionError (a 500, or a reset
connection where it escaped uvicorn), and one allowed through would fail again wherever it is serialized back
(`json.dumps` recurses too). `MAX_JSON_DEPTH` is 128, serde_json's default recursion limit: real inputs nest a
handful of levels (a chat's messages, a tensor's dimensions), and 128 stays well within Python's recursion limit,
pydantic's JSON parser's (200) and its serializer's (about 255), with room for the levels an answer wraps around
a job's input or output: what passes here parses and serializes anywhere in the server.
"""

from __future__ import annotations

import json
import re
from itertools import accumulate
from operator import add

MAX_JSON_DEPTH = 128

# A JSON string, escapes included (the unrolled form: no backtracking on long strings).
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKET = bytes(sorted(set(range(256)) - set(b"[]{}")))
_BITS = bytes.maketrans(b"[{]}", b"1100")  # an opening bracket is a 1, a closing one a 0


def _byte_walk(byte: int) -> tuple[int, int]:
    """The depth eight brackets (a byte's bits, the highest first) end at, and the highest they reach, from 0."""
    depth = highest = 0
    for bit in range(7, -1, -1):
        depth += 1 if byte >> bit & 1 else -1
        highest = max(highest, depth)
    return depth, highest


_WALKS = [_byte_walk(byte) for byte in range(256)]
_ENDS = [end for end, _ in _WALKS]
_HIGHS = [high for _, high in _WALKS]


def nesting_depth(body: bytes) -> int:
    """How deeply the JSON text `body` nests arrays and objects (0 for a scalar); brackets inside strings do not
    count. Text that is not JSON gets some number: the parser refuses it anyway.

    The brackets are packed eight to a byte and walked a byte at a time through a table, so the walk stays well
    below what `json.loads` takes for the same body, however many brackets it holds (bench/RESULTS.md, "The JSON
    depth check")."""
    encoding = json.detect_encoding(body)
    if encoding != "utf-8":  # UTF-16 or -32, which json.loads reads too
        body = body.decode(encoding, errors="replace").encode()
    brackets = _STRING.sub(b"", body).translate(_BITS, _NOT_BRACKET)
    if not brackets:
        return 0
    brackets += b"0" * (-len(brackets) % 8)  # closing brackets at the end reach no new depth
    packed = int(brackets, 2).to_bytes(len(brackets) // 8, "big")
    starts = accumulate(map(_ENDS.__getitem__, packed), initial=0)  # the depth each byte's walk starts at
    highest: int = max(map(add, starts, map(_HIGHS.__getitem__, packed)))
    return highest


def too_deep(body: bytes) -> bool:
    """Whether `body` nests deeper than `MAX_JSON_DEPTH`. A body with no more opening brackets than that cannot,
    and is answered by two counts, without a scan: a job's input on the `run` path is such a body."""
    if body.count(b"[") + body.count(b"{") <= MAX_JSON_DEPTH:
        return False
    return nesting_depth(body) > MAX_JSON_DEPTH


def too_deep_message(what: str = "the body") -> str:
    return f"{what} nests JSON arrays and objects deeper than {MAX_JSON_DEPTH} levels; send a flatter document"
