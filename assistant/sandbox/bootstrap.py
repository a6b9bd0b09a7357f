"""What starts the command server inside a sandbox: a tiny bootstrap given to `python3 -c`, then the server
and the workspace operations it serves, fed on stdin as one length-prefixed JSON document.

Feeding the code on stdin rather than copying files in costs nothing extra (put_archive mounts the
container's file system, ~60-100 ms here) and leaves no file in the sandbox for anyone to edit.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

_HERE = Path(__file__).resolve().parent
SERVER_SOURCE = _HERE / "guest" / "cmdserver.py"
# Module name -> source file; the server compiles them at its first workspace operation (not at start, where
# compiling them would delay every sandbox's first command), in this order.
MODULES = (("apply_patch", _HERE / "guest" / "apply_patch.py"), ("workspace_ops", _HERE / "guest" / "workspace_ops.py"))

# Python 3.6-compatible on purpose (the guest code it starts keeps to 3.7, sandbox/guest): it runs in whatever
# image a user names. It reads exactly the payload's bytes, so nothing meant for the server is consumed.
BOOTSTRAP = (
    "import json, os, sys\n"
    "def _read(n):\n"
    "    s = b''\n"
    "    while len(s) < n:\n"
    "        b = os.read(0, n - len(s))\n"
    "        if not b:\n"
    "            sys.exit(0)\n"
    "        s += b\n"
    "    return s\n"
    "h = b''\n"
    "while not h.endswith(b'\\n'):\n    h += _read(1)\n"
    "p = json.loads(_read(int(h)).decode('utf-8'))\n"
    "exec(compile(p['main'], 'cmdserver.py', 'exec'), {'__name__': '__main__', 'MODULE_SOURCES': p['modules']})\n"
)


@functools.lru_cache(maxsize=1)
def payload() -> bytes:
    document = json.dumps({
        "modules": [[name, path.read_text()] for name, path in MODULES],
        "main": SERVER_SOURCE.read_text(),
    }).encode()
    return b"%d\n" % len(document) + document
