"""Words follow numbers: what the README, the web page, the OpenAPI text and the command lines claim about
image quality is a figure of the model card, and no text promises what was not measured."""

from __future__ import annotations

import argparse
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MODEL_CARD = (REPO / "docs" / "model-card.md").read_text()
# A quality figure: "+0.93 dB", "0.7–0.8 dB", "26.23 dB".
FIGURE = re.compile(r"[+−-]?\d+(?:\.\d+)?(?:\s*[–-]\s*\d+(?:\.\d+)?)?\s*dB")
# Promises no measurement backs: what a network "undoes", "removes" or "restores" in a photo.
PROMISE = re.compile(r"\b(undo(es)?|undoing|remov(es?|ing) (blur|noise)|restor(es?|ing)|denois\w*|fix(es)? (blur|"
                     r"noise)|deblur\w*)\b", re.I)


def openapi_texts() -> Iterator[str]:
    from service.app import create_app
    from service.config import Settings

    def walk(node: object) -> Iterator[str]:
        if isinstance(node, dict):
            for key, value in node.items():
                if key in ("description", "summary") and isinstance(value, str):
                    yield value
                yield from walk(value)
        elif isinstance(node, list):
            for value in node:
                yield from walk(value)

    yield from walk(create_app(Settings()).openapi())


def help_texts(parser: argparse.ArgumentParser) -> Iterator[str]:
    yield parser.format_help()
    for action in parser._actions:  # noqa: SLF001 - argparse keeps subcommands only here
        if isinstance(action, argparse._SubParsersAction):  # noqa: SLF001
            for sub in action.choices.values():
                yield from help_texts(sub)


def cli_texts() -> Iterator[str]:
    import model.cli
    import sr_client.cli

    with pytest.raises(SystemExit):  # imdn-sr builds its parser inside main(): read its --help output
        model.cli.main(["upscale", "--help"])
    yield from help_texts(sr_client.cli.build_parser("python -m sr_client"))


def settings_texts() -> Iterator[str]:
    from service.config import Settings

    yield from (field.description or "" for field in Settings.model_fields.values())


SOURCES = {
    "README.md": lambda: [(REPO / "README.md").read_text()],
    "the web page": lambda: [(REPO / "service" / "static" / "index.html").read_text()],
    "the OpenAPI text": lambda: list(openapi_texts()),
    "the settings": lambda: list(settings_texts()),
}


def normalised(figure: str) -> str:
    return re.sub(r"\s+", " ", figure.replace("−", "-")).strip()


@pytest.mark.parametrize("source", sorted(SOURCES))
def test_quality_figures_are_the_model_cards(source: str) -> None:
    card = normalised(MODEL_CARD)
    for text in SOURCES[source]():
        for figure in FIGURE.findall(text):
            assert normalised(figure) in card, f"{source} claims {figure!r}, which docs/model-card.md does not show"


@pytest.mark.parametrize("source", sorted(SOURCES))
def test_no_promise_without_a_measurement(source: str) -> None:
    for text in SOURCES[source]():
        found = PROMISE.search(text)
        assert not found, f"{source} promises {found.group(0)!r}: say what was measured (docs/model-card.md)"


def test_command_line_help_makes_no_unmeasured_promise(capsys: pytest.CaptureFixture[str]) -> None:
    texts = list(cli_texts()) + [capsys.readouterr().out]
    for text in texts:
        found = PROMISE.search(text)
        assert not found, f"command-line help promises {found.group(0)!r}"
        for figure in FIGURE.findall(text):
            assert normalised(figure) in normalised(MODEL_CARD), f"command-line help claims {figure!r}"


def test_readme_quality_claims_link_the_model_card() -> None:
    """Every README paragraph with a figure on photos or models points to where it was measured."""
    for paragraph in (REPO / "README.md").read_text().split("\n\n"):
        if FIGURE.search(paragraph) and not paragraph.lstrip().startswith("!["):
            assert "model-card.md" in paragraph, f"README paragraph without its source: {paragraph[:120]!r}"
