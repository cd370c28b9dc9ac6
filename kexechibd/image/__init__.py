"""The hibernation image (DESIGN §4; layout in docs/image-format.md).

A pure library: the saver writes one with ``ImageWriter``, the restorer reads
it with ``ImageReader``; ``open_store(path)`` gives the store that keeps one
at ``path``: in a file (``FileImageStore``), in the two slots of a block
device (``DeviceImageStore``) or of a prepared file written by block address
(``ExtentImageStore``); ``export_image`` turns one into a plain ELF core file
(``export_elf_core`` into any stream).  Every error it raises is an
``ImageError``; the daemon says what a D-Bus caller sees.
"""

from kexechibd.image.blockstore import DeviceImageStore
from kexechibd.image.export import ExportError, export_elf_core, export_image
from kexechibd.image.extents import FileExtents
from kexechibd.image.extentstore import ExtentImageStore
from kexechibd.image.fileio import check_private
from kexechibd.image.filestore import FileImageStore
from kexechibd.image.format import FORMAT_VERSION
from kexechibd.image.location import open_store, prepare_image_file
from kexechibd.image.meta import (
    Chunk,
    ImageError,
    ImageMeta,
    ImageMode,
    ImageState,
    ImageSummary,
    Run,
)
from kexechibd.image.reader import ImageReader
from kexechibd.image.seal import Seal
from kexechibd.image.sealstore import SealedImageStore
from kexechibd.image.slots import SlotRecord
from kexechibd.image.store import (
    ImageStore,
    Pinned,
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
    "ExportError",
    "ExtentImageStore",
    "FileExtents",
    "FileImageStore",
    "ImageError",
    "ImageMeta",
    "ImageMode",
    "ImageReader",
    "ImageState",
    "ImageStore",
    "ImageSummary",
    "ImageWriter",
    "Pinned",
    "Run",
    "Seal",
    "SealedImageStore",
    "SlotRecord",
    "check_private",
    "create_image_file",
    "export_elf_core",
    "export_image",
    "invalidate_image",
    "mark_image_consumed",
    "open_store",
    "prepare_image_file",
    "unmark_image_consumed",
]
