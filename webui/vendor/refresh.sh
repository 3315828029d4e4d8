#!/usr/bin/env bash
# Refreshes webui/vendor/ (and the tests' axe-core, tests/data/vendor/) from the npm registry: the pinned
# versions below, each tarball checked against its pinned sha512, and only the files the page loads plus each
# package's license kept. Needs npm and node. Prints the kept files with their sizes (for README.md).
# To update a package: change its version, run this once with its integrity set to "" (it prints the new
# one), pin that, and run again.
set -euo pipefail
vendor=$(cd "$(dirname "$0")" && pwd)
tests_vendor=$(cd "$vendor/../../tests/data" && pwd)/vendor
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# name version sha512-integrity (as `npm view NAME@VERSION dist.integrity` says)
PACKAGES="
markdown-it 15.0.3 sha512-+Az7Ojz3iRGu8KYMvJ6xVhvrxP3eE+vEtJX75Ow88XBpcQNV/0lGX5ZynIIBftREo4DC2jsveAMDaeltmm8QvQ==
dompurify 3.5.0 sha512-LYC0ZkE8P1V42JsRYTwMdme/2ET8SpOc5AA2eOFjP/IadvRd2fwiT4TVz5vkfy0XUx12aS2UaRkTnfVPNOv9vw==
@highlightjs/cdn-assets 11.12.0 sha512-KvOKXODaiFmId9xaq3xc5xCL66wVLUuOngDbO9B/kewbFTqdGbn2nJxNhN3H5R1cgDTVj6R8vH0zgiNDEGjpDw==
katex 0.19.1 sha512-jG8uKntjSEcm2EpQOh0XturpPuuC9r3Sq5HLHdsFdWZT27E672SF19QEi+of0/YeOy15lDgRhKvr5614uRrEfA==
markdown-it-texmath 1.0.0 sha512-4hhkiX8/gus+6e53PLCUmUrsa6ZWGgJW2XCW6O0ASvZUiezIK900ZicinTDtG3kAO2kon7oUA/ReWmpW2FByxg==
axe-core 4.14.1 sha512-FHfa+lmNjQZfJz1q8wKqIDwC6DExcHt/pkjNQb09a3NPjCKg2rhu5qb2S4r76ASyFNNtuFooJpZe37OgudVGtQ==
"

# fetch NAME VERSION INTEGRITY: the package's files under $tmp/NAME/
fetch() {
  local file actual
  file=$(cd "$tmp" && npm pack --silent "$1@$2")
  actual=sha512-$(node -e 'const c = require("crypto"), fs = require("fs");
    process.stdout.write(c.createHash("sha512").update(fs.readFileSync(process.argv[1])).digest("base64"))' "$tmp/$file")
  if [ "$actual" != "$3" ]; then
    echo "$1@$2: the tarball's integrity is $actual, not the pinned $3" >&2
    exit 1
  fi
  mkdir -p "$tmp/$1"
  tar -xzf "$tmp/$file" -C "$tmp/$1" --strip-components=1
}

# keep NAME DEST FILE...: copies each FILE (a path in the package, or SOURCE:TARGET) into DEST
keep() {
  local name=$1 dest=$2 spec
  shift 2
  mkdir -p "$dest"
  for spec in "$@"; do
    cp "$tmp/$name/${spec%%:*}" "$dest/$(basename "${spec#*:}")"
  done
}

while read -r name version integrity; do
  [ -n "$name" ] && fetch "$name" "$version" "$integrity"
done <<< "$PACKAGES"

rm -rf "$vendor"/{markdown-it,dompurify,highlight,katex,texmath} "$tests_vendor"
keep markdown-it "$vendor/markdown-it" dist/browser/markdown-it.umd.min.js:markdown-it.min.js LICENSE
# DOMPurify is dual-licensed; we take it under Apache-2.0 (its LICENSE file)
keep dompurify "$vendor/dompurify" dist/purify.min.js LICENSE
# the common build: 36 languages (bash, c, cpp, css, go, java, javascript, json, python, rust, sql, …)
keep @highlightjs/cdn-assets "$vendor/highlight" highlight.min.js styles/github.min.css styles/github-dark.min.css \
  LICENSE
keep katex "$vendor/katex" dist/katex.min.js dist/katex.min.css LICENSE
# woff2 only: every browser that runs the page reads it; katex.min.css lists woff and ttf after it
(cd "$tmp/katex/dist/fonts" && for font in *.woff2; do keep katex "$vendor/katex/fonts" "dist/fonts/$font"; done)
keep markdown-it-texmath "$vendor/texmath" texmath.js license.txt:LICENSE
# for the accessibility tests only: not part of the page, so not under webui/
keep axe-core "$tests_vendor" axe.min.js LICENSE:axe-core.LICENSE LICENSE-3RD-PARTY.txt:axe-core.LICENSE-3RD-PARTY.txt

cd "$vendor"
find . -type f ! -name README.md ! -name refresh.sh -printf '%P %s\n' | sort | awk '
  { printf "%-44s %7.1f KiB\n", $1, $2 / 1024; total += $2 }
  END { printf "%-44s %7.1f KiB\n", "total", total / 1024 }'
