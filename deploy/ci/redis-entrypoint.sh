#!/bin/bash
# As the official redis image: own the data directory, drop to the redis user, no protected mode.
set -e
if [ "$1" = redis-server ] && [ "$(id -u)" = 0 ]; then
  dir=.
  for ((i = 1; i < $#; i++)); do [ "${!i}" = --dir ] && { next=$((i + 1)); dir=${!next}; }; done
  mkdir -p "$dir" && chown -R redis:redis "$dir"
  exec setpriv --reuid=redis --regid=redis --init-groups "$@" --protected-mode no
fi
exec "$@"
