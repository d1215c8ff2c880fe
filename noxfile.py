"""nox sessions: `nox -s tests` (the test suite), `nox -s lint` (ruff), `nox -s bench`."""

import nox

nox.options.sessions = ["lint", "tests"]


@nox.session
def tests(session: nox.Session) -> None:
    session.install("-e", ".[dev]")
    session.run("pytest", "-q", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    session.install("ruff")
    session.run("ruff", "check", ".")


@nox.session
def bench(session: nox.Session) -> None:
    """Benchmarks (``python -m benchmarks run all``, or the names given), with diffusers for the
    side-by-side columns."""
    session.install("-e", ".[bench]")
    session.run("python", "-m", "benchmarks", "run", *(session.posargs or ["all"]))
