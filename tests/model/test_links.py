"""Signed links and result ETags (model/links.py): what `imdn-sr sign` and sr_client make, the service checks."""

from __future__ import annotations

import time
from urllib.parse import parse_qsl, urlsplit

import pytest

from model.cli import main as cli_main
from model.links import result_etag, signature_matches, signed_link

KEY, OLD_KEY = "k" * 32, "an-older-key-still-valid"


def query_of(link: str) -> list[tuple[str, str]]:
    return parse_qsl(urlsplit(link).query, keep_blank_values=True)


def test_a_link_verifies_with_its_key_only() -> None:
    link = signed_link("https://sr.example.com/", "https://img.example.com/a b.jpg?v=1&x=2", KEY, scale=2.0,
                       format="webp")
    assert link.startswith("https://sr.example.com/v1/superresolve?url=https%3A%2F%2Fimg.example.com%2Fa%20b.jpg")
    params = query_of(link)
    assert ("scale", "2") in params  # 2.0 written as 2
    sig = dict(params)["sig"]
    assert signature_matches([KEY], params, sig)
    assert signature_matches([OLD_KEY, KEY], params, sig)  # rotation: any key the service holds
    assert not signature_matches([OLD_KEY], params, sig)
    assert signature_matches([KEY], list(reversed(params)), sig)  # the order of parameters does not matter


@pytest.mark.parametrize("change", [("scale", "3"), ("url", "https://img.example.com/other.jpg"),
                                    ("format", "png"), ("expires", "9999999999")])
def test_any_change_after_signing_breaks_the_signature(change: tuple[str, str]) -> None:
    params = query_of(signed_link("http://sr", "https://img.example.com/a.jpg", KEY, scale=2, format="webp"))
    sig = dict(params)["sig"]
    changed = [(k, v) for k, v in params if k != change[0]] + [change]
    assert not signature_matches([KEY], changed, sig)


def test_etag_follows_each_input() -> None:
    base = result_etag("a" * 64, {"scale": 2}, {"x2": "f" * 64})
    assert base.startswith('"') and base.endswith('"') and not base.startswith('W/')
    assert result_etag("a" * 64, {"scale": 2}, {"x2": "f" * 64}) == base
    assert result_etag("b" * 64, {"scale": 2}, {"x2": "f" * 64}) != base
    assert result_etag("a" * 64, {"scale": 3}, {"x2": "f" * 64}) != base
    assert result_etag("a" * 64, {"scale": 2}, {"x2": "e" * 64}) != base


def test_sign_command(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMDN_URL_KEYS", f"{KEY},{OLD_KEY}")
    assert cli_main(["sign", "https://img.example.com/cat.jpg", "--scale", "2", "--base", "http://sr:8000",
                     "--expires-in", "60"]) == 0
    link = capsys.readouterr().out.strip()
    params = dict(query_of(link))
    assert link.startswith("http://sr:8000/v1/superresolve?")
    assert params["url"] == "https://img.example.com/cat.jpg" and params["scale"] == "2"
    assert 50 < int(params["expires"]) - time.time() <= 60
    assert signature_matches([KEY], query_of(link), params["sig"])  # the first key signs
    monkeypatch.setenv("IMDN_URL_KEYS", "short")
    with pytest.raises(SystemExit):
        cli_main(["sign", "https://img.example.com/cat.jpg"])
