"""Disable the default site a distribution writes into nginx.conf itself (RHEL's
`server { listen 80; listen [::]:80; server_name _; root /usr/share/nginx/html; ... }`)
by commenting out, in place, the `server` blocks nginx.conf defines directly in its
`http` block. Run on the host by the deploy (tasks/default_server.py), fed to python3
on stdin:

    python3 - check PATH      prints "active", "none", or "missing" (no such file)
    python3 - disable PATH    comments them out, then runs `nginx -t` (or the
                              command given after PATH); if that fails, PATH is
                              put back as it was

Only nginx.conf's own blocks are touched, never included files. The file is
rewritten in place, so its owner, mode and SELinux label stay; rpm keeps a
modified nginx.conf on upgrades (%config(noreplace)), and if a new one replaces
it the next deploy finds its default site active and disables it again.
"""

import re
import subprocess
import sys

MARK = "#disabled-by-pyinfra-flask# "
TOKEN = re.compile(r"[{};]|[^\s{};]+")
QUOTED = re.compile(r"\"(?:[^\"\\]|\\.)*\"|'(?:[^'\\]|\\.)*'")


def _code(line: str) -> str:
    """The line without quoted strings and its comment."""
    return QUOTED.sub('""', line).split("#", 1)[0]


def default_servers(lines: list[str]) -> list[tuple[int, int]]:
    """(first, last) line numbers (0-based) of each `server` block directly inside `http`."""
    blocks, stack, statement, first, start = [], [], [], None, None
    for number, line in enumerate(lines):
        for token in TOKEN.findall(_code(line)):
            if token == "{":
                name = statement[0] if statement else ""
                if name == "server" and stack == ["http"]:
                    start = first
                stack.append(name)
                statement = []
            elif token == "}":
                if stack:
                    stack.pop()
                statement = []
                if start is not None and stack == ["http"]:
                    blocks.append((start, number))
                    start = None
            elif token == ";":
                statement = []
            else:
                if not statement:
                    first = number
                statement.append(token)
    return blocks


def main(argv: list[str]) -> int:
    action, path = argv[1], argv[2]
    try:
        with open(path) as f:
            text = f.read()
    except FileNotFoundError:
        print("missing")
        return 0
    lines = text.splitlines(keepends=True)
    blocks = default_servers(lines)
    if action == "check":
        print("active" if blocks else "none")
        return 0
    if not blocks:
        return 0
    for first, last in blocks:
        for number in range(first, last + 1):
            lines[number] = MARK + lines[number]
    with open(path, "w") as f:
        f.write("".join(lines))
    check = subprocess.run(argv[3:] or ["nginx", "-t"], capture_output=True, text=True, check=False)
    if check.returncode != 0:
        with open(path, "w") as f:
            f.write(text)
        sys.stderr.write(f"{check.stdout}{check.stderr}nginx rejected {path} without its default "
                         "site (above); it was put back as it was.\n")
        return 1
    where = ", ".join(f"lines {first + 1}-{last + 1}" for first, last in blocks)
    print(f"disabled the default site in {path} ({where})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
