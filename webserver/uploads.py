"""A bound on every uploaded file, applied while it streams in.

Django spools an upload of any size to a temporary file before a view sees
it. `BoundedUploadHandler`, first in `FILE_UPLOAD_HANDLERS`, passes a file on
to the usual handlers only up to `FEDOTA_MAX_UPLOAD_BYTES`; past that it
counts the rest and drops it, so no upload fills the disk or memory, and the
form or serializer receives an `OversizedUpload` whose `size` is what was
sent. Code that takes files checks `size` first (`fabs.read_upload`,
`ContractForm.json_text`) and tells the user the limit.
"""

from __future__ import annotations

import io
from typing import Any

from django.conf import settings
from django.core.files.uploadedfile import UploadedFile
from django.core.files.uploadhandler import FileUploadHandler


class _Dropped(io.BytesIO):
    """The content of an oversized upload: it was not kept, so reading it is an error, not an empty file."""

    def read(self, size: int | None = -1) -> bytes:
        raise OSError("this upload was over FEDOTA_MAX_UPLOAD_BYTES and its content was not kept")

    read1 = readline = read


class OversizedUpload(UploadedFile):
    """An uploaded file past the limit: its name and the bytes sent, no content."""

    def __init__(self, name: str, content_type: str, size: int) -> None:
        super().__init__(_Dropped(), name=name, content_type=content_type, size=size)


class BoundedUploadHandler(FileUploadHandler):
    def new_file(self, *args: Any, **kwargs: Any) -> None:
        super().new_file(*args, **kwargs)
        self.received = 0

    def receive_data_chunk(self, raw_data: bytes, start: int) -> bytes | None:
        self.received = start + len(raw_data)
        if self.received > settings.FEDOTA_MAX_UPLOAD_BYTES:
            return None  # later handlers see nothing more of this file
        return raw_data

    def file_complete(self, file_size: int) -> UploadedFile | None:
        if self.received > settings.FEDOTA_MAX_UPLOAD_BYTES:
            return OversizedUpload(str(self.file_name), str(self.content_type), self.received)
        return None  # the next handler (memory or temporary file) completes the file
