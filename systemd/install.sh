#!/bin/sh
# Install llm-appliance as a systemd service.
#
#   sudo ./install.sh [dist/llm-appliance | dist/llm-appliance-dir]
#
# A file is the one-file binary, copied to $PREFIX/bin. A directory is the one-directory build
# (for hosts whose /tmp is mounted noexec, where the one-file binary cannot unpack): it is copied
# to $PREFIX/lib/llm-appliance and linked from $PREFIX/bin. The binary then writes its own unit
# (`llm-appliance systemd install`), creates the llm-appliance system user, and the service is
# enabled and started. ROOT=/some/dir installs into a staging tree and touches no running system.
set -eu

src=${1:-dist/llm-appliance}
root=${ROOT:-}
prefix=${PREFIX:-/usr/local}
bin="$prefix/bin/llm-appliance"

if [ -z "$root" ] && [ "$(id -u)" -ne 0 ]; then
    echo "install.sh: run as root (or set ROOT=DIR to stage the files)" >&2
    exit 1
fi

if [ -d "$src" ]; then
    libdir="$prefix/lib/llm-appliance"
    rm -rf "$root$libdir.new"
    mkdir -p "$root$libdir.new" "$root$prefix/bin"
    cp -a "$src/." "$root$libdir.new/"
    rm -rf "$root$libdir"
    mv "$root$libdir.new" "$root$libdir"
    ln -sfn "$libdir/llm-appliance" "$root$bin"
    run="$root$libdir/llm-appliance"
elif [ -f "$src" ]; then
    install -D -m 0755 "$src" "$root$bin.new"
    mv -f "$root$bin.new" "$root$bin"
    run="$root$bin"
else
    echo "install.sh: no binary at $src (build it with: make binary)" >&2
    exit 1
fi
echo "installed $root$bin"

if [ -n "$root" ]; then
    "$run" systemd install --binary "$bin" --root "$root" --no-reload
    exit 0
fi

"$bin" systemd install --binary "$bin"
systemctl enable --now llm-appliance.service
echo "llm-appliance is running: curl http://127.0.0.1:11434/"
