"""One typed settings object, read from environment variables and an optional assistant.toml.

Every field maps to one environment variable (``ASSISTANT_<FIELD>`` unless ``env`` says otherwise);
the README's configuration table is generated from the same declarations (``settings_table``).
"""
from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


class SettingsError(ValueError):
    """A bad configuration value; the message names the variable and what it accepts."""


def _default_data_dir() -> Path:
    # As root, not under /root (mode 700): the bubblewrap sandbox runs as uid 1000 and must reach workspaces.
    if os.geteuid() == 0:
        return Path("/var/lib/assistant")
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "assistant"


def _env(name: str) -> dict[str, Any]:
    return {"env": name}


Role = Literal["router", "answer", "agent", "summary"]


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # Model endpoint. The SDK reads OPENAI_API_KEY / OPENAI_BASE_URL itself; we keep them to decide
    # whether the embedded local model must start.
    openai_api_key: str | None = Field(None, description="API key for the model endpoint (read by the OpenAI SDK).", json_schema_extra=_env("OPENAI_API_KEY"))
    openai_base_url: str | None = Field(None, description="Base URL of any OpenAI-compatible endpoint (read by the OpenAI SDK).", json_schema_extra=_env("OPENAI_BASE_URL"))
    model: str = Field("gpt-4o-mini", description="Model name for every role unless a role override is set.")
    router_model: str | None = Field(None, description="Model that routes messages (quick answer / job / follow-up).")
    answer_model: str | None = Field(None, description="Model for quick answers.")
    agent_model: str | None = Field(None, description="Model that drives coding jobs.")
    summary_model: str | None = Field(None, description="Model that writes the summary of a job that ended without one (failed, cancelled, out of budget) from its log.")
    tool_protocol: Literal["auto", "native", "text", "grammar"] = Field("auto", description="How the agent calls tools: native function calls, a fenced-block text protocol, grammar (JSON-schema-constrained actions, for llama.cpp servers), or auto (native, falling back to text when the endpoint rejects tools; grammar with the embedded model).")
    agent_harness: Literal["auto", "guided", "free"] = Field("auto", description="How a coding job is driven: free (the model navigates with shell and apply_patch), guided (the product runs the tests, localizes the failure, shows the code with line numbers, and the model picks constrained edits that the tests validate; for small models), or auto (guided when the agent uses grammar-constrained actions, as with the embedded model; free otherwise).")
    guided_candidates: int = Field(3, ge=1, le=10, description="Candidate edits the guided harness tries in one job: one that leaves the tests failing is rolled back and the next starts from the original code; the first passing one is kept.")
    model_timeout_s: float = Field(120.0, gt=0, description="Timeout of one model request, in seconds.")
    model_max_retries: int = Field(4, ge=0, le=20, description="Retries (with exponential backoff) on 429, 5xx, timeouts, dropped connections, cut streams and 200 answers that are no completion.")
    context_window: int = Field(128_000, ge=2048, description="Model context window in tokens; long jobs are compacted before they reach it.")

    # Embedded local model (used when neither OPENAI_API_KEY nor OPENAI_BASE_URL is set).
    local_model: str | None = Field(None, description="The embedded model: `qwen2.5-coder-1.5b` (default), `qwen2.5-coder-0.5b` (faster, weaker), or the path of a GGUF file of your own. The bundled models are assembled from pinned packages and their sha256 verified at first start.")
    local_ctx: int = Field(8192, ge=512, description="Context size of the embedded model server.")
    local_threads: int | None = Field(None, ge=1, description="CPU threads of the embedded model server (default: all cores but one).")
    local_batch: int = Field(512, ge=8, description="Prompt tokens the embedded model server evaluates per batch.")
    local_prompt_cache_mb: int = Field(512, ge=0, description="RAM for the embedded model server's cache of earlier prompts' states, MiB (0: off; the live prompt's shared prefix is always reused). With it, a quick answer after a routing or agent request starts from its evaluated prompt instead of evaluating it again (bench/local_model.py).")

    # Storage.
    data_dir: Path = Field(default_factory=_default_data_dir, description="Where the database, workspaces, logs and caches live.")
    database_url: str | None = Field(None, description="SQLAlchemy URL; default sqlite:///<data_dir>/assistant.db (WAL). postgresql://user:pw@host/db works too.")

    # Sandbox.
    sandbox_backend: Literal["auto", "docker", "local"] = Field("auto", description="docker, local (bubblewrap) or auto (docker when an engine answers, else local).")
    sandbox_image: str = Field("assistant-sandbox:latest", description="Image for job containers; `assistant sandbox build` makes the default one.")
    sandbox_toolchain_images: bool = Field(True, description="Run a repository whose top-level files call for Node.js (package.json), Go (go.mod), Rust (Cargo.toml), Java (pom.xml, build.gradle), Ruby (Gemfile) or PHP (composer.json) in a toolchain image: the sandbox image plus that ecosystem's Debian packages, built on first use (`assistant sandbox build --lang NAME` builds one ahead). Off: every repository runs on ASSISTANT_SANDBOX_IMAGE.")
    sandbox_allowed_images: str | None = Field(None, description="Comma-separated images a repository may name in its .assistant/config.toml (`[sandbox] image = ...`) when more than one user can log in; the default and toolchain images are always allowed. With one user any image on the engine may be named.")
    sandbox_memory_mb: int = Field(4096, ge=128, description="Memory limit per job container, MiB.")
    sandbox_cpus: float = Field(2.0, gt=0, description="CPU limit per job container.")
    sandbox_pids: int = Field(512, ge=16, description="Process limit per job container.")
    sandbox_disk_mb: int = Field(4096, ge=0, description="Disk cap per job, MiB: everything its sandbox writes (workspace, /tmp, home, installed packages) beyond the image; enforced by the kernel (a btrfs quota on engines that scripts/ensure-docker.sh starts, a loop-mounted file system under bubblewrap). A job that hits it ends with \"the job wrote more than N GB (the disk cap)\". 0 = no cap. On an engine that cannot enforce it, a job runs with a visible \"disk not capped\" note when ASSISTANT_SANDBOX_FALLBACK allows weaker sandboxes, else it is refused.")
    sandbox_ca_bundle: str | None = Field(None, description="CA bundle copied into the sandbox image at build (default: the file SSL_CERT_FILE names); empty string turns it off.")
    setup_cache: bool = Field(True, description="Commit the container after a successful setup and reuse it for the same repo, commit and setup.")
    setup_cache_size: int = Field(8, ge=1, description="How many setup-cache images to keep (least recently used are evicted).")
    maintenance_command: str | None = Field(None, description="Command run on a setup-cache hit before the network is cut.")
    allow_setup_failure: bool = Field(False, description="Go on to the agent when a setup command fails (the agent is told what failed).")
    setup_secrets: str | None = Field(None, description="Secrets for setup commands only, comma-separated: `NAME` (taken from the server's environment) or `NAME=@/path/to/file`. Gone from every process before the agent's first step; masked in stored setup output.")
    sandbox_fallback: Literal["auto", "allow", "forbid"] = Field("auto", description="Whether ASSISTANT_SANDBOX_BACKEND=auto may run a job on bubblewrap (weaker limits) when no Docker engine answers; the job card says so when it does. auto: allow with one user, forbid when more than one can log in.")
    docker_hosts: str | None = Field(None, description="A pool of sandbox engines as `NAME=URL*CAPACITY`, comma-separated (unix://, tcp:// with TLS client certificates, ssh://; capacity = sandboxes at once, optional); each job goes to the least-loaded engine that answers and has the image (`assistant sandbox push NAME` copies it there). Default: the one engine of DOCKER_HOST or the local socket.")
    docker_cert_dir: Path | None = Field(None, description="TLS client certificates of tcp:// engines: `<dir>/<engine name>/{ca,cert,key}.pem` (DOCKER_CERT_PATH's layout; DOCKER_CERT_PATH itself is the fallback).")
    diff_file_cap_mb: float = Field(5.0, gt=0, description="A changed file larger than this (MB) is listed in the diff with its size and sha256, not embedded.")
    diff_patch_cap_mb: float = Field(20.0, gt=0, description="The whole patch stops at the last file before this size (MB), marked truncated.")
    warm_pool: bool = Field(True, description="Keep a sandbox ready for the conversation's repository (started when a chat has a repository, and again as each job starts and ends: cloned at the current commit, set up from the setup cache, offline), so a job's agent starts without waiting for a container. Only where nothing must run ahead: no setup or setup the cache holds, no maintenance command, agent internet off, Docker backend.")
    warm_pool_size: int = Field(2, ge=1, le=16, description="Warm sandboxes at most, starting and ready together (each one idle container); the oldest ready one makes room for a new request.")
    warm_pool_idle_s: float = Field(600.0, gt=0, description="A warm sandbox no job took within this many seconds is removed.")

    # Agent-phase internet (assistant/egress); a repository's .assistant/config.toml and a job request override it.
    agent_internet: Literal["off", "allowlist"] = Field("off", description="Internet in the agent phase: off (none), or allowlist (only the allowed domains, through a filtering proxy; Docker backend only).")
    agent_internet_domains: str | None = Field(None, description="With allowlist: comma-separated host names the agent may reach; `*.example.org` is example.org and every name under it.")
    agent_internet_presets: str | None = Field(None, description="With allowlist: comma-separated presets whose hosts are read from this machine's package clients at job start: python-packages (pip), npm-packages (npm), debian-packages (apt), go-modules (go env), ruby-gems (gem sources), php-packages (composer), package-registries (all of them); the last three read the client in the toolchain image when this machine has none.")
    agent_internet_methods: str = Field("read-only", description="With allowlist: HTTP methods allowed, read-only (GET, HEAD, OPTIONS), all, or a comma-separated list. Per request for plain HTTP; HTTPS is a tunnel the proxy does not open, so there the rule is per host only.")
    agent_internet_private_addresses: bool = Field(False, description="With allowlist: let allowed names resolve to private, loopback or link-local addresses (a package mirror on your LAN). Off, so no name can lead the agent to this machine or a cloud metadata service.")
    egress_image: str = Field("assistant-egress:latest", description="Image of the per-job egress proxy (Debian's squid); `assistant egress build` makes it.")

    # Retention (`assistant gc`, and periodically in `assistant serve`); 0 turns a limit off. Whatever a
    # running job or answer uses is kept; follow-ups work from the stored summary, diff, logs and excerpts.
    checkouts_max_age_days: float = Field(14, ge=0, description="Checkouts of git URLs (read by quick answers) unused this long are removed; 0: no age limit.")
    checkouts_max_mb: int = Field(2048, ge=0, description="Total size of those checkouts; beyond it the least recently used go; 0: no size limit.")
    setup_cache_max_age_days: float = Field(14, ge=0, description="Setup-cache images (and their saved files) unused this long are removed; 0: no age limit.")
    setup_cache_max_mb: int = Field(8192, ge=0, description="Total size of the setup cache (its images' own layers plus files); beyond it the least recently used go; 0: no size limit.")
    job_files_max_age_days: float = Field(3, ge=0, description="Per-job directories under <data_dir>/workspaces and homes (left by older versions) unchanged this long are removed; 0: no age limit.")
    job_files_max_mb: int = Field(2048, ge=0, description="Total size of those per-job directories; beyond it the oldest go; 0: no size limit.")
    mirrors_max_age_days: float = Field(30, ge=0, description="Bare mirrors under <data_dir>/mirrors (one per repository a job started from) unused this long are removed; the next job on that repository clones it again; 0: no age limit.")
    mirrors_max_mb: int = Field(4096, ge=0, description="Total size of those mirrors; beyond it the least recently used go; 0: no size limit.")
    retention_interval_min: float = Field(60, ge=0, description="How often `assistant serve` applies the retention limits, in minutes; 0: only `assistant gc` does.")

    # Jobs.
    max_concurrent_jobs: int = Field(4, ge=1, le=64, description="Jobs that run at once; more wait in the queue.")
    job_max_steps: int = Field(60, ge=1, description="Model turns per job before it is stopped.")
    job_max_seconds: int = Field(3600, ge=10, description="Wall-clock budget per job, seconds (time spent waiting for your answer to the agent's question does not count).")
    ask_timeout_s: float = Field(1800, ge=1, description="How long a job whose agent asked you something (state `waiting`) waits for your answer (`assistant jobs tell`, or the core's `JobManager.tell`), seconds; then it ends failed, its summary saying the answer did not come. Its sandbox is kept meanwhile.")
    job_max_tokens: int = Field(3_000_000, ge=1000, description="Tokens (prompt + completion) per job.")
    command_timeout_s: int = Field(300, ge=1, description="Default timeout of one agent shell command, seconds.")
    self_review: Literal["off", "on", "auto"] = Field("off", description="Self-review: after a coding job's agent finished with a change, a second pass in the same sandbox reviews the job's own diff as `assistant review` does (tests on the start commit and on the change, the reviewer's findings, each proof run by the product on both) and attaches the findings to the job; a verified blocker or major finding turns the job's result from fix to draft. Off by default: with the embedded model it changed no result on the measured tasks and cost about 80 s a job (see The embedded model); `auto`: on with a configured model endpoint, off with the embedded model.")
    self_review_max_seconds: int = Field(600, ge=10, description="Wall-clock budget of one self-review pass, seconds (the job's own clock stands still meanwhile); when it runs out, or the pass fails, the job ends with its own result and a note that the self-review did not complete.")
    self_review_max_steps: int = Field(15, ge=1, description="Model turns of the self-review's reviewer (the embedded model's reviewer answers in one constrained reply).")

    # Scale-out (a PostgreSQL database: jobs go to a durable queue served by worker processes).
    serve_workers: bool = Field(True, description="With PostgreSQL: `assistant serve` also runs a job worker in its own process (`assistant serve --no-workers` turns it off, leaving jobs to `assistant worker` processes).")
    worker_heartbeat_s: float = Field(10.0, ge=0.5, description="With PostgreSQL: how often a worker writes its heartbeat.")
    worker_lost_after_s: float = Field(30.0, ge=2, description="With PostgreSQL: a worker whose heartbeat is this old is taken for dead; its running jobs are marked interrupted and retried once on another worker. At least twice the heartbeat.")
    price_table: str | None = Field(None, description="Prices per million tokens as `model=prompt/completion` pairs separated by commas (e.g. `gpt-4o-mini=0.15/0.60`); with it, token counts are also shown as money.")
    price_currency: str = Field("USD", min_length=1, description="Currency of the price table, as shown next to amounts.")

    # Conversation.
    answer_max_tokens: int = Field(2048, ge=16, description="Longest quick answer, in tokens (400 with the embedded model).")
    answer_mode: Literal["auto", "tools", "excerpts"] = Field("auto", description="How quick answers read the code: tools (the model searches and reads with read-only tools), excerpts (the assistant searches for the question's words and gives the model numbered excerpts to answer from and cite: what a small model can do), or auto (excerpts with the embedded model, else tools).")
    answer_token_budget: int = Field(400_000, ge=1000, description="Tokens quick answers may spend per conversation.")
    default_repo: str | None = Field(None, description="Repository (path or git URL) a new conversation starts with.")
    default_ref: str | None = Field(None, description="Git ref a new conversation starts with.")

    # Web app.
    host: str = Field("127.0.0.1", description="Address `assistant serve` binds.")
    port: int = Field(8000, ge=1, le=65535, description="Port `assistant serve` binds.")
    users: str | None = Field(None, description="Password logins as `name:password,name2:password2`; default one user `admin` with a password generated into <data_dir>/admin-password.")
    header_auth: str | None = Field(None, description="Trust this request header (set by a reverse proxy) as the user name.")
    repo_roots: str | None = Field(None, description="Colon-separated directories local repositories must be under when more than one user can log in (several ASSISTANT_USERS, or ASSISTANT_HEADER_AUTH); unset, such a server takes git URLs only. One user may name any path; the data dir is never a repository.")
    allowed_origins: str | None = Field(None, description="Comma-separated origins (`https://host[:port]`) whose pages may call the app with the user's login (CORS, and the chat socket); the app's own origin always may. Default: only the app's own origin; `*` is refused.")
    login_failures_per_name: int = Field(5, ge=1, description="Wrong passwords for one user name before logins for that name are locked for a while (a right password ends the count).")
    login_failures_per_address: int = Field(20, ge=1, description="Wrong passwords from one client address (any names) before logins from it are locked for a while.")
    login_lock_s: float = Field(30.0, gt=0, description="The first lock after too many wrong passwords, in seconds; it doubles with each wrong password after a lock, up to ASSISTANT_LOGIN_LOCK_MAX_S. A right password during a lock is refused too.")
    login_lock_max_s: float = Field(900.0, gt=0, description="The longest login lock, in seconds.")
    public_url: str | None = Field(None, description="The address people reach the app at (`https://host[:port][/path]`), for links that leave the app: a job notification links to its conversation as <public_url>/thread/<id>. Unset: notifications carry no link.")

    # Job notifications (assistant/notify): a signed JSON POST to each URL when a job ends.
    webhook_urls: str | None = Field(None, description="Comma-separated http(s) URLs that get a JSON POST when a job ends (any end: succeeded, failed, cancelled, interrupted) or waits for your answer to its agent's question: job id and number, title, task and summary excerpts, state, reason, kind of result, repository, link, and a one-line `text` (so a Slack-style incoming webhook takes it as it is). Sent from a background thread, retried, recorded per job and URL (`assistant jobs show`); see Job notifications.")
    webhook_secret: str | None = Field(None, description="HMAC-SHA256 key of the notifications: each POST carries `X-Assistant-Timestamp` and `X-Assistant-Signature: sha256=<hex HMAC of \"<timestamp>.<raw body>\">`. Unset: notifications are sent unsigned.")
    webhook_attempts: int = Field(3, ge=1, le=10, description="Tries per notification and URL: a connection error, a timeout or an answer other than 2xx is tried again after 1 s, then 2 s, 4 s, …; after the last one it is recorded as failed.")
    webhook_timeout_s: float = Field(10.0, gt=0, le=120, description="Seconds one notification POST may take to connect and to answer.")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("WARNING", description="Log level of the CLI and the server (logs go to stderr).")

    @field_validator("price_table")
    @classmethod
    def _price_table_readable(cls, value: str | None) -> str | None:
        from .llm.pricing import parse_price_table
        parse_price_table(value)  # raises ValueError with the form it accepts
        return value

    @field_validator("users")
    @classmethod
    def _users_well_formed(cls, value: str | None) -> str | None:
        if value:
            for pair in value.split(","):
                name, sep, password = pair.strip().partition(":")
                if not sep or not name or not password:
                    raise ValueError("expected name:password pairs separated by commas")
        return value

    @field_validator("allowed_origins")
    @classmethod
    def _origins_well_formed(cls, value: str | None) -> str | None:
        for origin in (value or "").split(","):
            origin = origin.strip().rstrip("/")
            if not origin:
                continue
            if "*" in origin:
                raise ValueError("list the origins one by one (https://host[:port]); a wildcard would let any "
                                 "web page act with the user's login")
            scheme, sep, rest = origin.partition("://")
            if scheme not in ("http", "https") or not sep or not rest or "/" in rest:
                raise ValueError(f"{origin!r} is not an origin; write scheme://host[:port], e.g. https://assistant.example.org")
        return value

    @field_validator("webhook_urls")
    @classmethod
    def _webhook_urls_well_formed(cls, value: str | None) -> str | None:
        for url in (value or "").split(","):
            if url.strip():
                _check_http_url(url.strip(), "https://hooks.example.org/assistant")
        return value

    @field_validator("public_url")
    @classmethod
    def _public_url_well_formed(cls, value: str | None) -> str | None:
        if value and value.strip():
            _check_http_url(value.strip(), "https://assistant.example.org")
        return value

    @field_validator("docker_hosts")
    @classmethod
    def _engines_well_formed(cls, value: str | None) -> str | None:
        if value:
            from .sandbox.pool import parse_engines
            parse_engines(value)
        return value

    @model_validator(mode="after")
    def _lost_after_outlasts_heartbeats(self) -> "Settings":
        if self.worker_lost_after_s < 2 * self.worker_heartbeat_s:
            raise ValueError(f"ASSISTANT_WORKER_LOST_AFTER_S ({self.worker_lost_after_s}) must be at least twice "
                             f"ASSISTANT_WORKER_HEARTBEAT_S ({self.worker_heartbeat_s}), or live workers look dead")
        return self

    @field_validator("agent_internet_domains", "agent_internet_presets", "agent_internet_methods")
    @classmethod
    def _agent_internet_well_formed(cls, value: str | None, info) -> str | None:
        from .egress.policy import EgressPolicyError, parse_domains, parse_methods, parse_presets
        parse = {"agent_internet_domains": parse_domains, "agent_internet_presets": parse_presets,
                 "agent_internet_methods": parse_methods}[info.field_name]
        try:
            parse(value, "")
        except EgressPolicyError as exc:
            raise ValueError(str(exc).removeprefix(": ")) from None
        return value

    # ------------------------------------------------------------------ derived values
    def model_for(self, role: Role) -> str:
        return getattr(self, f"{role}_model") or self.model

    @property
    def uses_local_model(self) -> bool:
        return not self.openai_api_key and not self.openai_base_url

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'assistant.db'}"

    @property
    def uses_queue(self) -> bool:
        """A PostgreSQL database: jobs go to the durable queue and run in worker processes (jobs/queue.py)."""
        return self.resolved_database_url.split(":", 1)[0].split("+", 1)[0] in ("postgresql", "postgres")

    @property
    def several_users(self) -> bool:
        """More than one person can log in: several password users, or a proxy that names the user."""
        return bool(self.header_auth) or len(self.user_passwords()) > 1

    @property
    def allowed_sandbox_images(self) -> tuple[str, ...] | None:
        """The images a repository may name: any (None) with one user, else only the listed ones."""
        if not self.several_users:
            return None
        return tuple(part.strip() for part in (self.sandbox_allowed_images or "").split(",") if part.strip())

    @property
    def allow_weaker_fallback(self) -> bool:
        return self.sandbox_fallback == "allow" or (self.sandbox_fallback == "auto" and not self.several_users)

    def setup_secret_values(self, environ: dict[str, str] | None = None) -> tuple[tuple[str, str], ...]:
        """(name, value) of each setup secret; a missing variable or unreadable file is a SettingsError."""
        environ = os.environ if environ is None else environ
        pairs = []
        for item in (self.setup_secrets or "").replace("\n", ",").split(","):
            item = item.strip()
            if not item:
                continue
            name, sep, source = item.partition("=")
            name = name.strip()
            if not name.isidentifier():
                raise SettingsError(f"ASSISTANT_SETUP_SECRETS: {name!r} is not a variable name")
            if sep and source.startswith("@"):
                try:
                    value = Path(source[1:]).expanduser().read_text().strip()
                except OSError as exc:
                    raise SettingsError(f"ASSISTANT_SETUP_SECRETS: cannot read {source[1:]} for {name} ({exc.strerror})") from None
            elif sep:
                raise SettingsError(f"ASSISTANT_SETUP_SECRETS: write {name} (from the environment) or {name}=@FILE, "
                                    "never the value itself")
            elif name in environ:
                value = environ[name]
            else:
                raise SettingsError(f"ASSISTANT_SETUP_SECRETS names {name}, which is not set in the environment")
            pairs.append((name, value))
        return tuple(pairs)

    def origins(self) -> tuple[str, ...]:
        """The configured extra origins (ASSISTANT_ALLOWED_ORIGINS), without a trailing slash."""
        return tuple(o.strip().rstrip("/") for o in (self.allowed_origins or "").split(",") if o.strip())

    def webhook_targets(self) -> tuple[str, ...]:
        """The notification URLs (ASSISTANT_WEBHOOK_URLS), in the order given, each once."""
        return tuple(dict.fromkeys(u.strip() for u in (self.webhook_urls or "").split(",") if u.strip()))

    @property
    def public_base_url(self) -> str | None:
        """ASSISTANT_PUBLIC_URL without a trailing slash, or None."""
        return (self.public_url or "").strip().rstrip("/") or None

    def user_passwords(self) -> dict[str, str]:
        if not self.users:
            return {}
        return dict(p.strip().split(":", 1) for p in self.users.split(","))


def _check_http_url(url: str, example: str) -> None:
    """A ValueError naming the URL unless it is http(s)://host… with nothing that would split it."""
    from urllib.parse import urlsplit
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (raises on a bad port)
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname or any(c.isspace() for c in url):
        raise ValueError(f"{url!r} is not an http(s) URL; write e.g. {example}")


def env_name(field: str) -> str:
    extra = Settings.model_fields[field].json_schema_extra or {}
    return extra.get("env") or f"ASSISTANT_{field.upper()}"  # type: ignore[union-attr]


_BOOL_WORDS = {"1": True, "true": True, "yes": True, "on": True, "0": False, "false": False, "no": False, "off": False}


def _coerce_env(field: str, raw: str) -> Any:
    annotation = str(Settings.model_fields[field].annotation)
    if annotation == "<class 'bool'>":
        if raw.strip().lower() not in _BOOL_WORDS:
            raise SettingsError(f"{env_name(field)}={raw!r}: expected true or false")
        return _BOOL_WORDS[raw.strip().lower()]
    if raw == "" and "None" in annotation:
        return None if field != "sandbox_ca_bundle" else ""
    return raw


def load_settings(environ: dict[str, str] | None = None, toml_path: Path | None = None) -> Settings:
    """Settings from (lowest first) defaults, assistant.toml, environment variables."""
    environ = dict(os.environ if environ is None else environ)
    values: dict[str, Any] = {}
    toml_file = toml_path or Path(environ.get("ASSISTANT_CONFIG", "assistant.toml"))
    if toml_file.is_file():
        try:
            data = tomllib.loads(toml_file.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise SettingsError(f"{toml_file}: not valid TOML ({exc})") from exc
        for key, value in data.items():
            if key not in Settings.model_fields:
                raise SettingsError(f"{toml_file}: unknown setting {key!r}")
            values[key] = value
    for field in Settings.model_fields:
        name = env_name(field)
        if name in environ:
            values[field] = _coerce_env(field, environ[name])
    try:
        return Settings(**values)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            field = str(err["loc"][0]) if err["loc"] else "?"
            given = values.get(field)
            accepted = err["msg"].removeprefix("Value error, ")
            if not err["loc"]:  # a rule across settings: its message names them
                problems.append(accepted)
                continue
            problems.append(f"{env_name(field) if field in Settings.model_fields else field}={given!r}: {accepted}")
        raise SettingsError("invalid configuration: " + "; ".join(problems)) from None


@dataclass(frozen=True)
class SettingDoc:
    env: str
    default: str
    description: str


def settings_table() -> list[SettingDoc]:
    rows = []
    for field, info in Settings.model_fields.items():
        default = "" if info.default_factory else ("" if info.default is None else str(info.default))
        if field == "data_dir":
            default = "/var/lib/assistant as root, else ~/.local/share/assistant"
        rows.append(SettingDoc(env_name(field), default, info.description or ""))
    return rows
