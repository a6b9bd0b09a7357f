"""What runs inside the sandbox: the command server, the workspace operations and the patch engine.

These files are sent into the sandbox as source (sandbox/bootstrap.py) and run there, as the sandbox user, under
whatever python3 the image has. So they use the standard library only, import nothing of the host package, and
keep to Python 3.7 (Debian buster's; the default image has bookworm's 3.11). tests/sandbox/guest checks both.
The host drives them through sandbox/workspace.py, never by importing them.
"""
GUEST_PYTHON = (3, 7)
