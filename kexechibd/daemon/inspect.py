"""The reply of ``Inspect`` (DESIGN §5): the engine's typed ``ImageReport``
as the ``a{sv}`` fields clients read, built here at the daemon's edge."""

from __future__ import annotations

from kexechibd.operation import ImageReport


def report_fields(report: ImageReport) -> dict[str, object]:
    """``valid`` and ``path`` always; ``absent`` for a prepared location
    without an image, ``error`` for one that cannot be read; otherwise the
    image's metadata under hyphenated names."""
    fields: dict[str, object] = {"valid": report.valid, "path": report.path}
    if report.absent:
        fields["absent"] = True
    if report.error:
        fields["error"] = report.error
    d = report.details
    if d is not None:
        fields.update(
            {
                "state": d.state,
                "format-version": d.format_version,
                "kernel-release": d.kernel_release,
                "build-id": d.build_id,
                "machine-id": d.machine_id,
                "boot-id": d.boot_id,
                "created": d.created,
                "mode": d.mode,
                "compression": d.compression,
                "data-pages": d.data_pages,
                "zero-pages": d.zero_pages,
                "runs": d.runs,
                "chunks": d.chunks,
                "stored-bytes": d.stored_bytes,
                "digest": d.digest,
            }
        )
    return fields
