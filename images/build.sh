#!/usr/bin/env bash
# Builds tokengate's container images with podman (`make images`):
#
#   ghcr.io/tokengate/tokengate-operator:VERSION   the operator (the chart's default repository)
#   ghcr.io/tokengate/tokengate-sidecar:VERSION    the injected sidecar (ditto)
#   localhost/tokengate/tokengate-idp:VERSION      test identity provider   } test images, for the
#   localhost/tokengate/tokengate-echo:VERSION     echo application          } node tier and the
#   localhost/tokengate/tokengate-pause:VERSION    pod sandbox of the node   } kind suite
#
# VERSION is the workspace version (the chart's appVersion). Each image is FROM scratch: one
# statically linked release binary, Debian's CA bundle (ca-certificates) for the two product
# images, a numeric non-root user, OCI labels. No base image is pulled from anywhere.
#
# Output: the images in podman's store, and target/images/NAME.tar (docker-archive) for
# `ctr images import` and `kind load image-archive`; target/images/sizes.txt lists their sizes.
#
# Environment: IMAGES="sidecar operator ..." builds a subset; PODMAN overrides the podman binary;
# IMAGE_PROFILE names another Cargo profile for the binaries (the default, release, is what users
# run, and the only one whose sidecar image is held to its 15 MiB budget).
#
# IMAGE_BINARIES=DIR builds nothing: the images take the binaries already in DIR, as `make test`
# does with the ones its test build left in target/debug (a cold optimised build would cost more
# than the rest of the suite). Those are linked dynamically, so each image also gets the program
# interpreter and the shared libraries the binary names (glibc's, from the Debian packages
# installed on this machine) at the paths the binary looks for them; debug info is stripped.
# Everything else (Containerfiles, user, labels, archives) is the same as for release images.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"

log() { printf '[images] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# The gnu target named explicitly, so +crt-static applies to the binaries and not to build
# scripts and proc macros (which must stay dynamic to be loaded by the compiler).
target=x86_64-unknown-linux-gnu
out="$repo/target/images"
context="$out/context"
podman="${PODMAN:-podman}"
all_images="operator sidecar idp echo pause"
images="${IMAGES:-$all_images}"
profile="${IMAGE_PROFILE:-release}"
prebuilt="${IMAGE_BINARIES:-}"

install_tools() {
    local missing=()
    command -v "$podman" >/dev/null 2>&1 || missing+=(podman)
    [[ -s /etc/ssl/certs/ca-certificates.crt ]] || missing+=(ca-certificates)
    if ((${#missing[@]})); then
        command -v apt-get >/dev/null 2>&1 || die "missing ${missing[*]}; install them (Debian: apt-get install ${missing[*]})"
        log "installing ${missing[*]} from Debian"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
}

version() {
    sed -n '/^\[workspace.package\]/,/^\[/s/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n1
}

source_url() {
    sed -n '/^\[workspace.package\]/,/^\[/s/^repository = "\(.*\)"$/\1/p' Cargo.toml | head -n1
}

binary_of() {
    case "$1" in
    operator) echo tokengate-operator ;;
    sidecar) echo tokengate-sidecar ;;
    idp) echo tokengate-idp ;;
    echo) echo tokengate-echo ;;
    pause) echo tokengate-pause ;;
    *) die "unknown image $1 (known: $all_images)" ;;
    esac
}

image_of() {
    case "$1" in
    operator | sidecar) echo "ghcr.io/tokengate/$(binary_of "$1"):$VERSION" ;;
    *) echo "localhost/tokengate/$(binary_of "$1"):$VERSION" ;;
    esac
}

containerfile_of() {
    case "$1" in
    operator | sidecar) echo "images/$1.Containerfile" ;;
    *) echo images/testkit.Containerfile ;;
    esac
}

# Whether BINARY names a program interpreter (the dynamic loader): a static one does not.
has_interpreter() {
    LC_ALL=C readelf -l "$1" | grep -q 'program interpreter'
}

build_binaries() {
    local args=() image
    for image in $images; do
        args+=(--bin "$(binary_of "$image")")
    done
    log "building ${args[*]} (profile $profile, static, $target)"
    # Stripped: symbols are for profiling the host build (make bench), not for images.
    RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static" CARGO_PROFILE_RELEASE_STRIP=symbols \
        cargo build --profile "$profile" --locked --target "$target" \
        -p tokengate-operator -p tokengate-sidecar -p tokengate-testkit "${args[@]}"
    for image in $images; do
        local binary
        binary="target/$target/$profile/$(binary_of "$image")"
        if has_interpreter "$binary"; then
            die "$binary is dynamically linked"
        fi
    done
}

# The loader and shared libraries a dynamically linked BINARY needs, copied into ROOTFS at the
# paths the loader looks for them (the binary's interpreter, the default library directories).
copy_runtime() {
    local binary="$1" rootfs="$2" line path
    while read -r line; do
        case "$line" in
        *"=> not found"*) die "$binary: ${line%% *} not found" ;;
        *" => /"*) path="${line#* => }" ;;
        /*) path="$line" ;;
        *) continue ;; # the vDSO, which the kernel provides
        esac
        path="${path%% (*}"
        mkdir -p "$rootfs$(dirname "$path")"
        cp -L "$path" "$rootfs$path"
    done < <(ldd "$binary")
}

build_image() {
    local image="$1" name binary source
    name="$(image_of "$image")"
    binary="$(binary_of "$image")"
    rm -rf "$context"
    mkdir -p "$context/rootfs"
    if [[ -n "$prebuilt" ]]; then
        source="$prebuilt/$binary"
        [[ -x "$source" ]] || die "$source is missing (IMAGE_BINARIES=$prebuilt)"
        strip --strip-debug -o "$context/$binary" "$source"
        if has_interpreter "$source"; then
            copy_runtime "$source" "$context/rootfs"
        fi
    else
        cp "target/$target/$profile/$binary" "$context/$binary"
    fi
    cp /etc/ssl/certs/ca-certificates.crt "$context/ca-certificates.crt"
    log "building $name"
    "$podman" build --quiet --no-cache --pull=never \
        --file "$(containerfile_of "$image")" --tag "$name" \
        --build-arg "BINARY=$binary" \
        --build-arg "VERSION=$VERSION" \
        --build-arg "REVISION=$REVISION" \
        --build-arg "SOURCE=$SOURCE" \
        --build-arg "CREATED=$CREATED" \
        "$context" >/dev/null
    rm -f "$out/$binary.tar"
    "$podman" save --quiet --format docker-archive --output "$out/$binary.tar" "$name"
    local size
    size="$("$podman" image inspect --format '{{.Size}}' "$name")"
    awk -v n="$name" -v s="$size" 'BEGIN { printf "%s\t%s\t%.1f MiB\n", n, s, s / 1048576 }' >>"$out/sizes.txt"
}

install_tools
VERSION="$(version)"
SOURCE="$(source_url)"
REVISION="$(git rev-parse HEAD 2>/dev/null || echo unknown)"
if [[ "$REVISION" != unknown ]] && [[ -n "$(git status --porcelain --untracked-files=no 2>/dev/null)" ]]; then
    REVISION="$REVISION-dirty"
fi
# The commit's time, so a rebuild of the same commit labels the same date.
CREATED="$(git log -1 --format=%cI 2>/dev/null || date -u +%Y-%m-%dT%H:%M:%SZ)"
[[ -n "$VERSION" ]] || die "no workspace version in Cargo.toml"

mkdir -p "$out"
: >"$out/sizes.txt"
if [[ -n "$prebuilt" ]]; then
    log "taking the binaries from $prebuilt"
else
    build_binaries
fi
for image in $images; do
    build_image "$image"
done
rm -rf "$context"
log "images (uncompressed size):"
cut -f1,3 "$out/sizes.txt" | column -t >&2
sidecar_size="$(awk -v n="$(image_of sidecar)" '$1 == n { print $2 }' "$out/sizes.txt")"
if [[ -z "$prebuilt" && "$profile" == release && -n "$sidecar_size" ]] && ((sidecar_size > 15 * 1024 * 1024)); then
    die "the sidecar image is $sidecar_size bytes, over its 15 MiB budget"
fi
