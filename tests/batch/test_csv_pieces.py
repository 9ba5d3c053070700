"""func/batch/csv_pieces.py's cutting of a stream at line ends, on streams of its own."""

from __future__ import annotations

import io

import pytest

from func.batch.csv_pieces import MAX_LINE_BYTES, LineTooLong, pieces


class Endless(io.RawIOBase):
    """A stream of one byte repeated without end, counting what was read of it."""

    def __init__(self, byte: bytes):
        self.byte, self.read_bytes = byte, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        view = memoryview(buffer).cast("B")
        view[:] = self.byte * len(view)
        self.read_bytes += len(view)
        return len(view)


def test_a_stream_with_no_line_end_stops_at_the_limit_not_at_its_end():
    stream = Endless(b"x")
    with pytest.raises(LineTooLong, match=f"no line end in the .* from byte 0: .* at most {MAX_LINE_BYTES >> 20} MB"):
        for _ in pieces(stream, size=1 << 20):
            pass
    assert stream.read_bytes <= MAX_LINE_BYTES + (1 << 20)


def test_the_limit_names_where_the_long_line_starts():
    head = b"a,b\n1,2\n"
    stream = io.BufferedReader(io.BytesIO(head + b"x" * (MAX_LINE_BYTES + 10)))  # type: ignore[arg-type]
    cut = pieces(stream, size=1 << 20)
    assert bytes(next(cut)) == head
    with pytest.raises(LineTooLong, match=f"from byte {len(head)}:"):
        next(cut)


@pytest.mark.parametrize("end", [b"\n", b"\r\n", b"\r"])
def test_pieces_end_at_line_ends_and_join_to_the_stream(end):
    lines = [b"%d,%s" % (i, b"v" * (i % 50)) for i in range(20_000)]
    data = end.join(lines) + end
    got = [bytes(piece) for piece in pieces(io.BytesIO(data), size=4096)]
    assert b"".join(got) == data
    # "\r\n" may be cut between its two bytes: the next piece starts with an empty line.
    assert all(piece.endswith((b"\r", b"\n")) for piece in got)
    assert max(map(len, got)) < 4096 + 60


def test_a_line_longer_than_a_piece_makes_its_piece_longer():
    data = b"a\n" + b"y" * 10_000 + b"\nb\n"
    got = [bytes(piece) for piece in pieces(io.BytesIO(data), size=4096)]
    assert b"".join(got) == data and any(len(piece) > 10_000 for piece in got)
