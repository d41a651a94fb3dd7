"""Everything a running service holds, built once at start-up and kept on app.state."""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from app.config import Settings
from app.services.encoding import EncodingService
from app.services.items import ItemService
from app.services.job_store import JobStore
from app.services.jobs import JobRunner
from app.services.search import SearchService
from app.services.threads import inference_pool, single_core_pool
from index import ItemStore
from models import Encoder

logger = logging.getLogger(__name__)


@dataclass
class Services:
    settings: Settings
    encoder: Encoder
    store: ItemStore
    encoding: EncodingService
    items: ItemService
    search: SearchService
    jobs: JobRunner
    job_store: JobStore
    store_pool: ThreadPoolExecutor

    @classmethod
    def build(
        cls,
        settings: Settings,
        encoder: Encoder | None = None,
        on_batch: Callable[[str, int, float], None] | None = None,
    ) -> Services:
        """Load the model (unless given) and open the data directory; raises on any mismatch.

        The model is loaded in the inference thread that will run it (app.services.threads).
        """
        inference = inference_pool()
        try:
            if encoder is None:
                from models import OpenClipEncoder  # torch and open_clip: only to load a model

                encoder = inference.submit(
                    OpenClipEncoder.load,
                    settings.model,
                    settings.pretrained,
                    settings.device,
                    settings.model_cache_dir,
                    settings.precision,
                    settings.runtime,
                    settings.runtime_cache_dir,
                ).result()
            store = ItemStore(
                settings.data_dir, encoder.model_id, encoder.dim, settings.index_options()
            )
        except BaseException:
            inference.shutdown(wait=False)
            raise
        store_pool = single_core_pool(settings.decode_workers, "xmr-store")
        encoding = EncodingService(
            encoder,
            settings.max_image_pixels,
            settings.max_batch,
            settings.max_queue,
            decode_workers=settings.decode_workers,
            jpeg_draft=settings.jpeg_draft,
            max_decoded_bytes=int(settings.max_decoded_image_mb * 2**20),
            on_batch=on_batch,
            inference=inference,
        )
        items = ItemService(store, encoding, store_pool, settings.max_metadata_bytes)
        job_store = JobStore(settings.data_dir / "jobs.sqlite3")
        jobs = JobRunner(
            job_store,
            items,
            staging_dir=settings.data_dir / "staging",
            import_root=settings.import_root,
            batch_size=settings.encode_batch_size,
            max_file_bytes=int(settings.max_upload_mb * 1024 * 1024),  # one file, not a request
        )
        if jobs.interrupted_at_start:
            logger.warning(
                "batch jobs interrupted by the last shutdown: %s", jobs.interrupted_at_start
            )
        search = SearchService(
            store,
            encoding,
            settings.max_k,
            store_pool,
            max_response_bytes=int(settings.max_response_mb * 1024 * 1024),
        )
        return cls(settings, encoder, store, encoding, items, search, jobs, job_store, store_pool)

    def close(self) -> None:
        """Save the indexes and release files and threads."""
        try:
            self.encoding.close()
            self.store_pool.shutdown(wait=True)
            self.store.close()
        finally:
            self.job_store.close()
