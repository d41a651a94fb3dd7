"""The commands that work on a data directory directly, with the server stopped.

`xmr index --ray` embeds on a Ray cluster and writes into a collection's store; `xmr migrate`
moves collections between the FAISS and Milvus backends. Everything else in xmr/ is an HTTP
client of a running server.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from index import IndexOptions, NewItem, StorageError
from index.layout import (
    DEFAULT_COLLECTION,
    ModelSpec,
    collection_names,
    namespace_of,
    serving_generation,
)
from index.migrate import MigrationReport, migrate, migrate_to_database, opposite
from index.records import stored_model
from index.store import ItemStore
from xmr.distributed import RayIndexReport, index_with_ray
from xmr.files import ImageFile
from xmr.import_embeddings import ImportReport, import_embeddings

TEXT_CHUNK = 256


def index_on_ray(
    files: Sequence[ImageFile],
    texts: Sequence[dict[str, Any]],
    collection: str,
    data_dir: Path | None,
    address: str | None,
    workers: int,
    batch_size: int,
) -> RayIndexReport:
    """Ray Data embeds the images, this process writes them (and `texts`) into `collection`."""
    import ray

    from app.config import Settings

    settings = Settings()
    encoder, store, spec = open_collection(settings, data_dir, collection)
    ray.init(address=address, include_dashboard=False, log_to_driver=False)
    try:
        report = index_with_ray(
            files,
            store,
            spec.model,
            spec.pretrained,
            workers=workers,
            device=settings.device,
            precision=spec.precision,
            runtime=settings.runtime,
            batch_size=batch_size,
            max_pixels=settings.max_image_pixels,
            keep_gps=settings.keep_gps,
        )
        for start in range(0, len(texts), TEXT_CHUNK):
            part = texts[start : start + TEXT_CHUNK]
            vectors = encoder.encode_texts([item["text"] for item in part])
            store.upsert(
                [
                    NewItem.text_item(item["id"], vector, item["text"], item["metadata"])
                    for item, vector in zip(part, vectors, strict=True)
                ]
            )
    finally:
        ray.shutdown()
        store.close()
    return report


def open_collection(
    settings: Any, data_dir: Path | None, collection: str
) -> tuple[Any, ItemStore, ModelSpec]:
    """The serving generation of `collection` in a stopped server's data directory: its model
    (loaded on the CPU), its store, and the model's spec."""
    from models import OpenClipEncoder

    folder, generation = serving_generation(data_dir or settings.data_dir, collection)
    spec = generation.spec
    if not spec.model:  # a data directory the server has not described yet: the settings' model
        spec = ModelSpec(settings.model, settings.pretrained, settings.precision)
    encoder = OpenClipEncoder.load(
        spec.model, spec.pretrained, settings.load_options(spec.precision, device="cpu")
    )
    store = ItemStore(
        folder.path(generation),
        encoder.model_id,
        encoder.dim,
        settings.index_options(),
        namespace_of(collection, generation),
    )
    return encoder, store, spec


def import_embeddings_offline(
    folder: Path,
    collection: str,
    data_dir: Path | None,
    layout: Any,
    id_column: str | None,
    verify: int,
    min_cosine: float,
) -> ImportReport:
    """`xmr import-embeddings`: the folder's vectors into `collection`'s serving generation."""
    from app.config import Settings

    settings = Settings()
    encoder, store, _ = open_collection(settings, data_dir, collection)
    try:
        return import_embeddings(
            folder,
            store,
            encoder,
            layout,
            id_column,
            verify,
            settings.import_root,
            min_cosine,
        )
    finally:
        store.close()


def migrate_collections(
    data_dir: Path,
    to: str,
    collection: str | None,
    milvus_uri: str | None,
    samples: int,
) -> dict[str, tuple[str, MigrationReport]]:
    """Move one collection (or all) to the `to` backend: name -> (source backend, report)."""
    from app.config import Settings

    settings = Settings()
    source: IndexOptions = replace(
        settings.index_options(), backend="faiss" if to == "milvus" else "milvus"
    )
    if milvus_uri:
        source = replace(source, milvus_uri=milvus_uri)
    names = [collection] if collection else [DEFAULT_COLLECTION, *collection_names(data_dir)]
    reports: dict[str, tuple[str, MigrationReport]] = {}
    for name in names:
        folder, generation = serving_generation(data_dir, name)
        store_dir, namespace = folder.path(generation), namespace_of(name, generation)
        if stored_model(store_dir, source.database_url, namespace) is None:
            continue  # nothing indexed there yet
        reports[name] = (
            source.backend,
            migrate(
                store_dir,
                source,
                opposite(source, milvus_uri),
                samples,
                namespace,
            ),
        )
    return reports


def migrate_collections_to_database(
    data_dir: Path,
    database_url: str,
    collection: str | None,
    samples: int,
    blob_dir: Path | None,
) -> dict[str, tuple[str, MigrationReport]]:
    """Copy one collection's records (or every collection's) into PostgreSQL: name -> ("sqlite",
    report). A collection being re-embedded is refused: finish or cancel that first."""
    from index.catalog import open_catalog

    names = [collection] if collection else [DEFAULT_COLLECTION, *collection_names(data_dir)]
    reports: dict[str, tuple[str, MigrationReport]] = {}
    catalog = open_catalog(data_dir, database_url)
    try:
        for name in names:
            folder, generation = serving_generation(data_dir, name)
            state = folder.read()
            if state is not None and state.next is not None:
                raise StorageError(
                    f"collection {name} is being re-embedded: let it finish (or cancel it) first"
                )
            store_dir, namespace = folder.path(generation), namespace_of(name, generation)
            if stored_model(store_dir, None, namespace) is not None:
                reports[name] = (
                    "sqlite",
                    migrate_to_database(store_dir, database_url, namespace, samples, blob_dir),
                )
            if state is not None:  # the replicas learn the collection from the database
                catalog.create(state)
    finally:
        catalog.close()
    return reports
