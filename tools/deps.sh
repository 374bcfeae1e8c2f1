#!/bin/sh
# Installs the Debian packages stylediff builds against, when they are missing.
# As root it runs apt-get; otherwise it prints the one command to run and fails.
set -e
PKGS="build-essential pkg-config libpng-dev libjpeg-dev libcjson-dev libcmocka-dev libopenblas-dev"
missing=""
for p in $PKGS; do
    dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"
done
[ -z "$missing" ] && exit 0
if [ "$(id -u)" = 0 ]; then
    echo "deps: installing$missing"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq $missing >/dev/null
else
    echo "deps: missing Debian packages:$missing"
    echo "deps: run: sudo apt-get install -y$missing"
    exit 1
fi
