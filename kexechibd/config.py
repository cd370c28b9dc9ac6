"""The daemon's configuration: ``/etc/kexechibd.conf`` (INI), one dataclass.

Every setting, its default and what it allows is listed in ``SETTINGS`` below;
``systemd/kexechibd.conf.example`` documents each one for administrators (a
test keeps the two in step).  Unknown sections and keys are errors rather
than warnings: a mistyped ``enable_real_kexec`` must not silently fall back
to a default.  Every error is a ``ConfigError`` that names the file, the
section, the key and what is allowed.
"""

from __future__ import annotations

import configparser
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from kexechibd import cmdline
from kexechibd import compression as policy
from kexechibd.errors import ConfigError
from kexechibd.kernel.abi import PAGE_SIZE
from kexechibd.operation import Mode

DEFAULT_PATH = Path("/etc/kexechibd.conf")

_T = TypeVar("_T")

BACKENDS = ("linux", "model")
LOG_LEVELS = ("debug", "info", "warning", "error")

CHUNK_MIN = 64 * 1024
CHUNK_MAX = 256 * 1024 * 1024


def parse_size(text: str) -> int:
    """A size as the kernel command line writes it (``kexechibd.cmdline``):
    ``4096``, ``0x1000``, ``64K``, ``128M``, ``1G``, ``2T``."""
    return cmdline.parse_size(text)


def format_size(value: int) -> str:
    return cmdline.format_size(value)


@dataclass(frozen=True)
class MemoryWindow:
    """B's physical memory window ``[start, start + size)`` (DESIGN §1.1)."""

    size: int
    start: int

    @property
    def end(self) -> int:
        return self.start + self.size

    @classmethod
    def parse(cls, text: str) -> MemoryWindow:
        """``SIZE@START``, e.g. ``128M@768M`` (the kernel's ``memmap=`` spelling)."""
        size_text, at, start_text = text.partition("@")
        if not at:
            raise ValueError(f"{text!r} is not SIZE@START (for example 128M@768M)")
        size, start = parse_size(size_text), parse_size(start_text)
        if size == 0:
            raise ValueError("the window size must not be zero")
        if size % PAGE_SIZE or start % PAGE_SIZE:
            raise ValueError(f"size and start must be multiples of the page size ({PAGE_SIZE})")
        return cls(size, start)

    def __str__(self) -> str:
        return f"{format_size(self.size)}@{format_size(self.start)}"


@dataclass(frozen=True)
class DaemonSettings:
    backend: str = "linux"
    model_dir: Path = Path("/var/lib/kexechib/model")
    log_level: str = "info"


@dataclass(frozen=True)
class KexecSettings:
    # The structural guard of DESIGN §9 lives in the Linux backend; this is
    # only the administrator's switch (the other one is
    # ``kexechib.enable_kexec=1`` on the kernel command line).
    enable_real_kexec: bool = False


@dataclass(frozen=True)
class ImageSettings:
    location: Path = Path("/var/lib/kexechib/image")
    compression: str = policy.DEFAULT
    level: int = policy.CODECS[policy.DEFAULT].default
    chunk_size: int = 4 << 20
    # An image location that is not on dm-crypt, on a system whose storage
    # is (kexechibd.encryption): refused unless this is set.
    allow_plaintext: bool = False


# In [saver] kernel and initrd, the running kernel's release (uname -r):
# by default B is the kernel A runs, with the initramfs `kexechibctl saver
# build` wrote for it (DESIGN §6).
RELEASE = "{release}"


def for_release(path: Path, release: str) -> Path:
    """``path`` with ``{release}`` replaced by ``release``."""
    return Path(str(path).replace(RELEASE, release))


@dataclass(frozen=True)
class SaverSettings:
    kernel: Path = Path(f"/boot/vmlinuz-{RELEASE}")
    initrd: Path = Path(f"/var/lib/kexechib/saver/initrd.img-{RELEASE}")
    cmdline: str = ""
    window: MemoryWindow = MemoryWindow(128 << 20, 768 << 20)
    low_memory: bool = True
    mode: Mode = Mode.POWEROFF

    def files(self, release: str) -> tuple[Path, Path]:
        """Kernel B and its initramfs for the kernel ``release``."""
        return for_release(self.kernel, release), for_release(self.initrd, release)


@dataclass(frozen=True)
class Config:
    daemon: DaemonSettings = field(default_factory=DaemonSettings)
    kexec: KexecSettings = field(default_factory=KexecSettings)
    image: ImageSettings = field(default_factory=ImageSettings)
    saver: SaverSettings = field(default_factory=SaverSettings)
    # Where the settings came from (None: built-in defaults only).
    source: Path | None = None


# --------------------------------------------------------------------------
# Parsers: text -> value, or ValueError saying what is allowed
# --------------------------------------------------------------------------


def _choice(*allowed: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        value = text.strip().lower()
        if value not in allowed:
            raise ValueError(f"{text!r} is not one of {', '.join(allowed)}")
        return value

    return parse


_BOOLEANS = {
    "yes": True,
    "true": True,
    "on": True,
    "1": True,
    "no": False,
    "false": False,
    "off": False,
    "0": False,
}


def _boolean(text: str) -> bool:
    try:
        return _BOOLEANS[text.strip().lower()]
    except KeyError:
        raise ValueError(f"{text!r} is not a boolean; use yes or no") from None


def _absolute_path(text: str) -> Path:
    path = Path(text.strip())
    if not text.strip() or not path.is_absolute():
        raise ValueError(f"{text!r} is not an absolute path")
    return path


def _integer(text: str) -> int:
    try:
        return int(text.strip(), 10)
    except ValueError:
        raise ValueError(f"{text!r} is not a whole number") from None


def _chunk_size(text: str) -> int:
    value = parse_size(text)
    if not CHUNK_MIN <= value <= CHUNK_MAX or value % PAGE_SIZE:
        raise ValueError(
            f"{text!r} must be a multiple of {PAGE_SIZE} between "
            f"{format_size(CHUNK_MIN)} and {format_size(CHUNK_MAX)}"
        )
    return value


def _mode(text: str) -> Mode:
    return Mode(_choice(*(m.value for m in Mode))(text))


def _text(text: str) -> str:
    return text.strip()


@dataclass(frozen=True)
class Setting:
    section: str
    key: str
    parse: Callable[[str], object]
    allowed: str
    doc: str


SETTINGS: tuple[Setting, ...] = (
    Setting(
        "daemon",
        "backend",
        _choice(*BACKENDS),
        "linux | model",
        "Kernel backend: the running Linux kernel, or the machine model (DESIGN §7).",
    ),
    Setting(
        "daemon",
        "model_dir",
        _absolute_path,
        "absolute path",
        "Directory of the machine model's state (backend = model only).",
    ),
    Setting(
        "daemon",
        "log_level",
        _choice(*LOG_LEVELS),
        "debug | info | warning | error",
        "Least severe messages that are logged.",
    ),
    Setting(
        "kexec",
        "enable_real_kexec",
        _boolean,
        "yes | no",
        "Allow real kexec_load/reboot/power-off calls (DESIGN §9). "
        "kexechib.enable_kexec=1 on the kernel command line also allows them.",
    ),
    Setting(
        "image",
        "location",
        _absolute_path,
        "absolute path",
        "The image: a raw partition, or a file prepared with `kexechibctl image create PATH "
        "--size SIZE` on ext4 or xfs, which B writes by block address. "
        "kexechibd.service may write files only below /var/lib/kexechib (ProtectSystem=strict): "
        "elsewhere, add the file's directory with ReadWritePaths= in a drop-in.",
    ),
    Setting(
        "image",
        "compression",
        _choice(*policy.NAMES),
        " | ".join(policy.NAMES),
        "How image chunks are compressed.",
    ),
    Setting(
        "image",
        "level",
        _integer,
        policy.summary(),
        "Compression level; without one, the codec's default.",
    ),
    Setting(
        "image",
        "chunk_size",
        _chunk_size,
        f"size, multiple of {PAGE_SIZE}, {format_size(CHUNK_MIN)}..{format_size(CHUNK_MAX)}",
        "Bytes of memory per independently compressed chunk.",
    ),
    Setting(
        "image",
        "allow_plaintext",
        _boolean,
        "yes | no",
        "Allow an image location that is not encrypted when any of the system's "
        "filesystems or swap is on dm-crypt. The image holds all of memory, the disk "
        "encryption keys included; without this, hibernation is refused there.",
    ),
    Setting(
        "saver",
        "kernel",
        _absolute_path,
        "absolute path",
        f"Kernel B's bzImage; {RELEASE} stands for the running kernel's release (uname -r).",
    ),
    Setting(
        "saver",
        "initrd",
        _absolute_path,
        "absolute path",
        "Kernel B's initramfs, as `kexechibctl saver build` writes it for the release "
        f"{RELEASE} (a custom one must run `kexechibd --oneshot`; it is not checked).",
    ),
    Setting(
        "saver",
        "cmdline",
        _text,
        "text",
        "Extra arguments for B's command line (the daemon adds what B needs).",
    ),
    Setting(
        "saver",
        "window",
        MemoryWindow.parse,
        "SIZE@START, page aligned, e.g. 128M@768M",
        "B's physical memory window (the engine also wants it 2 MiB aligned, "
        "at least 32M, inside one range of RAM).",
    ),
    Setting(
        "saver",
        "low_memory",
        _boolean,
        "yes | no",
        "Also give B the RAM below 640K, which an x86 kernel needs for its real-mode trampoline.",
    ),
    Setting(
        "saver",
        "mode",
        _mode,
        "poweroff | checkpoint",
        "After saving: power off, or jump back to A (a checkpoint).",
    ),
)


def setting(section: str, key: str) -> Setting:
    for s in SETTINGS:
        if (s.section, s.key) == (section, key):
            return s
    raise KeyError(f"[{section}] {key}")


def value_text(section: str, key: str, value: object) -> str:
    """How ``value`` is spelled in the file (the inverse of the parser)."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if key == "chunk_size" and isinstance(value, int):
        return format_size(value)
    if isinstance(value, Mode):
        return value.value
    return str(value)


def default_text(section: str, key: str) -> str:
    """The built-in default of ``[section] key``, spelled as in the file."""
    return value_text(section, key, getattr(getattr(Config(), section), key))


def _where(source: Path | str, section: str, key: str | None = None) -> str:
    # ``source`` is the file name users see in every message.
    return f"{source}: [{section}]" + (f" {key}" if key is not None else "")


def from_mapping(
    sections: Mapping[str, Mapping[str, str]], source: Path | str = "<config>"
) -> Config:
    """Build a ``Config`` from already split INI sections (text values)."""
    known_sections = {s.section for s in SETTINGS}
    values: dict[tuple[str, str], object] = {}
    for section, items in sections.items():
        if section not in known_sections:
            raise ConfigError(
                f"{source}: unknown section [{section}]; "
                f"known sections: {', '.join(sorted(known_sections))}"
            )
        keys = [s.key for s in SETTINGS if s.section == section]
        for key, text in items.items():
            if key not in keys:
                raise ConfigError(
                    f"{_where(source, section)}: unknown key {key!r}; known keys: {', '.join(keys)}"
                )
            spec = setting(section, key)
            try:
                values[(section, key)] = spec.parse(text)
            except ValueError as e:
                raise ConfigError(
                    f"{_where(source, section, key)} = {text!r}: {e}; allowed: {spec.allowed}"
                ) from None

    def get(section: str, key: str, default: object) -> object:
        return values.get((section, key), default)

    d, k, i, s = DaemonSettings(), KexecSettings(), ImageSettings(), SaverSettings()
    compression = _cast(str, get("image", "compression", i.compression))
    given_level = get("image", "level", None)
    try:
        level = policy.resolve(compression, given_level if isinstance(given_level, int) else None)
    except policy.PolicyError as e:
        raise ConfigError(f"{_where(source, 'image', 'level')} = {given_level}: {e}") from None
    image = ImageSettings(
        location=_cast(Path, get("image", "location", i.location)),
        compression=compression,
        level=level,
        chunk_size=_cast(int, get("image", "chunk_size", i.chunk_size)),
        allow_plaintext=_cast(bool, get("image", "allow_plaintext", i.allow_plaintext)),
    )
    return Config(
        daemon=DaemonSettings(
            backend=_cast(str, get("daemon", "backend", d.backend)),
            model_dir=_cast(Path, get("daemon", "model_dir", d.model_dir)),
            log_level=_cast(str, get("daemon", "log_level", d.log_level)),
        ),
        kexec=KexecSettings(
            enable_real_kexec=_cast(bool, get("kexec", "enable_real_kexec", k.enable_real_kexec)),
        ),
        image=image,
        saver=SaverSettings(
            kernel=_cast(Path, get("saver", "kernel", s.kernel)),
            initrd=_cast(Path, get("saver", "initrd", s.initrd)),
            cmdline=_cast(str, get("saver", "cmdline", s.cmdline)),
            window=_cast(MemoryWindow, get("saver", "window", s.window)),
            low_memory=_cast(bool, get("saver", "low_memory", s.low_memory)),
            mode=_cast(Mode, get("saver", "mode", s.mode)),
        ),
        source=None if source == "<config>" else Path(source),
    )


def _cast(kind: type[_T], value: object) -> _T:
    assert isinstance(value, kind), (kind, value)
    return value


def parse(text: str, source: Path | str = "<config>") -> Config:
    """Parse INI text (``#`` and ``;`` start comments)."""
    parser = configparser.ConfigParser(
        interpolation=None,
        comment_prefixes=("#", ";"),
        inline_comment_prefixes=None,
        empty_lines_in_values=False,
        default_section="\0none",
    )
    try:
        parser.read_string(text, source=str(source))
    except configparser.Error as e:
        detail = " ".join(e.message.split())
        raise ConfigError(f"{source}: not a valid INI file: {detail}") from None
    sections = {name: dict(parser.items(name, raw=True)) for name in parser.sections()}
    return from_mapping(sections, source)


def load(path: Path | None = None) -> Config:
    """Read ``path``; without one, ``/etc/kexechibd.conf`` if it exists, else
    the defaults.  A path given explicitly must exist."""
    explicit = path is not None
    path = DEFAULT_PATH if path is None else path
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        if explicit:
            raise ConfigError(f"{path}: no such configuration file") from None
        return Config()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read the configuration: {e}") from None
    return parse(text, path)
