#!/usr/bin/env python3
"""Command server: runs inside a sandbox and executes commands for the host.

Standard library only, and nothing newer than Python 3.7 (see sandbox/guest/__init__.py), because it
is sent into whatever image a user names. The host writes JSON lines on stdin and reads JSON lines
from stdout (the container's attached stdio), which keeps working after the network is
cut and costs about a millisecond or two per command instead of a `docker exec`.

One thread and one select loop: no thread is created per command, so a command costs
little more than starting bash, and a pids limit cannot stop the server from working.

Requests:
  {"id": "7", "op": "exec", "cmd": "...", "cwd": "/workspace", "env": {...},
   "timeout": 120, "cap": 1000000}
  {"id": "8", "op": "cancel", "target": "7"}
  {"id": "9", "op": "ping"}
  {"id": "10", "op": "call", "fn": "diff", "args": {...}, "timeout": 600, "cap": 64000000}
      runs workspace_ops.<fn>(**args) in a forked child (same limits, same user); its output is one
      JSON document {"ok": true, "result": ...} or {"ok": false, "error": "..."}
  {"id": "11", "op": "put", "path": "/tmp/x", "data": "<base64>", "append": false}
      writes bytes into the sandbox (as the sandbox user); reply {"id": "11", "put": true} or an error
  {"id": "12", "op": "reap"}
      kills every process but this server and its ancestors (what setup left running, with its
      environment); reply {"id": "12", "reaped": N}
Replies, tagged with the request's id:
  {"id": "7", "out": "text"}                      output as it comes (stdout and stderr merged)
  {"id": "7", "done": true, "exit": 0, "timed_out": false, "truncated": false,
   "elided": 0, "error": null}
  {"id": "9", "pong": true, "pid": 12}
"""

import base64
import codecs
import fcntl
import json
import os
import selectors
import signal
import subprocess
import sys
import time

CHUNK = 65536
# A command whose children keep its output pipe open (a server started with `&`) is
# reported as finished this long after the command itself exits.
EOF_GRACE_S = 0.2
SHELL = "/bin/bash" if os.path.exists("/bin/bash") else "/bin/sh"
OUT_FD = sys.stdout.fileno()


def send(message):
    data = (json.dumps(message, ensure_ascii=False) + "\n").encode("utf-8", "replace")
    view = memoryview(data)
    while view:
        written = os.write(OUT_FD, view)
        view = view[written:]


def done_message(request_id, exit_code, error=None, timed_out=False, elided=0):
    return {"id": request_id, "done": True, "exit": exit_code, "timed_out": timed_out,
            "truncated": bool(elided), "elided": elided, "error": error}


def _process_table():
    """pid -> (parent pid, state) for every process this server can see."""
    table = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % name, "rb") as handle:
                stat = handle.read()
        except OSError:
            continue
        # The command name may contain spaces and parentheses; fields resume after the last ')'.
        fields = stat[stat.rfind(b")") + 2:].split()
        table[int(name)] = (int(fields[1]), fields[0])
    return table


def _living_tree(pid):
    """The process and its descendants that are not yet zombies."""
    table = _process_table()
    children = {}
    for child, (parent, _) in table.items():
        children.setdefault(parent, []).append(child)
    found, stack = [], [pid]
    while stack:
        current = stack.pop()
        if current in table and table[current][1] != b"Z":
            found.append(current)
        stack.extend(children.get(current, ()))
    return found


def kill_tree(pid):
    """Kill the command's process group and every descendant, including ones that left the group."""
    for _ in range(50):
        targets = _living_tree(pid)
        try:
            os.killpg(pid, signal.SIGKILL)
        except OSError:
            pass
        for target in targets:
            try:
                os.kill(target, signal.SIGKILL)
            except OSError:
                pass
        if not targets:
            return
        time.sleep(0.002)


class Command(object):
    def __init__(self, request):
        self.id = request["id"]
        self.deadline = None
        timeout = float(request.get("timeout") or 0)
        if timeout > 0:
            self.deadline = time.monotonic() + timeout
        cap = int(request.get("cap") or 1000000)
        # Output beyond the cap keeps its first and last halves; the middle is counted, not kept.
        self.head_budget = cap // 2
        self.tail_budget = cap - self.head_budget
        self.sent = 0
        self.tail = bytearray()
        self.elided = 0
        self.decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self.proc = None
        self.fd = None
        self.eof = False
        self.exit_code = None
        self.exited_at = None
        self.finished = False
        self.timed_out = False
        self.cancelled = False

    def spawn_call(self, request):
        """Run a workspace operation in a forked child, so a slow diff never stalls the server's loop."""
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: never returns into the server
            code = 1
            try:
                os.close(read_end)
                os.setsid()
                signal.set_wakeup_fd(-1)
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                null = os.open(os.devnull, os.O_RDONLY)
                os.dup2(null, 0)
                os.dup2(write_end, 1)
                os.dup2(write_end, 2)
                code = _run_call(request)
            finally:
                os._exit(code)
        os.close(write_end)
        self.proc = ForkedProcess(pid, read_end)
        self.fd = read_end
        flags = fcntl.fcntl(self.fd, fcntl.F_GETFL)
        fcntl.fcntl(self.fd, fcntl.F_SETFL, flags | os.O_NONBLOCK)

    def spawn(self, request):
        env = dict(os.environ)
        env.update(request.get("env") or {})
        self.proc = subprocess.Popen(
            [SHELL, "-c", request["cmd"]],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            cwd=request.get("cwd") or None,
            env=env,
            start_new_session=True,
            close_fds=True,
        )
        self.fd = self.proc.stdout.fileno()
        flags = fcntl.fcntl(self.fd, fcntl.F_GETFL)
        fcntl.fcntl(self.fd, fcntl.F_SETFL, flags | os.O_NONBLOCK)

    def take(self, data):
        if self.finished:
            return  # a background child still writing after the command was reported
        room = self.head_budget - self.sent
        if room > 0:
            head = data[:room]
            self.sent += len(head)
            text = self.decoder.decode(head)
            if text:
                send({"id": self.id, "out": text})
            data = data[room:]
        if data:
            self.tail += data
            overflow = len(self.tail) - self.tail_budget
            if overflow > 0:
                del self.tail[:overflow]
                self.elided += overflow

    def poll(self, now):
        if self.exit_code is None:
            code = self.proc.poll()
            if code is not None:
                self.exit_code = 128 - code if code < 0 else code
                self.exited_at = now

    def ready_to_finish(self, now):
        return self.exit_code is not None and (self.eof or now - self.exited_at >= EOF_GRACE_S)

    def finish(self):
        self.finished = True
        if self.elided:
            text = self.decoder.decode(b"", True)
            text += "\n[... %d bytes of output elided ...]\n" % self.elided
            text += codecs.decode(bytes(self.tail), "utf-8", "replace")
        else:
            text = self.decoder.decode(bytes(self.tail), True)
        if text:
            send({"id": self.id, "out": text})
        killed = self.timed_out or self.cancelled
        send(done_message(self.id, None if killed else self.exit_code, "cancelled" if self.cancelled else None,
                          self.timed_out, self.elided))

    def kill(self, timed_out):
        if self.exit_code is None:
            self.timed_out = self.timed_out or timed_out
            self.cancelled = self.cancelled or not timed_out
            self.deadline = None
            kill_tree(self.proc.pid)


class ForkedProcess(object):
    """The little of Popen the server uses, for a forked child."""

    def __init__(self, pid, fd):
        self.pid = pid
        self.fd = fd
        self.returncode = None
        self.stdout = self

    def poll(self):
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:
                self.returncode = 255
                return self.returncode
            if pid:
                self.returncode = os.WEXITSTATUS(status) if os.WIFEXITED(status) else -os.WTERMSIG(status)
        return self.returncode

    def close(self):
        os.close(self.fd)


MODULE_SOURCES = globals().get("MODULE_SOURCES") or []  # given by the bootstrap: [[name, source], ...]


def load_modules():
    """Register the workspace operations' modules once, in the server, so forked calls inherit them."""
    import types

    while MODULE_SOURCES:
        name, source = MODULE_SOURCES.pop(0)
        module = types.ModuleType(name)
        sys.modules[name] = module
        exec(compile(source, name + ".py", "exec"), module.__dict__)


def _run_call(request):
    """In the forked child: call workspace_ops.<fn>(**args) and print the outcome as one JSON document."""
    out = os.fdopen(1, "w")
    try:
        import workspace_ops  # registered by the bootstrap
        function = getattr(workspace_ops, request.get("fn") or "", None)
        if function is None or request["fn"].startswith("_"):
            raise ValueError("no workspace operation %r" % request.get("fn"))
        result = {"ok": True, "result": function(**(request.get("args") or {}))}
        code = 0
    except Exception as exc:
        result = {"ok": False, "error": "%s: %s" % (type(exc).__name__, exc)}
        code = 1
    out.write(json.dumps(result))
    out.flush()
    return code


def reap_others():
    """Kill every process except this one and its ancestors (docker's init, bubblewrap)."""
    keep, current, table = set(), os.getpid(), _process_table()
    while current in table and current not in keep:
        keep.add(current)
        current = table[current][0]
    killed = 0
    for pid in table:
        if pid not in keep and table[pid][1] != b"Z":
            try:
                os.kill(pid, signal.SIGKILL)
                killed += 1
            except OSError:
                pass
    return killed


def put_file(request):
    """Write (or append) bytes into a file in the sandbox; parents are created."""
    path = request["path"]
    directory = os.path.dirname(path)
    if directory and not os.path.isdir(directory):
        os.makedirs(directory)
    with open(path, "ab" if request.get("append") else "wb") as handle:
        handle.write(base64.b64decode(request.get("data") or ""))


class Server(object):
    def __init__(self):
        self.selector = selectors.DefaultSelector()
        self.commands = {}
        self.inbox = b""
        self.running = True
        wake_read, wake_write = os.pipe()
        for fd in (wake_read, wake_write):
            fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_NONBLOCK)
        self.wake_read = wake_read
        try:
            signal.set_wakeup_fd(wake_write, warn_on_full_buffer=False)
        except TypeError:  # Python < 3.7
            signal.set_wakeup_fd(wake_write)
        # A handler (not SIG_DFL) is what makes SIGCHLD reach the wakeup fd.
        signal.signal(signal.SIGCHLD, lambda signum, frame: None)
        self.stdin = sys.stdin.fileno()
        self.selector.register(self.stdin, selectors.EVENT_READ, "stdin")
        self.selector.register(wake_read, selectors.EVENT_READ, "wake")

    def run(self):
        while self.running:
            events = self.selector.select(self._timeout())
            for key, _ in events:
                if key.data == "stdin":
                    self._read_requests()
                elif key.data == "wake":
                    self._drain_wakeups()
                else:
                    self._read_output(key.data)
            self._settle(time.monotonic())

    def _timeout(self):
        now = time.monotonic()
        moments = []
        for command in self.commands.values():
            if command.exit_code is None and command.deadline is not None:
                moments.append(command.deadline)
            elif command.exit_code is not None and not command.finished:
                moments.append(command.exited_at + EOF_GRACE_S)
        if self.commands and not moments:
            # Exit codes are polled on SIGCHLD; this bounds the wait should a signal be coalesced away.
            return 0.5
        return max(0.0, min(moments) - now) if moments else None

    def _drain_wakeups(self):
        try:
            while os.read(self.wake_read, 4096):
                pass
        except (BlockingIOError, InterruptedError):
            pass

    def _read_requests(self):
        try:
            data = os.read(self.stdin, CHUNK)
        except OSError:
            data = b""
        if not data:
            # The host went away: leave nothing running behind it.
            self.selector.unregister(self.stdin)
            self.running = False
            for command in list(self.commands.values()):
                kill_tree(command.proc.pid)
            return
        self.inbox += data
        *lines, self.inbox = self.inbox.split(b"\n")
        for line in lines:
            if line.strip():
                self._handle(line)

    def _handle(self, line):
        try:
            request = json.loads(line.decode("utf-8", "replace"))
        except ValueError:
            send({"id": None, "error": "bad request line"})
            return
        op = request.get("op")
        request_id = request.get("id")
        if op in ("exec", "call"):
            command = Command(request)
            try:
                if op == "call":
                    load_modules()
                    command.spawn_call(request)
                else:
                    command.spawn(request)
            except Exception as exc:
                send(done_message(request_id, None, "could not start the command: %s" % exc))
                return
            self.commands[command.id] = command
            self.selector.register(command.fd, selectors.EVENT_READ, command)
        elif op == "cancel":
            target = self.commands.get(request.get("target"))
            if target is not None:
                target.kill(timed_out=False)
            send({"id": request_id, "cancelled": target is not None})
        elif op == "put":
            try:
                put_file(request)
                send({"id": request_id, "put": True})
            except Exception as exc:
                send({"id": request_id, "error": "could not write %s: %s" % (request.get("path"), exc)})
        elif op == "reap":
            send({"id": request_id, "reaped": reap_others()})
        elif op == "ping":
            send({"id": request_id, "pong": True, "pid": os.getpid()})
        else:
            send(done_message(request_id, None, "unknown op %r" % op))

    def _read_output(self, command):
        try:
            data = os.read(command.fd, CHUNK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if data:
            command.take(data)
            return
        command.eof = True
        self.selector.unregister(command.fd)
        command.proc.stdout.close()
        if command.finished:
            self.commands.pop(command.id, None)

    def _settle(self, now):
        for command in list(self.commands.values()):
            if command.finished:
                continue
            if command.exit_code is None and command.deadline is not None and now >= command.deadline:
                command.kill(timed_out=True)
            command.poll(now)
            if command.ready_to_finish(now):
                command.finish()
                if command.eof:
                    self.commands.pop(command.id, None)
                # Otherwise a background child holds the pipe: keep draining it so it never blocks.


def main():
    Server().run()


if __name__ == "__main__":
    main()
