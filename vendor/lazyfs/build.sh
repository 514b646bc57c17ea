#!/usr/bin/env bash
# Builds LazyFS (upstream: dsrhaslab/lazyfs, MIT licence, src/LICENSE), a FUSE file system that keeps
# writes not yet fsynced in its own page cache and drops them on command: a simulated power cut.
# Usage: build.sh [BUILD_DIR]   (default /var/tmp/lazyfs; the source is copied there first, so this
#        folder stays clean). .ci/run builds into target/lazyfs for tests/power_loss.rs. Prints the path of the lazyfs binary on its last line.
# Needs root for apt-get: g++ cmake libfuse3-dev fuse3 libspdlog-dev libtoml11-dev, and /dev/fuse.
# Upstream's CMake fetches toml11 and spdlog from GitHub at configure time; only package registries are
# reachable here, so the copy is patched to use Debian's libtoml11-dev 3.7.1 and libspdlog-dev 1.10.0
# (the versions upstream pins).
# Commands (written to the fifo named in the config's [faults] fifo_path): lazyfs::clear-cache,
# lazyfs::crash ..., lazyfs::cache-checkpoint; see src/README.md. Notes from use here:
# - create, rename and unlink go straight to the backing directory, and directory fsync is not modelled,
#   so a missing directory fsync cannot be caught with it;
# - a clear-cache while the program under test keeps writing is not a real power cut (the program goes on
#   fsyncing onto a file system that forgot earlier writes): kill the program first, then clear-cache, or
#   use lazyfs::crash, after which the mount refuses all I/O;
# - a --config-path containing "-o" is misread: pass a path without it;
# - with Debian's toml11 the config's section must be written ["file system"] (quoted), not [file system];
# - mount: lazyfs MNT --config-path CFG -o allow_other -o modules=subdir -o subdir=BACKING_DIR -f;
# - its cache never frees a page on fsync and writes straight through once full: size it well above
#   what a test writes.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-/var/tmp/lazyfs}
bin=$out/lazyfs/build/lazyfs
if [ -x "$bin" ]; then echo "$bin"; exit 0; fi
need=""
for p in g++ cmake libfuse3-dev fuse3 libspdlog-dev libtoml11-dev; do
  dpkg -s "$p" >/dev/null 2>&1 || need="$need $p"
done
if [ -n "$need" ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q -o DPkg::Lock::Timeout=300 $need >&2
fi
[ -c /dev/fuse ] || { echo "no /dev/fuse: LazyFS cannot run here" >&2; exit 1; }
mkdir -p "$out"
cp -r "$here/src/lazyfs" "$here/src/libs" "$out/"
chmod -R u+w "$out"
python3 - "$out/libs/libpcache/CMakeLists.txt" "$out/lazyfs/CMakeLists.txt" <<'PY'
import re, sys
pc, lc = sys.argv[1], sys.argv[2]
s = open(pc).read()
s = re.sub(r"include\(FetchContent\).*?set_target_properties\(spdlog PROPERTIES POSITION_INDEPENDENT_CODE ON\)",
           "find_package(toml11 REQUIRED)\nfind_package(spdlog REQUIRED)", s, flags=re.S)
s = s.replace("target_link_libraries(pcache toml11::toml11 spdlog)", "target_link_libraries(pcache toml11::toml11 spdlog::spdlog)")
open(pc, "w").write(s)
s = open(lc).read()
s = s.replace("find_package(Threads REQUIRED)",
              "find_package(Threads REQUIRED)\nfind_package(spdlog REQUIRED)\n"
              "set(CMAKE_BUILD_RPATH ${CMAKE_CURRENT_SOURCE_DIR}/../libs/libpcache/build)")
s = s.replace("target_link_libraries(${CMAKE_PROJECT_NAME} fuse3 Threads::Threads libpcache.so)",
              "target_link_libraries(${CMAKE_PROJECT_NAME} fuse3 Threads::Threads libpcache.so spdlog::spdlog)")
open(lc, "w").write(s)
PY
export CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-2}
(cd "$out/libs/libpcache" && sh ./build.sh) >&2
(cd "$out/lazyfs" && sh ./build.sh) >&2
[ -x "$bin" ] || { echo "build finished without $bin" >&2; exit 1; }
grep -q "^user_allow_other" /etc/fuse.conf 2>/dev/null || echo "user_allow_other" >> /etc/fuse.conf
echo "$bin"
