"""How long the release tool takes to rebuild the static files nginx serves (the merge
of the kept releases', files/release_tool/assets.py), without a host: RELEASES releases
of DIRS x FILES files each, half of them renamed per release (as fingerprinted assets
are), in a temporary directory.

    .venv/bin/python -m bench.static_merge [RELEASES DIRS FILES]
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path

from tasks import tool as host_tool


def main(releases: int = 5, dirs: int = 20, files: int = 100) -> None:
    tool = host_tool.load()
    root = Path(tempfile.mkdtemp(prefix="static-merge-"))
    try:
        tool.configure(root, {"app": "bench", "keep_releases": releases, "static_dir": "static"})
        (root / "releases").mkdir()
        for number in range(releases):
            name = f"20261201T{number:06d}Z-bench"
            static = root / "releases" / name / "static"
            static.mkdir(parents=True)
            (static.parent / tool.META).write_text("{}")
            for directory in range(dirs):
                (static / f"d{directory}").mkdir()
                for file in range(files):
                    # Odd files carry the release in their name, even ones keep it.
                    (static / f"d{directory}" / f"f{file}.{number if file % 2 else 0}.js").write_text("x")
            tool.record("live", name)
        tool.switch(name)
        timings = []
        for _ in range(3):
            start = time.monotonic()
            tool.rebuild(name)
            timings.append(time.monotonic() - start)
        print(f"{releases} releases of {dirs * files} files: rebuilt in "
              + ", ".join(f"{seconds:.2f} s" for seconds in timings))
    finally:
        shutil.rmtree(root)


if __name__ == "__main__":
    main(*(int(value) for value in sys.argv[1:4]))
