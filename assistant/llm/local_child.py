"""Runs llama-cpp-python's server and exits when the process that started it is gone.

Started as a script (not ``-m``) so that it needs only llama_cpp, not this package.
The parent's death is noticed by polling: PR_SET_PDEATHSIG fires when the spawning
*thread* exits, which would kill the server when it is started from a worker thread.
"""

import os
import runpy
import sys
import threading
import time

_POLL_S = 1.0


def _exit_when_orphaned(parent_pid: int) -> None:
    while True:
        if os.getppid() != parent_pid:
            os._exit(0)
        time.sleep(_POLL_S)


def main() -> None:
    parent_pid = int(sys.argv[1])
    sys.argv = ["llama_cpp.server", *sys.argv[2:]]
    threading.Thread(target=_exit_when_orphaned, args=(parent_pid,), daemon=True).start()
    runpy.run_module("llama_cpp.server", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
