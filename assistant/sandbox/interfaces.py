"""Reading a sandbox's network interfaces from inside it."""


def parse_proc_net_dev(text: str) -> list[str]:
    """Interface names from /proc/net/dev, which shows the reading process's own network namespace."""
    names = []
    for line in text.splitlines()[2:]:
        name, sep, _ = line.partition(":")
        if sep and name.strip():
            names.append(name.strip())
    return sorted(names)
