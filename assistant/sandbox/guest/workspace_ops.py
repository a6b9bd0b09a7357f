"""Workspace operations that run INSIDE the sandbox, as the sandbox user, called through the command server.

Everything here reads or writes what untrusted code (setup, the agent) wrote, so none of it may run on the
host: git reads hooks, fsmonitor, filters and textconv from the workspace; a path check followed by a write
races the agent's background processes. Inside the sandbox, the worst such code can do is what the agent
could do anyway. Results leave as plain data (JSON; bytes as base64), never as files the host opens.

Standard library and the `git` binary only; loaded into the command server at start (see cmdserver.py).
Each function takes and returns JSON-serialisable values.
"""

import base64
import hashlib
import os
import shutil
import stat
import subprocess
import tempfile
import zlib

# Read at call time (never bound as a default), so a test can run these operations in-process on a directory
# of its own by setting the module attribute.
WORKSPACE = "/workspace"
SCRATCH_ROOT = "/tmp"
# Config the repository (written by untrusted code) could use to run programs or bend the output; the
# host's and the user's git config are not read at all.
GIT = [
    "git", "-c", "core.fsmonitor=false", "-c", "core.hooksPath=/dev/null", "-c", "core.untrackedCache=false",
    "-c", "core.quotePath=false", "-c", "diff.noprefix=false", "-c", "diff.mnemonicPrefix=false",
    "-c", "diff.relative=false", "-c", "color.ui=never", "-c", "core.sshCommand=false",
    "-c", "protocol.allow=never", "-c", "protocol.file.allow=always",
]
GIT_ENV = {
    "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": "/dev/null", "GIT_TERMINAL_PROMPT": "0",
    "GIT_OPTIONAL_LOCKS": "0", "GIT_ATTR_NOSYSTEM": "1", "LC_ALL": "C",
}
PROBE_MAX_BYTES = 256 * 1024


class OpError(Exception):
    """A failure the caller reports to the user as it is."""


def _git(args, cwd=None, env=None, input_bytes=None, check=True):
    full_env = dict(os.environ)
    full_env.update(GIT_ENV)
    full_env.update(env or {})
    completed = subprocess.run(GIT + list(args), cwd=cwd or WORKSPACE, env=full_env, input=input_bytes,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if check and completed.returncode != 0:
        raise OpError("git %s failed: %s" % (" ".join(args[:2]), completed.stderr.decode("utf-8", "replace").strip()[-500:]))
    return completed


# --------------------------------------------------------------------------- putting the repository in


def clone(bundle, ref, commit, branch=None, origin=None):
    """Create the workspace from a git bundle the host streamed in; check out `commit`."""
    if os.listdir(WORKSPACE):
        raise OpError("the workspace is not empty")
    # Three git processes in all (each costs a few ms of the sandbox's start): init, fetch, checkout. The origin
    # is written into the new repository's config directly (git wrote that file a moment ago; no job has run).
    _git(["init", "-q", "-b", branch or "main", WORKSPACE])
    if origin:
        with open(os.path.join(WORKSPACE, ".git", "config"), "a") as config:
            config.write('[remote "origin"]\n\turl = %s\n\tfetch = +refs/heads/*:refs/remotes/origin/*\n'
                         % origin.replace("\\", "\\\\").replace('"', '\\"'))
    _git(["fetch", "-q", "--no-tags", bundle, "+%s:refs/remotes/origin/%s" % (ref, branch or "HEAD-commit")])
    _git(["checkout", "-q", "-B", branch, commit] if branch else ["checkout", "-q", "--detach", commit])
    os.unlink(bundle)
    return {"commit": commit}


def probe(names):
    """The workspace's top-level entries and the text of the named files (regular files only)."""
    top = sorted(os.listdir(WORKSPACE))
    files = {}
    for name in names:
        text = _read_regular(name, PROBE_MAX_BYTES)
        if text is not None:
            files[name] = text
    return {"top": top, "files": files}


def _inside(path):
    """The resolved absolute path of a workspace-relative path, or None when it leaves the workspace."""
    real = os.path.realpath(os.path.join(WORKSPACE, path))
    if real != WORKSPACE and not real.startswith(WORKSPACE + "/"):
        return None
    return real


def _read_regular(path, max_bytes):
    real = _inside(path)
    if real is None:
        return None
    try:
        info = os.stat(real)
        if not stat.S_ISREG(info.st_mode):
            return None
        with open(real, "rb") as handle:
            data = handle.read(max_bytes + 1)
    except OSError:
        return None
    return data[:max_bytes].decode("utf-8", "replace")


def read_files(paths, max_bytes=2000000):
    """Text of workspace files (for citations and AGENTS.md); None for what is missing, not a regular file,
    or outside the workspace. `sizes` tells the full size, so a capped text can be marked as such."""
    texts, sizes = {}, {}
    for path in paths:
        texts[path] = _read_regular(path, max_bytes)
        real = _inside(path)
        try:
            sizes[path] = os.stat(real).st_size if real else None
        except OSError:
            sizes[path] = None
    return {"texts": texts, "sizes": sizes}


def apply_patch(patch):
    """The agent's apply_patch tool, applied here so the host never writes into the workspace."""
    import apply_patch as engine  # registered by the bootstrap

    try:
        result = engine.apply_patch(patch, WORKSPACE)
    except engine.PatchError as exc:
        return {"ok": False, "error": str(exc)}
    except OSError as exc:  # a file the patch reads vanished or changed kind under it (a background process)
        return {"ok": False, "error": "the workspace changed while the patch was being applied (%s: %s); "
                                      "check the file and send the patch again" % (exc.strerror, exc.filename)}
    return {"ok": True, "summary": result.summary()}


def apply_parent_patch(patch_b64):
    """A follow-up job starts from its parent's result: apply the parent's patch (git apply, in here)."""
    fd, path = tempfile.mkstemp(prefix="parent-", suffix=".patch", dir=SCRATCH_ROOT)
    with os.fdopen(fd, "wb") as handle:
        handle.write(base64.b64decode(patch_b64))
    try:
        completed = _git(["apply", "--whitespace=nowarn", path], check=False)
    finally:
        os.unlink(path)
    return {"ok": completed.returncode == 0, "error": completed.stderr.decode("utf-8", "replace").strip()[-800:]}


def apply_start_patch(patch_b64, message):
    """The user's uncommitted changes (a patch git made from their own working copy) applied after the clone and
    committed, so the job starts from them and its diff is taken against them. Data only: git apply reads it."""
    fd, path = tempfile.mkstemp(prefix="start-", suffix=".patch", dir=SCRATCH_ROOT)
    with os.fdopen(fd, "wb") as handle:
        handle.write(base64.b64decode(patch_b64))
    try:
        applied = _git(["apply", "--index", "--binary", "--whitespace=nowarn", path], check=False)
    finally:
        os.unlink(path)
    if applied.returncode != 0:
        return {"ok": False, "error": applied.stderr.decode("utf-8", "replace").strip()[-800:]}
    identity = {"GIT_AUTHOR_NAME": "assistant", "GIT_AUTHOR_EMAIL": "assistant@localhost",
                "GIT_COMMITTER_NAME": "assistant", "GIT_COMMITTER_EMAIL": "assistant@localhost"}
    _git(["commit", "-q", "--no-verify", "--allow-empty", "-m", message], env=identity)
    return {"ok": True, "commit": _git(["rev-parse", "HEAD"]).stdout.decode().strip()}


# --------------------------------------------------------------------------- a review's two sides


def checkout_commit(commit):
    """Put the tracked files at `commit`, detached (a review runs its proofs on the head, then on the base);
    untracked files stay, so what setup built keeps working. Whatever the agent changed in tracked files is reset."""
    _git(["checkout", "-q", "-f", "--detach", commit])
    return {"commit": _git(["rev-parse", "HEAD"]).stdout.decode().strip()}


def tracked_in(commit, paths):
    """The paths that exist in `commit` (a proof test must not overwrite a file of either side)."""
    return {"tracked": [p for p in paths if _git(["cat-file", "-e", "%s:%s" % (commit, p)], check=False).returncode == 0]}


def write_text(path, text):
    """Write a new regular file inside the workspace (a review's proof test), replacing what is at the path;
    refused when the path leaves the workspace (a symlinked directory included)."""
    parent = _inside(os.path.dirname(path) or ".")
    if parent is None or not os.path.basename(path):
        raise OpError("the path %r leaves the workspace" % path)
    os.makedirs(parent, exist_ok=True)
    if _inside(os.path.dirname(path) or ".") != parent:
        raise OpError("the path %r leaves the workspace" % path)
    full = os.path.join(parent, os.path.basename(path))
    if os.path.lexists(full) and not os.path.isdir(full):
        os.unlink(full)
    fd = os.open(full, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    return {"ok": True}


def remove_file(path):
    """Remove a file the review wrote (its proof test), if it is still there."""
    full = _inside(os.path.dirname(path) or ".")
    if full is not None:
        target = os.path.join(full, os.path.basename(path))
        if os.path.lexists(target) and not os.path.isdir(target):
            os.unlink(target)
    return {"ok": True}


# --------------------------------------------------------------------------- comparing with the base commit


def _object_format():
    completed = _git(["rev-parse", "--show-object-format"], check=False)
    name = completed.stdout.decode().strip() if completed.returncode == 0 else "sha1"
    return name or "sha1"


def _blob_id(data, algorithm):
    digest = hashlib.new(algorithm)
    digest.update(b"blob %d\0" % len(data))
    digest.update(data)
    return digest.hexdigest()


def _current(path):
    """(git mode, content bytes) of a workspace path as it is now, or None when absent or not a file/link."""
    full = os.path.join(WORKSPACE, path)
    try:
        info = os.lstat(full)
    except OSError:
        return None
    if stat.S_ISLNK(info.st_mode):
        return "120000", os.fsencode(os.readlink(full))
    if not stat.S_ISREG(info.st_mode):
        return None
    mode = "100755" if info.st_mode & 0o111 else "100644"
    with open(full, "rb") as handle:
        return mode, handle.read()


def _size(path):
    try:
        info = os.lstat(os.path.join(WORKSPACE, path))
    except OSError:
        return 0
    return info.st_size if stat.S_ISREG(info.st_mode) else 0


def _base_entries(base):
    """path -> (mode, object id) of every file in the base commit's tree."""
    listed = _git(["ls-tree", "-r", "-z", "--full-tree", base]).stdout
    entries = {}
    for record in listed.split(b"\0"):
        if not record:
            continue
        meta, _, path = record.partition(b"\t")
        mode, _kind, object_id = meta.split(b" ")
        entries[os.fsdecode(path)] = (mode.decode(), object_id.decode())
    return entries


def _changed_tracked(base_entries, algorithm, cap=None):
    """Tracked paths whose mode or bytes differ from the base tree (no filters: the raw bytes count)."""
    changed = {}
    for path, (mode, object_id) in base_entries.items():
        if mode == "160000":
            continue  # a submodule: not checked out in the sandbox
        if cap is not None and _size(path) > cap:
            changed[path] = ("big", None)
            continue
        current = _current(path)
        if current is None:
            changed[path] = (None, None)
            continue
        current_id = _blob_id(current[1], algorithm)
        if current[0] != mode or current_id != object_id:
            changed[path] = (current[0], current_id)
    return changed


def _scratch_env(scratch, git_dir):
    return {
        "GIT_INDEX_FILE": os.path.join(scratch, "index"),
        "GIT_OBJECT_DIRECTORY": os.path.join(scratch, "objects"),
        "GIT_ALTERNATE_OBJECT_DIRECTORIES": os.path.join(git_dir, "objects"),
    }


def _ignore_pattern(entry):
    """An anchored gitignore pattern that matches exactly this path (a directory entry ends in '/')."""
    escaped = "".join("\\" + c if c in "*?[]!#\\ " else c for c in entry)
    return "--exclude=/" + escaped


def _untracked(env, collapse, skip=()):
    """Files (or, with collapse, whole new directories) not in the base tree and not ignored; entries in skip
    (what setup created) are not even walked, so a large .venv costs nothing here."""
    args = ["ls-files", "-z", "--others", "--exclude-standard"] + (["--directory"] if collapse else [])
    args += [_ignore_pattern(entry) for entry in skip]
    listed = _git(args, env=env).stdout
    return [os.fsdecode(p) for p in listed.split(b"\0") if p]


class _Scratch(object):
    """A scratch index (reading the base tree) and object directory: the agent's own index, HEAD and objects
    stay exactly as it left them."""

    def __enter__(self):
        self.directory = tempfile.mkdtemp(prefix="assistant-diff-", dir=SCRATCH_ROOT)
        os.mkdir(os.path.join(self.directory, "objects"))
        git_dir = _git(["rev-parse", "--absolute-git-dir"]).stdout.decode().strip()
        self.env = _scratch_env(self.directory, git_dir)
        return self

    def __exit__(self, *exc):
        shutil.rmtree(self.directory, ignore_errors=True)


def snapshot(base):
    """What setup changed, as data the host keeps: new top-level-collapsed untracked entries, and tracked
    files it modified (with their object ids after setup) or deleted. The diff leaves these out."""
    algorithm = _object_format()
    entries = _base_entries(base)
    with _Scratch() as scratch:
        _git(["read-tree", base], env=scratch.env)
        created = _untracked(scratch.env, collapse=True)
    modified = {path: object_id for path, (_mode, object_id) in _changed_tracked(entries, algorithm).items()}
    return {"created": created, "modified": modified}


def _unchanged_since_setup(path, setup_modified, current_id):
    """A tracked file setup modified (or deleted) and the agent left as setup left it: setup's change."""
    return path in setup_modified and setup_modified[path] == current_id


def _write_object(objects_dir, data, algorithm):
    object_id = _blob_id(data, algorithm)
    folder = os.path.join(objects_dir, object_id[:2])
    target = os.path.join(folder, object_id[2:])
    if not os.path.exists(target):
        if not os.path.isdir(folder):
            os.mkdir(folder)
        with open(target, "wb") as handle:
            handle.write(zlib.compress(b"blob %d\0" % len(data) + data, 1))
    return object_id


def _sha256_of(path):
    digest = hashlib.sha256()
    with open(os.path.join(WORKSPACE, path), "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def diff(base, setup=None, file_cap=5000000, patch_cap=20000000):
    """The agent's change against `base`, as a `git apply`-able binary patch.

    Left out: what .gitignore ignores, what setup created or modified (unless the agent changed it
    afterwards), and files over file_cap bytes (listed with size and sha256 instead). The patch stops at
    the last whole file before patch_cap, marked truncated.
    """
    setup = setup or {"created": [], "modified": {}}
    created, setup_modified = list(setup.get("created") or []), dict(setup.get("modified") or {})
    algorithm = _object_format()
    entries = _base_entries(base)
    omitted, excluded, index_lines = [], [], []
    with _Scratch() as scratch:
        _git(["read-tree", base], env=scratch.env)
        changes = _changed_tracked(entries, algorithm, cap=file_cap)
        for path in _untracked(scratch.env, collapse=False, skip=created):
            changes[path] = ("new", None)
        excluded = sorted(created)
        objects_dir = scratch.env["GIT_OBJECT_DIRECTORY"]
        for path in sorted(changes):
            mode, current_id = changes[path]
            if mode == "big" or (mode == "new" and _size(path) > file_cap):
                omitted.append({"path": path, "size": _size(path), "sha256": _sha256_of(path)})
                continue
            current = _current(path)
            if current is None:
                if _unchanged_since_setup(path, setup_modified, None):
                    excluded.append(path)
                    continue
                index_lines.append(b"0 " + b"0" * len(entries.get(path, ("", "0" * 40))[1]) + b"\t" + os.fsencode(path))
                continue
            object_id = _blob_id(current[1], algorithm)
            if _unchanged_since_setup(path, setup_modified, object_id):
                excluded.append(path)
                continue
            _write_object(objects_dir, current[1], algorithm)
            index_lines.append(("%s %s\t" % (current[0], object_id)).encode() + os.fsencode(path))
        if index_lines:
            _git(["update-index", "-z", "--index-info"], env=scratch.env, input_bytes=b"\0".join(index_lines) + b"\0")
        common = ["diff", "--cached", "--find-renames", "--no-ext-diff", "--no-textconv", "--no-color",
                  "--src-prefix=a/", "--dst-prefix=b/"]
        patch, truncated, total = _capped_patch(common + ["--binary", base], scratch.env, patch_cap)
        status = _git(common + ["--name-status", "-z", base], env=scratch.env).stdout
    return {
        "patch_b64": base64.b64encode(patch).decode(), "truncated": truncated, "total_bytes": total,
        "files": _parse_name_status(status), "omitted": omitted, "setup_excluded": excluded,
    }


def _capped_patch(args, env, cap):
    """The patch up to cap bytes, cut after the last whole file; the whole size is counted, not kept."""
    full_env = dict(os.environ)
    full_env.update(GIT_ENV)
    full_env.update(env)
    process = subprocess.Popen(GIT + args, cwd=WORKSPACE, env=full_env, stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL)
    kept, total = bytearray(), 0
    for block in iter(lambda: process.stdout.read(1 << 16), b""):
        total += len(block)
        if len(kept) <= cap:
            kept += block
    process.wait()
    if process.returncode != 0:
        raise OpError("git diff failed with exit code %d" % process.returncode)
    if total <= cap:
        return bytes(kept), False, total
    cut = kept.rfind(b"\ndiff --git ", 0, cap + 1)
    return bytes(kept[:cut + 1]) if cut >= 0 else b"", True, total


_STATUS_NAMES = {"A": "added", "M": "modified", "D": "deleted", "R": "renamed", "C": "copied", "T": "type changed"}


def _parse_name_status(raw):
    fields = raw.decode("utf-8", "surrogateescape").split("\0")
    files, position = [], 0
    while position < len(fields) and fields[position]:
        code = fields[position]
        kind = _STATUS_NAMES.get(code[0], code)
        if code[0] in "RC":
            files.append([kind, "%s -> %s" % (fields[position + 1], fields[position + 2])])
            position += 3
        else:
            files.append([kind, fields[position + 1]])
            position += 2
    return files
