#!/usr/bin/env bash
# The Linux guest kit, from Debian packages resolved by name:
#   bzImage    the cloud kernel (linux-image-cloud-amd64's versioned dependency)
#   vmlinux    the same kernel uncompressed (ELF), extracted from the LZ4 payload
#   initramfs  busybox-static, Debian's fio and numactl with every shared
#              library they load and the dynamic loader, the virtio/vfio
#              modules in load order, and an /init that prints GUEST-KIT-UP,
#              runs /tests/NAME for kit_test=NAME (tests/guest-kit/tests/),
#              and powers off; /etc/kit/verify.fio is the fio job of the
#              `fio` test, which the host reuses to verify the image
# fio and numactl are installed on the host when missing (their libraries
# are collected with ldd from the installed binaries). Output goes to a
# cache directory outside the repository, keyed by the package versions;
# a second run only verifies the manifest. The last line printed is the
# directory.
#
# usage: tests/guest-kit/build.sh      env: VMM_GUEST_KIT_CACHE (default ~/.cache/vmm-guest-kit)
set -euo pipefail

cache=${VMM_GUEST_KIT_CACHE:-${HOME:-$(getent passwd "$(id -u)" | cut -d: -f6)}/.cache/vmm-guest-kit}
here=$(cd "$(dirname "$0")" && pwd)
export DEBIAN_FRONTEND=noninteractive

missing=""
for tool in lz4:lz4 cpio:cpio depmod:kmod readelf:binutils dpkg-deb:dpkg; do
    command -v "${tool%%:*}" >/dev/null || missing="$missing ${tool##*:}"
done
# fio and numactl are copied from Debian's packages as installed here.
for pkg in fio numactl; do
    dpkg-query -W -f '${Status}' "$pkg" 2>/dev/null | grep -q 'ok installed' || missing="$missing $pkg"
done
if [ -n "$missing" ]; then
    apt-get update -qq
    # shellcheck disable=SC2086
    apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi

candidate() { apt-cache policy "$1" | awk '/Candidate:/ {print $2}'; }
kpkg=$(apt-cache depends linux-image-cloud-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
if [ -z "$kpkg" ]; then
    apt-get update -qq
    kpkg=$(apt-cache depends linux-image-cloud-amd64 | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
fi
[ -n "$kpkg" ] || { echo "guest-kit: cannot resolve linux-image-cloud-amd64" >&2; exit 1; }
kver=$(candidate "$kpkg")
bver=$(candidate busybox-static)
# fio and numactl are copied from the host's installation: key on what is
# installed, with libnuma1 (the one library of theirs they are tied to).
installed() { dpkg-query -W -f '${Version}' "$1"; }
fver=$(installed fio)
nver=$(installed numactl)
lver=$(installed libnuma1)
# The scripts packed into the initramfs, and this script, are part of the key too.
scripts=$(cat "$here/build.sh" "$here/init" "$here/verify.fio" "$here"/tests/* | sha256sum | cut -c1-12)
out="$cache/${kpkg}_${kver}-busybox_${bver}-fio_${fver}-numactl_${nver}-${scripts}"

if [ -f "$out/manifest.txt" ] && (cd "$out" && sha256sum --quiet -c sha256sums 2>/dev/null); then
    echo "$out"
    exit 0
fi

work=$(mktemp -d)
trap 'rm -rf "$work" "$out.tmp"' EXIT
cd "$work"
apt-get download -qq "$kpkg" busybox-static >/dev/null
dpkg-deb -x "$kpkg"_*.deb kroot
modver=$(ls kroot/lib/modules)
depmod -b kroot "$modver"
mkdir -p "$out.tmp"
cp "kroot/boot/vmlinuz-$modver" "$out.tmp/bzImage"

# The payload is LZ4 (legacy frame, magic 02 21 4c 18): decompress from
# the first match that yields an ELF.
for off in $(grep -obUaP '\x02\x21\x4c\x18' "$out.tmp/bzImage" | cut -d: -f1); do
    tail -c +$((off + 1)) "$out.tmp/bzImage" | lz4 -dc 2>/dev/null > vmlinux || true
    if readelf -h vmlinux >/dev/null 2>&1; then
        mv vmlinux "$out.tmp/vmlinux"
        break
    fi
done
[ -f "$out.tmp/vmlinux" ] || { echo "guest-kit: no ELF in the bzImage payload" >&2; exit 1; }

root=rootfs
mkdir -p $root/{bin,sbin,dev,proc,sys,tmp,etc,lib/modules}
dpkg-deb --fsys-tarfile busybox-static_*.deb | tar -x ./bin/busybox
cp bin/busybox $root/bin/busybox
for a in $($root/bin/busybox --list); do
    [ "$a" = busybox ] || ln -sf busybox "$root/bin/$a"
done
: > $root/lib/modules/load-order
for m in virtio_pci virtio_blk virtio_mem vfio_pci vfio_iommu_type1; do
    modprobe -d kroot -S "$modver" --show-depends "$m" 2>/dev/null | awk '$1 == "insmod" {print $2}'
done | awk '!seen[$0]++' | while read -r ko; do
    cp "$ko" "$root/lib/modules/"
    echo "/lib/modules/$(basename "$ko")" >> $root/lib/modules/load-order
done
# fio and numactl, their libraries (as ldd resolves them on the host, at
# the same paths, so RUNPATHs such as ceph's still resolve) and the loader.
for b in fio numactl; do
    cp "/usr/bin/$b" "$root/bin/$b"
done
libs=$(ldd /usr/bin/fio /usr/bin/numactl \
    | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// && $2 ~ /^\(/ {print $1}' | sort -u)
[ -n "$libs" ] || { echo "guest-kit: ldd found no libraries for fio" >&2; exit 1; }
for lib in $libs; do
    mkdir -p "$root$(dirname "$lib")"
    cp -L "$lib" "$root$lib"
done
# An ld.so.cache for the copied directories (the loader also searches the
# multiarch directories by default).
printf '%s\n' $(for lib in $libs; do dirname "$lib"; done | sort -u) > $root/etc/ld.so.conf
/sbin/ldconfig -r $root
# Every library any of them needs must be in the root, or fio would not start.
for f in $root/bin/fio $root/bin/numactl $(for lib in $libs; do echo "$root$lib"; done); do
    for need in $(readelf -d "$f" | awk '/NEEDED/ {gsub(/[][]/, "", $5); print $5}'); do
        found=""
        while read -r d; do [ -e "$root$d/$need" ] && found=1; done < $root/etc/ld.so.conf
        [ -n "$found" ] || { echo "guest-kit: $need (of $f) not copied" >&2; exit 1; }
    done
done
install -m 755 "$here/init" $root/init
install -D -m 644 "$here/verify.fio" $root/etc/kit/verify.fio
mkdir -p $root/tests
install -m 755 "$here"/tests/* $root/tests/
(cd $root && find . -print0 | cpio --null -o -H newc --quiet | gzip -6) > "$out.tmp/initramfs.cpio.gz"

{
    echo "kernel package: $kpkg $kver"
    echo "kernel release: $modver"
    echo "busybox-static: $bver"
    echo "fio: $fver"
    echo "numactl: $nver"
    echo "libnuma1: $lver"
    echo "shared libraries: $(echo "$libs" | wc -l)"
    echo "modules: $(wc -l < $root/lib/modules/load-order)"
} > "$out.tmp/manifest.txt"
(cd "$out.tmp" && sha256sum bzImage vmlinux initramfs.cpio.gz manifest.txt > sha256sums)
rm -rf "$out"
mv "$out.tmp" "$out"
echo "$out"
