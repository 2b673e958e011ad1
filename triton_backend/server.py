"""Launch Triton Inference Server on a model repository, wait until it is ready, stop it cleanly.

Uses a system ``tritonserver`` where one is on PATH (e.g. NVIDIA's NGC containers, whose backends include
``tensorrtllm``), else the Triton 2.51 build bundled in ``nvidia-pytriton`` 0.7, which needs: a backend folder
with a real copy of ``libtriton_python.so`` (a symlink "escapes backend directory"), the python-backend stub for
this Python, ``triton_python_backend_utils.py``; this environment's ``bin`` first on PATH and this interpreter's
``lib`` on LD_LIBRARY_PATH so the stub embeds the same Python (and sees numpy<2, which BYTES tensors need).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from types import TracebackType

from quant_common.atomic import staged_dir
from quant_common.errors import QuantError
from triton_backend import config_pbtxt
from triton_backend import launch as launching

LOOPBACK = "127.0.0.1"
CACHE_ENV = "TQ_CACHE_DIR"


@dataclass(frozen=True)
class Tritonserver:
    binary: Path
    backend_dir: Path | None  # None: the server's own default (/opt/tritonserver/backends)
    library_dirs: tuple[Path, ...] = ()
    source: str = "system"


def _cache_dir() -> Path:
    root = os.environ.get(CACHE_ENV) or os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(root) / "tensorrt-quantization"


def _pytriton_root() -> Path | None:
    # Located, not imported: importing pytriton loads its own client stack (pyzmq, sh, ...), which the server
    # binary does not need (the GPU box has the package's files but not those).
    spec = importlib.util.find_spec("pytriton")
    if spec is None or spec.origin is None:
        return None
    root = Path(spec.origin).resolve().parent / "tritonserver"
    return root if (root / "bin" / "tritonserver").is_file() else None


def _bundled_backends(root: Path) -> Path:
    """The backend folder the bundled server needs, built once per pytriton version and Python version."""
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = root / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.is_file():
        raise QuantError(f"nvidia-pytriton has no python-backend stub for Python {version}",
                         "use Python 3.8–3.13 or a system tritonserver")
    tag = f"pytriton-{metadata.version('nvidia-pytriton')}-py{version}"
    backends = _cache_dir() / "triton-backends" / tag
    python_dir = backends / "python"
    if not (python_dir / "libtriton_python.so").is_file():
        with staged_dir(backends) as tmp:
            (tmp / "python").mkdir()
            shutil.copy2(root / "backends" / "python" / "libtriton_python.so", tmp / "python")
            shutil.copy2(root / "backends" / "python" / "triton_python_backend_utils.py", tmp / "python")
            shutil.copy2(stub, tmp / "python" / "triton_python_backend_stub")
    return backends


def find_tritonserver(explicit: str | os.PathLike[str] | None = None) -> Tritonserver:
    """An explicit binary, else ``tritonserver`` on PATH, else the one bundled in nvidia-pytriton."""
    if explicit is not None:
        binary = Path(explicit)
        if not (binary.is_file() and os.access(binary, os.X_OK)):
            raise QuantError(f"{binary} is not an executable tritonserver", "pass the path of the tritonserver binary")
        return Tritonserver(binary, None, source="explicit")
    system = shutil.which("tritonserver")
    if system:
        return Tritonserver(Path(system), None, source="system")
    root = _pytriton_root()
    if root is None:
        raise QuantError("no tritonserver found (not on PATH, and nvidia-pytriton is not installed)",
                         "pip install nvidia-pytriton, or run inside NVIDIA's tritonserver container")
    libs = root.parent.parent / "nvidia_pytriton.libs"  # the bundled binaries' own shared libraries
    return Tritonserver(root / "bin" / "tritonserver", _bundled_backends(root),
                        library_dirs=(libs,) if libs.is_dir() else (), source="nvidia-pytriton")


def port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return True
    return False


def stub_python() -> Path:
    """The python whose environment Triton's python models run in: ``TQ_TRITON_PYTHON`` (a venv's ``bin/python3``
    whose site-packages hold what the models need) or the one running this process."""
    chosen = os.environ.get("TQ_TRITON_PYTHON")
    if not chosen:
        return Path(sys.executable)
    python = Path(chosen)  # not resolved: a venv's python is a link whose folder is what counts
    if not (python.is_file() and os.access(python, os.X_OK)):
        raise QuantError(f"TQ_TRITON_PYTHON={chosen} is not an executable python",
                         "point it at a python3 (e.g. a venv's bin/python3) or unset it")
    return python


def free_port(host: str = LOOPBACK) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def check_repository(repo: Path) -> list[str]:
    """Model names in ``repo``, after validating every config.pbtxt offline."""
    if not repo.is_dir():
        raise QuantError(f"model repository {repo} does not exist", "pass the triton_repo folder written by "
                         "llm-quant build or llm-quant package")
    models = sorted(p.name for p in repo.iterdir() if p.is_dir() and not p.name.startswith("."))
    configs = [repo / m / "config.pbtxt" for m in models if (repo / m / "config.pbtxt").is_file()]
    if not configs:
        raise QuantError(f"{repo} holds no model (no */config.pbtxt)", "pass a Triton model repository")
    for config in configs:
        config_pbtxt.load(config)
    return models


_LOAD_FAILURE = re.compile(r"failed to load (?:model )?'([^']+)'[^:]*: (.*)$|"
                           r"Poll failed for model directory '([^']+)': (.*)$")


def _failure_from_log(log: Path) -> str | None:
    with contextlib.suppress(OSError):
        for line in log.read_text(encoding="utf-8", errors="replace").splitlines():
            match = _LOAD_FAILURE.search(line)
            if match:
                name, reason = (match.group(1), match.group(2)) if match.group(1) else (match.group(3),
                                                                                       match.group(4))
                # Triton escapes the python traceback into the same line; its first line says what broke.
                reason = reason.split("\\n")[0].strip().rstrip('"')
                return f"model '{name}' failed to load: {reason[:300]}"
    return None


@dataclass
class TritonServer:
    """A running ``tritonserver`` (context manager). Binds 127.0.0.1 unless ``host`` says otherwise."""

    repo: Path
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    host: str = LOOPBACK
    log_file: Path | None = None
    binary: str | os.PathLike[str] | None = None
    ready_timeout_s: float = 300.0
    extra_args: list[str] = field(default_factory=list)
    # A multi-GPU engine: one server whose TensorRT-LLM backend spawns the ranks, instead of mpirun with one
    # tritonserver per rank (triton_backend.launch).
    orchestrator: bool = False
    process: subprocess.Popen[bytes] | None = field(default=None, init=False)

    @property
    def http_url(self) -> str:
        return f"{self.host}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    def command(self, server: Tritonserver) -> list[str]:
        argv = [str(server.binary), f"--model-repository={self.repo.resolve()}",
                f"--http-address={self.host}", f"--http-port={self.http_port}",
                f"--grpc-address={self.host}", f"--grpc-port={self.grpc_port}",
                f"--metrics-address={self.host}", f"--metrics-port={self.metrics_port}",
                "--allow-gpu-metrics=false"]
        if server.backend_dir is not None:
            argv.append(f"--backend-directory={server.backend_dir}")
        return argv + list(self.extra_args)

    def launch_plan(self, server: Tritonserver) -> launching.Launch:
        """The exact launch: plain ``tritonserver`` for a 1-GPU engine, else as upstream launches tp x pp ranks."""
        engines = launching.repository_engines(self.repo)
        return launching.plan(self.command(server), world_size=engines.world.world_size, models=engines.models,
                              orchestrator=self.orchestrator,
                              gpus=launching.gpu_count() if self.orchestrator else 0,
                              triton_version=launching.triton_version())

    def environment(self, server: Tritonserver) -> dict[str, str]:
        env = dict(os.environ)
        # The python-backend stub embeds its own interpreter, which takes sys.prefix from the first python3 on PATH
        # and ignores PYTHONPATH: the python3 first on PATH decides which packages the models import.
        env["PATH"] = os.pathsep.join([str(stub_python().parent), env.get("PATH", "")])
        libdirs = [sysconfig.get_config_var("LIBDIR") or str(Path(sys.base_prefix) / "lib")]
        libdirs += [str(d) for d in server.library_dirs]
        if env.get("LD_LIBRARY_PATH"):
            libdirs.append(env["LD_LIBRARY_PATH"])
        env["LD_LIBRARY_PATH"] = os.pathsep.join(libdirs)
        # The python models import this project (the pytorch runtime) even when it is not installed.
        project_root = str(Path(__file__).resolve().parents[1])
        # The stub's interpreter otherwise inherits the C locale and reads UTF-8 files (torch, tokenizers) as ASCII.
        env.setdefault("PYTHONUTF8", "1")
        if "UTF-8" not in (env.get("LC_ALL") or env.get("LC_CTYPE") or env.get("LANG") or "").upper():
            env["LC_ALL"] = "C.UTF-8"
        env["PYTHONPATH"] = os.pathsep.join(p for p in (project_root, env.get("PYTHONPATH", "")) if p)
        return env

    def start(self) -> TritonServer:
        check_repository(self.repo)
        for name, port in (("HTTP", self.http_port), ("gRPC", self.grpc_port), ("metrics", self.metrics_port)):
            if port_in_use(self.host, port):
                raise QuantError(f"{name} port {port} on {self.host} is already in use",
                                 f"stop the process using it or pass another --{name.lower()}-port")
        server = find_tritonserver(self.binary)
        plan = self.launch_plan(server)
        launching.check_runnable(plan)
        log = self.log_file or self.repo.resolve().parent / "tritonserver.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        self.log_file = log
        with open(log, "wb") as sink:
            self.process = subprocess.Popen(plan.argv, stdout=sink, stderr=subprocess.STDOUT,
                                            env={**self.environment(server), **plan.env}, start_new_session=True)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.http_url}/v2/health/ready", timeout=2) as reply:
                return int(reply.status) == 200
        except (urllib.error.URLError, OSError):
            return False

    def _wait_ready(self) -> None:
        assert self.process is not None and self.log_file is not None
        deadline = time.monotonic() + self.ready_timeout_s
        while time.monotonic() < deadline:
            code = self.process.poll()
            if code is not None:
                reason = _failure_from_log(self.log_file) or f"tritonserver exited with code {code}"
                raise QuantError(f"Triton did not start: {reason}", f"see {self.log_file}")
            if self._ready():
                return
            time.sleep(0.25)
        failure = _failure_from_log(self.log_file)
        raise QuantError(f"Triton was not ready after {self.ready_timeout_s:.0f} s"
                         + (f" ({failure})" if failure else ""), f"see {self.log_file}")

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def wait(self) -> int:
        assert self.process is not None
        return self.process.wait()

    def stop(self, timeout_s: float = 20.0) -> None:
        """SIGTERM (Triton unloads models and exits), then SIGKILL after ``timeout_s``."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()

    def __enter__(self) -> TritonServer:
        return self.start() if self.process is None else self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
