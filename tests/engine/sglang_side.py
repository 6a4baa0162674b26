"""SGLang's own code on a CPU-only machine without its dependencies, for the conformance tests.

The SGLang wheel is fetched with pip, without dependencies (they are CUDA builds), and unpacked under
``.venv/sglang-side/`` (kept between runs). Then:

* ``source_facts(version)`` reads its HTTP request and response field names with ``ast``: nothing
  is imported.
* ``run_generate(version, families)`` runs SGLang's own ``/generate`` tokenization in a subprocess
  of our virtualenv (torch and transformers come from there): ``GenerateReqInput`` built from the
  JSON body the way FastAPI builds it, ``TokenizerManager._tokenize_one_request`` with its real
  multimodal processor (``sglang.srt.multimodal.processors.qwen_vl.QwenVLImageProcessor`` on the
  Hugging Face processor of the checkpoint), i.e. the ids SGLang answers as ``prompt_token_ids``.
  Its answers are kept, keyed by everything they depend on, so that a rerun with the same inputs
  takes no time.

What the subprocess cannot have here, and how it gets by (nothing on the path under test):

* ``triton``, ``xgrammar``/``tvm_ffi`` (GPU kernels, constrained decoding) and ``IPython`` (notebook
  display): imported at module level by SGLang, used only by kernels, grammars and the frontend;
  stubbed (``STUBBED``).
* ``torchvision``: PyPI has only CUDA builds for Linux; with our CPU torch its import fails
  (``RuntimeError: operator torchvision::nms does not exist``). SGLang imports it at module level for
  resizing video frames (``qwen_vl``) and decoding JPEGs on the GPU with nvJPEG (``utils.common``),
  neither of which images go through on a CPU; stubbed. Transformers must not see the stub (it would
  pick its torchvision image processors), so torch's and transformers' availability checks run first,
  and SGLang is told ``--image-processor-backend pil``: the image processor transformers gives here.
* Transformers' Qwen-VL ``AutoProcessor`` also loads a video processor, which needs torchvision:
  the processor is built without it (``video_processor=None``); images never touch it.
* Only what is not installed is stubbed; the subprocess reports what it stubbed.
* A few light packages SGLang's modules import are installed for real (``SIDE_PACKAGES``), at
  the versions the wheel's own metadata pins where it pins one.

``TokenizerManager`` is built without ``__init__`` (which opens ZeroMQ sockets to a scheduler): the
attributes ``__init__`` reads from the published config, then SGLang's own ``init_model_config``,
``init_tokenizer_and_processor`` and ``init_running_status``.

``python tests/engine/sglang_side.py VERSION`` prepares the side environment and prints where it is.
"""

from __future__ import annotations

import ast
import contextlib
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile

ROOT = pathlib.Path(__file__).resolve().parents[2]
CACHE = ROOT / ".venv" / "sglang-side"
DOCKERFILE = ROOT / "deploy" / "sglang" / "Dockerfile"
# The newest release whose source the literal field sets in test_sglang_api.py were copied from.
LATEST = "0.5.23"
# Installed for real next to the wheel, without dependencies: distribution -> the version tested here,
# used where the wheel's metadata pins none. The last six are openai's dependencies our venv lacks.
SIDE_PACKAGES = {
    "msgspec": "0.23.0", "orjson": "3.13.0", "pybase64": "1.5.1", "pyzmq": "27.3.0", "uvloop": "0.23.0",
    "openai": "2.6.1", "compressed-tensors": "0.18.0", "partial_json_parser": "0.2.1.1.post7",
    "gguf": "0.19.0", "einops": "0.8.2", "sentencepiece": "0.2.3", "dill": "0.4.1", "loguru": "0.7.3",
    "httpx": "0.29.0", "httpcore": "1.0.9", "h11": "0.16.0", "certifi": "2026.10.19.post1", "jiter": "0.19.0",
    "distro": "1.9.0",
}
STUBBED = ("triton", "torchvision", "xgrammar", "tvm_ffi", "IPython")
RESULT_MARK = "SGLANG-SIDE-RESULT "


class SideEnvError(RuntimeError):
    """The side environment could not be prepared or the SGLang subprocess failed."""


def deployed_version() -> str:
    """The SGLang release deploy/sglang/Dockerfile builds on."""
    m = re.search(r"^ARG SGLANG_IMAGE=lmsysorg/sglang:v(\d+\.\d+\.\d+)", DOCKERFILE.read_text(), re.M)
    if not m:
        raise SideEnvError(f"no 'ARG SGLANG_IMAGE=lmsysorg/sglang:vX.Y.Z' in {DOCKERFILE}")
    return m.group(1)


# --- the side environment ---------------------------------------------------------------------------


@contextlib.contextmanager
def _locked():
    import fcntl

    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _pip(*args: str) -> None:
    cmd = [sys.executable, "-m", "pip", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        out = "\n".join(line for line in (proc.stdout + proc.stderr).splitlines() if "is ignored" not in line)
        raise SideEnvError(f"{' '.join(cmd[2:])} failed (exit {proc.returncode}); PyPI must be reachable "
                           f"for the first run:\n{out[-3000:]}")


def wheel(version: str) -> pathlib.Path:
    """SGLang's wheel, downloaded once (no dependencies)."""
    d = CACHE / "wheels"
    found = sorted(d.glob(f"sglang-{version}-*.whl"))
    if not found:
        _pip("download", "--no-deps", "--only-binary=:all:", "--dest", str(d), f"sglang=={version}")
        found = sorted(d.glob(f"sglang-{version}-*.whl"))
        if not found:
            raise SideEnvError(f"pip downloaded no sglang-{version} wheel into {d}")
    return found[-1]


def source(version: str) -> pathlib.Path:
    """The directory holding the unpacked wheel's ``sglang`` package (and its dist-info)."""
    target = CACHE / f"sglang-{version}"
    if (target / ".complete").exists():
        return target
    with _locked():
        if not (target / ".complete").exists():
            whl = wheel(version)
            tmp = pathlib.Path(tempfile.mkdtemp(dir=CACHE, prefix=f".sglang-{version}-"))
            try:
                with zipfile.ZipFile(whl) as z:
                    z.extractall(tmp)
                (tmp / ".complete").write_text(whl.name)
                shutil.rmtree(target, ignore_errors=True)
                tmp.rename(target)
                whl.unlink()  # unpacked for good
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
    return target


def packages() -> list[pathlib.Path]:
    """The ``sglang`` package folders of the deployed release and the latest one we checked, unpacked from
    their wheels (downloaded on the first run): what the flag, metric and field tests read."""
    return [source(v) / "sglang" for v in dict.fromkeys((deployed_version(), LATEST))]


def _pinned(version: str) -> list[str]:
    """SIDE_PACKAGES as requirements: the wheel's own pin where it has one, else the tested version."""
    meta = next(source(version).glob("sglang-*.dist-info")) / "METADATA"
    pins: dict[str, str] = {}
    for line in meta.read_text().splitlines():
        m = re.match(r"Requires-Dist: ([A-Za-z0-9_.-]+)\s*(==[^;\s]+)\s*$", line)
        if m:
            pins[re.sub(r"[-_.]+", "-", m.group(1)).lower()] = m.group(2)
    return [f"{name}{pins.get(re.sub(r'[-_.]+', '-', name).lower(), '==' + tested)}"
            for name, tested in SIDE_PACKAGES.items()]


def deps(version: str) -> pathlib.Path:
    """The real packages the SGLang subprocess imports besides our venv's, installed without dependencies."""
    reqs = _pinned(version)
    target = CACHE / f"deps-{version}"
    stamp = target / ".complete"
    if stamp.exists() and stamp.read_text() == "\n".join(reqs):
        return target
    with _locked():
        if not (stamp.exists() and stamp.read_text() == "\n".join(reqs)):
            tmp = pathlib.Path(tempfile.mkdtemp(dir=CACHE, prefix=f".deps-{version}-"))
            try:
                _pip("install", "--no-deps", "--only-binary=:all:", "--no-compile", "--target", str(tmp), *reqs)
                (tmp / ".complete").write_text("\n".join(reqs))
                shutil.rmtree(target, ignore_errors=True)
                tmp.rename(target)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
    return target


# --- the source, read with ast -------------------------------------------------------------------------


def _tree(version: str, rel: str) -> ast.Module:
    return ast.parse((source(version) / "sglang" / rel).read_text())


def _classes(tree: ast.Module) -> dict[str, ast.ClassDef]:
    return {n.name: n for n in tree.body if isinstance(n, ast.ClassDef)}


def class_fields(tree: ast.Module, name: str) -> set[str]:
    """Annotated class attributes (dataclass / msgspec.Struct fields), with those of bases defined in the
    same module (``BaseReq``'s ``rid``, ``http_worker_ipc``); ``ClassVar`` excluded."""
    classes = _classes(tree)
    node = classes[name]
    fields: set[str] = set()
    for base in node.bases:
        if isinstance(base, ast.Name) and base.id in classes:
            fields |= class_fields(tree, base.id)
    for st in node.body:
        if isinstance(st, ast.AnnAssign) and isinstance(st.target, ast.Name) \
                and not ast.unparse(st.annotation).split("[")[0].endswith("ClassVar"):
            fields.add(st.target.id)
    return fields


def _str_keys(d: ast.Dict) -> set[str]:
    return {k.value for k in d.keys if isinstance(k, ast.Constant) and isinstance(k.value, str)}


def _const_str(node) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def keys_written(tree: ast.AST, var: str) -> set[str]:
    """String keys written into the dict ``var``: ``var = {...}``, ``var["k"] = ...``,
    ``x["var"]["k"] = ...``, ``var.update({...})``, ``var.setdefault("k", ...)``."""
    keys: set[str] = set()
    for n in ast.walk(tree):
        if isinstance(n, (ast.Assign, ast.AnnAssign)):
            for t in n.targets if isinstance(n, ast.Assign) else [n.target]:
                if isinstance(t, ast.Name) and t.id == var and isinstance(n.value, ast.Dict):
                    keys |= _str_keys(n.value)
                if isinstance(t, ast.Subscript) and _const_str(t.slice) is not None and (
                        (isinstance(t.value, ast.Name) and t.value.id == var)
                        or (isinstance(t.value, ast.Subscript) and _const_str(t.value.slice) == var)):
                    keys.add(t.slice.value)
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and isinstance(n.func.value, ast.Name) \
                and n.func.value.id == var and n.args:
            if n.func.attr == "update" and isinstance(n.args[0], ast.Dict):
                keys |= _str_keys(n.args[0])
            if n.func.attr == "setdefault" and _const_str(n.args[0]) is not None:
                keys.add(n.args[0].value)
    return keys


def _function(tree: ast.Module, name: str) -> ast.AST:
    for n in ast.walk(tree):
        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name == name:
            return n
    raise SideEnvError(f"no function {name}")


def _dict_keys_in(node: ast.AST) -> set[str]:
    return set().union(*(_str_keys(d) for d in ast.walk(node) if isinstance(d, ast.Dict)))


def source_facts(version: str) -> dict[str, set[str]]:
    """Field and key names read from SGLang's source (see the names' comments)."""
    io = _tree(version, "srt/managers/io_struct.py")
    tm = _tree(version, "srt/managers/tokenizer_manager.py")
    wv = _tree(version, "srt/utils/weight_versions.py")
    http = _tree(version, "srt/entrypoints/http_server.py")
    add_spans = _function(wv, "add_weight_versions_to_meta_info")
    return {
        # Request bodies: io_struct.py dataclass / msgspec.Struct fields.
        "generate": class_fields(io, "GenerateReqInput"),
        "update_from_disk": class_fields(io, "UpdateWeightFromDiskReqInput"),
        "pause": class_fields(io, "PauseGenerationReqInput"),
        "continue": class_fields(io, "ContinueGenerationReqInput"),
        # sampling_params: SamplingParams(**sampling_params) in TokenizerManager._create_tokenized_object.
        "sampling": class_fields(_tree(version, "srt/sampling/sampling_params.py"), "SamplingParams"),
        # /generate response: the out_dict TokenizerManager._handle_batch_output builds.
        "response": keys_written(tm, "out_dict"),
        # meta_info keys tokenizer_manager.py writes, and add_weight_versions_to_meta_info's.
        "meta": keys_written(tm, "meta_info") | keys_written(add_spans, "meta_info"),
        # meta_info.weight_versions items, and the WeightVersionSpan struct they come from.
        "weight_version_span": _dict_keys_in(add_spans),
        "weight_version_span_struct": class_fields(wv, "WeightVersionSpan"),
        # http_server.py response bodies.
        "update_from_disk_response": _dict_keys_in(_function(http, "update_weights_from_disk")),
        "pause_response": _dict_keys_in(_function(http, "pause_generation")),
        "model_info_response": keys_written(_function(http, "model_info"), "result"),
    }


# --- running SGLang's /generate tokenization -----------------------------------------------------------


def _result_key(job: dict) -> str:
    """Everything the subprocess's answer depends on: the release, the requests, the checkpoints' files
    (the weights are never read), this file, the side packages and the venv packages it runs on, and
    SGLang's environment switches."""
    import hashlib
    import importlib.metadata

    h = hashlib.sha256()

    def add(*parts) -> None:
        for part in parts:
            h.update(part if isinstance(part, bytes) else str(part).encode())
            h.update(b"\0")

    add(job["version"], json.dumps(job["families"], sort_keys=True), pathlib.Path(__file__).read_bytes(),
        (pathlib.Path(job["deps"]) / ".complete").read_text(), sys.version)
    for spec in job["families"].values():
        for f in sorted(pathlib.Path(spec["model"]).iterdir()):
            if f.is_file() and f.suffix != ".safetensors":
                add(f.name, f.read_bytes())
    for dist in ("torch", "transformers", "tokenizers", "pillow", "numpy", "pydantic", "huggingface-hub"):
        add(dist, importlib.metadata.version(dist))
    add(sorted((k, v) for k, v in os.environ.items() if k.startswith(("SGLANG_", "SGL_"))))
    return h.hexdigest()


def run_generate(version: str, families: dict[str, dict], timeout: float = 300) -> dict:
    """``families``: {family: {"model": checkpoint dir, "requests": {name: /generate JSON body}}}.
    Returns {"version", "stubbed": [modules], "families": {family: {"processor", "hf_processor",
    "requests": {name: result}}}};
    a result is {"ok": True, "prompt_token_ids": [...], "ran": [...]} or {"ok": False, "type", "message",
    "raised_in", "sglang_frames"}; ``ran`` lists the SGLang functions the tokenization called (file:qualname).

    The answer is a function of its inputs (``_result_key``): it is kept under .venv/sglang-side/results
    and a later run with the same inputs reads it instead of starting SGLang again (about 15 s of CPU).
    ASYNCWEBRL_SGLANG_SIDE_FRESH=1 always runs SGLang."""
    job = {"src": str(source(version)), "deps": str(deps(version)), "version": version, "families": families}
    kept = CACHE / "results" / f"{version}-{_result_key(job)}.json"
    if kept.exists() and os.environ.get("ASYNCWEBRL_SGLANG_SIDE_FRESH", "") in ("", "0"):
        return json.loads(kept.read_text())
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONDONTWRITEBYTECODE": "1", "PYTHONPATH": ""}
    proc = subprocess.run([sys.executable, __file__, "--child"], input=json.dumps(job), capture_output=True,
                          text=True, timeout=timeout, env=env, cwd=ROOT)
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_MARK):
            result = json.loads(line[len(RESULT_MARK):])
            kept.parent.mkdir(parents=True, exist_ok=True)
            tmp = kept.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(result))
            tmp.rename(kept)
            for old in kept.parent.glob(f"{version}-*.json"):  # answers to other inputs: stale
                if old != kept:
                    old.unlink(missing_ok=True)
            return result
    raise SideEnvError(f"the SGLang {version} subprocess exited {proc.returncode} without a result:\n"
                       f"{(proc.stdout + proc.stderr)[-4000:]}")


# --- the subprocess ---------------------------------------------------------------------------------


def _install_stubs() -> list[str]:
    """Stub those of STUBBED that are not installed; returns their names."""
    import importlib
    import importlib.machinery
    import importlib.util
    import types

    missing = [name for name in STUBBED if importlib.util.find_spec(name) is None]
    # Availability checks that must see the truth (no triton, no torchvision) before the stubs exist:
    # torch's (cached, and at import of _dynamo and _inductor) and transformers' (cached).
    import torch  # noqa: F401
    import torch._dynamo  # noqa: F401
    import torch._inductor.compile_fx  # noqa: F401
    import transformers.image_utils  # noqa: F401
    from transformers.utils import import_utils

    assert import_utils.is_torchvision_available() == ("torchvision" not in missing)

    def any_schema(cls, source, handler):
        from pydantic_core import core_schema

        return core_schema.any_schema()

    class StubClass(type):
        """Stand-in for a stubbed module's classes: subclassable, callable, any attribute (pydantic: Any)."""

        def __getattr__(cls, name):
            if name.startswith("__"):
                raise AttributeError(name)
            value = StubClass(name, (), {"__module__": cls.__module__})
            setattr(cls, name, value)
            return value

        def __new__(mcs, name, bases, ns, **kwargs):
            ns.setdefault("__init__", lambda self, *a, **k: None)
            ns.setdefault("__init_subclass__", classmethod(lambda c, **k: None))
            ns.setdefault("__get_pydantic_core_schema__", classmethod(any_schema))
            return super().__new__(mcs, name, bases, ns)

        def __init__(cls, name, bases, ns, **kwargs):
            super().__init__(name, bases, ns)

        def __call__(cls, *args, **kwargs):
            if len(args) == 1 and callable(args[0]) and not kwargs:
                return args[0]  # used as a decorator
            return super().__call__()

    class StubModule(types.ModuleType):
        def __init__(self, name):
            super().__init__(name)
            self.__path__ = []
            self.__version__ = "0.0.0"

        def __getattr__(self, name):
            if name.startswith("__") and name.endswith("__"):
                raise AttributeError(name)
            if name[:1].isupper():
                value = StubClass(name, (), {"__module__": self.__name__})
                setattr(self, name, value)
                return value
            return importlib.import_module(f"{self.__name__}.{name}")

        def __call__(self, *args, **kwargs):  # @triton.jit, @triton.autotune(...)
            if len(args) == 1 and callable(args[0]) and not kwargs:
                return args[0]
            return lambda fn: fn

    class Finder:
        def find_spec(self, fullname, path=None, target=None):
            if fullname.split(".")[0] in missing:
                return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
            return None

        def create_module(self, spec):
            return StubModule(spec.name)

        def exec_module(self, module):
            pass

    sys.meta_path.insert(0, Finder())
    return missing


def _processor_without_video() -> None:
    """Transformers' Qwen-VL processors load a video processor, which needs torchvision: load none."""
    from transformers.models.auto.video_processing_auto import AutoVideoProcessor
    from transformers.processing_utils import ProcessorMixin

    AutoVideoProcessor.from_pretrained = classmethod(lambda cls, *args, **kwargs: None)
    check = ProcessorMixin.check_argument_for_proper_class

    def check_argument(self, name, argument):
        return None if name == "video_processor" and argument is None else check(self, name, argument)

    ProcessorMixin.check_argument_for_proper_class = check_argument


def _tokenizer_manager(model: str):
    from sglang.srt.disaggregation.utils import DisaggregationMode
    from sglang.srt.managers.tokenizer_manager import TokenizerManager
    from sglang.srt.runtime_context import get_disagg, get_lora, get_observability, get_serving, publish
    from sglang.srt.sampling.sampling_params import SamplingParams
    from sglang.srt.server_args import ServerArgs

    # The image processor transformers gives here (no torchvision) is its PIL one; say so to SGLang.
    server_args = ServerArgs(model_path=model, device="cpu", image_processor_backend="pil")
    publish(server_args, role="tokenizer")  # what launch_server / Engine do first
    tm = TokenizerManager.__new__(TokenizerManager)
    tm.server_args = server_args
    # TokenizerManager.__init__'s reads of the published config ...
    tm.enable_metrics = get_observability().enable_metrics
    tm.enable_trace = get_observability().enable_trace
    tm.enable_lora = get_lora().enable_lora
    tm.allow_auto_truncate = get_serving().allow_auto_truncate
    tm.skip_tokenizer_init = get_serving().skip_tokenizer_init
    tm.preferred_sampling_params = get_serving().preferred_sampling_params
    tm.disaggregation_mode = DisaggregationMode(get_disagg().disaggregation_mode)  # init_disaggregation
    tm.sampling_params_class = SamplingParams  # init_request_dispatcher
    # ... and its own initialisers, minus those that open sockets and start watchdogs.
    tm.init_model_config()
    tm.init_tokenizer_and_processor()
    tm.init_running_status()
    return tm


def _frame_name(filename: str, function: str, src: str) -> str:
    if filename.startswith(src):
        return f"{os.path.relpath(filename, src)}:{function}"
    marker = os.sep + "site-packages" + os.sep
    return f"{filename.split(marker)[-1]}:{function}"


_RAN: dict[str, set[str] | None] = {"calls": None}  # the SGLang functions the request being tokenized called


def _watch_calls(src: str | None) -> None:
    """Record into _RAN the SGLang functions called, in every thread (processors run in worker threads);
    ``None``: stop (threads already started keep recording, but only while a request is tokenized)."""
    import threading

    if src is None:
        sys.setprofile(None)
        threading.setprofile(None)
        return
    watched = (os.path.join(src, "sglang", "srt", "multimodal"), os.path.join(src, "sglang", "srt", "managers"))

    def profile(frame, event, arg):
        calls = _RAN["calls"]
        if calls is not None and event == "call":
            code = frame.f_code
            if code.co_filename.startswith(watched) and "<" not in code.co_qualname:
                calls.add(_frame_name(code.co_filename, code.co_qualname, src))

    sys.setprofile(profile)
    threading.setprofile(profile)


def _generate(tm, body: dict, src: str) -> dict:
    """What TokenizerManager.generate_request does before it sends the request to the scheduler."""
    import asyncio
    import dataclasses

    import pydantic
    from sglang.srt.managers.io_struct import GenerateReqInput

    unknown = sorted(set(body) - {f.name for f in dataclasses.fields(GenerateReqInput)})
    if unknown:  # refused here, whatever SGLang's HTTP layer would make of them
        return {"ok": False, "type": "UnknownField", "message": f"not GenerateReqInput fields: {unknown}",
                "raised_in": "", "sglang_frames": []}
    try:
        obj = pydantic.TypeAdapter(GenerateReqInput).validate_python(body)  # how FastAPI builds the body
        obj.normalize_batch_and_arguments()
        tm._init_req_state(obj, None)
        _RAN["calls"] = ran = set()
        try:
            tokenized = asyncio.run(tm._tokenize_one_request(obj))
        finally:
            _RAN["calls"] = None
            tm.rid_to_state.pop(obj.rid, None)
    except Exception as exc:  # noqa: BLE001 - every refusal is a result
        frames, tb = [], exc.__traceback__
        while tb is not None:
            frames.append(tb.tb_frame.f_code)
            tb = tb.tb_next
        return {"ok": False, "type": type(exc).__name__, "message": str(exc)[:1000],
                "raised_in": _frame_name(frames[-1].co_filename, frames[-1].co_qualname, src),
                "sglang_frames": [_frame_name(c.co_filename, c.co_qualname, src) for c in frames
                                  if c.co_filename.startswith(src)]}
    # generate_request: state.prompt_token_ids = list(tokenized_obj.input_ids) when return_prompt_token_ids.
    return {"ok": True, "prompt_token_ids": list(tokenized.input_ids), "ran": sorted(ran)}


def _child() -> None:
    job = json.loads(sys.stdin.read())
    sys.path[:0] = [job["deps"], job["src"]]
    stubbed = _install_stubs()
    if "torchvision" in stubbed:
        _processor_without_video()
    from sglang.version import __version__

    if __version__ != job["version"]:
        raise SideEnvError(f"imported sglang {__version__}, expected {job['version']}")
    result = {"version": __version__, "stubbed": stubbed, "families": {}}
    for family, spec in job["families"].items():
        tm = _tokenizer_manager(spec["model"])
        _watch_calls(job["src"])  # from here: the tokenizer manager's set-up is not what is checked
        result["families"][family] = {
            "processor": f"{type(tm.mm_processor).__module__}.{type(tm.mm_processor).__qualname__}",
            "hf_processor": type(tm.processor).__name__,
            "requests": {name: _generate(tm, body, job["src"]) for name, body in spec["requests"].items()},
        }
        _watch_calls(None)
    print(RESULT_MARK + json.dumps(result), flush=True)


if __name__ == "__main__":
    if sys.argv[1:] == ["--child"]:
        _child()
    else:
        for v in sys.argv[1:] or [deployed_version(), LATEST]:
            print(v, source(v), deps(v))
