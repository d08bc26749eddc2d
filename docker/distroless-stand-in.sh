#!/usr/bin/env bash
# Builds a local stand-in for gcr.io/distroless/cc-debian12:nonroot, under that
# exact name, for machines that cannot reach a container registry (this
# project's CI cannot). It is assembled the way the real image is: files
# unpacked from Debian 12's own packages (libc6, libgcc-s1, libstdc++6, libgomp1,
# libssl3, netbase, tzdata, base-files), the CA bundle, a passwd with root,
# nobody and nonroot (65532), no shell and no package manager. Where the real
# image can be pulled, pull it instead and skip this script.
set -euo pipefail
IMAGE=gcr.io/distroless/cc-debian12:nonroot
PACKAGES=(base-files netbase tzdata libc6 libgcc-s1 libgomp1 libstdc++6 libssl3)

if docker image inspect "$IMAGE" >/dev/null 2>&1 && [ "${1:-}" != "--rebuild" ]; then
  echo "$IMAGE is already present"
  exit 0
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
chown _apt "$work" 2>/dev/null || true # lets apt download without a warning
apt-get download "${PACKAGES[@]}" >/dev/null
mkdir rootfs
for deb in *.deb; do dpkg-deb -x "$deb" rootfs; done
rm -rf rootfs/usr/share/doc rootfs/usr/share/man rootfs/usr/share/info rootfs/usr/share/lintian rootfs/usr/share/gdb
mkdir -p rootfs/etc/ssl/certs rootfs/home/nonroot rootfs/root rootfs/tmp
cp /etc/ssl/certs/ca-certificates.crt rootfs/etc/ssl/certs/
cat > rootfs/etc/passwd <<'PASSWD'
root:x:0:0:root:/root:/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin
nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin
PASSWD
cat > rootfs/etc/group <<'GROUP'
root:x:0:
nobody:x:65534:
nonroot:x:65532:
GROUP
chmod 1777 rootfs/tmp
chmod 700 rootfs/root
chown 65532:65532 rootfs/home/nonroot
if [ -e rootfs/bin/sh ] || [ -e rootfs/usr/bin/sh ]; then echo "a shell slipped into the stand-in" >&2; exit 1; fi
tar --numeric-owner -C rootfs -c . | docker import \
  --change 'USER 65532:65532' \
  --change 'WORKDIR /home/nonroot' \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt' \
  - "$IMAGE" >/dev/null
echo "built a local stand-in for $IMAGE ($(docker image inspect -f '{{.Size}}' "$IMAGE") bytes)"
