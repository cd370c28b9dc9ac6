"""The pure part of sealed image files (image/seal.py): the key block's
codec, what dm's table of a filesystem's device must say for a file on it to
be sealed, and the two tables of the mapping every kernel reads the image
through."""

from __future__ import annotations

import pytest

from kexechibd.image import ImageError
from kexechibd.image.extents import Extent, FileExtents
from kexechibd.image.seal import (
    KEY_AREA,
    SEAL_CIPHER,
    SEAL_KEY_BYTES,
    CryptTarget,
    Seal,
    SealKey,
    SealMapping,
    parse_crypt_table,
)
from tests.sizes import MIB

K = 4096
# A LUKS2 root as Debian's cryptsetup opens it: the key through the keyring.
LUKS2_TABLE = "0 2064384 crypt aes-xts-plain64 :64:logon:cryptsetup:9f0e-d0 0 254:2 32768\n"


def test_a_key_block_gives_back_its_key() -> None:
    key = SealKey.generate()
    block = key.to_block()
    assert len(block) == KEY_AREA
    assert SealKey.from_block(block, "f") == key
    assert (key.cipher, len(key.key)) == (SEAL_CIPHER, SEAL_KEY_BYTES)


def test_two_generated_keys_differ() -> None:
    assert SealKey.generate().key != SealKey.generate().key


def test_a_key_never_shows_in_its_repr() -> None:
    key = SealKey.generate()
    assert key.key.hex() not in repr(key) and str(len(key.key)) in repr(key)


def test_a_block_without_the_magic_is_not_a_sealed_file() -> None:
    with pytest.raises(ImageError, match="not a sealed image file"):
        SealKey.from_block(bytes(KEY_AREA), "/var/lib/kexechib/image")


def test_a_damaged_key_block_is_refused() -> None:
    block = bytearray(SealKey.generate().to_block())
    block[40] ^= 1
    with pytest.raises(ImageError, match="damaged"):
        SealKey.from_block(bytes(block), "f")


def test_a_key_travels_in_parameters_as_hex() -> None:
    key = SealKey.generate()
    assert SealKey.from_dict(key.to_dict()) == key
    with pytest.raises(ImageError, match="not hex"):
        SealKey.from_dict({"cipher": SEAL_CIPHER, "key": "zz"})


def test_a_luks_table_gives_the_partition_and_offset() -> None:
    assert parse_crypt_table(LUKS2_TABLE, "dm-0") == CryptTarget(
        "aes-xts-plain64", (254, 2), 32768, 2064384
    )


def test_a_table_with_features_still_parses() -> None:
    table = LUKS2_TABLE.strip() + " 2 allow_discards sector_size:4096\n"
    assert parse_crypt_table(table, "dm-0").start == 32768


def test_a_device_of_several_targets_is_refused() -> None:
    table = "0 100 linear 254:0 2048\n100 100 linear 254:0 9000\n"
    with pytest.raises(ImageError, match="2 device-mapper targets"):
        parse_crypt_table(table, "dm-1")


def test_lvm_on_luks_is_refused_naming_what_works() -> None:
    with pytest.raises(ImageError, match="linear device, not a dm-crypt mapping"):
        parse_crypt_table("0 204800 linear 254:0 2048\n", "dm-1")


def test_crypt_with_integrity_is_refused() -> None:
    table = LUKS2_TABLE.strip() + " 1 integrity:28:aead\n"
    with pytest.raises(ImageError, match="integrity"):
        parse_crypt_table(table, "dm-0")


def test_an_unreadable_table_is_an_error_not_a_guess() -> None:
    with pytest.raises(ImageError, match="cannot read"):
        parse_crypt_table("0 100 crypt aes-xts-plain64 - 0 vda2\n", "dm-0")


def file_on(extents: list[tuple[int, int, int]], device_size: int = 1008 * MIB) -> FileExtents:
    size = sum(n for _, _, n in extents)
    return FileExtents(
        254, 0, "dm-0", device_size, size, tuple(Extent(lo, ph, n) for lo, ph, n in extents)
    )


TARGET = CryptTarget(SEAL_CIPHER, (254, 2), 32768, 2064384)


def test_the_blocks_follow_the_file_after_its_key_block_on_the_partition() -> None:
    mapping = SealMapping(file_on([(0, 8 * MIB, 2 * MIB), (2 * MIB, 100 * MIB, 2 * MIB)]), TARGET)
    assert mapping.size == 4 * MIB - KEY_AREA
    first = (2 * MIB - K) // 512
    assert mapping.blocks_table().splitlines() == [
        f"0 {first} linear 254:2 {32768 + (8 * MIB + K) // 512}",
        f"{first} {2 * MIB // 512} linear 254:2 {32768 + 100 * MIB // 512}",
    ]


def test_the_key_block_is_read_at_the_files_first_block() -> None:
    mapping = SealMapping(file_on([(0, 8 * MIB, 4 * MIB)]), TARGET)
    assert mapping.key_span() == (8 * MIB, KEY_AREA)


def test_the_image_device_is_the_seal_key_over_the_blocks() -> None:
    key = SealKey.generate()
    mapping = SealMapping(file_on([(0, 8 * MIB, 4 * MIB)]), TARGET)
    sectors = (4 * MIB - KEY_AREA) // 512
    assert mapping.image_table(key, (254, 7)) == (
        f"0 {sectors} crypt {SEAL_CIPHER} {key.key.hex()} 0 254:7 0\n"
    )


def test_a_table_smaller_than_the_device_does_not_belong_to_it() -> None:
    with pytest.raises(ImageError, match="does not belong"):
        SealMapping(file_on([(0, 0, 4 * MIB)], device_size=2 * 1024 * MIB), TARGET)


def test_a_file_of_only_a_key_block_holds_no_image() -> None:
    with pytest.raises(ImageError, match="holds no image"):
        SealMapping(file_on([(0, 0, KEY_AREA)]), TARGET)


def test_a_seal_travels_to_b_whole() -> None:
    seal = Seal(TARGET, "vda2", 2 << 30, SealKey.generate())
    assert Seal.from_dict(seal.to_dict()) == seal


def test_a_seal_with_a_field_of_the_wrong_type_is_refused() -> None:
    data = {**Seal(TARGET, "vda2", 2 << 30, SealKey.generate()).to_dict(), "start": "32768"}
    with pytest.raises(ImageError, match="bad seal in the parameters"):
        Seal.from_dict(data)


def test_a_key_block_of_another_cipher_is_refused() -> None:
    block = SealKey("aes-cbc-essiv:sha256", bytes(SEAL_KEY_BYTES)).to_block()
    with pytest.raises(ImageError, match="only aes-xts-plain64, 64 bytes"):
        SealKey.from_block(block, "f")


def test_a_cipher_that_would_add_table_fields_is_refused() -> None:
    data = {"cipher": "aes-xts-plain64 0 7:0 0\n0 8 linear", "key": bytes(64).hex()}
    with pytest.raises(ImageError, match="not supported"):
        SealKey.from_dict(data)


def test_a_key_of_the_wrong_length_is_refused() -> None:
    with pytest.raises(ImageError, match="32-byte key"):
        SealKey.from_dict({"cipher": SEAL_CIPHER, "key": bytes(32).hex()})


def test_a_seal_whose_mapping_does_not_fit_its_device_is_refused() -> None:
    # TARGET maps 2064384 sectors from sector 32768: about 1 GiB
    with pytest.raises(ImageError, match="does not belong to this device"):
        Seal(TARGET, "vda2", 512 << 20, SealKey.generate())
