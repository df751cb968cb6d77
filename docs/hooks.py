"""MkDocs hooks: README.md and CONTRIBUTING.md are pages of the site, links work in both places.

Why: GitHub shows README.md at the top of the repository and the site shows it as its front
page. One file serves both, so there is no copy to keep in sync. Their links are written
relative to the repository root (what GitHub resolves), the site's pages live under ``docs/``, so
every page's links are rewritten while the site is built (never on disk):

* a link to a page of the site (``docs/...``, ``README.md``, ``CONTRIBUTING.md``) becomes the
  link to that page; MkDocs then checks it, and ``--strict`` fails on a missing page or anchor;
* a link to any other file of the repository (a config, ``infra/README.md``) must name a file that
  exists, or the build fails; it becomes a link to that file on the repository host when
  ``mkdocs.yml`` sets ``repo_url``, and the link's text otherwise (the site does not publish the
  source tree).

Pure functions first (``rewrite_links`` is tested without MkDocs installed:
``tests/unit/test_docs.py``), the MkDocs event handlers last.
"""

from __future__ import annotations

import logging
import posixpath
import re
from pathlib import Path
from typing import Any

#: Site pages whose source is a file at the repository root instead of under docs/.
PAGES_FROM_ROOT = {"index.md": "README.md", "contributing.md": "CONTRIBUTING.md"}
ROOT = Path(__file__).resolve().parents[1]

# A code span (left as it is) or an inline link/image: [text](target "title").
_TOKEN = re.compile(
    r"(?P<code>(?P<ticks>`+)[\s\S]*?(?P=ticks))"
    r"|(?P<bang>!?)\[(?P<text>[^\]]*)\]\((?P<target>[^()\s]+)(?P<title>\s+\"[^\"]*\")?\)"
)
_FENCE = re.compile(r"^\s*(```|~~~)")
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")

log = logging.getLogger("mkdocs.hooks.repo_links")  # under "mkdocs": --strict counts warnings


def repo_path_of(src_uri: str) -> str:
    """Where the source of site page ``src_uri`` lives in the repository."""
    return PAGES_FROM_ROOT.get(src_uri, f"docs/{src_uri}")


def site_uri_of(repo_path: str) -> str | None:
    """The site page built from repository file ``repo_path``, or None when it is not a page."""
    for site_uri, source in PAGES_FROM_ROOT.items():
        if source == repo_path:
            return site_uri
    if repo_path.startswith("docs/"):
        return repo_path[len("docs/") :]
    return None


def rewrite_links(
    markdown: str, src_uri: str, root: Path = ROOT, blob_url: str | None = None
) -> tuple[str, list[str]]:
    """``markdown`` of site page ``src_uri`` with its relative links made to work in the site.

    Returns the new text and one message per link that cannot work (a repository file that does
    not exist, a path above the repository). Links inside code are left alone.
    """
    problems: list[str] = []
    source = repo_path_of(src_uri)
    here = posixpath.dirname(src_uri) or "."

    def link(match: re.Match[str]) -> str:
        if match["code"] is not None:
            return match[0]
        target = match["target"]
        if _SCHEME.match(target) or target.startswith(("#", "/")):
            return match[0]  # external, same page, or absolute: MkDocs' own validation
        path, hash_, anchor = target.partition("#")
        resolved = posixpath.normpath(posixpath.join(posixpath.dirname(source), path))
        if resolved == ".." or resolved.startswith("../"):
            problems.append(f"{source}: link {target!r} points outside the repository")
            return match[0]
        page = site_uri_of(resolved)
        if page is not None:
            new = posixpath.relpath(page, here) + hash_ + anchor
            return f"{match['bang']}[{match['text']}]({new}{match['title'] or ''})"
        if not (root / resolved).exists():
            problems.append(f"{source}: link {target!r}: {resolved} does not exist")
            return match[0]
        if blob_url:
            new = f"{blob_url.rstrip('/')}/{resolved}{hash_}{anchor}"
            return f"{match['bang']}[{match['text']}]({new}{match['title'] or ''})"
        if match["bang"]:
            problems.append(f"{source}: image {target!r} is outside docs/ and no repo_url is set")
            return match[0]
        return match["text"]

    segments: list[tuple[bool, list[str]]] = []  # consecutive lines: (inside a fence, lines)
    in_fence = False
    for line in markdown.split("\n"):
        fence = bool(_FENCE.match(line))
        code = in_fence or fence
        if not segments or segments[-1][0] != code:
            segments.append((code, []))
        segments[-1][1].append(line)
        if fence:
            in_fence = not in_fence
    text = "\n".join(
        "\n".join(lines) if code else _TOKEN.sub(link, "\n".join(lines)) for code, lines in segments
    )
    return text, problems


# -- MkDocs events ------------------------------------------------------------------------------


def on_files(files: Any, config: Any) -> Any:
    """Add README.md and CONTRIBUTING.md as pages (read from the root, no copy under docs/)."""
    from mkdocs.structure.files import File

    for site_uri, source in PAGES_FROM_ROOT.items():
        if files.get_file_from_path(site_uri) is not None:
            raise ValueError(f"docs/{site_uri} would hide {source}: the site builds it from there")
        files.append(File.generated(config, site_uri, abs_src_path=str(ROOT / source)))
    return files


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    blob_url = f"{config.repo_url.rstrip('/')}/blob/HEAD" if config.repo_url else None
    text, problems = rewrite_links(markdown, page.file.src_uri, ROOT, blob_url)
    for problem in problems:
        log.warning(problem)
    return text


def on_serve(server: Any, config: Any, builder: Any) -> Any:
    """``mkdocs serve`` rebuilds when the root pages change too."""
    for source in PAGES_FROM_ROOT.values():
        server.watch(str(ROOT / source))
    return server
