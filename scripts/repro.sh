#!/usr/bin/env bash
# Reproducible-build check (`make repro`, part of `make test`).
#
# Builds bffgate.wasm twice from clean with `make build`, from two copies of this tree at two
# different paths, each with its own CARGO_TARGET_DIR, the second also with a CARGO_HOME of its
# own (seeded from yours and used offline, so the crates' sources unpack under another path too),
# and compares the two sha256. Fails, naming both, if they differ; the two modules are then kept
# for diffing. Also checks that `make build` printed the sha256 of the file it built.
#
# The tree copied is what git sees in the work tree: tracked files (with uncommitted edits) and
# new files git does not ignore; never target/, .run/, node_modules/.
#
#   bash scripts/repro.sh        (KEEP=1 keeps the temporary directory even on success)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

say() { printf 'repro: %s\n' "$*"; }
die() { say "FAILED: $*" >&2; exit 1; }

work=$(mktemp -d "${TMPDIR:-/tmp}/bffgate-repro.XXXXXX")
keep=${KEEP:-}
cleanup() { [[ -n $keep ]] && say "kept $work" || rm -rf "$work"; }
trap cleanup EXIT

# Two paths that differ in length and depth, so an absolute path leaking into the module shows.
a=$work/a/bffgate
b=$work/second/copy/of/the/tree/bffgate-b
own_home=${CARGO_HOME:-$HOME/.cargo}
b_home=$work/second/cargo-home

copy_tree() {
  mkdir -p "$1"
  git ls-files -z --cached --others --exclude-standard |
    while IFS= read -r -d '' f; do [[ -e $f || -L $f ]] && printf '%s\0' "$f"; done |
    tar --null -T - -cf - | tar -xf - -C "$1"
}

# build DIR [VAR=value...]: `make build` in DIR with its own target dir; prints the sha256.
build() {
  local dir=$1 log=$1.log start printed actual
  shift
  start=$SECONDS
  # A clean sub-make: nothing of a calling make's flags or variables.
  if ! (cd "$dir" && env -u MAKEFLAGS -u MAKELEVEL -u MFLAGS -u CARGO_TARGET_WASM32_WASIP1_RUSTFLAGS \
      CARGO_TARGET_DIR="$dir/target" "$@" make --no-print-directory build) >"$log" 2>&1; then
    tail -n 30 "$log" >&2
    die "make build in $dir failed (log above)"
  fi
  actual=$(sha256sum "$dir/target/wasm32-wasip1/release/bffgate.wasm" | cut -d' ' -f1)
  printed=$(sed -n 's/^bffgate\.wasm sha256 \([0-9a-f]\{64\}\)$/\1/p' "$log")
  [[ $printed == "$actual" ]] || die "make build in $dir printed '${printed:-no sha256 line}', the file's sha256 is $actual"
  say "$dir: sha256 $actual ($((SECONDS - start)) s)" >&2
  printf '%s\n' "$actual"
}

say "copying the tree to $a and $b"
copy_tree "$a"
copy_tree "$b"

sha_a=$(build "$a")
# The second CARGO_HOME gets your registry index and downloaded .crate files (build A fetched
# everything the lock file names), unpacks them itself, offline.
mkdir -p "$b_home/registry"
cp -R "$own_home/registry/index" "$own_home/registry/cache" "$b_home/registry/"
[[ ! -f $own_home/config.toml ]] || cp "$own_home/config.toml" "$b_home/"
sha_b=$(build "$b" CARGO_HOME="$b_home" CARGO_NET_OFFLINE=true)

if [[ $sha_a != "$sha_b" ]]; then
  keep=1
  mkdir -p "$work/diff"
  cp "$a/target/wasm32-wasip1/release/bffgate.wasm" "$work/diff/a.wasm"
  cp "$b/target/wasm32-wasip1/release/bffgate.wasm" "$work/diff/b.wasm"
  say "the two modules: $work/diff/a.wasm $work/diff/b.wasm (e.g. cmp -l, or strings | diff)" >&2
  die "NOT reproducible: $a gave $sha_a, $b gave $sha_b"
fi
say "reproducible: both builds gave bffgate.wasm sha256 $sha_a"
