#!/usr/bin/env bash
# Make this amd64 machine run linux/arm64 programs and containers under QEMU user
# emulation, and prove it does:
#
#   scripts/arm64-emulation.sh
#
# 1. Debian's qemu-user-static and binfmt-support, installed with apt-get (as root)
#    when missing.
# 2. The kernel's binfmt_misc file system mounted, and the qemu-aarch64 handler
#    registered and enabled (update-binfmts). Debian registers it with the F flag
#    (fix_binary): the kernel opens the interpreter once, at registration, so it also
#    runs aarch64 binaries inside containers and chroots that do not contain QEMU.
# 3. A tiny static aarch64 program (made here, 160 bytes, it prints "aarch64") runs.
#
# Idempotent; a second run changes nothing and takes well under a second. Exits
# non-zero, saying why, when emulation cannot be set up (not root, binfmt_misc not
# mountable, e.g. inside an unprivileged container).
set -euo pipefail

log() { echo "== $*" >&2; }
fail() {
  echo "arm64 emulation: $*" >&2
  exit 1
}

binfmt=/proc/sys/fs/binfmt_misc
handler=$binfmt/qemu-aarch64

if ! command -v update-binfmts >/dev/null 2>&1 || [ ! -e /usr/libexec/qemu-binfmt/aarch64-binfmt-P ]; then
  [ "$(id -u)" -eq 0 ] || fail "qemu-user-static and binfmt-support are missing; install them as root (apt-get install qemu-user-static binfmt-support)"
  log "installing qemu-user-static and binfmt-support (apt-get)"
  export DEBIAN_FRONTEND=noninteractive
  # Another apt-get may be running (setup scripts): wait for its lock rather than fail.
  apt_get() { apt-get -o DPkg::Lock::Timeout=600 -q "$@"; }
  apt_get install -y --no-install-recommends qemu-user-static binfmt-support >/dev/null ||
    { apt_get update >/dev/null && apt_get install -y --no-install-recommends qemu-user-static binfmt-support >/dev/null; } ||
    fail "apt-get could not install qemu-user-static binfmt-support"
fi

if [ ! -e "$binfmt/register" ]; then
  [ "$(id -u)" -eq 0 ] || fail "$binfmt is not mounted; as root: mount -t binfmt_misc binfmt_misc $binfmt"
  log "mounting binfmt_misc on $binfmt"
  mount -t binfmt_misc binfmt_misc "$binfmt" ||
    fail "cannot mount binfmt_misc (a container needs --privileged for this; or run this script on the host)"
fi

if [ ! -e "$handler" ] || ! grep -qx enabled "$handler"; then
  [ "$(id -u)" -eq 0 ] || fail "the qemu-aarch64 binfmt handler is not enabled; as root: update-binfmts --enable qemu-aarch64"
  log "registering qemu-aarch64 with binfmt_misc"
  update-binfmts --enable qemu-aarch64 || fail "update-binfmts --enable qemu-aarch64 failed"
fi
grep -q '^flags: .*F' "$handler" ||
  fail "$handler lacks the F (fix_binary) flag, so containers without QEMU inside cannot run arm64 programs: $(grep flags "$handler")"

# The proof: an aarch64 ELF that writes "aarch64\n" and exits 0, built byte by byte
# (no cross toolchain needed). Code: mov x0,#1; adr x1,msg; mov x2,#8; mov x8,#64 (write);
# svc #0; mov x0,#0; mov x8,#93 (exit); svc #0; msg: "aarch64\n". Loaded at 0x400000.
probe=$(mktemp /tmp/fedota-aarch64-probe.XXXXXX)
trap 'rm -f "$probe"' EXIT
python3 - "$probe" <<'EOF'
import struct, sys
code = struct.pack("<8I", 0xD2800020, 0x100000E1, 0xD2800102, 0xD2800808,
                   0xD4000001, 0xD2800000, 0xD2800BA8, 0xD4000001) + b"aarch64\n"
base, start = 0x400000, 64 + 56
size = start + len(code)
ident = b"\x7fELF" + bytes([2, 1, 1, 0]) + bytes(8)
header = ident + struct.pack("<HHIQQQIHHHHHH", 2, 183, 1, base + start, 64, 0, 0, 64, 56, 1, 0, 0, 0)
program = struct.pack("<IIQQQQQQ", 1, 5, 0, base, base, size, size, 0x10000)
with open(sys.argv[1], "wb") as f:
    f.write(header + program + code)
EOF
chmod 755 "$probe"
out=$("$probe" 2>&1) || fail "an aarch64 program did not run under emulation: ${out:-exit code $?}"
[ "$out" = aarch64 ] || fail "the aarch64 probe printed '$out', expected 'aarch64'"
log "arm64 emulation works (qemu-user-static $(dpkg-query -W -f '${Version}' qemu-user-static 2>/dev/null || echo '?'), binfmt $(grep '^flags' "$handler"))"
