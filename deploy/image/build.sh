#!/usr/bin/env bash
# Builds the dfnode container image (OCI) from this checkout: `npm run image [-- OPTIONS]`.
#
#   --tag NAME      image name (default localhost/dfnode:VERSION)
#   --base IMAGE    build on IMAGE (e.g. docker.io/library/node:20-bookworm-slim) where a registry is
#                   reachable; default: a Debian bookworm minbase root filesystem made here with debootstrap
#                   (Debian mirror only) plus this host's Node 20, so no registry is needed
#   --no-build      use dist/ and native/build as they are (default: npm run build, build:native if missing)
#   --no-tag        leave only the content-keyed name localhost/dfnode-build:KEY (tests)
#   --reuse         if an image with the content key of this build exists already, tag it and stop
#   --keep-context  keep the staged build context
#   --print-key     print the content key (dist/, addon, lockfile, Containerfile, base) and exit
#
# Layout (the Containerfile's): /opt/dfnode/{package.json,dist,proto,native,node_modules}, /opt/dfnode/bin/dfnode on
# PATH, entry point `dfnode`. The build context is staged in .tmp/image/context.XXXX (Containerfile + app/),
# removed afterwards (--keep-context keeps it and prints its path).
# Prints `image: NAME`, `key: KEY` and `built: yes|no` on success, and `base-imported: REF` when it imported
# the debootstrap base (at once, so that a caller can remove it even if the build fails later).
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD

VERSION=$(node -p 'require("./package.json").version')
TAG=localhost/dfnode:$VERSION
BASE=
BUILD=1
REUSE=0
NO_TAG=0
KEEP_CONTEXT=0
PRINT_KEY=0
while (($#)); do
  case $1 in
    --tag) TAG=$2; shift 2 ;;
    --base) BASE=$2; shift 2 ;;
    --no-build) BUILD=0; shift ;;
    --reuse) REUSE=1; shift ;;
    --no-tag) NO_TAG=1; shift ;;
    --print-key) PRINT_KEY=1; shift ;;
    --keep-context) KEEP_CONTEXT=1; shift ;;
    *) echo "npm run image: unknown option $1 (see deploy/image/build.sh)" >&2; exit 2 ;;
  esac
done

for tool in buildah podman; do
  command -v "$tool" >/dev/null || { echo "npm run image: $tool not found (apt-get install buildah podman)" >&2; exit 1; }
done

# Debian packages of the image: the addons link libfuse3, liblz4, libisal and libzstd (ldd
# native/build/Release/*.node), fuse-native's prebuilt binding links libfuse2, fuse3 brings fusermount3,
# ca-certificates for HTTPS registries.
PACKAGES=(libfuse3-3 fuse3 libfuse2 liblz4-1 libisal2 libzstd1 libdeflate0 ca-certificates)
SUITE=bookworm
MIRROR=${DFNODE_IMAGE_MIRROR:-http://deb.debian.org/debian}

if ((BUILD)); then
  npm run build >&2
  ls native/build/Release/*.node >/dev/null 2>&1 || npm run build:native >&2
fi
[ -f dist/src/cli/dfnode.js ] || { echo "npm run image: dist/ is not built (npm run build)" >&2; exit 1; }
ls native/build/Release/*.node native/build/Release/dfnode-pull >/dev/null 2>&1 || { echo "npm run image: the native addon is not built (npm run build:native)" >&2; exit 1; }

# the default base: its key covers the package list, the suite and the Node binary copied in
NODE_BIN=$(readlink -f "$(command -v node)")
if [ -z "$BASE" ]; then
  BASE_KEY=$( (printf '%s\n' "$SUITE" "${PACKAGES[@]}"; sha256sum "$NODE_BIN" | cut -d' ' -f1) | sha256sum | cut -c1-16)
  BASE_REF=localhost/dfnode-base:$BASE_KEY
else
  BASE_KEY=$BASE
  BASE_REF=$BASE
fi

KEY=$( (
  echo "$BASE_KEY"
  cat Containerfile deploy/image/build.sh package.json package-lock.json bin/dfnode
  find native/build/Release -maxdepth 1 \( -name '*.node' -o -name dfnode-pull \) -type f -print0 | sort -z | xargs -0 sha256sum
  # not the bundle's V8 code cache: runs rewrite it (src/cli/code-cache.ts)
  find dist proto -type f ! -name '*.cache' -print0 | sort -z | xargs -0 sha256sum
) | sha256sum | cut -c1-16)
if ((PRINT_KEY)); then echo "$KEY"; exit 0; fi
KEYED=localhost/dfnode-build:$KEY
if ((NO_TAG)); then TAG=$KEYED; fi

if ((REUSE)) && podman image exists "$KEYED"; then
  [ "$TAG" = "$KEYED" ] || podman tag "$KEYED" "$TAG"
  echo "image: $TAG"; echo "key: $KEY"; echo "built: no"
  exit 0
fi

# Removes a half-made root filesystem, unmounting first what debootstrap may have left mounted in it (a killed
# run): rm -rf must never walk into a mounted /proc or /sys.
drop_rootfs() {
  local dir=$1 m
  [ -e "$dir" ] || return 0
  while read -r m; do umount -l "$m" 2>/dev/null || true; done < <(
    awk -v d="$(readlink -f "$dir")" '$5 == d || index($5, d "/") == 1 { print $5 }' /proc/self/mountinfo | sort -r)
  if awk -v d="$(readlink -f "$dir")" '$5 == d || index($5, d "/") == 1 { f = 1 } END { exit !f }' /proc/self/mountinfo; then
    echo "npm run image: $dir still has mounts below it; not removing it" >&2; return 1
  fi
  rm -rf "$dir"
}

mkdir -p "$ROOT/.tmp/image"

# 1. the base root filesystem (cached under .tmp/image/rootfs-KEY.tar; imported once per key)
BASE_IMPORTED=
if [ -z "$BASE" ] && ! podman image exists "$BASE_REF"; then
  TARBALL=$ROOT/.tmp/image/rootfs-$BASE_KEY.tar
  if [ ! -f "$TARBALL" ]; then
    command -v debootstrap >/dev/null || { echo "npm run image: debootstrap not found (apt-get install debootstrap), or pass --base IMAGE" >&2; exit 1; }
    [ "$(id -u)" = 0 ] || { echo "npm run image: building the base with debootstrap needs root (or pass --base IMAGE)" >&2; exit 1; }
    major=$("$NODE_BIN" -p 'process.versions.node.split(".")[0]')
    [ "$major" -ge 20 ] || { echo "npm run image: the image takes this host's Node ($NODE_BIN), which is $major, not 20 or newer" >&2; exit 1; }
    WORK=$ROOT/.tmp/image/rootfs-$BASE_KEY.d
    trap 'drop_rootfs "$WORK"' EXIT
    drop_rootfs "$WORK" && mkdir -p "$WORK"
    echo "debootstrap --variant=minbase $SUITE ($MIRROR) with ${PACKAGES[*]}" >&2
    debootstrap --variant=minbase --include="$(IFS=,; echo "${PACKAGES[*]}")" "$SUITE" "$WORK" "$MIRROR" >&2
    # this host's Node 20 (NodeSource's build for Debian: glibc 2.28+, libstdc++; bookworm has glibc 2.36)
    install -D -m 0755 "$NODE_BIN" "$WORK/usr/local/bin/node"
    chroot "$WORK" /usr/local/bin/node --version >/dev/null || {
      echo "npm run image: $NODE_BIN does not run on Debian $SUITE (glibc); pass --base IMAGE with Node 20" >&2; exit 1; }
    # what a runtime image does not need: apt's caches and lists, documentation, manuals, locales
    rm -rf "$WORK"/var/cache/apt/* "$WORK"/var/lib/apt/lists/* "$WORK"/usr/share/doc/* "$WORK"/usr/share/man/* \
      "$WORK"/usr/share/info/* "$WORK"/usr/share/locale/* "$WORK"/var/log/* "$WORK"/dev/*
    tar --numeric-owner -C "$WORK" -cf "$TARBALL.partial" .
    mv "$TARBALL.partial" "$TARBALL"
    drop_rootfs "$WORK"
    trap - EXIT
    # older bases (another package list or Node) are not used again
    find "$ROOT/.tmp/image" -maxdepth 1 -name 'rootfs-*.tar' ! -name "rootfs-$BASE_KEY.tar" -delete
  fi
  podman import --change 'CMD ["/bin/sh"]' "$TARBALL" "$BASE_REF" >&2
  BASE_IMPORTED=$BASE_REF
  echo "base-imported: $BASE_IMPORTED"   # now: a caller cleaning up after a failure later on needs it
fi

# 2. the build context: dist/, the addon, production node_modules
CTX=$(mktemp -d "$ROOT/.tmp/image/context.XXXXXX")
if ((KEEP_CONTEXT)); then echo "context: $CTX"; else trap 'rm -rf "$CTX"' EXIT; fi
mkdir -p "$CTX/app/native/build/Release" "$CTX/app/bin"
cp Containerfile "$CTX/"
cp package.json package-lock.json "$CTX/app/"
cp -a dist "$CTX/app/dist"
cp -a proto "$CTX/app/proto"   # the gRPC service definitions, loaded at run time (src/grpc/load-proto.ts)
cp native/binding.gyp "$CTX/app/native/"
cp native/build/Release/*.node native/build/Release/dfnode-pull "$CTX/app/native/build/Release/"
chmod 0755 "$CTX/app/dist/src/cli/dfnode.js" "$CTX/app/dist/src/cli/dfconvert.js"
# bin/dfnode: the launcher (the Node CLI, and `dfnode pull` through the C client without starting Node)
install -m 0755 bin/dfnode "$CTX/app/bin/dfnode"
ln -s ../dist/src/cli/dfconvert.js "$CTX/app/bin/dfconvert"
(cd "$CTX/app" && npm ci --omit=dev --ignore-scripts --no-audit --no-fund --prefer-offline >&2)
rm -f "$CTX/app/package-lock.json"

# 3. build: the same Containerfile as elsewhere, on the local or the given base
buildah bud --isolation chroot --layers=false --force-rm --build-arg "BASE=$BASE_REF" -t "$KEYED" -f "$CTX/Containerfile" "$CTX" >&2
[ "$TAG" = "$KEYED" ] || podman tag "$KEYED" "$TAG"
echo "image: $TAG"; echo "key: $KEY"; echo "built: yes"
