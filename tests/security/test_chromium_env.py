"""Chromium holds no secret: every Chromium process of a running envfleet has an allowlisted environment.

The real envfleet service is started with secrets in its environment, an episode runs (so renderers
exist), and /proc/<pid>/environ of every Chromium descendant is read.
"""

from __future__ import annotations

import os
import secrets

import psutil
import pytest

from asyncwebrl.common.grpcclient import channel
from asyncwebrl.envfleet.pool import _CHROMIUM_ENV_PASSTHROUGH, chromium_env
from asyncwebrl.v1 import env_pb2, env_pb2_grpc
from tests.envfleet.conftest import PAGES, TOKEN, start_envfleet


def _is_chromium(proc: psutil.Process) -> bool:
    try:
        exe = os.path.basename(proc.exe())
        argv0 = os.path.basename((proc.cmdline() or [""])[0])
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return False
    return "chrom" in exe or "chrom" in argv0


def _environ(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/environ", "rb") as f:
        raw = f.read()
    out = {}
    for item in raw.split(b"\0"):
        if item:
            k, _, v = item.decode(errors="replace").partition("=")
            out[k] = v
    return out


ALLOWED = {*_CHROMIUM_ENV_PASSTHROUGH, "HOME"}


def _memory_holds(pid: int, needles: list[bytes]) -> bool:
    """Whether any of ``needles`` is in a readable, private mapping (heap, stack, anonymous) of ``pid``."""
    with open(f"/proc/{pid}/maps") as maps, open(f"/proc/{pid}/mem", "rb", buffering=0) as mem:
        for line in maps:
            fields = line.split()
            perms, path = fields[1], (fields[5] if len(fields) > 5 else "")
            if not perms.startswith("r") or perms[3] != "p" or (path and not path.startswith("[")):
                continue
            start, end = (int(x, 16) for x in fields[0].split("-"))
            if path == "[vvar]" or end - start > 1 << 30:
                continue
            try:
                mem.seek(start)
                chunk = mem.read(end - start)
            except (OSError, ValueError, OverflowError):
                continue
            if any(n in chunk for n in needles):
                return True
    return False


def test_chromium_env_is_an_allowlist():
    env = chromium_env("/tmp/home", {"PATH": "/bin", "LANG": "C.UTF-8", "ASYNCWEBRL_AUTH_TOKEN": "t",
                                     "AWS_SECRET_ACCESS_KEY": "k", "HOME": "/root", "LD_PRELOAD": "/x.so"})
    assert env == {"PATH": "/bin", "LANG": "C.UTF-8", "HOME": "/tmp/home"}


def test_chromium_processes_hold_no_secret(tmp_path, buffer):
    extra_secrets = {
        "ASYNCWEBRL_TEST_CANARY_SECRET": secrets.token_hex(16),
        # envfleet needs no Redis any more, but a pod's environment may still carry the password.
        "ASYNCWEBRL_REDIS_PASSWORD": secrets.token_hex(16),
        # Not ours, but the kind of thing a pod's environment holds: an allowlist drops it too.
        "AWS_SECRET_ACCESS_KEY": secrets.token_hex(16),
    }
    svc = start_envfleet(tmp_path, buffer, "--browsers", "1", "--contexts-per-browser", "2",
                         "--task-sources", "static", "--static-task-dirs", str(PAGES), env=extra_secrets)
    ch = channel(svc.target, TOKEN)
    try:
        stub = env_pb2_grpc.EnvServiceStub(ch)
        task = f"static/{PAGES.name}/counter"
        a = stub.Allocate(env_pb2.AllocateRequest(task=task, seed=0), timeout=60)
        try:
            envfleet_env = _environ(svc.proc.pid)
            secret_values = {v for k, v in envfleet_env.items() if k.startswith("ASYNCWEBRL_") and len(v) >= 6}
            secret_values |= set(extra_secrets.values())
            # The service really holds the secrets, or the check below proves nothing.
            assert TOKEN in secret_values and extra_secrets["ASYNCWEBRL_REDIS_PASSWORD"] in secret_values, (
                sorted(envfleet_env))

            chromes = [p for p in psutil.Process(svc.proc.pid).children(recursive=True) if _is_chromium(p)]
            types = set()
            for p in chromes:
                cmd = p.cmdline()
                types.add(next((a.split("=", 1)[1] for a in cmd if a.startswith("--type=")), "browser"))
            # Not vacuous: the browser process and at least one renderer were found and read.
            assert "browser" in types and "renderer" in types, (types, [p.cmdline()[:2] for p in chromes])

            browsers = 0
            for p in chromes:
                environ = _environ(p.pid)
                leaked = sorted(k for k in environ if k.startswith("ASYNCWEBRL_"))
                assert not leaked, (p.pid, p.cmdline()[:3], leaked)
                raw = "\n".join(f"{k}={v}" for k, v in environ.items())
                for value in secret_values:
                    assert value not in raw, (p.pid, p.cmdline()[:3], "holds a secret value")
                assert "AWS_SECRET_ACCESS_KEY" not in environ
                if not any(a.startswith("--type=") for a in p.cmdline()):
                    # The browser process, exec'd by Playwright: its environ is exact (its children
                    # rewrite that memory with their process titles, so only the scans above apply).
                    # /usr/bin/chromium (Debian's launcher script) adds CHROME_*, CHROMIUM_FLAGS and
                    # Debian's public GOOGLE_* API keys; nothing else may be there.
                    extra = {k for k in environ if not k.startswith(("CHROME_", "CHROMIUM_", "GOOGLE_"))}
                    assert extra <= {*ALLOWED, "PWD"}, sorted(extra - {*ALLOWED, "PWD"})
                    assert "asyncwebrl-chromium-home-" in environ.get("HOME", ""), environ.get("HOME")
                    browsers += 1
                # Not only the environment: no secret anywhere in the process's readable memory.
                found = _memory_holds(p.pid, [v.encode() for v in extra_secrets.values()])
                assert not found, (p.pid, p.cmdline()[:3], "has a secret in memory")
            assert browsers == 1
            # Playwright's node driver (not Chromium, not reachable from a page) gets none of our settings
            # either; the variables outside ours pass to it (AWS_SECRET_ACCESS_KEY here), which shows the
            # check can see a secret where there is one, as can the scan of envfleet's own memory.
            drivers = [p for p in psutil.Process(svc.proc.pid).children(recursive=True)
                       if not _is_chromium(p) and "node" in os.path.basename(p.exe())]
            assert drivers
            for d in drivers:
                environ = _environ(d.pid)
                assert not [k for k in environ if k.startswith("ASYNCWEBRL_")], (d.pid, "holds our settings")
                assert "AWS_SECRET_ACCESS_KEY" in environ
            assert _memory_holds(svc.proc.pid, [extra_secrets["ASYNCWEBRL_TEST_CANARY_SECRET"].encode()])
        finally:
            stub.Release(env_pb2.ReleaseRequest(session_id=a.session_id))
    finally:
        ch.close()
        assert svc.stop() == 0, svc.logs()[-3000:]
