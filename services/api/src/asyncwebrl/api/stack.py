"""The local stack: redis-server, buffer, envfleet, weightsync and the api as
detached background processes, brought up and down by ``asyncwebrl up``/``down``.

The stack keeps its state in ``<run-dir>/stack.json`` (mode 0600): the
generated tokens (api token, the services' shared gRPC token, the Redis
password), the ports, and each process's pid and start time (so a reused pid is
never taken for one of ours). Logs go to ``<run-dir>/logs/<name>.log``.

Only the standard library at import; nothing of the services is imported (they
are started as ``python -m asyncwebrl.<service>``).
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

from asyncwebrl.api.client import FINAL, PROG, CliError, Client, quote_part
from asyncwebrl.common.localstack import BIND_ATTEMPTS, free_port

STACK_FILE = "stack.json"
DEFAULT_RUN_DIR = "runs/stack"
DEFAULT_API_PORT = 8080
KEY_PREFIX = "asyncwebrl:"
# Start order; ``down`` stops them in reverse (api first, redis last).
COMPONENTS = ("redis", "buffer", "envfleet", "weightsync", "api")
# Who is given whose address at start. envfleet has no Redis: its screenshots go through the buffer.
DEPENDS = {"redis": (), "buffer": ("redis",), "envfleet": ("buffer",), "weightsync": ("redis",),
           "api": ("redis", "envfleet", "buffer", "weightsync")}
READY_TIMEOUT_S = {"redis": 30.0, "envfleet": 120.0, "buffer": 60.0, "weightsync": 60.0, "api": 90.0}
# SIGTERM -> SIGKILL grace: the api first stops every job's processes (their own grace + 10 s).
STOP_GRACE_S = {"api": 60.0, "envfleet": 30.0, "buffer": 30.0, "weightsync": 30.0, "redis": 20.0}


# --- processes ---------------------------------------------------------------


def _start_ticks(pid: int) -> int | None:
    """The process's start time (clock ticks since boot), or None where /proc cannot say."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[19])
    except (OSError, IndexError, ValueError):
        return None


def pid_alive(pid: int | None, start: int | None = None) -> bool:
    """Running (not a zombie), and the same process as when it was recorded."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        with open(f"/proc/{pid}/stat") as f:
            rest = f.read().rsplit(")", 1)[1].split()
        if rest[0] in ("Z", "X"):
            return False
        if start is not None and int(rest[19]) != start:
            return False  # the pid was reused by another process
    except (OSError, IndexError, ValueError):
        pass
    return True


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        # As the servers bind: a port of a process just stopped (TIME_WAIT) is free to them.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def _http_status(url: str, timeout: float = 2.0) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (OSError, ValueError):
        return None


def _redis_ready(port: int, password: str) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0) as s:
            s.settimeout(1.0)
            cmd = f"*2\r\n$4\r\nAUTH\r\n${len(password.encode())}\r\n{password}\r\n*1\r\n$4\r\nPING\r\n"
            s.sendall(cmd.encode())
            data = b""
            while data.count(b"\r\n") < 2:
                chunk = s.recv(256)
                if not chunk:
                    break
                data += chunk
            return data.startswith(b"+OK\r\n") and b"+PONG" in data
    except OSError:
        return False


def _log_tail(path: pathlib.Path, n: int = 20) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join("    " + line for line in lines[-n:])



# --- the stack file ----------------------------------------------------------


def load_stack(run_dir: pathlib.Path) -> dict | None:
    """``<run-dir>/stack.json`` (its tokens, ports and pids), or None where there is no stack."""
    path = run_dir / STACK_FILE
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise CliError(f"{path}: unreadable ({exc})") from exc


def save_stack(run_dir: pathlib.Path, stack: dict) -> None:
    """Atomically, mode 0600 from the first byte (it holds the tokens)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / STACK_FILE
    tmp = run_dir / f".{STACK_FILE}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(stack, f, indent=2, sort_keys=True)
        f.write("\n")
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


@contextlib.contextmanager
def stack_lock(run_dir: pathlib.Path):
    """One ``up``/``down`` at a time per run directory."""
    import fcntl

    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / ".stack.lock", "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"waiting for another asyncwebrl up/down on {run_dir} ...", file=sys.stderr)
            fcntl.flock(f, fcntl.LOCK_EX)
        yield


def component_alive(comp: dict | None) -> bool:
    """A component of the stack file is running (the same process as was started)."""
    return bool(comp) and pid_alive(comp.get("pid"), comp.get("start"))


def main_port(name: str, comp: dict) -> int | None:
    """The port a component is reached on (Redis; the api's REST port; else gRPC)."""
    return comp.get("port") if name == "redis" else comp.get("api_port") if name == "api" else comp.get("grpc_port")



# --- up ----------------------------------------------------------------------


def _child_env(stack: dict, name: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("ASYNCWEBRL_API_URL", "ASYNCWEBRL_RUN_DIR")}
    env["ASYNCWEBRL_AUTH_TOKEN"] = stack["auth_token"]
    if name == "envfleet":  # no Redis access: it is not given the password
        env.pop("ASYNCWEBRL_REDIS_PASSWORD", None)
    else:
        env["ASYNCWEBRL_REDIS_PASSWORD"] = stack["redis_password"]
    if name == "api":
        env["ASYNCWEBRL_API_TOKEN"] = stack["api_token"]
    else:
        env.pop("ASYNCWEBRL_API_TOKEN", None)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def _command(name: str, stack: dict, run_dir: pathlib.Path) -> list[str]:
    comps, opts = stack["components"], stack["options"]
    c = comps[name]
    if name == "redis":
        conf = run_dir / "redis" / "redis.conf"
        # The password goes in a 0600 file, not on the command line where ps shows it.
        fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(f"requirepass {stack['redis_password']}\n")
        redis = shutil.which("redis-server") or "/usr/bin/redis-server"
        return [redis, str(conf), "--port", str(c["port"]), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "yes", "--appendfsync", "everysec", "--maxmemory-policy", "noeviction",
                "--dir", str(run_dir / "redis"), "--daemonize", "no"]
    redis_url = f"redis://127.0.0.1:{comps['redis']['port']}/0"
    ports = ["--grpc-port", str(c["grpc_port"]), "--http-port", str(c["http_port"]), "--log-format", "text"]
    common = [*ports, "--redis-url", redis_url, "--key-prefix", stack.get("key_prefix", KEY_PREFIX)]
    py = [sys.executable, "-m", f"asyncwebrl.{name}"]
    if name == "envfleet":
        return [*py, *ports, "--buffer-target", f"127.0.0.1:{comps['buffer']['grpc_port']}",
                "--browsers", str(opts["browsers"]), "--contexts-per-browser", str(opts["contexts"]),
                "--task-sources", "miniwob,webgym-lite", "--chromium-path", opts["chromium_path"],
                "--warm-reset" if opts["warm_reset"] else "--no-warm-reset"]
    if name == "buffer":
        return [*py, *common]
    if name == "weightsync":
        return [*py, *common, "--discovery", "none"]
    if name == "api":
        return [*py, *common, "--api-port", str(c["api_port"]), "--launcher", "local",
                "--run-dir", str(run_dir / "jobs"),
                "--envfleet-target", f"127.0.0.1:{comps['envfleet']['grpc_port']}",
                "--buffer-target", f"127.0.0.1:{comps['buffer']['grpc_port']}",
                # Versions reach the engines through weightsync, as in a cluster.
                "--weightsync-target", f"127.0.0.1:{comps['weightsync']['grpc_port']}"]
    raise AssertionError(name)


def _ports_of(name: str) -> tuple[str, ...]:
    return ("port",) if name == "redis" else ("grpc_port", "http_port", "api_port") if name == "api" \
        else ("grpc_port", "http_port")


def _spawn(name: str, stack: dict, run_dir: pathlib.Path) -> None:
    log = run_dir / "logs" / f"{name}.log"
    cmd = _command(name, stack, run_dir)
    with open(log, "ab") as out:
        out.write(f"\n--- asyncwebrl up {time.strftime('%Y-%m-%d %H:%M:%S')}: {' '.join(cmd[:4])} ...\n".encode())
        out.flush()
        # A new session: the process outlives this command and gets no signal from its terminal.
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                env=_child_env(stack, name), cwd=run_dir, start_new_session=True, close_fds=True)
    comp = stack["components"][name]
    comp.update(pid=proc.pid, start=_start_ticks(proc.pid), log=str(log), started_unix=int(time.time()))
    comp["_proc"] = proc  # not saved: lets the readiness wait see an early exit code


def _ready(name: str, stack: dict) -> bool:
    c = stack["components"][name]
    if name == "redis":
        return _redis_ready(c["port"], stack["redis_password"])
    if _http_status(f"http://127.0.0.1:{c['http_port']}/readyz") != 200 or not _port_open(c["grpc_port"]):
        return False
    if name == "api":
        return _http_status(f"http://127.0.0.1:{c['api_port']}/v1/schema/job") == 200
    return True


def _lost_a_port(name: str, stack: dict) -> bool:
    """The component exited because a port chosen for it was taken in the meantime (``up`` chooses every
    port before the first wave starts; an outgoing connection can take one of them before the last)."""
    c = stack["components"][name]
    tail = _log_tail(pathlib.Path(c["log"]), 5)
    user_port = name == "api" and stack.get("options", {}).get("api_port")
    # A running component given this one's address would keep the old one: then it is an error to report.
    told = any(name in DEPENDS[n] and component_alive(stack["components"][n]) for n in COMPONENTS if n != name)
    return ("cannot bind" in tail or "Address already in use" in tail) and not told and not (
        user_port and str(c["api_port"]) in tail)


def _wait_ready(names: list[str], stack: dict, run_dir: pathlib.Path) -> None:
    pending = list(names)
    deadline = {n: time.monotonic() + READY_TIMEOUT_S[n] for n in names}
    starts = {n: 1 for n in names}
    while pending:
        for name in list(pending):
            c = stack["components"][name]
            proc = c.get("_proc")
            if _ready(name, stack):
                pending.remove(name)
                continue
            exited = proc.poll() if proc is not None else (None if component_alive(c) else "?")
            if exited is not None and starts[name] < BIND_ATTEMPTS and _lost_a_port(name, stack):
                # Nothing started yet depends on it (its dependents are in later waves): new ports, again.
                starts[name] += 1
                for key in _ports_of(name):
                    if not (key == "api_port" and stack["options"].get("api_port")):
                        c[key] = free_port()
                if name == "api":
                    stack["api_url"] = f"http://127.0.0.1:{c['api_port']}"
                print(f"restarting {name}: a port chosen for it was taken meanwhile", file=sys.stderr)
                _spawn(name, stack, run_dir)
                deadline[name] = time.monotonic() + READY_TIMEOUT_S[name]
                continue
            if exited is not None or time.monotonic() > deadline[name]:
                why = f"exited with {exited}" if exited is not None else f"not ready after {READY_TIMEOUT_S[name]:.0f}s"
                raise CliError(f"{name} {why}; log {c['log']}:\n{_log_tail(pathlib.Path(c['log']))}\n"
                               f"(what did start is still running: `{PROG} down` stops it)")
        if pending:
            time.sleep(0.2)


def _new_stack(run_dir: pathlib.Path) -> dict:
    return {
        "version": 1,
        "run_dir": str(run_dir),
        "api_token": secrets.token_urlsafe(32),
        "auth_token": secrets.token_urlsafe(32),
        "redis_password": secrets.token_urlsafe(32),
        "key_prefix": KEY_PREFIX,
        "options": {},
        "components": {name: {} for name in COMPONENTS},
    }


def up(run_dir: pathlib.Path, *, chromium_path: str | None = None, api_port: int | None = None,
       browsers: int | None = None, contexts: int | None = None,
       warm_reset: bool | None = None) -> tuple[dict, bool]:
    """Start what of the stack in ``run_dir`` is not running and wait until it is ready.

    Options left None keep what the stack last ran with, else the defaults. Returns the stack
    and whether anything was started (False: it was all up already)."""
    with stack_lock(run_dir):
        stack = load_stack(run_dir) or _new_stack(run_dir)
        comps = stack.setdefault("components", {})
        for name in COMPONENTS:
            comps.setdefault(name, {})
        alive = {n for n in COMPONENTS if component_alive(comps[n])}
        if alive == set(COMPONENTS):
            return stack, False

        # Options: this command's flags, else what the stack ran with, else the defaults.
        opts = stack.setdefault("options", {})
        default_chromium = os.environ.get("ASYNCWEBRL_CHROMIUM_PATH", "/usr/bin/chromium")
        for key, value, default in (("chromium_path", chromium_path, default_chromium),
                                    ("browsers", browsers, 1), ("contexts", contexts, 16),
                                    ("warm_reset", warm_reset, False), ("api_port", api_port, DEFAULT_API_PORT)):
            if value is not None and alive and opts.get(key) != value:
                print(f"note: --{key.replace('_', '-')} applies only to components not running", file=sys.stderr)
            opts[key] = value if value is not None else opts.get(key, default)
        if not os.access(opts["chromium_path"], os.X_OK):
            raise CliError(f"--chromium-path: {opts['chromium_path']} is not an executable Chromium")
        if not (shutil.which("redis-server") or os.access("/usr/bin/redis-server", os.X_OK)):
            raise CliError("redis-server is not installed (scripts/bootstrap.sh installs it)")

        for sub in ("logs", "redis", "jobs"):
            (run_dir / sub).mkdir(parents=True, exist_ok=True)

        # Ports: the ones the stack had when still free, else new ones. A component whose address
        # moves is restarted with it, and so is everything running that was given the old address.
        to_start: list[str] = []
        moved: set[str] = set()
        for name in COMPONENTS:
            c = comps[name]
            if name in alive and not moved & set(DEPENDS[name]):
                continue
            if name in alive:
                print(f"restarting {name}: the address of {', '.join(sorted(moved & set(DEPENDS[name])))} "
                      f"changed", file=sys.stderr)
                _stop_pid(name, c, quiet=True)
            for key in _ports_of(name):
                wanted = c.get(key)
                if key == "api_port" and opts["api_port"]:
                    wanted = opts["api_port"]
                    if not _port_free(wanted):
                        raise CliError(f"--api-port: 127.0.0.1:{wanted} is in use (pass another, or 0 for any)")
                if not wanted or not _port_free(wanted):
                    if wanted and key in ("port", "grpc_port"):
                        moved.add(name)
                    wanted = free_port()
                c[key] = wanted
            to_start.append(name)
        stack["api_url"] = f"http://127.0.0.1:{comps['api']['api_port']}"
        save_stack(run_dir, stack)

        try:
            # redis first; the buffer and weightsync need only redis; envfleet stores its screenshots
            # through the buffer, so it comes after it; the api needs them all.
            for wave in (["redis"], ["buffer", "weightsync"], ["envfleet"], ["api"]):
                names = [n for n in wave if n in to_start]
                for name in names:
                    print(f"starting {name} ...", file=sys.stderr)
                    _spawn(name, stack, run_dir)
                save_stack(run_dir, _saved(stack))
                _wait_ready(names, stack, run_dir)
        finally:
            save_stack(run_dir, _saved(stack))
        return stack, True


def _saved(stack: dict) -> dict:
    out = dict(stack)
    out["components"] = {n: {k: v for k, v in c.items() if not k.startswith("_")}
                         for n, c in stack["components"].items()}
    return out


# --- down --------------------------------------------------------------------


def _signal(comp: dict, sig: int, group: bool = False) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if group:
            os.killpg(comp["pid"], sig)  # its own session: Chromium and other children go with it
        else:
            os.kill(comp["pid"], sig)


def _wait_gone(items: list[tuple[str, dict]], grace: float) -> list[str]:
    """SIGKILL (the whole process group) what is still running after ``grace``; returns those names."""
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(component_alive(c) for _, c in items):
        time.sleep(0.1)
    killed = []
    for name, c in items:
        if component_alive(c):
            _signal(c, signal.SIGKILL, group=True)
            killed.append(name)
    end = time.monotonic() + 10
    while time.monotonic() < end and any(component_alive(c) for _, c in items):
        time.sleep(0.1)
    return killed


def _stop_pid(name: str, comp: dict, quiet: bool = False) -> None:
    _signal(comp, signal.SIGTERM)
    killed = _wait_gone([(name, comp)], STOP_GRACE_S[name])
    if not quiet:
        print(f"stopped {name} (pid {comp['pid']}){' with SIGKILL' if killed else ''}")


def _job_pids(stack: dict) -> list[int]:
    """Best effort: the pids of every unfinished job's processes, to make sure they go with the api."""
    api = stack.get("api_url")
    if not api:
        return []
    client = Client(api, stack.get("api_token", ""), timeout=5)
    pids = []
    try:
        for job in client.list_jobs(limit=200):
            if job.get("state") not in FINAL:
                detail = client.get(f"/v1/jobs/{quote_part(job['id'])}")
                pids += [p["pid"] for p in detail.get("processes", []) if p.get("pid") and p.get("running")]
    except CliError:
        pass
    return pids


def down(run_dir: pathlib.Path) -> None:
    """Stop every process of the stack in ``run_dir`` (api first, redis last), SIGKILL what is left
    after the grace period; tokens, ports, jobs and Redis data stay for the next ``up``."""
    with stack_lock(run_dir):
        stack = load_stack(run_dir)
        if stack is None:
            print(f"no local stack in {run_dir}")
            return
        comps = stack.get("components", {})
        running = [n for n in reversed(COMPONENTS) if component_alive(comps.get(n))]
        if not running:
            print(f"the local stack in {run_dir} is not running")
        job_pids = {pid: _start_ticks(pid) for pid in (_job_pids(stack) if "api" in running else [])}
        # api first (it stops its jobs' processes), then the services (envfleet before the buffer it
        # writes to), redis last.
        for wave in (["api"], ["weightsync", "envfleet"], ["buffer"], ["redis"]):
            items = [(n, comps[n]) for n in wave if n in running]
            for _, c in items:
                _signal(c, signal.SIGTERM)
            killed = _wait_gone(items, max((STOP_GRACE_S[n] for n, _ in items), default=0))
            for name, c in items:
                print(f"stopped {name} (pid {c['pid']}){' with SIGKILL' if name in killed else ''}")
            if wave == ["api"]:
                strays = [{"pid": p, "start": s} for p, s in job_pids.items() if pid_alive(p, s)]
                for c in strays:
                    _signal(c, signal.SIGKILL, group=True)
                if strays:
                    print(f"killed {len(strays)} job process(es) the api left behind")
        for c in comps.values():
            for key in ("pid", "start", "started_unix"):
                c.pop(key, None)
        save_stack(run_dir, stack)
