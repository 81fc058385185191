"""The HTTP API: Flask-APScheduler's routes under /scheduler, with real authentication, plus run history.

Optional (the `api` extra: fastapi, uvicorn, argon2-cffi). Nothing imports this package unless `--http` or the
`users` command is used, so the scheduler runs without those libraries installed. Import the submodules directly:
`scheduler_core.api.app.create_app`, `scheduler_core.api.server.serve_in_thread`, `scheduler_core.api.auth`.
"""
