"""Streaming JSON: the top-level arrays of a COCO file, one element at a time."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from typing import Any

from .base import BadInputError

logger = logging.getLogger(__name__)

# Streaming JSON: the top-level arrays of a COCO file, one element at a time

_WS = re.compile(r"[ \t\n\r]*")


class _JsonStream:
    """Decode a JSON document from a text file piece by piece (``json.JSONDecoder.raw_decode`` on a
    sliding buffer), so the elements of a several-GB top-level array are never all in memory."""

    def __init__(self, f, name: str, chunk_chars: int = 1 << 20) -> None:
        self.f, self.name, self.chunk = f, name, chunk_chars
        self.buf, self.pos, self.eof, self.dropped = "", 0, False, 0
        self.decoder = json.JSONDecoder()

    def _fill(self) -> bool:
        if self.eof:
            return False
        data = self.f.read(self.chunk)
        if not data:
            self.eof = True
            return False
        self.dropped += self.pos
        self.buf = self.buf[self.pos:] + data
        self.pos = 0
        return True

    def error(self, what: str) -> BadInputError:
        return BadInputError(f"{self.name!r} is not valid JSON: {what} (character {self.dropped + self.pos})")

    def peek(self) -> str:
        """The next non-whitespace character ("" at the end of the file), not consumed."""
        while True:
            self.pos = _WS.match(self.buf, self.pos).end()
            if self.pos < len(self.buf):
                return self.buf[self.pos]
            if not self._fill():
                return ""

    def expect(self, chars: str) -> str:
        c = self.peek()
        if not c or c not in chars:
            raise self.error(f"expected one of {list(chars)}, got {c or 'the end of the file'!r}")
        self.pos += 1
        return c

    def value(self) -> Any:
        self.peek()
        while True:
            try:
                obj, end = self.decoder.raw_decode(self.buf, self.pos)
            except json.JSONDecodeError as err:
                if self._fill():  # the value may continue in the next chunk
                    continue
                self.pos = err.pos
                raise self.error(err.msg) from err
            if isinstance(obj, (int, float)) and not isinstance(obj, bool) and not self.eof:
                # a number cut by the buffer's end decodes as a shorter number: decode it again
                # once a delimiter follows it
                after = _WS.match(self.buf, end).end()
                if after >= len(self.buf) or self.buf[after] not in ",]}:":
                    if self._fill():
                        continue
            self.pos = end
            return obj

    def _elements(self, callback: Callable[[Any], None] | None) -> None:
        """The elements of an array up to its ``]`` (the ``[`` is consumed)."""
        decode = self.decoder.raw_decode
        while True:
            buf, pos = self.buf, self.pos
            # fast path (compact JSON): an element followed, inside the buffer, by its delimiter
            if pos < len(buf) and buf[pos] not in " \t\n\r":
                try:
                    element, end = decode(buf, pos)
                except json.JSONDecodeError:
                    end = len(buf)
                if end < len(buf) and buf[end] in ",]":
                    self.pos = end + 1
                    if callback is not None:
                        callback(element)
                    if buf[end] == "]":
                        return
                    continue
            element = self.value()
            if callback is not None:
                callback(element)
            if self.expect(",]") == "]":
                return

    def walk_object(self, on_key: Callable[[str], Callable[[Any], None] | None]) -> dict[str, str]:
        """Walk the top-level object. For each key, ``on_key(key)`` returns a callback for the
        elements of an array value (or ``None``: the value is decoded and dropped). Returns
        ``{key: type of its value}`` ("list" for arrays)."""
        kinds: dict[str, str] = {}
        self.expect("{")
        if self.peek() == "}":
            self.pos += 1
        else:
            while True:
                key = self.value()
                if not isinstance(key, str):
                    raise self.error(f"object keys must be strings, got {key!r}")
                self.expect(":")
                callback = on_key(key)
                if self.peek() == "[":
                    self.pos += 1
                    kinds[key] = "list"
                    if self.peek() == "]":
                        self.pos += 1
                    else:
                        self._elements(callback)
                else:
                    kinds[key] = type(self.value()).__name__
                if self.expect(",}") == "}":
                    break
        if self.peek():
            raise self.error("extra data after the top-level object")
        return kinds
