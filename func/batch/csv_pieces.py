"""A CSV input parsed in pieces on several threads, its record batches in input order.

pyarrow's streaming CSV reader parses on one thread whatever its options say, and its
whole-file reader holds the whole table. Here the file is cut into pieces of about
PIECE_BYTES at line ends, as pyarrow itself cuts blocks when values hold no newlines
(its default), and the pieces are parsed on a pool, a bounded number ahead of the one
being read. The first piece, with the header, fixes the columns and their types, as
the streaming reader's first block does.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

# 4 MB (~7k rows of 30 features): parsing a piece costs milliseconds, so a pool stays
# busy, and a few pieces per thread in memory stay a few MB each.
PIECE_BYTES = 4 << 20
# pyarrow parses a piece in blocks of this size and cannot parse a line longer than one;
# a file with no line end at all was read whole into memory before that was found out.
MAX_LINE_BYTES = 2 * PIECE_BYTES
_ROW = re.compile(r"Row #(\d+)")


def pieces(stream: Any, size: int = PIECE_BYTES) -> Iterator[memoryview]:
    """The stream's bytes in pieces of about `size` that end at a line end (the last one
    wherever the file ends); a line longer than `size` makes its piece longer, up to
    MAX_LINE_BYTES (LineTooLong past it).

    Each piece is read into its own buffer and handed on without a copy: this runs on the
    job's one thread, which no number of cores shortens (slicing and joining bytes cost
    that thread 0.07 s of its 0.5 s of CPU for 1M rows, 590 MB).
    """
    rest = b""
    offset = 0  # of `rest` in the stream
    while True:
        buffer = bytearray(len(rest) + size)
        buffer[: len(rest)] = rest
        filled = len(rest) + stream.readinto(memoryview(buffer)[len(rest) :])
        if filled == len(rest):
            if rest:
                yield memoryview(rest)
            return
        # `rest` holds no line end: only what was just read is searched.
        end = max(buffer.rfind(b"\n", len(rest), filled), buffer.rfind(b"\r", len(rest), filled)) + 1
        if not end and filled > MAX_LINE_BYTES:
            raise LineTooLong(
                f"no line end in the {filled / (1 << 20):.0f} MB from byte {offset}: a CSV line (a row) may be at "
                f"most {MAX_LINE_BYTES >> 20} MB; is the file CSV?"
            )
        rest = bytes(buffer[end:filled])
        if end:
            offset += end
            yield memoryview(buffer)[:end]


class LineTooLong(ValueError):
    """A line of the input longer than MAX_LINE_BYTES."""


def parse(piece: bytes | memoryview, convert_options: Any, column_names: list[str] | None = None) -> Any:
    """One piece as a table: the first, with the header, or a later one, whose columns are
    `column_names`."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    # One block per piece: its rows come out as one batch.
    read_options = pacsv.ReadOptions(use_threads=False, block_size=MAX_LINE_BYTES, column_names=column_names)
    return pacsv.read_csv(pa.py_buffer(piece), read_options=read_options, convert_options=convert_options)


def batches(
    first: Any, rest: Iterator[memoryview], pool: ThreadPoolExecutor, ahead: int, nulls: dict[str, Any]
) -> Iterator[Any]:
    """The record batches of `first`, the first piece's table, then of the `rest` of the
    pieces, parsed on `pool` with their columns and types, at most `ahead` of them parsing
    or parsed and waiting."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    schema = first.schema
    convert_options = pacsv.ConvertOptions(column_types=dict(zip(schema.names, schema.types)), **nulls)
    yield from first.to_batches()
    rows = first.num_rows
    parsing: deque[Future[Any]] = deque()
    while True:
        piece = next(rest, None)
        if piece is not None:
            parsing.append(pool.submit(parse, piece, convert_options, schema.names))
        if not parsing:
            return
        if piece is not None and len(parsing) < ahead:
            continue
        try:
            table = parsing.popleft().result()
        except pa.ArrowInvalid as exc:
            raise pa.ArrowInvalid(in_file(str(exc), rows)) from None
        yield from table.to_batches()
        rows += table.num_rows


def in_file(message: str, rows_before: int) -> str:
    """pyarrow's message about a piece, its "Row #n" counted in the file: the header is
    row 1, and empty lines do not count, as in pyarrow's own count over a whole file."""
    return _ROW.sub(lambda m: f"Row #{int(m.group(1)) + rows_before + 1}", message)
