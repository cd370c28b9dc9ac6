"""The man pages (docs/man/): they render without a warning, and they name
every command and option of the programs' parsers and every setting of the
configuration, taken from the code, so that they cannot drift apart."""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from kexechibd import compression, config
from kexechibd.ctl import exits
from kexechibd.ctl.main import build_parser
from kexechibd.daemon import main as daemon_main

MAN = Path(__file__).resolve().parents[1] / "docs/man"
PAGES = ("kexechibd.8", "kexechibctl.8", "kexechibd.conf.5")


def page_text(name: str) -> str:
    """The page's source with roff's escapes for -, fonts and line joins
    removed: what a reader sees, word for word, whatever the line breaks."""
    text = (MAN / name).read_text()
    text = re.sub(r"\\f[BIRP]|\\c|\\%|\\&", "", text)
    return text.replace("\\-", "-")


@pytest.mark.skipif(shutil.which("groff") is None, reason="groff missing (groff-base)")
@pytest.mark.parametrize("name", PAGES)
def test_the_page_renders_without_a_warning(name: str) -> None:
    result = subprocess.run(
        ["groff", "-man", "-Tutf8", "-ww", "-z", str(MAN / name)], capture_output=True, text=True
    )
    assert result.returncode == 0
    assert result.stderr == ""


@pytest.mark.skipif(shutil.which("man") is None, reason="man missing (man-db)")
@pytest.mark.parametrize("name", PAGES)
def test_man_renders_the_page(name: str) -> None:
    result = subprocess.run(
        ["man", "-l", str(MAN / name)],
        capture_output=True,
        text=True,
        env={"MANPAGER": "cat", "MANWIDTH": "80", "LC_ALL": "C.UTF-8", "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stderr
    assert "NAME" in result.stdout and "SEE ALSO" in result.stdout


def commands(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], list[str]]]:
    """Each (sub)command as its words, with its option strings."""
    options = [s for a in parser._actions for s in a.option_strings]
    yield path, options
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from commands(sub, (*path, name))


def mentions(text: str, words: str) -> bool:
    return re.search(rf"(?<![\w-]){re.escape(words)}(?![\w-])", text) is not None


def daemon_parser(monkeypatch: pytest.MonkeyPatch) -> argparse.ArgumentParser:
    """The parser kexechibd's parse_args builds, caught as it parses."""
    caught: list[argparse.ArgumentParser] = []

    def catch(self: argparse.ArgumentParser, *args: object, **kwargs: object) -> object:
        caught.append(self)
        return argparse.Namespace()

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", catch)
    daemon_main.parse_args([])
    return caught[0]


def test_kexechibctl_8_names_every_command_and_option() -> None:
    text = page_text("kexechibctl.8")
    missing = []
    for path, options in commands(build_parser()):
        if path and not mentions(text, " ".join(path)):
            missing.append(f"command `{' '.join(path)}`")
        missing += [
            f"option {o} of `{' '.join(('kexechibctl', *path))}`"
            for o in options
            if not mentions(text, o)
        ]
    assert missing == [], "kexechibctl.8 does not name: " + "; ".join(missing)


def test_kexechibd_8_names_every_option(monkeypatch: pytest.MonkeyPatch) -> None:
    text = page_text("kexechibd.8")
    parser = daemon_parser(monkeypatch)
    missing = [o for a in parser._actions for o in a.option_strings if not mentions(text, o)]
    assert missing == [], "kexechibd.8 does not name the options: " + ", ".join(missing)


def test_kexechibd_conf_5_names_every_setting() -> None:
    text = page_text("kexechibd.conf.5")
    missing = [
        f"[{s.section}] {s.key}"
        for s in config.SETTINGS
        if f"[{s.section}]" not in text or not mentions(text, s.key)
    ]
    assert missing == [], "kexechibd.conf.5 does not name the settings: " + ", ".join(missing)


def test_kexechibd_conf_5_gives_every_default() -> None:
    text = page_text("kexechibd.conf.5")
    missing = [
        f"[{s.section}] {s.key} = {default}"
        for s in config.SETTINGS
        if (default := config.default_text(s.section, s.key)) and default not in text
    ]
    assert missing == [], "kexechibd.conf.5 does not give the defaults: " + ", ".join(missing)


@pytest.mark.parametrize("name", ["kexechibd.conf.5", "kexechibctl.8"])
def test_the_pages_give_every_codecs_levels_as_the_policy_has_them(name: str) -> None:
    text = " ".join(page_text(name).split())
    assert compression.summary() in text


def test_kexechibctl_8_gives_the_exit_status_table_of_the_code() -> None:
    text = page_text("kexechibctl.8")
    table = " ".join(text[text.index(".SH EXIT STATUS") : text.index(".SH ENVIRONMENT")].split())
    for code, meaning in exits.TABLE:
        assert f".B {code} {meaning}" in table
