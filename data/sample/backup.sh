#!/usr/bin/env bash
# Copy a folder into a dated archive, keeping the last seven.
set -euo pipefail

src=${1:?usage: backup.sh FOLDER [DEST]}
dest=${2:-$HOME/backups}
mkdir -p "$dest"

stamp=$(date +%Y-%m-%d)
tar -czf "$dest/$(basename "$src")-$stamp.tar.gz" -C "$(dirname "$src")" "$(basename "$src")"

ls -1t "$dest"/*.tar.gz | tail -n +8 | xargs -r rm --
echo "backed up $src to $dest"
