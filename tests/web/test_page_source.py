"""Checks on the studio page's static files that need no browser: every module and stylesheet
the page loads ships in the package, and no script builds HTML from strings (user text reaches
the page only through textContent and attribute setters; see limner/web/js/dom.js)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

WEB = Path(__file__).resolve().parents[2] / "src" / "limner" / "web"
SCRIPTS = sorted((WEB / "js").glob("*.js"))

# Sinks that parse a string as HTML or code.
HTML_SINKS = re.compile(r"\.(innerHTML|outerHTML)\s*[+]?=|insertAdjacentHTML|document\.write|\beval\(|new Function\(|"
                        r"createContextualFragment|DOMParser|srcdoc|setTimeout\(\s*[\"'`]|javascript:")


def test_the_page_has_its_modules():
    assert (WEB / "index.html").is_file()
    assert SCRIPTS, "no scripts under limner/web/js"
    html = (WEB / "index.html").read_text()
    for ref in re.findall(r'(?:src|href)="([^"#:]+)"', html):
        assert (WEB / ref).is_file(), f"index.html refers to {ref}, which is not in limner/web/"
    for script in SCRIPTS:
        for ref in re.findall(r'^\s*import .*? from "(\./[^"]+)";', script.read_text(), re.M):
            assert (script.parent / ref).is_file(), f"{script.name} imports {ref}, which does not exist"


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_no_script_builds_html_from_strings(script):
    source = script.read_text()
    for number, line in enumerate(source.splitlines(), 1):
        stripped = line.strip()
        if stripped.startswith("//"):
            continue
        assert not HTML_SINKS.search(line), f"{script.name}:{number} uses an HTML/code sink: {stripped}"


def test_the_audit_catches_an_html_sink():
    assert HTML_SINKS.search('card.innerHTML = `<p>${prompt}</p>`;')
    assert HTML_SINKS.search("el.insertAdjacentHTML('beforeend', s)")
    assert not HTML_SINKS.search("el.textContent = prompt;")


def test_the_page_ships_in_the_package():
    pyproject = (WEB.parents[2] / "pyproject.toml").read_text()
    assert '"web/**/*"' in pyproject, "pyproject.toml's package-data must include web/**/*"
