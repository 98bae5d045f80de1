"""Sessions: `nox -s lint typecheck tests`. Each installs what it needs, CPU torch first."""

import nox

nox.options.default_venv_backend = "venv"
nox.options.reuse_existing_virtualenvs = True

CPU_TORCH = "torch==2.13.0"  # a CPU build on the development machines; never a CUDA download


def _install(session: nox.Session, extras: str) -> None:
    session.install(CPU_TORCH)
    session.install("-e", f".[{extras}]")


@nox.session
def tests(session: nox.Session) -> None:
    _install(session, "test")
    env = {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    session.run("pytest", *session.posargs, env=env)
    if not session.posargs:  # the AVX2 kernels too, where the default build is AVX-512's
        session.run("pytest", "-q", "tests/kernels", env={**env, "SSD_CPU_AVX512": "0"})


@nox.session
def lint(session: nox.Session) -> None:
    session.install("ruff>=0.6")
    session.run("ruff", "check", "src", "tests", "noxfile.py")
    session.run("ruff", "format", "--check", "src", "tests", "noxfile.py")


@nox.session
def typecheck(session: nox.Session) -> None:
    _install(session, "typecheck")
    session.run("mypy")


@nox.session
def demo(session: nox.Session) -> None:
    _install(session, "test")
    session.run("ssd", "demo", *session.posargs)
