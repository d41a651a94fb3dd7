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
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Break:
    name: str  # the promise it breaks, as RELIABILITY.md or README.md states it
    file: str
    find: str  # must occur exactly once in `file`
    replace: str
    tests: tuple[str, ...]  # pytest node ids or paths, with an optional " -k EXPR" at the end


def pytest_args(tests: tuple[str, ...]) -> list[str]:
    args: list[str] = []
    for test in tests:
        args += test.split(" ")
    return args


BREAKS: tuple[Break, ...] = (
    # -- durability ---------------------------------------------------------------------------
    Break(
        "xmr migrate verifies the target's top-10 against the source's",
        "index/migrate.py",
        "got = _top(after, kind, queries[kind])",
        "got = expected[kind]",
        ("tests/index/test_migrate.py",),
    ),
    Break(
        "writes after a snapshot are replayed into it at start-up (not a full rebuild)",
        "index/store.py",
        "        for labels, vectors in self._records.vectors_after(kind, info.seq, self.dim):\n"
        "            index.add(labels, vectors)\n"
        "        if len(index)",
        "        if len(index)",
        ("tests/index/test_store.py",),
    ),
    Break(
        "snapshots are checksummed: a corrupt file is rebuilt from the records",
        "index/snapshots.py",
        "if hashlib.sha256(payload).hexdigest() != info.sha256:",
        "if False:",
        ("tests/index/test_store.py",),
    ),
    Break(
        "image bytes are fsynced before the record that points at them is committed",
        "index/files.py",
        "            f.flush()\n            os.fsync(f.fileno())\n",
        "            f.flush()\n",
        ("tests/reliability/test_power_loss.py",),
    ),
    Break(
        "a snapshot file is published by rename only after it is synced",
        "index/files.py",
        "        os.replace(tmp, path)\n    except BaseException:",
        "        os.replace(tmp, path)\n        os.fsync(os.open(path, os.O_RDONLY))\n"
        "    except BaseException:",
        ("tests/reliability/test_power_loss.py",),
    ),
    Break(
        "SQLite commits are synced (WAL, synchronous=FULL)",
        "index/sqlite.py",
        'conn.execute("PRAGMA synchronous=FULL")',
        'conn.execute("PRAGMA synchronous=NORMAL")',
        ("tests/reliability/test_power_loss.py",),
    ),
    Break(
        "a different model never reads another model's vectors",
        "index/records.py",
        'if stored["model"] != model_id or int(stored["dim"]) != dim:',
        "if False:",
        ("tests/app/test_api.py -k refused",),
    ),
    Break(
        "a deleted item is gone from search at once",
        "index/store.py",
        "            index.remove(result.removed[kind])\n",
        "",
        ("tests/index/test_store.py",),
    ),
    Break(
        "a failed write changes nothing (the transaction rolls back)",
        "index/sqlite.py",
        '            conn.execute("ROLLBACK")\n',
        '            conn.execute("COMMIT")\n',
        ("tests/index/test_store.py -k disk_full", "tests/app/test_api.py -k disk_full"),
    ),
    # -- precision ----------------------------------------------------------------------------
    Break(
        "bf16 vectors stay within cosine 0.9999 of fp32",
        "models/open_clip_encoder.py",
        "    features = features.float()\n",
        "    features = features.to(torch.float8_e4m3fn).float()\n",
        ("tests/models/test_open_clip_encoder.py -k bf16",),
    ),
    # -- bad input ----------------------------------------------------------------------------
    Break(
        "an image that cannot be decoded is a 422",
        "app/errors.py",
        "    (ImageDecodeError, 422),\n",
        "",
        ("tests/app/test_api.py -k bad_requests",),
    ),
    Break(
        "a body over the limit is cut off with 413 while it streams",
        "app/middleware.py",
        "                if received > limit:",
        "                if False:",
        ("tests/app/test_middleware.py",),
    ),
    Break(
        "a body that stalls gets 408",
        "app/middleware.py",
        "message = await asyncio.wait_for(receive(), self.idle_timeout_s)",
        "message = await receive()",
        ("tests/reliability/test_hostile.py -k stalled",),
    ),
    Break(
        "metadata nested too deep is refused at the door",
        "index/metadata.py",
        "            if depth > MAX_METADATA_DEPTH:",
        "            if False:",
        ("tests/reliability/test_hostile.py -k metadata",),
    ),
    Break(
        "metadata larger than XMR_MAX_METADATA_BYTES is refused",
        "index/metadata.py",
        "    if size > max_bytes:",
        "    if False:",
        ("tests/reliability/test_hostile.py -k metadata",),
    ),
    Break(
        "a response larger than XMR_MAX_RESPONSE_MB is refused",
        "app/services/search.py",
        "        if size > self.max_response_bytes:",
        "        if False:",
        ("tests/reliability/test_hostile.py -k huge_response",),
    ),
    Break(
        "errors quote only a short excerpt of the input",
        "index/errors.py",
        "    quoted = json.dumps(text[:limit])",
        "    quoted = json.dumps(text)",
        ("tests/reliability/test_hostile.py -k excerpt",),
    ),
    Break(
        "image_path files are opened without following links",
        "app/services/import_files.py",
        "_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC",
        "_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC",
        ("tests/reliability/test_hostile.py -k swapped",),
    ),
    Break(
        "only regular files are read from the import root",
        "app/services/import_files.py",
        "    if not stat.S_ISREG(info.st_mode):",
        "    if False:",
        ("tests/reliability/test_hostile.py -k fifos",),
    ),
    Break(
        "an item's OS error fails that item only",
        "app/services/import_files.py",
        "        descriptor = os.open(parts[-1], _FILE_FLAGS, dir_fd=directory)\n"
        "    except OSError as e:\n        raise InvalidInputError(_reason(e)) from e\n",
        "        descriptor = os.open(parts[-1], _FILE_FLAGS, dir_fd=directory)\n",
        ("tests/reliability/test_hostile.py -k fifos",),
    ),
    Break(
        "decoded image bytes are bounded",
        "models/images.py",
        "    if header.decoded_bytes > max_decoded_bytes:",
        "    if False:",
        ("tests/models/test_images.py -k decoded_bytes",),
    ),
    Break(
        "a text query never waits behind a large image decode",
        "app/services/encoding.py",
        "            return read_header(data).pixels > LARGE_IMAGE_PIXELS",
        "            return False",
        ("tests/reliability/test_hostile.py -k never_waits",),
    ),
    Break(
        "an encoded slash is part of an item id",
        "app/routers/items.py",
        '    raw: bytes | None = request.scope.get("raw_path")',
        "    raw: bytes | None = None",
        ("tests/reliability/test_hostile.py -k odd_ids",),
    ),
    # -- access -------------------------------------------------------------------------------
    Break(
        "with XMR_API_KEY set, every route but the public ones needs the key",
        "app/middleware.py",
        "        return supplied is not None and hmac.compare_digest(supplied, self._key)",
        "        return True",
        ("tests/app/test_middleware.py -k key",),
    ),
    Break(
        "a web page of another origin cannot write",
        "app/middleware.py",
        '        if scope["type"] == "http" and scope["method"] in STATE_CHANGING:',
        "        if False:",
        ("tests/reliability/test_hostile.py -k foreign_page",),
    ),
    Break(
        "only trusted Host names are answered (DNS rebinding)",
        "app/config.py",
        "        if is_loopback(self.host):",
        "        if False:",
        ("tests/reliability/test_hostile.py -k host",),
    ),
    Break(
        "the page and the docs forbid framing",
        "app/middleware.py",
        '        (b"x-frame-options", b"DENY"),\n',
        "",
        ("tests/reliability/test_hostile.py -k framing",),
    ),
    Break(
        "a full encode queue answers 429 at once",
        "app/services/batcher.py",
        "            if not wait_for_room:\n                raise OverloadedError(",
        "            if False:\n                raise OverloadedError(",
        ("tests/app/test_backpressure.py", "tests/app/services/test_batcher.py"),
    ),
    # -- search ---------------------------------------------------------------------------------
    Break(
        "a filter on an approximate index finds every matching item",
        "index/store.py",
        "        if index.exact:\n            return index.search(queries, k, allowed)",
        "        if True:\n            return index.search(queries, k, allowed)",
        ("tests/index/test_approximate.py -k filters",),
    ),
    Break(
        "paging returns the next results, not the first again",
        "index/store.py",
        "        scores, labels = scores[:, offset:], labels[:, offset:]",
        "        scores, labels = scores[:, :k], labels[:, :k]",
        ("tests/app/test_search_filters.py -k pages",),
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


def run_tests(scratch: Path, tests: tuple[str, ...]) -> tuple[int, float]:
    started = time.monotonic()
    env = os.environ | {"PYTHONPATH": str(scratch), "PYTHONDONTWRITEBYTECODE": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *pytest_args(tests)],
        cwd=scratch,
        env=env,
        capture_output=True,
        text=True,
    )
    return result.returncode, time.monotonic() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="run the breaks whose name contains this")
    parser.add_argument("--list", action="store_true", help="list the breaks and stop")
    options = parser.parse_args()
    breaks = [b for b in BREAKS if options.only is None or options.only in b.name]
    if options.list:
        for b in breaks:
            print(f"{b.name}  [{b.file}; {', '.join(b.tests)}]")
        return 0
    with tempfile.TemporaryDirectory(prefix="xmr-mutation-") as folder:
        scratch = Path(folder)
        scratch_copy(scratch)
        guards = tuple(dict.fromkeys(t for b in breaks for t in b.tests))
        for guard in guards:  # each guard must pass untouched, or a "caught" break proves nothing
            code, seconds = run_tests(scratch, (guard,))
            if code != 0:
                print(f"the guarding tests fail without any break: {guard} (exit {code})")
                return 2
        survived, unusable = [], []
        for number, b in enumerate(breaks, 1):
            path = scratch / b.file
            original = path.read_text()
            if original.count(b.find) != 1:
                unusable.append(b)
                print(f"[{number}/{len(breaks)}] CANNOT APPLY  {b.name} ({b.file} changed)")
                continue
            path.write_text(original.replace(b.find, b.replace))
            try:
                code, seconds = run_tests(scratch, b.tests)
            finally:
                path.write_text(original)
            verdict = "caught" if code == 1 else ("SURVIVED" if code == 0 else f"exit {code}")
            if code == 0:
                survived.append(b)
            elif code != 1:
                unusable.append(b)  # collection errors and the like prove nothing
            print(f"[{number}/{len(breaks)}] {verdict:8} {seconds:5.1f} s  {b.name}")
    caught = len(breaks) - len(survived) - len(unusable)
    print(
        f"\n{len(breaks)} breaks: {caught} caught, {len(survived)} survived, "
        f"{len(unusable)} could not be judged"
    )
    return 0 if not survived and not unusable else 1


if __name__ == "__main__":
    sys.exit(main())
