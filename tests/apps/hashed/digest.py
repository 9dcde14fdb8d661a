"""Write the static files of one release of the hashed app: each asset's name carries
the hash of its content, and manifest.json maps the names the app uses to them."""

import hashlib
import json
import sys
from pathlib import Path


def write(static: Path, release: str) -> dict:
    for old in static.glob("*"):
        old.unlink()
    manifest = {"release": release}
    for name, text in (("app.js", f"console.log({release!r});\n"),
                       ("style.css", f"/* release {release} */ body {{ font-family: sans-serif; }}\n")):
        stem, suffix = name.rsplit(".", 1)
        digest = hashlib.sha256(text.encode()).hexdigest()[:8]
        (static / f"{stem}.{digest}.{suffix}").write_text(text)
        manifest[name] = f"{stem}.{digest}.{suffix}"
    (static / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


if __name__ == "__main__":
    write(Path(__file__).parent / "static", sys.argv[1] if len(sys.argv) > 1 else "one")
