"""The blob contract on S3 or any S3-compatible store (Ceph RADOS Gateway, MinIO), through boto3.

An item's bytes live under `s3://bucket/prefix/<store>/<sha[:2]>/<sha>.<ext>`: content-addressed
like the local folder, so identical bytes are kept once and a retried write is harmless. Bytes
are written before the record commits and deleted after it is gone; uploads above
MULTIPART_THRESHOLD go in parts, and reads are streamed in chunks. Credentials and region come
from the usual AWS variables (or instance roles); `endpoint_url` names a store that is not AWS.
"""

from __future__ import annotations

import errno
import io
import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from index.blobs import blob_name
from index.errors import BlobStoreUnavailableError, StorageError
from index.types import StoredBlob

MULTIPART_THRESHOLD = 8 * 1024 * 1024
STREAM_CHUNK = 256 * 1024


def parse_s3_url(url: str) -> tuple[str, str]:
    """`s3://bucket/some/prefix` -> ("bucket", "some/prefix")."""
    parts = urlsplit(url)
    if parts.scheme != "s3" or not parts.netloc:
        raise ValueError(f"not an s3://bucket/prefix address: {url!r}")
    return parts.netloc, parts.path.strip("/")


def s3_client(endpoint_url: str | None) -> Any:
    import boto3
    from botocore.config import Config

    config = Config(retries={"max_attempts": 3, "mode": "standard"}, connect_timeout=5)
    return boto3.client("s3", endpoint_url=endpoint_url, config=config)


class S3BlobStore:
    """Blobs under one key prefix of a bucket; paths returned are relative to the prefix."""

    def __init__(self, url: str, endpoint_url: str | None = None, client: Any = None) -> None:
        from boto3.s3.transfer import TransferConfig

        self.bucket, self.prefix = parse_s3_url(url)
        self._s3 = client if client is not None else s3_client(endpoint_url)
        self._transfer = TransferConfig(
            multipart_threshold=MULTIPART_THRESHOLD, multipart_chunksize=MULTIPART_THRESHOLD
        )

    def _key(self, path: str) -> str:
        if path.startswith("/") or ".." in path.split("/"):
            raise ValueError(f"blob path {path!r} escapes the blob store")
        return f"{self.prefix}/{path}" if self.prefix else path

    def put(self, data: bytes, content_type: str) -> StoredBlob:
        blob = blob_name(data, content_type)
        key = self._key(blob.path)
        with unavailable_mapped("store the image bytes in"):
            if self._exists(key):
                # written again: a copy onto itself renews its time, so a sweep of old
                # unreferenced blobs passes it by
                self._s3.copy_object(
                    Bucket=self.bucket,
                    Key=key,
                    CopySource={"Bucket": self.bucket, "Key": key},
                    ContentType=content_type or "application/octet-stream",
                    MetadataDirective="REPLACE",
                )
            else:
                self._s3.upload_fileobj(
                    io.BytesIO(data),
                    self.bucket,
                    key,
                    ExtraArgs={"ContentType": content_type or "application/octet-stream"},
                    Config=self._transfer,
                )
        return blob

    def put_beside(self, path: str, data: bytes, content_type: str) -> None:
        with unavailable_mapped("store the thumbnail in"):
            self._s3.put_object(
                Bucket=self.bucket, Key=self._key(path), Body=data, ContentType=content_type
            )

    def _exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self._s3.head_object(Bucket=self.bucket, Key=key)
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise
        return True

    def read(self, path: str) -> bytes:
        return b"".join(self.stream(path))

    def stream(self, path: str) -> Iterator[bytes]:
        key = self._key(path)
        with unavailable_mapped(
            "read the image bytes from"
        ):  # a missing object fails here, not later
            body = self._s3.get_object(Bucket=self.bucket, Key=key)["Body"]
        return _chunks(body)

    def url_for(self, path: str, expires_s: int) -> str | None:
        return str(
            self._s3.generate_presigned_url(
                "get_object",
                Params={"Bucket": self.bucket, "Key": self._key(path)},
                ExpiresIn=expires_s,
            )
        )

    def remove(self, path: str) -> None:
        with unavailable_mapped("delete from"):
            self._s3.delete_object(Bucket=self.bucket, Key=self._key(path))

    def remove_unreferenced(self, referenced: set[str], older_than_s: float = 0.0) -> int:
        written_before = time.time() - older_than_s
        start = f"{self.prefix}/" if self.prefix else ""
        doomed: list[str] = []
        with unavailable_mapped("list"):
            pages = self._s3.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=start
            )
            for page in pages:
                for entry in page.get("Contents", []):
                    relative = entry["Key"][len(start) :]
                    modified: datetime = entry["LastModified"]
                    if relative not in referenced and modified.timestamp() <= written_before:
                        doomed.append(entry["Key"])
            for first in range(0, len(doomed), 1000):  # S3's limit per request
                batch = [{"Key": key} for key in doomed[first : first + 1000]]
                self._s3.delete_objects(Bucket=self.bucket, Delete={"Objects": batch})
        return len(doomed)


def _chunks(body: Any) -> Iterator[bytes]:
    try:
        while chunk := body.read(STREAM_CHUNK):
            yield chunk
    finally:
        body.close()


class unavailable_mapped:
    """boto3's failures as the index layer's: unreachable is a passing condition (503)."""

    def __init__(self, doing: str) -> None:
        self.doing = doing

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, error: Any, tb: Any) -> None:
        from botocore.exceptions import BotoCoreError, ClientError, EndpointConnectionError

        if error is None:
            return
        if isinstance(error, EndpointConnectionError | ConnectionError):
            raise BlobStoreUnavailableError(
                f"could not {self.doing} object storage: it does not answer"
            ) from error
        if isinstance(error, ClientError):
            code = error.response.get("Error", {}).get("Code", "")
            if code in ("NoSuchKey", "404"):  # as a file that is gone: no such blob
                raise FileNotFoundError(errno.ENOENT, "no such blob in object storage") from error
            if code in ("ServiceUnavailable", "SlowDown", "503", "500", "InternalError"):
                raise BlobStoreUnavailableError(
                    f"could not {self.doing} object storage: {code}"
                ) from error
            raise StorageError(f"could not {self.doing} object storage: {code}") from error
        if isinstance(error, BotoCoreError):
            raise BlobStoreUnavailableError(
                f"could not {self.doing} object storage: {error}"
            ) from error
