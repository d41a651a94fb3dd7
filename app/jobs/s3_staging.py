"""Batch uploads staged in object storage (XMR_BLOB_URL), for replicas that share no folder.

The request's images are appended to local spool files exactly as with a folder; `commit`
uploads each file as one object (`<prefix>/staging/<job>/<n>.blobs`, in parts above 8 MiB)
before the job is recorded, and removes the spool. A job reads an image with a ranged GET of
its offset and length, from whichever replica runs it.
"""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path
from typing import Any

from app.jobs.staging import StagingWriter
from index.s3_blobs import MULTIPART_THRESHOLD, parse_s3_url, s3_client, unavailable_mapped


class S3StagingWriter(StagingWriter):
    """Spools locally, uploads at commit; a job's files are objects under its key prefix."""

    def __init__(self, spool: Path, client: Any, bucket: str, prefix: str) -> None:
        super().__init__(spool)
        self._s3 = client
        self._bucket = bucket
        self._prefix = prefix  # .../staging/<job>

    def location(self, path: Path) -> str:
        return f"s3://{self._bucket}/{self._prefix}/{path.name}"

    def commit(self) -> None:
        from boto3.s3.transfer import TransferConfig

        super().commit()
        config = TransferConfig(multipart_threshold=MULTIPART_THRESHOLD)
        try:
            with unavailable_mapped("stage the uploads in"):
                for path in sorted(self.folder.glob("*.blobs")):
                    key = f"{self._prefix}/{path.name}"
                    self._s3.upload_file(str(path), self._bucket, key, Config=config)
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)

    def discard(self) -> None:
        super().discard()
        with contextlib.suppress(Exception):
            _delete_prefix(self._s3, self._bucket, f"{self._prefix}/")


class S3Staging:
    """Staged uploads under `url` (s3://bucket/prefix/staging), spooled in `spool` first."""

    def __init__(self, url: str, endpoint_url: str | None, spool: Path) -> None:
        self.bucket, self.prefix = parse_s3_url(url)
        self._s3 = s3_client(endpoint_url)
        self._spool = spool

    def writer(self, job_id: str) -> StagingWriter:
        return S3StagingWriter(self._spool / job_id, self._s3, self.bucket, self._key(job_id))

    def read(self, source: str, offset: int | None, length: int | None) -> bytes:
        bucket, key = parse_s3_url(source)
        request: dict[str, Any] = {"Bucket": bucket, "Key": key}
        if offset is not None and length is not None:
            if length == 0:
                return b""
            request["Range"] = f"bytes={offset}-{offset + length - 1}"
        with unavailable_mapped("read a staged upload from"):
            data: bytes = self._s3.get_object(**request)["Body"].read()
        if length is not None and len(data) != length:
            raise OSError(f"staged image truncated: {len(data)} of {length} bytes")
        return data

    def remove(self, job_id: str) -> None:
        with unavailable_mapped("delete staged uploads from"):
            _delete_prefix(self._s3, self.bucket, f"{self._key(job_id)}/")

    def job_ids(self) -> list[str]:
        start = f"{self.prefix}/" if self.prefix else ""
        found: list[str] = []
        with unavailable_mapped("list staged uploads in"):
            pages = self._s3.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=start, Delimiter="/"
            )
            for page in pages:
                found += [
                    p["Prefix"][len(start) :].rstrip("/") for p in page.get("CommonPrefixes", [])
                ]
        return found

    def _key(self, job_id: str) -> str:
        return f"{self.prefix}/{job_id}" if self.prefix else job_id


def _delete_prefix(client: Any, bucket: str, prefix: str) -> None:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    for page in pages:
        keys = [{"Key": entry["Key"]} for entry in page.get("Contents", [])]
        if keys:
            client.delete_objects(Bucket=bucket, Delete={"Objects": keys})
