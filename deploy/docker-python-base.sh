#!/usr/bin/env bash
# Origin: the ingestd project's shared tools (docker-python-base.sh, kept beside the repository
# on the project's build machines), copied here so that the repository stands alone;
# `make docker-check` runs this copy.
#
# Builds a local stand-in for the official `python:3.11-slim` image on a machine that reaches
# Debian's packages and PyPI but no container registry: a minimal Debian bookworm root file
# system (debootstrap) with this machine's own CPython 3.11 copied into /usr/local, which is how
# the official image is laid out. Tags it `python:3.11-slim` (and `python:3.11-slim-bookworm`)
# so that an unchanged `FROM python:3.11-slim` builds offline. Also starts dockerd if needed
# (no default bridge: use --network host for builds and runs, so traffic stays on loopback).
#
# usage: bash deploy/docker-python-base.sh       (idempotent; ~1-2 min the first time)
set -euo pipefail
TAG=python:3.11-slim
export DEBIAN_FRONTEND=noninteractive
need() { command -v "$1" >/dev/null 2>&1; }
if ! need dockerd || ! need debootstrap; then
  apt-get update -qq && apt-get install -y -q docker.io debootstrap >/dev/null
fi
if ! docker info >/dev/null 2>&1; then
  mkdir -p /etc/docker
  [ -f /etc/docker/daemon.json ] || echo '{"bridge": "none"}' > /etc/docker/daemon.json
  nohup dockerd >/var/log/dockerd.log 2>&1 &
  for _ in $(seq 1 60); do docker info >/dev/null 2>&1 && break; sleep 0.5; done
  docker info >/dev/null 2>&1 || { echo "dockerd did not start (see /var/log/dockerd.log)"; exit 1; }
fi
if docker image inspect "$TAG" >/dev/null 2>&1; then echo "$TAG already present"; exit 0; fi
PYHOME=$(python3 -c 'import sys; print(sys.base_prefix)')
python3 -c 'import sys; assert sys.version_info[:2] == (3, 11), sys.version' \
  || { echo "needs this machine's python3 to be 3.11"; exit 1; }
ROOT=$(mktemp -d /tmp/pybase.XXXXXX)
trap 'rm -rf "$ROOT"' EXIT
debootstrap --variant=minbase bookworm "$ROOT" http://deb.debian.org/debian >/dev/null
chroot "$ROOT" apt-get install -y -q -o Dpkg::Use-Pty=0 --no-install-recommends ca-certificates libssl3 libffi8 \
  libsqlite3-0 zlib1g libbz2-1.0 liblzma5 libreadline8 libncursesw6 libgdbm6 libuuid1 netbase tzdata >/dev/null
chroot "$ROOT" apt-get clean
# The same CA bundle as this machine, so that pip inside a build reaches the package index as pip here does.
cp /etc/ssl/certs/ca-certificates.crt "$ROOT/etc/ssl/certs/ca-certificates.crt"
printf '[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n' > "$ROOT/etc/pip.conf"
cp -a "$PYHOME"/. "$ROOT/usr/local/"
rm -rf "$ROOT/usr/local/lib/python3.11/site-packages"/*  # a bare interpreter, like the official image
echo /usr/local/lib > "$ROOT/etc/ld.so.conf.d/usr-local.conf" && chroot "$ROOT" ldconfig
chroot "$ROOT" /usr/local/bin/python3 -m ensurepip --default-pip >/dev/null
for n in python pip; do [ -e "$ROOT/usr/local/bin/$n" ] || ln -s "${n}3" "$ROOT/usr/local/bin/$n"; done
rm -rf "$ROOT/dev"/* "$ROOT/proc"/* "$ROOT/sys"/* 2>/dev/null || true
tar -C "$ROOT" -c . | docker import -c 'ENV PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8' \
  -c 'CMD ["python3"]' - "$TAG" >/dev/null
docker tag "$TAG" python:3.11-slim-bookworm
docker run --rm --network host "$TAG" python -c 'import ssl, sqlite3, sys; print("base ok", sys.version.split()[0])'
