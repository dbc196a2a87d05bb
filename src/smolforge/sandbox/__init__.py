"""Running untrusted code: one small interface, one backend per isolation mechanism.

    from smolforge.sandbox import Job, Limits, open_sandbox
    with open_sandbox("auto", limits=Limits(wall_s=5)) as sb:
        [res] = sb.run([Job(code="def f(): return 1", tests="assert f() == 1")])
        res.passed, res.reason, res.tests, res.stdout, res.wall_s

Backends: `bwrap` (bubblewrap + unprivileged uid + rlimits + seccomp + cgroups where
possible; the default) and `none` (no isolation; refused unless
`allow_unsandboxed=True`). Nothing else in smolforge starts code it did not write.
docs/verify-code.md has the threat model and the measured figures.
"""

from __future__ import annotations

from smolforge.sandbox.base import (
    LANGUAGES,
    REASONS,
    Job,
    Language,
    Limits,
    RunResult,
    SandboxUnavailable,
    ServerSandbox,
    TestResult,
)

BACKENDS = ("auto", "bwrap", "none")


def open_sandbox(backend: str = "auto", *, allow_unsandboxed: bool = False, limits: Limits | None = None,
                 workers: int = 2, pool: bool = True, **options) -> ServerSandbox:
    """A ready sandbox (workers started, so a broken setup fails here, clearly).

    `auto` and `bwrap` need bubblewrap; if it is missing or cannot create its
    namespaces, SandboxUnavailable says why. `none` runs code unisolated and is
    refused unless `allow_unsandboxed=True`."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown sandbox {backend!r} (known: {', '.join(BACKENDS)})")
    if backend == "none":
        if not allow_unsandboxed:
            raise SandboxUnavailable(
                "sandbox: none runs untrusted code with your user's rights (files, keys, network); "
                "set allow_unsandboxed: true to accept that"
            )
        from smolforge.sandbox.unsafe import NoSandbox

        return NoSandbox(limits, workers, pool, **options).start()
    from smolforge.sandbox.bwrap import BwrapSandbox, probe

    why = probe()
    if why is not None:
        raise SandboxUnavailable(
            f"no code sandbox available: {why}. Install bubblewrap (Debian/Ubuntu: apt-get install bubblewrap) "
            "and allow unprivileged user namespaces, or opt out explicitly with sandbox: none and "
            "allow_unsandboxed: true (the code then runs as you, unisolated)"
        )
    sb = BwrapSandbox(limits, workers, pool, **options)
    try:
        return sb.start()
    except BaseException:
        sb.close()
        raise


__all__ = ["BACKENDS", "LANGUAGES", "REASONS", "Job", "Language", "Limits", "RunResult", "SandboxUnavailable",
           "ServerSandbox", "TestResult", "open_sandbox"]
