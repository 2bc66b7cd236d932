#!/usr/bin/env bash
# Builds the stand-in images of deploy/ci/README.md with podman, tagged with the names
# docker-compose.yml uses. Idempotent: an image whose recipe (its files' hash, in the label
# ringcast.recipe) has not changed is kept, so a second run takes seconds.
#   deploy/ci/images.sh            # build what is missing or stale
#   RINGCAST_CI_CACHE=DIR          # where the debootstrap tree is kept (default ~/.cache/ringcast-ci)
set -euo pipefail
cd "$(dirname "$0")/../.."
here=deploy/ci
export CONTAINERS_CONF="$PWD/$here/containers.conf"
cache=${RINGCAST_CI_CACHE:-$HOME/.cache/ringcast-ci}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
base=localhost/ringcast-ci/debian:bookworm

log() { printf 'images: %s\n' "$*" >&2; }

hash_of() { cat "$@" | sha256sum | cut -c1-16; }

current() {  # NAME HASH: the image exists and was built from this recipe
  [ "$(podman image inspect --format '{{ index .Labels "ringcast.recipe" }}' "$1" 2>/dev/null)" = "$2" ]
}

build() {  # NAME CONTAINERFILE PARENT: from deploy/ci, unless current (its files and parent unchanged)
  local name=$1 file=$2 parent=$3 recipe
  recipe=$(hash_of "$here/$file" "$here/images.sh" "$here"/*.sh "$here"/*.py <(podman image inspect --format '{{ .Id }}' "$parent"))
  if current "$name" "$recipe"; then
    return
  fi
  log "building $name from $here/$file"
  podman build -q --label "ringcast.recipe=$recipe" -t "$name" -f "$here/$file" "$here" >/dev/null
}

# A Debian base from debootstrap (the only image with nothing under it).
base_recipe=$(printf 'bookworm minbase %s' "$mirror" | sha256sum | cut -c1-16)
if ! current "$base" "$base_recipe"; then
  if [ ! -f "$cache/rootfs/.complete" ]; then
    log "debootstrap bookworm (minbase) into $cache/rootfs"
    rm -rf "$cache/rootfs"
    mkdir -p "$cache"
    debootstrap --variant=minbase bookworm "$cache/rootfs" "$mirror" >"$cache/debootstrap.log" 2>&1 ||
      { tail -20 "$cache/debootstrap.log" >&2; exit 1; }
    touch "$cache/rootfs/.complete"
  fi
  log "importing $base"
  tar -C "$cache/rootfs" --exclude=./.complete -c . |
    podman import --change "LABEL ringcast.recipe=$base_recipe" - "$base" >/dev/null
fi

build python:3.11-slim python.Containerfile "$base"
build quay.io/coreos/etcd:v3.4.34 etcd.Containerfile "$base"
build redis:7.0 redis.Containerfile "$base"
build prom/prometheus:v2.42.0 prometheus.Containerfile "$base"
build jaegertracing/all-in-one:1.64.0 waiting.Containerfile "$base"

# The ringcast image from the repository's own Dockerfile (what `podman-compose up --build` would
# build), on the stand-in base. pip inside the build reaches PyPI through this machine's TLS setup:
# it sees the host's CA bundle.
ringcast_recipe=$(
  { sha256sum Dockerfile pyproject.toml README.md
    find ringcast services ringcast_tools -type f ! -path '*/__pycache__/*' -print0 | sort -z | xargs -0 sha256sum
    podman image inspect --format '{{ .Id }}' python:3.11-slim; } | sha256sum | cut -c1-16
)
if ! current ringcast:dev "$ringcast_recipe"; then
  log "building ringcast:dev from Dockerfile"
  podman build -q --label "ringcast.recipe=$ringcast_recipe" -t ringcast:dev -f Dockerfile \
    --volume /etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/ca-certificates.crt:ro . >/dev/null
fi
build otel/opentelemetry-collector:0.116.0 otlp-receiver.Containerfile ringcast:dev
# What a rebuild replaced (untagged, still labelled ours) takes disk and nothing else.
podman image prune -f --filter label=ringcast.recipe >/dev/null
log "ready: $(podman images --format '{{.Repository}}:{{.Tag}}' | sort | tr '\n' ' ')"
