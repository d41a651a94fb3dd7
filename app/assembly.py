"""Everything a running service holds (`Services`), assembled once at start-up and kept on
the FastAPI app's state."""

from __future__ import annotations

import logging
import resource
from dataclasses import dataclass

from app.config import Settings
from app.jobs.batch import BatchJob, Sources
from app.jobs.context import JobHandler
from app.jobs.duplicates import DuplicatesJob
from app.jobs.ledger import JobKind, JobLedger, open_ledger
from app.jobs.reindex import Reindexer
from app.jobs.runner import JobRunner
from app.jobs.staging import open_staging
from app.jobs.tagging import TaggingJob
from app.observability.metrics import CollectionGauges, ServiceState
from app.services.batcher import OnBatch
from app.services.collections import Limits
from app.services.encoding import EncodingService
from app.services.model_policy import AllowedModels, allowed_models
from app.services.models import ModelLoader, ModelPool
from app.services.registry import CollectionRegistry
from app.services.threads import Pools, run_in
from index import StorageError
from index.catalog import CollectionCatalog, open_catalog
from index.layout import ModelSpec
from index.records import database_problem
from models import Encoder
from models.ray_embedder import RayImageEmbedder

logger = logging.getLogger(__name__)

DATABASE_PROBE_S = 2  # how long /readyz waits for the database to answer


@dataclass
class Services:
    settings: Settings
    pools: Pools
    models: ModelPool
    collections: CollectionRegistry
    reindexer: Reindexer
    jobs: JobRunner
    job_store: JobLedger
    remote: RayImageEmbedder | None = None  # batch jobs' images embedded on a Ray cluster

    @classmethod
    async def start(
        cls,
        settings: Settings,
        encoder: Encoder | None = None,
        on_batch: OnBatch | None = None,
    ) -> Services:
        """Load the default model, open every collection, resume unfinished re-embeddings.

        `encoder`, if given, is used for the settings' model instead of loading it.
        """
        raise_descriptor_limit()
        pools = Pools.create(settings.decode_workers)
        job_store: JobLedger | None = None
        catalog: CollectionCatalog | None = None
        try:
            models = ModelPool(
                model_loader(settings, encoder),
                lambda loaded: encoding_service(settings, loaded, pools, on_batch),
                pools,
                settings.max_models,
            )
            database_url = settings.index_options().database_url
            job_store = await run_in(pools.store, open_ledger, settings.data_dir, database_url)
            catalog = await run_in(pools.store, open_catalog, settings.data_dir, database_url)
            reindexer = Reindexer(job_store, settings.encode_batch_size)
            limits = Limits(
                max_k=settings.max_k,
                max_metadata_bytes=settings.max_metadata_bytes,
                max_response_bytes=int(settings.max_response_mb * 2**20),
                duplicates_sync_limit=settings.duplicates_sync_limit,
                content_url_expiry_s=settings.s3_presign_expiry_s if settings.s3_presign else None,
                keep_gps=settings.keep_gps,
            )
            collections = CollectionRegistry(
                settings.data_dir,
                settings.index_options(),
                models,
                pools,
                limits,
                reindexer,
                policy=model_policy(settings),
                max_collections=settings.max_collections,
                export_root=settings.runtime_cache_dir,
                catalog=catalog,
            )
            await collections.open_all(default_spec(settings))
            models.started = True  # from now on, loads run beside the models that serve
            remote = ray_embedder(settings)
            jobs = job_runner(settings, job_store, collections, remote)
        except BaseException:
            if job_store is not None:
                job_store.close()
            if catalog is not None:
                catalog.close()
            pools.shutdown()
            raise
        if jobs.interrupted_at_start:
            logger.warning(
                "batch jobs interrupted by the last shutdown: %s", jobs.interrupted_at_start
            )
        return cls(settings, pools, models, collections, reindexer, jobs, job_store, remote)

    def metrics_state(self) -> ServiceState:
        """Loaded models, their queues, and each collection's model and indexes, for /metrics."""
        loaded = self.models.loaded()
        return ServiceState(
            models=[model_labels(m.encoder) for m in loaded],
            queues={
                (m.encoder.model_id, modality): depth
                for m in loaded
                for modality, depth in m.queue_depths().items()
            },
            query_caches={m.encoder.model_id: m.query_cache_stats() for m in loaded},
            collections=[
                CollectionGauges(c.name, c.state.current.model_id, c.store.index_info())
                for c in self.collections.all()
            ],
        )

    async def database_problem(self) -> str | None:
        """Why the shared database cannot be used now, in one line; None when it answers or
        there is none (SQLite in the data directory)."""
        url = self.settings.index_options().database_url
        if url is None:
            return None
        return await run_in(self.pools.store, database_problem, url, DATABASE_PROBE_S)

    async def snapshot_all(self) -> None:
        """Save every collection's changed indexes; one failing does not stop the others."""
        for collection in self.collections.all():
            try:
                await run_in(self.pools.store, collection.store.snapshot)
            except StorageError as e:
                logger.error("collection %s: %s", collection.name, e)

    async def stop(self) -> None:
        """Stop the background work, save the indexes, release files and threads."""
        try:
            await self.reindexer.stop()
            await self.jobs.stop()
            await self.models.close()
            await run_in(self.pools.store, self.collections.close)
        finally:
            self.job_store.close()
            self.pools.shutdown()
            if self.remote is not None:
                self.remote.close()


def ray_embedder(settings: Settings) -> RayImageEmbedder | None:
    """The Ray cluster batch jobs embed their images on (XMR_RAY_ADDRESS), connected to at the
    first job; None: on this replica's own model."""
    if settings.ray_address is None:
        return None
    return RayImageEmbedder(settings.ray_address, settings.ray_workers, settings.max_image_pixels)


def job_runner(
    settings: Settings,
    ledger: JobLedger,
    collections: CollectionRegistry,
    remote: RayImageEmbedder | None = None,
) -> JobRunner:
    """The job queue, with a handler for each kind of job it runs."""
    staging = open_staging(
        (settings.blob_dir or settings.data_dir) / "staging",
        settings.blob_url,
        settings.s3_endpoint_url,
        spool=settings.data_dir / "staging-spool",
    )
    sources = Sources(
        settings.import_root,
        max_file_bytes=int(settings.max_upload_mb * 2**20),  # one file, not a request
        staging=staging,
    )
    handlers: dict[JobKind, JobHandler] = {
        "batch": BatchJob(collections, sources, settings.encode_batch_size, remote),
        "duplicates": DuplicatesJob(collections),
        "classify": TaggingJob(collections),
    }
    return JobRunner(
        ledger,
        collections,
        handlers,
        staging=staging,
        import_root=settings.import_root,
        lease_s=settings.job_lease_s,
    )


def raise_descriptor_limit() -> None:
    """Let the process open as many files as the system allows it (the hard limit): each
    collection holds a few descriptors, and the usual soft limit is 1,024 or less."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError) as e:
            logger.warning("cannot raise the open-files limit from %d to %d: %s", soft, hard, e)


def model_labels(encoder: Encoder) -> dict[str, str]:
    """The labels of xmr_model_info, and per tower `<tower>_runtime`, `<tower>_precision`."""
    labels = {
        "model_id": encoder.model_id,
        "device": encoder.device,
        "runtime": encoder.runtime,
        "precision": encoder.precision,
    }
    for tower, run in encoder.tower_runs.items():
        labels |= {f"{tower}_runtime": run.runtime, f"{tower}_precision": run.precision}
    return labels


def default_spec(settings: Settings) -> ModelSpec:
    """The model the default collection follows."""
    return ModelSpec(settings.model, settings.pretrained, settings.precision)


def model_policy(settings: Settings) -> AllowedModels:
    """What API clients may name; open_clip's tag table is read here, once, at start-up."""
    from models.registry import list_bundled_models, pretrained_tags

    return allowed_models(
        settings.allowed_models, default_spec(settings), list_bundled_models(), pretrained_tags
    )


def model_loader(settings: Settings, preloaded: Encoder | None) -> ModelLoader:
    """Loads a model on the settings' device and runtime; `preloaded` stands for the default."""
    preloaded_spec = default_spec(settings)

    def load(spec: ModelSpec) -> Encoder:
        if preloaded is not None and spec == preloaded_spec:
            return preloaded
        from models import OpenClipEncoder  # torch and open_clip: only to load a model

        return OpenClipEncoder.load(
            spec.model, spec.pretrained, settings.load_options(spec.precision)
        )

    return load


def encoding_service(
    settings: Settings,
    encoder: Encoder,
    pools: Pools,
    on_batch: OnBatch | None,
) -> EncodingService:
    return EncodingService(encoder, settings.encoding_limits(), on_batch=on_batch, pools=pools)
