"""Break each promise on purpose, one line at a time, and check that a test notices.

`make mutation-test` (or `python -m scripts.mutation_test`) copies the tracked files to a scratch
folder, checks that the guarding tests pass there untouched, then for each break in BREAKS
applies it, runs only the tests that guard that promise, and restores the file. It fails if any
break survives (its tests still pass) or cannot be applied (the code it names has moved: update
the break). `--only NAME` runs the breaks whose name contains NAME; `--list` prints them.
"""

from __future__ import annotations

import argparse
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Break:
    name: str  # the promise it breaks, as RELIABILITY.md or README.md states it
    file: str
    find: str  # must occur exactly once in `file`
    replace: str
    tests: tuple[str, ...]  # pytest node ids of the tests that guard the promise


STORE = "tests/index/test_store.py::"
HOSTILE = "tests/reliability/test_hostile.py::"
POWER = "tests/reliability/test_power_loss.py::"
RUNTIMES = "tests/models/test_runtimes.py::"
REINDEX = "tests/app/test_reindex.py::"
TAGGING = "tests/app/test_tagging_writes.py::"
SHARED = "tests/reliability/test_shared_process.py::"
PHOTOS = "tests/app/test_photos.py::"

BREAKS: tuple[Break, ...] = (
    Break(
        "a bulk load builds each index it changed once, at its end, as its size calls for",
        "index/store.py",
        "            bulk.finish(os.cpu_count() or 1)",
        "            self._follower.replay_to(self.log.current_seq())",
        (
            "tests/index/test_approximate.py::"
            "test_a_bulk_load_builds_each_index_once_at_the_end_and_saves_it",
        ),
    ),
    Break(
        "a product-quantized index's candidates are re-ranked by their exact cosine",
        "index/refine.py",
        "    return max(k, min(k * REFINE_FACTOR, MAX_REFINED))",
        "    return k",
        (
            "tests/index/test_approximate.py::"
            "test_a_product_quantized_index_is_reranked_by_exact_cosine",
        ),
    ),
    Break(
        "a broad filter is checked on the search's candidates, not by listing all its matches",
        "index/search.py",
        "            kept = self._post_filtered(kind, index, queries, k, depth, where)",
        "            kept = None",
        (
            "tests/index/test_approximate.py::"
            "test_a_broad_filter_is_checked_on_the_candidates_unless_it_excludes_their_neighbourhood",
        ),
    ),
    Break(
        "a broad filter's candidates are kept only where the records say they match",
        "index/search.py",
        "        keep = np.isin(labels, self._records.matching_among(kind, where, candidates))",
        "        keep = labels >= 0",
        (
            "tests/index/test_approximate.py::"
            "test_a_broad_filter_is_checked_on_the_candidates_unless_it_excludes_their_neighbourhood",
        ),
    ),
    Break(
        "the log is read in pages that start where the last one ended (no sort per page)",
        "index/sqlite_records.py",
        '"ORDER BY seq, label LIMIT ?",',
        '"ORDER BY label LIMIT ?",',
        (STORE + "test_reading_the_log_page_by_page_costs_what_one_read_costs",),
    ),
    Break(
        "a snapshot holds the write lock while it copies the index, not while it serializes",
        "index/vectors.py",
        "            copy = faiss.clone_index(self._index)\n"
        "        return lambda: faiss.serialize_index(copy).tobytes()",
        "            payload = faiss.serialize_index(self._index).tobytes()\n"
        "        return lambda: payload",
        (STORE + "test_a_snapshot_holds_the_write_lock_for_a_copy_only",),
    ),
    Break(
        "an index build trains on a sample drawn from every chunk alike",
        "index/vectors.py",
        "            drawn = rng.random(len(rest)) * position < size",
        "            drawn = np.zeros(len(rest), dtype=bool)",
        (
            "tests/index/test_approximate.py::test_the_training_sample_is_drawn_from_every_chunk_alike",
        ),
    ),
    Break(
        "vectors sent to POST /v1/vectors are normalized on the way in",
        "app/jobs/intake.py",
        "        block = staging.add(unit.tobytes())",
        "        block = staging.add(np.asarray(vectors, dtype=np.float32).tobytes())",
        (
            "tests/app/routes/test_vectors.py::"
            "test_json_vectors_are_stored_normalized_and_each_is_found_by_its_own_text",
        ),
    ),
    Break(
        "float16 record vectors are read back normalized",
        "index/records.py",
        "    return vectors / np.where(norms > 0, norms, 1.0)",
        "    return vectors",
        (
            "tests/index/test_contracts.py::"
            "test_float16_and_float32_vectors_read_back_alike_even_mixed",
        ),
    ),
    # -- durability ---------------------------------------------------------------------------
    Break(
        "xmr migrate verifies the target's top-10 against the source's",
        "index/migrate.py",
        "got = _top(after, kind, baseline.queries[kind])",
        "got = baseline.expected[kind]",
        ("tests/index/test_migrate.py::test_a_target_that_ranks_differently_is_reported",),
    ),
    Break(
        "writes after a snapshot are replayed into it at start-up (not a full rebuild)",
        "index/faiss_backend.py",
        "        for labels, vectors in log.vectors_after("
        "kind, info.seq, self.dim, up_to_seq=up_to_seq):\n"
        "            index.add(labels, vectors)\n"
        "        if _disagrees(",
        "        if _disagrees(",
        (STORE + "test_restart_restores_everything_from_snapshot_and_replay",),
    ),
    Break(
        "snapshots are checksummed: a damaged file is rebuilt from the records",
        "index/snapshots.py",
        "if hashlib.sha256(payload).hexdigest() != info.sha256:",
        "if False:",
        (STORE + "test_a_snapshot_with_a_changed_byte_is_refused_by_its_checksum",),
    ),
    Break(
        "old snapshot files do not accumulate",
        "index/snapshots.py",
        "    _remove_other_snapshot_files(folder, kind, keep=name)\n",
        "",
        (STORE + "test_snapshot_files_do_not_accumulate",),
    ),
    Break(
        "image bytes are synced before the record that points at them is committed",
        "index/files.py",
        "            f.flush()\n            os.fsync(f.fileno())\n",
        "            f.flush()\n",
        (POWER + "test_acknowledged_writes_and_snapshots_are_synced_in_order",),
    ),
    Break(
        "a file is published by rename only after it is synced",
        "index/files.py",
        "            os.fsync(f.fileno())\n        os.replace(tmp, path)\n",
        "        os.replace(tmp, path)\n        os.fsync(os.open(path, os.O_RDONLY))\n",
        (POWER + "test_acknowledged_writes_and_snapshots_are_synced_in_order",),
    ),
    Break(
        "SQLite commits are synced (WAL, synchronous=FULL)",
        "index/sqlite.py",
        'conn.execute("PRAGMA synchronous=FULL")',
        'conn.execute("PRAGMA synchronous=NORMAL")',
        (POWER + "test_sqlite_commits_are_synced_to_disk",),
    ),
    Break(
        "a different model never reads another model's vectors",
        "index/sqlite_records.py",
        'if stored["model"] != model_id or int(stored["dim"]) != dim:',
        "if False:",
        (STORE + "test_other_model_is_refused",),
    ),
    Break(
        "a deleted item is gone from search at once",
        "index/serving.py",
        "            index.remove(result.removed[kind])\n",
        "",
        (STORE + "test_delete_removes_from_search_at_once",),
    ),
    Break(
        "a failed write changes nothing (the transaction rolls back)",
        "index/sqlite.py",
        '                conn.execute("ROLLBACK")\n',
        '                conn.execute("COMMIT")\n',
        (STORE + "test_a_failure_after_rows_are_written_rolls_all_of_them_back",),
    ),
    Break(
        "SQLite's own disk-full error is a 507, not a 500",
        "index/sqlite.py",
        "            if conn.in_transaction:  #",
        "            if True:  #",
        (STORE + "test_sqlite_running_out_of_space_mid_write_changes_nothing",),
    ),
    Break(
        "SIGTERM: requests in flight finish and the batch job is marked interrupted",
        "app/jobs/runner.py",
        '            status: JobStatus = "queued" if self._ledger.shared else "interrupted"',
        '            status: JobStatus = "queued" if self._ledger.shared else "failed"',
        (
            "tests/app/test_server_process.py::"
            "test_sigterm_finishes_requests_in_flight_and_interrupts_the_batch_job",
        ),
    ),
    Break(
        "the snapshot loop goes on after any error",
        "app/main.py",
        "        except Exception:\n            logger.exception(",
        "        except ZeroDivisionError:\n            logger.exception(",
        (HOSTILE + "test_the_snapshot_loop_survives_any_error",),
    ),
    # -- precision ----------------------------------------------------------------------------
    Break(
        "bf16 vectors stay within cosine 0.9999 of fp32",
        "models/towers.py",
        "    features = features.float()\n",
        "    features = features.to(torch.float8_e4m3fn).float()\n",
        (
            "tests/models/test_open_clip_encoder.py::"
            "test_bf16_keeps_a_trained_models_vectors_within_the_documented_cosine",
        ),
    ),
    Break(
        "another runtime serves only while its vectors equal PyTorch fp32's, else PyTorch runs",
        "models/runtimes/selection.py",
        "            if agreement >= needed:\n",
        "            if True:\n",
        (RUNTIMES + "test_an_unequal_export_falls_back_to_pytorch_with_a_warning",),
    ),
    Break(
        "a damaged cached export is exported again, not given up on",
        "models/runtimes/selection.py",
        "    for replace in (False, True):\n",
        "    for replace in (False,):\n",
        (RUNTIMES + "test_a_damaged_cached_export_is_exported_again",),
    ),
    Break(
        "OpenVINO's mapped graphs are handed back once it has packed its weights",
        "models/runtimes/selection.py",
        "                page_out_mappings(folder)\n",
        "",
        (RUNTIMES + "test_openvino_leaves_the_files_it_packed_its_weights_from_paged_out",),
    ),
    Break(
        "where each tower runs in its own runtime, PyTorch drops the text tower's weights",
        "models/runtimes/selection.py",
        '        drop_tower(model, "text")\n',
        "",
        (RUNTIMES + "test_each_tower_in_its_own_runtime_holds_only_its_own_weights",),
    ),
    Break(
        "OpenVINO compiles only the towers it runs",
        "models/runtimes/open_vino.py",
        '"CPU", config) for tower in towers\n',
        '"CPU", config) for tower in TOWERS\n',
        (RUNTIMES + "test_openvino_compiles_only_the_towers_it_runs",),
    ),
    Break(
        "no dependency runs in FastAPI's thread pool",
        "app/deps.py",
        "async def get_services(request: Request) -> Services:",
        "def get_services(request: Request) -> Services:",
        ("tests/app/test_dependencies.py::test_no_endpoint_or_dependency_is_run_in_a_thread",),
    ),
    Break(
        "a query asked again comes from the query cache",
        "app/services/encoding.py",
        "        if not self._query_cache.enabled:\n",
        "        if True:\n",
        (
            "tests/app/services/test_query_cache.py::"
            "test_a_query_asked_again_skips_the_model_and_gets_the_same_vector",
        ),
    ),
    Break(
        "the query cache keeps a copy, not a view of the batch",
        "app/services/query_cache.py",
        "        stored = vector.copy()",
        "        stored = vector",
        (
            "tests/app/services/test_query_cache.py::"
            "test_a_cached_vector_is_a_read_only_copy_and_zero_bytes_keeps_nothing",
        ),
    ),
    Break(
        "fp16 weights whose vectors differ give way to the fp32 weights",
        "models/runtimes/selection.py",
        "                break  # only these weights are coarser: exporting again would not help\n",
        "                return towers\n",
        (
            RUNTIMES
            + "test_openvino_bf16_runs_fp16_weights_where_they_pass_and_fp32_weights_where_not",
        ),
    ),
    # -- bad input ----------------------------------------------------------------------------
    Break(
        "an image that cannot be decoded is a 422",
        "app/errors.py",
        "    (ImageDecodeError, 422),\n",
        "",
        ("tests/app/routes/test_errors.py::test_bad_requests_get_a_clear_4xx",),
    ),
    Break(
        "decompression bombs are refused before decoding",
        "models/images.py",
        "    if header.pixels > max_pixels:",
        "    if False:",
        ("tests/models/test_images.py::test_decompression_bomb_is_refused_before_decoding",),
    ),
    Break(
        "a body over the limit is cut off with 413 while it streams",
        "app/middleware.py",
        "                if received > limit:",
        "                if False:",
        ("tests/app/test_middleware.py::test_chunked_body_without_length_gets_413",),
    ),
    Break(
        "a body that stalls gets 408",
        "app/middleware.py",
        "message = await asyncio.wait_for(receive(), self.idle_timeout_s)",
        "message = await receive()",
        (HOSTILE + "test_a_stalled_body_is_answered_408_and_the_connection_freed",),
    ),
    Break(
        "metadata nested too deep is refused at the door",
        "index/metadata.py",
        "            if depth > MAX_METADATA_DEPTH:",
        "            if False:",
        (HOSTILE + "test_metadata_nested_too_deep_is_refused_on_every_route",),
    ),
    Break(
        "metadata larger than XMR_MAX_METADATA_BYTES is refused",
        "index/metadata.py",
        "    if size > max_bytes:",
        "    if False:",
        (HOSTILE + "test_metadata_larger_than_the_limit_is_refused",),
    ),
    Break(
        "a record that cannot be returned does not break search",
        "index/sqlite_records.py",
        "        metadata=load_stored_metadata(metadata),",
        "        metadata=json.loads(metadata) if metadata is not None else None,",
        (HOSTILE + "test_a_record_stored_by_an_older_release_cannot_break_search",),
    ),
    Break(
        "stored metadata with a number that is not finite is not returned",
        "index/metadata.py",
        "_DECODER = json.JSONDecoder(parse_constant=_refuse_constant, parse_float=_finite_float)",
        "_DECODER = json.JSONDecoder()",
        (
            "tests/index/test_metadata.py::"
            "test_stored_metadata_is_refused_exactly_where_the_full_walk_refuses_it",
        ),
    ),
    Break(
        "stored metadata nested too deep is not returned",
        "index/metadata.py",
        '        if text.count("{") + text.count("[") > MAX_METADATA_DEPTH:',
        "        if False:",
        (
            "tests/index/test_metadata.py::"
            "test_stored_metadata_is_refused_exactly_where_the_full_walk_refuses_it",
            HOSTILE + "test_a_record_stored_by_an_older_release_cannot_break_search",
        ),
    ),
    Break(
        "a response larger than XMR_MAX_RESPONSE_MB is refused",
        "app/services/search.py",
        "        if size > self.max_response_bytes:",
        "        if False:",
        (HOSTILE + "test_a_batch_search_cannot_build_a_huge_response",),
    ),
    Break(
        "errors quote only a short excerpt of the input",
        "index/errors.py",
        "    quoted = json.dumps(text[:limit])",
        "    quoted = json.dumps(text)",
        (HOSTILE + "test_errors_quote_a_short_escaped_excerpt_of_the_input",),
    ),
    Break(
        "the text log keeps one event on one line",
        "app/observability/logs.py",
        "        record.msg, record.args = _CONTROL_CHARS.sub(_escape, record.getMessage()), None",
        "        record.msg, record.args = record.getMessage(), None",
        (HOSTILE + "test_the_text_log_format_keeps_one_event_on_one_line",),
    ),
    Break(
        "a client's path is cut and escaped in every log line",
        "app/observability/logs.py",
        '    cut = value[:MAX_LOGGED_FIELD] + ("…" if len(value) > MAX_LOGGED_FIELD else "")',
        "    cut = value",
        (HOSTILE + "test_a_newline_in_the_path_cannot_forge_a_log_line",),
    ),
    Break(
        "image_path files are opened without following links",
        "app/jobs/import_files.py",
        "_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC",
        "_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC",
        (HOSTILE + "test_a_directory_swapped_for_a_link_never_leads_outside",),
    ),
    Break(
        "only regular files are read from the import root",
        "app/jobs/import_files.py",
        "    if not stat.S_ISREG(info.st_mode):",
        "    if False:",
        (HOSTILE + "test_fifos_special_files_and_os_errors_fail_their_item_only",),
    ),
    Break(
        "an item's OS error fails that item only",
        "app/jobs/import_files.py",
        "        descriptor = os.open(parts[-1], _FILE_FLAGS, dir_fd=directory)\n"
        "    except OSError as e:\n        raise InvalidInputError(_reason(e)) from e\n",
        "        descriptor = os.open(parts[-1], _FILE_FLAGS, dir_fd=directory)\n",
        (HOSTILE + "test_fifos_special_files_and_os_errors_fail_their_item_only",),
    ),
    Break(
        "batch uploads are staged in a few files, not a file and an fsync per item",
        "app/jobs/staging.py",
        "            if self._file.tell() < self._chunk_bytes:",
        "            if False:",
        (HOSTILE + "test_a_large_base64_batch_is_accepted_in_seconds",),
    ),
    Break(
        "decoded image bytes are bounded",
        "models/images.py",
        "    if header.decoded_bytes > max_decoded_bytes:",
        "    if False:",
        ("tests/models/test_images.py::test_decoded_bytes_are_bounded_by_the_bytes_of_a_pixel",),
    ),
    Break(
        "a text query never waits behind a large image decode",
        "app/services/encoding.py",
        "            return read_header(data).pixels > LARGE_IMAGE_PIXELS",
        "            return False",
        (HOSTILE + "test_a_text_query_never_waits_behind_a_large_decode",),
    ),
    Break(
        "an encoded slash is part of an item id",
        "app/routers/items.py",
        '    raw: bytes | None = request.scope.get("raw_path")',
        "    raw: bytes | None = None",
        (HOSTILE + "test_odd_ids_through_every_item_route_and_the_client",),
    ),
    # -- access -------------------------------------------------------------------------------
    Break(
        "with XMR_API_KEY set, every route but the public ones needs the key",
        "app/middleware.py",
        "        return any([key_matches(supplied, key) for key in self._keys])",
        "        return True",
        ("tests/app/test_middleware.py::test_every_route_but_health_needs_the_key",),
    ),
    Break(
        "the page and its files answer without the key",
        "app/main.py",
        '            public_prefixes=("/static/",),',
        "            public_prefixes=(),",
        ("tests/app/test_middleware.py::test_the_page_and_its_files_are_public_and_hold_no_data",),
    ),
    Break(
        "a web page of another origin cannot write",
        "app/middleware.py",
        '        if scope["type"] == "http" and scope["method"] in STATE_CHANGING:',
        "        if False:",
        (HOSTILE + "test_a_foreign_page_cannot_write",),
    ),
    Break(
        "only trusted Host names are answered (DNS rebinding)",
        "app/config.py",
        "        if is_loopback(self.host):",
        "        if False:",
        (HOSTILE + "test_a_foreign_host_header_is_refused",),
    ),
    Break(
        "the page and the docs forbid framing",
        "app/middleware.py",
        '        (b"x-frame-options", b"DENY"),\n',
        "",
        (HOSTILE + "test_page_and_docs_forbid_framing_and_foreign_scripts",),
    ),
    Break(
        "a full encode queue answers 429 at once",
        "app/services/batcher.py",
        "            if not wait_for_room:\n                raise OverloadedError(",
        "            if False:\n                raise OverloadedError(",
        ("tests/app/test_backpressure.py::test_overload_gets_429_at_once_and_others_succeed",),
    ),
    # -- search ---------------------------------------------------------------------------------
    Break(
        "a filter on an approximate index finds every matching item",
        "index/search.py",
        "        elif index.exact:\n",
        "        elif True:\n",
        (
            "tests/index/test_approximate.py::test_filters_find_every_matching_item_on_every_structure",
        ),
    ),
    Break(
        "a search reaches past an item deleted while it ran: its page stays full",
        "index/search.py",
        "            if gone == 0 or reach >= MAX_REACH:",
        "            if True:",
        (STORE + "test_a_search_reaches_past_an_item_deleted_while_it_ran",),
    ),
    Break(
        "paging returns the next results, not the first again",
        "index/search.py",
        "            pages.append(found[offset : offset + k])",
        "            pages.append(found[:k])",
        ("tests/app/test_search_filters.py::test_pages_follow_each_other",),
    ),
    # -- steered queries ------------------------------------------------------------------------
    Break(
        "a replaced or deleted item's keyword row goes with it (no row outlives its item)",
        "index/sqlite_records.py",
        '        self._conn.execute("DELETE FROM items WHERE label = ?", (label,))\n'
        "        keywords.remove(self._conn, [label])\n",
        '        self._conn.execute("DELETE FROM items WHERE label = ?", (label,))\n',
        ("tests/index/test_keywords.py::test_keyword_index_follows_writes_and_survives_reopening",),
    ),
    Break(
        "relative fusion min-max normalizes each ranking before weighting it",
        "index/fusion.py",
        "    return [(label, (score - low) / (high - low)) for label, score in ranking]",
        "    return [(label, score) for label, score in ranking]",
        (
            "tests/index/test_keywords.py::test_relative_fusion_normalizes_each_list_then_weights_by_alpha",
        ),
    ),
    Break(
        "nothing a user types is read as FTS5 syntax",
        "index/sqlite_keywords.py",
        """    expression = " OR ".join(_phrases(wanted))""",
        """    expression = " OR ".join(query.include.split())""",
        (
            "tests/app/routes/test_keywords.py::test_keyword_and_hybrid_search_find_an_exact_rare_token_that_vectors_rank_low",
        ),
    ),
    Break(
        "near-duplicate groups are an exact range search on Flat, however large",
        "index/duplicates.py",
        "            pending, k = pending[full], min(k * 2, size)",
        "            return",
        (
            "tests/index/test_duplicates.py::test_a_group_larger_than_the_first_search_is_found_whole",
        ),
    ),
    Break(
        "dedup_threshold at indexing does not store an image that similar to a stored one",
        "index/duplicates.py",
        "            if best_id is not None and best >= threshold:",
        "            if best_id is not None and best > 1.5:",
        ("tests/app/test_item_jobs.py::test_dedup_at_indexing_returns_the_existing_id",),
    ),
    Break(
        "a tagging job resumes from its cursor, it does not label items twice",
        "app/jobs/tagging.py",
        "        cursor, done = job.view.cursor, job.view.done",
        "        cursor, done = 0, 0",
        (
            "tests/app/test_item_jobs.py::test_tagging_writes_the_best_label_into_metadata_and_resumes",
        ),
    ),
    # -- collections and re-embedding ---------------------------------------------------------
    Break(
        "items deleted during a re-embedding are deleted in the new generation too",
        "app/jobs/reindex.py",
        "        for item_id in new_ids - old_ids:",
        "        for item_id in set[str]():",
        (REINDEX + "test_searches_run_throughout_a_reindex_and_writes_are_carried_over",),
    ),
    Break(
        "a re-embedding resumes from its cursor after kill -9, it does not start over",
        "app/jobs/reindex.py",
        "        cursor = await run_in(pool, read_cursor, folder)",
        "        cursor = ReindexCursor()",
        (
            "tests/reliability/test_reindex_crash.py::test_kill_during_a_reindex_resumes_where_it_stopped",
        ),
    ),
    Break(
        "a cancelled re-embedding leaves the collection as it was (its generation is removed)",
        "app/jobs/reindex.py",
        "            await run_in(pool, collection.folder.remove, generation)",
        "            pass",
        (REINDEX + "test_a_cancelled_reindex_leaves_the_collection_as_it_was",),
    ),
    # -- one process shared by many clients (issue 23) -----------------------------------------
    Break(
        "a tag is merged into the item's current metadata, never its stale copy",
        "index/sqlite_records.py",
        "                merged = {**current, **tag}",
        "                merged = {**tag}",
        (TAGGING + "test_a_write_during_tagging_is_never_overwritten",),
    ),
    Break(
        "tagging never pushes metadata past XMR_MAX_METADATA_BYTES",
        "index/sqlite_records.py",
        '                if len(text.encode("utf-8")) > max_bytes:',
        "                if False:",
        (TAGGING + "test_tagging_never_pushes_metadata_past_the_limit",),
    ),
    Break(
        "tagging into a field items hold already is a 409 unless overwrite",
        "app/services/tagging.py",
        "    if holding:",
        "    if False:",
        (TAGGING + "test_tagging_into_a_field_items_hold_is_a_409_unless_overwrite",),
    ),
    Break(
        "API clients may name only the models XMR_ALLOWED_MODELS lists",
        "app/services/registry.py",
        "        self.policy.check(spec)\n        await self.refresh()",
        "        await self.refresh()",
        (SHARED + "test_models_outside_the_allowed_list_are_refused_at_once",),
    ),
    Break(
        "models load on their own thread, never the inference thread",
        "app/services/models.py",
        "pool = self._pools.load if self.started else self._pools.inference",
        "pool = self._pools.inference",
        (SHARED + "test_a_model_loads_beside_the_model_that_serves",),
    ),
    Break(
        "a checkpoint is hashed only if it is a regular file of some size",
        "models/registry.py",
        "if not stat.S_ISREG(info.st_mode) or info.st_size == 0:",
        "if False:",
        (
            SHARED
            + "test_hashing_a_checkpoint_reads_regular_files_only_and_no_more_than_their_size",
        ),
    ),
    Break(
        "a load that fails is a 422, never a 500",
        "app/services/models.py",
        "        except Exception as e:  # the detail (paths, library internals) stays in the log",
        "        except KeyboardInterrupt as e:",
        (SHARED + "test_the_allowed_list_takes_models_tags_and_literal_paths",),
    ),
    Break(
        "exports of models no collection uses are removed",
        "app/services/registry.py",
        "            await self._remove_unused_exports(_model_ids(collection.state))",
        "            pass",
        (SHARED + "test_exports_of_a_model_no_collection_uses_are_removed",),
    ),
    Break(
        "a model that serves a collection is never evicted for background work",
        "app/services/models.py",
        "idle = [m for m in idle if m.spec not in serving]",
        "idle = list(idle)",
        (SHARED + "test_a_reindex_waits_for_a_model_slot_instead_of_evicting_a_serving_model",),
    ),
    Break(
        "a text is cut to what reaches the context before it is tokenized",
        "models/open_clip_encoder.py",
        "return self._token_rows([fit_to_context(text, context, longest) for text in texts])",
        "return self._token_rows(list(texts))",
        (SHARED + "test_a_text_of_one_long_word_is_answered_at_once",),
    ),
    Break(
        "a text cut at the context ends with the end token, as open_clip's own rows do",
        "models/text.py",
        "                ids[-1] = end",
        "                pass",
        ("tests/models/test_text.py::test_rows_built_without_torch_hold_open_clips_own_ids",),
    ),
    Break(
        "a route's copy keeps every answer the route declares (the OpenAPI document)",
        "app/routers/__init__.py",
        'if name not in ("self", "path", "endpoint", "dependencies", "operation_id")',
        'if name not in ("self", "path", "endpoint", "dependencies", "operation_id", "responses")',
        (
            "tests/app/test_routing.py::"
            "test_the_answers_a_route_declares_are_documented_under_both_mountings",
        ),
    ),
    Break(
        "every text field on every route has the same limit",
        "app/schemas/items.py",
        "    texts: list[QueryText] = Field(..., min_length=1, max_length=1024)",
        "    texts: list[str] = Field(..., min_length=1, max_length=1024)",
        (SHARED + "test_every_text_field_has_the_same_limit",),
    ),
    Break(
        "near-duplicate thresholds start at 0.5",
        "app/services/duplicates.py",
        "if not MIN_DUPLICATE_THRESHOLD <= self.threshold <= 1.0:",
        "if not -1.0 <= self.threshold <= 1.0:",
        (SHARED + "test_duplicates_below_the_lowest_threshold_are_a_422",),
    ),
    Break(
        "a near-duplicate scan is bounded by neighbours per item",
        "index/duplicates.py",
        "if full.any() and k > MAX_NEIGHBOURS:",
        "if False:",
        (SHARED + "test_a_duplicates_scan_past_its_bounds_is_a_clear_422",),
    ),
    Break(
        "a browser's cross-site request is refused",
        "app/middleware.py",
        'if headers.get(b"sec-fetch-site", b"").lower() != b"cross-site":',
        'if headers.get(b"sec-fetch-site", b"").lower() != b"never":',
        (SHARED + "test_cross_site_requests_from_a_browser_are_refused",),
    ),
    Break(
        "classify's form parses labels as strictly as the JSON route",
        "app/routers/classify.py",
        "        value = strict_json(raw)",
        '        value = __import__("json").loads(raw)',
        (SHARED + "test_classify_forms_have_the_json_routes_limits",),
    ),
    Break(
        "templates are at most 1,000 characters on every classify route",
        "app/services/classify.py",
        "    if len(template) > MAX_TEMPLATE_CHARS:",
        "    if False:",
        (SHARED + "test_classify_forms_have_the_json_routes_limits",),
    ),
    Break(
        "the label-vector cache is bounded in bytes",
        "app/services/classify.py",
        "while self.bytes > self._max_bytes and self._vectors:",
        "while False:",
        (SHARED + "test_the_label_vector_cache_is_bounded_in_bytes",),
    ),
    Break(
        "collections are capped by XMR_MAX_COLLECTIONS",
        "app/services/registry.py",
        "if len(self._collections) >= self.max_collections:",
        "if False:",
        (SHARED + "test_collections_are_capped_by_the_setting",),
    ),
    Break(
        "a failed create leaves no folder to come back at the next start",
        "app/services/registry.py",
        "                await run_in(self.pools.store, folder.delete)\n"
        "                if out_of_descriptors(e):",
        "                if out_of_descriptors(e):",
        (SHARED + "test_a_create_that_runs_out_of_descriptors_is_a_503_and_leaves_nothing",),
    ),
    Break(
        "deleting a collection waits for the searches on it",
        "app/services/registry.py",
        "            await collection.close_when_unused()",
        "            collection.closed = True",
        (SHARED + "test_deleting_a_collection_waits_for_the_searches_on_it",),
    ),
    Break(
        "integers in a filter fit in 64 bits (a 422, not an OverflowError)",
        "index/filters.py",
        "if isinstance(value, int) and not -(2**63) <= value < 2**63:",
        "if False:",
        (SHARED + "test_integers_beyond_64_bits_in_a_filter_are_a_422",),
    ),
    Break(
        "an unhandled error is a JSON 500 and the connection stays open",
        "app/main.py",
        "    app.add_middleware(UnhandledErrorMiddleware)\n",
        "",
        (SHARED + "test_an_unhandled_error_is_a_json_500_on_a_connection_that_stays_open",),
    ),
    Break(
        "the OpenAPI schema is made before the app is ready",
        "app/main.py",
        "        app.url_path_for(UNNAMED_ROUTE)\n    app.openapi()\n",
        "        app.url_path_for(UNNAMED_ROUTE)\n",
        ("tests/app/test_dependencies.py::test_the_openapi_schema_is_made_before_requests_wait",),
    ),
    Break(
        "what the event loop reads of a store takes no write lock",
        "index/rebuild.py",
        "        return {kind: spec for kind, (spec, _, _) in self._builds.copy().items()}\n",
        "        with self._serving.lock:\n"
        "            return {kind: spec for kind, (spec, _, _) in self._builds.copy().items()}\n",
        (SHARED + "test_reads_on_the_event_loop_never_wait_for_the_write_lock",),
    ),
    Break(
        "error bodies hold no server paths",
        "app/services/errors.py",
        '        text = _SERVER_PATH.sub("<path>", text)',
        "        pass",
        (SHARED + "test_public_messages_hold_no_server_path",),
    ),
    Break(
        "XMR_ADMIN_KEY guards collections and tagging",
        "app/deps.py",
        "if not key_matches(supplied, settings.admin_key.get_secret_value().encode()):",
        "if False:",
        (SHARED + "test_the_admin_key_guards_collections_and_tagging",),
    ),
    Break(
        "the model's time of a call is taken on the inference thread, apart from the hand-off",
        "app/services/batcher.py",
        "self._on_batch(BatchTimes(self.name, size, seconds, model_seconds))",
        "self._on_batch(BatchTimes(self.name, size, seconds, seconds))",
        (
            "tests/app/services/test_batcher.py::"
            "test_each_model_call_reports_the_model_s_own_time_apart_from_the_hand_off",
        ),
    ),
    Break(
        "Server-Timing says the model's share of a request",
        "app/services/batcher.py",
        "            piece.request.model_seconds += model_seconds\n",
        "",
        (
            "tests/app/test_observability.py::"
            "test_server_timing_says_the_model_s_share_of_a_request",
            "tests/app/services/test_batcher.py::"
            "test_a_caller_s_model_time_is_that_of_every_batch_that_carried_its_items",
        ),
    ),
    Break(
        "Server-Timing says the index's share of a search",
        "app/services/search.py",
        "        add_index_seconds(seconds)\n",
        "",
        (
            "tests/app/test_observability.py::"
            "test_server_timing_says_the_index_s_share_of_a_search",
            "tests/app/test_observability.py::"
            "test_server_timing_says_the_model_s_share_of_a_request",
        ),
    ),
    Break(
        "a large request is encoded a batch at a time, in turn with other lanes",
        "app/services/batcher.py",
        "count = min(self._max_batch - size, request.left, share)",
        "count = request.left",
        (
            "tests/app/services/test_batcher.py::"
            "test_a_large_request_is_encoded_a_batch_at_a_time_in_turn_with_other_lanes",
        ),
    ),
    Break(
        "open_clip's word cache is bounded",
        "models/open_clip_encoder.py",
        "        bound_word_cache(tokenizer)\n",
        "",
        ("tests/models/test_text.py::test_the_word_cache_is_bounded",),
    ),
    Break(
        "python -m app starts with another XMR_MODEL than the data's (default re-embeds)",
        "app/preflight.py",
        "    return None  # default serves its vectors and re-embeds (app.services.registry)",
        "    return 'another model' if (settings.data_dir / 'records.sqlite3').exists() else None",
        (SHARED + "test_python_m_app_started_with_another_model_serves_and_reembeds",),
    ),
    # -- several replicas on one PostgreSQL (issue 25) -----------------------------------------
    Break(
        "a write acknowledged by one replica is found by the next search on any other",
        "index/search.py",
        "        self.catch_up()\n        reach = 0",
        "        reach = 0",
        (
            "tests/index/test_shared_store.py::test_a_write_on_one_is_found_by_the_next_search_on_the_other",
        ),
    ),
    Break(
        "a replica's own write after others' brings theirs in too (no sequence skipped)",
        "index/follow.py",
        "if not self.shared or result.seq == serving.applied_seq + 1:",
        "if True:",
        ("tests/index/test_shared_store.py::test_a_write_after_others_brings_in_what_they_wrote",),
    ),
    Break(
        "a job whose replica died is taken over when its lease runs out",
        "app/jobs/postgres_ledger.py",
        "(status = 'running' AND coalesce(lease_until, 0) < %s)",
        "(false AND %s IS NULL)",
        (
            "tests/app/test_ledger.py::"
            "test_a_shared_ledger_hands_a_job_whose_lease_ran_out_to_another",
        ),
    ),
    Break(
        "opening a pool tries its first connection for as long as it waits",
        "index/postgres_records.py",
        "        reconnect_timeout=OPEN_TIMEOUT_S,\n",
        "        reconnect_timeout=RECONNECT_WINDOW_S,\n",
        (
            "tests/index/test_postgres_records.py::"
            "test_a_pool_opened_while_the_database_is_down_opens_when_it_is_back",
        ),
    ),
    Break(
        "a pool tries again within seconds once the database is back from a long outage",
        "index/postgres_records.py",
        (
            "        pool.reconnect_timeout = RECONNECT_WINDOW_S"
            "  # read by each chain of attempts as it starts\n"
        ),
        "",
        (
            "tests/index/test_postgres_records.py::"
            "test_the_pool_serves_again_within_seconds_of_the_database_returning_from_a_long_outage",
        ),
    ),
    Break(
        "a retired generation refuses writes from every replica (the switch's fence)",
        "index/postgres_records.py",
        "        self._check_not_retired(conn)  # read after the lock: a retirement is seen\n",
        "",
        (
            "tests/index/test_contracts.py::"
            "test_a_retired_store_refuses_writes_until_it_is_taken_back",
        ),
    ),
    Break(
        "bytes released in a shared store are left for the sweep, not removed at once",
        "index/store.py",
        "        if not self.shared:\n",
        "        if True:\n",
        (
            "tests/index/test_shared_store.py::"
            "test_shared_blobs_are_read_by_every_store_and_outlive_a_release",
        ),
    ),
    Break(
        "a database outage is 503 with Retry-After, not 507 or 500",
        "app/errors.py",
        "    (UnavailableError, 503),  # a StorageError, but one that passes: the database, S3, "
        "Milvus\n",
        "",
        (
            "tests/cluster/test_replicas.py::"
            "test_replicas_outlive_a_database_crash_with_503s_and_keep_every_acknowledged_write",
        ),
    ),
    Break(
        "a collection made or deleted on one replica is seen by the next request on another",
        "app/deps.py",
        "    await services.collections.refresh()\n    return services.collections.get(",
        "    return services.collections.get(",
        (
            "tests/cluster/test_replicas.py::"
            "test_collections_made_and_deleted_on_one_replica_are_seen_by_the_other",
        ),
    ),
    # -- past one machine: a shared Milvus, object storage, Ray ------------------------------
    Break(
        "a vector whose record another replica deleted meanwhile is not left in shared Milvus",
        "index/follow.py",
        "            deleted = [x for x in self._log.tombstones_after("
        "kind, result.seq) if x in added]",
        "            deleted = []",
        (
            "tests/index/test_milvus.py::"
            "test_a_vector_whose_record_another_replica_deleted_first_is_not_left_behind",
        ),
    ),
    Break(
        "start-up reconciliation never takes a vector committed meanwhile for a stale one",
        "index/milvus_backend.py",
        "    stored = index.labels()\n    live = log.all_labels(kind)\n",
        "    live = log.all_labels(kind)\n    stored = index.labels()\n",
        (
            "tests/index/test_milvus.py::"
            "test_start_up_reconciliation_keeps_a_vector_committed_meanwhile",
        ),
    ),
    Break(
        "a write Milvus failed after its record committed is repaired when Milvus answers",
        "index/follow.py",
        "            self.needs_repair = True\n",
        "",
        (
            "tests/index/test_milvus.py::test_a_write_milvus_failed_is_repaired_once_it_answers_again",
        ),
    ),
    Break(
        "a job whose database, Milvus or S3 is away waits for it instead of failing",
        "app/jobs/runner.py",
        "            except UnavailableError as e:",
        "            except ZeroDivisionError as e:",
        (
            "tests/app/test_jobs.py::test_a_job_whose_storage_is_away_waits_for_it_instead_of_failing",
        ),
    ),
    Break(
        "bytes written again in object storage have their time renewed (the sweep spares them)",
        "index/s3_blobs.py",
        "                self._s3.copy_object(",
        "                dict(",
        ("tests/index/test_contracts.py::test_the_sweep_spares_blobs_written_again_recently",),
    ),
    Break(
        "a re-embedding whose storage is away for a moment waits for it instead of failing",
        "app/jobs/reindex.py",
        "            except UnavailableError as e:  # the database, Milvus or S3 away for a moment",
        "            except ZeroDivisionError as e:",
        (REINDEX + "test_a_reindex_whose_storage_is_away_for_a_moment_waits_and_finishes",),
    ),
    Break(
        "a field in XMR_FILTER_FIELDS is filtered through an index on its value",
        "index/sqlite_records.py",
        'f"ON items (kind, {field_value_sql(field)})"',
        '"ON items (kind)"',
        (
            "tests/index/test_contracts.py::"
            "test_indexed_fields_answer_equality_filters_through_their_index",
        ),
    ),
    # -- photos (issue 27) ---------------------------------------------------------------------
    Break(
        "an image's thumbnail is stored beside its bytes before its record commits",
        "index/store.py",
        "                self._blobs.put_beside(thumbnail_path(blob.path), item.thumbnail, "
        "THUMBNAIL_TYPE)\n",
        "                pass\n",
        (PHOTOS + "test_the_same_bytes_again_share_one_thumbnail_and_the_id_changes_its_etag",),
    ),
    Break(
        "a thumbnail the client has is answered 304",
        "app/services/items.py",
        "        if matches_etag(if_none_match, etag):",
        "        if False:",
        (PHOTOS + "test_every_image_has_a_small_thumbnail_with_an_etag",),
    ),
    Break(
        "where a photo was taken is dropped unless XMR_KEEP_GPS=1",
        "app/services/items.py",
        'if keep_gps or key != "gps"}',
        "if True}",
        (PHOTOS + "test_exif_facts_are_kept_under_exif_and_the_place_only_when_asked",),
    ),
    Break(
        "a client's own exif key is refused, never merged",
        "app/services/items.py",
        "        if isinstance(metadata, dict) and EXIF_KEY in metadata:",
        "        if False:",
        (PHOTOS + "test_a_clients_own_exif_key_is_refused",),
    ),
    Break(
        "a date range's last day counts whole (lte a day)",
        "index/filters.py",
        '            if op in ("lte", "gt"):',
        "            if False:",
        (
            "tests/index/test_contracts.py::test_dates_and_places_filter_alike_in_every_record_store",
        ),
    ),
    Break(
        "a box across the 180th meridian holds the places on both sides of it",
        "index/sqlite.py",
        "    if box.west <= box.east:",
        "    if True:",
        (
            "tests/index/test_contracts.py::test_dates_and_places_filter_alike_in_every_record_store",
        ),
    ),
)


def scratch_copy(destination: Path) -> None:
    """The files git tracks (and untracked ones it does not ignore), as they are now."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        check=True,
        capture_output=True,
    ).stdout.split(b"\0")
    for name in filter(None, listed):
        source = REPO / os.fsdecode(name)
        if source.is_file():
            target = destination / os.fsdecode(name)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)


def run_tests(scratch: Path, tests: Sequence[str]) -> tuple[int, float, str]:
    started = time.monotonic()
    env = os.environ | {"PYTHONPATH": str(scratch), "PYTHONDONTWRITEBYTECODE": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *tests],
        cwd=scratch,
        env=env,
        capture_output=True,
        text=True,
    )
    return result.returncode, time.monotonic() - started, result.stdout[-2000:]


def try_break(scratch: Path, b: Break) -> str:
    """Apply `b` in `scratch`, run its tests, restore: "caught", "SURVIVED" or why not judged."""
    path = scratch / b.file
    original = path.read_text()
    if original.count(b.find) != 1:
        return f"cannot apply: the code it names is not in {b.file} exactly once"
    path.write_text(original.replace(b.find, b.replace))
    try:
        code, _, _ = run_tests(scratch, b.tests)
    finally:
        path.write_text(original)
    return {0: "SURVIVED", 1: "caught"}.get(code, f"not judged (pytest exit {code})")


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--only", help="run the breaks whose name contains this")
    parser.add_argument("--list", action="store_true", help="list the breaks and stop")
    parser.add_argument("--workers", type=int, default=2, help="breaks tried at the same time")
    options = parser.parse_args()
    breaks = [b for b in BREAKS if options.only is None or options.only in b.name]
    if options.list:
        for b in breaks:
            print(f"{b.name}\n    {b.file}; {' '.join(b.tests)}")
        return 0
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="xmr-mutation-") as folder:
        scratches = queue.SimpleQueue[Path]()
        for n in range(options.workers):
            scratch = Path(folder) / str(n)
            scratch_copy(scratch)
            scratches.put(scratch)
        guards = list(dict.fromkeys(t for b in breaks for t in b.tests))
        code, seconds, output = run_tests(Path(folder) / "0", guards)
        if code != 0:  # a break "caught" by a test that fails anyway proves nothing
            print(f"the guarding tests fail without any break (exit {code}):\n{output}")
            return 2
        print(f"{len(guards)} guarding tests pass untouched ({seconds:.0f} s)")

        def judge(b: Break) -> str:
            scratch = scratches.get()
            try:
                return try_break(scratch, b)
            finally:
                scratches.put(scratch)

        with ThreadPoolExecutor(options.workers) as pool:
            verdicts = list(pool.map(judge, breaks))
    for number, (b, verdict) in enumerate(zip(breaks, verdicts, strict=True), 1):
        print(f"[{number:2}/{len(breaks)}] {verdict:9} {b.name}")
    caught = verdicts.count("caught")
    print(
        f"\n{len(breaks)} breaks tried, {caught} caught, {len(breaks) - caught} not "
        f"({time.monotonic() - started:.0f} s)"
    )
    return 0 if caught == len(breaks) else 1


if __name__ == "__main__":
    sys.exit(main())
