"""A goxel-refd for the tests of a module (stdlib only), and where the package comes from.

GOXEL_REFD is the daemon binary (default build/bin/goxel-refd). Unless GOXELPOOL_TEST_INSTALLED
is set (the tests then exercise an installed package, from pip), bindings/python goes first on
sys.path so that the source tree's package is the one tested.
"""
from __future__ import annotations

import json
import os
import select
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict, Optional, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
PACKAGE_ROOT = os.path.dirname(HERE)                       # bindings/python
REPO_ROOT = os.path.dirname(os.path.dirname(PACKAGE_ROOT))  # the project
if not os.environ.get("GOXELPOOL_TEST_INSTALLED"):
    sys.path.insert(0, PACKAGE_ROOT)

_process: Optional[subprocess.Popen] = None
_workdir = ""
_socket = ""


def refd_path() -> str:
    path = os.environ.get("GOXEL_REFD", os.path.join(REPO_ROOT, "build", "bin", "goxel-refd"))
    return path if os.path.isabs(path) else os.path.join(os.getcwd(), path)


def start(prefix: str) -> Tuple[str, str]:
    """Starts goxel-refd on a socket in a new temporary directory; returns (directory, socket)."""
    global _process, _workdir, _socket
    binary = refd_path()
    if not os.access(binary, os.X_OK):
        raise RuntimeError(f"goxel-refd not found at {binary} (build it with `make`, or set GOXEL_REFD)")
    _workdir = tempfile.mkdtemp(prefix=prefix)
    _socket = os.path.join(_workdir, "refd.sock")
    _process = subprocess.Popen([binary, "--socket", _socket], stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    want = f"goxel-refd listening on {_socket}".encode()
    deadline = time.monotonic() + 10
    output = b""
    assert _process.stdout is not None
    while time.monotonic() < deadline:
        ready, _, _ = select.select([_process.stdout], [], [], 0.1)
        if ready:
            chunk = os.read(_process.stdout.fileno(), 4096)
            if not chunk:
                break
            output += chunk
            if want in output:
                return _workdir, _socket
        if _process.poll() is not None:
            break
    stop()
    raise RuntimeError(f"goxel-refd did not start: {output.decode(errors='replace')!r}")


def stop() -> None:
    global _process
    if _process is not None:
        _process.terminate()
        try:
            _process.wait(5)
        except subprocess.TimeoutExpired:
            _process.kill()
            _process.wait()
        if _process.stdout:
            _process.stdout.close()
        _process = None
    if _workdir:
        shutil.rmtree(_workdir, ignore_errors=True)


def control(method: str, params: Any = None) -> Any:
    """One JSON-RPC call on refd's fault-free control socket (SOCKET.ctl), without the library."""
    request: Dict[str, Any] = {"jsonrpc": "2.0", "id": 1, "method": method}
    if params is not None:
        request["params"] = params
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(5)
        s.connect(_socket + ".ctl")
        s.sendall(json.dumps(request).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    answer = json.loads(data)
    if "error" in answer:
        raise RuntimeError(f"{method}: {answer['error']}")
    return answer.get("result")
