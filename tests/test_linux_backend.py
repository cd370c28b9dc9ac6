"""The Linux backend: struct layout, the safety guard, the capability probe.

No test here passes the guard: on this host every dangerous call must be
refused before it reaches the kernel."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from kexechibd.kernel import abi, linux
from kexechibd.kernel.api import MemoryKind


@pytest.fixture
def tripwire(monkeypatch: pytest.MonkeyPatch) -> list[tuple]:
    """Replaces the one function that enters the kernel; records any call."""
    calls: list[tuple] = []

    def refuse(*args: object) -> tuple[int, int]:
        calls.append(args)
        raise AssertionError("a syscall reached the kernel past the guard")

    monkeypatch.setattr(linux, "syscall", refuse)
    return calls


def test_segment_layout_matches_the_c_compiler(tmp_path: Path) -> None:
    source = tmp_path / "layout.c"
    source.write_text(
        "#include <stdio.h>\n#include <stddef.h>\n#include <linux/kexec.h>\n"
        'int main(void){printf("%zu %zu %zu %zu %zu\\n", sizeof(struct kexec_segment),'
        " offsetof(struct kexec_segment, buf), offsetof(struct kexec_segment, bufsz),"
        " offsetof(struct kexec_segment, mem), offsetof(struct kexec_segment, memsz));}\n"
    )
    subprocess.run(["gcc", "-o", tmp_path / "layout", source], check=True)
    sizes = subprocess.run([tmp_path / "layout"], check=True, capture_output=True, text=True)
    ffi = linux.ffi()
    ours = [ffi.sizeof("struct kexec_segment")] + [
        ffi.offsetof("struct kexec_segment", f) for f in ("buf", "bufsz", "mem", "memsz")
    ]
    assert [int(x) for x in sizes.stdout.split()] == ours == [32, 0, 8, 16, 24]
    assert abi.KEXEC_SEGMENT.size == ours[0]


# Values compared with the uapi headers; nothing here is ever called (the
# guard tests below prove no call reaches the kernel).
UAPI_CONSTANTS = (
    "KEXEC_ON_CRASH",
    "KEXEC_PRESERVE_CONTEXT",
    "KEXEC_SEGMENT_MAX",
    "KEXEC_ARCH_X86_64",
    "LINUX_REBOOT_MAGIC1",
    "LINUX_REBOOT_MAGIC2",
    "LINUX_REBOOT_CMD_KEXEC",  # value check only (guard)
    "LINUX_REBOOT_CMD_POWER_OFF",  # value check only (guard)
)


def test_flag_values_match_the_uapi_header(tmp_path: Path) -> None:
    source = tmp_path / "flags.c"
    prints = "".join(f'printf("%u\\n", (unsigned){name});' for name in UAPI_CONSTANTS)
    source.write_text(
        "#include <stdio.h>\n#include <linux/kexec.h>\n#include <linux/reboot.h>\n"
        f"int main(void){{{prints}return 0;}}\n"
    )
    subprocess.run(["gcc", "-o", tmp_path / "flags", source], check=True)
    out = subprocess.run([tmp_path / "flags"], check=True, capture_output=True, text=True)
    assert [int(x) for x in out.stdout.split()] == [getattr(abi, n) for n in UAPI_CONSTANTS]


def test_guard_refuses_kexec_load_before_the_kernel(tripwire: list) -> None:
    kernel = linux.LinuxKernel()
    with pytest.raises(abi.GuardRefused, match="not enabled"):
        kernel.kexec_load(0, [abi.Segment(b"x", 0x100000, 4096)], abi.load_flags())
    assert tripwire == []


def test_guard_refuses_reboot_kexec_before_the_kernel(tripwire: list) -> None:
    with pytest.raises(abi.GuardRefused):
        linux.LinuxKernel().reboot_kexec()
    assert tripwire == []


def test_guard_refuses_power_off_before_the_kernel(tripwire: list) -> None:
    with pytest.raises(abi.GuardRefused):
        linux.LinuxKernel().power_off()
    assert tripwire == []


def test_guard_error_says_how_to_enable(tripwire: list) -> None:
    with pytest.raises(abi.GuardRefused) as info:
        linux.LinuxKernel().reboot_kexec()
    assert "enable_real_kexec" in str(info.value)
    assert linux.ENABLE_PARAMETER in str(info.value)


def test_probe_makes_no_syscall_without_the_guard(tripwire: list) -> None:
    linux.LinuxKernel().probe()
    assert tripwire == []


def test_guard_is_enabled_only_by_the_exact_parameter(tmp_path: Path) -> None:
    proc = tmp_path / "proc"
    proc.mkdir()
    (proc / "cmdline").write_text("quiet kexechib.enable_kexec=0 kexechib.enable_kexec=10\n")
    assert not linux.LinuxKernel(proc=proc).real_kexec_enabled
    (proc / "cmdline").write_text("quiet kexechib.enable_kexec=1\n")
    assert linux.LinuxKernel(proc=proc).real_kexec_enabled


def test_probe_on_this_host_reports_the_truth() -> None:
    """This development kernel has no kexec at all; the report must say so."""
    report = linux.LinuxKernel().probe()
    has_kexec = Path("/sys/kernel/kexec_loaded").exists()
    assert report.kexec == has_kexec
    if not has_kexec:
        assert report.missing[0] == "no kexec in this kernel (CONFIG_KEXEC is not set)"
        assert not report.can_hibernate
    assert "safety guard" in report.summary


def test_probe_reads_lockdown_and_disabled_flags(tmp_path: Path) -> None:
    sys_ = tmp_path / "sys"
    proc = tmp_path / "proc"
    (sys_ / "kernel/security").mkdir(parents=True)
    (proc / "sys/kernel").mkdir(parents=True)
    (sys_ / "kernel/kexec_loaded").write_text("0\n")
    (sys_ / "kernel/security/lockdown").write_text("none [integrity] confidentiality\n")
    (proc / "sys/kernel/kexec_load_disabled").write_text("1\n")
    (proc / "cmdline").write_text("")
    (proc / "sys/kernel/osrelease").write_text("6.1.0-test\n")
    boot = tmp_path / "boot"
    boot.mkdir()
    (boot / "config-6.1.0-test").write_text("CONFIG_KEXEC=y\n# CONFIG_KEXEC_JUMP is not set\n")
    report = linux.LinuxKernel(proc=proc, sys=sys_, boot=boot).probe()
    assert report.kexec
    assert report.lockdown == "integrity"
    assert report.kexec_load_disabled
    assert report.kexec_jump is False
    assert "no CONFIG_KEXEC_JUMP (preserve-context loads are refused)" in report.missing
    assert "kernel lockdown is active (integrity); kexec_load is forbidden" in report.missing


def test_iomem_top_level_ranges_are_parsed() -> None:
    text = (
        "00000000-00000fff : Reserved\n00001000-0009fbff : System RAM\n"
        "00100000-bffdffff : System RAM\n  01000000-01e00000 : Kernel code\n"
        "fee00000-fee00fff : Local APIC\n"
    )
    ranges = linux.parse_iomem(text)
    assert [(r.start, r.end, r.kind) for r in ranges] == [
        (0, 0x1000, MemoryKind.RESERVED),
        (0x1000, 0x9FC00, MemoryKind.RAM),
        (0x100000, 0xBFFE0000, MemoryKind.RAM),
    ]


def test_build_id_is_read_from_kernel_notes() -> None:
    desc = bytes(range(20))
    note = (4).to_bytes(4, "little") + (20).to_bytes(4, "little") + (3).to_bytes(4, "little")
    assert linux.gnu_build_id(note + b"GNU\0" + desc) == desc.hex()


def _boot_params_with_rsdp(sys_: Path, rsdp: int) -> None:
    data = bytearray(4096)
    data[abi.BOOT_PARAMS_ACPI_RSDP_ADDR : abi.BOOT_PARAMS_ACPI_RSDP_ADDR + 8] = rsdp.to_bytes(
        8, "little"
    )
    (sys_ / "kernel/boot_params").mkdir(parents=True)
    (sys_ / "kernel/boot_params/data").write_bytes(bytes(data))


def _efi_systab(sys_: Path, text: str) -> None:
    (sys_ / "firmware/efi").mkdir(parents=True)
    (sys_ / "firmware/efi/systab").write_text(text)


def test_acpi_rsdp_comes_from_the_kernels_boot_params(tmp_path: Path) -> None:
    _boot_params_with_rsdp(tmp_path, 0x7FB7E014)
    _efi_systab(tmp_path, "ACPI20=0x1000\n")
    assert linux.LinuxKernel(sys=tmp_path).acpi_rsdp() == 0x7FB7E014


def test_acpi_rsdp_falls_back_to_the_efi_system_table(tmp_path: Path) -> None:
    _boot_params_with_rsdp(tmp_path, 0)
    _efi_systab(tmp_path, "SMBIOS=0x7f9d8000\nACPI=0x7fb7e000\nACPI20=0x7fb7e014\n")
    assert linux.LinuxKernel(sys=tmp_path).acpi_rsdp() == 0x7FB7E014


def test_acpi_rsdp_is_none_when_nothing_names_it(tmp_path: Path) -> None:
    assert linux.LinuxKernel(sys=tmp_path).acpi_rsdp() is None


def test_a_memory_map_with_hidden_addresses_is_refused_with_the_reason(tmp_path: Path) -> None:
    # /proc/iomem as a process without CAP_SYS_ADMIN reads it (kexechibd.service).
    proc = tmp_path / "proc"
    proc.mkdir()
    (proc / "iomem").write_text(
        "00000000-00000000 : Reserved\n00000000-00000000 : System RAM\n"
        "  00000000-00000000 : Kernel code\n"
    )
    kernel = linux.LinuxKernel(proc=proc, sys=tmp_path / "sys")
    with pytest.raises(abi.KernelError, match="CONFIG_FIRMWARE_MEMMAP"):
        kernel.memory_map()
