"""The process: the gunicorn application and its worker, the HTTP/1.1 response, the
listening sockets, the shared folder of a pod, and the functions-framework target.

This is the top of the house. It may import `api` (to build the app it serves) and the
wings below it (`model` for readiness across workers, `observe` for logs), and the root
modules (`config`, `errors`, `process`, `cpus`). Nothing imports it but `func.__main__`.
"""
