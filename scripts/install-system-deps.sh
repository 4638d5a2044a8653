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
#   slapd ldap-utils  OpenLDAP server (2.5) + clients: tests/support/ldap.py starts a throwaway
#                     slapd on loopback for the LDAP identity provider tests. Preseeded with
#                     slapd/no_configuration so the package creates no system database.
#   redis-server      Redis 7: tests/integration/test_redis.py starts one of its own to stop
#                     it (the machine's own, at 127.0.0.1:6379, serves the other Redis tests)
#   nginx             the load balancer of the scale-out tests: tests/support/balancer.py runs
#                     one of its own (generated config, `daemon off`) in front of the replicas
#   nodejs npm        only where no node/npm is on PATH (this machine kind ships NodeSource's
#                     nodejs 20 with npm inside, which Debian's npm package would conflict with):
#                     tests/support/oidc_provider.py runs the npm package oidc-provider on them
#                     (tests/support/oidc) for the OIDC login tests. oidc-provider 9 needs
#                     Node.js >= 20.12.
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
    slapd
    ldap-utils
    redis-server
    nginx
)

missing=()
for pkg in "${PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q '^install ok installed$'; then
        missing+=("$pkg")
    fi
done

# Node.js: keep the node and npm on PATH, whatever their origin.
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    missing+=(nodejs npm)
fi

if [ "${#missing[@]}" -eq 0 ]; then
    echo "install-system-deps: all ${#PACKAGES[@]} packages already installed"
else
    echo "install-system-deps: installing ${missing[*]}"
    SUDO=()
    if [ "$(id -u)" -ne 0 ]; then
        command -v sudo >/dev/null 2>&1 || { echo "install-system-deps: need root or sudo" >&2; exit 1; }
        SUDO=(sudo -n)
    fi
    if printf '%s\n' "${missing[@]}" | grep -qx slapd; then
        # Keep the package from configuring (and starting) a system-wide slapd.
        echo "slapd slapd/no_configuration boolean true" | "${SUDO[@]}" debconf-set-selections
    fi
    "${SUDO[@]}" apt-get update -qq
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# The commands the tests call must now be on PATH.
status=0
for cmd in docker-registry wrk skopeo podman buildah runc crun fuse-overlayfs slirp4netns newuidmap \
           catatonit conmon umoci busybox dockerd docker containerd \
           slapd slaptest ldapsearch ldapwhoami nginx node npm; do
    if ! command -v "$cmd" >/dev/null 2>&1 \
        && ! [ -x "/usr/libexec/podman/$cmd" ] && ! [ -x "/usr/sbin/$cmd" ]; then
        echo "install-system-deps: '$cmd' not found after install" >&2
        status=1
    fi
done
if command -v node >/dev/null 2>&1 && ! node -e '
    const [major, minor] = process.versions.node.split(".").map(Number);
    process.exit(major > 20 || (major === 20 && minor >= 12) ? 0 : 1);'; then
    echo "install-system-deps: node $(node --version) is too old for oidc-provider 9 (needs >= 20.12)" >&2
    status=1
fi
exit "$status"
