"""The documentation stays true: the generated config reference, the README's size, the links.

``docs/config.md`` is generated from the live pydantic config classes (a field someone adds
appears when it is regenerated; the test below fails until it is)::

    .venv/bin/python tests/unit/test_docs.py        # rewrites docs/config.md

The links are checked here without MkDocs (a file must exist, an anchor must be a heading of the
linked page), so a broken link fails the unit tests as well as ``make docs``. The site's link
rewriting (``docs/hooks.py``) is tested here too: it is what makes README links work in the site.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest
import yaml

from recicl.config import reference_rows

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
CONFIG_PAGE = ROOT / "docs" / "config.md"
#: The issue's bound: a guide a newcomer reads in ten minutes, results live in docs/.
README_MAX_LINES = 250

CONFIG_HEADER = """\
<!-- Generated from the config classes (recicl/config/) by `python tests/unit/test_docs.py`;
     do not edit by hand: tests/unit/test_docs.py fails when this file is stale. -->

# Configuration reference

YAML with one section per stage; unknown keys are errors that name the key (and suggest the
closest one). Flags override the config file; the config file overrides the defaults.
`recicl config reference` prints this table, `recicl config show --config FILE` the resolved
configuration of a file. The shipped configs are in `ray_jobs/configs/` and `serve_configs/`.
"""


def _cell(text: str) -> str:
    """A table cell: a literal ``|`` would end the cell on GitHub and in the site."""
    return text.replace("|", "\\|")


def render_config_page() -> str:
    """docs/config.md as it should be: the header and one row per leaf config field."""
    lines = ["| key | default | meaning |", "|---|---|---|"]
    for key, default, description in reference_rows():
        lines.append(f"| `{key}` | `{_cell(default)}` | {_cell(description)} |")
    return f"{CONFIG_HEADER}\n" + "\n".join(lines) + "\n"


def test_config_reference_is_current():
    assert CONFIG_PAGE.read_text() == render_config_page(), (
        "docs/config.md is stale: run `.venv/bin/python tests/unit/test_docs.py` to rewrite it"
    )


def test_config_reference_lists_every_field_once():
    """The renderer itself: every leaf key of the live config is one row of the page."""
    page = render_config_page()
    keys = [key for key, _, _ in reference_rows()]
    assert len(keys) == len(set(keys)) > 100
    for key in keys:
        assert page.count(f"| `{key}` |") == 1, key
    assert "data.catalog_columns.attributes" in keys  # its description holds a '|'
    assert "joined with '\\|'" in page


def test_readme_is_a_guide():
    lines = README.read_text().splitlines()
    assert len(lines) <= README_MAX_LINES, (
        f"README.md has {len(lines)} lines (at most {README_MAX_LINES}): measurements go to "
        "docs/results/*.md or docs/performance.md, reference material to a page under docs/"
    )


def test_readme_holds_no_result_tables():
    """A table row with a decimal figure is a measurement: it belongs under docs/."""
    rows = [line for line in README.read_text().splitlines() if line.startswith("|")]
    measured = [row for row in rows if re.search(r"\b\d+\.\d+\b", row)]
    assert not measured, f"move these rows to docs/results/ or docs/performance.md: {measured}"


# -- links -----------------------------------------------------------------------------------

PAGES = [README, ROOT / "CONTRIBUTING.md", *sorted((ROOT / "docs").rglob("*.md"))]
_CODE = re.compile(r"^\s*(```|~~~).*?^\s*\1", re.M | re.S)
_LINK = re.compile(r"(`+)[\s\S]*?\1|!?\[[^\]]*\]\(([^()\s]+)(?:\s+\"[^\"]*\")?\)")


def github_anchor(heading: str) -> str:
    """GitHub's anchor of a heading (MkDocs' is the same for the headings used here)."""
    text = heading.strip().lower().replace("`", "").replace("*", "")
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = _CODE.sub("", page.read_text())
    return {github_anchor(h) for h in re.findall(r"^#{1,6} (.+)$", text, re.M)}


def relative_links(page: Path) -> list[str]:
    text = _CODE.sub("", page.read_text())
    found = [m[2] for m in _LINK.finditer(text) if m[2]]
    return [t for t in found if not re.match(r"^[a-z][a-z0-9+.-]*:", t, re.I)]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page: Path):
    bad = []
    for target in relative_links(page):
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        if not linked.exists():
            bad.append(f"{target}: no such file")
        elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
            bad.append(f"{target}: no heading #{anchor} in {linked.name}")
    assert not bad, f"{page.relative_to(ROOT)}: broken links:\n" + "\n".join(bad)


def test_link_checker_sees_a_broken_link(tmp_path: Path):
    """The checker above is the oracle: it must report what it should."""
    page = tmp_path / "page.md"
    (tmp_path / "other.md").write_text("# Other\n\n## A `code` heading\n")
    page.write_text(
        "[ok](other.md#a-code-heading) [gone](missing.md) [bad](other.md#nope)\n"
        "`[in code](missing-too.md)`\n```\n[fenced](missing-three.md)\n```\n"
    )
    assert relative_links(page) == ["other.md#a-code-heading", "missing.md", "other.md#nope"]
    assert anchors(tmp_path / "other.md") == {"other", "a-code-heading"}


# -- the site: mkdocs.yml and its link rewriting (docs/hooks.py) ---------------------------------

MKDOCS = ROOT / "mkdocs.yml"


def nav_pages(nav: object) -> list[str]:
    """Every page named in mkdocs.yml's ``nav`` (titles are keys, pages are strings)."""
    if isinstance(nav, str):
        return [nav]
    if isinstance(nav, dict):
        return [page for value in nav.values() for page in nav_pages(value)]
    if isinstance(nav, list):
        return [page for item in nav for page in nav_pages(item)]
    return []


def test_site_nav_lists_every_page_once():
    """What MkDocs checks too (strict), here without MkDocs installed: no page left out of the
    site, none listed twice, the front page and CONTRIBUTING.md included."""
    config = yaml.safe_load(MKDOCS.read_text())
    listed = nav_pages(config["nav"])
    docs = ROOT / config["docs_dir"]
    on_disk = [str(p.relative_to(docs)) for p in docs.rglob("*.md")]
    assert sorted(listed) == sorted([*on_disk, *_hooks().PAGES_FROM_ROOT])
    assert config["strict"] is True
    assert (ROOT / config["hooks"][0]).is_file()
    assert config["site_dir"].startswith(".cache/")  # git-ignored, removed by `make clean`


def _hooks():
    spec = importlib.util.spec_from_file_location("docs_hooks", ROOT / "docs" / "hooks.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_site_links_from_the_readme_point_at_site_pages():
    hooks = _hooks()
    text, problems = hooks.rewrite_links(
        "[q](docs/quality.md) [r](docs/results/demo.md#x) [c](CONTRIBUTING.md) "
        "[cfg](ray_jobs/configs/tiny-cpu.yaml) `[code](docs/quality.md)`\n"
        "```\n[fenced](docs/quality.md)\n```\n[web](https://example.org) [here](#top)",
        "index.md",
    )
    assert problems == []
    assert text == (
        "[q](quality.md) [r](results/demo.md#x) [c](contributing.md) "
        "cfg `[code](docs/quality.md)`\n"
        "```\n[fenced](docs/quality.md)\n```\n[web](https://example.org) [here](#top)"
    )


def test_site_links_from_docs_pages_and_to_the_repository():
    hooks = _hooks()
    text, problems = hooks.rewrite_links(
        "[home](../../README.md#a) [cfg](../../ray_jobs/configs/tiny-cpu.yaml) [up](../quality.md)",
        "results/demo.md",
        blob_url="https://git.example/recicl/blob/HEAD",
    )
    assert problems == []
    assert text == (
        "[home](../index.md#a) [cfg](https://git.example/recicl/blob/HEAD/ray_jobs/configs/"
        "tiny-cpu.yaml) [up](../quality.md)"
    )


def test_site_link_to_a_missing_repository_file_is_a_problem():
    markdown = "[x](ray_jobs/configs/gone.yaml) [y](../up.md)"
    _, problems = _hooks().rewrite_links(markdown, "index.md")
    assert len(problems) == 2
    assert "gone.yaml does not exist" in problems[0]
    assert "outside the repository" in problems[1]


if __name__ == "__main__":
    CONFIG_PAGE.write_text(render_config_page())
    print(f"wrote {CONFIG_PAGE.relative_to(ROOT)}")
