"""Running the `lossearch` console script as a user does: a real process, in a directory of the test's."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator

import sqlalchemy as sa

CLI = [sys.executable, "-c", "from lossearch.__main__ import main; main()"]  # what the console script runs


def run_cli(*args: str, cwd, timeout: float, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run `lossearch ARGS` to completion; stdout and stderr captured as text."""
    return subprocess.run(CLI + list(args), cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def start_cli(*args: str, cwd) -> subprocess.Popen:
    """Start `lossearch ARGS` and return at once, for tests that signal or kill it.

    The child gets SIGINT's default action back: a test run started in the background by a
    non-interactive shell inherits SIGINT ignored, and Python then never raises KeyboardInterrupt.
    """
    return subprocess.Popen(CLI + list(args), cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def run_in_thread(sandbox, job: str, payload: dict, limits) -> tuple[threading.Thread, list]:
    """Start `sandbox.run` (any lossearch.sandbox.interface.SandboxLike) in a thread; the list gets its
    result, or the exception it raised."""
    outcome: list = []

    def run() -> None:
        try:
            outcome.append(sandbox.run(job, payload, limits))
        except Exception as error:  # noqa: BLE001 - the test reads it
            outcome.append(error)

    thread = threading.Thread(target=run)
    thread.start()
    return thread, outcome


def throwaway_postgres_database(admin_url: str) -> Iterator[str]:
    """A fresh database on the server of `admin_url`, dropped afterwards."""
    name = f"lossearch_test_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield sa.make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
