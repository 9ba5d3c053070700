"""Batch jobs: read a table in chunks, predict each chunk, write the output atomically.

Input and output are URIs opened through fsspec (local paths and file:// always; s3://,
gs://, http(s):// when their backend package is installed). Only URIs under a BATCH_ALLOW
prefix are touched, after `..` and symbolic links are resolved. The output is written to
a temporary name beside it and renamed into place when complete (func/batch/partials.py), so a
job killed half-way leaves nothing under the output name and a re-delivered job, even one
delivered twice at once, leaves exactly one complete output.
"""

from __future__ import annotations

import datetime
import errno
import logging
import os
import posixpath
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import orjson

from ..codecs import rows as codecs
from ..errors import Forbidden, InsufficientStorage, InvalidInput
from ..model.card import ModelCard
from ..model.runtime import Model, Prediction
from . import csv_pieces, parquet_readers, partials
from .columns import arrow_array, column_values, numbered_ids
from .local_files import LocalFiles

# (the chunk's first row in the job, its rows, their predictions)
Observe = Callable[[int, np.ndarray, Prediction], None]

FORMATS = ("csv", "jsonl", "parquet")
_EXTENSIONS = {
    ".csv": "csv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
    ".parquet": "parquet",
    ".pq": "parquet",
}
# Parquet rows per chunk. A job holds INFERENCE_THREADS + 1 chunks in flight: 16k rows of
# 30 float64 features is 4 MB, so even 16 threads hold little, and per-chunk overhead still
# vanishes next to inference (1M rows on 2 threads: 2.48 s of CPU as with 64k-row chunks;
# peak RSS 350 MB against 454 MB, and 480 MB against 722 MB on 8 threads).
CHUNK_ROWS = 16_384
# pyarrow's CSV and JSON readers work in blocks of bytes, not rows. 1 MB (~4k rows of 30
# features) keeps peak memory flat: with 8 MB blocks the allocator's footprint grew with
# the input (183 MB at 100k rows, 431 MB at 1M), with 1 MB it stays ~110 MB.
TEXT_BLOCK_BYTES = 1 << 20
# Parquet: read column chunks through a 1 MB buffer instead of whole row groups, which
# writers make as large as 1M rows.
PARQUET_BUFFER_BYTES = 1 << 20

log = logging.getLogger("warmstart.batch")


@dataclass(frozen=True)
class BatchJob:
    input: str
    output: str
    format: str | None = None

    @classmethod
    def from_event_data(cls, data: Any) -> BatchJob:
        """Validate a warmstart.batch.v1 event's data: {"input", "output", "format"?}."""
        if not isinstance(data, dict):
            raise InvalidInput('event data: expected an object {"input": URI, "output": URI, "format": ...}')
        for key in ("input", "output"):
            if not isinstance(data.get(key), str) or not data[key]:
                raise InvalidInput(f"event data: {key!r} must be a non-empty URI string")
            if "\x00" in data[key]:
                raise InvalidInput(f"event data: {key!r} holds a NUL character, which no path or URL may hold")
        fmt = data.get("format")
        if fmt is not None and fmt not in FORMATS:
            raise InvalidInput(f"event data: format {codecs.short(fmt)} is not one of {', '.join(FORMATS)}")
        return cls(data["input"], data["output"], fmt)

    def formats(self) -> tuple[str, str]:
        """(input format, output format): `format` or the input's extension; the output's
        own extension, else the input format."""
        input_format = self.format or _format_from_extension(self.input, "input")
        return input_format, _format_from_extension(self.output, "output", default=input_format)


def _format_from_extension(uri: str, field: str, default: str | None = None) -> str:
    ext = posixpath.splitext(urlsplit(uri).path)[1].lower()
    if ext in _EXTENSIONS:
        return _EXTENSIONS[ext]
    if default is not None:
        return default
    raise InvalidInput(
        f"event data: cannot tell the format of {field} {uri!r} from its extension; "
        f'set "format" to one of {", ".join(FORMATS)}'
    )


def resolve_allowed(uri: str, allow: tuple[str, ...], field: str) -> str:
    """The URI with `..` and links resolved, if it lies under an allowed prefix; else 403."""
    resolved = _resolve(uri)
    for prefix in allow:
        root = _resolve(prefix)
        if resolved == root or resolved.startswith(root.rstrip("/") + "/"):
            return resolved
    # The caller learns which input broke which rule; where the server's files live and
    # what it allows are the operator's business, so they go to the log only.
    log.warning("batch %s %r resolves to %r, outside BATCH_ALLOW=%s", field, uri, resolved, ",".join(allow))
    raise Forbidden(f"{field} {uri!r} is outside BATCH_ALLOW, the locations this function may read and write")


def _resolve(uri: str) -> str:
    parts = urlsplit(uri)
    if parts.scheme in ("", "file"):
        path = parts.path if parts.scheme == "file" else uri
        return os.path.realpath(path)
    # posixpath keeps a leading "//" (POSIX leaves its meaning open), which made every
    # s3://bucket/key "bucket//key", an object no store holds.
    return f"{parts.scheme}://{parts.netloc}{posixpath.normpath('/' + parts.path.lstrip('/'))}"


def run_job(
    job: BatchJob,
    model: Model,
    allow: tuple[str, ...],
    job_id: str,
    observe: Observe | None = None,
    progress_s: float = 5.0,
    prediction_id: str | None = None,
    threads: int = 1,
) -> dict[str, Any]:
    """Run a batch job on `threads` threads (INFERENCE_THREADS: the CPUs the pod may use)
    and return the completion event's data; `observe` sees each chunk's rows and
    predictions, in input order (drift and the prediction log take a sample of them). The
    log says when the job starts, every `progress_s` seconds how far it is, and how it
    ended. With `prediction_id`, the output has a `prediction_id` column: `<id>/<r>` for
    row r."""
    started = time.perf_counter()
    log.info("batch job %s started: %s -> %s", job_id, job.input, job.output)
    progress = _Progress(job_id, started, progress_s)
    try:
        result = _run(job, model, allow, job_id, observe, progress, prediction_id, threads)
    except Exception as exc:
        log.warning(
            "batch job %s failed after %d rows in %.2f s: %s",
            job_id,
            progress.rows,
            time.perf_counter() - started,
            getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}",
        )
        raise
    log.info(
        "batch job %s completed: %d rows in %.2f s (%.0f rows/s) -> %s",
        job_id,
        result["rows"],
        result["duration_s"],
        result["rows"] / max(result["duration_s"], 1e-3),
        job.output,
    )
    return result


class _Progress:
    """Rows written so far, logged every `every_s` seconds of a long job."""

    def __init__(self, job_id: str, started: float, every_s: float) -> None:
        self.job_id, self.started, self.every_s = job_id, started, every_s
        self.rows = 0
        self._next = started + every_s

    def add(self, rows: int) -> None:
        self.rows += rows
        now = time.perf_counter()
        if now >= self._next:
            self._next = now + self.every_s
            seconds = now - self.started
            log.info(
                "batch job %s: %d rows in %.1f s (%.0f rows/s)",
                self.job_id,
                self.rows,
                seconds,
                self.rows / max(seconds, 1e-3),
            )


def _run(
    job: BatchJob,
    model: Model,
    allow: tuple[str, ...],
    job_id: str,
    observe: Observe | None,
    progress: _Progress,
    prediction_id: str | None,
    threads: int,
) -> dict[str, Any]:
    started = progress.started
    source = resolve_allowed(job.input, allow, "input")
    target = resolve_allowed(job.output, allow, "output")
    if target == source:
        raise InvalidInput(f"output {job.output!r} is the input; name another file, so the input survives the job")
    input_format, output_format = job.formats()
    in_fs, in_path = _filesystem(source, job.input, "input")
    out_fs, out_path = _filesystem(target, job.output, "output")
    if not in_fs.isfile(in_path):
        raise InvalidInput(f"input {job.input!r}: no such file")
    # "data/scored/" names a folder even where none exists yet: the resolved path has
    # lost its trailing '/', and a file named data/scored would be written.
    if out_fs.isdir(out_path) or posixpath.basename(urlsplit(job.output).path) in ("", ".", ".."):
        raise InvalidInput(f"output {job.output!r} is a folder; name a file in it")
    if not out_fs.isdir(posixpath.dirname(out_path)):
        raise InvalidInput(f"output {job.output!r}: its folder does not exist")

    rows = 0
    try:
        with partials.partial_file(out_fs, out_path, job_id) as partial:
            with in_fs.open(in_path, "rb") as reader, out_fs.open(partial, "wb") as sink:
                writer = _writer(output_format, sink)
                pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="batch")
                try:
                    chunks = _read_chunks(
                        reader,
                        input_format,
                        job.input,
                        model.card.feature_names,
                        lambda schema: _check_columns(schema, model.card, output_format, job.input),
                        pool,
                        threads + 1,
                        lambda: in_fs.open(in_path, "rb"),
                        parquet_readers.readers_for(threads),
                    )
                    rows = _predict_all(
                        chunks, model, job.input, writer, pool, threads + 1, observe, progress.add, prediction_id
                    )
                finally:
                    chunks.close()  # its readers' threads and files, before the input closes
                    pool.shutdown(cancel_futures=True)
                    writer.close()
            out_fs.mv(partial, out_path)
    except OSError as exc:
        raise _output_error(exc, job.output, posixpath.dirname(out_path)) from None
    return {
        "input": job.input,
        "output": job.output,
        "rows": rows,
        "duration_s": round(time.perf_counter() - started, 3),
        "model": {"name": model.card.name, "version": model.card.version},
    }


def _output_error(exc: OSError, output: str, folder: str) -> Exception:
    """What a full or read-only output location means for the job (the partial file is
    gone by now): 507, which Knative retries (another pod, or later, may have room), or
    422, which it does not (the job must name another place). Anything else as it was."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return InsufficientStorage(f"output {output!r}: no space left on its file system; nothing was written")
    in_output = exc.filename is None or str(exc.filename).startswith(folder)
    if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM) and in_output:
        return InvalidInput(f"output {output!r}: its folder is not writable ({exc.strerror}); nothing was written")
    return exc


def _predict_all(
    chunks: Iterator[Any],
    model: Model,
    uri: str,
    writer: Any,
    pool: ThreadPoolExecutor,
    ahead: int,
    observe: Observe | None,
    written: Callable[[int], None],
    prediction_id: str | None,
) -> int:
    """Predict and write every chunk, in input order, telling `written` each chunk's rows;
    returns the row count.

    Chunks are predicted on the pool, one onnxruntime thread each, while this thread reads
    and decodes the next ones (pyarrow and onnxruntime both release the GIL); at most
    `ahead` chunks wait or run there, so memory stays flat. Several one-thread calls in
    flight beat one call on every core, whose pool threads spin and wait on the slowest:
    on 2 cores (busy ones), 1M rows of Parquet took 1.9 s and 3.0 s of CPU with one call
    at a time on both cores, 1.4 s and 2.1 s of CPU with two one-thread calls in flight.

    The output is written on a thread of its own, in input order. Decoding and writing
    are each serial (Parquet encodes and compresses as it writes); on this thread in
    turn, they were the wall of a pod with cores to spare: 0.28 s of this thread's CPU per
    1M rows of Parquet, against 0.11 s for a CSV, whose pieces parse on the pool.
    """
    rows = 0
    writing: deque[Future[None]] = deque()  # each chunk's write, in input order
    output = ThreadPoolExecutor(max_workers=1, thread_name_prefix="batch-write")
    try:
        while True:
            try:
                chunk = next(chunks, None)
            except BaseException:
                # A bad row in a chunk being predicted comes before whatever went wrong
                # reading a later one: report the first problem in the file.
                for pending in writing:
                    if pending.exception() is not None:
                        raise pending.exception() from None
                raise
            if chunk is None:
                break
            predicted = pool.submit(_predict_chunk, chunk, model, uri, rows, prediction_id, writer.encode)
            writing.append(output.submit(_write, writer, rows, predicted, observe, written))
            rows += chunk.num_rows
            if len(writing) >= ahead:
                writing.popleft().result()
        while writing:
            writing.popleft().result()
    finally:
        # A failed job starts no more writes; the writer is closed after the one under way.
        output.shutdown(cancel_futures=True)
    return rows


def _write(
    writer: Any, first_row: int, predicted: Future[Any], observe: Observe | None, written: Callable[[int], None]
) -> None:
    encoded, rows, prediction = predicted.result()
    if observe is not None:
        observe(first_row, rows, prediction)
    writer.write(encoded)
    written(len(rows))


def _filesystem(resolved: str, uri: str, field: str) -> tuple[Any, str]:
    """The filesystem and path for `resolved`: a local path's own, else fsspec's; messages
    name `uri`, as the job gave it."""
    if not urlsplit(resolved).scheme:
        return LocalFiles(), resolved  # _resolve made file:// URIs paths
    import fsspec

    try:
        return fsspec.core.url_to_fs(resolved)
    except ImportError as exc:
        raise InvalidInput(f"{field} {uri!r}: this scheme needs a package that is not installed ({exc})") from None
    except ValueError as exc:
        raise InvalidInput(f"{field} {uri!r}: {exc}") from None


def _read_chunks(
    stream: Any,
    fmt: str,
    uri: str,
    features: tuple[str, ...] | list[str],
    check: Callable[[Any], None],
    pool: ThreadPoolExecutor,
    ahead: int,
    reopen: Callable[[], Any],
    readers: int,
) -> Iterator[Any]:
    """Record batches of the input, whatever its format, decoded with pyarrow (a CSV on
    `pool`, at most `ahead` pieces ahead; a Parquet file by `readers` readers, those past
    the first on files `reopen` opens); `check` sees the input's schema before the first
    batch is predicted."""
    import pyarrow as pa

    try:
        if fmt == "csv":
            batches, schema = _csv_batches(stream, features, pool, ahead)
        elif fmt == "jsonl":
            import pyarrow.json as pajson

            try:
                reader = pajson.open_json(stream, read_options=pajson.ReadOptions(block_size=TEXT_BLOCK_BYTES))
            except pa.ArrowInvalid as exc:
                if "Empty JSON" in str(exc):
                    return  # no lines in, no lines out
                raise
            batches, schema = iter(reader), reader.schema
        else:
            import pyarrow.parquet as pq

            parquet = pq.ParquetFile(stream, buffer_size=PARQUET_BUFFER_BYTES, pre_buffer=False)
            # Decoded on this thread, or on a few readers where cores are many
            # (func/batch/parquet_readers.py): the pool's threads keep the cores busy
            # predicting, and arrow's own threads beside them cost more CPU than they
            # save (1M rows, a fresh process: 0.18 s of CPU against 0.39 s).
            batches = parquet_readers.batches(parquet, reopen, readers, CHUNK_ROWS, PARQUET_BUFFER_BYTES)
            schema = parquet.schema_arrow
        check(schema)
        empty = True
        for batch in batches:
            empty = False
            yield batch
        if empty:
            # A header-only CSV or a Parquet file of no rows still gets an output with its
            # columns (a Parquet file of no bytes is not a Parquet file).
            yield pa.RecordBatch.from_pylist([], schema=schema)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as exc:
        raise InvalidInput(f"input {uri!r}: cannot read it as {fmt}: {str(exc).splitlines()[0]}") from None
    except csv_pieces.LineTooLong as exc:
        raise InvalidInput(f"input {uri!r}: {exc}") from None


def _check_columns(schema: Any, card: ModelCard, output_format: str, uri: str) -> None:
    """The input's columns, before any row is predicted: each named once, in UTF-8 text;
    none named like a column the output adds (it would be overwritten); and the columns
    that pass through to the output of types the output format can hold."""
    names = []
    for i in range(len(schema)):
        try:
            names.append(schema.field(i).name)
        except UnicodeDecodeError as exc:
            raise InvalidInput(
                f"input {uri!r}: the name of column {i} is not UTF-8 text (byte {exc.object[exc.start]:#x} "
                f"at position {exc.start}); save the file as UTF-8"
            ) from None
    first: dict[str, int] = {}
    for i, name in enumerate(names):
        if name in first:
            raise InvalidInput(
                f"input {uri!r}: column {name!r} appears twice (columns {first[name]} and {i}); name each column once"
            )
        first[name] = i
    features = set(card.feature_names)
    for i, name in enumerate(names):
        if name in features:
            continue
        if _added_column(name, card):
            raise InvalidInput(
                f"input {uri!r}: column {name!r} has the name of a column the output adds, and would be "
                "overwritten; rename it"
            )
        kind = schema.field(i).type
        if not _holds(output_format, kind):
            raise InvalidInput(
                f"input {uri!r}: column {name!r} is of type {kind}, which a {output_format} output cannot hold; "
                "drop the column or write a Parquet output"
            )


def _added_column(name: str, card: ModelCard) -> bool:
    """Whether the output adds a column of this name: `prediction`, and a classifier's
    probability_<class> (probability_0, probability_1, ... where the card names no classes)."""
    if name == "prediction":
        return True
    if not card.is_classifier or not name.startswith("probability_"):
        return False
    suffix = name.removeprefix("probability_")
    return suffix in {str(label) for label in card.class_labels} if card.class_labels else suffix.isdigit()


def _holds(fmt: str, kind: Any) -> bool:
    """Whether an output of format `fmt` can hold a column of arrow type `kind`: Parquet
    any; CSV text, numbers, booleans and times, but no nested values and no bytes (which
    need not be text); JSON lines what JSON has a form for, nested or not, but no bytes,
    decimals or durations."""
    import pyarrow as pa

    t = pa.types
    if t.is_dictionary(kind):
        return _holds(fmt, kind.value_type)
    if fmt == "parquet":
        return True
    simple = (t.is_null, t.is_boolean, t.is_integer, t.is_floating, t.is_string, t.is_large_string, t.is_temporal)
    if any(test(kind) for test in simple) and not t.is_interval(kind):
        return fmt == "csv" or not t.is_duration(kind)
    if fmt == "csv":
        return t.is_decimal(kind)
    if t.is_list(kind) or t.is_large_list(kind) or t.is_fixed_size_list(kind):
        return _holds(fmt, kind.value_type)
    if t.is_struct(kind):
        return all(_holds(fmt, kind.field(i).type) for i in range(kind.num_fields))
    if t.is_map(kind):
        return _holds(fmt, kind.key_type) and _holds(fmt, kind.item_type)
    return t.is_string_view(kind)


def _csv_batches(
    stream: Any, features: tuple[str, ...] | list[str], pool: ThreadPoolExecutor, ahead: int
) -> tuple[Iterator[Any], Any]:
    """CSV record batches with the feature columns read as float64, parsed on the pool
    (func/batch/csv_pieces.py).

    Declaring the types parses 1.7x faster than letting pyarrow infer them (0.58 s
    against 0.97 s for 1M rows of 30 features), and a column whose first piece holds
    only integers no longer fails on a later "1.5". When the first piece has a feature
    column that is not numbers (text, true/false), the file is read again, on this
    thread, with inferred types, so such files read as before and bad values get the
    usual message.
    """
    import pyarrow as pa
    import pyarrow.csv as pacsv

    # Only an empty cell is missing: pyarrow would also read "nan", "NA" or "NULL" as
    # null, and a message would then call a cell holding "nan" empty.
    nulls = {"null_values": [""], "strings_can_be_null": True}
    typed = pacsv.ConvertOptions(column_types={name: pa.float64() for name in features}, **nulls)
    cut = csv_pieces.pieces(stream)
    try:
        first = csv_pieces.parse(next(cut, b""), typed)
    except pa.ArrowInvalid:
        stream.seek(0)
        read_options = pacsv.ReadOptions(block_size=TEXT_BLOCK_BYTES)
        reader = pacsv.open_csv(stream, read_options=read_options, convert_options=pacsv.ConvertOptions(**nulls))
        return iter(reader), reader.schema
    return csv_pieces.batches(first, cut, pool, ahead, nulls), first.schema


def _predict_chunk(
    chunk: Any,
    model: Model,
    uri: str,
    first_row: int,
    prediction_id: str | None,
    encode: Callable[[Any], Any],
) -> tuple[Any, np.ndarray, Prediction]:
    """Predict a record batch: (the output batch as `encode` makes it, the rows, their
    predictions). The output keeps every non-feature column (ids, keys) and adds `prediction_id` (when the job has
    one), `prediction` and, for classifiers, one `probability_<class>` per class."""
    import pyarrow as pa

    card = model.card
    names = chunk.schema.names
    columns = {name: column_values(chunk.column(i)) for i, name in enumerate(names) if name in card.feature_names}
    rows = codecs.rows_from_columns(columns, names, card, f"input {uri!r}", first_row)
    prediction = model.predict(rows, one_thread=True)
    features = set(card.feature_names)
    out = {name: chunk.column(i) for i, name in enumerate(names) if name not in features}
    if prediction_id is not None:
        out["prediction_id"] = numbered_ids(f"{prediction_id}/", first_row, len(rows))
    out["prediction"] = arrow_array(np.asarray(prediction.labels))
    if prediction.probabilities is not None:
        for j, label in enumerate(card.class_labels or range(prediction.probabilities.shape[1])):
            out[f"probability_{label}"] = arrow_array(prediction.probabilities[:, j])
    return encode(pa.RecordBatch.from_arrays(list(out.values()), names=list(out))), rows, prediction


class _JsonLinesWriter:
    """JSON lines, encoded on the pool; the job's thread only writes the bytes."""

    def __init__(self, sink: Any) -> None:
        self.sink = sink

    def encode(self, batch: Any) -> bytes:
        option = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_APPEND_NEWLINE
        return b"".join(orjson.dumps(row, default=_iso_time, option=option) for row in batch.to_pylist())

    def write(self, encoded: bytes) -> None:
        self.sink.write(encoded)

    def close(self) -> None:
        pass


def _iso_time(value: Any) -> str:
    """A nanosecond timestamp, which pyarrow hands over as a pandas Timestamp (a datetime
    that orjson does not take), in ISO 8601 as orjson writes other datetimes."""
    if isinstance(value, datetime.datetime):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


class _CsvWriter:
    """CSV text, encoded on the pool without a header, so the job's thread only writes
    bytes (writing 1M rows of output costs 0.19 s of CPU); the header goes first, from
    the first chunk's columns. The bytes are those pyarrow's CSVWriter would write."""

    def __init__(self, sink: Any) -> None:
        self.sink, self.started = sink, False

    def encode(self, batch: Any) -> tuple[Any, Any]:
        import pyarrow as pa
        import pyarrow.csv as pacsv

        text = pa.BufferOutputStream()
        pacsv.write_csv(batch, text, pacsv.WriteOptions(include_header=False))
        return batch.schema, text.getvalue()

    def write(self, encoded: tuple[Any, Any]) -> None:
        import pyarrow as pa
        import pyarrow.csv as pacsv

        schema, text = encoded
        if not self.started:
            header = pa.BufferOutputStream()
            pacsv.write_csv(pa.Table.from_batches([], schema=schema), header)
            self.sink.write(header.getvalue())
            self.started = True
        self.sink.write(text)

    def close(self) -> None:
        pass


class _ParquetWriter:
    """Opens pyarrow's Parquet writer on the first batch, when the schema is known.

    The prediction ids and probabilities are written without a dictionary: ids are all
    different and probabilities nearly so, so pyarrow's try at one is wasted work (1M
    rows: 0.07 s of CPU to write against 0.10 s) before it falls back to plain values.
    The input's columns keep pyarrow's default.
    """

    def __init__(self, sink: Any) -> None:
        self.sink, self.writer = sink, None

    def encode(self, batch: Any) -> Any:
        return batch

    def write(self, batch: Any) -> None:
        if self.writer is None:
            import pyarrow.parquet as pq

            plain = [name for name in batch.schema.names if _unique_output(name)]
            dictionary = [name for name in batch.schema.names if name not in plain]
            self.writer = pq.ParquetWriter(self.sink, batch.schema, use_dictionary=dictionary)
        self.writer.write_batch(batch)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _unique_output(name: str) -> bool:
    """An output column whose values are (nearly) all different: a prediction id or a
    class's probability."""
    return name == "prediction_id" or name.startswith("probability_")


def _writer(fmt: str, sink: Any) -> Any:
    """The output's writer: `encode` turns an output batch into what `write` writes, on
    the pool; `write` runs on the job's thread, in input order."""
    writers = {"csv": _CsvWriter, "jsonl": _JsonLinesWriter, "parquet": _ParquetWriter}
    return writers[fmt](sink)
