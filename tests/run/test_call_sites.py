"""tasks/run/call_sites.py: deploy.py, run by pyinfra as a file, is found by
`inspect` through its file-to-module cache, with the same source lines."""

from __future__ import annotations

import inspect
import sys

from tasks.run import call_sites

# Run as pyinfra runs deploy.py: compiled under its relative name, exec'd, no module.
SOURCE = "import sys\n\ndef here():\n    return sys._getframe()\n\nframe = here().f_back\n"


def test_the_deploy_file_is_found_by_name_and_reads_the_same(tmp_path, monkeypatch):
    (tmp_path / "deploy.py").write_text(SOURCE)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delitem(sys.modules, call_sites.NAME, raising=False)
    scope = {"__file__": "deploy.py"}
    exec(compile(SOURCE, "deploy.py", "exec"), scope)
    frame = scope["frame"]
    assert inspect.getmodule(frame, "deploy.py") is None  # after a search of every module
    before = inspect.getframeinfo(frame)

    call_sites.register("deploy.py")
    module = sys.modules[call_sites.NAME]
    assert module.__file__ == str(tmp_path / "deploy.py")
    assert inspect.getmodule(frame, "deploy.py") is module
    after = inspect.getframeinfo(frame)
    assert (after.filename, after.lineno, after.code_context) == (before.filename, before.lineno, before.code_context)
    assert after.code_context == ["frame = here().f_back\n"]

    call_sites.register("other.py")  # the process's first deploy file stays named
    assert sys.modules[call_sites.NAME] is module
