"""``asyncwebrl``: the command-line client.

Brings the local stack (redis-server, envfleet, buffer, weightsync, api) up and
down as detached background processes, and talks to an api (the local one, or
any other with ``--api``/``--token``) to submit, watch, evaluate and cancel jobs.

Only the standard library and PyYAML at start-up: the job schema (pydantic) is
imported by ``submit`` alone, and nothing of the services is imported at all,
so every command answers at once.

The local stack keeps its state in ``<run-dir>/stack.json`` (mode 0600): the
generated tokens (api token, the services' shared gRPC token, the Redis
password), the ports, and each process's pid and start time (so a reused pid is
never taken for one of ours). Logs go to ``<run-dir>/logs/<name>.log``.
"""

from __future__ import annotations

import argparse
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
import urllib.parse
import urllib.request

from asyncwebrl.common.localstack import free_port

PROG = "asyncwebrl"
STACK_FILE = "stack.json"
DEFAULT_RUN_DIR = "runs/stack"
DEFAULT_API_PORT = 8080
KEY_PREFIX = "asyncwebrl:"
# Start order; ``down`` stops them in reverse (api first, redis last).
COMPONENTS = ("redis", "envfleet", "buffer", "weightsync", "api")
FINAL = ("succeeded", "failed", "cancelled")
# Who is given whose address at start.
DEPENDS = {"redis": (), "envfleet": ("redis",), "buffer": ("redis",), "weightsync": ("redis",),
           "api": ("redis", "envfleet", "buffer", "weightsync")}
READY_TIMEOUT_S = {"redis": 30.0, "envfleet": 120.0, "buffer": 60.0, "weightsync": 60.0, "api": 90.0}
# SIGTERM -> SIGKILL grace: the api first stops every job's processes (their own grace + 10 s).
STOP_GRACE_S = {"api": 60.0, "envfleet": 30.0, "buffer": 30.0, "weightsync": 30.0, "redis": 20.0}


class CliError(Exception):
    """Printed as ``error: <message>``; ``code`` is the exit status."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


class ApiError(CliError):
    def __init__(self, status: int, detail: str, body: dict | None = None) -> None:
        super().__init__(detail, 2 if status == 422 else 1)
        self.status = status
        self.detail = detail
        self.body = body or {}


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


def run_dir_of(args) -> pathlib.Path:
    return pathlib.Path(args.run_dir or os.environ.get("ASYNCWEBRL_RUN_DIR") or DEFAULT_RUN_DIR).resolve()


def load_stack(run_dir: pathlib.Path) -> dict | None:
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


def _alive(comp: dict | None) -> bool:
    return bool(comp) and pid_alive(comp.get("pid"), comp.get("start"))


def _main_port(name: str, comp: dict) -> int | None:
    return comp.get("port") if name == "redis" else comp.get("api_port") if name == "api" else comp.get("grpc_port")


def stack_table(stack: dict) -> str:
    rows = [("NAME", "PID", "ALIVE", "PORT", "HTTP")]
    comps = stack.get("components", {})
    for name in COMPONENTS:
        c = comps.get(name) or {}
        rows.append((name, str(c.get("pid") or "-"), "yes" if _alive(c) else "no",
                     str(_main_port(name, c) or "-"), str(c.get("http_port") or "-")))
    return table(rows)


def table(rows: list[tuple]) -> str:
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(str(v).ljust(w) for v, w in zip(r, widths)).rstrip() for r in rows)


# --- up ----------------------------------------------------------------------


def _child_env(stack: dict, name: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("ASYNCWEBRL_API_URL", "ASYNCWEBRL_RUN_DIR")}
    env["ASYNCWEBRL_AUTH_TOKEN"] = stack["auth_token"]
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
    common = ["--grpc-port", str(c["grpc_port"]), "--http-port", str(c["http_port"]), "--redis-url", redis_url,
              "--key-prefix", stack.get("key_prefix", KEY_PREFIX), "--log-format", "text"]
    py = [sys.executable, "-m", f"asyncwebrl.{name}"]
    if name == "envfleet":
        return [*py, *common, "--browsers", str(opts["browsers"]), "--contexts-per-browser", str(opts["contexts"]),
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


def _wait_ready(names: list[str], stack: dict) -> None:
    pending = list(names)
    deadline = {n: time.monotonic() + READY_TIMEOUT_S[n] for n in names}
    while pending:
        for name in list(pending):
            c = stack["components"][name]
            proc = c.get("_proc")
            if _ready(name, stack):
                pending.remove(name)
                continue
            exited = proc.poll() if proc is not None else (None if _alive(c) else "?")
            if exited is not None or time.monotonic() > deadline[name]:
                why = f"exited with {exited}" if exited is not None else f"not ready after {READY_TIMEOUT_S[name]:.0f}s"
                raise CliError(f"{name} {why}; log {c['log']}:\n{_log_tail(pathlib.Path(c['log']))}\n"
                               f"(what did start is still running: `{PROG} down` stops it)")
        if pending:
            time.sleep(0.2)


def _new_stack(args, run_dir: pathlib.Path) -> dict:
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


def cmd_up(args) -> int:
    run_dir = run_dir_of(args)
    with stack_lock(run_dir):
        stack = load_stack(run_dir) or _new_stack(args, run_dir)
        comps = stack.setdefault("components", {})
        for name in COMPONENTS:
            comps.setdefault(name, {})
        alive = {n for n in COMPONENTS if _alive(comps[n])}
        if alive == set(COMPONENTS):
            print(f"the local stack is already up ({run_dir})")
            print(stack_table(stack))
            print(f"api: {stack['api_url']}")
            return 0

        # Options: this command's flags, else what the stack ran with, else the defaults.
        opts = stack.setdefault("options", {})
        default_chromium = os.environ.get("ASYNCWEBRL_CHROMIUM_PATH", "/usr/bin/chromium")
        for key, value, default in (("chromium_path", args.chromium_path, default_chromium),
                                    ("browsers", args.browsers, 1), ("contexts", args.contexts, 16),
                                    ("warm_reset", args.warm_reset, False), ("api_port", args.api_port,
                                                                             DEFAULT_API_PORT)):
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
            # redis first; envfleet, buffer and weightsync need only redis; the api needs them all.
            for wave in (["redis"], ["envfleet", "buffer", "weightsync"], ["api"]):
                names = [n for n in wave if n in to_start]
                for name in names:
                    print(f"starting {name} ...", file=sys.stderr)
                    _spawn(name, stack, run_dir)
                save_stack(run_dir, _saved(stack))
                _wait_ready(names, stack)
        finally:
            save_stack(run_dir, _saved(stack))
        print(f"the local stack is up ({run_dir})")
        print(stack_table(stack))
        print(f"api: {stack['api_url']}  (token in {run_dir / STACK_FILE})")
        return 0


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
    while time.monotonic() < deadline and any(_alive(c) for _, c in items):
        time.sleep(0.1)
    killed = []
    for name, c in items:
        if _alive(c):
            _signal(c, signal.SIGKILL, group=True)
            killed.append(name)
    end = time.monotonic() + 10
    while time.monotonic() < end and any(_alive(c) for _, c in items):
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
                detail = client.get(f"/v1/jobs/{_q(job['id'])}")
                pids += [p["pid"] for p in detail.get("processes", []) if p.get("pid") and p.get("running")]
    except CliError:
        pass
    return pids


def cmd_down(args) -> int:
    run_dir = run_dir_of(args)
    with stack_lock(run_dir):
        stack = load_stack(run_dir)
        if stack is None:
            print(f"no local stack in {run_dir}")
            return 0
        comps = stack.get("components", {})
        running = [n for n in reversed(COMPONENTS) if _alive(comps.get(n))]
        if not running:
            print(f"the local stack in {run_dir} is not running")
        job_pids = {pid: _start_ticks(pid) for pid in (_job_pids(stack) if "api" in running else [])}
        # api first (it stops its jobs' processes), then the services, redis last.
        for wave in (["api"], ["weightsync", "buffer", "envfleet"], ["redis"]):
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
        return 0


# --- the REST client ------------------------------------------------------------


def _q(part: str) -> str:
    return urllib.parse.quote(str(part), safe="")


class Client:
    def __init__(self, base: str, token: str, timeout: float = 30.0) -> None:
        self.base = base.rstrip("/")
        self.token = token
        self.timeout = timeout

    def request(self, method: str, path: str, body=None, accept_json: bool = True):
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Accept": "application/json" if accept_json else "text/plain, */*"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        req = urllib.request.Request(self.base + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                raw = resp.read()
                ctype = resp.headers.get("Content-Type", "")
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            detail, body_json = f"HTTP {exc.code} {exc.reason}", None
            with contextlib.suppress(ValueError):
                body_json = json.loads(raw)
                if isinstance(body_json, dict):
                    detail = str(body_json.get("detail") or body_json.get("title") or detail)
            if exc.code in (404, 405) and detail in ("Not Found", "Method Not Allowed"):
                detail = f"{detail}: this api does not serve {method} {path.split('?')[0]}"
            raise ApiError(exc.code, detail, body_json if isinstance(body_json, dict) else None) from None
        except urllib.error.URLError as exc:
            reason = exc.reason
            why = "connection refused" if isinstance(reason, ConnectionRefusedError) else str(reason)
            raise CliError(f"the api at {self.base} is not reachable ({why}); start the local stack with "
                           f"`{PROG} up`, or pass --api URL") from None
        except (TimeoutError, socket.timeout):
            raise CliError(f"the api at {self.base} did not answer within {self.timeout:.0f}s") from None
        except (OSError, ValueError) as exc:
            raise CliError(f"the api at {self.base} is not reachable ({exc}); start the local stack with "
                           f"`{PROG} up`, or pass --api URL") from None
        if not accept_json or "json" not in ctype:
            return raw.decode(errors="replace") if not accept_json else (json.loads(raw) if raw else {})
        return json.loads(raw) if raw else {}

    def get(self, path: str):
        return self.request("GET", path)

    def list_jobs(self, limit: int = 50) -> list[dict]:
        jobs, token = [], ""
        while len(jobs) < limit:
            page = self.get(f"/v1/jobs?page_size={min(200, limit - len(jobs))}&page_token={_q(token)}")
            jobs += page.get("jobs", [])
            token = page.get("next_page_token") or ""
            if not token:
                break
        return jobs[:limit]


def client_of(args) -> Client:
    api = args.api or os.environ.get("ASYNCWEBRL_API_URL")
    token = args.token or os.environ.get("ASYNCWEBRL_API_TOKEN")
    if not api or token is None:
        stack = load_stack(run_dir_of(args))
        if stack:
            api = api or stack.get("api_url")
            if token is None and (api or "").rstrip("/") == (stack.get("api_url") or "").rstrip("/"):
                token = stack.get("api_token")
    return Client(api or f"http://127.0.0.1:{DEFAULT_API_PORT}", token or "")


# --- job commands -----------------------------------------------------------------


def _fmt(value, spec: str = ".3g", none: str = "-") -> str:
    if value is None:
        return none
    if isinstance(value, float):
        return format(value, spec)
    return str(value)


def _process_name(p: dict) -> str:
    if p.get("role") == "engine" and p.get("log"):
        return pathlib.Path(p["log"]).stem  # engine-0, engine-1, ... as the logs route names them
    return str(p.get("role"))


def cmd_status(args) -> int:
    if args.job:
        return _job_status(client_of(args), args.job)
    remote = bool(args.api or os.environ.get("ASYNCWEBRL_API_URL"))
    stack = None if remote else load_stack(run_dir_of(args))
    if stack is not None:
        print(f"stack ({run_dir_of(args)}):")
        print(stack_table(stack))
        print()
    elif not remote:
        print(f"no local stack in {run_dir_of(args)} (`{PROG} up` starts one)")
    client = client_of(args)
    jobs = client.list_jobs(limit=args.limit)
    rows = [("JOB", "STATE", "VERSION", "GROUPS")]
    for job in jobs:
        try:
            detail = client.get(f"/v1/jobs/{_q(job['id'])}")
        except ApiError:
            detail = job
        prog = detail.get("progress") or {}
        rows.append((job["id"], detail.get("state", job.get("state")), _fmt(prog.get("version")),
                     _fmt(prog.get("groups_consumed"))))
    print(f"jobs ({client.base}):")
    print(table(rows) if jobs else "  (none)")
    return 0


def _job_status(client: Client, job_id: str) -> int:
    job = client.get(f"/v1/jobs/{_q(job_id)}")
    prog = job.get("progress") or {}
    created = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(job.get("created_ms", 0) / 1000))
    print(f"job       {job['id']}  ({job.get('name')})")
    print(f"state     {job.get('state')}" + (f"  ({job['reason']})" if job.get("reason") else ""))
    print(f"created   {created}")
    print(f"version   {_fmt(prog.get('version'))}")
    print(f"progress  groups accepted {_fmt(prog.get('groups_accepted'))}, consumed "
          f"{_fmt(prog.get('groups_consumed'))}, steps consumed {_fmt(prog.get('steps_consumed'))}")
    rejected = prog.get("rejected") or {}
    if rejected:
        print("rejected  " + ", ".join(f"{k} {v}" for k, v in sorted(rejected.items())))
    procs = job.get("processes") or []
    if procs:
        rows = [("PROCESS", "PID", "RUNNING", "RESTARTS", "EXIT", "LOG")]
        rows += [(_process_name(p), _fmt(p.get("pid")), "yes" if p.get("running") else "no",
                  _fmt(p.get("restarts")), _fmt(p.get("exit_code")), p.get("log") or "-") for p in procs]
        print()
        print(table(rows))
    return 0


def _set(doc: dict, assignment: str) -> None:
    import yaml

    path, sep, raw = assignment.partition("=")
    if not sep or not path:
        raise CliError(f"--set: expected key.path=value, got {assignment!r}", 2)
    node = doc
    parts = path.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise CliError(f"--set {path}: {part} is not a mapping", 2)
    node[parts[-1]] = yaml.safe_load(raw)


def _field(loc) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "job"


def load_job(path: str, overrides: list[str]) -> dict:
    import yaml

    try:
        text = sys.stdin.read() if path == "-" else pathlib.Path(path).read_text()
    except OSError as exc:
        raise CliError(f"{path}: {exc.strerror or exc}", 2) from None
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise CliError(f"{path}: not valid YAML: {exc}", 2) from None
    if not isinstance(doc, dict):
        raise CliError(f"{path}: a job document is a mapping (name, model, tasks, algorithm, rollout, resources)", 2)
    for assignment in overrides:
        _set(doc, assignment)
    from pydantic import ValidationError

    from asyncwebrl.api.jobspec import JobSpec

    try:
        JobSpec.model_validate(doc)
    except ValidationError as exc:
        for e in exc.errors():
            print(f"error: {_field(e.get('loc', ()))}: {e.get('msg')}", file=sys.stderr)
        raise CliError(f"{path}: {exc.error_count()} invalid field(s)", 2) from None
    return doc


def cmd_submit(args) -> int:
    doc = load_job(args.file, args.set or [])
    client = client_of(args)
    try:
        job = client.request("POST", "/v1/jobs", doc)
    except ApiError as exc:
        errors = exc.body.get("errors") or []
        if exc.status != 422 or not errors:
            raise
        for e in errors:
            print(f"error: {e.get('field')}: {e.get('message')}", file=sys.stderr)
        raise CliError(f"the api refused {args.file}: {len(errors)} invalid field(s)", 2) from None
    print(job["id"])
    print(f"submitted {job['id']} ({job.get('state')}); `{PROG} watch {job['id']}` follows it", file=sys.stderr)
    return 0


def _metrics_since(client: Client, job_id: str, since: int) -> tuple[list[dict], int] | None:
    """New trainer metric rows, or None where this api serves no metrics route."""
    rows: list[dict] = []
    for _ in range(100):
        try:
            page = client.get(f"/v1/jobs/{_q(job_id)}/metrics?since_step={since}&limit=500")
        except ApiError as exc:
            if exc.status == 404 and "this api does not serve" in exc.detail:
                return None
            raise
        series = page.get("series") or []
        rows += series
        nxt = int(page.get("next_since_step", since))
        if not series or nxt <= since or len(series) < 500:
            return rows, max(nxt, since)
        since = nxt
    return rows, since


# Off-policy health that warns of a collapse before success falls: (field, label, bad when, threshold).
HEALTH_WARNINGS = (
    ("ess", "behaviour ESS", "below", 0.5),            # rollouts far off the trained policy
    ("clip_fraction", "clipped", "above", 0.2),        # updates pushing past the trust region
    ("behav_gap", "engine/trainer logprob gap", "above", 0.05),  # the engine serves other weights or numerics
    ("invalid_action_rate", "invalid actions", "above", 0.5),    # the tool-call format breaking down
)


def health_warnings(row: dict) -> list[str]:
    out = []
    for field, label, side, threshold in HEALTH_WARNINGS:
        value = row.get(field)
        if isinstance(value, (int, float)) and (value < threshold if side == "below" else value > threshold):
            out.append(f"{label} {value:.2f} {side} {threshold:g}")
    return out


def _progress_line(job: dict, row: dict | None) -> str:
    prog = job.get("progress") or {}
    version = max(int(prog.get("version") or 0), int((row or {}).get("version") or 0))
    row = row or {}
    parts = [time.strftime("%H:%M:%S"), f"v{version}",
             f"success {_fmt(row.get('success'), '.2f')}",
             f"traj/h {_fmt(row.get('trajectories_per_hour'), '.0f')}",
             f"env steps/s {_fmt(row.get('env_steps_per_s'), '.2f')}",
             f"staleness {_fmt(row.get('staleness_mean'), '.2f')}"]
    if row.get("step") is not None:
        parts.insert(2, f"step {row['step']}")
    parts.append(f"groups {_fmt(prog.get('groups_consumed'))}")
    if row.get("ess") is not None:
        parts += [f"ess {_fmt(row.get('ess'), '.2f')}", f"clip {_fmt(row.get('clip_fraction'), '.3f')}",
                  f"entropy {_fmt(row.get('entropy'), '.2f')}", f"invalid {_fmt(row.get('invalid_action_rate'), '.2f')}"]
    parts.append(str(job.get("state")))
    warnings = health_warnings(row)
    if warnings:
        parts.append("WARNING: " + "; ".join(warnings))
    return "  ".join(parts)


def cmd_watch(args) -> int:
    client = client_of(args)
    deadline = time.monotonic() + args.timeout if args.timeout else None
    since, last_row, metrics_ok, shown = 0, None, True, None
    while True:
        job = client.get(f"/v1/jobs/{_q(args.job)}")
        if metrics_ok:
            got = _metrics_since(client, args.job, since)
            if got is None:
                metrics_ok = False
                print("note: this api serves no metrics series; showing the job's progress only", file=sys.stderr)
            else:
                rows, since = got
                if rows:
                    last_row = rows[-1]
        line = _progress_line(job, last_row)
        key = line.split("  ", 1)[1]
        if key != shown:
            print(line, flush=True)
            shown = key
        version = int((job.get("progress") or {}).get("version") or 0)
        state = job.get("state")
        if args.until_version is not None and version >= args.until_version:
            print(f"{args.job} reached version {version}")
            return 0
        if state in FINAL:
            reason = f": {job['reason']}" if job.get("reason") else ""
            print(f"{args.job} {state}{reason}")
            return 0 if state == "succeeded" else 1
        if deadline is not None and time.monotonic() >= deadline:
            target = f" before version {args.until_version}" if args.until_version is not None else ""
            print(f"error: timed out after {args.timeout:g}s{target} (version {version}, {state})", file=sys.stderr)
            return 1
        time.sleep(max(0.1, args.interval if deadline is None else min(args.interval, deadline - time.monotonic())))


def cmd_logs(args) -> int:
    client = client_of(args)
    tail_bytes = min(max(args.tail, 1) * 400, 1024 * 1024)
    text = client.request("GET", f"/v1/jobs/{_q(args.job)}/logs/{_q(args.role)}?tail_bytes={tail_bytes}",
                          accept_json=False)
    lines = text.splitlines()
    if len(lines) > args.tail:
        lines = lines[-args.tail:]
    sys.stdout.write("\n".join(lines) + ("\n" if lines else ""))
    return 0


def _eval_table(ev: dict) -> str:
    # The figures at the top level (the contract), or under "result" (as this api also writes them).
    ev = {**ev, **(ev.get("result") or {})}
    rows = [("DIFFICULTY", "SUCCESS", "EPISODES")]
    for diff, d in sorted((ev.get("by_difficulty") or {}).items(),
                          key=lambda kv: ("easy", "medium", "hard").index(kv[0])
                          if kv[0] in ("easy", "medium", "hard") else 9):
        rows.append((diff, _fmt(d.get("success"), ".3f"), _fmt(d.get("episodes"))))
    rows.append(("all", _fmt(ev.get("success"), ".3f"), _fmt(ev.get("episodes"))))
    return table(rows)


def cmd_eval(args) -> int:
    client = client_of(args)
    ev = client.request("POST", f"/v1/jobs/{_q(args.job)}/evaluate", {"version": args.version, "groups": args.groups})
    print(f"evaluation {ev['id']} of {args.job} at version {_fmt(ev.get('version'))}: {ev.get('state')}")
    if not args.wait:
        return 0
    deadline = time.monotonic() + args.timeout if args.timeout else None
    while ev.get("state") == "running":
        if deadline is not None and time.monotonic() >= deadline:
            print(f"error: evaluation {ev['id']} still running after {args.timeout:g}s", file=sys.stderr)
            return 1
        time.sleep(args.interval)
        ev = client.get(f"/v1/jobs/{_q(args.job)}/evaluations/{_q(ev['id'])}")
    print(f"evaluation {ev['id']} {ev.get('state')}" + (f": {ev['reason']}" if ev.get("reason") else ""))
    if ev.get("state") != "succeeded":
        return 1
    print(_eval_table(ev))
    mean_steps = (ev.get("result") or ev).get("mean_steps")
    if mean_steps is not None:
        print(f"mean steps {_fmt(mean_steps, '.2f')}")
    return 0


def cmd_cancel(args) -> int:
    client = client_of(args)
    client.timeout = max(client.timeout, 180.0)  # the api answers once the job's processes have stopped
    job = client.request("DELETE", f"/v1/jobs/{_q(args.job)}")
    print(f"{job['id']} {job.get('state')}" + (f" ({job['reason']})" if job.get("reason") else ""))
    return 0


def cmd_viewer(args) -> int:
    client = client_of(args)
    job = client.get(f"/v1/jobs/{_q(args.job)}")  # an unknown job is an error, not a dead link
    fragment = f"#token={_q(client.token)}" if client.token else ""
    print(f"{client.base}/viewer/{_q(job['id'])}{fragment}")
    return 0


# --- the parser ---------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    glob = argparse.ArgumentParser(add_help=False)
    g = glob.add_argument_group("global options")
    g.add_argument("--api", default=argparse.SUPPRESS, metavar="URL",
                   help="api base URL [env ASYNCWEBRL_API_URL] (default: the local stack's, from <run-dir>/stack.json)")
    g.add_argument("--token", default=argparse.SUPPRESS,
                   help="api bearer token [env ASYNCWEBRL_API_TOKEN] (default: the local stack's)")
    g.add_argument("--run-dir", default=argparse.SUPPRESS, metavar="DIR",
                   help=f"the local stack's directory [env ASYNCWEBRL_RUN_DIR] (default: {DEFAULT_RUN_DIR})")

    parser = argparse.ArgumentParser(
        prog=PROG, parents=[glob],
        description="The asyncwebrl command-line client: the local stack, and jobs on an api.",
        epilog=f"Start with `{PROG} up`, then `{PROG} submit examples/jobs/demo.yaml` and `{PROG} watch JOB`.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name: str, func, help_text: str, description: str | None = None) -> argparse.ArgumentParser:
        p = sub.add_parser(name, parents=[glob], help=help_text, description=description or help_text)
        p.set_defaults(func=func)
        return p

    p = command("up", cmd_up, "start the local stack (redis, envfleet, buffer, weightsync, api) in the background",
                "Start the local stack as detached background processes, each logging to <run-dir>/logs/<name>.log; "
                "tokens, ports and pids are kept in <run-dir>/stack.json (mode 0600). Flags left out keep what the "
                "stack last ran with.")
    p.add_argument("--chromium-path", help="Chromium executable for envfleet [env ASYNCWEBRL_CHROMIUM_PATH] "
                                           "(default: /usr/bin/chromium)")
    p.add_argument("--api-port", type=int, help=f"REST api port; 0 picks a free one (default: {DEFAULT_API_PORT})")
    p.add_argument("--browsers", type=int, help="Chromium processes in envfleet (default: 1)")
    p.add_argument("--contexts", type=int, help="browser contexts per Chromium (default: 16)")
    p.add_argument("--warm-reset", action=argparse.BooleanOptionalAction, default=None,
                   help="reuse released browser contexts (in-page reset; default: off)")

    command("down", cmd_down, "stop the local stack (api first, redis last)",
            "SIGTERM every process of the local stack (api first, redis last), SIGKILL what is left after the "
            "grace period. Tokens, ports, jobs and Redis data stay for the next `up`.")

    p = command("status", cmd_status, "the stack and its jobs, or one job's detail")
    p.add_argument("job", nargs="?", metavar="JOB", help="a job id: its state, progress and processes")
    p.add_argument("--limit", type=int, default=20, help="most jobs listed, newest first (default: 20)")

    p = command("submit", cmd_submit, "validate a YAML job document and submit it; prints the job id",
                "Validate the job document locally (exit 2 naming each bad field), then POST it. Prints the job id "
                "alone on stdout.")
    p.add_argument("file", metavar="JOB.yaml", help="job document (YAML or JSON; - reads stdin)")
    p.add_argument("--set", action="append", metavar="KEY.PATH=VALUE",
                   help="override a field, e.g. --set algorithm.max_steps=20 (repeatable; VALUE is YAML)")

    p = command("watch", cmd_watch, "follow a job's progress, one line per update",
                "One line per update (version, success, trajectories/hour, env steps/s, staleness, state) until the "
                "job is final, --until-version is reached or --timeout passes. Exit 0 when the job succeeded or "
                "reached the version; 1 when it failed, was cancelled or the time ran out.")
    p.add_argument("job", metavar="JOB")
    p.add_argument("--interval", type=float, default=2.0, help="seconds between polls (default: 2)")
    p.add_argument("--until-version", type=int, metavar="N", help="stop (exit 0) once the job reaches version N")
    p.add_argument("--timeout", type=float, metavar="S", help="give up (exit 1) after S seconds")

    p = command("logs", cmd_logs, "the tail of one of a job's process logs")
    p.add_argument("job", metavar="JOB")
    p.add_argument("--role", default="trainer", help="trainer, rollout, engine-0, engine-1, ... (default: trainer)")
    p.add_argument("--tail", type=int, default=100, metavar="N", help="last N lines (default: 100)")

    p = command("eval", cmd_eval, "evaluate a job's policy on its held-out episodes")
    p.add_argument("job", metavar="JOB")
    p.add_argument("--version", type=int, help="weight version (default: the latest)")
    p.add_argument("--groups", type=int, help="groups of the test split (default: the job's tasks.eval_groups)")
    p.add_argument("--wait", action="store_true", help="wait until it finishes and print success per difficulty")
    p.add_argument("--interval", type=float, default=2.0, help="seconds between polls with --wait (default: 2)")
    p.add_argument("--timeout", type=float, metavar="S", help="with --wait: give up (exit 1) after S seconds")

    p = command("cancel", cmd_cancel, "cancel a job (its processes stop, its data stays)")
    p.add_argument("job", metavar="JOB")

    p = command("viewer", cmd_viewer, "print the URL of a job's trajectory viewer")
    p.add_argument("job", metavar="JOB")
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    for name in ("api", "token", "run_dir"):
        if not hasattr(args, name):
            setattr(args, name, None)
    try:
        code = args.func(args)
    except CliError as exc:
        print(f"error: {exc}", file=sys.stderr)
        code = exc.code
    except KeyboardInterrupt:
        code = 130
    except BrokenPipeError:  # `asyncwebrl status | head`
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = 0
    sys.exit(code)


if __name__ == "__main__":
    main()
