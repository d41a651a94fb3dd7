"""Indexing and item access: decode, encode, store; look up, read back, delete."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from app.services.encoding import EncodingService, PreparedPhoto
from app.services.errors import InvalidInputError, NoContentError, NoThumbnailError
from app.services.threads import run_in
from index import Kind, MetadataFilter, NewItem, Record, serialized_metadata
from index.blobs import THUMBNAIL_TYPE
from index.duplicates import Duplicate
from index.errors import excerpt
from models import ImageDecodeError
from models.images import CONTENT_TYPES, sniff_image_format
from models.photos import EXIF_MAX_BYTES, THUMBNAIL_SIDE, Photo, thumbnail_of

if TYPE_CHECKING:
    from index.store import ItemStore

MAX_ID_LENGTH = 256
_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]")
_SHA256 = re.compile(r"[0-9a-f]{64}")
EXIF_KEY = "exif"  # an image's metadata key for its photo facts, filled by xmr


@dataclass(frozen=True)
class ImageInput:
    data: bytes
    id: str | None = None
    metadata: dict[str, Any] | None = None


@dataclass(frozen=True)
class TextInput:
    text: str
    id: str | None = None
    metadata: dict[str, Any] | None = None


def new_item_id() -> str:
    return uuid.uuid4().hex


def check_item_id(item_id: str) -> str:
    """Ids are 1-256 characters without control characters."""
    if not item_id or len(item_id) > MAX_ID_LENGTH:
        raise InvalidInputError(f"an id must be 1 to {MAX_ID_LENGTH} characters long")
    if _CONTROL_CHARS.search(item_id):
        raise InvalidInputError("an id must not contain control characters")
    return item_id


def _item_id(given: str | None) -> str:
    return check_item_id(given) if given is not None else new_item_id()


def check_item_input(
    item_id: str | None, metadata: Any, where: str, max_metadata_bytes: int, image: bool = False
) -> None:
    """Refuse a bad id or metadata before any decoding or encoding is spent on it.

    An image's metadata leaves EXIF_MAX_BYTES of the limit to its `exif` object, a key no
    client may set (it would be one's word against the file's).
    """
    if item_id is not None:
        try:
            check_item_id(item_id)
        except InvalidInputError as e:
            raise InvalidInputError(f"{where}: {e}") from e
    if metadata is not None:
        limit = max(max_metadata_bytes - EXIF_MAX_BYTES, 2) if image else max_metadata_bytes
        serialized_metadata(metadata, limit, f"{where}.metadata")
        if isinstance(metadata, dict) and EXIF_KEY in metadata:
            raise InvalidInputError(
                f"{where}.metadata.{EXIF_KEY}: reserved for the facts xmr reads from the photo "
                "(taken_at, camera, lens, gps, width, height, format); name your key otherwise"
            )


def with_photo_facts(
    metadata: dict[str, Any] | None, facts: dict[str, Any], keep_gps: bool
) -> dict[str, Any] | None:
    """An image's metadata with its photo facts under EXIF_KEY (the place only with
    `keep_gps`); the client's own keys as they were."""
    kept = {key: value for key, value in facts.items() if keep_gps or key != "gps"}
    if not kept:
        return metadata
    return {**(metadata or {}), EXIF_KEY: kept}


def image_content_type(data: bytes) -> str:
    return CONTENT_TYPES[sniff_image_format(data)]


def image_items(
    inputs: Sequence[ImageInput], vectors: Any, photos: Sequence[Photo], keep_gps: bool
) -> list[NewItem]:
    """The items to store for images, their vectors and their photos (one row each)."""
    return [
        NewItem.image_item(
            _item_id(item.id),
            vector,
            item.data,
            image_content_type(item.data),
            with_photo_facts(item.metadata, photo.facts, keep_gps),
            photo.thumbnail,
        )
        for item, vector, photo in zip(inputs, vectors, photos, strict=True)
    ]


@dataclass(frozen=True)
class StoredContent:
    """An item's content: its chunks, or (`url`) an address to fetch it from instead."""

    media_type: str
    chunks: Iterator[bytes]
    url: str | None = None


@dataclass(frozen=True)
class StoredThumbnail:
    """An image's thumbnail: its ETag, and its chunks (None: the client has these bytes)."""

    etag: str
    chunks: Iterator[bytes] | None
    media_type: str = THUMBNAIL_TYPE


def thumbnail_etag(record: Record) -> str:
    """The thumbnail's entity tag: its image's SHA-256 and the rendition's size."""
    return f'"{record.content_sha256}-{THUMBNAIL_SIDE}"'


def matches_etag(if_none_match: str | None, etag: str) -> bool:
    """Whether an If-None-Match header names `etag` (or `*`); weak tags compare equal."""
    if not if_none_match:
        return False
    tags = {tag.strip().removeprefix("W/") for tag in if_none_match.split(",")}
    return "*" in tags or etag in tags


def _imported(item_id: str) -> str:
    return f"item {excerpt(item_id)} was imported as a vector: xmr holds none of its bytes"


class ItemService:
    """What the item routes and the batch jobs do with items."""

    def __init__(
        self,
        store: ItemStore,
        encoding: EncodingService | None,
        store_pool: Executor,
        max_metadata_bytes: int,
        content_url_expiry_s: int | None = None,
        keep_gps: bool = False,
    ) -> None:
        """`encoding` may be None for reads and deletes, which need no model;
        `content_url_expiry_s` serves image bytes by a presigned address where the blob store
        has one; `keep_gps` stores where a photo was taken (XMR_KEEP_GPS)."""
        self.store = store
        self._encoding = encoding
        self._store_pool = store_pool  # FAISS kept to one core per thread (app.services.threads)
        self.max_metadata_bytes = max_metadata_bytes
        self._content_url_expiry_s = content_url_expiry_s
        self.keep_gps = keep_gps

    @property
    def encoding(self) -> EncodingService:
        if self._encoding is None:
            raise RuntimeError("this ItemService was made without a model")
        return self._encoding

    def check_input(
        self, item_id: str | None, metadata: Any, where: str, image: bool = False
    ) -> None:
        check_item_input(item_id, metadata, where, self.max_metadata_bytes, image)

    async def index_images(
        self, inputs: Sequence[ImageInput], dedup_threshold: float | None = None
    ) -> tuple[list[str], list[Duplicate]]:
        """Decode, encode and store images; any undecodable image rejects the whole request.

        With `dedup_threshold`, images that similar to a stored one are not stored again.
        """
        for position, item in enumerate(inputs):
            self.check_input(item.id, item.metadata, f"files[{position}]", image=True)
        prepared = await self.encoding.prepare_all([item.data for item in inputs], describe=True)
        items, _ = await self.encode_images(inputs, prepared)
        if dedup_threshold is None:
            return await self.store_items(items), []
        return await self.store_distinct(items, dedup_threshold)

    async def index_texts(self, inputs: Sequence[TextInput]) -> list[str]:
        for position, item in enumerate(inputs):
            self.check_input(item.id, item.metadata, f"items[{position}]")
        return await self.store_items(await self.encode_texts(inputs))

    async def encode_images(
        self, inputs: Sequence[ImageInput], prepared: Sequence[Any], background: bool = False
    ) -> tuple[list[NewItem], dict[int, str]]:
        """Items to store for images already through `EncodingService.prepare_many` (with
        `describe`: each a PreparedPhoto).

        A slot holding an ImageDecodeError is reported by position and skipped.
        """
        failures: dict[int, str] = {}
        good_inputs: list[ImageInput] = []
        good: list[PreparedPhoto] = []
        for position, (item, result) in enumerate(zip(inputs, prepared, strict=True)):
            if isinstance(result, ImageDecodeError):
                failures[position] = str(result)
            elif isinstance(result, Exception):
                raise result
            else:
                good_inputs.append(item)
                good.append(result)
        if not good:
            return [], failures
        vectors = await self.encoding.encode_prepared([p.prepared for p in good], background)
        photos = [p.photo for p in good]
        return image_items(good_inputs, vectors, photos, self.keep_gps), failures

    async def encode_texts(
        self, inputs: Sequence[TextInput], background: bool = False
    ) -> list[NewItem]:
        """Items to store for texts; `background` work waits for room in the encoder queue."""
        vectors = await self.encoding.encode_texts([item.text for item in inputs], background)
        return [
            NewItem.text_item(_item_id(item.id), vector, item.text, item.metadata)
            for item, vector in zip(inputs, vectors, strict=True)
        ]

    async def store_items(self, items: Sequence[NewItem]) -> list[str]:
        """Store encoded items durably in one write; their ids, in order."""
        if not items:
            return []
        return await run_in(self._store_pool, self.store.upsert, items)

    async def store_distinct(
        self, items: Sequence[NewItem], threshold: float
    ) -> tuple[list[str], list[Duplicate]]:
        """Store items but images as similar as `threshold` to a stored (or an earlier) image:
        the ids (a duplicate's is the existing item's) and the duplicates found."""
        if not items:
            return [], []
        return await run_in(self._store_pool, self.store.upsert_distinct, items, threshold)

    async def last_label(self) -> int:
        """The label of the newest write: jobs over stored items stop there."""
        return await run_in(self._store_pool, self.store.records.max_label)

    async def count_with_field(self, kind: Kind, field: str, where: MetadataFilter | None) -> int:
        """How many items of `kind` (matching `where`) hold the metadata key `field`."""
        return await run_in(
            self._store_pool, self.store.records.count_with_field, kind, field, where
        )

    async def get(self, item_id: str) -> Record:
        return await run_in(self._store_pool, self.store.get, item_id)

    async def content(self, item_id: str) -> StoredContent:
        """The stored bytes and their media type (the image in chunks, or the text as UTF-8),
        or where a client may fetch the image directly."""
        record = await self.get(item_id)
        if record.kind == "text":
            text = (record.text or "").encode("utf-8")
            return StoredContent("text/plain; charset=utf-8", iter([text]))
        if record.content_path is None:
            raise NoContentError(_imported(item_id))
        media_type = record.content_type or "application/octet-stream"
        if self._content_url_expiry_s is not None:
            url = await run_in(
                self._store_pool, self.store.content_url, record, self._content_url_expiry_s
            )
            if url is not None:
                return StoredContent(media_type, iter(()), url)
        chunks = await run_in(self._store_pool, self.store.content_stream, record)
        return StoredContent(media_type, chunks)

    async def thumbnail(self, item_id: str, if_none_match: str | None = None) -> StoredThumbnail:
        """An image's thumbnail, or only its ETag where `if_none_match` names it already.

        An image indexed before thumbnails were made gets one now, made once and kept.
        """
        record = await self.get(item_id)
        if record.kind != "image":
            raise NoThumbnailError(f"item {excerpt(item_id)} is a text: only images have one")
        if record.content_path is None:
            raise NoThumbnailError(_imported(item_id))
        etag = thumbnail_etag(record)
        if matches_etag(if_none_match, etag):
            return StoredThumbnail(etag, None)
        try:
            chunks = await run_in(self._store_pool, self.store.thumbnail_stream, record)
        except FileNotFoundError:
            chunks = iter([await run_in(self._store_pool, self._make_thumbnail, record)])
        return StoredThumbnail(etag, chunks)

    def _make_thumbnail(self, record: Record) -> bytes:
        thumbnail = thumbnail_of(self.store.read_content(record))
        self.store.store_thumbnail(record, thumbnail)
        return thumbnail

    async def find_by_content_hash(self, hashes: Sequence[str]) -> dict[str, str]:
        """Which of these SHA-256 digests of image bytes are indexed already, and as what id."""
        wanted = [h.lower() for h in hashes]
        for position, digest in enumerate(wanted):
            if not _SHA256.fullmatch(digest):
                raise InvalidInputError(f"sha256[{position}] is not a hex SHA-256 digest")
        return await run_in(self._store_pool, self.store.records.ids_by_sha256, wanted)

    async def delete(self, item_id: str) -> None:
        await run_in(self._store_pool, self.store.delete, item_id)
