"""`goxelpool watch` on a terminal: a pseudo-terminal (python's pty) against a goxel-refd that is
slowed down, then crashed and restarted by its supervisor.

    GOXELPOOL_TOOL=build/stage/bin/goxelpool GOXEL_REFD=build/stage/bin/goxel-refd \
        python3 -m unittest discover -s Tests/cli -p 'test_*.py' -v

The screen is read as a terminal would show it: the output is cut into frames at the "cursor
home" sequence each refresh starts with, and colours and other escape sequences are stripped to
read the text. Run by `make cli-test` (part of `make test`).
"""
import fcntl
import os
import pty
import re
import select
import shutil
import signal
import struct
import sys
import tempfile
import termios
import threading
import time
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "packaging"))
from refd import Refd  # noqa: E402

TOOL = os.environ.get("GOXELPOOL_TOOL", "build/stage/bin/goxelpool")
REFD = os.environ.get("GOXEL_REFD", "build/stage/bin/goxel-refd")
ESCAPE = re.compile(rb"\x1b\[[0-9;?]*[A-Za-z]")
HOME, ERASE_BELOW = b"\x1b[H", b"\x1b[J"
YELLOW = b"\x1b[33m"


class Terminal:
    """goxelpool watch on a pseudo-terminal of ROWS x COLS, its output collected by a thread."""

    def __init__(self, args, env_extra=None, rows=45, cols=140):
        env = dict(os.environ, TERM="xterm-256color")
        env.pop("NO_COLOR", None)
        env.update(env_extra or {})
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # the child: the tool, with the pty as its terminal
            try:
                os.execve(TOOL, [TOOL] + args, env)
            finally:
                os._exit(127)
        fcntl.ioctl(self.fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        self.output = bytearray()
        self.lock = threading.Lock()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        self.status = None

    def _read(self):
        while True:
            try:
                ready, _, _ = select.select([self.fd], [], [], 0.5)
                if ready:
                    chunk = os.read(self.fd, 65536)
                    if not chunk:
                        return
                    with self.lock:
                        self.output += chunk
            except OSError:  # EIO: the child closed the terminal
                return

    def raw(self):
        with self.lock:
            return bytes(self.output)

    def frames(self):
        """Complete frames (home ... erase-below), oldest first, as raw bytes."""
        return [part.split(ERASE_BELOW)[0] for part in self.raw().split(HOME)[1:] if ERASE_BELOW in part]

    @staticmethod
    def text(frame):
        return ESCAPE.sub(b"", frame).decode("utf-8", "replace")

    def wait_for(self, what, predicate, timeout):
        """The first frame (from now on) for which predicate(text, raw) holds; fails after
        timeout seconds, showing the last frame."""
        start = len(self.frames())
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for frame in self.frames()[max(start - 1, 0):]:
                if predicate(self.text(frame), frame):
                    return self.text(frame)
            time.sleep(0.05)
        frames = self.frames()
        raise AssertionError(f"no frame showed {what} within {timeout} s; the last one:\n"
                             + (self.text(frames[-1]) if frames else repr(self.raw()[-2000:])))

    def send(self, data):
        os.write(self.fd, data)

    def wait_exit(self, timeout):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.status = os.waitstatus_to_exitcode(status)
                self.reader.join(5)
                return self.status
            time.sleep(0.05)
        os.kill(self.pid, signal.SIGKILL)
        os.waitpid(self.pid, 0)
        raise AssertionError(f"goxelpool watch did not exit within {timeout} s")

    def close(self):
        if self.status is None:
            try:
                os.kill(self.pid, signal.SIGKILL)
                os.waitpid(self.pid, 0)
            except ProcessLookupError:
                pass
        os.close(self.fd)


def connection_rows(text):
    """(id, tier) of each row of the connections table."""
    return re.findall(r"^\s+(\d+)\s+(?:unix:|\.\.\.)\S+\s+(healthy|degraded|unhealthy)\b", text, re.M)


def events_pane(text):
    return text.split("alerts and events", 1)[1] if "alerts and events" in text else ""


class WatchTest(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix=f"gxp-watch-{os.getpid()}-")
        self.refd = Refd(REFD, self.dir, "--supervise", "--restart-delay-ms", "200")
        self.terminals = []

    def tearDown(self):
        for terminal in self.terminals:
            terminal.close()
        self.refd.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def watch(self, *extra, env=None):
        # Health checked every 200 ms; slower than 100 ms is degraded, one check is enough to
        # change tier (the defaults, 1 s and 3 checks, would make this test slow).
        args = ["--socket", self.refd.path, "--interval", "250",
                "--set", "health.interval_ms=200", "--set", "health.healthy_latency_ms=100",
                "--set", "health.degraded_latency_ms=3000", "--set", "health.failure_threshold=1",
                "--set", "health.success_threshold=1", "--set", "reconnect.initial_backoff_ms=100",
                *extra, "watch"]
        terminal = Terminal(args, env)
        self.terminals.append(terminal)
        return terminal

    def test_slow_then_crashed_daemon_shows_on_the_screen(self):
        term = self.watch()
        term.wait_for("a ready pool with 2 healthy connections",
                      lambda text, raw: "pool ready" in text and
                      [tier for _, tier in connection_rows(text)] == ["healthy", "healthy"], 15)
        self.assertIn(b"\x1b[?1049h", term.raw(), "the alternate screen was not entered")
        self.assertIn(b"\x1b[32m", term.raw(), "no colour on a terminal")

        # Slowed down: health checks take 300 ms > 100 ms: connections turn degraded, in yellow,
        # and the degraded alerts appear as they happen.
        self.refd.control("refd.set_faults", {"latency_ms": 300})
        text = term.wait_for("a degraded connection and its alert",
                             lambda text, raw: any(tier == "degraded" for _, tier in connection_rows(text))
                             and re.search(r"^pool (degraded|unhealthy) ", text, re.M)
                             and re.search(r"alert\s+degraded\s+.*connection \d+ is degraded", events_pane(text))
                             and YELLOW + b"degraded" in raw, 20)
        self.assertRegex(events_pane(text), r"health\s+health_changed\s+.*connection \d+: healthy -> degraded")

        # Fast again: they recover.
        self.refd.control("refd.set_faults", {"latency_ms": 0})
        term.wait_for("the connections healthy again and a recovered alert",
                      lambda text, raw: connection_rows(text) and
                      all(tier == "healthy" for _, tier in connection_rows(text)) and
                      re.search(r"alert\s+recovered\s", events_pane(text)), 20)

        # Crashed (the supervisor restarts it): the connections break, critical alerts in red,
        # connections replaced, and the pool comes back.
        before = {conn for conn, _ in connection_rows(term.text(term.frames()[-1]))}
        self.refd.control("refd.crash", expect_answer=False)
        text = term.wait_for("a broken connection and a critical alert",
                             lambda text, raw: re.search(r"connection_removed\s+.*\((error|health)\)", events_pane(text))
                             and re.search(r"alert\s+(unhealthy|pool_unhealthy|pool_degraded)\s", events_pane(text)), 20)
        term.wait_for("the pool ready again on new connections",
                      lambda text, raw: "pool ready" in text and connection_rows(text) and
                      not ({conn for conn, _ in connection_rows(text)} & before), 20)
        # Critical alerts are red.
        self.assertRegex(term.raw(), rb"\x1b\[31m\d\d:\d\d:\d\d\.\d{3} alert\s+(unhealthy|pool_unhealthy)\s")

        # q quits at once, restoring the terminal.
        term.send(b"q")
        self.assertEqual(term.wait_exit(5), 0)
        tail = term.raw()[-200:]
        self.assertIn(b"\x1b[?25h", tail, "cursor not shown again")
        self.assertIn(b"\x1b[?1049l", tail, "alternate screen not left")

    def test_no_color_and_sigint(self):
        term = self.watch(env={"NO_COLOR": "1"})
        term.wait_for("a ready pool", lambda text, raw: "pool ready" in text and len(connection_rows(text)) == 2, 15)
        colours = re.findall(rb"\x1b\[[0-9;]*m", term.raw())
        self.assertEqual(colours, [], "colour escapes despite NO_COLOR")
        os.kill(term.pid, signal.SIGINT)
        self.assertEqual(term.wait_exit(5), 0)
        self.assertIn(b"\x1b[?1049l", term.raw()[-200:])
        # The terminal's settings were put back: echo and line mode on again.
        attributes = termios.tcgetattr(term.fd)
        self.assertTrue(attributes[3] & termios.ECHO and attributes[3] & termios.ICANON)


if __name__ == "__main__":
    unittest.main()
