#!/usr/bin/env bash
# Install the Debian packages the end-to-end tests (tests/e2e) and the benchmark need.
#
# Idempotent and fast when everything is present: it checks each package with dpkg
# first and only runs `apt-get update` + `apt-get install` (once) for missing ones.
# Needs root (or passwordless sudo). Debian 12 (bookworm) package names.
#
#   docker-registry   reference registry (CNCF Distribution 2.8)
#   wrk               HTTP load generator (benchmark)
#   skopeo podman buildah runc crun fuse-overlayfs slirp4netns uidmap catatonit conmon
#                     containers/image clients and their runtime bits
#   umoci             builds the OCI-layout test images
#   busybox-static    the statically linked userland inside the test images
#   docker.io containerd
#                     Docker engine (dockerd 20.10 + docker CLI) started by the tests
set -euo pipefail

PACKAGES=(
    docker-registry
    wrk
    skopeo
    podman
    buildah
    runc
    crun
    fuse-overlayfs
    slirp4netns
    uidmap
    catatonit
    conmon
    umoci
    busybox-static
    docker.io
    containerd
)

missing=()
for pkg in "${PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q '^install ok installed$'; then
        missing+=("$pkg")
    fi
done

if [ "${#missing[@]}" -eq 0 ]; then
    echo "install-system-deps: all ${#PACKAGES[@]} packages already installed"
else
    echo "install-system-deps: installing ${missing[*]}"
    SUDO=()
    if [ "$(id -u)" -ne 0 ]; then
        command -v sudo >/dev/null 2>&1 || { echo "install-system-deps: need root or sudo" >&2; exit 1; }
        SUDO=(sudo -n)
    fi
    "${SUDO[@]}" apt-get update -qq
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# The commands the tests call must now be on PATH.
status=0
for cmd in docker-registry wrk skopeo podman buildah runc crun fuse-overlayfs slirp4netns newuidmap \
           catatonit conmon umoci busybox dockerd docker containerd; do
    if ! command -v "$cmd" >/dev/null 2>&1 \
        && ! [ -x "/usr/libexec/podman/$cmd" ] && ! [ -x "/usr/sbin/$cmd" ]; then
        echo "install-system-deps: '$cmd' not found after install" >&2
        status=1
    fi
done
exit "$status"
