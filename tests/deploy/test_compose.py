"""docker-compose.yml, its GPU override, every Dockerfile and the monitoring configuration, checked
statically (no Docker engine is needed, none exists on the CI machine):

- both compose files, and the two merged and interpolated, validate against the compose specification
  (check-jsonschema's vendored schema); every ${VAR} is documented in deploy/compose/.env.example and every
  secret is required (``${VAR:?}``), never defaulted;
- every service that runs ``python -m asyncwebrl.X`` (in compose and as an image's CMD) runs with its
  arguments and ``--help``, passes only flags that service has, sets only ASYNCWEBRL_* variables it reads,
  and its compose arguments and environment pass the service's own config validation;
- healthchecks, depends_on conditions, restart policies, loopback-only ports, named volumes, the
  checkpoints volume at one path everywhere;
- isolation as strict as the Helm chart: envfleet (Chromium, pages we do not control) only on the
  ``browser`` network (its route to the task sites, alone) and the internal ``fleet`` network (the buffer,
  the api, Prometheus), never with Redis, weightsync or the engines; the ``state`` network internal; every
  peer a service dials shares a network with it; every container drops all capabilities, has
  no-new-privileges and (where the service allows it) a read-only root with tmpfs for what it writes; no
  secret in any command line (Redis gets its password on stdin: the entrypoint is run against a stand-in
  redis-server, and against the real one where it is installed);
- every Dockerfile parses, pins its base images by tag (and says how to pin the digest), ends as a
  non-root user with a HEALTHCHECK, copies only what exists and .dockerignore lets through, and its final
  stage installs only its service's distribution and libs/common (the api's ``local`` target, for the
  local launcher, adds the per-job processes by design); torch builds match libs/common's pin;
- Prometheus' config parses (and passes ``promtool check config`` with the repository's rule files when
  promtool is installed) and scrapes every service's metrics port; Grafana's provisioning points at
  Prometheus and at the mounted dashboards.
"""

from __future__ import annotations

import concurrent.futures
import copy
import functools
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys

import pytest
import yaml
from dockerfile_parse import DockerfileParser

ROOT = pathlib.Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
GPU = ROOT / "deploy" / "compose" / "docker-compose.gpu.yml"
ENV_EXAMPLE = ROOT / "deploy" / "compose" / ".env.example"
PROMETHEUS = ROOT / "deploy" / "compose" / "prometheus.yml"
GRAFANA = ROOT / "deploy" / "compose" / "grafana" / "provisioning"
SGLANG_DOCKERFILE = ROOT / "deploy" / "sglang" / "Dockerfile"
SERVICES = ("envfleet", "buffer", "engine", "rollout", "trainer", "weightsync", "api")
DOCKERFILES = {s: ROOT / "services" / s / "Dockerfile" for s in SERVICES}
CONFIG_CLASSES = {"envfleet": "EnvfleetConfig", "buffer": "BufferConfig", "engine": "EngineConfig",
                  "rollout": "RolloutConfig", "trainer": "TrainerConfig", "weightsync": "WeightSyncConfig",
                  "api": "ApiConfig"}
# The local launcher runs these as children of the api, in the api's container and environment.
JOB_PROCESSES = ("engine", "rollout", "trainer")
# The api image's `local` target: the api and every per-job process (--launcher local).
LOCAL_TARGET = {"common", "api", *JOB_PROCESSES}
SECRETS = ("REDIS_PASSWORD", "ASYNCWEBRL_AUTH_TOKEN", "ASYNCWEBRL_API_TOKEN", "ASYNCWEBRL_ENGINE_API_KEY",
           "GRAFANA_ADMIN_PASSWORD")
# Values for the variables compose requires, as a user's .env would give them.
TEST_ENV = {**{name: "test-secret-value-0123" for name in SECRETS}, "SGLANG_MODEL": "qwen2.5-vl-3b"}
# Isolation. envfleet runs Chromium on pages we do not control: it is on `browser` (alone: its route to the
# task sites) and `fleet`, whose other members are those it must reach or that must reach it.
ENVFLEET_NETWORKS = {"browser", "fleet"}
ENVFLEET_PEERS = {"buffer": "envfleet stores screenshots through its PutBlobs",
                  "api": "its jobs' rollout gateways (the api's children, in its container) drive envfleet",
                  "prometheus": "scrapes envfleet's metrics"}
INTERNAL_NETWORKS = {"state", "fleet"}
# Services whose root filesystem stays writable, and why.
WRITABLE_ROOT = {"sglang": "JIT compilers (Triton, FlashInfer, torch) write and load kernels under HOME and /tmp"}
# Capabilities a service adds back after dropping ALL, and why (none needs one: non-root, ports above 1024).
CAP_ADD: dict[str, set[str]] = {}
# Flags that would carry a secret on a command line.
SECRET_FLAGS = ("--requirepass", "--masterauth", "--pass", "--password", "--redis-password", "--auth-token",
                "--api-token", "--api-key", "--admin-api-key", "--engine-api-key", "--registry-redis-password")
# Services without a healthcheck, and why.
NO_HEALTHCHECK = {"redis-exporter": "scratch image without a shell; nothing depends on it"}
SGLANG_PORT = 30000


# --- compose: loading, interpolation, merging ---------------------------------------------------------

_VAR = re.compile(r"\$(?:(?P<escaped>\$)|\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}"
                  r"|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))")


class Missing(Exception):
    pass


def _interpolate_str(text: str, env: dict[str, str]) -> str:
    def sub(m: re.Match) -> str:
        if m["escaped"]:
            return "$"
        name = m["name"] or m["bare"]
        op, arg = m["op"], m["arg"] or ""
        set_, nonempty = name in env, bool(env.get(name))
        if op == ":-":
            return env[name] if nonempty else arg
        if op == "-":
            return env[name] if set_ else arg
        if op == ":?":
            if not nonempty:
                raise Missing(f"{name}: {arg}")
            return env[name]
        if op == "?":
            if not set_:
                raise Missing(f"{name}: {arg}")
            return env[name]
        return env.get(name, "")

    return _VAR.sub(sub, text)


def interpolate(value, env: dict[str, str]):
    if isinstance(value, str):
        return _interpolate_str(value, env)
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if isinstance(value, dict):
        return {interpolate(k, env): interpolate(v, env) for k, v in value.items()}
    return value


def variables(value) -> dict[str, set[str]]:
    """Every ${VAR} a document names, with the operators it is used with."""
    out: dict[str, set[str]] = {}
    if isinstance(value, str):
        for m in _VAR.finditer(value):
            if not m["escaped"]:
                out.setdefault(m["name"] or m["bare"], set()).add(m["op"] or "")
    elif isinstance(value, (list, dict)):
        items = value.items() if isinstance(value, dict) else enumerate(value)
        for k, v in items:
            for part in ((k, v) if isinstance(value, dict) else (v,)):
                for name, ops in variables(part).items():
                    out.setdefault(name, set()).update(ops)
    return out


# Sequences compose merges item by item in an override (the rest, command included, are replaced).
_MERGED_SEQUENCES = {"ports", "expose", "volumes", "devices", "dns", "dns_search", "tmpfs", "extra_hosts",
                     "secrets", "configs", "env_file", "cap_add", "cap_drop", "profiles"}


def merge(base, override, key: str = ""):
    if isinstance(base, dict) and isinstance(override, dict):
        out = dict(base)
        for k, v in override.items():
            out[k] = merge(base[k], v, k) if k in base else copy.deepcopy(v)
        return out
    if isinstance(base, list) and isinstance(override, list) and key in _MERGED_SEQUENCES:
        return base + [v for v in override if v not in base]
    return copy.deepcopy(override)


@functools.cache
def raw(path: pathlib.Path) -> dict:
    with open(path) as f:
        return yaml.safe_load(f)


def without_extensions(doc: dict) -> dict:
    return {k: v for k, v in doc.items() if not k.startswith("x-")}


@functools.cache
def stacks() -> dict[str, dict]:
    """name -> the interpolated compose document: ``cpu`` (docker-compose.yml) and ``gpu`` (with the override)."""
    base = without_extensions(raw(COMPOSE))
    return {"cpu": interpolate(base, TEST_ENV), "gpu": interpolate(merge(base, raw(GPU)), TEST_ENV)}


def service_items():
    """(stack, service name, service) of both stacks; the GPU stack's only where the override changes it."""
    cpu, gpu = stacks()["cpu"]["services"], stacks()["gpu"]["services"]
    for name, svc in cpu.items():
        yield "cpu", name, svc
    for name, svc in gpu.items():
        if cpu.get(name) != svc:
            yield "gpu", name, svc


def asyncwebrl_command(command) -> tuple[str, list[str]] | None:
    """``python -m asyncwebrl.X args...`` -> (X, args)."""
    if not isinstance(command, list) or len(command) < 3 or command[:2] != ["python", "-m"]:
        return None
    m = re.fullmatch(r"asyncwebrl\.([a-z]+)", command[2])
    return (m[1], list(command[3:])) if m else None


def environment(svc: dict) -> dict[str, str]:
    env = svc.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def is_healthy_check(hc) -> bool:
    return isinstance(hc, dict) and not hc.get("disable") and hc.get("test") not in (None, ["NONE"], "NONE")


# --- services' own flags and variables ------------------------------------------------------------------

def run_help(module: str, args: tuple[str, ...]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", f"asyncwebrl.{module}", *args, "--help"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120,
                          env={k: v for k, v in os.environ.items() if not k.startswith("ASYNCWEBRL_")})


def flags_of(help_text: str) -> set[str]:
    return set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", help_text))


def env_vars_of(help_text: str) -> set[str]:
    return set(re.findall(r"\[env\s+(ASYNCWEBRL_[A-Z0-9_]+)\]", help_text))


def default_of(help_text: str, flag: str) -> str:
    block = re.search(rf"(?ms)^  {re.escape(flag)} .*?(?=^  --|\Z)", help_text)
    assert block, f"{flag} is not in the help"
    m = re.search(r"\(default:\s*'?([^)']*)'?\)", block[0])
    assert m, f"{flag} has no default in the help"
    return m[1]


def flag_value(args: list[str], flag: str) -> str | None:
    for i, a in enumerate(args):
        if a == flag and i + 1 < len(args):
            return args[i + 1]
        if a.startswith(flag + "="):
            return a.split("=", 1)[1]
    return None


def _invocations() -> set[tuple[str, tuple[str, ...]]]:
    """Every ``python -m asyncwebrl.X args`` of compose, and the image's CMD of each service compose does
    not run; their --help output also gives each service's flags. (One run per service where possible:
    the engine and the trainer import torch, seconds each on two cores.)"""
    out = set()
    for _stack, _name, svc in service_items():
        cmd = asyncwebrl_command(svc.get("command"))
        if cmd:
            out.add((cmd[0], tuple(cmd[1])))
    for path in DOCKERFILES.values():
        for stage in stages(path):
            cmd = asyncwebrl_command(stage.cmd)
            if cmd and cmd[0] not in {m for m, _ in out}:
                out.add((cmd[0], tuple(cmd[1])))
    return out


@functools.cache
def helps() -> dict[tuple[str, tuple[str, ...]], subprocess.CompletedProcess]:
    """The --help runs, in parallel (the engine and the trainer import torch: seconds each)."""
    runs = sorted(_invocations())
    with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        return dict(zip(runs, pool.map(lambda r: run_help(*r), runs)))


def service_help(module: str) -> str:
    runs = [r for (m, _args), r in helps().items() if m == module]
    assert runs, f"nothing runs asyncwebrl.{module}"
    for result in runs:
        if result.returncode == 0:
            return result.stdout
    raise AssertionError(f"python -m asyncwebrl.{module} ... --help failed:\n{runs[0].stderr[-2000:]}")


def check_invocation(where: str, module: str, args: list[str]) -> None:
    """The command runs with ``--help`` appended (argparse converts every value before it reaches --help)
    where it is one of the runs; in any case it passes only the service's flags (an unknown flag before
    --help would not fail the run)."""
    result = helps().get((module, tuple(args)))
    if result is not None:
        assert result.returncode == 0, (f"{where}: python -m asyncwebrl.{module} {' '.join(args)} --help exited "
                                        f"{result.returncode}:\n{result.stderr[-2000:]}")
    known = flags_of(service_help(module))
    passed = {a.split("=", 1)[0] for a in args if a.startswith("--")}
    assert passed <= known, f"{where}: asyncwebrl.{module} has no flag {sorted(passed - known)}"


# --- Dockerfiles ----------------------------------------------------------------------------------------

class Stage:
    def __init__(self, base: str, name: str | None) -> None:
        self.base, self.name = base, name
        self.instructions: list[tuple[str, str]] = []

    def all(self, instruction: str) -> list[str]:
        return [v for i, v in self.instructions if i == instruction]

    @property
    def user(self) -> str | None:
        users = self.all("USER")
        return users[-1] if users else None

    @property
    def cmd(self) -> list[str] | None:
        cmds = self.all("CMD")
        if not cmds:
            return None
        value = cmds[-1].strip()
        return json.loads(value) if value.startswith("[") else ["/bin/sh", "-c", value]

    def installed_wheels(self) -> set[str]:
        """Distributions of this repository a stage's RUN lines install (asyncwebrl_<name>-*.whl)."""
        return {m for run in self.all("RUN") if "pip install" in run
                for m in re.findall(r"asyncwebrl_([a-z]+)-[^\s]*\.whl", run)}


@functools.cache
def parsed(path: pathlib.Path) -> DockerfileParser:
    return DockerfileParser(path=str(path), cache_content=True)


@functools.cache
def global_args(path: pathlib.Path) -> dict[str, str]:
    out = {}
    for ins in parsed(path).structure:
        if ins["instruction"] == "FROM":
            break
        if ins["instruction"] == "ARG":
            name, _, default = ins["value"].partition("=")
            out[name.strip()] = default.strip().strip('"')
    return out


def stage_args(stage: Stage) -> dict[str, str]:
    out = {}
    for value in stage.all("ARG"):
        name, _, default = value.partition("=")
        out[name.strip()] = default.strip().strip('"')
    return out


@functools.cache
def stages(path: pathlib.Path) -> list[Stage]:
    args = global_args(path)
    out: list[Stage] = []
    for ins in parsed(path).structure:
        instruction, value = ins["instruction"], ins["value"]
        if instruction == "FROM":
            words = [w for w in value.split() if not w.startswith("--platform")]
            base = re.sub(r"\$\{?([A-Za-z_]\w*)\}?", lambda m: args.get(m[1], m[0]), words[0])
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            out.append(Stage(base, name))
        elif instruction != "COMMENT" and out:
            out[-1].instructions.append((instruction, value))
    return out


def copy_sources(value: str) -> list[str] | None:
    """Sources of a COPY/ADD from the build context; None for COPY --from=<stage>."""
    words = value.split()
    if any(w.startswith("--from") for w in words):
        return None
    words = [w for w in words if not w.startswith("--")]
    if value.strip().startswith("["):
        words = json.loads(value[value.index("["):])
    return words[:-1]


def dockerignore_patterns() -> list[tuple[bool, re.Pattern]]:
    out = []
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        exception = line.startswith("!")
        pattern = line.lstrip("!").strip().strip("/")
        regex = ""
        i = 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                regex, i = regex + "(?:.*/)?", i + 3
            elif pattern.startswith("**", i):
                regex, i = regex + ".*", i + 2
            elif pattern[i] == "*":
                regex, i = regex + "[^/]*", i + 1
            elif pattern[i] == "?":
                regex, i = regex + "[^/]", i + 1
            elif pattern[i] == "[":
                end = pattern.index("]", i)
                regex, i = regex + pattern[i:end + 1], end + 1
            else:
                regex, i = regex + re.escape(pattern[i]), i + 1
        out.append((exception, re.compile(regex + r"\Z")))
    return out


def dockerignored(rel: str) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parent folders decides."""
    parts = rel.strip("/").split("/")
    candidates = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    excluded = False
    for exception, regex in dockerignore_patterns():
        if any(regex.match(c) for c in candidates):
            excluded = not exception
    return excluded


# === compose ============================================================================================

def test_compose_files_validate_against_the_compose_specification(tmp_path):
    cli = shutil.which("check-jsonschema", path=str(pathlib.Path(sys.executable).parent)) or \
        shutil.which("check-jsonschema")
    assert cli, "check-jsonschema is missing: pip install -r requirements-dev.txt"
    merged = []
    for name, doc in stacks().items():
        path = tmp_path / f"{name}.yml"
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        merged.append(str(path))
    result = subprocess.run([cli, "--builtin-schema", "vendor.compose-spec", str(COMPOSE), str(GPU), *merged],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_variable_is_documented_and_every_secret_required():
    documented = set(re.findall(r"(?m)^#?([A-Z][A-Z0-9_]*)=", ENV_EXAMPLE.read_text()))
    used: dict[str, set[str]] = {}
    for path in (COMPOSE, GPU):
        for name, ops in variables(raw(path)).items():
            used.setdefault(name, set()).update(ops)
    assert set(used) <= documented, f"not in {ENV_EXAMPLE.name}: {sorted(set(used) - documented)}"
    for secret in SECRETS:
        assert used.get(secret) == {":?"}, f"{secret} must be required (${{{secret}:?...}}), used as {used.get(secret)}"
    # No secret-looking value anywhere is a literal or defaulted.
    for path in (COMPOSE, GPU):
        for name, svc in (raw(path).get("services") or {}).items():
            for key, value in environment(svc).items():
                if re.search(r"PASSWORD|TOKEN|API_KEY|SECRET", key):
                    assert re.fullmatch(r"\$\{[A-Z0-9_]+:\?[^}]*\}", value), f"{path.name} {name}: {key}={value!r}"
    # Without a .env, compose refuses to start rather than run with no password.
    with pytest.raises(Missing):
        interpolate(without_extensions(raw(COMPOSE)), {})
    with pytest.raises(Missing, match="SGLANG_MODEL"):
        interpolate(merge(without_extensions(raw(COMPOSE)), raw(GPU)), {k: "x" for k in SECRETS})


def test_every_asyncwebrl_service_of_compose_runs_with_its_arguments():
    seen = set()
    for stack, name, svc in service_items():
        cmd = asyncwebrl_command(svc.get("command"))
        if not cmd:
            continue
        seen.add(cmd[0])
        check_invocation(f"compose ({stack}) {name}", cmd[0], cmd[1])
    assert {"envfleet", "buffer", "weightsync", "api", "engine"} <= seen


def test_compose_environment_names_only_real_variables():
    for stack, name, svc in service_items():
        cmd = asyncwebrl_command(svc.get("command"))
        env = {k for k in environment(svc) if k.startswith("ASYNCWEBRL_")}
        if not cmd:
            assert not env, f"{stack} {name} is no asyncwebrl service but sets {sorted(env)}"
            continue
        known = env_vars_of(service_help(cmd[0]))
        if cmd[0] == "api":  # its job processes inherit its environment
            known |= {v for m in JOB_PROCESSES for v in env_vars_of(service_help(m))}
        assert env <= known, f"{stack} {name}: asyncwebrl.{cmd[0]} reads no {sorted(env - known)}"


def test_compose_arguments_and_environment_pass_the_services_config_validation():
    """What --help cannot catch: each service's own checks of its values (ranges, formats, paths)."""
    cases = []
    for stack, name, svc in service_items():
        cmd = asyncwebrl_command(svc.get("command"))
        if cmd:
            cases.append({"where": f"{stack} {name}", "module": cmd[0], "cls": CONFIG_CLASSES[cmd[0]],
                          "args": cmd[1], "env": environment(svc)})
    script = """
import importlib, json, sys
from asyncwebrl.common.config import parse_config
failures = []
for case in json.load(sys.stdin):
    cls = getattr(importlib.import_module(f"asyncwebrl.{case['module']}.config"), case["cls"])
    try:
        parse_config(cls, case["args"], environ=case["env"], prog=case["where"])
    except SystemExit as exc:
        failures.append(f"{case['where']}: exit {exc.code}")
print(json.dumps(failures))
"""
    result = subprocess.run([sys.executable, "-c", script], input=json.dumps(cases), capture_output=True,
                            text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    failures = json.loads(result.stdout.strip().splitlines()[-1])
    assert not failures, f"{failures}\n{result.stderr[-3000:]}"


def test_healthchecks_dependencies_and_restart_policies():
    for stack, doc in stacks().items():
        services = {n: s for n, s in doc["services"].items() if not s.get("profiles")}
        for name, svc in services.items():
            assert svc.get("restart") in ("unless-stopped", "always", "on-failure"), f"{stack} {name}: restart"
            if name not in NO_HEALTHCHECK:
                assert is_healthy_check(svc.get("healthcheck")), f"{stack} {name} has no healthcheck"
            deps = svc.get("depends_on") or {}
            assert isinstance(deps, dict), f"{stack} {name}: depends_on needs conditions"
            for dep, spec in deps.items():
                assert dep in services, f"{stack} {name} depends on {dep}, which is not in the stack"
                assert spec.get("condition") == "service_healthy", f"{stack} {name} -> {dep}: {spec}"
                assert is_healthy_check(services[dep].get("healthcheck")), f"{stack} {dep} has no healthcheck"
    # The embedded engine stands in for SGLang without a GPU; the override swaps them.
    cpu, gpu = stacks()["cpu"]["services"], stacks()["gpu"]["services"]
    assert "engine" in cpu and "sglang" not in cpu
    assert gpu["engine"].get("profiles") and "sglang" in gpu


def test_ports_volumes_and_images():
    for stack, doc in stacks().items():
        volumes = doc.get("volumes") or {}
        assert {"redis-data", "checkpoints"} <= set(volumes)
        run_dirs = set()
        for name, svc in doc["services"].items():
            for port in svc.get("ports") or []:
                assert str(port).startswith("127.0.0.1:"), f"{stack} {name} publishes {port} beyond loopback"
            for vol in svc.get("volumes") or []:
                source, target = str(vol).split(":")[:2]
                if not source.startswith((".", "/")):
                    assert source in volumes, f"{stack} {name}: volume {source} is not declared"
                if source == "checkpoints":
                    run_dirs.add(target)
                elif source.startswith("./deploy/"):
                    assert (ROOT / source).exists(), f"{stack} {name}: {source} does not exist"
            image = svc.get("image", "")
            tag = image.rsplit("/", 1)[-1].partition(":")[2]
            assert tag and tag != "latest", f"{stack} {name}: image {image!r} needs a pinned tag"
            build = svc.get("build")
            if build:
                dockerfile = ROOT / build.get("context", ".") / build["dockerfile"]
                assert dockerfile.is_file(), f"{stack} {name}: {dockerfile} is missing"
                if build.get("target"):
                    assert build["target"] in {s.name for s in stages(dockerfile)}, f"{stack} {name}: target"
                for arg in build.get("args") or {}:
                    declared = {**global_args(dockerfile), **{k: v for s in stages(dockerfile)
                                                             for k, v in stage_args(s).items()}}
                    assert arg in declared, f"{stack} {name}: build arg {arg} is not an ARG of {dockerfile}"
        # A published checkpoint path means the same file to every reader: one mount point everywhere.
        assert run_dirs == {"/runs"}, f"{stack}: checkpoints mounted at {run_dirs}"
        assert "redis-data:/data" in doc["services"]["redis"]["volumes"]
        api = asyncwebrl_command(doc["services"]["api"]["command"])[1]
        ws = asyncwebrl_command(doc["services"]["weightsync"]["command"])[1]
        assert flag_value(api, "--launcher") == "local" and flag_value(api, "--run-dir") == "/runs"
        assert flag_value(ws, "--checkpoint-roots") == "/runs"
        assert "checkpoints:/runs" in doc["services"]["api"]["volumes"]  # the api writes; the others read
    # The GPU override: SGLang gets a GPU and is registered by weightsync at its port.
    gpu = stacks()["gpu"]["services"]
    devices = gpu["sglang"]["deploy"]["resources"]["reservations"]["devices"]
    assert any("gpu" in d.get("capabilities", []) for d in devices)
    ws = asyncwebrl_command(gpu["weightsync"]["command"])[1]
    assert flag_value(ws, "--discovery") == "static"
    assert re.fullmatch(rf"[\w-]+=sglang-0@http://sglang:{SGLANG_PORT}", flag_value(ws, "--static-endpoints"))
    assert "checkpoints:/runs:ro" in gpu["sglang"]["volumes"]
    # SGLang's key is the one the gateway, the trainers (the api's children) and weightsync send.
    key = environment(raw(GPU)["services"]["sglang"])["SGLANG_API_KEY"]
    base = raw(COMPOSE)["services"]
    assert key == environment(base["weightsync"])["ASYNCWEBRL_ENGINE_API_KEY"] \
        == environment(base["api"])["ASYNCWEBRL_ENGINE_API_KEY"] == environment(base["engine"])["ASYNCWEBRL_API_KEY"]


# --- isolation: networks, capabilities, read-only roots, secrets off the command line -------------------

def networks_of(svc: dict) -> set[str]:
    nets = svc.get("networks")
    assert nets, "every service names its networks (none falls back to compose's default network)"
    return set(nets)


def members(services: dict, network: str) -> set[str]:
    return {name for name, svc in services.items() if network in networks_of(svc)}


def dialled_hosts(svc: dict) -> set[str]:
    """The compose services a service connects to, from its command line and environment."""
    words = [str(w) for w in (svc.get("command") or []) if isinstance(svc.get("command"), list)]
    words += list(environment(svc).values())
    hosts = set()
    for i, word in enumerate(words):
        value = words[i + 1] if word.startswith("--") and i + 1 < len(words) else word
        if word.startswith("--") and word.endswith("-target"):
            hosts.add(value.rsplit(":", 1)[0])
        for m in re.finditer(r"(?:redis|rediss|http|https)://(?:[^@/\s]*@)?([A-Za-z][\w.-]*)", value):
            hosts.add(m[1])
    return hosts


def test_envfleet_reaches_only_its_peers_and_the_internet():
    for stack, doc in stacks().items():
        services, nets = doc["services"], doc.get("networks") or {}
        fleet_nets = networks_of(services["envfleet"])
        assert fleet_nets == ENVFLEET_NETWORKS, f"{stack} envfleet is on {sorted(fleet_nets)}"
        # Alone on its route out; its other network holds only the peers it must have.
        assert members(services, "browser") == {"envfleet"}, f"{stack}: browser has {members(services, 'browser')}"
        assert not (nets.get("browser") or {}).get("internal"), f"{stack}: envfleet needs the internet"
        for name, svc in services.items():
            if name == "envfleet":
                continue
            shared = networks_of(svc) & fleet_nets
            if name in ENVFLEET_PEERS:
                assert shared == {"fleet"}, f"{stack} {name} ({ENVFLEET_PEERS[name]}) shares {shared} with envfleet"
            else:
                # Redis, its exporter, weightsync, the engines, Grafana: nothing a page runs can reach them.
                assert not shared, f"{stack} {name} shares {sorted(shared)} with envfleet"
        # No Redis for envfleet: no URL, no password; its screenshots go to the buffer's gRPC port.
        cmd = asyncwebrl_command(services["envfleet"]["command"])[1]
        env = environment(services["envfleet"])
        assert not any("redis" in a.lower() for a in cmd), f"{stack} envfleet: {cmd}"
        assert not any("REDIS" in k for k in env), f"{stack} envfleet: {sorted(env)}"
        buffer_port = flag_value(asyncwebrl_command(services["buffer"]["command"])[1], "--grpc-port") \
            or default_of(service_help("buffer"), "--grpc-port")
        assert flag_value(cmd, "--buffer-target") == f"buffer:{buffer_port}"
        assert set(env) & {"ASYNCWEBRL_AUTH_TOKEN"}, f"{stack} envfleet: no gRPC token for the buffer"


def test_networks_internal_and_every_peer_reachable():
    for stack, doc in stacks().items():
        services, nets = doc["services"], doc.get("networks") or {}
        assert set(nets) >= INTERNAL_NETWORKS | {"browser"}, f"{stack}: networks {sorted(nets)}"
        for name in INTERNAL_NETWORKS:
            assert (nets[name] or {}).get("internal") is True, f"{stack}: network {name} must be internal"
        assert "envfleet" not in members(services, "state")
        # A route out only where it is needed: envfleet's task sites, and the published ports (Docker
        # publishes none of a container that is only on internal networks, moby/moby#36174).
        for name, svc in services.items():
            external = {n for n in networks_of(svc) if not (nets.get(n) or {}).get("internal")}
            assert external == ({"browser"} if name == "envfleet" else {"edge"} if svc.get("ports") else set()), \
                f"{stack} {name}: non-internal networks {sorted(external)}"
            assert networks_of(svc) <= set(nets), f"{stack} {name}: undeclared network"
        # Everyone a service dials is on a network with it.
        for name, svc in services.items():
            for host in dialled_hosts(svc) - {"127.0.0.1", "localhost", "0.0.0.0"}:
                assert host in services, f"{stack} {name} dials {host}, which is no service"
                assert networks_of(svc) & networks_of(services[host]), f"{stack} {name} cannot reach {host}"
        # Prometheus reaches what it scrapes, Grafana reaches Prometheus.
        scraped = {n for job in raw(PROMETHEUS)["scrape_configs"] for sd in job.get("dns_sd_configs") or []
                   for n in sd["names"]}
        for host in scraped & set(services):
            assert networks_of(services["prometheus"]) & networks_of(services[host]), f"{stack}: no scrape of {host}"
        assert networks_of(services["grafana"]) & networks_of(services["prometheus"])
        # On a network envfleet is on, Prometheus takes no lifecycle or admin calls.
        prometheus = [str(a) for a in services["prometheus"]["command"]]
        assert not any(a.startswith(("--web.enable-lifecycle", "--web.enable-admin-api")) for a in prometheus), \
            f"{stack} prometheus: lifecycle/admin API open to the fleet network: {prometheus}"


def test_every_service_drops_capabilities_and_privileges():
    for stack, name, svc in service_items():
        assert svc.get("cap_drop") == ["ALL"], f"{stack} {name}: cap_drop {svc.get('cap_drop')}"
        assert set(svc.get("cap_add") or []) == CAP_ADD.get(name, set()), f"{stack} {name}: cap_add"
        assert "no-new-privileges:true" in (svc.get("security_opt") or []), f"{stack} {name}: no-new-privileges"
        assert not svc.get("privileged"), f"{stack} {name} is privileged"
        assert str(svc.get("user", "")).split(":")[0] not in ("root", "0"), f"{stack} {name} runs as root"
        for key in ("pid", "ipc", "network_mode", "userns_mode"):
            assert svc.get(key) != "host", f"{stack} {name}: {key}: host"


def test_every_service_that_can_has_a_read_only_root():
    for stack, name, svc in service_items():
        if name in WRITABLE_ROOT:
            assert svc.get("read_only") is False, f"{stack} {name}: say read_only: false ({WRITABLE_ROOT[name]})"
            continue
        assert svc.get("read_only") is True, f"{stack} {name} needs read_only: true (or a reason in WRITABLE_ROOT)"
        tmpfs = {str(t).split(":")[0] for t in svc.get("tmpfs") or []}
        if asyncwebrl_command(svc.get("command")):
            # Our images run as a user whose HOME is in the read-only root: HOME and caches go to /tmp.
            env = environment(svc)
            assert "/tmp" in tmpfs, f"{stack} {name}: no /tmp tmpfs"
            assert env.get("HOME") == "/tmp" and env.get("XDG_CACHE_HOME", "/tmp").startswith("/tmp"), \
                f"{stack} {name}: HOME {env.get('HOME')!r}"
    services = stacks()["cpu"]["services"]
    assert "redis-data:/data" in services["redis"]["volumes"] and services["redis"]["read_only"] is True


def _argv_fields(svc: dict) -> list[str]:
    out = []
    for key in ("command", "entrypoint"):
        value = svc.get(key)
        out += [str(v) for v in value] if isinstance(value, list) else [str(value)] if value else []
    test = (svc.get("healthcheck") or {}).get("test")
    out += [str(v) for v in test] if isinstance(test, list) else [str(test)] if test else []
    return out


def test_no_secret_on_any_command_line():
    env = {**TEST_ENV, **{name: f"Sx{i}-{name.lower()}-value" for i, name in enumerate(SECRETS)}}
    docs = {"cpu": interpolate(without_extensions(raw(COMPOSE)), env),
            "gpu": interpolate(merge(without_extensions(raw(COMPOSE)), raw(GPU)), env)}
    for stack, doc in docs.items():
        for name, svc in doc["services"].items():
            for word in _argv_fields(svc):
                for secret in SECRETS:
                    assert env[secret] not in word, f"{stack} {name}: {secret} on the command line: {word!r}"
                assert not re.search(r"://[^/@\s:]*:[^/@\s]+@", word), f"{stack} {name}: password in a URL: {word!r}"
                for flag in SECRET_FLAGS:
                    assert not re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", word), \
                        f"{stack} {name}: {flag} on the command line"
    # Nor a reference to one (interpolated into the argv by compose): `$$` keeps a variable for the shell.
    for path in (COMPOSE, GPU):
        for name, svc in (raw(path).get("services") or {}).items():
            for word in _argv_fields(svc):
                used = {m["name"] or m["bare"] for m in _VAR.finditer(word) if not m["escaped"]}
                assert not used & set(SECRETS), f"{path.name} {name}: {sorted(used & set(SECRETS))} in the argv"


REDIS_TRICKY_PASSWORD = 'p"a\\s$s `id` $(id) \'q\' #x'


def _redis_entrypoint(tmp_path, password: str, replace: dict[str, str] | None = None, fake: bool = True):
    """The redis service's entrypoint and command as a local command line (flags' values in ``replace``
    swapped: redis-server applies --dir as it reads it), with a stand-in redis-server unless ``fake`` is
    false."""
    svc = stacks()["cpu"]["services"]["redis"]
    entrypoint, command = svc["entrypoint"], [str(c) for c in svc["command"]]
    for flag, value in (replace or {}).items():
        command[command.index(flag) + 1] = value
    assert entrypoint[:2] == ["/bin/sh", "-c"], entrypoint
    path = os.environ["PATH"]
    if fake:
        bin_dir = tmp_path / "bin"
        bin_dir.mkdir(exist_ok=True)
        (bin_dir / "redis-server").write_text('#!/bin/sh\nprintf "%s\\n" "$@" > "$0.argv"\ncat > "$0.stdin"\n')
        (bin_dir / "redis-server").chmod(0o755)
        path = f"{bin_dir}:{path}"
    env = {"PATH": path, **environment(svc)}
    env["REDISCLI_AUTH"] = password
    return ["sh", "-c", entrypoint[2], *entrypoint[3:], *command], env


def test_redis_gets_its_password_on_stdin(tmp_path):
    args, env = _redis_entrypoint(tmp_path, REDIS_TRICKY_PASSWORD)
    result = subprocess.run(args, env=env, capture_output=True, text=True, timeout=10)
    assert result.returncode == 0, result.stderr
    argv = (tmp_path / "bin" / "redis-server.argv").read_text().splitlines()
    stdin = (tmp_path / "bin" / "redis-server.stdin").read_text()
    assert argv[-1] == "-" and not any("requirepass" in a or "p\"a" in a for a in argv), argv
    assert flag_value(argv, "--dir") == "/data" and flag_value(argv, "--appendonly") == "yes"
    assert flag_value(argv, "--maxmemory-policy") == "noeviction"
    # Escaped for Redis' config parser (sdssplitargs): \\ and \" inside double quotes.
    escaped = REDIS_TRICKY_PASSWORD.replace("\\", "\\\\").replace('"', '\\"')
    assert stdin == f'requirepass "{escaped}"\n', stdin
    # A password on two lines would be two config lines: refused, as is an empty one.
    for bad in ("one\nrename-command FLUSHALL x", ""):
        args, env = _redis_entrypoint(tmp_path, bad)
        result = subprocess.run(args, env=env, capture_output=True, text=True, timeout=10)
        assert result.returncode != 0


def _redis_call(port: int, *commands: list[str]) -> bytes:
    import socket
    import time
    payload = b"".join(b"*%d\r\n" % len(c) + b"".join(b"$%d\r\n%s\r\n" % (len(a.encode()), a.encode()) for a in c)
                       for c in commands)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        conn.sendall(payload)
        data, deadline = b"", time.monotonic() + 5
        while data.count(b"\r\n") < len(commands) and time.monotonic() < deadline:
            data += conn.recv(4096)
    return data


def test_redis_entrypoint_with_the_real_redis_server(tmp_path):
    import socket
    import time
    assert shutil.which("redis-server"), "redis-server is missing: run 'make setup'"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    data = tmp_path / "data"
    data.mkdir()
    args, env = _redis_entrypoint(tmp_path, REDIS_TRICKY_PASSWORD, fake=False,
                                  replace={"--port": str(port), "--dir": str(data)})
    args += ["--bind", "127.0.0.1"]
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                reply = _redis_call(port, ["PING"])
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read().decode()[-2000:]
                time.sleep(0.1)
        assert reply.startswith(b"-NOAUTH"), reply
        assert _redis_call(port, ["AUTH", "wrong"]).startswith(b"-WRONGPASS")
        reply = _redis_call(port, ["AUTH", REDIS_TRICKY_PASSWORD], ["CONFIG", "GET", "appendonly"])
        assert reply.startswith(b"+OK\r\n") and b"yes" in reply, reply
        cmdline = pathlib.Path(f"/proc/{proc.pid}/cmdline").read_bytes()
        assert b"p\"a" not in cmdline and b"requirepass" not in cmdline, cmdline
    finally:
        proc.terminate()
        proc.wait(timeout=20)


# === Dockerfiles ========================================================================================

ALL_DOCKERFILES = [*DOCKERFILES.values(), SGLANG_DOCKERFILE]


@pytest.mark.parametrize("path", ALL_DOCKERFILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_dockerfile_basics(path):
    text = path.read_text()
    assert parsed(path).structure, f"{path} does not parse"
    assert "imagetools inspect" in text and "@sha256:" in text, f"{path}: say how to pin the base image's digest"
    names = {s.name for s in stages(path) if s.name}
    for stage in stages(path):
        if stage.base in names:
            continue
        last = stage.base.rsplit("/", 1)[-1]
        assert "$" not in stage.base, f"{path}: unresolved base image {stage.base}"
        assert ":" in last and last.partition(":")[2].split("@")[0] not in ("", "latest"), \
            f"{path}: base image {stage.base} is not pinned by tag"
    # The default target (last stage) and any named target compose builds: non-root, healthcheck, CMD.
    targets = [stages(path)[-1], *[s for s in stages(path) if s.name == "local"]]
    for stage in targets:
        assert stage.user and not re.match(r"(root|0)(:|$)", stage.user), f"{path} [{stage.name}]: USER {stage.user}"
        health = stage.all("HEALTHCHECK")
        assert health and "NONE" not in health[-1].upper().split(), f"{path} [{stage.name}]: no HEALTHCHECK"
        assert stage.cmd, f"{path} [{stage.name}]: no CMD"
    for stage in stages(path):
        for instruction in ("COPY", "ADD"):
            for value in stage.all(instruction):
                for src in copy_sources(value) or []:
                    assert (ROOT / src).exists(), f"{path}: {instruction} source {src} is not in the repository"
                    assert not dockerignored(src), f"{path}: {src} is excluded by .dockerignore"


@pytest.mark.parametrize("service", SERVICES)
def test_image_holds_only_its_service(service):
    path = DOCKERFILES[service]
    all_stages = stages(path)
    assert len(all_stages) >= 2 and all_stages[0].name == "builder", f"{path}: build wheels in a builder stage"
    builder, final = all_stages[0], all_stages[-1]
    assert final.installed_wheels() == {"common", service}, f"{path}: final stage installs {final.installed_wheels()}"
    allowed_sources = {"libs/common", f"services/{service}"}
    if service == "api":
        local = next(s for s in all_stages if s.name == "local")
        assert local.installed_wheels() == LOCAL_TARGET, f"{path} [local] installs {local.installed_wheels()}"
        allowed_sources |= {f"services/{m}" for m in JOB_PROCESSES}
    copied = {src.rstrip("/") for v in builder.all("COPY") for src in copy_sources(v) or []}
    assert copied == allowed_sources, f"{path}: the builder copies {sorted(copied)}"
    for stage in all_stages[1:]:
        # Runtime stages take the wheels from the builder, never sources from the context.
        for value in stage.all("COPY"):
            assert copy_sources(value) is None, f"{path} [{stage.name}]: COPY {value}"
        for run in stage.all("RUN"):
            assert not re.search(r"pip install[^&|;]*\s\./", run), f"{path} [{stage.name}]: installs sources"
    # The ports it exposes and checks are the service's own.
    help_text = service_help(service)
    http_port = int(default_of(help_text, "--http-port"))
    exposed = {int(p.split("/")[0]) for v in final.all("EXPOSE") for p in v.split()}
    assert http_port in exposed, f"{path}: EXPOSE {exposed} lacks the HTTP port {http_port}"
    if "--grpc-port" in flags_of(help_text):
        assert int(default_of(help_text, "--grpc-port")) in exposed
    health = final.all("HEALTHCHECK")[-1]
    assert f"127.0.0.1:{http_port}/" in health, f"{path}: the healthcheck does not probe port {http_port}"


@pytest.mark.parametrize("path", list(DOCKERFILES.values()), ids=lambda p: p.parent.name)
def test_image_cmd_runs(path):
    for stage in stages(path):
        cmd = asyncwebrl_command(stage.cmd)
        if stage.cmd is not None:
            assert cmd, f"{path} [{stage.name}]: CMD {stage.cmd} is not python -m asyncwebrl.<service>"
            check_invocation(f"{path.relative_to(ROOT)} [{stage.name}]", cmd[0], cmd[1])
            assert cmd[0] == path.parent.name


def test_torch_builds_match_the_pin_of_libs_common():
    pin = re.search(r'"torch==([0-9.]+)"', (ROOT / "libs/common/pyproject.toml").read_text())[1]
    for service in ("engine", "api"):
        path = DOCKERFILES[service]
        versions = {stage_args(s).get("TORCH_VERSION") for s in stages(path) if "torch" in " ".join(s.all("RUN"))}
        assert versions == {pin}, f"{path}: TORCH_VERSION {versions} != libs/common's torch=={pin}"
    trainer_base = stages(DOCKERFILES["trainer"])[-1].base
    assert re.match(rf"pytorch/pytorch:{re.escape(pin)}-cuda12\.\d+-cudnn9-runtime", trainer_base), trainer_base


def test_sglang_image_launches_sglang_as_asyncwebrl_expects():
    final = stages(SGLANG_DOCKERFILE)[-1]
    assert final.base.startswith("lmsysorg/sglang:v")
    assert final.cmd == ["asyncwebrl-sglang"]
    assert f"127.0.0.1:{SGLANG_PORT}/health" in final.all("HEALTHCHECK")[-1]
    script = (ROOT / "deploy/sglang/launch.sh").read_text()
    assert os.access(ROOT / "deploy/sglang/launch.sh", os.X_OK)
    for flag in ("--enable-metrics", "--api-key", "--admin-api-key", "--weight-version", "--port", "--host",
                 "--model-path", "sglang.launch_server"):
        assert flag in script, f"launch.sh does not pass {flag}"
    assert subprocess.run(["sh", "-n", str(ROOT / "deploy/sglang/launch.sh")]).returncode == 0


def test_sglang_launcher_refuses_to_start_without_a_model_or_a_key(tmp_path):
    script = str(ROOT / "deploy/sglang/launch.sh")
    env = {"PATH": os.environ["PATH"]}
    result = subprocess.run(["sh", script], env=env, capture_output=True, text=True, timeout=10)
    assert result.returncode != 0 and "SGLANG_MODEL_PATH" in result.stderr
    (tmp_path / "config.json").write_text("{}")
    result = subprocess.run(["sh", script], env={**env, "SGLANG_MODEL_PATH": str(tmp_path)},
                            capture_output=True, text=True, timeout=10)
    assert result.returncode == 2 and "SGLANG_API_KEY" in result.stderr
    # With both, it execs SGLang with the flags asyncwebrl relies on (a stand-in python3 prints them).
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "python3").write_text('#!/bin/sh\nprintf "%s\\n" "$@"\n')
    (fake / "python3").chmod(0o755)
    result = subprocess.run(["sh", script, "--tp-size", "2"], capture_output=True, text=True, timeout=10,
                            env={"PATH": f"{fake}:{os.environ['PATH']}", "SGLANG_MODEL_PATH": str(tmp_path),
                                 "SGLANG_API_KEY": "k"})
    args = result.stdout.split("\n")
    assert result.returncode == 0, result.stderr
    assert args[:2] == ["-m", "sglang.launch_server"]
    assert flag_value(args, "--port") == str(SGLANG_PORT) and flag_value(args, "--host") == "0.0.0.0"
    assert flag_value(args, "--api-key") == "k" and flag_value(args, "--admin-api-key") == "k"
    assert flag_value(args, "--weight-version") == "0" and "--enable-metrics" in args
    assert flag_value(args, "--tp-size") == "2" and flag_value(args, "--model-path") == str(tmp_path)


def test_dockerignore_sends_only_sources():
    for kept in ("libs/common/pyproject.toml", "services/api/pyproject.toml", "deploy/sglang/launch.sh",
                 "libs/common/src/asyncwebrl/common/models/tiny/qwen2_5_vl/config.json"):
        assert not dockerignored(kept), kept
    for dropped in (".env", ".venv/bin/python", "runs/demo/x", ".git/HEAD", "tests/conftest.py",
                    "services/api/src/asyncwebrl/api/__pycache__/app.cpython-311.pyc",
                    "libs/common/src/asyncwebrl_common.egg-info/PKG-INFO", "deploy/compose/.env"):
        assert dockerignored(dropped), dropped


# === Prometheus and Grafana =============================================================================

def test_prometheus_config_and_rules(tmp_path):
    config = raw(PROMETHEUS)
    assert config["scrape_configs"]
    # The rule files come from charts/rules, mounted where rule_files looks.
    prom = stacks()["cpu"]["services"]["prometheus"]
    mounts = dict(str(v).split(":")[:2][::-1] for v in prom["volumes"])
    assert mounts.get("/etc/prometheus/prometheus.yml") == "./deploy/compose/prometheus.yml"
    rules_dir = mounts.get("/etc/prometheus/rules")
    assert rules_dir == "./charts/rules"
    assert all(p.startswith("/etc/prometheus/rules/") for p in config["rule_files"])
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: scripts/bootstrap.sh installs Debian's prometheus package"
    # promtool resolves the globs on this machine: point them at the repository's rules, which it then
    # checks too (a rule file that does not exist yet matches nothing, which is fine).
    local = dict(config)
    local["rule_files"] = [str(ROOT / "charts" / "rules" / pathlib.PurePosixPath(p).name) for p in config["rule_files"]]
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(local))
    result = subprocess.run([promtool, "check", "config", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_prometheus_scrapes_every_service():
    targets: dict[str, set[int]] = {}
    for job in raw(PROMETHEUS)["scrape_configs"]:
        assert re.fullmatch(r"asyncwebrl-[a-z]+|prometheus", job["job_name"]), job["job_name"]
        for sd in job.get("dns_sd_configs") or []:
            assert sd.get("type") == "A"
            for name in sd["names"]:
                targets.setdefault(name, set()).add(int(sd["port"]))
        for sc in job.get("static_configs") or []:
            for t in sc["targets"]:
                host, port = t.rsplit(":", 1)
                targets.setdefault(host, set()).add(int(port))
    for stack, name, svc in service_items():
        cmd = asyncwebrl_command(svc.get("command"))
        if cmd:
            port = flag_value(cmd[1], "--http-port") or default_of(service_help(cmd[0]), "--http-port")
        elif name == "sglang":
            port = SGLANG_PORT
        elif name == "redis-exporter":
            port = 9121
        else:
            continue
        assert int(port) in targets.get(name, set()), f"{stack} {name}: Prometheus does not scrape port {port}"
    assert "prometheus" in stacks()["cpu"]["services"]


def test_grafana_provisioning_points_at_prometheus_and_the_dashboards():
    grafana = stacks()["cpu"]["services"]["grafana"]
    mounts = dict(str(v).split(":")[:2][::-1] for v in grafana["volumes"])
    assert mounts.get("/etc/grafana/provisioning") == "./deploy/compose/grafana/provisioning"
    datasources = [ds for f in (GRAFANA / "datasources").glob("*.yaml") for ds in raw(f)["datasources"]]
    prometheus = [ds for ds in datasources if ds["type"] == "prometheus"]
    assert len(prometheus) == 1 and prometheus[0]["url"] == "http://prometheus:9090" and prometheus[0]["isDefault"]
    providers = [p for f in (GRAFANA / "dashboards").glob("*.yaml") for p in raw(f)["providers"]]
    assert len(providers) == 1
    path = providers[0]["options"]["path"]
    assert mounts.get(path) == "./charts/dashboards", f"the dashboards provider reads {path}, mounts are {mounts}"
    # The dashboards that exist name a datasource Grafana has (their own variable, or the provisioned uid).
    uid = prometheus[0]["uid"]
    for board in (ROOT / "charts" / "dashboards").glob("*.json"):
        text = board.read_text()
        json.loads(text)
        for m in re.finditer(r'"datasource":\s*\{[^{}]*"uid":\s*"([^"]+)"', text):
            assert m[1] in (uid, "-- Grafana --") or m[1].startswith("$"), f"{board.name}: datasource {m[1]}"
