"""A tcp:// engine with TLS client certificates: a real dockerd on loopback that verifies clients, certificates made
here with openssl; a job's sandbox runs on it (commands, calls and the attach socket all over TLS)."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
from pathlib import Path

import pytest

from assistant.sandbox import PrepareRequest, SandboxConfig, SandboxError, Workspace, prepare
from assistant.sandbox.engine import docker_client, forget_client
from assistant.sandbox.pool import EnginePool, parse_engines
from tests.sandbox.conftest import make_repo
from tests.sandbox.engines import DEFAULT_URL, ROOT, pid_of

pytestmark = pytest.mark.docker
ENGINE = "scale-tls"
IMAGE = "assistant-sandbox:latest"


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_ca(directory: Path, name: str) -> None:
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN={name}",
            "-keyout", f"{name}-key.pem", "-out", f"{name}.pem", cwd=directory)


def sign(directory: Path, ca: str, name: str, extensions: str) -> None:
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout", f"{name}-key.pem",
            "-out", f"{name}.csr", cwd=directory)
    (directory / f"{name}.ext").write_text(extensions)
    openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}-key.pem", "-CAcreateserial",
            "-days", "2", "-extfile", f"{name}.ext", "-out", f"{name}-cert.pem", cwd=directory)


@pytest.fixture(scope="module")
def tls_engine(tmp_path_factory, docker_engine):
    """dockerd on 127.0.0.1:<port> with --tlsverify; client certificates laid out as ASSISTANT_DOCKER_CERT_DIR wants."""
    if not shutil.which("openssl"):
        pytest.skip("openssl is not installed")
    work = tmp_path_factory.mktemp("tls")
    make_ca(work, "ca")
    make_ca(work, "stranger")
    sign(work, "ca", "server", "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
    sign(work, "ca", "client", "extendedKeyUsage=clientAuth\n")
    sign(work, "stranger", "intruder", "extendedKeyUsage=clientAuth\n")
    server = work / "server-side"
    server.mkdir()
    for source, target in (("ca.pem", "ca.pem"), ("server-cert.pem", "server-cert.pem"), ("server-key.pem", "server-key.pem")):
        shutil.copy(work / source, server / target)
    certs = work / "certs"
    for who, cert, key in ((ENGINE, "client-cert.pem", "client-key.pem"), ("intruder", "intruder-cert.pem", "intruder-key.pem")):
        (certs / who).mkdir(parents=True)
        shutil.copy(work / "ca.pem", certs / who / "ca.pem")
        shutil.copy(work / cert, certs / who / "cert.pem")
        shutil.copy(work / key, certs / who / "key.pem")
    port = 23000 + os.getpid() % 2000
    done = subprocess.run(["bash", str(ROOT / "scripts" / "ensure-docker.sh"), ENGINE], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "ENGINE_TLS_DIR": str(server), "ENGINE_TCP": f"127.0.0.1:{port}"})
    assert done.returncode == 0, done.stderr
    yield f"tcp://127.0.0.1:{port}", certs
    pid = pid_of(ENGINE)
    if pid:
        os.kill(pid, signal.SIGTERM)


def test_a_tls_engine_takes_a_job_and_refuses_a_stranger(tls_engine, store, tmp_path, reachable_data_dir):
    url, certs = tls_engine
    engines = parse_engines(f"default={DEFAULT_URL}*2,{ENGINE}={url}*2,intruder={url}", str(certs))
    default, engine, intruder = engines
    assert engine.tls_dir == str(certs / ENGINE)
    try:
        assert docker_client(engine).ping()
        with pytest.raises(SandboxError, match="does not answer"):
            docker_client(intruder)  # a certificate the engine's CA did not sign
        pool = EnginePool((default, engine), store, IMAGE)
        if not pool.has_image(engine):
            pool.push(ENGINE, on_log=lambda _line: None)
            pool._image_seen.clear()
        job = store.create_job(task="t", repo="/r")
        only_tls = EnginePool((engine,), store, IMAGE)
        assert only_tls.place(job.id, 1, threading.Event()) == engine
        repo = make_repo(tmp_path / "repo", {"a.txt": "over tls\n"})
        prepared = prepare(PrepareRequest(job_id=job.id, repo=str(repo), setup=[]),
                           SandboxConfig(data_dir=reachable_data_dir, cache_enabled=False), engine=engine)
        try:
            assert prepared.sandbox.engine == engine
            result = prepared.sandbox.exec("cat a.txt && echo done", timeout_s=30)
            assert result.exit_code == 0 and result.output == "over tls\ndone\n"
            assert Workspace(prepared.sandbox).read_files(["a.txt"]).texts["a.txt"] == "over tls\n"
            assert prepared.agent_network.startswith("none")
        finally:
            prepared.sandbox.close()
        assert not docker_client(engine).containers.list(ignore_removed=True, all=True, filters={"label": f"assistant.job={job.id}"})
    finally:
        forget_client()
