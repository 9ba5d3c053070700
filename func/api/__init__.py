"""Routes and the wire: `create_app()`, the one predict call every protocol shares
(`serving`), the own JSON API, KServe V1, Open Inference Protocol V2, CloudEvents in and
out, OpenAPI, and the HTML pages.

Each route is decode (`codecs`), predict (`model`), encode. It may import `batch`,
`observe`, `explain`, `codecs`, `model` and the root modules; never `server`.
"""
