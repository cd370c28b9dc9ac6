"""The hibernation image (DESIGN §4; layout in docs/image-format.md).

A pure library: the saver writes one with ``ImageWriter``, the restorer reads
it with ``ImageReader``, ``ImageStore(path)`` keeps one in a file, in the two
slots of a block device, or in the two slots of a prepared file written by
block address (``FileImageStore``, ``DeviceImageStore``, ``ExtentImageStore``), and
``export_elf_core`` turns one into a plain ELF core.
"""

from kexechibd.image.blockstore import DeviceImageStore, SlotRecord
from kexechibd.image.export import export_elf_core
from kexechibd.image.extents import ExtentImageStore, FileExtents, prepare_image_file
from kexechibd.image.format import FORMAT_VERSION
from kexechibd.image.meta import Chunk, ImageError, ImageMeta, ImageSummary, Run
from kexechibd.image.reader import ImageReader
from kexechibd.image.store import (
    FileImageStore,
    ImageStore,
    check_private,
    create_image_file,
    invalidate_image,
    mark_image_consumed,
    unmark_image_consumed,
)
from kexechibd.image.writer import ImageWriter

__all__ = [
    "FORMAT_VERSION",
    "Chunk",
    "DeviceImageStore",
    "ExtentImageStore",
    "FileExtents",
    "FileImageStore",
    "ImageError",
    "ImageMeta",
    "ImageReader",
    "ImageStore",
    "ImageSummary",
    "ImageWriter",
    "Run",
    "SlotRecord",
    "check_private",
    "create_image_file",
    "export_elf_core",
    "invalidate_image",
    "mark_image_consumed",
    "prepare_image_file",
    "unmark_image_consumed",
]
