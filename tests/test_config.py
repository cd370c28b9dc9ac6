"""/etc/kexechibd.conf: defaults, every setting documented, and errors that
name the file, the section, the key and what is allowed."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from kexechibd import compression as policy
from kexechibd import config
from kexechibd.config import Config, ConfigError, MemoryWindow, parse, parse_size
from kexechibd.daemon.main import engine_settings, parse_args
from kexechibd.operation import Mode

EXAMPLE = Path(__file__).resolve().parents[1] / "systemd" / "kexechibd.conf.example"
SETTING_LINE = re.compile(r"^#(\w+) = ?(.*)$")


def example_settings() -> dict[tuple[str, str], str]:
    section = ""
    found = {}
    for line in EXAMPLE.read_text().splitlines():
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
        elif match := SETTING_LINE.match(line):
            found[(section, match.group(1))] = match.group(2)
    return found


def test_without_a_file_the_defaults_apply(tmp_path, monkeypatch):
    monkeypatch.setattr(config, "DEFAULT_PATH", tmp_path / "absent.conf")
    assert config.load() == Config()


def test_a_file_named_explicitly_must_exist(tmp_path):
    with pytest.raises(ConfigError, match=r"absent\.conf: no such configuration file"):
        config.load(tmp_path / "absent.conf")


def test_the_defaults_are_the_documented_ones():
    defaults = Config()
    assert defaults.daemon.backend == "linux"
    assert defaults.kexec.enable_real_kexec is False
    assert defaults.image.location == Path("/var/lib/kexechib/image")
    assert (defaults.image.compression, defaults.image.level) == ("zstd", 3)
    assert defaults.saver.window == MemoryWindow(128 << 20, 768 << 20)
    assert defaults.saver.mode is Mode.POWEROFF


def test_the_example_documents_every_setting_with_its_default():
    documented = example_settings()
    assert set(documented) == {(s.section, s.key) for s in config.SETTINGS}
    for (section, key), value in documented.items():
        assert value == config.default_text(section, key), f"[{section}] {key}"


def test_the_example_parses_to_the_defaults_commented_and_uncommented():
    text = EXAMPLE.read_text()
    assert parse(text, EXAMPLE) == Config(source=EXAMPLE)
    uncommented = "\n".join(
        line[1:] if SETTING_LINE.match(line) else line for line in text.splitlines()
    )
    assert parse(uncommented, EXAMPLE) == Config(source=EXAMPLE)


def test_every_setting_is_read():
    conf = parse(
        "[daemon]\nbackend = model\nmodel_dir = /srv/model\nlog_level = debug\n"
        "[kexec]\nenable_real_kexec = yes\n"
        "[image]\nlocation = /dev/disk/by-partlabel/hib\ncompression = lz4\nlevel = 9\n"
        "chunk_size = 1M\n"
        "[saver]\nkernel = /boot/vmlinuz-b\ninitrd = /boot/initrd-b\ncmdline = console=ttyS0\n"
        "window = 256M@1G\nlow_memory = no\nmode = checkpoint\n",
        "/etc/kexechibd.conf",
    )
    assert conf.daemon.backend == "model" and conf.daemon.model_dir == Path("/srv/model")
    assert conf.daemon.log_level == "debug"
    assert conf.kexec.enable_real_kexec is True
    assert conf.image.location == Path("/dev/disk/by-partlabel/hib")
    assert (conf.image.compression, conf.image.level, conf.image.chunk_size) == ("lz4", 9, 1 << 20)
    assert conf.saver.kernel == Path("/boot/vmlinuz-b")
    assert conf.saver.initrd == Path("/boot/initrd-b")
    assert conf.saver.cmdline == "console=ttyS0"
    assert conf.saver.window == MemoryWindow(256 << 20, 1 << 30)
    assert conf.saver.low_memory is False
    assert conf.saver.mode is Mode.CHECKPOINT
    assert conf.source == Path("/etc/kexechibd.conf")


@pytest.mark.parametrize(
    "text, value",
    [
        ("4096", 4096),
        ("64K", 65536),
        ("128M", 128 << 20),
        ("1G", 1 << 30),
        ("2T", 2 << 40),
        ("0x1000", 4096),
        (" 16k ", 16 << 10),
    ],
)
def test_sizes_are_written_as_on_the_kernel_command_line(text, value):
    assert parse_size(text) == value


@pytest.mark.parametrize("text", ["", "M", "1.5G", "-1M", "12Q", "8MiB"])
def test_a_bad_size_says_what_a_size_is(text):
    with pytest.raises(ValueError, match="examples: 4096, 0x1000, 64K, 128M, 2G"):
        parse_size(text)


@pytest.mark.parametrize(
    "spelling, value",
    [
        ("yes", True),
        ("True", True),
        ("on", True),
        ("1", True),
        ("no", False),
        ("OFF", False),
        ("false", False),
        ("0", False),
    ],
)
def test_booleans_have_the_usual_spellings(spelling, value):
    assert parse(f"[kexec]\nenable_real_kexec = {spelling}\n").kexec.enable_real_kexec is value


@pytest.mark.parametrize(
    "codec, level",
    [("zstd", 3), ("lz4", 0), ("none", 0)],
)
def test_a_codec_without_a_level_gets_its_own_default_level(codec, level):
    image = parse(f"[image]\ncompression = {codec}\n").image
    assert (image.compression, image.level) == (codec, level)


@pytest.mark.parametrize(
    "codec, level",
    [("zstd", -7), ("zstd", 22), ("lz4", 0), ("lz4", 16), ("none", 0)],
)
def test_each_codec_accepts_the_ends_of_its_range(codec, level):
    image = parse(f"[image]\ncompression = {codec}\nlevel = {level}\n").image
    assert (image.compression, image.level) == (codec, level)


def test_the_level_setting_documents_every_codecs_range():
    assert config.setting("image", "level").allowed == (
        "zstd -7..22 (default 3); lz4 0..16 (default 0); none 0 only"
    )


@pytest.mark.parametrize(
    "text, words",
    [
        ("[imgae]\nlevel = 3\n", "unknown section [imgae]; known sections: daemon, image, kexec"),
        (
            "[kexec]\nenable_kexec = yes\n",
            "[kexec]: unknown key 'enable_kexec'; known keys: enable_real_kexec",
        ),
        ("[kexec]\nenable_real_kexec = maybe\n", "[kexec] enable_real_kexec = 'maybe'"),
        ("[daemon]\nbackend = qemu\n", "allowed: linux | model"),
        ("[image]\ncompression = gzip\n", "allowed: zstd | lz4 | none"),
        ("[image]\nlevel = three\n", "[image] level = 'three': 'three' is not a whole number"),
        ("[image]\nlevel = 23\n", "[image] level = 23: zstd levels go from -7 to 22, not 23"),
        ("[image]\nlevel = -8\n", "zstd levels go from -7 to 22, not -8"),
        ("[image]\ncompression = lz4\nlevel = -1\n", "lz4 levels go from 0 to 16, not -1"),
        ("[image]\ncompression = lz4\nlevel = 20\n", "lz4 levels go from 0 to 16, not 20"),
        ("[image]\ncompression = none\nlevel = 3\n", "none has no levels: its level is 0 only"),
        ("[image]\ncompression = none\nlevel = -1\n", "none has no levels: its level is 0 only"),
        ("[image]\ncompression = gzip\nlevel = 3\n", "allowed: zstd | lz4 | none"),
        ("[image]\nchunk_size = 1001K\n", "must be a multiple of 4096 between 64K and 256M"),
        ("[image]\nchunk_size = 1G\n", "between 64K and 256M"),
        (
            "[image]\nlocation = var/lib/image\n",
            "[image] location = 'var/lib/image': 'var/lib/image' is not an absolute path",
        ),
        ("[saver]\nwindow = 128M\n", "is not SIZE@START"),
        ("[saver]\nwindow = 128M@1000\n", "multiples of the page size"),
        ("[saver]\nwindow = 0@1G\n", "must not be zero"),
        ("[saver]\nmode = suspend\n", "allowed: poweroff | checkpoint"),
        ("level = 3\n", "not a valid INI file"),
        ("[image]\nlevel = 3\nlevel = 4\n", "not a valid INI file"),
    ],
)
def test_a_bad_value_is_an_error_naming_file_section_key_and_what_is_allowed(text, words):
    with pytest.raises(ConfigError) as error:
        parse(text, "/etc/kexechibd.conf")
    assert str(error.value).startswith("/etc/kexechibd.conf: ")
    assert words in str(error.value)
    assert "\n" not in str(error.value)


def test_the_engine_gets_its_settings_from_the_configuration():
    conf = parse(
        "[image]\nlocation = /dev/vdb\ncompression = lz4\nlevel = 1\nchunk_size = 8M\n"
        "[saver]\nkernel = /b/vmlinuz\ninitrd = /b/initrd\ncmdline = console=ttyS0\n"
        "window = 256M@1G\nlow_memory = no\n"
    )
    settings = engine_settings(conf)
    assert settings.image_location == Path("/dev/vdb")
    # compression and level reach B as Hibernate's options, not as settings.
    assert settings.chunk_size == 8 << 20
    assert (settings.saver_kernel, settings.saver_initrd) == (Path("/b/vmlinuz"), Path("/b/initrd"))
    assert settings.saver_cmdline == "console=ttyS0"
    assert (settings.window_start, settings.window_size) == (1 << 30, 256 << 20)
    assert settings.low_memory is False


def test_config_errors_are_named_for_d_bus():
    assert ConfigError("x").dbus_name == "org.kexechib1.Error.ConfigError"


def test_a_window_reads_back_as_written():
    assert str(MemoryWindow.parse("128M@768M")) == "128M@768M"
    assert MemoryWindow.parse("128M@768M").end == 896 << 20


def test_the_daemons_help_documents_every_setting(capsys):
    with pytest.raises(SystemExit):
        parse_args(["--help"])
    text = capsys.readouterr().out
    for setting in config.SETTINGS:
        assert f"{setting.key} = {setting.allowed}" in text
    for heading in (
        "roles:",
        "kernel command line:",
        "environment:",
        "signals:",
        "exit status:",
        "files:",
        "systemd units:",
        "see also:",
    ):
        assert heading in text


def test_the_example_gives_every_codecs_levels_as_the_policy_has_them():
    words = " ".join(EXAMPLE.read_text().replace("#", " ").split())
    assert policy.summary() in words
