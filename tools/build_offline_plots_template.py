"""Build ``.dvc/offline_plots.html``: DVC's plots page with Vega inlined, so plots render offline.

DVC's default page loads vega, vega-lite and vega-embed from a CDN; this template inlines the
same versions (from the npm registry, ``npm pack``), and ``.dvc/config`` points
``plots.html_template`` at it. It has no ``{scripts}`` placeholder, so DVC adds no CDN tags.
Run it again only to change versions (needs ``npm``; the output is committed)::

    python tools/build_offline_plots_template.py
"""

from __future__ import annotations

import argparse
import subprocess
import tarfile
import tempfile
from pathlib import Path

#: The versions dvc-render's own page uses (dvc_render/vega.py), so specs render the same.
PACKAGES = {"vega": "5.20.2", "vega-lite": "5.2.0", "vega-embed": "6.18.2"}
TARGET = Path(__file__).resolve().parents[1] / ".dvc" / "offline_plots.html"

PAGE = """<!DOCTYPE html>
<html>
<head>
<meta charset="utf-8">
<title>MCCL pipeline plots</title>
<!-- Offline DVC plots page: {versions} inlined from the npm registry (BSD-3-Clause,
     Copyright (c) the University of Washington Interactive Data Lab). Built by
     tools/build_offline_plots_template.py. -->
{scripts}
<style>
  body {{ font-family: sans-serif; }}
  table {{ border-spacing: 15px; }}
</style>
</head>
<body>
{{plot_divs}}
</body>
</html>
"""


def fetch_build(package: str, version: str, workdir: Path) -> str:
    """The minified browser build of ``package@version`` (``build/<name>.min.js`` of its npm tarball)."""
    out = subprocess.run(["npm", "pack", f"{package}@{version}", "--silent"], cwd=workdir, check=True,
                         capture_output=True, text=True).stdout.strip().splitlines()[-1]  # fmt: skip
    with tarfile.open(workdir / out) as archive:
        member = archive.extractfile(f"package/build/{package}.min.js")
        if member is None:
            raise FileNotFoundError(f"{out} has no package/build/{package}.min.js")
        text = member.read().decode("utf-8")
    # Source maps are not shipped; the comment would only make devtools ask for a missing file.
    text = "\n".join(line for line in text.splitlines() if not line.startswith("//# sourceMappingURL="))
    if "</script" in text.lower():
        raise ValueError(f"{package} contains '</script', which would end the inline <script> early")
    return text


def build(target: Path = TARGET) -> Path:
    with tempfile.TemporaryDirectory() as tmp:
        scripts = [f"<script>/* {p}@{v} */\n{fetch_build(p, v, Path(tmp))}\n</script>" for p, v in PACKAGES.items()]
    versions = ", ".join(f"{p} {v}" for p, v in PACKAGES.items())
    target.write_text(PAGE.format(versions=versions, scripts="\n".join(scripts)), encoding="utf-8")
    return target


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=TARGET)
    print(build(parser.parse_args().out))
