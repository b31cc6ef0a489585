"""The README stays short and every deeper document is one click from it; no link in the docs is dead."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
LINK = re.compile(r"\]\(([^)\s]+)\)")


def anchors(markdown: str) -> set[str]:
    """GitHub's heading ids: lower case, punctuation dropped, spaces to hyphens."""
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-")
            for h in re.findall(r"^#+ (.+)$", markdown, flags=re.M)}


def local_links(path: Path) -> list[tuple[Path, str]]:
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
    found = []
    for target in LINK.findall(text):
        if re.match(r"[a-z]+:", target):
            continue  # http(s), mailto
        file, _, anchor = target.partition("#")
        found.append(((path.parent / file).resolve() if file else path, anchor))
    return found


def test_readme_is_short() -> None:
    assert README.stat().st_size <= 8500, f"README.md is {README.stat().st_size} bytes: move depth to docs/"


def test_every_document_is_one_click_from_the_readme() -> None:
    linked = {file for file, _ in local_links(README)}
    for doc in sorted((REPO / "docs").rglob("*.md")):
        assert doc.resolve() in linked, f"{doc.relative_to(REPO)} is not linked from README.md"


def test_no_dead_links_or_anchors() -> None:
    for page in [README, *sorted((REPO / "docs").rglob("*.md"))]:
        for file, anchor in local_links(page):
            assert file.exists(), f"{page.relative_to(REPO)}: dead link to {file}"
            if anchor and file.suffix == ".md":
                assert anchor in anchors(file.read_text()), f"{page.relative_to(REPO)}: no #{anchor} in {file.name}"


def test_every_setting_is_in_the_configuration_table() -> None:
    from service.config import Settings

    text = (REPO / "docs" / "configuration.md").read_text()
    missing = [f"IMDN_{name.upper()}" for name in Settings.model_fields if f"`IMDN_{name.upper()}`" not in text]
    assert not missing, f"docs/configuration.md's table lacks {missing}"


def test_performance_plots_redraw_from_the_saved_tables(tmp_path: Path) -> None:
    # docs/performance.md's plots come from the tables the bench commands printed: they must still parse.
    from PIL import Image

    from bench.plots import main as plots_main

    assert plots_main(["--out", str(tmp_path)]) == 0
    for name in ("throughput.png", "memory.png"):
        with Image.open(tmp_path / name) as plot:
            assert plot.format == "PNG" and plot.width > 500


def test_architecture_names_every_module_and_only_public_names() -> None:
    """docs/architecture.md matches the tree: each module of model/ and service/ has its line, and the
    page cites no private name (those change without notice)."""
    text = (REPO / "docs" / "architecture.md").read_text()
    for package in ("model", "service"):
        for module in sorted((REPO / package).glob("*.py")):
            if module.name != "__init__.py":
                assert f"`{module.name}`" in text or f"{package}/{module.name}" in text, \
                    f"docs/architecture.md does not name {package}/{module.name}"
    private = re.findall(r"`[\w./]*(?<![\w_])_[a-z]\w*", text)
    assert not private, f"docs/architecture.md cites private names: {private}"
