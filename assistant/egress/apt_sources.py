"""This machine's apt sources, read from its own configuration: the hosts of the Debian preset and the
sources the proxy image installs squid from (so it gets the security updates the host gets)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

APT_DIR = Path("/etc/apt")


@dataclass(frozen=True)
class AptSource:
    uri: str
    suite: str
    components: tuple[str, ...]

    def line(self) -> str:
        return " ".join(["deb", self.uri, self.suite, *self.components])


def read_apt_sources(apt_dir: Path = APT_DIR) -> list[AptSource]:
    """Every binary (`deb`) source in sources.list, sources.list.d/*.list and sources.list.d/*.sources."""
    sources: list[AptSource] = []
    legacy = [apt_dir / "sources.list", *sorted((apt_dir / "sources.list.d").glob("*.list"))]
    for path in legacy:
        if path.is_file():
            sources += _one_line_sources(path.read_text(errors="replace"))
    for path in sorted((apt_dir / "sources.list.d").glob("*.sources")):
        sources += _deb822_sources(path.read_text(errors="replace"))
    return sources


def _one_line_sources(text: str) -> list[AptSource]:
    found = []
    for line in text.splitlines():
        parts = re.sub(r"\[[^\]]*\]", "", line.split("#", 1)[0]).split()
        if len(parts) >= 3 and parts[0] == "deb":
            found.append(AptSource(parts[1], parts[2], tuple(parts[3:])))
    return found


def _deb822_sources(text: str) -> list[AptSource]:
    found = []
    for stanza in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        for line in stanza.splitlines():
            if line.startswith("#") or ":" not in line:
                continue
            key, _, value = line.partition(":")
            fields[key.strip().lower()] = value.strip()
        if fields.get("enabled", "yes").lower() == "no" or "deb" not in fields.get("types", "").split():
            continue
        components = tuple(fields.get("components", "").split())
        for uri in fields.get("uris", "").split():
            for suite in fields.get("suites", "").split():
                found.append(AptSource(uri, suite, components))
    return found
