"""goxel-refd for Python tests (Tests/metrics, Tests/cli): started on a socket in a directory of
the test's, in its own process group; faults and crashes through its control socket (PATH.ctl),
which costs the client under test no request."""
import json
import os
import signal
import socket
import subprocess
import time


class Refd:
    def __init__(self, binary, directory, *args):
        """Starts BINARY --socket DIRECTORY/refd.sock ARGS... and waits for its ready line."""
        self.path = os.path.join(directory, "refd.sock")
        self.proc = subprocess.Popen([binary, "--socket", self.path, *args], stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        line = self.proc.stdout.readline().decode()
        assert "listening on" in line, f"goxel-refd did not start: {line!r}"

    def control(self, method, params=None, expect_answer=True):
        """Calls a control method (refd.set_faults, refd.crash, ...) and returns its result. Under
        --supervise the control socket comes back with the restarted daemon: retried for 10 s."""
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                    s.settimeout(5)
                    s.connect(self.path + ".ctl")
                    request = {"jsonrpc": "2.0", "method": method, "id": 1}
                    if params is not None:
                        request["params"] = params
                    s.sendall(json.dumps(request).encode() + b"\n")
                    if not expect_answer:
                        return None
                    reply = json.loads(s.makefile("rb").readline())
                    return reply["result"]
            except (ConnectionError, FileNotFoundError, json.JSONDecodeError, KeyError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def stop(self):
        """Stops the daemon and, under --supervise, its child (the whole process group)."""
        os.killpg(self.proc.pid, signal.SIGTERM)
        self.proc.wait(10)
        self.proc.stdout.close()
