"""The files the experiment loop rewrites stay clean: DVC's own rewrites of params.yaml are
value-only, the offline plots template fetches nothing, and the git dirty check ignores what DVC
manages (fast checks; the whole loop runs in tests/test_dvc.py)."""

from __future__ import annotations

import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_dvc_rewrites_params_yaml_value_for_value(tmp_path):
    """`dvc exp run -S` edits params.yaml through DVC's YAML round trip: a no-op keeps every
    byte (comments, alignment), and a set value changes that line only."""
    from dvc.utils.serialize import modify_yaml

    params = tmp_path / "params.yaml"
    shutil.copy(REPO / "params.yaml", params)
    with modify_yaml(params):
        pass
    assert params.read_bytes() == (REPO / "params.yaml").read_bytes()
    with modify_yaml(params) as data:
        data["train"]["lr"] = 0.123
    before = (REPO / "params.yaml").read_text().splitlines()
    after = params.read_text().splitlines()
    changed = [(a, b) for a, b in zip(before, after, strict=True) if a != b]
    assert len(changed) == 1 and changed[0][1].strip().startswith("lr: 0.123")


def test_data_dvc_is_in_the_form_dvc_writes():
    """`dvc exp run` rewrites data.dvc through DVC's YAML dumper (data/real absent: an empty
    ``md5:``); the committed body is already that output, so it stays clean (the real
    `dvc exp run` check is in tests/test_dvc.py)."""
    from dvc.utils.serialize import dumps_yaml, parse_yaml_for_update

    text = (REPO / "data.dvc").read_text()
    body = "\n".join(line for line in text.splitlines() if not line.startswith("#")) + "\n"
    assert dumps_yaml(parse_yaml_for_update(body, "data.dvc")) == body
    assert body.rstrip().endswith("md5:")


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self.scripts = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.scripts += tag == "script"
        self.urls += [v for k, v in attrs if k in ("src", "href") and v]


def test_offline_plots_template_inlines_vega_and_fetches_nothing():
    config = (REPO / ".dvc" / "config").read_text()
    assert "html_template = offline_plots.html" in config
    page = (REPO / ".dvc" / "offline_plots.html").read_text()
    links = _Links()
    links.feed(page)
    assert links.urls == [] and links.scripts == 3  # vega, vega-lite, vega-embed, all inline
    assert page.count("{plot_divs}") == 1 and "{scripts}" not in page  # DVC adds no CDN tags
    for name in ("vega@5.20.2", "vega-lite@5.2.0", "vega-embed@6.18.2"):
        assert f"/* {name} */" in page


def _git(*args: str, cwd: Path) -> str:
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t", "PATH": "/usr/bin:/bin"}  # fmt: skip
    return subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True).stdout


def test_git_dirty_tag_ignores_the_files_dvc_manages(tmp_path):
    from mccl_core.tracking.tracker import git_commit

    for name in ("dvc.lock", "data.dvc", "params.yaml", "metrics/evaluate.json", "train.py"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("a: 1\n")
    _git("init", "-q", cwd=tmp_path)
    _git("add", "-A", cwd=tmp_path)
    _git("commit", "-q", "-m", "x", cwd=tmp_path)
    for name in ("dvc.lock", "data.dvc", "params.yaml", "metrics/evaluate.json"):
        (tmp_path / name).write_text("a: 2\n")
    commit = git_commit(tmp_path)
    assert commit is not None and commit[1] is False
    (tmp_path / "train.py").write_text("a: 2\n")
    assert git_commit(tmp_path) == (commit[0], True)
