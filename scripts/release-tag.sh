#!/usr/bin/env bash
# Moves the major tag of a published release: vX to the commit of vX.Y.Z, and only when X.Y.Z is
# the highest vX.*.* release on the remote, so that publishing an older patch later never moves vX
# backwards. .github/workflows/release.yml runs it after the release's checks pass, in a checkout
# of the release's commit whose `origin` is the repository; the unit tests run it against a scratch
# remote (test/unit/release.test.ts).
# Usage: scripts/release-tag.sh vX.Y.Z
set -euo pipefail

tag=${1:-}
if [[ ! "$tag" =~ ^v(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)$ ]]; then
  echo "::error::release tag ${tag:-(none)} is not vMAJOR.MINOR.PATCH; the major tag was not moved"
  exit 1
fi
major="v${BASH_REMATCH[1]}"

# Every tag on the remote, once: "<sha> refs/tags/<name>", plus "<commit> refs/tags/<name>^{}"
# for an annotated tag.
remote_tags=$(git ls-remote --tags origin)

# The commit a tag on the remote names (empty when there is no such tag).
commit_of() {
  local sha="" s ref
  while read -r s ref; do
    if [ "$ref" = "refs/tags/$1^{}" ]; then echo "$s"; return; fi
    if [ "$ref" = "refs/tags/$1" ]; then sha=$s; fi
  done <<<"$remote_tags"
  echo "$sha"
}

commit=$(git rev-parse 'HEAD^{commit}')
released=$(commit_of "$tag")
if [ -z "$released" ]; then
  echo "::error::the tag $tag is not on origin; the major tag was not moved"
  exit 1
fi
if [ "$released" != "$commit" ]; then
  echo "::error::this checkout is at $commit, not at $tag ($released); the major tag was not moved"
  exit 1
fi
# The version `ryra-vm --version` prints and the CHANGELOG entry are package.json's: it must be the tag's.
version=$(node -p 'require("./package.json").version')
if [ "v$version" != "$tag" ]; then
  echo "::error::package.json at $tag says version $version; set it to ${tag#v} and release again; the major tag was not moved"
  exit 1
fi

highest=$(sed -n "s|^[0-9a-f]*[[:space:]]refs/tags/\(${major}\.[0-9][0-9]*\.[0-9][0-9]*\)$|\1|p" <<<"$remote_tags" | sort -V | tail -n 1)
current=$(commit_of "$major")
if [ "$highest" != "$tag" ]; then
  echo "::notice::$tag is not the highest $major release ($highest is): $major stays at ${current:-nothing}"
  exit 0
fi
if [ "$current" = "$commit" ]; then
  echo "$major is at $tag ($commit) already"
  exit 0
fi
# The lease: move the tag only from where it was read (or create it only if it still does not exist).
git push --quiet --force-with-lease="refs/tags/$major:$current" origin "$commit:refs/tags/$major"
echo "moved $major to $tag ($commit)${current:+, from $current}"
