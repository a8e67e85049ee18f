"""The docs agree with the code: settings and their defaults, check ids, the site's nav, links, benchmarks.

No mkdocs here (scripts/build-docs builds the site with it, strictly); these tests read the Markdown and
mkdocs.yml as text, so the test suite catches a setting added without documentation: the settings tables
of docs/configuration.md must list exactly the schema's keys (replicarouter/settings_schema.py), each
with its default, unit and check id.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from replicarouter.checks import CHECK_IDS
from replicarouter.settings_schema import POOL_OPTIONS, REPLICAROUTER_OPTIONS, Kind, Option
from tests.helpers import load_script

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
CONFIGURATION = DOCS / "configuration.md"


def sections(path: Path) -> dict[str, str]:
    """Return the Markdown of each section, by heading text (without #s and backticks)."""
    found: dict[str, str] = {}
    current, lines = "", []
    for line in path.read_text(encoding="utf-8").splitlines():
        heading = re.match(r"#{1,6}\s+(.*)", line)
        if heading:
            found[current] = "\n".join(lines)
            current, lines = heading.group(1).replace("`", "").strip(), []
        else:
            lines.append(line)
    found[current] = "\n".join(lines)
    return found


def table_rows(markdown: str) -> list[list[str]]:
    """Return the cells of every table row (header and separator rows included)."""
    return [
        [cell.strip() for cell in line.strip().strip("|").split("|")]
        for line in markdown.splitlines()
        if line.lstrip().startswith("|")
    ]


def documented_options(section: str) -> dict[str, dict[str, str]]:
    """Map each key of a settings table (its backticked first cell) to its cells, by column header."""
    rows = table_rows(section)
    header, body = rows[0], rows[2:]
    documented: dict[str, dict[str, str]] = {}
    for cells in body:
        (key,) = re.findall(r"`([A-Z_]+)`", cells[0])
        assert key not in documented, f"{key} is documented twice"
        documented[key] = dict(zip(header, cells, strict=True))
    return documented


def literal(value: Any) -> str:
    """Return how the docs write a default: Python literals, strings in double quotes."""
    return f'"{value}"' if isinstance(value, str) else repr(value)


def assert_documented(options: Mapping[str, Option], section: str, where: str) -> None:
    """Check a settings table against the schema: same keys, and each key's default, unit and check id."""
    documented = documented_options(section)
    missing = [key for key in options if key not in documented]
    assert not missing, f"{where} does not document {missing}"
    unknown = [key for key in documented if key not in options]
    assert not unknown, f"{where} documents {unknown}, which the schema (settings_schema.py) does not have"
    assert list(documented) == list(options), f"{where}: not in the schema's order"
    wrong = {}
    for key, option in options.items():
        row = documented[key]
        # CLUSTERS defaults to None, which means "derive the topology": the docs describe the result instead
        default_ok = (
            "one cluster" in row["default"]
            if option.kind is Kind.CLUSTERS
            else row["default"].startswith(f"`{literal(option.default)}`")
        )
        if not default_ok:
            wrong[key, "default"] = (row["default"], literal(option.default))
        if row["unit"] != option.unit.value:
            wrong[key, "unit"] = (row["unit"], option.unit.value)
        if row["check"] != f"`{option.check_id}`":
            wrong[key, "check"] = (row["check"], option.check_id)
    assert not wrong, f"{where}: the docs differ from the schema (docs, schema): {wrong}"


def test_every_replicarouter_setting_is_documented_with_its_default_unit_and_check_id() -> None:
    section = sections(CONFIGURATION)["REPLICAROUTER"]
    assert_documented(REPLICAROUTER_OPTIONS, section, "configuration.md REPLICAROUTER")


def test_every_pool_key_is_documented_with_its_default_unit_and_check_id() -> None:
    assert_documented(POOL_OPTIONS, sections(CONFIGURATION)["POOL keys"], "configuration.md POOL keys")


def test_a_wrong_default_or_an_undocumented_key_is_caught() -> None:
    table = "| key | default | unit | check | meaning |\n|---|---|---|---|---|\n"
    row = "| `SIZE` | `10` | connections | `replicarouter.E051` | x |\n"
    only_size = {"SIZE": POOL_OPTIONS["SIZE"]}
    assert_documented(only_size, table + row, "t")
    with pytest.raises(AssertionError, match="default"):
        assert_documented(only_size, table + row.replace("`10`", "`5`"), "t")
    with pytest.raises(AssertionError, match="does not document"):
        assert_documented(POOL_OPTIONS, table + row, "t")
    with pytest.raises(AssertionError, match="does not have"):
        assert_documented(only_size, table + row + row.replace("SIZE", "SIZ"), "t")


def documented_check_ids(text: str) -> set[str]:
    """Return every check id the text names, ranges (`replicarouter.E010`–`E017`) expanded."""
    ids = set(re.findall(r"replicarouter\.[EW]\d{3}", text))
    for level, first, other_level, last in re.findall(
        r"`replicarouter\.([EW])(\d{3})`\s*[–-]\s*`(?:replicarouter\.)?([EW])(\d{3})`", text
    ):
        assert level == other_level, f"a range of check ids mixes levels: {level}{first}–{other_level}{last}"
        ids |= {f"replicarouter.{level}{n:03d}" for n in range(int(first), int(last) + 1)}
    return ids


def test_every_system_check_id_is_documented() -> None:
    table = sections(CONFIGURATION)["System checks"]
    missing = sorted(set(CHECK_IDS) - documented_check_ids(table))
    assert not missing, f"docs/configuration.md 'System checks' does not list {missing}"


@pytest.mark.parametrize("page", sorted(p.name for p in DOCS.glob("*.md")))
def test_docs_name_no_check_id_that_does_not_exist(page: str) -> None:
    stale = sorted(documented_check_ids((DOCS / page).read_text(encoding="utf-8")) - set(CHECK_IDS))
    assert not stale, f"{page} names check ids the checks do not have: {stale}"


def test_check_id_ranges_are_expanded() -> None:
    assert documented_check_ids("| `replicarouter.E010`–`E012` | x |") == {
        "replicarouter.E010",
        "replicarouter.E011",
        "replicarouter.E012",
    }


def nav_pages() -> list[str]:
    """Return the Markdown files the nav of mkdocs.yml names, in order."""
    text = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    nav = text[text.index("\nnav:") :]
    return re.findall(r"^\s*-\s+(?:[^:\n]+:\s+)?([\w./-]+\.md)\s*$", nav, flags=re.MULTILINE)


def test_mkdocs_is_strict_and_its_nav_pages_exist() -> None:
    config = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    assert re.search(r"^strict:\s*true\s*$", config, flags=re.MULTILINE)
    assert re.search(r"^docs_dir:\s*docs\s*$", config, flags=re.MULTILINE)
    pages = nav_pages()
    assert "index.md" in pages and "quickstart.md" in pages and "comparison.md" in pages
    missing = [page for page in pages if not (DOCS / page).is_file()]
    assert not missing, f"mkdocs.yml's nav names pages that do not exist: {missing}"
    assert len(pages) == len(set(pages)), "a page appears twice in the nav"


def test_every_docs_page_is_in_the_nav() -> None:
    pages = set(nav_pages())
    orphans = sorted(
        str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md") if str(p.relative_to(DOCS)) not in pages
    )
    assert not orphans, f"pages missing from mkdocs.yml's nav: {orphans}"


LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def without_code(markdown: str) -> str:
    """Drop fenced code blocks and inline code spans (their brackets are not links)."""
    markdown = re.sub(r"^```.*?^```", "", markdown, flags=re.MULTILINE | re.DOTALL)
    return re.sub(r"`[^`\n]*`", "", markdown)


@pytest.mark.parametrize("page", sorted(p.name for p in DOCS.glob("*.md")))
def test_relative_links_stay_inside_docs_and_exist(page: str) -> None:
    source = DOCS / page
    broken = []
    for target in LINK.findall(without_code(source.read_text(encoding="utf-8"))):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue
        path = (source.parent / target.split("#", 1)[0]).resolve()
        if DOCS.resolve() not in path.parents or not path.exists():
            broken.append(target)
    assert not broken, f"{page}: links that leave docs/ or point nowhere (mkdocs --strict fails): {broken}"


RENDER = ROOT / "benchmarks" / "render.py"
# the sdist ships tests/ and docs/ but not benchmarks/
needs_benchmarks = pytest.mark.skipif(not RENDER.is_file(), reason="benchmarks/ is not in this source tree")


def load_render() -> ModuleType:
    """Import benchmarks/render.py by path (benchmarks/ is not a package users install)."""
    return load_script(RENDER, "replicarouter_docs_render")


@needs_benchmarks
def test_rendered_benchmark_pages_match_the_results() -> None:
    render = load_render()
    problems = render.check(ROOT)
    assert not problems, f"{problems}: run python benchmarks/render.py and commit the result"


@needs_benchmarks
def test_rendering_is_deterministic_and_charts_are_svg() -> None:
    render = load_render()
    first, second = render.render(ROOT), render.render(ROOT)
    assert first == second
    charts = [rel for rel in first if rel.endswith(".svg")]
    assert charts, "no chart rendered"
    for rel in charts:
        assert first[rel].startswith('<svg xmlns="http://www.w3.org/2000/svg"'), rel
        assert f"img/{Path(rel).name}" in first[render.PAGE], f"{rel} is not shown on the results page"


@needs_benchmarks
def test_check_reports_a_hand_edited_page(tmp_path: Path) -> None:
    render = load_render()
    (tmp_path / "benchmarks").mkdir()
    (tmp_path / "benchmarks" / "results").symlink_to(ROOT / "benchmarks" / "results")
    assert sorted(render.write(tmp_path)) == sorted(render.render(tmp_path))
    assert render.check(tmp_path) == []
    page = tmp_path / render.PAGE
    page.write_text(page.read_text(encoding="utf-8") + "\nA number fixed by hand.\n", encoding="utf-8")
    (tmp_path / render.IMG / "bench-old.svg").write_text("<svg/>", encoding="utf-8")
    problems = render.check(tmp_path)
    assert f"{render.PAGE}: differs from benchmarks/results/*.json" in problems
    assert f"{render.IMG}/bench-old.svg: no longer generated" in problems
