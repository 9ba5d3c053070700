"""Batch jobs over files: read a CSV, JSON lines or Parquet file in chunks, predict,
and write the output atomically through its partial file.

It may import `codecs`, `model` and the root modules; never `api` or `server`.
"""
