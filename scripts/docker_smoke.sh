#!/usr/bin/env bash
# Build the real Dockerfile and run the image as a user would: `make docker-test`.
#
# Starts its own Docker engine on a private socket (root, Debian's docker.io; overlay2, or vfs
# where overlay2 cannot mount), or uses the engine at XMR_SMOKE_DOCKER_HOST. Where no
# python:3.11-slim image is present (no registry can be reached), the base is bootstrapped from
# this machine's own Debian mirror with debootstrap and imported. pip inside the build gets this
# machine's pip settings (index, extra index, trusted hosts, CA bundle) as build arguments.
# Then, against the image: healthy by its own healthcheck, index and search through the
# published port, data kept across a restart, the unprivileged user and writable volumes,
# `docker stop` within 30 s with status 0, a batch from the read-only import mount, a path
# outside it refused, compose `config` for every profile and `up -d` of the default service.
#
# Cleans up only what it started: its containers, images, volumes, compose project, and its own
# dockerd by PID. Prints SKIPPED and why, exit 0, where Docker cannot run. Exit 1 on a failure.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
RUN_ID="$(date +%s)-$$"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/xmr-docker-smoke.XXXXXX")
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/xmr/docker-smoke"  # the bootstrapped base, reused
IMAGE="xmr-smoke:$RUN_ID"
BASE_TAG="xmr-smoke-base:$RUN_ID"
CONTAINER="xmr-smoke-$RUN_ID"
VOLUME="xmr-smoke-data-$RUN_ID"
CACHE_VOLUME="xmr-smoke-cache-$RUN_ID"
PROJECT="xmrsmoke${RUN_ID//-/}"
STARTED=$SECONDS
DOCKERD_PID=""
export DOCKER_HOST="${XMR_SMOKE_DOCKER_HOST:-unix://$WORK/docker.sock}"

say() { printf '[docker-smoke %4ds] %s\n' "$((SECONDS - STARTED))" "$*"; }
fail() { say "FAILED: $*"; exit 1; }
skip() { say "SKIPPED: $*"; exit 0; }

cleanup() {
  local status=$?
  set +e
  if docker info >/dev/null 2>&1; then
    (cd "$WORK/compose" 2>/dev/null && docker-compose -p "$PROJECT" down -v --rmi local \
      >/dev/null 2>&1)
    docker rm -f "$CONTAINER" >/dev/null 2>&1
    docker volume rm "$VOLUME" "$CACHE_VOLUME" >/dev/null 2>&1
    docker rmi -f "$IMAGE" "xmr:latest" "$BASE_TAG-ca" "$BASE_TAG" >/dev/null 2>&1
  fi
  if [ -n "$DOCKERD_PID" ]; then
    kill "$DOCKERD_PID" 2>/dev/null
    for _ in $(seq 60); do kill -0 "$DOCKERD_PID" 2>/dev/null || break; sleep 0.5; done
    kill -9 "$DOCKERD_PID" 2>/dev/null
    # the engine's own mounts under its data root, if it left any
    grep -o " $WORK/[^ ]*" /proc/mounts | sort -r | xargs -r -n1 umount -l 2>/dev/null
  fi
  rm -rf "$WORK"
  say "cleaned up (exit $status)"
}
trap cleanup EXIT

# the build stage and the image each hold a full virtual environment (6 GB with CUDA torch)
need_gb=${XMR_SMOKE_MIN_FREE_GB:-20}
free_gb=$(( $(df -Pk "$WORK" | awk 'NR==2 {print $4}') / 1048576 ))
[ "$free_gb" -ge "$need_gb" ] \
  || fail "needs ${need_gb} GB free under ${TMPDIR:-/tmp}, has ${free_gb} GB (XMR_SMOKE_MIN_FREE_GB)"

# -- an engine ---------------------------------------------------------------------------
start_dockerd() {
  local driver=$1
  rm -rf "$WORK/engine"
  mkdir -p "$WORK/engine"
  dockerd --host "$DOCKER_HOST" --data-root "$WORK/engine/root" --exec-root "$WORK/engine/exec" \
    --pidfile "$WORK/engine/dockerd.pid" --storage-driver="$driver" --iptables=false \
    >"$WORK/engine/dockerd.log" 2>&1 &
  DOCKERD_PID=$!
  for _ in $(seq 60); do
    docker info >/dev/null 2>&1 && return 0
    kill -0 "$DOCKERD_PID" 2>/dev/null || break
    sleep 0.5
  done
  kill "$DOCKERD_PID" 2>/dev/null; wait "$DOCKERD_PID" 2>/dev/null || true
  DOCKERD_PID=""
  return 1
}

if [ -z "${XMR_SMOKE_DOCKER_HOST:-}" ]; then
  command -v docker >/dev/null || skip "no docker client (apt-get install docker.io)"
  command -v dockerd >/dev/null || skip "no dockerd (apt-get install docker.io)"
  [ "$(id -u)" = 0 ] || skip "starting dockerd needs root; or set XMR_SMOKE_DOCKER_HOST"
  start_dockerd overlay2 || start_dockerd vfs \
    || skip "dockerd does not start here: $(tail -3 "$WORK/engine/dockerd.log" 2>/dev/null)"
  say "dockerd $DOCKERD_PID on $DOCKER_HOST, storage $(docker info -f '{{.Driver}}')"
else
  docker info >/dev/null 2>&1 || skip "no Docker engine answers at $DOCKER_HOST"
fi

# -- the base image --------------------------------------------------------------------------
base_image="python:3.11-slim"
if ! docker image inspect "$base_image" >/dev/null 2>&1; then
  command -v debootstrap >/dev/null || skip "no $base_image and no debootstrap to stand in"
  . /etc/os-release
  suite=${VERSION_CODENAME:?no VERSION_CODENAME in /etc/os-release}
  # this machine's own configured Debian mirror, read at run time
  mirror=$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null \
    | awk '/^URIs:/ {print $2; exit}')
  [ -n "$mirror" ] || mirror=$(awk '/^deb / {print $2; exit}' /etc/apt/sources.list 2>/dev/null)
  [ -n "$mirror" ] || skip "no apt source configured to bootstrap a base from"
  tarball="$CACHE/base-$suite.tar"
  if [ ! -s "$tarball" ]; then
    say "bootstrapping a $suite base from $mirror (python3, venv) with debootstrap"
    mkdir -p "$CACHE"
    rootfs="$WORK/rootfs"
    timeout 900 debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
      "$suite" "$rootfs" "$mirror" >"$WORK/debootstrap.log" 2>&1 \
      || fail "debootstrap: $(tail -3 "$WORK/debootstrap.log")"
    ln -sf /usr/bin/python3 "$rootfs/usr/local/bin/python"
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
    tar -C "$rootfs" -cf "$tarball.partial" . && mv "$tarball.partial" "$tarball"
    rm -rf "$rootfs"
  fi
  docker import "$tarball" "$BASE_TAG" >/dev/null
  base_image=$BASE_TAG
  say "base image: $BASE_TAG (debootstrap $suite, $(du -h "$tarball" | cut -f1))"
fi

# -- build -----------------------------------------------------------------------------------
pip_setting() {  # this machine's pip setting: the environment first, then pip's config files
  local env_name=$1 key=$2 value
  value=${!env_name:-}
  [ -n "$value" ] || value=$(python3 -m pip config get "global.$key" 2>/dev/null || true)
  printf '%s' "$value"
}
# file: indexes are folders of this machine, which the build cannot see
remote_urls() { tr ' ' '\n' | grep -v '^file:' | paste -sd' ' - || true; }
build_args=(--build-arg "BASE_IMAGE=$base_image" --build-arg "TORCH_INDEX_URL=${XMR_SMOKE_TORCH_INDEX_URL-}")
index_url=$(pip_setting PIP_INDEX_URL index-url | remote_urls)
extra_urls=$(pip_setting PIP_EXTRA_INDEX_URL extra-index-url | remote_urls)
trusted=$(pip_setting PIP_TRUSTED_HOST trusted-host)
cert=$(pip_setting PIP_CERT cert)
[ -n "$index_url" ] && build_args+=(--build-arg "PIP_INDEX_URL=$index_url")
[ -n "$extra_urls" ] && build_args+=(--build-arg "PIP_EXTRA_INDEX_URL=$extra_urls")
[ -n "$trusted" ] && build_args+=(--build-arg "PIP_TRUSTED_HOST=$trusted")
if [ -n "$cert" ] && [ -f "$cert" ]; then
  # the CA bundle pip trusts here, at the same path inside the build's base
  mkdir -p "$WORK/ca-context"
  printf 'FROM %s\nCOPY ca.pem %s\n' "$base_image" "$cert" >"$WORK/ca-context/Dockerfile"
  cp "$cert" "$WORK/ca-context/ca.pem"
  docker build -q -t "$BASE_TAG-ca" "$WORK/ca-context" >/dev/null 2>"$WORK/ca-build.log" \
    || fail "adding the CA bundle to the base: $(tail -3 "$WORK/ca-build.log")"
  build_args+=(--build-arg "BASE_IMAGE=$BASE_TAG-ca" --build-arg "PIP_CERT=$cert")
fi
say "building the Dockerfile (torch from ${XMR_SMOKE_TORCH_INDEX_URL:-the default index})"
build_started=$SECONDS
timeout 2400 docker build --network host "${build_args[@]}" -t "$IMAGE" "$REPO" \
  >"$WORK/build.log" 2>&1 || fail "docker build: $(tail -20 "$WORK/build.log")"
build_s=$((SECONDS - build_started))
size_mb=$(( $(docker image inspect -f '{{.Size}}' "$IMAGE") / 1000000 ))
say "built $IMAGE in ${build_s}s: ${size_mb} MB (base $base_image)"

# -- the image itself ------------------------------------------------------------------------
# CUDA libraries are expected only when torch came from an index that has no CPU-only wheels
expect_lean=0
case ${XMR_SMOKE_TORCH_INDEX_URL-} in */cpu | */cpu/) expect_lean=1 ;; esac
docker run --rm -i -e "EXPECT_LEAN=$expect_lean" --entrypoint python "$IMAGE" - <<'PY' \
  || fail "image contents"

import os, pathlib, sys
import models
bundled = pathlib.Path(models.__file__).parent / "bundled" / "shapes-tiny"
assert (bundled / "open_clip_model.safetensors").is_file(), "the bundled model is missing"
assert os.environ["HF_HOME"].startswith("/cache/"), os.environ["HF_HOME"]
assert os.environ["XMR_RUNTIME_CACHE_DIR"].startswith("/cache/")
assert os.environ["XMR_LOG_FORMAT"] == "json"
assert os.getuid() == 10001, os.getuid()
site = pathlib.Path(sys.prefix) / "lib"
cuda = sorted(p.name for p in site.glob("python3*/site-packages/nvidia/*"))
print("[image] bundled model, cache paths, JSON logs, uid 10001: ok; CUDA libraries:",
      ", ".join(cuda) if cuda else "none")
assert not (cuda and os.environ["EXPECT_LEAN"] == "1"), "CUDA libraries in a CPU image"
PY

# -- run it ----------------------------------------------------------------------------------
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PORT=$(free_port)
BASE="http://127.0.0.1:$PORT"
mkdir -p "$WORK/import/album"
python3 - "$WORK/import/album" <<'PY'
import struct, sys, zlib
def png(path, rgb):  # a 32x32 PNG of one colour, without Pillow
    raw = b"".join(b"\x00" + bytes(rgb) * 32 for _ in range(32))
    chunk = lambda t, d: struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))
    data = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 32, 32, 8, 2, 0, 0, 0))
    open(path, "wb").write(data + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
for name, rgb in {"red": (220, 20, 20), "blue": (20, 60, 230), "green": (30, 170, 40)}.items():
    png(f"{sys.argv[1]}/{name}.png", rgb)
PY
chmod -R a+rX "$WORK/import"

run_container() {
  docker run -d --name "$CONTAINER" -p "127.0.0.1:$PORT:8000" \
    -e XMR_MODEL=shapes-tiny -e XMR_IMPORT_ROOT=/import \
    -v "$VOLUME:/data" -v "$CACHE_VOLUME:/cache" -v "$WORK/import:/import:ro" \
    "$IMAGE" >/dev/null
}

wait_healthy() {  # the container's own HEALTHCHECK (first probe after its 30 s interval)
  local status
  for _ in $(seq 150); do
    status=$(docker inspect -f '{{.State.Health.Status}}' "$CONTAINER")
    [ "$status" = healthy ] && return 0
    [ "$(docker inspect -f '{{.State.Running}}' "$CONTAINER")" = true ] \
      || fail "the container exited: $(docker logs --tail 20 "$CONTAINER" 2>&1)"
    sleep 2
  done
  fail "not healthy after 300 s ($status): $(docker logs --tail 20 "$CONTAINER" 2>&1)"
}

api() { curl -sS --fail-with-body --max-time 120 "$@"; }

run_container
wait_healthy
say "healthy by its own healthcheck"
docker logs "$CONTAINER" >"$WORK/container.log" 2>&1
python3 - "$WORK/container.log" <<'PY' || fail "logs are not JSON"
import json, sys
lines = [line for line in open(sys.argv[1]) if line.strip()]
assert lines, "no log lines"
for line in lines:
    try:
        json.loads(line)  # every line, stdout and stderr, is one JSON object
    except ValueError:
        sys.exit(f"not JSON: {line[:200]}")
PY
uid=$(docker exec "$CONTAINER" python -c 'import os; print(os.getuid())')
[ "$uid" = 10001 ] || fail "the server runs as uid $uid"
docker exec "$CONTAINER" sh -c 'for d in /data /cache; do touch "$d/.w" && rm "$d/.w" || exit 1; done' \
  || fail "/data or /cache is not writable by the server's user"
docker exec "$CONTAINER" sh -c 'touch /import/x 2>/dev/null' && fail "the import mount is writable"
say "runs as uid 10001; /data and /cache writable; /import read-only"

api -F "files=@$WORK/import/album/red.png" -F 'ids=["red"]' "$BASE/v1/images" >/dev/null
api -H 'Content-Type: application/json' \
  -d '{"items": [{"id": "t1", "text": "a red circle"}, {"id": "t2", "text": "a blue square"}]}' \
  "$BASE/v1/texts" >/dev/null
job=$(api -H 'Content-Type: application/json' \
  -d '{"items": [{"image_path": "album/blue.png", "id": "blue"}, {"image_path": "album/green.png", "id": "green"}]}' \
  "$BASE/v1/batch" | python3 -c 'import json,sys; print(json.load(sys.stdin)["job_id"])')
for _ in $(seq 120); do
  state=$(api "$BASE/v1/jobs/$job" | python3 -c 'import json,sys; j=json.load(sys.stdin); print(j["status"], j["done"], j["failed"])')
  case $state in queued* | running*) ;; *) break ;; esac
  sleep 0.5
done
[ "$state" = "done 2 0" ] || fail "the batch job from the import mount: $state"
outside=$(curl -s -o /dev/null -w '%{http_code}' -H 'Content-Type: application/json' \
  -d '{"items": [{"image_path": "../etc/passwd"}]}' "$BASE/v1/batch")
[ "$outside" = 422 ] || fail "a path outside the import root got $outside, not 422"
say "indexed 3 images (one from a batch job over the import mount) and 2 texts; ../etc/passwd: 422"

top_hit() {  # the best image for an image query with one of the indexed files
  api -F "file=@$WORK/import/album/$1.png" -F target=images -F k=1 "$BASE/v1/search/image" \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["results"][0]["id"])'
}
text_hits() {
  api -G "$BASE/v1/search/text" --data-urlencode "q=$1" -d target=images -d k=10 \
    | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["results"]))'
}
counts() { api "$BASE/v1/info" | python3 -c 'import json,sys; i=json.load(sys.stdin); print(i["images"], i["texts"])'; }
[ "$(counts)" = "3 2" ] || fail "counts after indexing: $(counts)"
for colour in red blue green; do
  hit=$(top_hit "$colour")
  [ "$hit" = "$colour" ] || fail "the $colour image found $hit"
done
[ "$(text_hits 'a red circle')" = 3 ] || fail "a text query did not rank the 3 images"
say "each image finds itself first; a text query ranks all 3"

docker restart -t 30 "$CONTAINER" >/dev/null
wait_healthy
[ "$(counts)" = "3 2" ] || fail "after a restart: $(counts)"
[ "$(top_hit red)" = red ] || fail "search after a restart"
say "restarted: data and search intact"

stop_started=$SECONDS
docker stop -t 30 "$CONTAINER" >/dev/null
stop_s=$((SECONDS - stop_started))
exit_code=$(docker inspect -f '{{.State.ExitCode}}' "$CONTAINER")
[ "$stop_s" -lt 30 ] || fail "docker stop took ${stop_s}s"
[ "$exit_code" = 0 ] || fail "exit status $exit_code after SIGTERM"
say "docker stop: ${stop_s}s, exit status 0"

# -- compose ---------------------------------------------------------------------------------
if command -v docker-compose >/dev/null; then
  compose=(docker-compose)
elif docker compose version >/dev/null 2>&1; then
  compose=(docker compose)
else
  skip "no docker-compose or compose plugin: everything else passed"
fi
mkdir -p "$WORK/compose/import"
cp "$REPO/docker-compose.yml" "$WORK/compose/"
cd "$WORK/compose"
for profile in "" gpu milvus; do
  "${compose[@]}" -p "$PROJECT" ${profile:+--profile "$profile"} config --quiet \
    || fail "compose config ${profile:-default}"
done
milvus=$("${compose[@]}" -p "$PROJECT" --profile milvus config)
grep -q 'XMR_MILVUS_URI: http://milvus:19530' <<<"$milvus" || fail "xmr-milvus is not pointed at milvus"
grep -q 'XMR_EXTRAS: milvus' <<<"$milvus" || fail "xmr-milvus is built without the milvus extra"
docker tag "$IMAGE" xmr:latest
COMPOSE_PORT=$(free_port)
XMR_PUBLISHED_PORT=$COMPOSE_PORT XMR_MODEL=shapes-tiny XMR_IMPORT_DIR="$WORK/compose/import" \
  "${compose[@]}" -p "$PROJECT" up -d --no-build xmr >"$WORK/compose.log" 2>&1 \
  || fail "compose up: $(tail -5 "$WORK/compose.log")"
for _ in $(seq 120); do
  curl -sf "http://127.0.0.1:$COMPOSE_PORT/readyz" >/dev/null && break
  sleep 1
done
curl -sf "http://127.0.0.1:$COMPOSE_PORT/readyz" >/dev/null || fail "compose's xmr is not ready"
say "compose: config valid for the default, gpu and milvus profiles; up -d serves on :$COMPOSE_PORT"

say "PASSED in $((SECONDS - STARTED))s (build ${build_s}s, image ${size_mb} MB)"
