"""`exec`: a command in the live release as the app user (ops.py run)."""

from __future__ import annotations

import sys

from . import base, releases, sandbox


# Runs a --tty command (the app user's, in its unit). systemd-run --pty (systemd 252)
# stops copying the terminal's output as soon as the unit ends, so what the command
# printed last could be lost: the unit ends a moment after the command, with its exit
# status. Ctrl-C on that terminal is for the command (a REPL's KeyboardInterrupt): the
# wrapper ignores it, the command gets the default handling back, and runs in bash
# (dash ends itself after a Ctrl-C its child handled, with status 130; bash does only
# when the child died of it).
TTY_WRAPPER = r"""
import signal, subprocess, sys, time
signal.signal(signal.SIGINT, signal.SIG_IGN)
code = subprocess.call(["/bin/bash", "-c", sys.argv[1]],
                       preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
time.sleep(0.5)
sys.exit(code if code >= 0 else 128 - code)
"""

def cmd_exec(args) -> int:
    """A command in the live release, as its steps run: the app user, the venv on
    PATH, the app's environment files, the sandbox. Its exit status is ours."""
    words = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not words:
        raise base.Failure("exec: no command given (release-tool exec -- COMMAND)")
    current = releases.live()
    if current is None:
        raise base.Failure("there is no live release yet")
    command = ["/bin/sh", "-c", " ".join(words)]
    if args.tty:
        command = ["/usr/bin/python3", "-I", "-S", "-c", TTY_WRAPPER, " ".join(words)]
    code = sandbox.in_release(current, command, tty=args.tty)
    if code:
        print(f"exit status {code}", file=sys.stderr, flush=True)
    return code
